"""Origins and clients for the upgrade (WebSocket) end-to-end tests.

- `WsOrigin`: a real `websockets` server on 127.0.0.1 (plain, or TLS with a certificate of the test CA), run in a
  thread with its own event loop. It records every session (path, request headers, messages, how it closed) so tests
  can observe the origin side of a tunnel.
- `RawUpgradeOrigin`: a raw-socket origin for upgrade tokens other than WebSocket: it answers a fixed reply (``101``
  then an echo of every byte, or a refusal), and records what it received.
- `WsClient`: a `websockets` client through the edge over ``wss://`` with the test CA, with a synchronous API.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


@dataclass
class WsSession:
    """One WebSocket connection as the origin saw it."""

    path: str
    headers: list[tuple[str, str]]
    received: int = 0  # messages
    pushed: int = 0  # bytes sent by a ``!push`` command so far
    close_code: int | None = None
    close_reason: str | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class WsOrigin:
    """A `websockets` origin in a thread. Paths and commands (text messages starting with ``!``):

    - ``/refuse/<status>`` answers that status (a short text body) instead of ``101``.
    - ``/sink?hold=S``: waits S seconds before reading, then counts received bytes until the text ``!end`` and
      answers their total as text (the origin stops reading meanwhile: backpressure towards the client).
    - any other path echoes every message. Commands: ``!close <code> <reason>`` closes with that code;
      ``!abort`` drops the TCP connection without a close frame; ``!push <count> <size>`` sends `count` binary
      messages of `size` bytes (byte i of message n is ``(n + i) % 251``), then the text ``!pushed``.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.sessions: list[WsSession] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("WebSocket origin did not start")

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.loop.run_forever()

    async def _start(self) -> None:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            ssl=self.ssl_context,
            process_request=self._process_request,
            max_size=None,
            max_queue=1,  # the origin holds little: a slow reader pushes back on the edge at once
            ping_interval=None,
            close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path.startswith("/refuse/"):
            return connection.respond(HTTPStatus(int(path.rsplit("/", 1)[1])), "refused by the origin\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        session = WsSession(ws.request.path, list(ws.request.headers.raw_items()))
        self.sessions.append(session)
        try:
            target = urlsplit(ws.request.path)
            if target.path == "/sink":
                await self._sink(ws, session, float(parse_qs(target.query).get("hold", ["0"])[0]))
            else:
                await self._echo(ws, session)
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 5)
            session.close_code = ws.close_code
            session.close_reason = ws.close_reason
            session.closed.set()

    async def _echo(self, ws: ServerConnection, session: WsSession) -> None:
        async for message in ws:
            session.received += 1
            if isinstance(message, str) and message.startswith("!"):
                command, *args = message.split(" ", 2)
                if command == "!close":
                    await ws.close(int(args[0]), args[1] if len(args) > 1 else "")
                    return
                if command == "!abort":
                    ws.transport.abort()
                    return
                if command == "!push":
                    count, size = int(args[0]), int(args[1])
                    for n in range(count):
                        await ws.send(pattern(n, size))
                        session.pushed += size
                    await ws.send("!pushed")
                    continue
            await ws.send(message)

    async def _sink(self, ws: ServerConnection, session: WsSession, hold: float) -> None:
        await asyncio.sleep(hold)
        total = 0
        async for message in ws:
            session.received += 1
            if message == "!end":
                await ws.send(str(total))
                continue
            total += len(message)

    def wait_session(self, index: int, timeout: float = 5.0) -> WsSession:
        """The `index`-th session the origin accepted (waits for it)."""
        deadline = time.monotonic() + timeout
        while len(self.sessions) <= index:
            if time.monotonic() > deadline:
                raise AssertionError(f"the origin accepted {len(self.sessions)} WebSocket sessions, not {index + 1}")
            time.sleep(0.02)
        return self.sessions[index]

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def pattern(n: int, size: int) -> bytes:
    """Deterministic, incompressible-enough content for message `n`, so a shifted or lost piece is noticed."""
    block = bytes((n + i) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class WsClient:
    """A `websockets` asyncio client through the edge (``wss://`` with the test CA), driven from synchronous tests.

    It runs on an event loop in a thread of its own, and every call hops onto that loop. Why not the sync client:
    it reads in a background thread while the caller writes, and an `ssl.SSLSocket` used by two threads at once can
    lose a write (the reader thread processing the TLS 1.3 session tickets while the request is written): the
    upgrade request then never leaves the client and the test hangs, at random. No keep-alive pings (they would keep
    idle tunnels busy), no size limit, and no compression unless asked for.
    """

    def __init__(self, port: int, host: str, path: str, ca_pem: Path, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        settings: dict[str, Any] = {
            "open_timeout": 5,
            "close_timeout": 2,
            "ping_interval": None,
            "max_size": None,
            "compression": None,
            "proxy": None,
            **options,
        }
        uri = f"wss://{host}:{port}{path}"
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        try:
            self.ws: ClientConnection = self._call(self._open(uri, port, ctx, host, settings), 10)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(uri: str, port: int, ctx: ssl.SSLContext, host: str, settings: dict[str, Any]) -> ClientConnection:
        return await connect(uri, host="127.0.0.1", port=port, ssl=ctx, server_hostname=host, **settings)

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def send(self, message: str | bytes, timeout: float = 30) -> None:
        """Send one message; blocks while the edge does not take more (backpressure)."""
        self._call(self.ws.send(message), timeout)

    def recv(self, timeout: float = 5) -> str | bytes:
        """The next message; raises `websockets.exceptions.ConnectionClosed` once the connection is closed."""
        return self._call(asyncio.wait_for(self.ws.recv(), timeout), timeout + 5)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, then the end of the loop."""
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self.ws.close(code, reason), 10)
        self._stop_loop()

    def vanish(self) -> None:
        """Drop the TCP connection without a close frame, as a client that crashed or lost its network."""
        self._call(self._abort(), 5)

    async def _abort(self) -> None:
        self.ws.transport.abort()

    @property
    def extensions(self) -> list[str]:
        return [type(extension).__name__ for extension in self.ws.protocol.extensions]

    def _stop_loop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"


class RawUpgradeOrigin:
    """A raw TCP origin for any upgrade token. For each request head it reads it writes `reply`: after a ``101``
    reply it echoes every byte that follows (including bytes that came with the head) until the peer closes; after
    another reply it reads the next request on the connection (keep-alive). `greeting` is sent in the same write as
    the reply (data of the new protocol arriving together with the 101). Every request head is kept in `heads`, and
    `closed` counts connections the peer closed."""

    def __init__(self, reply: bytes = UPGRADED, greeting: bytes = b"") -> None:
        self.reply = reply
        self.greeting = greeting
        self.upgrades = reply.startswith(b"HTTP/1.1 101")
        self.heads: list[bytes] = []
        self.closed = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        got = b""
        with contextlib.suppress(OSError), conn:
            while True:
                while b"\r\n\r\n" not in got:
                    data = conn.recv(65536)
                    if not data:
                        self.closed += 1
                        return
                    got += data
                head, _, got = got.partition(b"\r\n\r\n")
                self.heads.append(head + b"\r\n\r\n")
                conn.sendall(self.reply + self.greeting)
                if self.upgrades:
                    break
            if got:
                conn.sendall(got)
            while data := conn.recv(65536):
                conn.sendall(data)
            self.closed += 1

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
