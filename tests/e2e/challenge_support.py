"""Helpers for the end-to-end tests of the proof-of-work challenge (issue 6): an origin that answers every path, a
client that picks its source address (cookies and tokens are bound to the client's /24), the challenge read out of
the page, solved with tests/guard/pow_solver.py and answered, and the guard's decision read back from the access log.
"""

from __future__ import annotations

import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cache_support import Answer, Script, ScriptedOrigin, Seen
from e2e_support import Edge, RawConn, Response, wait_for

GUARD_TESTS = Path(__file__).resolve().parent.parent / "guard"
if str(GUARD_TESTS) not in sys.path:
    sys.path.append(str(GUARD_TESTS))
from pow_solver import solve  # noqa: E402  (tests/guard has no __init__.py: it is put on the path above)

from tlsedge.guard.challenge.pow import leading_zero_bits, work_digest  # noqa: E402

PASS_COOKIE = "tlsedge_pass"
VERIFY_PATH = "/.tlsedge/challenge/verify"
NOSCRIPT_PATH = "/.tlsedge/challenge/noscript"
WAIT_PATH = "/.tlsedge/challenge/wait"


# ---------------------------------------------------------------------------------------------------------- origin


class _EveryPath(dict):
    """Answers of the origin: a scripted answer where a test wrote one, else a page that names the path."""

    def get(self, key: str, default: Script | None = None) -> Script | None:
        return super().get(key) or _page_of


def _page_of(seen: Seen) -> Answer:
    return Answer(200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
                  origin_body(seen.target))


def origin_body(target: str) -> bytes:
    """What the origin answers for ``target`` (a test recognises the origin's page by it)."""
    return f"<!DOCTYPE html><html><head><title>origin</title></head><body><p id=origin>origin page {target}</p>" \
           f"</body></html>".encode()


def every_path_origin() -> ScriptedOrigin:
    """A threaded origin that answers every path with :func:`origin_body` and records what it saw."""
    origin = ScriptedOrigin()
    origin.answers = _EveryPath()
    return origin


def seen_paths(origin: ScriptedOrigin, prefix: str) -> list[Seen]:
    """What the origin received under ``prefix`` (each test uses paths of its own)."""
    with origin.lock:
        return [s for s in origin.seen if s.target.startswith(prefix)]


# ---------------------------------------------------------------------------------------------------------- config


def challenge_site(name: str, origin: ScriptedOrigin, cert: Any = None, **challenge: Any) -> dict[str, Any]:
    """A ``[[site]]`` for ``<name>.example`` with a ``[site.challenge]`` table (``challenge`` keys as given).
    Extra site tables (ip_rules, rate_limit) go in ``challenge["site"]``."""
    extra = challenge.pop("site", {})
    table: dict[str, Any] = {"name": name, "hosts": [f"{name}.example"]}
    if cert is not None:
        table["certificate"] = {"cert": str(cert.cert), "key": str(cert.key)}
        table["redirect_http"] = False
    table["origins"] = [origin.url]
    table.update(extra)
    table["challenge"] = challenge
    return table


# ---------------------------------------------------------------------------------------------------------- client


def fetch(edge: Edge, host: str, target: str, *, source: str = "127.0.0.1", cookie: str | None = None,
          method: str = "GET", headers: list[tuple[str, str]] | None = None, body: bytes = b"",
          tls: bool = False) -> Response:
    """One request on a fresh connection from ``source`` (so either worker may answer it)."""
    sent = list(headers or [])
    if cookie is not None:
        sent.append(("Cookie", cookie))
    port = edge.https_port if tls else edge.http_port
    with RawConn(port, sni=host, tls=tls, ca_pem=edge.ca_pem, source=source, timeout=5.0) as conn:
        return conn.request(method, target, host, sent, body)


def worker_of(response: Response) -> str:
    """Which worker answered: the request id starts with the worker's own random prefix (6 hex digits)."""
    request_id = response.header("x-request-id")
    assert request_id, f"no X-Request-Id in {response.headers}"
    return request_id[:6]


def pass_cookie(response: Response) -> str:
    """The value of the challenge cookie a 303 sets."""
    for line in response.all("set-cookie"):
        name, _, rest = line.partition("=")
        if name.strip() == PASS_COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {PASS_COOKIE} cookie set: {response.status} {response.headers}")


def cookie_attributes(response: Response) -> set[str]:
    """The attributes of the challenge cookie's Set-Cookie line (``Path=/``, ``HttpOnly``, ...)."""
    for line in response.all("set-cookie"):
        if line.startswith(PASS_COOKIE + "="):
            return {part.strip() for part in line.split(";")[1:]}
    raise AssertionError(f"no {PASS_COOKIE} cookie set: {response.headers}")


