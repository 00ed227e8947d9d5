"""The per-worker, per-site web application firewall: ModSecurity v3 with the OWASP Core Rule Set.

ModSecurity costs about a millisecond of CPU per request (more with many headers or a body), so it never runs on
the event loop: `WafRunner` hands each check to a few threads (the ctypes calls release the GIL) and the loop gets
the result through a future. A check is a `RequestCheck` holding the library's live transaction from the request
head to the response head; the data plane must `close` it exactly once, whatever happens to the request.

Rule matches reach Python through the library's log callback, which is shared by every transaction of a
ModSecurity instance and called on the thread evaluating the rules; each transaction is created with an integer key
as its user data, and the callback finds the check through that key, so concurrent threads never mix matches.
The disruptive rule's own message is not sent to the callback: it comes with the intervention.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tlsedge.guard import waf_rules
from tlsedge.guard.modsecurity import ModSecurity, ModSecurityError, RulesSet, Transaction, available

__all__ = [
    "RequestCheck",
    "SiteWaf",
    "WafConfigError",
    "WafMatch",
    "WafRunner",
    "WafSettings",
    "build_site_waf",
]

log = logging.getLogger("tlsedge.guard.waf")

DEFAULT_CRS_PATH = Path("/usr/share/modsecurity-crs/rules")
DATA_LIMIT = 120  # characters of matched data kept per match (the log line must stay readable)

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class WafSettings:
    """One site's WAF, as the configuration layer validated it."""

    mode: Literal["off", "detect", "block"] = "block"
    paranoia: int = 1
    inbound_threshold: int = 5
    outbound_threshold: int = 4
    exclude_rules: tuple[int, ...] = ()
    exclude_paths: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (decoded path prefix, rule ids removed there)
    extra_rules: tuple[Path, ...] = ()
    body_limit: int = 131072  # bytes of a request body inspected
    over_limit: Literal["pass", "reject"] = "pass"
    response_headers: bool = True
    crs_path: Path = DEFAULT_CRS_PATH


@dataclass(frozen=True, slots=True)
class WafMatch:
    """One rule that matched, for the log line of the request (with its event id)."""

    rule_id: int
    message: str
    data: str  # what matched and where, cut to DATA_LIMIT characters
    severity: int  # syslog scale as the CRS uses it: 2 critical, 3 error, 4 warning, 5 notice; 0 if the rule sets none
    phase: int  # 1 request headers, 2 request body, 3 response headers, 5 logging
    disruptive: bool = False  # the rule that blocked the request


