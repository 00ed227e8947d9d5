"""Limits: 431, 414, slowloris (header timeout), body idle, keep-alive and handshake timeouts, max connections."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

from e2e_support import BLOG_HOSTS, ConnClosed, RawConn, build_request, site

HEADER_TIMEOUT = 2.0  # MAIN_LIMITS["header_timeout"]


def test_header_bytes_over_limit_431(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(headers=[("X-Big", "a" * 9000)])
    assert resp.status == 431
    assert origin.stats()["requests"] == 0


def test_header_count_over_limit_431(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(headers=[(f"X-H{i}", "v") for i in range(60)])
    assert resp.status == 431
    assert origin.stats()["requests"] == 0


def test_headers_under_limits_pass(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/under", headers=[(f"X-H{i}", "v" * 50) for i in range(40)])
    assert resp.status == 200


def test_uri_over_limit_414(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/" + "u" * 3000)
    assert resp.status == 414
    assert origin.stats()["requests"] == 0


def test_uri_under_limit_passes(main_edge, origin):
    target = "/" + "u" * 1500
    with main_edge.conn() as c:
        assert c.request(target=target).json()["target"] == target


def _slowloris(edge, results: list, index: int) -> None:
    """Send a request head one byte per second; record (seconds until the edge closed, what it sent)."""
    start = time.monotonic()
    try:
        c = edge.conn()
    except (OSError, ssl.SSLError) as e:
        results[index] = (time.monotonic() - start, f"connect failed: {e!r}".encode())
        return
    head = build_request(target="/slow-loris", headers=[("X-Pad", "p" * 100)])
    got = b""
    c.settimeout(1.0)
    try:
        for byte in head:
            try:
                c.send(bytes([byte]))
            except (OSError, ssl.SSLError):
                break
            try:
                data = c.sock.recv(4096)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
            got += data
            if not data:
                break
            if time.monotonic() - start > 15:
                break
        try:
            c.settimeout(3)
            got += c.read_to_eof(timeout=3)
        except (AssertionError, OSError):
            pass
    finally:
        c.close()
    results[index] = (time.monotonic() - start, got)


def test_slowloris_closed_within_header_timeout_and_others_served(main_edge, origin):
    n = 8
    results: list = [None] * n
    threads = [threading.Thread(target=_slowloris, args=(main_edge, results, i)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # meanwhile other clients are served promptly
    for i in range(3):
        t0 = time.monotonic()
        with main_edge.conn() as c:
            assert c.request(target=f"/meanwhile/{i}").status == 200
        assert time.monotonic() - t0 < 1.0
    for t in threads:
        t.join(30)
    for elapsed, got in results:
        assert elapsed <= HEADER_TIMEOUT + 1.5, f"slowloris held the connection {elapsed:.1f}s"
        assert elapsed >= HEADER_TIMEOUT - 0.5, f"closed too early ({elapsed:.1f}s): {got[:100]!r}"
        assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert "/slow-loris" not in origin.stats()["targets"]


def test_header_timeout_applies_to_idle_connection_without_request_bytes(main_edge):
    # a connection that completes TLS and never sends a byte: the header timeout runs from the connection's start
    t0 = time.monotonic()
    with main_edge.conn() as c:
        data = c.read_to_eof(timeout=HEADER_TIMEOUT + 3)
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 <= HEADER_TIMEOUT + 1.5


def test_body_idle_timeout(make_edge, py_origin, site_certs, origin):
    edge = make_edge(
        [site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"], origin={"response_timeout": "30s"})],
        limits={"body_idle_timeout": "2s", "header_timeout": "5s"},
    )
    with edge.conn() as c:
        c.send(build_request("POST", "/idle", headers=[("Content-Length", "1000")]) + b"h" * 500)
        t0 = time.monotonic()
        data = c.read_to_eof(timeout=6)
        elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed <= 3.5, elapsed
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]


def test_keepalive_idle_timeout_and_handshake_timeout(make_edge, py_origin, site_certs, origin):
    edge = make_edge(
        [site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"])],
        limits={"keepalive_timeout": "2s", "handshake_timeout": "2s", "header_timeout": "5s"},
    )
    # keep-alive idle timeout: after a response, an idle connection is closed after ~2 s
    with edge.conn() as c:
        assert c.request(target="/ka").status == 200
        t0 = time.monotonic()
        assert c.read_to_eof(timeout=5) == b""
        assert 1.5 <= time.monotonic() - t0 <= 3.5
    # handshake timeout: a TCP connection that never starts TLS is closed after ~2 s
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=6) as s:
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
        assert time.monotonic() - t0 <= 3.5



def test_full_worker_stops_accepting_until_a_slot_frees(make_edge, py_origin, site_certs, origin):
    """At max_connections a worker stops accepting (as nginx does): a further client waits in the listen queue,
    is not served while the slots are held, and is served as soon as one frees."""
    edge = make_edge(
        [site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"])],
        limits={"max_connections": 5, "keepalive_timeout": "30s"},
    )
    conns = []
    try:
        for i in range(5):
            c = edge.conn()
            assert c.request(target=f"/held/{i}").status == 200
            conns.append(c)
        served_while_full = True
        try:
            with RawConn(edge.https_port, ca_pem=edge.ca_pem, timeout=2) as sixth:
                sixth.request(target="/sixth")
        except (OSError, ssl.SSLError, ConnClosed):
            served_while_full = False
        assert not served_while_full, "a 6th connection was served while 5 = max_connections were open"
        assert "/sixth" not in origin.stats()["targets"]
        conns.pop().close()
        with RawConn(edge.https_port, ca_pem=edge.ca_pem, timeout=5) as c:
            assert c.request(target="/after-free").status == 200
    finally:
        for c in conns:
            c.close()
