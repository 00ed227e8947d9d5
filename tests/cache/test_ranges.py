"""Range requests from a stored response (RFC 9110 sections 13.1.5, 14) as pure functions."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import HTTP

import pytest

from tlsedge.cache.ranges import MAX_RANGES, RangeReply, if_range_allows, parse_range, range_reply

BODY = bytes(range(256)) * 4  # 1024 bytes, every byte value
TEXT = b"".join(b"line %04d\n" % n for n in range(100))  # 1000 bytes


def body_of(reply: RangeReply, body: bytes) -> bytes:
    """What the caller writes: each prefix, then its slice of the stored body, then the epilogue."""
    return b"".join(prefix + body[start:end] for prefix, start, end in reply.parts) + reply.epilogue


# --- RFC 9110 section 14.1.2: byte ranges -------------------------------------------------------------------------


def test_rfc9110_14_1_2_first_last_forms() -> None:
    assert parse_range(b"bytes=0-499", 1000) == [(0, 499)]
    assert parse_range(b"bytes=500-", 1000) == [(500, 999)]
    assert parse_range(b"bytes=-200", 1000) == [(800, 999)]
    assert parse_range(b"BYTES=0-0", 1000) == [(0, 0)]


def test_rfc9110_14_1_2_last_clamped_and_suffix_longer_than_body() -> None:
    assert parse_range(b"bytes=900-5000", 1000) == [(900, 999)]
    assert parse_range(b"bytes=-5000", 1000) == [(0, 999)]
    assert parse_range(b"bytes=0-99999999999999999999999999", 10) == [(0, 9)]


def test_rfc9110_14_1_1_other_units_ignored() -> None:
    assert parse_range(b"items=0-1", 1000) is None
    assert parse_range(b"0-1", 1000) is None


def test_rfc9110_14_2_invalid_syntax_anywhere_ignores_the_field() -> None:
    for value in (
        b"bytes=",
        b"bytes= , ",
        b"bytes=a-b",
        b"bytes=1",
        b"bytes=-",
        b"bytes=5-1",
        b"bytes=0-1,x",
        b"bytes=0-1-2",
        b"bytes=+1-2",
        b"bytes=1- 2",
        b"bytes=0-1,2-1",
    ):
        assert parse_range(value, 1000) is None, value


def test_rfc9110_14_1_2_list_whitespace_and_empty_elements_tolerated() -> None:
    assert parse_range(b"bytes= 0-1 ,, 5-6 ,", 1000) == [(0, 1), (5, 6)]


def test_rfc9110_14_1_2_unsatisfiable() -> None:
    assert parse_range(b"bytes=1000-", 1000) == "unsatisfiable"
    assert parse_range(b"bytes=2000-3000, 1500-", 1000) == "unsatisfiable"
    assert parse_range(b"bytes=-0", 1000) == "unsatisfiable"


def test_rfc9110_14_1_2_unsatisfiable_ranges_dropped_when_others_are_not() -> None:
    assert parse_range(b"bytes=2000-3000, 10-20", 1000) == [(10, 20)]


def test_rfc9110_14_1_2_empty_representation_is_unsatisfiable() -> None:
    for value in (b"bytes=0-", b"bytes=-5", b"bytes=0-0"):
        assert parse_range(value, 0) == "unsatisfiable", value


def test_rfc9110_14_6_overlapping_and_adjacent_ranges_coalesced() -> None:
    assert parse_range(b"bytes=500-600, 0-99, 100-199, 550-700", 1000) == [(0, 199), (500, 700)]
    assert parse_range(b"bytes=0-10, -990", 1000) == [(0, 999)]
    assert parse_range(b"bytes=0-0, 2-2", 1000) == [(0, 0), (2, 2)]


def test_rfc9110_14_2_too_many_ranges_ignored() -> None:
    allowed = b"bytes=" + b",".join(b"%d-%d" % (n * 10, n * 10) for n in range(MAX_RANGES))
    assert len(parse_range(allowed, 1000)) == MAX_RANGES
    too_many = b"bytes=" + b",".join(b"%d-%d" % (n * 10, n * 10) for n in range(MAX_RANGES + 1))
    assert parse_range(too_many, 1000) is None


# --- RFC 9110 section 13.1.5: If-Range ----------------------------------------------------------------------------


def test_rfc9110_13_1_5_if_range_strong_etag_match() -> None:
    assert if_range_allows(b'"v1"', b'"v1"', None)
    assert if_range_allows(b' "v1" ', b'"v1"', b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert not if_range_allows(b'"v2"', b'"v1"', None)
    assert not if_range_allows(b'"v1"', None, b"Sun, 06 Nov 1994 08:49:37 GMT")


def test_rfc9110_13_1_5_if_range_weak_etags_never_match() -> None:
    assert not if_range_allows(b'W/"v1"', b'W/"v1"', None)
    assert not if_range_allows(b'"v1"', b'W/"v1"', None)
    assert not if_range_allows(b'W/"v1"', b'"v1"', None)


def test_rfc9110_13_1_5_if_range_date_must_equal_last_modified() -> None:
    lm = b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert if_range_allows(lm, b'"v1"', lm)
    assert not if_range_allows(b"Sun, 06 Nov 1994 08:49:38 GMT", None, lm)
    assert not if_range_allows(lm, b'"v1"', None)
    assert not if_range_allows(b"", b'"v1"', lm)


# --- RFC 9110 sections 14.4, 14.6, 15.3.7, 15.5.17: the reply -----------------------------------------------------


def test_rfc9110_15_3_7_single_range_reply() -> None:
    reply = range_reply([(10, 19)], len(BODY), b"application/octet-stream", b"unused")
    assert reply.status == 206
    assert reply.fields == [(b"Content-Range", b"bytes 10-19/1024")]
    assert reply.epilogue == b""
    assert body_of(reply, BODY) == BODY[10:20]
    assert reply.length == 10


def test_rfc9110_15_5_17_unsatisfiable_reply() -> None:
    reply = range_reply("unsatisfiable", 1024, b"text/plain", b"b")
    assert (reply.status, reply.fields, reply.parts, reply.epilogue, reply.length) == (
        416,
        [(b"Content-Range", b"bytes */1024")],
        [],
        b"",
        0,
    )


def test_rfc9110_14_6_multipart_parses_with_the_email_parser() -> None:
    ranges = parse_range(b"bytes=0-9, 500-519, -5", len(TEXT))
    reply = range_reply(ranges, len(TEXT), b"text/plain", b"3d6b6a416f9b5")
    assert reply.status == 206
    assert reply.fields == [(b"Content-Type", b"multipart/byteranges; boundary=3d6b6a416f9b5")]
    body = body_of(reply, TEXT)
    assert reply.length == len(body)
    head = b"".join(b"%s: %s\r\n" % field for field in reply.fields) + b"\r\n"
    message = message_from_bytes(head + body, policy=HTTP)
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert [part["Content-Range"] for part in parts] == ["bytes 0-9/1000", "bytes 500-519/1000", "bytes 995-999/1000"]
    assert [part["Content-Type"] for part in parts] == ["text/plain"] * 3
    assert [part.get_payload(decode=True) for part in parts] == [TEXT[0:10], TEXT[500:520], TEXT[995:1000]]


def test_rfc9110_14_6_multipart_exact_bytes_binary_and_no_type() -> None:
    reply = range_reply([(0, 1), (254, 257)], len(BODY), None, b"BND")
    body = body_of(reply, BODY)
    assert body == (
        b"--BND\r\nContent-Range: bytes 0-1/1024\r\n\r\n\x00\x01"
        b"\r\n--BND\r\nContent-Range: bytes 254-257/1024\r\n\r\n\xfe\xff\x00\x01"
        b"\r\n--BND--\r\n"
    )
    assert reply.length == len(body)
    pieces = body.split(b"--BND")
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    payloads = [piece.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for piece in pieces[1:-1]]
    assert payloads == [BODY[0:2], BODY[254:258]]


def test_rfc2046_5_1_1_boundary_quoted_when_not_a_token_and_validated() -> None:
    reply = range_reply([(0, 0), (2, 2)], 10, None, b"a:b=c")
    assert reply.fields == [(b"Content-Type", b'multipart/byteranges; boundary="a:b=c"')]
    for bad in (b"", b"x" * 71, b"ends with space ", b"semi;colon", b'quote"'):
        with pytest.raises(ValueError, match="boundary"):
            range_reply([(0, 0), (2, 2)], 10, None, bad)


def test_rfc9110_14_6_no_ranges_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one range"):
        range_reply([], 10, None, b"b")
