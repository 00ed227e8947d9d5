"""The keyless wire protocol between edges and key servers, sans-IO: frames in, frames out, no sockets.

An edge asks a key server to sign the input of a TLS 1.3 CertificateVerify; the key server answers with the signature
or a numbered error. Many requests share one connection: each carries a 32-bit id that its response repeats, so
answers may come back in any order. The format is documented in docs/keyless-protocol.md; in short::

    frame  = header body
    header = major:u8 minor:u8 opcode:u8 flags:u8 request_id:u32 body_length:u16     (network byte order, 10 bytes)
    body   = *(tag:u8 length:u16 value)                                              (TLV fields, each tag once)

The header layout is the same in every version, so a peer can always frame the stream and answer a version it does
not speak with ``version_unsupported`` (by id) instead of losing the connection. Tags below 0x80 are *critical*: an
unknown one makes the message invalid; tags from 0x80 on are optional and skipped when unknown, so later minor
versions can add information without breaking older key servers. Learnt from Cloudflare's gokeyless (TLV items,
request ids), with the opcode moved into the fixed header and an explicit error-code field.

Two kinds of error, because they call for different reactions:

* `FrameError`: the byte stream itself is broken (bad length, non-zero flags). Framing is lost; close the connection.
* `MessageError`: a well-framed message is invalid (missing field, bad length). Answer that id with an ERROR frame
  carrying ``.code`` and keep the connection.
"""

from __future__ import annotations

import enum
import hashlib
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

VERSION_MAJOR = 1
VERSION_MINOR = 0

HEADER = struct.Struct("!BBBBIH")
MAX_FRAME = 16 * 1024  # header included; a SIGN request is ~200 bytes, an RSA-4096 signature 512
MAX_BODY = MAX_FRAME - HEADER.size
MAX_TEXT = 255  # server names and error texts
MAX_PING_DATA = 64
KEY_ID_SIZE = 32  # SHA-256 of the SubjectPublicKeyInfo DER

_TLV = struct.Struct("!BH")
_U16 = struct.Struct("!H")
_OPTIONAL_TAGS = 0x80


class Opcode(enum.IntEnum):
    """What a frame asks or answers. Requests are below 0x80, responses from 0x80 on."""

    SIGN = 0x01
    PING = 0x02
    OK = 0x81  # answer to SIGN: SIGNATURE
    PONG = 0x82  # answer to PING: the same PING_DATA
    ERROR = 0xFF  # answer to anything: ERROR_CODE, ERROR_TEXT


class Tag(enum.IntEnum):
    """TLV field tags (critical below 0x80)."""

    KEY_ID = 0x01  # 32 bytes
    ALGORITHM = 0x02  # u16, a TLS SignatureScheme
    PAYLOAD = 0x03  # the bytes to sign: the whole CertificateVerify input
    SERVER_NAME = 0x04  # the client's SNI, ASCII
    CLIENT_IP = 0x05  # 4 or 16 bytes, as the edge saw the client
    SIGNATURE = 0x06
    ERROR_CODE = 0x07  # u16
    ERROR_TEXT = 0x08  # UTF-8, at most 255 bytes
    PING_DATA = 0x09  # at most 64 bytes, echoed in PONG


class ErrorCode(enum.IntEnum):
    """Why a request was not answered with OK. The names are the ones logs and `KeylessError.reason` use."""

    BAD_REQUEST = 1  # malformed frame or fields
    VERSION_UNSUPPORTED = 2
    UNKNOWN_OPCODE = 3
    KEY_NOT_FOUND = 4
    PAYLOAD_REFUSED = 5  # not a TLS 1.3 server CertificateVerify input
    ALGORITHM_REFUSED = 6  # the algorithm does not fit the key (or is never allowed)
    NAME_REFUSED = 7  # the SNI is not one of the key's names (or absent)
    EDGE_REFUSED = 8  # this edge's certificate identity may not use this key
    RATE_LIMITED = 9
    INTERNAL = 10  # signing failed on the key server
    SHUTTING_DOWN = 11  # try another key server


