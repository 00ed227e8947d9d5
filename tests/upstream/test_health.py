"""Rise/fall counting, and one probe against real origins on 127.0.0.1 for every reason an operator can read."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from tlsedge.config.schema import HealthCheck, Origin
from tlsedge.upstream.health import BODY_LIMIT, HealthState, ProbeResult, probe

# --- HealthState ------------------------------------------------------------------------------------------------------


def transitions(state: HealthState, results: str) -> list[tuple[bool, bool]]:
    """Feed "+" (pass) and "-" (fail); return (changed, up) after each."""
    out = []
    for mark in results:
        out.append((state.record(mark == "+"), state.up))
    return out


def test_starts_up_and_falls_after_fall_failures_in_a_row() -> None:
    state = HealthState(rise=2, fall=3)
    assert state.up
    assert transitions(state, "--") == [(False, True), (False, True)]
    assert transitions(state, "-") == [(True, False)]
    assert state.failures == 3


def test_a_success_resets_the_failure_count() -> None:
    state = HealthState(rise=2, fall=3)
    assert transitions(state, "--+--") == [(False, True)] * 5
    assert state.up
    assert transitions(state, "-") == [(True, False)]


def test_rises_after_rise_successes_in_a_row_and_failures_interrupt() -> None:
    state = HealthState(rise=2, fall=1)
    assert transitions(state, "-") == [(True, False)]
    assert transitions(state, "+-+") == [(False, False)] * 3
    assert transitions(state, "+") == [(True, True)]
    assert state.successes == 2
    assert transitions(state, "++") == [(False, True)] * 2


def test_more_failures_while_down_change_nothing() -> None:
    state = HealthState(rise=1, fall=1)
    assert transitions(state, "---") == [(True, False), (False, False), (False, False)]
    assert transitions(state, "+") == [(True, True)]


def test_a_server_known_down_starts_down_and_needs_rise_successes() -> None:
    state = HealthState(rise=2, fall=3, up=False)
    assert not state.up
    assert transitions(state, "++") == [(False, False), (True, True)]


# --- probe against real origins ---------------------------------------------------------------------------------------

BIG = b"x" * BODY_LIMIT + b"ok"


def response(status: int, body: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 500: b"Internal Server Error", 503: b"Service Unavailable"}.get(status, b"Other")
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, reason, len(body), extra, body)


ANSWERS: dict[bytes, bytes] = {
    b"/ok": response(200, b"all ok"),
    b"/redirect": response(302, b"", b"Location: /ok\r\n"),
    b"/fail": response(500, b"broken"),
    b"/garbage": b"HELLO THERE\r\n\r\n",
    b"/big": response(200, BIG),
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n3\r\n ok\r\n0\r\n\r\n",
    b"/until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstill ok",
    b"/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response(200, b"ok"),
    b"/upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
    b"/truncated-head": b"HTTP/1.1 200 OK\r\nContent-Le",
    b"/huge-head": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"y" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    b"/large-head": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"y" * 60_000 + b"\r\n" + response(200, b"ok")[17:],
}


class Origins:
    """An HTTP/1.1 origin answering by path (see ANSWERS; /slow never answers, /close closes), recording heads."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(1)
            if first != b"G":  # e.g. a TLS ClientHello sent to this plain-HTTP port
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            head = first + await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(30)
            elif path != b"/close":
                writer.write(ANSWERS[path])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=ssl_context)
        return server, server.sockets[0].getsockname()[1]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await scenario()

    uvloop.run(bounded())


def check_of(path: str, **changes: object) -> HealthCheck:
    return HealthCheck(path=path, **{"timeout": 1.0, **changes})  # type: ignore[arg-type]


async def probe_path(path: str, **changes: object) -> tuple[ProbeResult, Origins]:
    origins = Origins()
    server, port = await origins.start()
    async with server:
        result = await probe(Origin("http", "127.0.0.1", port), check_of(path, **changes), None, None, "blog.example")
    return result, origins


