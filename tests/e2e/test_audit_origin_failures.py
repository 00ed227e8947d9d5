"""Audit of issue 2, "Origin failures" and the origin pool: behaviours the scriptable origin cannot show, driven by a
raw socket origin written here (each accepted connection runs a small script)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable

import pytest
from e2e_support import BLOG_HOSTS, build_request, site, wait_for


class RawOrigin:
    """A TCP server on 127.0.0.1 running ``script(conn)`` in a thread per accepted connection."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.closed_by_peer = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.script(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self._conns:
            conn.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    return data


@pytest.fixture
def raw_origin():
    made: list[RawOrigin] = []

    def make(script: Callable[[socket.socket], None]) -> RawOrigin:
        origin = RawOrigin(script)
        made.append(origin)
        return origin

    yield make
    for origin in made:
        origin.close()


def _edge(make_edge, site_certs, origin_url: str, **site_extra):
    return make_edge([site("blog", BLOG_HOSTS, [origin_url], site_certs["blog"], **site_extra)])


def test_chunked_origin_closing_mid_body_is_not_a_complete_response(make_edge, site_certs, raw_origin):
    def script(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)
        conn.close()

    edge = _edge(make_edge, site_certs, raw_origin(script).url)
    with edge.conn() as c:
        c.send(build_request(target="/chunked-cut"))
        resp = c.read_response()
        assert resp.status == 200
        assert not resp.complete, "a chunked response cut by the origin ended with a last chunk"
        assert c.eof
    r = edge.curl("blog.example", "/chunked-cut-curl")
    assert r.returncode == 18, (r.returncode, r.stderr)  # curl: partial file


def test_invalid_origin_response_gives_502(make_edge, site_certs, raw_origin):
    def script(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 2OO Oops\r\nContent-Length: 2\r\n\r\nhi")
        time.sleep(0.2)
        conn.close()

    edge = _edge(make_edge, site_certs, raw_origin(script).url)
    with edge.conn() as c:
        resp = c.request(target="/garbage")
    assert resp.status == 502
    assert b"request id" in resp.body
    assert "Traceback" not in edge.error_text()


def test_tls_handshake_that_never_completes_gives_504_after_connect_timeout(make_edge, site_certs, raw_origin):
    def script(conn: socket.socket) -> None:
        time.sleep(10)  # accept TCP, never answer the ClientHello

    origin = raw_origin(script)
    edge = make_edge(
        [
            site(
                "blog",
                BLOG_HOSTS,
                [f"https://127.0.0.1:{origin.port}"],
                site_certs["blog"],
                origin_tls="full",
                origin={"connect_timeout": "1s"},
            )
        ]
    )
    t0 = time.monotonic()
    with edge.conn() as c:
        resp = c.request(target="/tls-hang")
    elapsed = time.monotonic() - t0
    assert resp.status == 504, resp.status
    assert 0.7 <= elapsed <= 3.0, elapsed
    assert re.search(r"timed out", edge.error_text()), edge.error_text()[-2000:]


def test_origin_max_connections_queues_then_503_with_retry_after(make_edge, site_certs, raw_origin):
    def script(conn: socket.socket) -> None:
        head = read_head(conn)
        if b"/hold" in head:
            time.sleep(3)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.5)

    origin = raw_origin(script)
    table = site("blog", BLOG_HOSTS, [], site_certs["blog"], origin={"max_connections": 1, "response_timeout": "10s"})
    del table["origins"]
    table["pool"] = [{"name": "main", "servers": [origin.url], "queue_timeout": "500ms"}]
    edge = make_edge([table])
    holder = edge.conn()
    try:
        holder.send(build_request(target="/hold"))
        wait_for(lambda: origin.accepted >= 1, 5, what="origin connection in use")
        with edge.conn() as c:
            started = time.monotonic()
            resp = c.request(target="/second")
            waited = time.monotonic() - started
        assert resp.status == 503
        assert resp.header("retry-after") is not None
        assert 0.4 <= waited < 2.5  # queued for queue_timeout (the sweep runs every 0.5 s), not answered at once
        assert holder.read_response().status == 200
    finally:
        holder.close()


def test_idle_pooled_origin_connection_closed_after_idle_timeout(make_edge, site_certs, raw_origin):
    closed_at: list[float] = []

    def script(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        t0 = time.monotonic()
        conn.settimeout(10)
        try:
            data = conn.recv(100)
        except TimeoutError:
            return
        if data == b"":
            closed_at.append(time.monotonic() - t0)

    origin = raw_origin(script)
    edge = _edge(make_edge, site_certs, origin.url, origin={"idle_timeout": "1s"})
    with edge.conn() as c:
        assert c.request(target="/pool").status == 200
    wait_for(lambda: closed_at, 5, what="the edge to close the idle origin connection")
    assert closed_at[0] <= 2.5, closed_at


def test_origin_connection_option_cannot_unframe_the_response(make_edge, site_certs, raw_origin):
    """An origin answering `Connection: Content-Length` must not make the edge send an unframed response on a
    connection it keeps open (the client could not tell where the body ends)."""

    def script(conn: socket.socket) -> None:
        while read_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello")

    edge = _edge(make_edge, site_certs, raw_origin(script).url)
    with edge.conn() as c:
        c.send(build_request(target="/unframed"))
        c.settimeout(3)
        resp = c.read_response()  # framing "close" reads to EOF: the edge must then close, or frame it
        assert resp.status == 200
        assert resp.body == b"hello"
