"""The keyless wire format without sockets: framing a stream, fields, versions, limits and malformed input."""

from __future__ import annotations

import struct

import pytest

from tlsedge.tls.keyless.wire import (
    HEADER,
    MAX_BODY,
    MAX_FRAME,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameError,
    FrameReader,
    MessageError,
    Opcode,
    decode_ping,
    decode_response,
    decode_sign,
    encode_error,
    encode_frame,
    encode_ok,
    encode_ping,
    encode_pong,
    encode_sign,
    scheme_name,
)

KEY_ID = bytes(range(32))
PAYLOAD = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + b"\x11" * 32


def sign_frame(request_id: int = 7, **overrides: object) -> bytes:
    fields = {"key_id": KEY_ID, "algorithm": 0x0403, "payload": PAYLOAD, "server_name": "shop.example",
              "client_ip": "192.0.2.1"} | overrides
    return encode_sign(request_id, **fields)  # type: ignore[arg-type]


def one(data: bytes) -> Frame:
    frames = FrameReader().feed(data)
    assert len(frames) == 1
    return frames[0]


def test_sign_request_round_trip() -> None:
    request = decode_sign(one(sign_frame(0xFFFFFFFE)))
    assert (request.key_id, request.algorithm, request.payload) == (KEY_ID, 0x0403, PAYLOAD)
    assert (request.server_name, request.client_ip) == ("shop.example", "192.0.2.1")
    assert one(sign_frame(0xFFFFFFFE)).request_id == 0xFFFFFFFE


def test_header_layout_is_the_documented_one() -> None:
    data = encode_ping(0x01020304, b"hi")
    # major 1, minor 0, opcode PING, flags 0, id, body length; then tag 0x09, length 2, "hi"
    assert data == bytes([1, 0, 0x02, 0]) + bytes([1, 2, 3, 4]) + struct.pack("!H", 5) + b"\x09\x00\x02hi"
    assert HEADER.size == 10


def test_ipv6_client_and_no_sni_or_unparsable_ip() -> None:
    request = decode_sign(one(sign_frame(client_ip="2001:db8::1")))
    assert request.client_ip == "2001:db8::1"
    request = decode_sign(one(sign_frame(server_name=None, client_ip="unix:/run/sock")))
    assert request.server_name is None and request.client_ip is None


def test_stream_fed_one_byte_at_a_time_and_many_frames_in_one_read() -> None:
    stream = sign_frame(1) + encode_ping(2, b"x") + sign_frame(3)
    reader = FrameReader()
    frames = []
    for index in range(len(stream)):
        frames += reader.feed(stream[index : index + 1])
    assert [f.request_id for f in frames] == [1, 2, 3]
    assert reader.buffered == 0
    assert [f.request_id for f in FrameReader().feed(stream)] == [1, 2, 3]
    reader = FrameReader()
    assert reader.feed(stream[:-1])[-1].request_id == 2
    assert reader.buffered == len(sign_frame(3)) - 1


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    reader = FrameReader()
    header = HEADER.pack(1, 0, Opcode.SIGN, 0, 9, MAX_BODY + 1)
    with pytest.raises(FrameError) as caught:
        reader.feed(header)  # the body never has to arrive
    assert caught.value.request_id == 9 and caught.value.code == ErrorCode.BAD_REQUEST
    assert "limit" in str(caught.value)
    with pytest.raises(FrameError):
        reader.feed(b"")  # a failed reader stays failed: framing is lost
    assert len(FrameReader().feed(HEADER.pack(1, 0, Opcode.SIGN, 0, 9, MAX_BODY) + bytes(MAX_BODY))) == 1
    assert MAX_FRAME == 16 * 1024


def test_non_zero_flags_break_framing() -> None:
    with pytest.raises(FrameError, match="flags"):
        FrameReader().feed(HEADER.pack(1, 0, Opcode.PING, 0x80, 1, 0))


def test_frames_before_a_break_are_handed_over_with_the_error() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError) as caught:
        reader.feed(sign_frame(1) + encode_ping(2) + HEADER.pack(1, 0, Opcode.PING, 1, 3, 0) + sign_frame(4))
    assert [f.request_id for f in caught.value.frames] == [1, 2] and caught.value.request_id == 3


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_frame(Opcode.PING, 1, [(0x80, bytes(MAX_BODY))])
    with pytest.raises(ValueError, match="too long"):
        encode_frame(Opcode.PING, 1, [(0x80, bytes(70_000))])


def test_other_major_version_is_answered_not_dropped() -> None:
    frame = one(b"\x02" + sign_frame(5)[1:])
    with pytest.raises(MessageError) as caught:
        decode_sign(frame)
    assert caught.value.code == ErrorCode.VERSION_UNSUPPORTED and caught.value.request_id == 5
    assert decode_sign(one(sign_frame(5)[:1] + b"\x07" + sign_frame(5)[2:])).key_id == KEY_ID  # newer minor: fine