RETRYABLE_ERRORS = frozenset({ErrorCode.SHUTTING_DOWN})
_KNOWN_TAGS = frozenset(int(tag) for tag in Tag)
# Plain ints for the per-request encoder (IntEnum members are slower to pack).
_SIGN, _KEY_ID, _ALGORITHM, _PAYLOAD = int(Opcode.SIGN), int(Tag.KEY_ID), int(Tag.ALGORITHM), int(Tag.PAYLOAD)
_SERVER_NAME, _CLIENT_IP = int(Tag.SERVER_NAME), int(Tag.CLIENT_IP)
_SIGN_FIXED = struct.Struct(f"!BH{KEY_ID_SIZE}sBHHBH")  # KEY_ID field, ALGORITHM field, PAYLOAD field header


class SignatureScheme(enum.IntEnum):
    """The TLS 1.3 signature schemes a key server signs with (RFC 8446 section 4.2.3); nothing else is accepted."""

    ECDSA_SECP256R1_SHA256 = 0x0403
    ECDSA_SECP384R1_SHA384 = 0x0503
    RSA_PSS_RSAE_SHA256 = 0x0804
    RSA_PSS_RSAE_SHA384 = 0x0805
    RSA_PSS_RSAE_SHA512 = 0x0806
    ED25519 = 0x0807


def scheme_name(algorithm: int) -> str:
    """``ecdsa_secp256r1_sha256`` for a known scheme, ``0x0401`` for anything else (for logs)."""
    try:
        return SignatureScheme(algorithm).name.lower()
    except ValueError:
        return f"0x{algorithm:04x}"


