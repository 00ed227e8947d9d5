"""One HTTP/1.1 connection to an origin server, as an asyncio.Protocol with an httptools response parser.

The connection knows nothing about sites or clients beyond the small `OriginClient` interface: it hands response
events to whichever client exchange currently owns it, and goes back to its pool between exchanges.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Protocol

import httptools

from tlsedge.upstream.tls import describe_tls_failure

if TYPE_CHECKING:
    from tlsedge.upstream.pool import OriginPool


class OriginClient(Protocol):
    """What an origin connection reports to the client exchange that owns it."""

    def origin_head(self, conn: OriginConnection, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def origin_body(self, body: bytes) -> None: ...
    def origin_done(self, conn: OriginConnection, reusable: bool) -> None: ...
    def origin_lost(self, conn: OriginConnection, reason: str) -> None: ...
    def origin_timeout(self, conn: OriginConnection) -> None: ...
    def origin_upgraded(self, conn: OriginConnection, headers: list[tuple[bytes, bytes]]) -> None: ...
    def tunnel_from_origin(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def pause_origin_writes(self) -> None: ...
    def resume_origin_writes(self) -> None: ...


class _SkipBody(Exception):
    """Raised from the parser callback when the response to a HEAD request is complete at its headers."""


class OriginConnection(asyncio.Protocol):
    """An origin connection; `client` is set while an exchange uses it, None while it idles in the pool.

    After a ``101 Switching Protocols`` answer to an upgrade request the connection is a tunnel: bytes go to the
    client unparsed, and it never returns to the pool.
    """

    __slots__ = (
        "busy",
        "client",
        "closed",
        "deadline",
        "got_bytes",
        "headers",
        "informational",
        "parser",
        "pool",
        "requests",
        "skip_body",
        "tls_noted",
        "transport",
        "tunnel",
        "upgrade_allowed",
    )

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: OriginClient | None = None
        self.deadline = 0.0
        self.requests = 0
        self.got_bytes = False
        self.skip_body = False
        self.informational = False
        self.closed = False
        self.busy = False  # an exchange is in flight (counted in the pool's `active`)
        self.tls_noted = False
        self.upgrade_allowed = False
        self.tunnel = False
        self.headers: list[tuple[bytes, bytes]] = []

    # --- used by the client side -------------------------------------------------------------------------------

    def send(self, client: OriginClient, data: bytes, *, head_request: bool, upgrade: bool, now: float) -> None:
        """Start an exchange: write the request head (and any buffered body) and wait for the response."""
        self.client = client
        self.requests += 1
        self.got_bytes = False
        self.skip_body = head_request
        self.upgrade_allowed = upgrade
        self.headers = []
        self.deadline = now + self.pool.timeouts.response_timeout
        if not self.busy:
            self.busy = True
            self.pool.active += 1
        self.transport.write(data)

    def _end_exchange(self) -> None:
        if self.busy:
            self.busy = False
            self.pool.active -= 1

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection: used when an exchange ends in a state that leaves the framing unknown."""
        self._drop(graceful=False)

    def close_tunnel(self) -> None:
        """End a tunnel from the client's side: flush what the client sent, then close."""
        self._drop(graceful=True)

    def _drop(self, *, graceful: bool) -> None:
        self.client = None
        self._end_exchange()
        if not self.closed:
            self.closed = True
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()
            self.pool.forget(self)

    # --- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes from an idle origin connection break the framing of any later response: drop it.
            self.abort()
            return
        if self.tunnel:
            client.tunnel_from_origin(data)
            return
        self.got_bytes = True
        self.deadline = self.pool.loop.time() + self.pool.timeouts.read_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Only reached after a 101 the client asked for: what follows the head is already tunnelled data.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if self.tunnel and offset < len(data):
                client.tunnel_from_origin(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _SkipBody):
                # httptools wraps callback exceptions: this one marks the end of a response to HEAD.
                keep_alive = self.parser.should_keep_alive()
                self.parser = httptools.HttpResponseParser(self)
                self._complete(keep_alive)
                client.flush()
                return
            self.abort()
            client.origin_lost(self, f"invalid response from origin: {exc.__context__ or exc}")
        client.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        client = self.client
        self.client = None
        self._end_exchange()
        if not was_closed:
            self.pool.forget(self)
        if client is not None:
            if isinstance(exc, ssl.SSLError):
                # TLS 1.3: an origin that refuses our (missing) client certificate says so after our handshake ended.
                reason = describe_tls_failure(exc)
            else:
                reason = f"origin closed the connection ({exc})" if exc else "origin closed the connection"
            client.origin_lost(self, reason)
            client.flush()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_origin_writes()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_origin_writes()

    # --- httptools callbacks -----------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not self.tls_noted:
            self._note_tls_session()
        if status < 200:
            # 1xx: the edge answered Expect itself, so interim responses are not forwarded; 101 starts a tunnel.
            if status == 101:
                if not self.upgrade_allowed:
                    raise httptools.HttpParserError("101 Switching Protocols to a request that asked no upgrade")
                self.tunnel = True
                self.deadline = 0.0
                self.client.origin_upgraded(self, self.headers)
                return
            self.informational = True
            self.headers = []
            return
        self.client.origin_head(self, status, self.headers)
        if self.skip_body:
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        self.client.origin_body(body)

    def _note_tls_session(self) -> None:
        """Once per connection: count a resumed TLS session, and keep the session for the next connection."""
        self.tls_noted = True
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        if ssl_object.session_reused:
            self.pool.tls_resumed += 1
        session = ssl_object.session
        context = self.pool.ssl_context
        if session is not None and self.pool.server_name:
            context.remember(self.pool.server_name, session)

    def on_message_complete(self) -> None:
        if self.tunnel:
            return
        if self.informational:
            self.informational = False
            return
        self._complete(self.parser.should_keep_alive())

    def _complete(self, keep_alive: bool) -> None:
        client = self.client
        self.client = None
        self.deadline = 0.0
        self._end_exchange()
        client.origin_done(self, keep_alive)

    def on_timeout(self) -> None:
        """Called by the sweeper when `deadline` passed: idle too long in the pool, or the origin is too slow."""
        client = self.client
        if client is None:
            self._drop(graceful=True)
            return
        client.origin_timeout(self)
        client.flush()
