"""Active health checks: rise/fall counting (sans-IO) and one probe of one origin server.

A server is assumed up until ``fall`` checks in a row fail, then stays down until ``rise`` checks in a row pass (as in
HAProxy), so one lost packet neither takes a server out nor puts a broken one back. The probe opens a fresh
connection every time: a check must see what a new client connection would see (refused port, failing handshake),
not what an old keep-alive connection still gets.

The probe is not on the hot path; it is written for clear failure reasons, which operators read in the error log and
in ``tlsedge status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

import httptools

from tlsedge.config.schema import HealthCheck, Origin
from tlsedge.upstream.tls import describe_tls_failure

BODY_LIMIT = 64 * 1024  # only the start of the body is searched for `HealthCheck.body`
HEAD_LIMIT = 64 * 1024  # a response head larger than this is a failure, not something to keep reading
_READ_SIZE = 64 * 1024
_CONNECT = "while connecting"
_TLS = "during the TLS handshake"


class HealthState:
    """Up/down state of one server from consecutive check results; starts up unless known to be down."""

    __slots__ = ("_up", "failures", "fall", "rise", "successes")

    def __init__(self, rise: int, fall: int, up: bool = True) -> None:
        self.rise = rise
        self.fall = fall
        self._up = up
        self.successes = 0  # consecutive passed checks (0 after a failure)
        self.failures = 0  # consecutive failed checks (0 after a success)

    @property
    def up(self) -> bool:
        return self._up

    def record(self, ok: bool) -> bool:
        """Count one check result; True when it changed the state (the caller logs and publishes transitions)."""
        if ok:
            self.successes += 1
            self.failures = 0
            if not self._up and self.successes >= self.rise:
                self._up = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self._up and self.failures >= self.fall:
                self._up = False
                return True
        return False


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of one check: ``reason`` is "status 200" on success, else why it failed, in operator words."""

    ok: bool
    reason: str
    latency: float  # seconds from starting the connection to the verdict


class _Response:
    """httptools callbacks keeping only what a check looks at: the final status and the start of the body."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0  # of the final response (informational 1xx responses are skipped)
        self.head_bytes = 0  # fed before the final head was complete
        self.body = bytearray()
        self.complete = False

    @property
    def head_done(self) -> bool:
        return self.status != 0

    def feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the final head did not end within the first HEAD_LIMIT bytes."""
        if self.head_done:
            self._parse(data)
            return True
        room = HEAD_LIMIT - self.head_bytes
        self.head_bytes += len(data)
        if room > 0:
            self._parse(data[:room])
        if len(data) > room:
            if not self.head_done:
                return False
            self._parse(data[room:])
        return True

    def _parse(self, data: bytes) -> None:
        # After a 101 the bytes belong to another protocol; its status is all a check needs.
        with contextlib.suppress(httptools.HttpParserUpgrade):
            self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200 or status == 101:
            self.status = status

    def on_body(self, body: bytes) -> None:
        room = BODY_LIMIT - len(self.body)
        if room > 0:
            self.body += body[:room]

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True


class _Probe:
    """One check in progress; ``phase`` names what it was doing, for the reason given when it times out or fails."""

    def __init__(self, origin: Origin, check: HealthCheck, ssl_context: ssl.SSLContext | None,
                 server_name: str | None, host: str, preface: bytes) -> None:
        self.origin = origin
        self.preface = preface
        self.check = check
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.request = (
            f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tlsedge-health-check\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        self.needle = check.body.encode() if check.body is not None else None
        self.phase = _CONNECT
        self.writer: asyncio.StreamWriter | None = None
        self.finished = False  # the response was read as far as the check needs; close politely

    async def run(self) -> tuple[bool, str]:
        reader, self.writer = await asyncio.open_connection(self.origin.host.strip("[]"), self.origin.port)
        if self.preface:
            self.writer.write(self.preface)
        if self.ssl_context is not None:
            self.phase = _TLS
            await self.writer.start_tls(self.ssl_context, server_hostname=self.server_name)
        self.phase = "while waiting for the response head"
        self.writer.write(self.request)
        response = _Response()
        while True:
            data = await reader.read(_READ_SIZE)
            eof = not data
            if eof and not response.head_done:
                self.finished = True
                if response.head_bytes == 0:
                    return False, "connection closed without a response"
                return False, "connection closed in the middle of the response head"
            if not eof:
                if not response.feed(data):
                    return False, f"response head larger than {HEAD_LIMIT // 1024} KiB"
                if not response.head_done:
                    continue
            verdict = self._verdict(response, eof)
            if verdict is not None:
                self.finished = eof or response.complete
                return verdict

    def _verdict(self, response: _Response, eof: bool) -> tuple[bool, str] | None:
        """The result once the head (and, for a body check, enough of the body) is in; None to keep reading.

        At EOF a close-delimited body has ended, and a truncated one is judged on what arrived.
        """
        low, high = self.check.status
        if not low <= response.status <= high:
            return False, f"status {response.status} not in {low}-{high}"
        if self.needle is None or self.needle in response.body:
            return True, f"status {response.status}"
        if eof or response.complete or len(response.body) >= BODY_LIMIT:
            return False, f"body does not contain {self.check.body!r}"
        self.phase = "while reading the body"
        return None

    def describe(self, exc: OSError | httptools.HttpParserError) -> str:
        """An operator-facing reason for an exception raised while probing."""
        if isinstance(exc, httptools.HttpParserError):
            return f"invalid HTTP response: {exc}"
        if isinstance(exc, TimeoutError):
            return f"timed out after {self.check.timeout}s {self.phase}"
        if self.phase == _TLS and isinstance(exc, ssl.SSLError | ConnectionError):
            return describe_tls_failure(exc)
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.origin.host}: {exc.strerror}"
        if isinstance(exc, ConnectionResetError):
            return f"connection reset by the origin {self.phase}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS error {self.phase}: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
        if self.phase == _CONNECT:
            return f"cannot connect: {exc.strerror or exc}"
        return f"connection failed {self.phase}: {exc.strerror or exc}"

    def close(self) -> None:
        if self.writer is None:
            return
        if self.finished:
            self.writer.close()
        else:
            self.writer.transport.abort()


async def probe(origin: Origin, check: HealthCheck, ssl_context: ssl.SSLContext | None, server_name: str | None,
                host: str, preface: bytes = b"") -> ProbeResult:
    """Check ``origin`` once: fresh connection (TLS when ``ssl_context`` is given), ``GET check.path``, judge the
    status range and, when ``check.body`` is set, the first 64 KiB of the body; everything within ``check.timeout``.

    Never raises for what the origin does: every failure becomes a ProbeResult with a reason.
    """
    attempt = _Probe(origin, check, ssl_context, server_name, host, preface)
    start = time.monotonic()
    try:
        async with asyncio.timeout(check.timeout):
            ok, reason = await attempt.run()
    except (OSError, httptools.HttpParserError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
        ok, reason = False, attempt.describe(exc)
    finally:
        attempt.close()
    return ProbeResult(ok, reason, time.monotonic() - start)
