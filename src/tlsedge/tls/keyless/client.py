"""The edge's side of keyless TLS: a pool of key-server connections that signs CertificateVerify inputs.

One `KeyserverPool` per keyless site per worker process. It keeps one mutual-TLS connection per key server, sends
many requests on it (matched by id, so answers may come back in any order), pings every server to know which are up,
and fails over: a request that meets a broken connection or no answer in time goes to the next server, within one
overall timeout. A definite answer (a refusal) is final: the other servers share the policy that refused it.

Per request the cost is one frame write, one future and one timer; the only tasks are one connect task per
connection attempt (so a request that gives up does not abort a connect others wait for) and one ping task per
server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tlsedge.pki.local_ca import private_file_problem
from tlsedge.tls.keyless.wire import (
    RETRYABLE_ERRORS,
    ErrorReply,
    Frame,
    FrameError,
    FrameReader,
    MessageError,
    decode_response,
    encode_ping,
    encode_sign,
    key_id,
)

PIN_PREFIX = "sha256/"
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
_MAX_ID = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class KeyserverEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class KeylessError(Exception):
    """A signature the pool could not get. ``code``: "refused" (a key server said no; ``reason`` is its error name,
    e.g. "name_refused"), "timeout" (no answer within the pool's timeout) or "unavailable" (no key server reachable).
    """

    def __init__(self, code: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class _Unavailable(Exception):
    """This key server cannot answer now (connection failed or lost, wrong pin, protocol error): try another."""


def pin_for_certificate(pem: bytes) -> bytes:
    """The pin of a key server: SHA-256 of its certificate's SubjectPublicKeyInfo DER (the first certificate)."""
    return key_id(x509.load_pem_x509_certificate(pem).public_key())


def format_pin(pin: bytes) -> str:
    """``sha256/<base64>``, the form pins take in configuration (as in HPKP and curl's --pinnedpubkey)."""
    if len(pin) != 32:
        raise ValueError(f"a pin is a 32-byte SHA-256 digest, not {len(pin)} bytes")
    return PIN_PREFIX + base64.b64encode(pin).decode("ascii")


def parse_pin(text: str) -> bytes:
    """The digest of a ``sha256/<base64>`` pin; ValueError says what is wrong and how to get a right one."""
    how = ("get it with `tlsedge keyserver --check` on the key server, or: openssl x509 -in keyserver.pem -pubkey "
           "-noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64")
    if not text.startswith(PIN_PREFIX):
        raise ValueError(f"pin {text[:60]!r} must start with {PIN_PREFIX!r}; {how}")
    encoded = text[len(PIN_PREFIX) :].strip()
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"pin {text[:60]!r}: {encoded[:50]!r} is not base64; {how}") from None
    if len(digest) != 32:
        raise ValueError(f"pin {text[:60]!r} holds {len(digest)} bytes, a SHA-256 pin holds 32; {how}")
    return digest


