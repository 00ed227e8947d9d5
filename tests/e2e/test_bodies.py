"""Keep-alive, pipelining, origin connection reuse, body framing both ways, 100-continue, 413, HEAD/204/304."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from e2e_support import build_request


def test_keepalive_several_requests_on_one_connection(main_edge, origin):
    with main_edge.conn() as c:
        for i in range(5):
            resp = c.request(target=f"/ka/{i}")
            assert resp.status == 200
            assert resp.json()["target"] == f"/ka/{i}"


def test_pipelined_requests_answered_in_order(main_edge, origin):
    with main_edge.conn() as c:
        c.send(build_request(target="/p1") + build_request("POST", "/p2", body=b"abc") + build_request(target="/p3"))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
    assert [r.json()["target"] for r in (r1, r2, r3)] == ["/p1", "/p2", "/p3"]
    assert r2.json()["body_len"] == 3


def test_origin_connections_are_reused(main_edge, origin):
    conn_ids = []
    with main_edge.conn() as c:
        for i in range(6):
            conn_ids.append(c.request(target=f"/reuse/{i}").json()["conn_id"])
    # separate client connections share the pool too
    for i in range(3):
        with main_edge.conn() as c:
            conn_ids.append(c.request(target=f"/reuse2/{i}").json()["conn_id"])
    stats = origin.stats()
    assert stats["requests"] == 9
    assert len(set(conn_ids)) <= 2, conn_ids
    assert stats["connections"] <= 2


def test_chunked_request_body_reaches_origin_correctly_framed(main_edge, origin):
    chunks = [b"hello", b" world", b"x" * 70000, b"!"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks[:1])
    body += b"6;ext=1\r\n world\r\n"  # a chunk extension
    body += b"".join(b"%X\r\n%s\r\n" % (len(ch), ch) for ch in chunks[2:])  # upper-case hex
    body += b"0\r\n\r\n"
    expected = b"".join(chunks)
    with main_edge.conn() as c:
        resp = c.request("POST", "/chunked-in", headers=[("Transfer-Encoding", "chunked")], body=body)
        assert resp.status == 200
        echo = resp.json()
        assert echo["body_len"] == len(expected)
        assert echo["body_sha256"] == hashlib.sha256(expected).hexdigest()
        assert echo["framing"] in ("chunked", "length")
        te = [v for k, v in echo["headers"] if k.lower() == "transfer-encoding"]
        assert te in ([], ["chunked"])
        # the connection is still usable and in sync
        assert c.request(target="/next").json()["target"] == "/next"


def test_chunked_response_reaches_client_chunked(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/chunked?n=5&size=1000")
        assert resp.status == 200
        assert resp.framing == "chunked"
        assert resp.complete
        assert resp.body == b"".join(bytes([97 + i]) * 1000 for i in range(5))
        assert c.request(target="/next").json()["target"] == "/next"


def test_close_delimited_response_becomes_chunked_and_connection_stays_open(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/close?size=200000")
        assert resp.status == 200
        assert resp.framing == "chunked", resp.raw_head
        assert resp.complete
        assert resp.body == b"z" * 200000
        assert c.request(target="/next").json()["target"] == "/next"


def test_http10_client_never_gets_chunked(main_edge, origin):
    with main_edge.conn() as c:
        c.send(b"GET /chunked?n=4&size=100 HTTP/1.0\r\nHost: blog.example\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200
    assert resp.framing in ("length", "close"), resp.raw_head
    assert resp.complete
    assert resp.body == b"".join(bytes([97 + i]) * 100 for i in range(4))


def test_close_delimited_response_via_curl(main_edge, origin):
    r = main_edge.curl("blog.example", "/close?size=5000")
    assert r.returncode == 0, r.stderr
    assert r.body == b"z" * 5000


def test_expect_100_continue(main_edge, origin):
    body = b"0123456789" * 100
    with main_edge.conn() as c:
        c.send(build_request("POST", "/expect", headers=[("Expect", "100-continue"),
                                                        ("Content-Length", str(len(body)))]))
        c.settimeout(3)
        first = c.read_until(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n"), first
        c.send(body)
        resp = c.read_response("POST")
        assert resp.status == 200
        echo = resp.json()
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert c.request(target="/next").json()["target"] == "/next"


def test_expect_100_continue_with_curl(main_edge, origin, tmp_path):
    f = tmp_path / "body.bin"
    f.write_bytes(b"q" * 300_000)
    r = main_edge.curl("blog.example", "/expect-curl", "-H", "Expect: 100-continue", "--data-binary", f"@{f}")
    assert r.returncode == 0, r.stderr
    assert 100 in r.interim
    assert r.status == 200
    assert b'"body_len": 300000' in r.body


def test_body_over_limit_with_content_length_gets_413_without_continue(main_edge, origin):
    with main_edge.conn() as c:
        c.send(build_request("POST", "/big", headers=[("Expect", "100-continue"),
                                                     ("Content-Length", str(2 * 1024 * 1024))]))
        c.settimeout(5)
        resp = c.read_response("POST")
        assert resp.status == 413
        assert not resp.interim, "100 Continue sent for a body that is refused"
    with main_edge.conn() as c:  # without Expect: answered from the head alone
        c.send(build_request("POST", "/big", headers=[("Content-Length", str(1024 * 1024 + 1))]))
        c.settimeout(5)
        assert c.read_response("POST").status == 413
    assert origin.stats()["requests"] == 0


def test_body_at_limit_passes(main_edge, origin):
    body = b"L" * (1024 * 1024)
    with main_edge.conn() as c:
        resp = c.request("POST", "/at-limit", body=body)
    assert resp.status == 200
    assert resp.json()["body_len"] == len(body)


def test_chunked_body_over_limit_gets_413(main_edge, origin):
    piece = b"%x\r\n%s\r\n" % (64 * 1024, b"c" * 64 * 1024)
    with main_edge.conn() as c:
        c.send(build_request("POST", "/big-chunked", headers=[("Transfer-Encoding", "chunked")]))
        try:
            for _ in range(40):  # 2.5 MiB > 1 MiB
                c.send(piece)
            c.send(b"0\r\n\r\n")
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the edge may stop reading/close once it has answered
        c.settimeout(5)
        resp = c.read_response("POST")
        assert resp.status == 413
    stats = origin.stats()
    assert stats["requests"] <= 1  # streamed head maybe; never a complete over-limit body
    assert not any(t == "/big-chunked" for t in stats["targets"][1:])


@pytest.mark.parametrize(
    ("method", "target"),
    [("HEAD", "/bytes?size=12345"), ("GET", "/status/204"), ("GET", "/status/304"), ("HEAD", "/chunked?n=3")],
)
def test_responses_without_body(main_edge, origin, method, target):
    with main_edge.conn() as c:
        c.send(build_request(method, target))
        resp = c.read_response(method)
        assert resp.status in (200, 204, 304)
        if target.startswith("/bytes"):
            assert resp.header("content-length") == "12345"
        # the next response must start right after the head: no stray body bytes on the wire
        nxt = c.request(target="/after-nobody")
        assert nxt.status == 200
        assert nxt.json()["target"] == "/after-nobody"


def test_204_and_304_via_curl(main_edge, origin):
    for code in (204, 304):
        r = main_edge.curl("blog.example", f"/status/{code}")
        assert r.returncode == 0, r.stderr
        assert r.status == code
        assert r.body == b""