# ---------------------------------------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class PageChallenge:
    """What the challenge page asks: the token, the difficulty and where the answer goes (``verify`` ends with
    ``nonce=``), and the no-JavaScript link."""

    token: str
    difficulty: int
    verify: str
    noscript: str

    @property
    def kid(self) -> str:
        """The signing key the token was issued with (``<kid>.<body>``)."""
        return self.token.partition(".")[0]

    def answer(self, nonce: str | None = None) -> str:
        """The verify URL with ``nonce`` (default: a solution found by pow_solver)."""
        return self.verify + (solve(self.token, self.difficulty) if nonce is None else nonce)

    def wrong_nonce(self) -> str:
        """A nonce whose hash has fewer leading zero bits than asked: not enough work."""
        nonce = 0
        while leading_zero_bits(work_digest(self.token, str(nonce))) >= self.difficulty:
            nonce += 1
        return str(nonce)


def _attribute(page: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', page)
    assert found is not None, f"no {name} in the page: {page[:300]!r}"
    return html.unescape(found.group(1))


def read_challenge(response: Response) -> PageChallenge:
    """The challenge in a 403 challenge page (asserts that it is one)."""
    assert response.status == 403, f"expected the challenge page, got {response.status}: {response.body[:200]!r}"
    page = response.body.decode()
    assert 'id="tlsedge-pow"' in page, f"403 without a challenge: {page[:300]!r}"
    noscript = re.search(r'<noscript>.*?href="([^"]*)"', page, re.S)
    assert noscript is not None
    return PageChallenge(_attribute(page, "data-token"), int(_attribute(page, "data-difficulty")),
                         _attribute(page, "data-url"), html.unescape(noscript.group(1)))


def is_challenge(response: Response) -> bool:
    return response.status == 403 and b'id="tlsedge-pow"' in response.body


def wait_link(response: Response) -> str:
    """The target of a no-JavaScript wait page's link (the same URL its meta refresh goes to)."""
    assert response.status == 403, response.status
    return _attribute(response.body.decode(), "a href")


def query_of(target: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(target).query))


def solve_from(edge: Edge, host: str, path: str, *, source: str = "127.0.0.1",
               tls: bool = False) -> tuple[PageChallenge, Response]:
    """Be challenged on ``path``, solve it and answer: the challenge and the verify response (not checked)."""
    challenge = read_challenge(fetch(edge, host, path, source=source, tls=tls))
    return challenge, fetch(edge, host, challenge.answer(), source=source, tls=tls)


def cookie_for(edge: Edge, host: str, path: str = "/", *, source: str = "127.0.0.1", tls: bool = False) -> str:
    """A genuine challenge cookie for ``source``'s network on ``host``."""
    _, verified = solve_from(edge, host, path, source=source, tls=tls)
    assert verified.status == 303, (verified.status, verified.body[:200])
    return pass_cookie(verified)


# ---------------------------------------------------------------------------------------------------------- logs


def entries_of(edge: Edge, responses: list[Response], timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access-log entries of the requests that got ``responses`` (in order; the log is flushed by the sweep)."""
    wanted = []
    for response in responses:
        request_id = response.header("x-request-id")
        assert request_id, f"no X-Request-Id in {response.headers}"
        wanted.append(request_id)

    def found() -> list[dict[str, Any]] | None:
        by_id = {e.get("request_id"): e for e in edge.access_entries()}
        return [by_id[i] for i in wanted] if all(i in by_id for i in wanted) else None

    return wait_for(found, timeout, what=f"access log entries of requests {wanted}")


def decisions(edge: Edge, *responses: Response) -> list[str | None]:
    """The guard's decision (access log field ``guard``) on each request that got one of ``responses``."""
    return [entry.get("guard") for entry in entries_of(edge, list(responses))]


def entries_for_paths(edge: Edge, paths: list[str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access-log entries of requests for ``paths`` (responses from the origin carry no request id)."""

    def found() -> list[dict[str, Any]] | None:
        by_path = {e.get("path"): e for e in edge.access_entries()}
        return [by_path[p] for p in paths] if all(p in by_path for p in paths) else None

    return wait_for(found, timeout, what=f"access log entries for {paths}")


def wait_current_key(edge: Edge, host: str, kid: str, workers: int, timeout: float = 5.0) -> None:
    """Wait until every worker issues challenges signed with ``kid`` (they follow a rotation in their sweep)."""
    latest: dict[str, str] = {}

    def all_follow() -> bool:
        response = fetch(edge, host, "/keys-probe")
        latest[worker_of(response)] = read_challenge(response).kid
        return len(latest) == workers and all(k == kid for k in latest.values())

    wait_for(all_follow, timeout, interval=0.02, what=f"every worker to sign with key {kid} (seen {latest})")