def client_context(client_cert: Path, client_key: Path) -> ssl.SSLContext:
    """The edge's TLS context for key servers: TLS 1.3, its client certificate, and *no* CA or hostname check.

    The key server is authenticated by its pin instead (checked right after the handshake, before any request is
    sent), which is at least as strong: in TLS 1.3 the server's CertificateVerify proves it holds the private key of
    the certificate it presented (OpenSSL checks that signature whatever the verify mode), and the pin binds that
    key. A CA would add only a way to be fooled by another certificate it issued; a hostname adds nothing when the
    key itself is fixed. ValueError names the file and the reason.
    """
    problem = private_file_problem(client_key)
    if problem is not None:
        raise ValueError(problem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(client_cert, client_key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot use the key server client certificate {client_cert} with key {client_key}: "
                         f"{exc}; give a PEM certificate from the key server's edge CA and its own key") from None
    return context


class _Connection(asyncio.Protocol):
    """One TLS connection to a key server: writes request frames, resolves each id's future from the answers."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._frames = FrameReader()
        self._pending: dict[int, asyncio.Future[bytes | ErrorReply]] = {}
        self._next_id = 1
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            self._answer(exc.frames)
            self._abort(f"protocol error from the key server: {exc}")
            return
        self._answer(frames)

    def _answer(self, frames: list[Frame]) -> None:
        pending = self._pending
        self._answered = self._answered or bool(frames)
        for frame in frames:
            future = pending.pop(frame.request_id, None)
            if future is None or future.done():
                continue  # answer to a request that gave up
            try:
                future.set_result(decode_response(frame))
            except MessageError as exc:
                future.set_exception(_Unavailable(f"malformed answer from the key server: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {_reason(exc)}" if exc else "connection closed by the key server"
        if not self._answered:
            reason += (" before any answer (if it keeps happening, the key server refuses this edge's client "
                       "certificate: its log says why)")
        self._fail_all(reason)
        self.endpoint.connection_lost(self, reason)

    async def call(self, encode: Callable[[int], bytes]) -> bytes | ErrorReply:
        """Send the frame ``encode(id)`` and wait for its answer (the caller bounds the wait)."""
        if self.closed or self.transport is None:
            raise _Unavailable("connection closed")
        request_id = self._allocate()
        future: asyncio.Future[bytes | ErrorReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.endpoint.in_flight += 1
        try:
            self.transport.write(encode(request_id))
            return await future
        finally:
            self._pending.pop(request_id, None)
            self.endpoint.in_flight -= 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._fail_all("connection closed by the edge")

    def _allocate(self) -> int:
        request_id = self._next_id
        while request_id in self._pending:
            request_id = request_id % _MAX_ID + 1
        self._next_id = request_id % _MAX_ID + 1
        return request_id

    def _abort(self, reason: str) -> None:
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail_all(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_Unavailable(reason))


class _Endpoint:
    """One key server's health (unknown → up/down), its connection, and when to try it again after a failure."""

    def __init__(self, endpoint: KeyserverEndpoint) -> None:
        self.endpoint = endpoint
        self.state = "unknown"
        self.last_error: str | None = None
        self.rtt: float | None = None
        self.in_flight = 0
        self.retry_at = 0.0
        self.connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._backoff = BACKOFF_MIN

    async def connect(self, pool: KeyserverPool) -> _Connection:
        """The open connection, or one being made (shared by every caller waiting for it)."""
        if self.connection is not None and self.connected:
            return self.connection
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect(pool), name=f"keyless-connect "
                                                                     f"{self.endpoint}")
            self._connecting.add_done_callback(self._connected)
        task = self._connecting
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise _Unavailable("the connect was stopped: the pool is closing") from None
            raise

    async def _connect(self, pool: KeyserverPool) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self.endpoint.host, self.endpoint.port
        try:
            async with asyncio.timeout(pool.timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self), host, port, ssl=pool.context, ssl_handshake_timeout=pool.timeout
                )
        except TimeoutError:
            raise _Unavailable(f"connect to {self.endpoint} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise _Unavailable(f"cannot connect to {self.endpoint}: {_reason(exc)}") from None
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        pin = key_id(x509.load_der_x509_certificate(der).public_key()) if der else None
        if pin not in pool.pins:
            transport.abort()
            shown = format_pin(pin) if pin else "no certificate"
            raise _Unavailable(f"{self.endpoint} is not a pinned key server: its certificate has {shown}, which is "
                               "not among the site's keyserver pins")
        self.connection = connection
        return connection

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        """Forget the finished attempt; its error (if any) is marked as retrieved: the waiters report it, and when
        they all gave up there is nobody left to tell."""
        self._connecting = None
        if not task.cancelled():
            task.exception()

    def connection_lost(self, connection: _Connection, reason: str) -> None:
        if connection is self.connection:
            self.connection = None
            self.failed(reason)

    def failed(self, reason: str) -> None:
        """Mark the server down; the wait before the next try doubles per failure (one failure seen by several
        callers at once counts once)."""
        now = asyncio.get_running_loop().time()
        self.state = "down"
        self.last_error = reason
        if self.retry_at <= now:
            self.retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def succeeded(self, rtt: float | None = None) -> None:
        self.state = "up"
        self._backoff = BACKOFF_MIN
        self.retry_at = 0.0
        if rtt is not None:
            self.rtt = rtt

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def drop(self) -> None:
        """Close the connection (its waiting requests fail over); the next use reconnects."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        self.drop()


class KeyserverPool:
    """One per keyless site per worker process; created after fork (lazily connects on first use).

    ``pins``: SHA-256 digests of key servers' SubjectPublicKeyInfo (`parse_pin`); a key server whose certificate
    matches any pin is accepted. ``client_key`` must be mode 0600. ValueError for unusable arguments or files.
    """

    def __init__(
        self,
        endpoints: Sequence[KeyserverEndpoint],
        *,
        pins: Sequence[bytes],
        client_cert: Path,
        client_key: Path,
        timeout: float = 2.0,
        ping_interval: float = 5.0,
        site: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("a keyless site needs at least one key server endpoint")
        if not pins or any(len(pin) != 32 for pin in pins):
            raise ValueError("give at least one key server pin, each a 32-byte SHA-256 digest (see parse_pin)")
        if timeout <= 0 or ping_interval <= 0:
            raise ValueError("timeout and ping_interval must be above zero")
        self.context = client_context(Path(client_cert), Path(client_key))
        self.pins = frozenset(pins)
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.site = site
        self._endpoints = [_Endpoint(e) for e in endpoints]
        self._turn = 0
        self._pingers: list[asyncio.Task[None]] = []
        self._closed = False

    async def sign(
        self, *, key_id: bytes, algorithm: int, payload: bytes, server_name: str | None, client_ip: str
    ) -> bytes:
        """The signature of ``payload`` (a TLS 1.3 CertificateVerify input) by the key ``key_id``.

        Tries the up servers first (fewest requests in flight), then servers due for a retry; moves on after a
        connection failure or when a server's share of the remaining time runs out, never after a refusal.
        """
        def encode(request_id: int) -> bytes:
            return encode_sign(request_id, key_id=key_id, algorithm=algorithm, payload=payload,
                               server_name=server_name, client_ip=client_ip)

        if self._closed:
            raise KeylessError("unavailable", f"{self._who()}the key server pool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tried: list[_Endpoint] = []
        errors: list[str] = []
        while True:
            now = loop.time()
            candidates = self._candidates(now, tried)
            if not candidates or now >= deadline:
                break
            endpoint = candidates[0]
            tried.append(endpoint)
            budget = (deadline - now) / len(candidates)
            try:
                async with asyncio.timeout(budget):
                    connection = await endpoint.connect(self)
                    answer = await connection.call(encode)
            except TimeoutError:
                endpoint.failed(f"no answer within {budget * 1000:.0f} ms")
                errors.append(f"{endpoint.endpoint}: {endpoint.last_error}")
                continue
            except _Unavailable as exc:
                endpoint.failed(str(exc))
                errors.append(f"{endpoint.endpoint}: {exc}")
                continue
            if isinstance(answer, ErrorReply):
                if answer.code in RETRYABLE_ERRORS:
                    endpoint.failed(f"{answer.name}: {answer.text}")
                    errors.append(f"{endpoint.endpoint}: {answer.name}")
                    continue
                endpoint.succeeded()
                raise KeylessError("refused", f"{self._who()}key server {endpoint.endpoint} refused to sign: "
                                   f"{answer.name}: {answer.text}", reason=answer.name)
            endpoint.succeeded()
            return answer
        code = "timeout" if loop.time() >= deadline else "unavailable"
        detail = "; ".join(errors) or self._down_summary()
        raise KeylessError(code, f"{self._who()}no key server could sign ({detail})")

    def start(self) -> None:
        """Start health pings on the running loop: a PING every ``ping_interval`` per key server."""
        if not self._pingers and not self._closed:
            loop = asyncio.get_running_loop()
            self._pingers = [
                loop.create_task(self._pinger(e), name=f"keyless-ping {e.endpoint}") for e in self._endpoints
            ]

    def status(self) -> list[dict]:
        """Per key server: address, state (unknown/up/down), last error, requests in flight, ping round trip."""
        return [
            {
                "endpoint": str(e.endpoint),
                "state": e.state,
                "connected": e.connected,
                "last_error": e.last_error,
                "in_flight": e.in_flight,
                "rtt_ms": None if e.rtt is None else round(e.rtt * 1000, 3),
            }
            for e in self._endpoints
        ]

    async def close(self) -> None:
        """Stop the pings and close every connection; requests still waiting fail as unavailable."""
        self._closed = True
        for task in self._pingers:
            task.cancel()
        if self._pingers:
            await asyncio.wait(self._pingers, timeout=self.timeout)
        self._pingers = []
        for endpoint in self._endpoints:
            endpoint.close()

    async def _ping(self, endpoint: _Endpoint) -> None:
        """One health check: connect if needed, PING, expect the echo; marks the server up or down."""
        loop = asyncio.get_running_loop()
        data = os.urandom(8)
        try:
            async with asyncio.timeout(self.timeout):
                connection = await endpoint.connect(self)
                started = loop.time()
                answer = await connection.call(lambda request_id: encode_ping(request_id, data))
        except TimeoutError:
            endpoint.failed(f"no answer to a ping within {self.timeout * 1000:.0f} ms")
            endpoint.drop()  # a server that cannot echo a ping in time is gone, not busy: reconnect next time
            return
        except _Unavailable as exc:
            endpoint.failed(str(exc))
            return
        if answer == data:
            endpoint.succeeded(loop.time() - started)
        else:
            endpoint.failed(f"bad answer to a ping: {answer!r}"[:200])

    async def _pinger(self, endpoint: _Endpoint) -> None:
        while True:
            await self._ping(endpoint)
            await asyncio.sleep(self.ping_interval)

    def _candidates(self, now: float, tried: list[_Endpoint]) -> list[_Endpoint]:
        """Servers to try, best first: up or unknown ones by fewest in flight (round robin among equals), then
        down ones whose retry time has come or whose connection is still open (it was slow, not gone: one late
        answer must not fail every handshake of a single-server site for the backoff). A down server without a
        connection and still backing off is not tried at all, so a dead site fails at once."""
        self._turn = (self._turn + 1) % len(self._endpoints)
        order = self._endpoints[self._turn :] + self._endpoints[: self._turn]
        healthy = [e for e in order if e.state != "down" and e not in tried]
        healthy.sort(key=lambda e: e.in_flight)
        due = [e for e in order if e.state == "down" and e not in tried and (e.retry_at <= now or e.connected)]
        return healthy + due

    def _down_summary(self) -> str:
        return "; ".join(f"{e.endpoint}: down ({e.last_error})" for e in self._endpoints) or "no key servers"

    def _who(self) -> str:
        return f"keyless site {self.site!r}: " if self.site else ""


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__

