"""Request smuggling shapes, byte-exact over TLS: each gets a 400, then the connection is closed, and the origin never
sees the request hidden behind it (every payload is followed, in the same write, by ``GET /smuggled``)."""

from __future__ import annotations

import pytest

H = b"Host: blog.example\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: blog.example\r\n\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /first HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def get_with(header_lines: bytes) -> bytes:
    return b"GET /first HTTP/1.1\r\n" + H + header_lines + b"\r\n"


# (id, payload, the origin may see /first): the origin may see the first request only when the error is in the body
CASES: list[tuple[str, bytes, bool]] = [
    # CL.TE / TE.CL
    ("cl-te", post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nX"), False),
    ("te-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"),
     False),
    # Content-Length variants
    ("cl-two-different", post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), False),
    ("cl-duplicated", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), False),
    ("cl-list", post(b"Content-Length: 5, 5\r\n", b"hello"), False),
    ("cl-plus", post(b"Content-Length: +5\r\n", b"hello"), False),
    ("cl-minus", post(b"Content-Length: -5\r\n", b"hello"), False),
    ("cl-inner-space", post(b"Content-Length: 5 0\r\n", b"hello"), False),
    ("cl-non-digit", post(b"Content-Length: 5a\r\n", b"hello"), False),
    ("cl-hex", post(b"Content-Length: 0x5\r\n", b"hello"), False),
    ("cl-empty", post(b"Content-Length: \r\n", b"hello"), False),
    ("cl-space-before-colon", post(b"Content-Length : 5\r\n", b"hello"), False),
    # Transfer-Encoding variants (TE.TE)
    ("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), False),
    ("te-chunked-gzip", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), False),
    ("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), False),
    ("te-quoted", post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), False),
    ("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), False),
    ("te-twice", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", b"0\r\n\r\n"), False),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), False),
    ("te-vertical-tab", post(b"Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n"), False),
    ("te-obs-fold", post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), False),
    ("te-obs-fold-tab", post(b"Transfer-Encoding: x\r\n\tchunked\r\n", b"0\r\n\r\n"), False),
    # invalid chunk sizes (the head is valid: the origin may have been sent the head already)
    ("chunk-hex-overflow", post(b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nA\r\n0\r\n\r\n"), True),
    ("chunk-0x-prefix", post(b"Transfer-Encoding: chunked\r\n", b"0x10\r\n" + b"A" * 16 + b"\r\n0\r\n\r\n"), True),
    ("chunk-negative", post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nA\r\n0\r\n\r\n"), True),
    ("chunk-not-hex", post(b"Transfer-Encoding: chunked\r\n", b"g\r\nA\r\n0\r\n\r\n"), True),
    ("chunk-missing-crlf", post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcX0\r\n\r\n"), True),
    # header syntax
    ("bare-lf-in-headers", b"GET /first HTTP/1.1\r\nHost: blog.example\nX-A: b\r\n\r\n", False),
    ("bare-cr-in-value", get_with(b"X-A: b\rc\r\n"), False),
    ("nul-in-value", get_with(b"X-A: b\x00c\r\n"), False),
    ("obs-fold-line", get_with(b"X-A: b\r\n c\r\n"), False),
    ("space-in-header-name", get_with(b"X A: b\r\n"), False),
    ("invalid-chars-in-name", get_with(b"X[A]: b\r\n"), False),
    ("leading-space-header", b"GET /first HTTP/1.1\r\n Host: blog.example\r\n" + H + b"\r\n", False),
    ("no-colon", get_with(b"X-A b\r\n"), False),
    # request line
    ("invalid-method", b"G(T /first HTTP/1.1\r\n" + H + b"\r\n", False),
    ("invalid-target", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", False),
    ("space-in-target", b"GET /fi rst HTTP/1.1\r\n" + H + b"\r\n", False),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
    ("http-1.2", b"GET /first HTTP/1.2\r\n" + H + b"\r\n", False),
    ("http-3.0", b"GET /first HTTP/3.0\r\n" + H + b"\r\n", False),
    ("lowercase-version", b"GET /first http/1.1\r\n" + H + b"\r\n", False),
]


@pytest.mark.parametrize(("payload", "origin_may_see_first"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_smuggling_payload_rejected(main_edge, origin, payload, origin_may_see_first):
    with main_edge.conn() as c:
        c.send(payload + SMUGGLED)
        c.settimeout(5)
        data = c.read_to_eof(timeout=5)
    assert data.startswith(b"HTTP/1.1 400 "), data[:300]
    assert data.count(b"HTTP/1.1 ") == 1, f"more than one response: {data[:600]!r}"
    stats = origin.stats()
    assert "/smuggled" not in stats["targets"]
    assert not any("GPOST" in t or t.startswith("/smuggled") for t in stats["targets"])
    if not origin_may_see_first:
        assert stats["requests"] == 0, stats["targets"]
    else:
        assert stats["requests"] <= 1, stats["targets"]


def test_valid_request_after_smuggling_tests_still_works(main_edge, origin):
    with main_edge.conn() as c:
        assert c.request(target="/ok").status == 200