@pytest.mark.parametrize(
    ("path", "changes", "ok", "reason"),
    [
        ("/ok", {}, True, "status 200"),
        ("/redirect", {}, True, "status 302"),
        ("/fail", {}, False, "status 500 not in 200-399"),
        ("/redirect", {"status": (200, 299)}, False, "status 302 not in 200-299"),
        ("/fail", {"status": (500, 500)}, True, "status 500"),
        ("/ok", {"body": "ok"}, True, "status 200"),
        ("/ok", {"body": "healthy"}, False, "body does not contain 'healthy'"),
        ("/fail", {"body": "broken"}, False, "status 500 not in 200-399"),
        ("/big", {"body": "ok"}, False, "body does not contain 'ok'"),
        ("/big", {"body": "xxx"}, True, "status 200"),
        ("/chunked", {"body": "all ok"}, True, "status 200"),  # found across chunks
        ("/chunked", {"body": "3\r\n"}, False, "body does not contain '3\\r\\n'"),  # framing is not body
        ("/until-close", {"body": "still ok"}, True, "status 200"),
        ("/early-hints", {}, True, "status 200"),
        ("/upgrade", {}, False, "status 101 not in 200-399"),
        ("/garbage", {}, False, "invalid HTTP response: "),
        ("/close", {}, False, "connection closed without a response"),
        ("/truncated-head", {}, False, "connection closed in the middle of the response head"),
        ("/huge-head", {}, False, "response head larger than 64 KiB"),
        ("/large-head", {"body": "ok"}, True, "status 200"),
        ("/slow", {"timeout": 0.3}, False, "timed out after 0.3s while waiting for the response head"),
    ],
)
def test_probe_reasons(path: str, changes: dict, ok: bool, reason: str) -> None:
    async def scenario() -> None:
        result, _ = await probe_path(path, **changes)
        assert (result.ok, result.reason[: len(reason)]) == (ok, reason)
        if reason.endswith(": "):
            assert len(result.reason) > len(reason)  # the parser's own words follow
        assert 0 < result.latency < 1.0

    run(scenario)


def test_probe_sends_a_minimal_closing_get_with_the_host() -> None:
    async def scenario() -> None:
        _, origins = await probe_path("/ok")
        assert origins.heads == [
            b"GET /ok HTTP/1.1\r\nHost: blog.example\r\nUser-Agent: tlsedge-health-check\r\n"
            b"Connection: close\r\n\r\n"
        ]

    run(scenario)


def test_probe_of_a_closed_port_says_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connecting is refused

        async def scenario() -> None:
            result = await probe(Origin("http", "127.0.0.1", port), check_of("/"), None, None, "x")
            assert (result.ok, result.reason) == (False, "connection refused")

        run(scenario)


# --- TLS --------------------------------------------------------------------------------------------------------------


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def probe_tls(server_ctx: ssl.SSLContext | None, client_ctx: ssl.SSLContext, name: str,
                    path: str = "/ok") -> ProbeResult:
    origins = Origins()
    server, port = await origins.start(server_ctx)
    async with server:
        return await probe(Origin("https", "127.0.0.1", port), check_of(path), client_ctx, name, "blog.example")


def test_probe_over_tls_verifies_the_origin(pki) -> None:
    good = pki.good("origin.test")

    async def scenario() -> None:
        result = await probe_tls(server_context(good.cert, good.key), client_context(pki.ca_pem), "origin.test")
        assert (result.ok, result.reason) == (True, "status 200")

    run(scenario)


def test_probe_explains_a_certificate_for_another_name(pki) -> None:
    wrong = pki.wrong_name("origin.test")

    async def scenario() -> None:
        result = await probe_tls(server_context(wrong.cert, wrong.key), client_context(pki.ca_pem), "origin.test")
        assert not result.ok
        assert result.reason.startswith("origin certificate rejected: ")
        assert "origin.test" in result.reason or "mismatch" in result.reason.lower()

    run(scenario)


def test_probe_explains_plain_http_on_a_tls_port(pki) -> None:
    async def scenario() -> None:
        result = await probe_tls(None, client_context(pki.ca_pem), "origin.test")
        assert (result.ok, result.reason) == (
            False, "TLS handshake with origin failed: the origin does not speak TLS on this port (plain HTTP?)")

    run(scenario)


def test_probe_times_out_in_a_stalled_handshake(pki) -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers the ClientHello; returns when the client gives up
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            result = await probe(Origin("https", "127.0.0.1", port), check_of("/", timeout=0.3),
                                 client_context(pki.ca_pem), "origin.test", "blog.example")
        assert (result.ok, result.reason) == (False, "timed out after 0.3s during the TLS handshake")

    run(scenario)
