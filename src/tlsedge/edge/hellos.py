"""What a worker does with a complete ClientHello before any TLS work: JA4 deny lists, and the hand-over of
pass-through and keyless connections (see ``edge.acceptor.HelloHandler``).

Why here and not in the acceptor: these need the worker's sites, pools, guard and key-server pools; the acceptor
only peeks and parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tlsedge.edge.http1 import ClientConnection
from tlsedge.edge.passthrough import Tunnel
from tlsedge.guard.chain import Outcome
from tlsedge.tls.clienthello import ClientHello, alert_record
from tlsedge.tls.ja4 import ja4
from tlsedge.tls.server import ALPN

if TYPE_CHECKING:
    from tlsedge.edge.worker import Edge
    from tlsedge.tls.keyless.runtime import KeylessSite

log = logging.getLogger("tlsedge.accept")

_TLS13 = 0x0304
_PROTOCOL_VERSION = 70  # TLS alert
_REFUSAL_LOG_EVERY = 10.0


class HelloRouter:
    """The worker's `HelloHandler`."""

    def __init__(
        self,
        edge: Edge,
        keyless: dict[str, KeylessSite],
        deny_ja4: frozenset[str],
        site_deny_ja4: dict[str, frozenset[str]],
    ) -> None:
        self.edge = edge
        self.keyless = keyless
        self.deny_ja4 = deny_ja4
        self.site_deny_ja4 = site_deny_ja4
        self.screening = bool(deny_ja4 or site_deny_ja4)
        self._fingerprint: tuple[ClientHello | None, str] = (None, "")
        self._refused = 0
        self._last_log = 0.0

    def fingerprint(self, hello: ClientHello) -> str:
        """JA4, computed at most once per hello (screen and hand-over both want it)."""
        seen, value = self._fingerprint
        if seen is not hello:
            value = ja4(hello)
            self._fingerprint = (hello, value)
        return value

    def screen(self, conn: socket.socket, site: str, hello: ClientHello) -> bool:
        if not self.screening:
            return True
        fp = self.fingerprint(hello)
        if fp in self.deny_ja4 or fp in self.site_deny_ja4.get(site, ()):
            self._refused_one(f"site {site}: JA4 {fp} is on a deny list")
            return False
        return True

    def hand_over(self, conn: socket.socket, site: str, mode: str, hello: ClientHello, counted_ip: str | None) -> None:
        edge = self.edge
        try:
            peer = conn.getpeername()
        except OSError:
            self._drop(conn, counted_ip)
            return
        ip = peer[0]
        if mode == "keyless":
            self._keyless(conn, site, hello, ip, counted_ip)
            return
        runtime = edge.sites[site]
        guard = runtime.guard
        if guard is not None and isinstance(guard.screen_address(ip, time.time()), Outcome):
            self._refused_one(f"site {site}: {ip} is denied or banned")
            self._drop(conn, counted_ip)
            return
        tunnel = Tunnel(edge, runtime, (ip, peer[1]), hello.server_name, self.fingerprint(hello), counted_ip)
        edge.tunnels.add(tunnel)
        edge.connection_opened()
        edge.loop.create_task(tunnel.run(conn))

    def _keyless(self, conn: socket.socket, site: str, hello: ClientHello, ip: str, counted_ip: str | None) -> None:
        """TLS 1.3 only (the engine is TLS 1.3): older clients get a protocol_version alert and a log line."""
        if _TLS13 not in hello.supported_versions:
            log.info("site %s: client %s offers no TLS 1.3 (versions %s); keyless sites need TLS 1.3: "
                     "protocol_version alert sent", site, ip,
                     ",".join(f"0x{v:04x}" for v in hello.supported_versions) or f"0x{hello.legacy_version:04x}")
            with contextlib.suppress(OSError):
                conn.send(alert_record(_PROTOCOL_VERSION))
            self._drop(conn, counted_ip)
            return
        edge = self.edge

        def http() -> ClientConnection:
            connection = ClientConnection(edge, True)
            connection.counted_ip = counted_ip  # its connection_lost gives the count back
            return connection

        def unused() -> None:
            if counted_ip is not None and edge.peer is not None:
                edge.peer.closed(counted_ip)

        protocol = self.keyless[site].protocol(ip, hello.server_name, http, edge.limits.handshake_timeout, ALPN,
                                               unused)
        edge.loop.create_task(self._start_keyless(conn, protocol, unused))

    async def _start_keyless(self, conn: socket.socket, protocol: asyncio.Protocol, unused: Callable[[], None]) -> None:
        try:
            await self.edge.loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()
            unused()

    def _drop(self, conn: socket.socket, counted_ip: str | None) -> None:
        conn.close()
        if counted_ip is not None and self.edge.peer is not None:
            self.edge.peer.closed(counted_ip)

    def _refused_one(self, why: str) -> None:
        """Refusals are counted and logged at most every few seconds: a flood must not flood the log too."""
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= _REFUSAL_LOG_EVERY:
            log.warning("refused %d connection(s) after the ClientHello; latest: %s", self._refused, why)
            self._refused = 0
            self._last_log = now
