"""A tiny echo origin for the demo: it shows what the edge forwarded.

Why: the point of the demo is to make the proxy visible. Every request is answered with a short page listing the
method, path and Host the origin received and the ``X-Forwarded-*`` and ``Via`` headers the edge added, plus whether
the hop from the edge arrived over TLS. JSON by default (readable in a terminal with curl), HTML when the client asks
for ``text/html`` (a browser).

It is deliberately small and is not part of the data plane: an ``asyncio.Protocol`` fed by httptools, keep-alive, an
idle timeout so no connection is held forever, request bodies counted and discarded.

Run it alone with ``python -m tlsedge.demo.origin --listen 127.0.0.1:9000 --name blog [--tls-cert C --tls-key K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import signal
import ssl
import sys
from contextlib import suppress
from pathlib import Path

import httptools

IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent (between or within requests) before it is closed
SHUTDOWN_TIMEOUT = 5.0  # seconds to wait for the listener to close on SIGTERM

# Request headers echoed back, in display order: the ones the edge is expected to set or pass on.
_SHOWN = (b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via")


class EchoProtocol(asyncio.Protocol):
    """One client connection (in the demo: the edge's pooled connection to its origin)."""

    def __init__(self, name: str, connections: set[EchoProtocol]) -> None:
        self.name = name
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_bytes = 0
        self.idle: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(400, "text/plain", b"upgrades are not supported by the demo origin\n", keep_alive=False)
        except httptools.HttpParserError:
            self._send(400, "text/plain", b"bad request\n", keep_alive=False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    # -- httptools callbacks ------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        seen = self.describe(method)
        accept = b", ".join(v for k, v in self.headers if k == b"accept")
        if b"text/html" in accept:
            body, ctype = render_html(seen).encode(), "text/html; charset=utf-8"
        else:
            body, ctype = (json.dumps(seen, indent=2) + "\n").encode(), "application/json"
        self._send(200, ctype, body, keep_alive=self.parser.should_keep_alive(), head=method == "HEAD")

    # -- response -----------------------------------------------------------------------------------------------------

    def describe(self, method: str) -> dict[str, object]:
        """What this origin saw: the facts a demo user wants to compare with what curl sent to the edge."""
        assert self.transport is not None
        ssl_object = self.transport.get_extra_info("ssl_object")
        peer = self.transport.get_extra_info("peername")
        seen: dict[str, object] = {
            "origin": self.name,
            "method": method,
            "path": self.url.decode("latin-1"),
        }
        for wanted in _SHOWN:
            values = [v.decode("latin-1") for k, v in self.headers if k == wanted]
            seen[wanted.decode()] = ", ".join(values) if values else None
        seen["received_over"] = ssl_object.version() if ssl_object is not None else "plain TCP"
        seen["from"] = f"{peer[0]}:{peer[1]}" if peer else None
        seen["body_bytes"] = self.body_bytes
        return seen

    def _send(self, status: int, ctype: str, body: bytes, *, keep_alive: bool, head: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: b"OK", 400: b"Bad Request"}[status]
        head_lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"Content-Type: %s\r\n" % ctype.encode(),
            b"Content-Length: %d\r\n" % len(body),
            # /static/ may be cached by the edge for a minute (the demo blog has its cache on); the rest never.
            _CACHEABLE if self.url.startswith(b"/static/") else _NOT_CACHEABLE,
            b"X-Demo-Origin: %s\r\n" % self.name.encode(),
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
        ]
        self.transport.write(b"".join(head_lines) + (b"" if head else body))
        if not keep_alive:
            self.transport.close()


_CACHEABLE = b"Cache-Control: public, max-age=60\r\n"
_NOT_CACHEABLE = b"Cache-Control: no-store\r\n"


def render_html(seen: dict[str, object]) -> str:
    """A minimal page for browsers; every value is escaped (headers are attacker-controlled)."""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{html.escape('' if v is None else str(v))}</code></td></tr>"
        for k, v in seen.items()
    )
    title = html.escape(f"tlsedge demo origin {seen['origin']}")
    return (
        f"<!doctype html><meta charset=utf-8><title>{title}</title>"
        f"<h1>{title}</h1><p>This is what the origin received from the edge.</p><table>{rows}</table>\n"
    )


def parse_hostport(value: str) -> tuple[str, int]:
    """``127.0.0.1:9000`` or ``[::1]:9000`` -> (host, port); argparse-friendly errors."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS for the origin side of ``origin_tls = "strict"``: TLS 1.2+, HTTP/1.1 only."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def serve(host: str, port: int, name: str, tls: ssl.SSLContext | None) -> None:
    """Serve until SIGTERM or SIGINT, then close the listener and every open connection (bounded)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connections: set[EchoProtocol] = set()
    server = await loop.create_server(
        lambda: EchoProtocol(name, connections),
        host,
        port,
        ssl=tls,
        reuse_address=True,
        ssl_handshake_timeout=10.0 if tls else None,
    )
    scheme = "https" if tls else "http"
    print(f"demo origin {name!r} listening on {scheme}://{host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    # Since Python 3.12 wait_closed() also waits for open connections: close them first (the edge keeps a pool).
    for conn in list(connections):
        conn.close()
    with suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tlsedge.demo.origin", description="A tiny echo origin for the tlsedge demo."
    )
    parser.add_argument("--listen", type=parse_hostport, default=("127.0.0.1", 9000), help="HOST:PORT (127.0.0.1:9000)")
    parser.add_argument("--name", default="origin", help="shown in every response, to tell origins apart")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    host, port = args.listen
    try:
        asyncio.run(serve(host, port, args.name, tls))
    except OSError as exc:
        print(f"demo origin {args.name!r}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