class WafConfigError(Exception):
    """A site's WAF cannot be built; `field` names the WafSettings field, the message is the library's own."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_keys = itertools.count(1)  # 0 would reach the callback as a NULL pointer
_live: dict[int, RequestCheck] = {}
_build_lock = threading.Lock()  # the rules parser is not thread-safe


def _on_log(key: int | None, text: bytes | None) -> None:
    check = _live.get(key) if key else None
    if check is not None and text:
        match = _parse_match(text, check._phase)
        if match is not None:
            check.matches.append(match)


def _parse_match(text: bytes | str, phase: int, disruptive: bool = False) -> WafMatch | None:
    """A WafMatch from the library's text log line, or None when the line names no rule.

    The line holds ``[id "…"] [rev "…"] [msg "…"] [data "…"] [severity "…"]`` in this order after the operator's
    match description; ``data`` has its quotes escaped by the library. The description before those fields and the
    URI after them can hold request data, so a client could imitate fields there and mislabel the matches of its own
    request in the log. Blocking never depends on the parse, except for tlsedge's body-parse rules, whose lines hold
    no request data before their id: imitating one of those only gets the client's own request refused.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    start = text.find(' [id "')
    if start < 0:
        return None
    start += 6
    end = text.find('"]', start)
    if not text[start:end].isdigit():
        return None
    rule_id = int(text[start:end])
    message = _between(text, ' [msg "', '"] [data "', end)
    data = _between(text, ' [data "', '"] [severity "', end)
    severity = _between(text, ' [severity "', '"]', end)
    return WafMatch(
        rule_id=rule_id,
        message=message,
        data=data[:DATA_LIMIT],
        severity=int(severity) if severity.isdigit() else 0,
        phase=phase,
        disruptive=disruptive,
    )


def _between(text: str, opening: str, closing: str, start: int) -> str:
    i = text.find(opening, start)
    if i < 0:
        return ""
    i += len(opening)
    j = text.find(closing, i)
    return text[i:] if j < 0 else text[i:j]


class RequestCheck:
    """The WAF's view of one request; holds the live transaction until `close`.

    ``blocked`` and ``status`` say what the data plane must answer (403, 400 for a body that does not parse, 413 for
    a body over the limit with ``over_limit = "reject"``); ``matches`` lists every rule that matched, also in detect
    mode, for the log line tagged with ``event_id``. Matches of the logging phase (the CRS's 980 summary rules)
    arrive during `close`.

    `check_response` and `close` take a per-check lock, so a close scheduled from another thread (for instance after
    the client went away while a check was still running) waits for that check instead of freeing under it.
    """

    __slots__ = ("_key", "_lock", "_phase", "_txn", "_waf", "blocked", "event_id", "matches", "status")

    def __init__(self, waf: SiteWaf, event_id: str) -> None:
        self._waf = waf
        self._lock = threading.Lock()
        self._phase = 0
        self._key = key = next(_keys)
        self.event_id = event_id
        self.blocked = False
        self.status = 200
        self.matches: list[WafMatch] = []
        self._txn: Transaction | None = Transaction(waf._engine, waf._rules, event_id.encode(), key)
        _live[key] = self

    @property
    def closed(self) -> bool:
        return self._txn is None

    @property
    def wants_response(self) -> bool:
        """Whether `check_response` would inspect anything (else the data plane need not go to a thread)."""
        return self._txn is not None and not self.blocked and self._waf.settings.response_headers

    def check_response(self, status: int, headers: Headers) -> bool:
        """Phase 3 on the origin's response head; True when the response must be replaced (``status`` says by what)."""
        with self._lock:
            txn = self._txn
            if txn is None or self.blocked or not self._waf.settings.response_headers:
                return False
            for name, value in headers:
                txn.add_response_header(name, value)
            self._phase = 3
            txn.process_response_headers(status, b"HTTP/1.1")
            return self._intervene(txn)

    def close(self) -> None:
        """Run the logging phase and free the transaction; idempotent, callable from any thread."""
        with self._lock:
            txn = self._txn
            if txn is None:
                return
            try:
                self._phase = 5
                txn.process_logging()
            finally:
                txn.cleanup()
                self._txn = None
                _live.pop(self._key, None)
                self._waf._release()

    def _intervene(self, txn: Transaction) -> bool:
        pending = txn.intervention()
        if pending is None:
            return False
        status, text = pending
        match = _parse_match(text, self._phase, disruptive=True)
        if match is not None:
            self.matches.append(match)
        if self._waf.blocking:
            self.blocked = True
            self.status = status
        return self.blocked

    def _refuse(self, status: int, match: WafMatch) -> None:
        """A decision tlsedge takes itself (body over the limit, body that does not parse): blocks in block mode."""
        blocking = self._waf.blocking
        self.matches.append(WafMatch(match.rule_id, match.message, match.data, match.severity, match.phase, blocking))
        if blocking:
            self.blocked = True
            self.status = status


class SiteWaf:
    """A site's loaded rules and ModSecurity instance, in one worker; shared by the WAF threads of that worker."""

    def __init__(self, settings: WafSettings, engine: ModSecurity, rules: RulesSet) -> None:
        self.settings = settings
        self.blocking = settings.mode == "block"
        self._engine = engine
        self._rules = rules
        self._lock = threading.Lock()
        self._live = 0
        self._closing = False

    def check_request(
        self,
        event_id: str,
        client_ip: str,
        client_port: int,
        server_port: int,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: Headers,
        body: Sequence[bytes] | None,
        *,
        body_truncated: bool = False,
        server_ip: str = "",
    ) -> RequestCheck:
        """Phases 1 and 2 on a request; the caller must `RequestCheck.close` the result exactly once.

        ``target`` is the request target as received (path and query); ``http_version`` is b"1.1" (a leading
        b"HTTP/" is dropped); ``headers`` include Host (for HTTP/2, give ``:authority`` as Host).

        Body limit: ``body`` (bytes-like chunks) holds the first ``settings.body_limit`` bytes at most (bytes past
        it are ignored) and ``body_truncated=True`` says the request body is longer than what was given (a
        Content-Length over the limit lets the caller pass ``body=None`` without reading it). Then, with
        ``over_limit = "reject"``, the check is blocked with 413 in block mode before any body inspection (in
        detect mode it is only reported); with ``"pass"``, the given bytes are inspected and the rest passes
        uninspected (a cut JSON or multipart body never parses, so the parse checks are skipped). Both cases add a
        match with rule id 1700900.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("this SiteWaf was closed; build a new one")
            self._live += 1
        try:
            check = RequestCheck(self, event_id)
        except BaseException:
            self._release()
            raise
        try:
            with check._lock:
                self._inspect(check, check._txn, client_ip, client_port, server_ip,  # type: ignore[arg-type]
                              server_port, method, target, http_version, headers, body, body_truncated)
        except BaseException:
            check.close()
            raise
        return check

    def _inspect(self, check: RequestCheck, txn: Transaction, client_ip: str, client_port: int, server_ip: str,
                 server_port: int, method: bytes, target: bytes, http_version: bytes, headers: Headers,
                 body: Sequence[bytes] | None, body_truncated: bool) -> None:
        txn.process_connection(client_ip.encode(), client_port, server_ip.encode(), server_port)
        if http_version.startswith(b"HTTP/"):
            http_version = http_version[5:]
        txn.process_uri(target, method, http_version)
        for name, value in headers:
            txn.add_request_header(name, value)
        check._phase = 1
        txn.process_request_headers()
        if check._intervene(txn):
            return
        check._phase = 2
        limit = self.settings.body_limit
        given = 0
        for chunk in body or ():
            if given < limit:  # the library keeps the first `limit` bytes of a chunk that crosses it
                txn.append_request_body(chunk if type(chunk) is bytes else bytes(chunk))
            given += len(chunk)
        truncated = body_truncated or given > limit
        if truncated:
            if self.settings.over_limit == "reject":
                check._refuse(413, _over_limit_match(limit, reject=True))
                if check.blocked:
                    return
            else:
                check.matches.append(_over_limit_match(limit, reject=False))
        txn.process_request_body()
        _judge_body_parse(check, truncated, check._intervene(txn))

    @property
    def open_checks(self) -> int:
        """Checks not closed yet (each holds a live transaction): 0 when the data plane closes all it opens."""
        return self._live

    def close(self) -> None:
        """Free the rules and the engine once the last open check is closed (at once when none is open)."""
        with self._lock:
            self._closing = True
            free = self._live == 0
        if free:
            self._free()

    def _release(self) -> None:
        with self._lock:
            self._live -= 1
            free = self._closing and self._live == 0
        if free:
            self._free()

    def _free(self) -> None:
        self._rules.close()
        self._engine.close()


def _judge_body_parse(check: RequestCheck, truncated: bool, blocked: bool) -> None:
    """A body that does not parse is refused with 400, unless it was cut at the limit (then it cannot parse)."""
    parse_errors = [m for m in check.matches if m.rule_id in waf_rules.BODY_PARSE_IDS]
    if not parse_errors:
        return
    if truncated:
        check.matches[:] = [m for m in check.matches if m.rule_id not in waf_rules.BODY_PARSE_IDS]
    elif not blocked:
        check.matches.remove(parse_errors[0])
        check._refuse(400, parse_errors[0])


def _over_limit_match(limit: int, *, reject: bool) -> WafMatch:
    what = "rejected" if reject else "inspected up to the limit"
    return WafMatch(
        rule_id=waf_rules.BODY_OVER_LIMIT_ID,
        message=f"Request body larger than the inspection limit of {limit} bytes: {what}",
        data="",
        severity=4 if not reject else 2,
        phase=2,
    )


def build_site_waf(settings: WafSettings) -> SiteWaf:
    """Load a site's rules into a new ModSecurity instance; raises WafConfigError with the library's message.

    Rule loading is not thread-safe: builds are serialized here, and a worker builds its sites before serving.
    Rules are loaded in this order: tlsedge's base directives and path exclusions, the CRS files of
    ``crs_path`` (sorted, as the CRS numbering expects), the ``extra_rules`` files, then id exclusions and the
    response-header evaluation (see `waf_rules`).
    """
    if settings.mode == "off":
        raise ValueError("build_site_waf: mode is off, there is nothing to build")
    reason = available()
    if reason is not None:
        raise WafConfigError("mode", reason)
    crs_files = sorted(settings.crs_path.glob("*.conf")) if settings.crs_path.is_dir() else []
    if not crs_files:
        raise WafConfigError(
            "crs_path", f"no OWASP CRS rules (*.conf) in {settings.crs_path}; install Debian's modsecurity-crs package"
        )
    try:
        before = waf_rules.before_crs(settings)
    except ValueError as exc:
        raise WafConfigError("exclude_paths", str(exc)) from None
    try:
        after = waf_rules.after_crs(settings)
    except ValueError as exc:
        raise WafConfigError("exclude_rules", str(exc)) from None
    with _build_lock:
        engine = ModSecurity(_on_log)
        rules = RulesSet()
        try:
            _load(rules, "mode", before)
            for path in crs_files:
                _load(rules, "crs_path", path)
            for path in settings.extra_rules:
                _load(rules, "extra_rules", path)
            _load(rules, "exclude_rules", after)
        except BaseException:
            rules.close()
            engine.close()
            raise
    return SiteWaf(settings, engine, rules)


def _load(rules: RulesSet, field: str, source: str | Path) -> None:
    try:
        if isinstance(source, Path):
            if not source.is_file():
                raise WafConfigError(field, f"{source}: no such file")
            rules.add_file(source)
        else:
            rules.add(source)
    except ModSecurityError as exc:
        message = str(exc).replace("\n", " ")
        if isinstance(source, Path) and str(source) not in message:
            message = f"{source}: {message}"
        raise WafConfigError(field, message) from None


class WafRunner:
    """The WAF threads of one worker: ModSecurity never runs on the event loop.

    `check_request` and `check_response` return asyncio futures: await them, or add a done callback (no task
    needed). Cancelling a check_request future (or the task awaiting it) before the result arrives closes the
    check once its thread is done with it.

    Not a ThreadPoolExecutor: handing a job over costs the loop about half as much CPU with a bare queue and
    asyncio futures the threads resolve through one wake-up per batch of results (several finishing together
    wake the loop once), instead of a concurrent future chained to an asyncio one per call.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._results: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._workers = [threading.Thread(target=self._work, name=f"tlsedge-waf-{n}", daemon=True)
                         for n in range(threads)]
        for worker in self._workers:
            worker.start()

    def check_request(
        self,
        site_waf: SiteWaf,
        event_id: str,
        client_ip: str,
        client_port: int,
        server_port: int,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: Headers,
        body: Sequence[bytes] | None,
        *,
        body_truncated: bool = False,
        server_ip: str = "",
    ) -> asyncio.Future[RequestCheck]:
        """`SiteWaf.check_request` in a WAF thread; call it on the event loop."""
        args = (event_id, client_ip, client_port, server_port, method, target, http_version, headers, body)
        kwargs = {"body_truncated": body_truncated, "server_ip": server_ip} if body_truncated or server_ip else {}
        return self._submit(site_waf.check_request, args, kwargs)

    def check_response(self, check: RequestCheck, status: int, headers: Headers) -> asyncio.Future[bool]:
        """`RequestCheck.check_response` in a WAF thread (a future already done when there is nothing to inspect)."""
        if not check.wants_response:
            future = asyncio.get_running_loop().create_future()
            future.set_result(False)
            return future
        return self._submit(check.check_response, (status, headers), {})

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Any other blocking call of the guard (a password hash) in these threads; call it on the event loop."""
        return self._submit(fn, args, {})

    def close_later(self, check: RequestCheck) -> None:
        """Close a check in a WAF thread without waiting (after `shutdown`: at once, in the caller's thread)."""
        if check.closed:
            return
        if self._stopped:
            check.close()
        else:
            self._jobs.put((None, check.close, (), {}))

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once the jobs already queued are done; with ``wait``, return only then."""
        if not self._stopped:
            self._stopped = True
            for _ in self._workers:
                self._jobs.put(None)
        if wait:
            for worker in self._workers:
                worker.join()

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        if self._stopped:
            raise RuntimeError("WafRunner.shutdown was called")
        self._loop = loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if future is not None and future.cancelled():  # the caller gave up before the job started
                continue
            result, error = None, None
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                error = exc
            if future is None:
                if error is not None:
                    log.error("WAF: %s failed: %s", getattr(fn, "__qualname__", fn), error, exc_info=error)
                continue
            self._results.append((future, result, error))
            with self._lock:
                if self._wake_pending:
                    continue
                self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)  # type: ignore[union-attr]
            except RuntimeError:  # the event loop is closed: nobody will take these results
                self._abandon()

    def _deliver(self) -> None:
        """On the loop: resolve every finished job (the flag is cleared first, so no result waits for a wake-up)."""
        with self._lock:
            self._wake_pending = False
        results = self._results
        while results:
            future, result, error = results.popleft()
            if future.cancelled():
                if isinstance(result, RequestCheck):
                    self.close_later(result)
            elif error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def _abandon(self) -> None:
        """In a WAF thread, once the loop is closed: close the checks nobody will receive."""
        with self._lock:
            self._wake_pending = False
        while True:
            try:
                _, result, _ = self._results.popleft()
            except IndexError:
                return
            if isinstance(result, RequestCheck):
                result.close()


_Job = tuple["asyncio.Future[Any] | None", "Callable[..., Any]", "tuple[Any, ...]", "dict[str, Any]"]
