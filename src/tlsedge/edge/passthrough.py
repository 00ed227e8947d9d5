"""Pass-through: a client's TLS bytes spliced to an origin server of the site, never decrypted.

Why this shape: the acceptor has only *peeked* at the ClientHello, so the bytes are still in the client socket;
replaying them is simply reading the socket once the origin is connected. Until then the client side is paused, so
nothing is buffered in Python. Each direction forwards what one read returned with one write, and pauses reading
from its source while the other side's write buffer is over its high-water mark (backpressure both ways).

A tunnel holds no timer: the worker's sweep closes tunnels that were silent for ``idle_timeout`` or open for
``max_duration``. One JSON line per tunnel goes to the access log, with the client's JA4 fingerprint so an operator
can ban by fingerprint (``deny_ja4``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from tlsedge.config.modes import PassthroughConfig
from tlsedge.upstream.proxy_protocol import PP2_TYPE_AUTHORITY, proxy_v2_header

if TYPE_CHECKING:
    from tlsedge.edge.worker import Edge
    from tlsedge.pipeline.site import SiteRuntime
    from tlsedge.upstream.server import UpstreamServer

log = logging.getLogger("tlsedge.passthrough")


class _Side(asyncio.Protocol):
    """One socket of a tunnel; what it reads is written to the other side."""

    __slots__ = ("bytes", "early", "eof", "other", "start_paused", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, *, start_paused: bool = False) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.bytes = 0  # read from this side
        self.eof = False
        self.start_paused = start_paused
        self.early: list[bytes] = []  # read before the other side was connected (at most one read: then paused)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.start_paused:
            transport.pause_reading()  # type: ignore[attr-defined]  # the client's bytes wait in the socket

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:  # uvloop may start reading despite a pause in connection_made: keep the bytes, stop reading
            self.early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Half-close: pass the end of this direction on, keep the other direction open until it ends too."""
        self.eof = True
        tunnel = self.tunnel
        if tunnel.end is None:  # the log names who ended the exchange, not who closed last
            tunnel.end = ("client" if self is tunnel.client else "origin") + " closed"
        other = self.other
        if other is None or other.transport is None or other.eof or not other.transport.can_write_eof():
            return False  # close this side now; connection_lost ends the tunnel
        other.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_lost(self, exc)


class Tunnel:
    """A client connection of a pass-through site and the origin connection it is spliced to."""

    __slots__ = (
        "client", "client_addr", "counted_ip", "edge", "end", "ja4", "last_active", "last_bytes", "origin",
        "server", "settings", "site", "sni", "started",
    )  # fmt: skip

    def __init__(
        self,
        edge: Edge,
        site: SiteRuntime,
        client_addr: tuple[str, int],
        sni: str | None,
        ja4: str,
        counted_ip: str | None,
    ) -> None:
        self.edge = edge
        self.site = site
        self.settings: PassthroughConfig = site.config.passthrough or PassthroughConfig()
        self.client_addr = client_addr
        self.sni = sni
        self.ja4 = ja4
        self.counted_ip = counted_ip  # the acceptor's per-address count, given back once when the tunnel ends
        self.client = _Side(self, start_paused=True)
        self.origin = _Side(self)
        self.client.other, self.origin.other = self.origin, self.client
        self.server: UpstreamServer | None = None
        self.started = self.last_active = edge.loop.time()
        self.last_bytes = 0
        self.end: str | None = None

    async def run(self, conn: socket.socket) -> None:
        """Take the client socket (paused), connect an origin server, then let bytes flow both ways."""
        loop = self.edge.loop
        try:
            await loop.connect_accepted_socket(lambda: self.client, conn)
        except OSError as exc:
            conn.close()
            self._finish(f"client socket failed: {exc}")
            return
        server = await self._connect()
        client = self.client.transport
        if server is None:
            if client is not None and not client.is_closing():
                client.abort()
            return
        if self not in self.edge.tunnels or client is None:  # the client left while the origin was connecting
            self.origin.transport.abort()
            return
        self.server = server
        server.conns.active += 1  # least_requests balancing sees tunnels too
        if self.settings.proxy_protocol:
            self.origin.transport.write(self._proxy_header())
        if self.client.early:
            self.origin.transport.write(b"".join(self.client.early))
            self.client.early.clear()
        client.resume_reading()

    async def _connect(self) -> UpstreamServer | None:
        """An origin server of the site's pool, retried on other servers as the pool allows; None: none answered."""
        pool = next(iter(self.site.pools.values()))
        key = self.client_addr[0].encode()
        tried: list[UpstreamServer] = []
        loop = self.edge.loop
        timeout = self.site.config.origin.connect_timeout
        last = "no server is up"
        for _ in range(pool.config.retries + 1):
            server = pool.pick(key, tried)
            if server is None:
                break
            tried.append(server)
            origin = server.config.origin
            started = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: self.origin, origin.host, origin.port)
            except (OSError, TimeoutError) as exc:
                last = f"{origin.host}:{origin.port}: {'connect timeout' if isinstance(exc, TimeoutError) else exc}"
                server.record_failure(loop.time(), last)
                continue
            server.record_connect(loop.time() - started)
            return server
        log.warning("site %s: pass-through for %s (SNI %s) failed: %s", self.site.name, self.client_addr[0],
                    self.sni, last)
        self.end = f"no origin: {last}"
        return None

    def _proxy_header(self) -> bytes:
        transport = self.client.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        server = (local[0], local[1]) if local else ("0.0.0.0", 0)
        tlvs = [(PP2_TYPE_AUTHORITY, self.sni.encode())] if self.sni else []
        return proxy_v2_header(self.client_addr, server, tlvs=tlvs)

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        """One side closed: close the other (after it flushed what it holds), and end the tunnel once."""
        if self.end is None:
            self.end = ("client" if side is self.client else "origin") + (" reset" if exc else " closed")
        other = side.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.close()
            return
        self._finish(self.end)

    def check(self, now: float) -> None:
        """The sweep's look: silent for idle_timeout, or open for max_duration, closes both sides."""
        total = self.client.bytes + self.origin.bytes
        if total != self.last_bytes:
            self.last_bytes, self.last_active = total, now
            if now - self.started < self.settings.max_duration:
                return
        if now - self.started >= self.settings.max_duration:
            self.close("max_duration")
        elif now - self.last_active >= self.settings.idle_timeout:
            self.close("idle_timeout")

    def close(self, reason: str) -> None:
        self.end = reason
        for side in (self.client, self.origin):
            if side.transport is not None:
                side.transport.abort()
        if self.client.transport is None:
            self._finish(reason)

    def _finish(self, end: str) -> None:
        edge = self.edge
        if self not in edge.tunnels:
            return
        edge.tunnels.discard(self)
        if self.server is not None:
            self.server.conns.active -= 1
        if self.counted_ip is not None and edge.peer is not None:
            edge.peer.closed(self.counted_ip)
        if edge.access.enabled:
            upstream = str(self.server.config.origin) if self.server is not None else None
            edge.access.write_record({
                "site": self.site.name, "client": self.client_addr[0], "mode": "passthrough", "sni": self.sni,
                "ja4": self.ja4, "upstream": upstream, "bytes_in": self.client.bytes, "bytes_out": self.origin.bytes,
                "duration_ms": round((edge.loop.time() - self.started) * 1000, 3), "end": end,
            })  # fmt: skip
        edge.connection_closed()
