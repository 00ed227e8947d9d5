"""Audit of issue 2, "Workers" and limits per worker: drain bounded by drain_timeout, a reload during an in-flight
request, max_connections on the listeners the main suite does not try (plain HTTP, and TLS with a default site, which
uses uvloop's own accept loop), and several workers really serving the shared listeners."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time

from e2e_support import BLOG_HOSTS, build_request, site, wait_for


def _blog(py_origin, site_certs, **kw):
    return site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"], **kw)


def _curl_slow(edge, delay: float) -> subprocess.Popen:
    port = edge.https_port
    return subprocess.Popen(
        [
            "curl",
            "-sS",
            "--http1.1",
            "--max-time",
            "30",
            "--cacert",
            str(edge.ca_pem),
            "--resolve",
            f"blog.example:{port}:127.0.0.1",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            f"https://blog.example:{port}/slow?delay={delay}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigterm_drain_is_bounded_by_drain_timeout(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs, origin={"response_timeout": "30s"})], drain_timeout="2s")
    curl = _curl_slow(edge, 20)
    try:
        wait_for(lambda: any(t.startswith("/slow") for t in origin.stats()["targets"]), 5, what="request at origin")
        t0 = time.monotonic()
        edge.signal(signal.SIGTERM)
        code = edge.proc.wait(10)
        elapsed = time.monotonic() - t0
        out, _ = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert code == 0
    assert 1.5 <= elapsed <= 4.5, f"exit {elapsed:.1f}s after SIGTERM with drain_timeout = 2s"
    assert not out.endswith(b"\n200"), "a request longer than drain_timeout completed"


def test_reload_lets_an_in_flight_request_finish(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs, origin={"response_timeout": "10s"})], workers=2)
    curl = _curl_slow(edge, 2)
    try:
        wait_for(lambda: any(t.startswith("/slow") for t in origin.stats()["targets"]), 5, what="request at origin")
        edge.reload(
            [
                _blog(py_origin, site_certs, origin={"response_timeout": "10s"}),
                site("shop", ["shop.example"], [py_origin.url], site_certs["shop"]),
            ]
        )
        out, err = curl.communicate(timeout=15)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert out == b"slow done\n200", (out, err)
    assert edge.proc.poll() is None


def _held(open_conn, n: int, host: str) -> tuple[list, int]:
    """Open n connections, each with one answered request; returns (open connections, how many were served)."""
    conns, served = [], 0
    for i in range(n):
        try:
            c = open_conn()
        except (OSError, ssl.SSLError):
            continue
        try:
            c.send(build_request(host=host, target=f"/held/{i}"))
            c.settimeout(3)
            if c.read_response().status == 200:
                served += 1
                conns.append(c)
                continue
        except Exception:  # refused, reset, closed: not served
            pass
        c.close()
    return conns, served


def test_max_connections_per_worker_on_plain_and_default_site_tls_listeners(make_edge, py_origin, site_certs, origin):
    edge = make_edge(
        [_blog(py_origin, site_certs), site("plain", ["plain.example"], [py_origin.url], None)],
        default_site="blog",
        limits={"max_connections": 3},
    )
    for open_conn, host in (
        (lambda: edge.conn(timeout=3), "blog.example"),
        (lambda: edge.plain_conn(timeout=3), "plain.example"),
    ):
        conns, served = _held(open_conn, 5, host)
        try:
            assert served == 3, f"{served} connections served with max_connections = 3 ({host})"
        finally:
            for c in conns:
                c.close()
        time.sleep(0.3)


def test_several_workers_share_the_listeners(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs)], workers=3)
    wait_for(lambda: len(edge.worker_pids()) == 3, 10, what="three workers")
    for i in range(90):  # fresh connections until every worker has answered (request ids start with a worker prefix)
        with edge.conn() as c:
            assert c.request(target=f"/spread/{i}").status == 200
        entries = edge.access_entries()
        prefixes = {e["request_id"][:6] for e in entries if str(e.get("path", "")).startswith("/spread/")}
        if len(prefixes) == 3:
            break
        time.sleep(0.02)
    wait_for(
        lambda: len({e["request_id"][:6] for e in edge.access_entries()}) == 3,
        3,
        what="requests answered by all three workers",
    )


def test_full_worker_leaves_connections_to_workers_with_room(make_edge, py_origin, site_certs, origin):
    """max_connections is per worker: while another worker has room, a new connection should not be refused just
    because the worker that woke up first is full (nginx stops accepting in a full worker)."""
    edge = make_edge([_blog(py_origin, site_certs)], workers=3, limits={"max_connections": 2})
    wait_for(lambda: len(edge.worker_pids()) == 3, 10, what="three workers")
    conns, served = _held(lambda: edge.conn(timeout=3), 6, "blog.example")
    try:
        assert served == 6, f"{served} of 6 served with 3 workers x max_connections = 2"
    finally:
        for c in conns:
            c.close()