def raw_frame(body: bytes, opcode: int = Opcode.SIGN, request_id: int = 3) -> Frame:
    return Frame(1, 0, opcode, request_id, body)


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!BH", tag, len(value)) + value


GOOD_BODY = tlv(1, KEY_ID) + tlv(2, b"\x04\x03") + tlv(3, PAYLOAD)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD_BODY + b"\x04\x00", "truncated field header"),
        (GOOD_BODY + struct.pack("!BH", 4, 10) + b"abc", "claims 10 bytes, 3 left"),
        (GOOD_BODY + tlv(1, KEY_ID), "twice"),
        (GOOD_BODY + tlv(0x30, b"?"), "unknown critical field 0x30"),
        (tlv(2, b"\x04\x03") + tlv(3, PAYLOAD), "key_id is missing"),
        (tlv(1, KEY_ID) + tlv(3, PAYLOAD), "algorithm is missing"),
        (tlv(1, KEY_ID) + tlv(2, b"\x04\x03"), "payload is missing"),
        (tlv(1, KEY_ID[:20]) + tlv(2, b"\x04\x03") + tlv(3, PAYLOAD), "key id must be 32 bytes"),
        (tlv(1, KEY_ID) + tlv(2, b"\x04") + tlv(3, PAYLOAD), "algorithm must be 2 bytes"),
        (GOOD_BODY + tlv(4, b""), "server name"),
        (GOOD_BODY + tlv(4, "bücher.example".encode()), "server name"),
        (GOOD_BODY + tlv(4, b"a" * 256), "server name"),
        (GOOD_BODY + tlv(5, b"\x01\x02\x03"), "client IP must be 4 or 16 bytes"),
    ],
)
def test_malformed_sign_fields_are_message_errors(body: bytes, message: str) -> None:
    with pytest.raises(MessageError, match=message) as caught:
        decode_sign(raw_frame(body))
    assert caught.value.code == ErrorCode.BAD_REQUEST and caught.value.request_id == 3


def test_unknown_optional_fields_are_skipped() -> None:
    request = decode_sign(raw_frame(GOOD_BODY + tlv(0x80, b"future") + tlv(0xFE, b"")))
    assert request.payload == PAYLOAD


def test_ping_and_responses() -> None:
    assert decode_ping(one(encode_ping(1, b"abc"))) == b"abc"
    assert decode_ping(one(encode_ping(1))) == b""
    with pytest.raises(MessageError, match="64 bytes"):
        decode_ping(one(encode_ping(1, b"x" * 65)))
    assert decode_response(one(encode_ok(1, b"sig"))) == b"sig"
    assert decode_response(one(encode_pong(1, b"abc"))) == b"abc"
    reply = decode_response(one(encode_error(1, ErrorCode.NAME_REFUSED, "no")))
    assert reply == ErrorReply(7, "no") and isinstance(reply, ErrorReply) and reply.name == "name_refused"
    assert ErrorReply(999, "").name == "error_999"
    with pytest.raises(MessageError) as caught:
        decode_response(one(sign_frame(4)))
    assert caught.value.code == ErrorCode.UNKNOWN_OPCODE
    with pytest.raises(MessageError, match="signature is missing"):
        decode_response(one(encode_frame(Opcode.OK, 1)))


def test_error_text_is_cut_at_255_bytes_on_a_character_boundary() -> None:
    reply = decode_response(one(encode_error(2, ErrorCode.INTERNAL, "é" * 200)))
    assert isinstance(reply, ErrorReply)
    assert reply.text == "é" * 127 and len(reply.text.encode()) <= 255


def test_scheme_names() -> None:
    assert scheme_name(0x0804) == "rsa_pss_rsae_sha256"
    assert scheme_name(0x0401) == "0x0401"


def test_the_fast_sign_encoder_matches_the_generic_one() -> None:
    fields = [(1, KEY_ID), (2, b"\x08\x04"), (3, PAYLOAD), (4, b"shop.example"), (5, bytes([192, 0, 2, 1]))]
    assert sign_frame(9, algorithm=0x0804) == encode_frame(Opcode.SIGN, 9, fields)
    assert decode_sign(one(sign_frame(client_ip="[::1]"))).client_ip == "::1"
    assert decode_sign(one(sign_frame(client_ip="fe80::1%eth0"))).client_ip is None
    with pytest.raises(ValueError, match="key id is 32 bytes"):
        sign_frame(key_id=KEY_ID[:31])
    with pytest.raises(ValueError, match="limit"):
        sign_frame(payload=bytes(MAX_BODY))
