"""Audit of issue 2, "Bad input": smuggling shapes beyond the main table, the Connection header used to strip framing
or routing fields, and the promise that no traceback ever reaches a client or the error log for the whole table
(on the TLS and on the plain listener, against an edge of its own so the check runs after the table, whatever order
the files run in)."""

from __future__ import annotations

import re

import pytest
from e2e_support import build_request, main_sites
from test_smuggling import CASES, SMUGGLED

H = b"Host: blog.example\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /first HTTP/1.1\r\n" + H + headers + b"\r\n" + body


# Shapes the main table does not have; each must get one 400 and a closed connection.
EXTRA: list[tuple[str, bytes]] = [
    ("te-chunked-twice", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    ("te-with-http10", b"POST /first HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-leading-comma", post(b"Transfer-Encoding: ,chunked\r\n", b"0\r\n\r\n")),
    ("cl-overflow", post(b"Content-Length: 99999999999999999999999\r\n", b"x")),
    ("chunk-size-trailing-space", post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n")),
    ("chunk-lf-only", post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n")),
    ("chunk-ext-bare-lf", post(b"Transfer-Encoding: chunked\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
    ("nul-in-target", b"GET /fi\x00rst HTTP/1.1\r\n" + H + b"\r\n"),
    ("nul-in-name", b"GET /first HTTP/1.1\r\n" + H + b"X-A\x00: b\r\n\r\n"),
    ("request-line-bare-lf", b"GET /first HTTP/1.1\n" + H + b"\r\n"),
    ("all-bare-lf", b"GET /first HTTP/1.1\nHost: blog.example\n\n"),
    ("tab-before-colon", post(b"Content-Length\t: 5\r\n", b"hello")),
    ("host-twice", b"GET /first HTTP/1.1\r\n" + H + b"Host: shop.example\r\n\r\n"),
    ("host-userinfo", b"GET /first HTTP/1.1\r\nHost: evil@blog.example\r\n\r\n"),
]


def _statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"(?:^|\r\n|>\n)HTTP/1\.1 (\d{3}) ", data)]


@pytest.mark.parametrize("payload", [c[1] for c in EXTRA], ids=[c[0] for c in EXTRA])
def test_more_smuggling_shapes_rejected(main_edge, origin, payload):
    with main_edge.conn() as c:
        c.send(payload + SMUGGLED)
        data = c.read_to_eof(timeout=5)
    assert data.startswith(b"HTTP/1.1 400 "), data[:300]
    assert data.count(b"HTTP/1.1 ") == 1, data[:600]
    assert "/smuggled" not in origin.stats()["targets"]


def test_connection_header_cannot_strip_content_length(main_edge, origin):
    """`Connection: Content-Length` must not make the edge drop Content-Length while it still forwards the body:
    the origin would then read the body as a request of its own, hidden from the edge (smuggling)."""
    inner = b"GET /evil HTTP/1.1\r\nHost: blog.example\r\n\r\n"
    with main_edge.conn() as c:
        c.send(post(b"Connection: Content-Length\r\nContent-Length: %d\r\n" % len(inner), inner))
        c.read_response("POST")
    stats = origin.stats()
    assert "/evil" not in stats["targets"], f"the body reached the origin as a request: {stats['targets']}"


def test_connection_header_cannot_strip_host(main_edge, origin):
    """The edge routed by Host; `Connection: Host` must not make the origin get the request without it."""
    with main_edge.conn() as c:
        resp = c.request(target="/conn-host", headers=[("Connection", "Host")])
    if resp.status == 200:
        names = [k.lower() for k, _ in resp.json()["headers"]]
        assert "host" in names, f"origin got no Host: {resp.json()['headers']}"
    else:
        assert resp.status == 400


@pytest.fixture
def fresh_edge(make_edge, py_origin, site_certs):
    return make_edge(main_sites(py_origin, site_certs))


def test_no_traceback_anywhere_after_the_smuggling_tables(fresh_edge, origin):
    """Every payload of both tables, over TLS and over plain HTTP: one short 400 page with a request id, and the
    error log (and stderr) has no traceback or asyncio 'exception in callback' report afterwards."""
    payloads = [c[1] for c in CASES] + [c[1] for c in EXTRA]
    for payload in payloads:
        for tls in (True, False):
            sent = payload if tls else payload.replace(b"blog.example", b"plain.example")
            smuggled = SMUGGLED if tls else SMUGGLED.replace(b"blog.example", b"plain.example")
            conn = fresh_edge.conn() if tls else fresh_edge.plain_conn()
            with conn as c:
                c.send(sent + smuggled)
                data = c.read_to_eof(timeout=5)
            assert data.startswith(b"HTTP/1.1 400 "), (tls, payload[:80], data[:200])
            assert b"request id" in data and b"Traceback" not in data and b'File "' not in data, data[:400]
    # the edge is still healthy
    with fresh_edge.conn() as c:
        assert c.request(target="/after-table").status == 200
    with fresh_edge.plain_conn() as c:
        c.send(build_request(host="plain.example", target="/after-table-plain"))
        assert c.read_response().status == 200
    text = fresh_edge.error_text()
    for marker in ("Traceback", "Exception in callback", "Fatal error", "Unhandled exception", "exception was never"):
        assert marker not in text, text[-3000:]
