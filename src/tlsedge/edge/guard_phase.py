"""The guard phase on an HTTP/1 connection: the site's checks, and the WAF in a thread without holding the loop.

`begin` runs the site's chain (`guard.chain.SiteGuard`) when a request's head has arrived. Most requests pass at once
and cost a few dictionary lookups. Two things make a request wait:

- a body to read first: the WAF inspects up to ``body_limit`` bytes of it and the password form is posted, so the
  body is collected (and held for the origin, as it is while a connection is being opened) before the decision;
- the WAF itself: ModSecurity takes about a millisecond of CPU per request, so it runs in the worker's WAF threads
  (ctypes releases the GIL) and its answer comes back through a future's callback, no task per request.

The response head from the origin is held the same way while the WAF looks at it (phase 3): what the origin sends
meanwhile is queued in the exchange and replayed once the WAF let the response through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsedge.edge.headers import status_line
from tlsedge.guard.chain import PASSWORD_SUBMIT, GuardRequest, Outcome
from tlsedge.guard.challenge.page import PAGE_CSP
from tlsedge.guard.password import MAX_FORM_BYTES, check_password

if TYPE_CHECKING:

    from tlsedge.edge.exchange import Exchange
    from tlsedge.edge.http1 import ClientConnection
    from tlsedge.upstream.connection import OriginConnection

log = logging.getLogger("tlsedge.guard")

_PASSWORD_SUBMIT = PASSWORD_SUBMIT.encode()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CSP = b"Content-Security-Policy: %s\r\n" % PAGE_CSP


class BodyWait:
    """A request body the guard decides on, kept raw (before any re-framing) up to ``limit`` bytes from its first
    byte on, also while the request waits behind another on the connection (pipelining)."""

    __slots__ = ("chunks", "done", "form", "limit", "over", "size")

    def __init__(self, limit: int, form: bool) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.form = form  # the password form, not a body for the WAF
        self.over = False  # more than `limit` bytes came; only the first `limit` are kept
        self.done: Callable[[], None] | None = None  # set once the guard waits for the body

    def feed(self, data: bytes) -> bool:
        """Keep a chunk; True once enough has come for the decision."""
        room = self.limit - self.size
        if len(data) > room:
            self.over = True
            data = data[:room]
        if data:
            self.chunks.append(data)
            self.size += len(data)
        return self.over

    @property
    def full(self) -> bool:
        return self.size >= self.limit


def prepare(ex: Exchange) -> None:
    """At the end of a request head: whether the guard will need its body (the WAF's, or the password form)."""
    guard = ex.site.guard
    if ex.method == b"POST" and guard.passwords and ex.target.partition(b"?")[0] == _PASSWORD_SUBMIT:
        ex.body_wait = BodyWait(MAX_FORM_BYTES, True)
    elif guard.waf is not None:
        ex.body_wait = BodyWait(guard.waf.settings.body_limit, False)


def begin(conn: ClientConnection, ex: Exchange) -> bool:
    """Run the site's guard on a request whose head has arrived; True when the guard took it over."""
    guard = ex.site.guard
    if guard.light:
        screened = guard.screen_address(conn.client_ip, time.time())
        if isinstance(screened, Outcome):
            answer(conn, ex, screened)
            return True
        return False
    req = GuardRequest(conn.client_ip, ex.method, ex.target, ex.headers, conn.tls)
    ex.guard_request = req
    outcome = guard.check(req)
    if outcome is not None:
        answer(conn, ex, outcome)
        return True
    wait = ex.body_wait
    if wait is not None and wait.form:
        _when_body(conn, ex, lambda: _after_form(conn, ex))
        return True
    return _inspect(conn, ex)


def _when_body(conn: ClientConnection, ex: Exchange, then: Callable[[], None]) -> None:
    """Call ``then`` once the body (or its first ``limit`` bytes) is here: now, or from the parser's callbacks."""
    wait = ex.body_wait
    if ex.body_done or wait.over:
        then()
        return
    wait.done = then
    if ex.expect_continue and not ex.http10:
        conn.out.append(_CONTINUE)  # RFC 9110 10.1.1: the client waits for it before sending the body
        ex.expect_continue = False


def body_chunk(conn: ClientConnection, ex: Exchange, data: bytes) -> None:
    """A piece of the body of a request the guard decides on (called by the connection's parser)."""
    wait = ex.body_wait
    if wait.feed(data) and wait.done is not None:
        then, wait.done = wait.done, None
        then()


def body_end(conn: ClientConnection, ex: Exchange) -> bool:
    """The body ended; True when the guard was waiting for it (and has now taken its decision)."""
    wait = ex.body_wait
    if wait is None or wait.done is None:
        return False
    then, wait.done = wait.done, None
    then()
    return True


def _after_form(conn: ClientConnection, ex: Exchange) -> None:
    wait = ex.body_wait
    ex.body_wait = None
    req = ex.guard_request
    if wait.over:
        answer(conn, ex, Outcome(413, "password", "password form larger than 4 KiB"))
        conn.flush()
        return
    req.body = b"".join(wait.chunks)
    guard = ex.site.guard
    attempt = guard.password_attempt(req)
    if isinstance(attempt, Outcome):
        answer(conn, ex, attempt)
        conn.flush()
        return

    def checked(done: asyncio.Future) -> None:
        if conn.closed or ex is not conn.current or ex.finished:
            return
        answer(conn, ex, guard.password_outcome(req, attempt, done.result()))
        conn.flush()

    _in_thread(conn, checked, check_password, attempt.entry.password_hash, attempt.password)


def _in_thread(conn: ClientConnection, then: Callable[[asyncio.Future], None], fn: Callable[..., Any],
               *args: Any) -> None:
    """Run ``fn`` in a thread (the WAF's threads, else the loop's default executor); ``then`` runs on the loop."""
    runner = conn.edge.guard.waf
    future = runner.submit(fn, *args) if runner is not None else conn.edge.loop.run_in_executor(None, fn, *args)
    future.add_done_callback(then)


def _inspect(conn: ClientConnection, ex: Exchange) -> bool:
    """Start the WAF on the request (after its body, if it has one); False when the site has no WAF on."""
    waf = ex.site.guard.waf
    if waf is None:
        return False
    settings = waf.settings
    if ex.body_wait is not None:
        length = _content_length(ex.headers)
        if (settings.over_limit == "reject" and settings.mode == "block" and length is not None
                and length > settings.body_limit):
            ex.body_wait = None
            answer(conn, ex, Outcome(413, "waf-body-limit", "request body over the WAF's body_limit"))
            return True
        _when_body(conn, ex, lambda: _body_ready(conn, ex))
        return True
    _start_waf(conn, ex, [])
    return True


def _body_ready(conn: ClientConnection, ex: Exchange) -> None:
    wait = ex.body_wait
    ex.body_wait = None
    settings = ex.site.guard.waf.settings
    if wait.over and settings.over_limit == "reject" and settings.mode == "block":
        answer(conn, ex, Outcome(413, "waf-body-limit", "request body over the WAF's body_limit"))
        conn.flush()
        return
    _start_waf(conn, ex, wait.chunks, wait.over)


def _start_waf(conn: ClientConnection, ex: Exchange, body: list[bytes], truncated: bool = False) -> None:
    sock = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
    peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    future = ex.site.guard.services.waf.check_request(
        ex.site.guard.waf,
        ex.request_id,
        conn.client_ip,
        peer[1] if peer else 0,
        sock[1] if sock else 0,
        ex.method,
        ex.target,
        b"1.0" if ex.http10 else b"1.1",
        ex.headers,
        body or None,
        body_truncated=truncated,
    )
    future.add_done_callback(lambda done: _request_checked(conn, ex, done))


def _request_checked(conn: ClientConnection, ex: Exchange, done: asyncio.Future) -> None:
    services = ex.site.guard.services
    try:
        check = done.result()
    except Exception as exc:
        log.error("site %s: the WAF failed on request %s: %s", ex.site.name, ex.request_id, exc)
        check = None
    if conn.closed or ex is not conn.current or ex.finished:
        if check is not None:
            services.waf.close_later(check)
        return
    if check is None:
        if ex.site.guard.waf.settings.mode == "block":
            conn.cache_error(ex, 500, "the WAF failed on this request")
            conn.flush()
            return
        conn.guard_passed(ex)
        return
    ex.waf = check
    _log_matches(ex, check, "request")
    if check.blocked:
        ex.site.guard.offense(conn.client_ip, "waf")
        answer(conn, ex, Outcome(check.status or 403, "waf-block", f"WAF event {ex.request_id}"))
        conn.flush()
        return
    if check.matches:  # below the threshold, or detect mode: logged, let through
        ex.decision = "waf-detect" if ex.site.guard.waf.settings.mode == "detect" else "waf-match"
    conn.guard_passed(ex)


def wants_response_check(ex: Exchange) -> bool:
    """Whether the origin's response head waits for the WAF: only when the operator has rules of their own, since
    the CRS has none for response heads (its response rules read bodies, which the edge does not inspect), and the
    thread round trip would be spent for nothing on every response."""
    settings = ex.site.guard.waf.settings
    return not ex.response_checked and settings.response_headers and bool(settings.extra_rules)


def hold_response(conn: ClientConnection, ex: Exchange, origin: OriginConnection, status: int,
                  headers: list[tuple[bytes, bytes]]) -> None:
    """The origin's response head waits for the WAF (phase 3); what the origin sends meanwhile is queued."""
    ex.held = []
    if origin.transport is not None:
        origin.transport.pause_reading()
    future = ex.site.guard.services.waf.check_response(ex.waf, status, headers)
    future.add_done_callback(lambda done: _response_checked(conn, ex, origin, status, headers, done))


def _response_checked(conn: ClientConnection, ex: Exchange, origin: OriginConnection, status: int,
                      headers: list[tuple[bytes, bytes]], done: asyncio.Future) -> None:
    try:
        blocked = done.result()
    except Exception as exc:
        log.error("site %s: the WAF failed on the response to %s: %s", ex.site.name, ex.request_id, exc)
        blocked = ex.site.guard.waf.settings.mode == "block"
    if conn.closed or ex is not conn.current or ex.finished:
        return
    held = ex.held
    ex.held = None
    ex.response_checked = True
    _log_matches(ex, ex.waf, "response")
    if blocked:
        origin.abort()
        ex.origin = None
        ex.site.guard.offense(conn.client_ip, "waf")
        answer(conn, ex, Outcome(ex.waf.status or 403, "waf-block", f"WAF event {ex.request_id} (response)"))
        conn.flush()
        return
    if origin.transport is not None and not origin.closed and not conn.write_paused:
        origin.transport.resume_reading()
    conn.origin_head(origin, status, headers)
    for kind, value in held:
        if ex is not conn.current or ex.finished:
            break
        if kind == "body":
            conn.origin_body(value)
        elif kind == "done":
            conn.origin_done(origin, value)
        elif kind == "lost":
            conn.origin_lost(origin, value)
        else:
            conn.origin_timeout(origin)
    conn.flush()


def _log_matches(ex: Exchange, check: object, phase: str) -> None:
    """Every WAF match goes to the error log with its rule, the matched data and the event id (new ones only)."""
    matches = check.matches
    seen = ex.waf_logged
    if len(matches) <= seen:
        return
    action = "block" if check.blocked else ("detect" if ex.site.guard.waf.settings.mode == "detect" else "match")
    for match in matches[seen:]:
        log.warning("WAF site %s event %s %s rule %s (%s) phase %s: %s; data: %s", ex.site.name, ex.request_id,
                    action, match.rule_id, phase, match.phase, match.message, match.data)
    ex.waf_logged = len(matches)


def finished(ex: Exchange) -> None:
    """The exchange ended (answered, failed or abandoned): the WAF transaction is freed off the loop."""
    check = ex.waf
    if check is not None:
        ex.waf = None
        ex.site.guard.services.waf.close_later(check)


def answer(conn: ClientConnection, ex: Exchange, outcome: Outcome) -> None:
    """Answer with the guard's outcome: a page of ours, a redirect, or a standard error page."""
    ex.decision = outcome.decision
    if log.isEnabledFor(logging.DEBUG):  # the access log has every answer; this is for tracing only
        log.debug("site %s: %s %s %s: %s (request id %s)", ex.site.name, outcome.status, ex.method.decode(),
                 ex.target[:200].decode("latin-1"), outcome.reason, ex.request_id)
    if outcome.body is None:
        conn.guard_error(ex, outcome.status, outcome.reason, outcome.headers)
        return
    conn.guard_page(ex, _page(ex, outcome))


def _page(ex: Exchange, outcome: Outcome) -> bytes:
    body = outcome.body
    close = not ex.keep_alive or (ex.has_body and not ex.body_done)
    head = b"".join(
        (
            status_line(outcome.status),
            b"Server: tlsedge\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"X-Request-Id: %s\r\n" % ex.request_id.encode(),
            _CSP,
            outcome.headers,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )
    if close:
        ex.keep_alive = False
    return head if ex.method == b"HEAD" else head + body


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
