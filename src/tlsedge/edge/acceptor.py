"""Accepting connections: uvloop's own accept loop, or ours when the ClientHello must be seen first.

Both kinds can stop and resume accepting, so a worker at `max_connections` leaves new connections to workers that
have room (as nginx does) instead of accepting and closing them.

Accepting TLS connections ourselves lets the edge look at the ClientHello before any TLS work is spent.

uvloop's TLS (like asyncio's) closes the socket on a failed handshake without flushing the alert OpenSSL queued,
so a client asking for a name no site serves would only see a reset. Peeking (MSG_PEEK leaves the bytes in the
socket for OpenSSL) lets the edge answer such a client with a real ``unrecognized_name`` alert and never start
a handshake for it. The same hook is where pass-through routing and accept-time limits belong.

Pass-through and keyless sites are also handed over here, by SNI, before OpenSSL would see them: the edge has
no certificate key for either.

Only listeners that need it use this path; otherwise uvloop's own accept loop (in C) serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from tlsedge.acme.answers import ACME_TLS_ALPN
from tlsedge.tls.clienthello import (
    NEED_MORE,
    ClientHello,
    Invalid,
    alert_record,
    parse_client_hello,
    unrecognized_name_alert,
)
from tlsedge.tls.server import TlsTable

log = logging.getLogger("tlsedge.accept")

_ACCEPT_BATCH = 64
_PEEK_BYTES = 16 * 1024 + 512
_REPEEK_DELAY = 0.005
_NO_APPLICATION_PROTOCOL = 120  # TLS alert: no ALPN protocol in common


class PeekingTlsAcceptor:
    """Accepts on one listening socket, peeks the SNI, then hands the socket to uvloop's TLS transport."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        tls: TlsTable,
        protocol_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        admit: Callable[[], bool],
        acme_answer: Callable[[str | None], ssl.SSLContext | None] | None = None,
        peer: PeerAdmission | None = None,
        hellos: HelloHandler | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.tls = tls
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.admit = admit
        self.acme_answer = acme_answer
        self.peer = peer
        self.hellos = hellos
        self.waiting: dict[socket.socket, float] = {}  # peeking sockets and their deadlines
        self.admitted: dict[socket.socket, str] = {}  # sockets counted by `peer`, until HTTP owns them
        self.starting = 0  # connections in their TLS handshake
        self.accepting = False
        self.resume()

    def pause(self) -> None:
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        if not self.accepting and self.sock.fileno() >= 0:
            self.accepting = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; closing our copy of the listening socket leaves other processes' copies open.

        Connections already accepted go on (the drain waits for them): their clients did nothing wrong.
        """
        self.pause()
        self.sock.close()

    @property
    def pending(self) -> int:
        """Accepted connections not yet handed to the HTTP layer."""
        return len(self.waiting) + self.starting

    def sweep(self, now: float) -> None:
        """Drop connections that did not send a complete ClientHello within the handshake timeout."""
        for conn in [c for c, deadline in self.waiting.items() if deadline <= now]:
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                log.error("accept failed: %s", exc)
                return
            if not self.admit():
                conn.close()
                continue
            if self.peer is not None:
                if not self.peer.admit(address[0]):
                    conn.close()  # before a byte of TLS: denied, banned or over its per-address limits
                    continue
                self.admitted[conn] = address[0]
            conn.setblocking(False)
            self.waiting[conn] = self.loop.time() + self.handshake_timeout
            self.loop.add_reader(conn.fileno(), self._peek, conn)

    def _peek(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        hello = parse_client_hello(data)
        if hello is NEED_MORE:
            # Readiness is level-triggered and the peeked bytes stay unread: look again shortly, not at once.
            self.loop.remove_reader(conn.fileno())
            self.loop.call_later(_REPEEK_DELAY, self._watch_again, conn)
            return
        self.loop.remove_reader(conn.fileno())
        del self.waiting[conn]
        if isinstance(hello, Invalid):
            log.info("closing connection that did not start with a TLS ClientHello: %s", hello.reason)
            self._close(conn)
            return
        site = self.tls.site_for_name(hello.server_name)
        if (
            self.acme_answer is not None
            and hello.alpn == (ACME_TLS_ALPN,)
            and (site is None or self.tls.modes.get(site) != "passthrough")  # its origin answers its own challenges
        ):
            self._answer_acme(conn, hello.server_name)
            return
        if site is None:
            with contextlib.suppress(OSError):
                conn.send(unrecognized_name_alert())
            self._close(conn)
            return
        hellos = self.hellos
        if hellos is not None:
            if not hellos.screen(conn, site, hello):
                self._close(conn)
                return
            mode = self.tls.modes.get(site)
            if mode is not None:
                hellos.hand_over(conn, site, mode, hello, self.admitted.pop(conn, None))
                return
        self.loop.create_task(self._start_tls(conn))

    def _answer_acme(self, conn: socket.socket, server_name: str | None) -> None:
        """RFC 8737: a CA offering only ALPN "acme-tls/1" gets the validation certificate, then the connection ends."""
        assert self.acme_answer is not None
        ctx = self.acme_answer(server_name)
        if ctx is None:
            log.info("TLS-ALPN-01 validation for %s, but no order awaits one: refused", server_name)
            with contextlib.suppress(OSError):
                conn.send(alert_record(_NO_APPLICATION_PROTOCOL))
            self._close(conn)
            return
        self.loop.create_task(self._start_tls(conn, ctx, _ValidationDone))

    def _watch_again(self, conn: socket.socket) -> None:
        if conn in self.waiting:
            self.loop.add_reader(conn.fileno(), self._peek, conn)

    def _drop(self, conn: socket.socket) -> None:
        if self.waiting.pop(conn, None) is not None:
            self.loop.remove_reader(conn.fileno())
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        """Close a connection HTTP never got: its per-address count is given back here."""
        ip = self.admitted.pop(conn, None)
        if ip is not None:
            self.peer.closed(ip)
        conn.close()

    async def _start_tls(
        self,
        conn: socket.socket,
        context: ssl.SSLContext | None = None,
        protocol_factory: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        self.starting += 1
        ip = self.admitted.pop(conn, None)
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            protocol = (protocol_factory or self.protocol_factory)()
            if ip is not None and isinstance(protocol, CountedConnection):
                protocol.counted_ip = ip  # its connection_lost gives the count back
            made.append(protocol)
            return protocol

        try:
            await self.loop.connect_accepted_socket(
                factory,
                conn,
                ssl=context or self.tls.context,
                ssl_handshake_timeout=self.handshake_timeout,
                ssl_shutdown_timeout=1.0,
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError):
            conn.close()
            if ip is not None and not (made and isinstance(made[0], CountedConnection) and made[0].opened):
                self.peer.closed(ip)  # the handshake failed: HTTP never owned the connection
        else:
            if ip is not None and not (made and isinstance(made[0], CountedConnection)):
                self.peer.closed(ip)  # a TLS-ALPN-01 validation: closed at once
        finally:
            self.starting -= 1


class HelloHandler(Protocol):
    """What the worker does with a complete ClientHello before any TLS work: fingerprint checks and hand-overs."""

    def screen(self, conn: socket.socket, site: str, hello: ClientHello) -> bool:
        """False closes the connection (e.g. a denied JA4 fingerprint)."""
        ...

    def hand_over(
        self, conn: socket.socket, site: str, mode: str, hello: ClientHello, counted_ip: str | None
    ) -> None:
        """Take a pass-through or keyless connection; ``counted_ip`` must be given back to the admission once."""
        ...


class PeerAdmission(Protocol):
    """Per-address admission at accept time (deny lists, bans, connection limits); `closed` once per admitted."""

    def admit(self, ip: str) -> bool: ...

    def closed(self, ip: str) -> None: ...


class CountedConnection(asyncio.Protocol):
    """A connection whose per-address count the acceptor took: it gives it back when it ends."""

    counted_ip: str | None = None
    opened = False  # connection_made ran: from then on, connection_lost gives the count back


class _ValidationDone(asyncio.Protocol):
    """After a TLS-ALPN-01 handshake nothing more is said (RFC 8737 section 3): close at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class UvloopListener:
    """A listening socket served by uvloop's accept loop (in C); paused by closing the server on a duplicate fd."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        **server_options: object,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.server_options = server_options
        self.server: asyncio.Server | None = None
        self.starting = False
        self.closed = False

    async def start(self) -> None:
        """Serve a duplicate of the socket: closing the server closes only the duplicate, so it can be resumed."""
        self.starting = True
        try:
            duplicate = socket.socket(fileno=os.dup(self.sock.fileno()))
            server = await self.loop.create_server(self.protocol_factory, sock=duplicate, **self.server_options)
        finally:
            self.starting = False
        if self.closed:
            server.close()
        else:
            self.server = server

    def pause(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def resume(self) -> None:
        if self.server is None and not self.starting and not self.closed:
            self.loop.create_task(self.start())

    # Handshakes in progress inside uvloop are not visible; the drain's minimum duration covers them.
    pending = 0

    def close(self) -> None:
        self.closed = True
        self.pause()
        self.sock.close()

    def sweep(self, now: float) -> None:
        """Nothing waits here: uvloop enforces the handshake timeout itself."""
