"""Keep-alive connection pool towards one origin server, per worker.

Idle connections are reused last-in first-out (the warmest socket first); connecting is the only step that needs
a task, so a request that finds an idle connection is forwarded synchronously.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from tlsedge.config.schema import Origin, OriginTimeouts
from tlsedge.upstream.connection import OriginConnection


class PoolFull(Exception):
    """The origin server has `max_connections` open connections from this worker already (the caller checks first;
    this guards the limit when several connects start at once)."""


class OriginPool:
    """Connections from this worker to one origin server (host, port, TLS settings)."""

    def __init__(
        self,
        origin: Origin,
        timeouts: OriginTimeouts,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
        loop: asyncio.AbstractEventLoop,
        max_connections: int = 0,
    ) -> None:
        self.origin = origin
        self.max_connections = max_connections
        self.label = str(origin)
        self.timeouts = timeouts
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.loop = loop
        self.idle: list[OriginConnection] = []
        self.connections: set[OriginConnection] = set()
        self.closing = False
        self.connecting = 0
        self.active = 0  # exchanges in flight to this server from this worker (least_requests reads it)
        self.tls_resumed = 0
        # Called when a connection is released or dropped, so requests queued for a free slot can go (several pools
        # of a site may share the connections to one server).
        self.free_listeners: list[Callable[[], None]] = []

    @property
    def full(self) -> bool:
        """At max_connections (open or being opened) with none idle: a new request would have to wait."""
        limit = self.max_connections
        return bool(limit) and not self.idle and len(self.connections) + self.connecting >= limit

    def acquire(self) -> OriginConnection | None:
        """An idle connection ready for a request, or None when a new one must be opened."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> OriginConnection:
        """Open a new connection (TCP and, for https origins, a verified or unverified TLS handshake)."""
        limit = self.max_connections
        if limit and len(self.connections) + self.connecting >= limit:
            raise PoolFull(self.label)
        kwargs = {}
        if self.ssl_context is not None:
            kwargs = {
                "ssl": self.ssl_context,
                "server_hostname": self.server_name or "",
                "ssl_handshake_timeout": self.timeouts.connect_timeout,
            }
        self.connecting += 1
        try:
            async with asyncio.timeout(self.timeouts.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: OriginConnection(self), self.origin.host, self.origin.port, **kwargs
                )
        except BaseException:
            self.connecting -= 1
            self._freed()
            raise
        self.connecting -= 1
        if self.closing:
            conn.transport.close()
            raise ConnectionAbortedError("worker is shutting down")
        self.connections.add(conn)
        return conn

    def release(self, conn: OriginConnection) -> None:
        """Return a connection after a complete exchange; kept idle up to `max_idle`, closed otherwise."""
        if conn.closed:
            return
        if self.closing or len(self.idle) >= self.timeouts.max_idle:
            conn.closed = True
            conn.transport.close()
            self.forget(conn)
            return
        conn.deadline = self.loop.time() + self.timeouts.idle_timeout
        conn.transport.resume_reading()  # it may have been paused for a slow client
        self.idle.append(conn)
        self._freed()

    def forget(self, conn: OriginConnection) -> None:
        """Drop a closed connection from the books."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._freed()

    def _freed(self) -> None:
        if not self.closing:
            for listener in self.free_listeners:
                listener()

    def close_idle(self) -> None:
        """Close every idle connection: used when the worker drains or its configuration is replaced."""
        self.closing = True
        for conn in self.idle:
            conn.closed = True
            conn.transport.close()
            self.connections.discard(conn)
        self.idle.clear()

    def sweep(self, now: float) -> None:
        """Enforce deadlines: idle connections past `idle_timeout`, origins slower than their timeouts."""
        for conn in [c for c in self.connections if c.deadline and c.deadline <= now]:
            conn.on_timeout()
