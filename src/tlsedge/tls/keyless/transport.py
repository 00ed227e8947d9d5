"""The asyncio side of keyless TLS: the sans-IO engine on a raw TCP connection, plaintext to the HTTP layer.

Why a transport of our own: the HTTP layer (``edge.http1.ClientConnection``) is an ``asyncio.Protocol`` that expects
a transport with ``write``, ``pause_reading`` and ``get_extra_info``. Terminated sites get uvloop's TLS transport;
keyless sites get this one, so the HTTP layer, the guard and the cache work unchanged on top of it.

The one remote step, the CertificateVerify signature, is awaited in a task of its own; the event loop keeps
serving other connections meanwhile. Nothing else in a handshake or on the data path creates a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tlsedge.tls.keyless.client import KeylessError
from tlsedge.tls.keyless.engine import (
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    KeylessServerConnection,
    ProtocolError,
    SignatureNeeded,
)

log = logging.getLogger("tlsedge.keyless")

Signer = Callable[[SignatureNeeded], Awaitable[bytes]]


class KeylessSession:
    """What ``get_extra_info("ssl_object")`` returns: the site (read by ``TlsTable.site_of``) and the cipher suite."""

    __slots__ = ("cipher_suite", "tlsedge_site")

    def __init__(self, site: str, done: HandshakeComplete) -> None:
        self.tlsedge_site = site
        self.cipher_suite = done.cipher_suite


class KeylessProtocol(asyncio.Protocol):
    """Drives one engine on one raw TCP transport; after the handshake, creates the HTTP protocol on top."""

    def __init__(
        self,
        engine: KeylessServerConnection,
        site: str,
        app_factory: Callable[[], asyncio.Protocol],
        signer: Signer,
        handshake_timeout: float,
        on_failure: Callable[[str], None] | None = None,
        on_unused: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.site = site
        self.app_factory = app_factory
        self.signer = signer
        self.handshake_timeout = handshake_timeout
        self.on_failure = on_failure  # logs why a handshake failed
        self.on_unused = on_unused  # the connection ended before the HTTP layer had it
        self.raw: asyncio.Transport | None = None
        self.app: asyncio.Protocol | None = None
        self.app_transport: KeylessTransport | None = None
        self.signing: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self._handle(self.engine.receive(data))

    def _handle(self, events: list) -> None:
        """Send what the engine queued, then act on its events (plaintext goes up in one call per read)."""
        out = self.engine.data_to_send()
        if out and self.raw is not None:
            self.raw.write(out)
        plain: list[bytes] = []
        for event in events:
            kind = type(event)
            if kind is ApplicationData:
                plain.append(event.data)
            elif kind is SignatureNeeded:
                self.signing = asyncio.get_running_loop().create_task(self._sign(event))
            elif kind is HandshakeComplete:
                self._established(event)
            elif kind is CloseNotify:
                self._deliver(plain)
                plain = []
                self._peer_closed()
            elif kind is ProtocolError:
                self._deliver(plain)
                self._fail(f"TLS alert {event.alert}: {event.reason}")
                return
        self._deliver(plain)

    def _deliver(self, plain: list[bytes]) -> None:
        if plain and self.app is not None:
            self.app.data_received(plain[0] if len(plain) == 1 else b"".join(plain))

    async def _sign(self, need: SignatureNeeded) -> None:
        try:
            signature = await self.signer(need)
        except KeylessError as exc:
            if self.closed:
                return
            self.engine.signature_failed(str(exc))
            self._handle([])
            self._fail(f"no signature: {exc}")
            return
        finally:
            self.signing = None
        if not self.closed:
            self._handle(self.engine.provide_signature(signature))

    def _established(self, done: HandshakeComplete) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.app_transport = KeylessTransport(self, KeylessSession(self.site, done))
        self.app = self.app_factory()
        self.app.connection_made(self.app_transport)

    def _peer_closed(self) -> None:
        """close_notify: answer with ours and close (TLS 1.3 allows half-close, HTTP/1.1 does not need it)."""
        if self.app is not None:
            self.app.eof_received()
        if self.raw is not None and not self.raw.is_closing():
            self.engine.close()
            self.raw.write(self.engine.data_to_send())
            self.raw.close()

    def _fail(self, reason: str) -> None:
        if self.on_failure is not None and self.app is None:
            self.on_failure(reason)
        if self.raw is not None:
            self.raw.close()  # the alert queued by the engine was written first

    def _handshake_expired(self) -> None:
        self.timer = None
        if self.app is None and self.raw is not None:
            self._fail(f"handshake not complete within {self.handshake_timeout:g} s")
            self.raw.abort()

    def eof_received(self) -> bool:
        if self.app is not None:
            self.app.eof_received()
        return False

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.signing is not None:
            self.signing.cancel()
        if self.app is not None:
            self.app.connection_lost(exc)
        elif self.on_unused is not None:
            self.on_unused()


class KeylessTransport(asyncio.Transport):
    """The HTTP layer's view of a keyless connection: plaintext in, records out."""

    def __init__(self, protocol: KeylessProtocol, session: KeylessSession) -> None:
        super().__init__()
        self._protocol = protocol
        self._engine = protocol.engine
        self._raw = protocol.raw
        self._session = session

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._raw.is_closing():
            return
        engine = self._engine
        engine.send(data)
        self._raw.write(engine.data_to_send())

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        raw = self._raw
        if raw.is_closing():
            return
        self._engine.close()
        raw.write(self._engine.data_to_send())
        raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol.app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol.app = protocol  # type: ignore[assignment]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._session
        if name == "cipher":
            return (self._session.cipher_suite, "TLSv1.3", None)
        return self._raw.get_extra_info(name, default)