class WireError(Exception):
    """Base of the protocol errors; ``code`` is what an ERROR frame about it carries."""

    def __init__(self, code: ErrorCode, message: str, request_id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class FrameError(WireError):
    """The stream cannot be framed any more: answer (if the id is known) and close the connection.

    ``frames`` holds the frames that were complete before the break, in the same read: handle them first.
    """

    frames: list[Frame]

    def __init__(self, code: ErrorCode, message: str, request_id: int = 0, frames: list[Frame] | None = None) -> None:
        super().__init__(code, message, request_id)
        self.frames = frames or []


class MessageError(WireError):
    """One message is invalid: answer its id with an ERROR frame; the connection stays usable."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as read: the header's values and the raw TLV body (parsed by the ``decode_*`` functions)."""

    major: int
    minor: int
    opcode: int
    request_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class SignRequest:
    key_id: bytes
    algorithm: int
    payload: bytes
    server_name: str | None
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: int
    text: str

    @property
    def name(self) -> str:
        """``name_refused`` for a known code, ``error_42`` for one a newer key server may send."""
        try:
            return ErrorCode(self.code).name.lower()
        except ValueError:
            return f"error_{self.code}"


class FrameReader:
    """Cuts a byte stream into frames: ``feed(bytes)`` returns the frames completed so far.

    Lengths are checked as soon as a header is complete, so a peer cannot make it buffer more than one maximal frame.
    After a `FrameError` (whose ``frames`` are the good frames before the break) the reader is unusable: the stream
    position is lost; close the connection.
    """

    __slots__ = ("_buffer", "_failed")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise FrameError(ErrorCode.BAD_REQUEST, "the stream already failed to frame")
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        start = 0
        end = len(buffer)
        header_size = HEADER.size
        while end - start >= header_size:
            major, minor, opcode, flags, request_id, length = HEADER.unpack_from(buffer, start)
            if flags or length > MAX_BODY:
                self._failed = True
                reason = (f"header flags must be 0, not 0x{flags:02x}" if flags else
                          f"frame body of {length} bytes exceeds the {MAX_BODY}-byte limit")
                raise FrameError(ErrorCode.BAD_REQUEST, reason, request_id, frames)
            stop = start + header_size + length
            if stop > end:
                break
            frames.append(Frame(major, minor, opcode, request_id, bytes(buffer[start + header_size : stop])))
            start = stop
        if start:
            del buffer[:start]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (for tests and for closing a connection that ends mid-frame)."""
        return len(self._buffer)


def encode_frame(opcode: int, request_id: int, fields: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """One frame of the current version; raises ValueError for a field or body too long to send."""
    parts = []
    for tag, value in fields:
        if len(value) > 0xFFFF:
            raise ValueError(f"field 0x{tag:02x} of {len(value)} bytes is too long for a frame")
        parts.append(_TLV.pack(tag, len(value)))
        parts.append(value)
    body = b"".join(parts)
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    return HEADER.pack(VERSION_MAJOR, VERSION_MINOR, opcode, 0, request_id, len(body)) + body


def encode_sign(
    request_id: int, *, key_id: bytes, algorithm: int, payload: bytes, server_name: str | None, client_ip: str | None
) -> bytes:
    """A SIGN request (built in one join: it is on every keyless handshake's path). ``client_ip`` that is not an IP
    address (e.g. a Unix socket peer) is left out; ValueError for a key id of the wrong size or a payload too long."""
    if len(key_id) != KEY_ID_SIZE:
        raise ValueError(f"a key id is {KEY_ID_SIZE} bytes, not {len(key_id)}")
    parts = [b"", _SIGN_FIXED.pack(_KEY_ID, KEY_ID_SIZE, key_id, _ALGORITHM, 2, algorithm, _PAYLOAD, len(payload)),
             payload]
    size = _SIGN_FIXED.size + len(payload)
    if server_name:
        name = server_name.encode("ascii", "replace")
        parts += (_TLV.pack(_SERVER_NAME, len(name)), name)
        size += _TLV.size + len(name)
    packed_ip = _pack_ip(client_ip)
    if packed_ip is not None:
        parts += (_TLV.pack(_CLIENT_IP, len(packed_ip)), packed_ip)
        size += _TLV.size + len(packed_ip)
    if size > MAX_BODY:
        raise ValueError(f"frame body of {size} bytes exceeds the {MAX_BODY}-byte limit")
    parts[0] = HEADER.pack(VERSION_MAJOR, VERSION_MINOR, _SIGN, 0, request_id, size)
    return b"".join(parts)


def encode_ping(request_id: int, data: bytes = b"") -> bytes:
    return encode_frame(Opcode.PING, request_id, [(Tag.PING_DATA, data)] if data else ())


def encode_ok(request_id: int, signature: bytes) -> bytes:
    return encode_frame(Opcode.OK, request_id, [(Tag.SIGNATURE, signature)])


def encode_pong(request_id: int, data: bytes = b"") -> bytes:
    return encode_frame(Opcode.PONG, request_id, [(Tag.PING_DATA, data)] if data else ())


def encode_error(request_id: int, code: int, text: str) -> bytes:
    """An ERROR frame; the text is cut to 255 bytes (at a character boundary)."""
    raw = text.encode("utf-8")[:MAX_TEXT].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(Opcode.ERROR, request_id, [(Tag.ERROR_CODE, _U16.pack(code)), (Tag.ERROR_TEXT, raw)])


def parse_fields(frame: Frame) -> dict[int, bytes]:
    """The TLV fields of a frame of this major version; unknown optional tags are dropped."""
    if frame.major != VERSION_MAJOR:
        raise MessageError(
            ErrorCode.VERSION_UNSUPPORTED,
            f"protocol version {frame.major}.{frame.minor} is not supported; this side speaks {VERSION_MAJOR}.x",
            frame.request_id,
        )
    body = frame.body
    fields: dict[int, bytes] = {}
    position = 0
    size = len(body)
    while position < size:
        if size - position < _TLV.size:
            raise MessageError(ErrorCode.BAD_REQUEST, "truncated field header", frame.request_id)
        tag, length = _TLV.unpack_from(body, position)
        position += _TLV.size
        if length > size - position:
            left = size - position
            raise MessageError(ErrorCode.BAD_REQUEST, f"field 0x{tag:02x} claims {length} bytes, {left} left",
                               frame.request_id)
        if tag in fields:
            raise MessageError(ErrorCode.BAD_REQUEST, f"field 0x{tag:02x} appears twice", frame.request_id)
        if tag in _KNOWN_TAGS:
            fields[tag] = body[position : position + length]
        elif tag < _OPTIONAL_TAGS:
            raise MessageError(ErrorCode.BAD_REQUEST, f"unknown critical field 0x{tag:02x}", frame.request_id)
        position += length
    return fields


def decode_sign(frame: Frame) -> SignRequest:
    """A SIGN request's fields, each present when required and of a valid size (no policy: that is the server's)."""
    fields = parse_fields(frame)
    rid = frame.request_id
    key_id = _required(fields, Tag.KEY_ID, rid)
    if len(key_id) != KEY_ID_SIZE:
        raise MessageError(ErrorCode.BAD_REQUEST, f"key id must be {KEY_ID_SIZE} bytes, not {len(key_id)}", rid)
    algorithm = _u16(_required(fields, Tag.ALGORITHM, rid), "algorithm", rid)
    payload = _required(fields, Tag.PAYLOAD, rid)
    server_name = None
    raw_name = fields.get(Tag.SERVER_NAME)
    if raw_name is not None:
        if not 0 < len(raw_name) <= MAX_TEXT or not raw_name.isascii():
            raise MessageError(ErrorCode.BAD_REQUEST, "server name must be 1 to 255 ASCII bytes", rid)
        server_name = raw_name.decode("ascii")
    client_ip = None
    raw_ip = fields.get(Tag.CLIENT_IP)
    if raw_ip is not None:
        if len(raw_ip) not in (4, 16):
            raise MessageError(ErrorCode.BAD_REQUEST, f"client IP must be 4 or 16 bytes, not {len(raw_ip)}", rid)
        client_ip = socket.inet_ntop(socket.AF_INET if len(raw_ip) == 4 else socket.AF_INET6, raw_ip)
    return SignRequest(key_id, algorithm, payload, server_name, client_ip)


def decode_ping(frame: Frame) -> bytes:
    """A PING's data (echoed in the PONG)."""
    data = parse_fields(frame).get(Tag.PING_DATA, b"")
    if len(data) > MAX_PING_DATA:
        raise MessageError(ErrorCode.BAD_REQUEST, f"ping data is limited to {MAX_PING_DATA} bytes", frame.request_id)
    return data


def decode_response(frame: Frame) -> bytes | ErrorReply:
    """An answer: the signature (OK), the echoed data (PONG), or an `ErrorReply`. MessageError when malformed."""
    fields = parse_fields(frame)
    rid = frame.request_id
    if frame.opcode == Opcode.OK:
        return _required(fields, Tag.SIGNATURE, rid)
    if frame.opcode == Opcode.PONG:
        return fields.get(Tag.PING_DATA, b"")
    if frame.opcode == Opcode.ERROR:
        code = _u16(_required(fields, Tag.ERROR_CODE, rid), "error code", rid)
        return ErrorReply(code, fields.get(Tag.ERROR_TEXT, b"")[:MAX_TEXT].decode("utf-8", "replace"))
    raise MessageError(ErrorCode.UNKNOWN_OPCODE, f"opcode 0x{frame.opcode:02x} is not a response", rid)


def key_id(public_key: PublicKeyTypes) -> bytes:
    """The key id of a key: SHA-256 of its SubjectPublicKeyInfo DER (the same for a certificate and its key)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def key_id_for_certificate(cert_pem: bytes) -> bytes:
    """The key id of the first certificate in ``cert_pem`` (the leaf of a chain file)."""
    return key_id(x509.load_pem_x509_certificate(cert_pem).public_key())


def _required(fields: dict[int, bytes], tag: Tag, request_id: int) -> bytes:
    value = fields.get(tag)
    if value is None:
        raise MessageError(ErrorCode.BAD_REQUEST, f"field {tag.name.lower()} is missing", request_id)
    return value


def _u16(value: bytes, what: str, request_id: int) -> int:
    if len(value) != 2:
        raise MessageError(ErrorCode.BAD_REQUEST, f"{what} must be 2 bytes, not {len(value)}", request_id)
    return _U16.unpack(value)[0]


def _pack_ip(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text.strip("[]"))
    except OSError:
        return None
