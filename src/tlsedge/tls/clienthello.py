"""A sans-IO parser for the TLS ClientHello, fed with the bytes peeked from a new connection.

Why: the edge must know the SNI *before* OpenSSL sees the connection, to refuse unknown names with a real
``unrecognized_name`` alert, to route pass-through sites by name without terminating TLS, and to compute JA4
fingerprints. The listener peeks (``recv(MSG_PEEK)``) so the bytes stay in the socket for OpenSSL afterwards, which
means this parser is always handed the *whole* buffer seen so far, never an increment. It answers one of:

- :class:`ClientHello` when the hello is complete (``length`` says how many bytes of records carried it);
- :data:`NEED_MORE` when the buffer is a valid prefix of a hello (peek again once more bytes have arrived);
- :class:`Invalid` with a specific reason when the bytes cannot be a TLS ClientHello within ``max_size``.

It never raises on any input: the bytes come from anyone on the internet. The common case (one record, one TCP
segment) costs one copy of the handshake message and a few ``struct`` calls per extension; there is no per-byte
Python loop. Multi-record hellos (a message split across records, as post-quantum key shares make more common) are
reassembled; records arriving over several peeks give ``NEED_MORE`` until the last one is complete.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_SIZE",
    "NEED_MORE",
    "ClientHello",
    "Invalid",
    "NeedMore",
    "alert_record",
    "is_grease",
    "parse_client_hello",
    "unrecognized_name_alert",
]

#: The largest TLS plaintext fragment (RFC 8446 5.1): a record body may not exceed it.
MAX_RECORD_BODY: Final = 16384
#: Default cap on the bytes of records carrying one ClientHello: a full record's worth of hello plus a few headers.
DEFAULT_MAX_SIZE: Final = 16384 + 5 * 4

_RECORD_HANDSHAKE: Final = 22
_HANDSHAKE_CLIENT_HELLO: Final = 1

_EXT_SERVER_NAME: Final = 0
_EXT_SIGNATURE_ALGORITHMS: Final = 13
_EXT_ALPN: Final = 16
_EXT_PRE_SHARED_KEY: Final = 41
_EXT_SUPPORTED_VERSIONS: Final = 43
_PARSED_EXTENSIONS: Final = frozenset((_EXT_SERVER_NAME, _EXT_SIGNATURE_ALGORITHMS, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS))

#: Record content types other than handshake, named so a log line says what arrived instead.
_RECORD_TYPE_NAMES: Final = {20: "change_cipher_spec", 21: "alert", 23: "application_data", 24: "heartbeat"}

#: What plain HTTP (HTTP/1.x methods, the HTTP/2 prior-knowledge preface) looks like on the first bytes.
_HTTP_STARTS: Final = (
    b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ", b"PATCH ", b"TRACE ", b"PRI * HTTP/2.0",
)  # fmt: skip

#: A DNS-ish host name as sent in SNI: ASCII letters, digits, ``-`` and ``_`` (seen in the wild), labels of 1..63,
#: an optional trailing dot. No NUL, no spaces, no IPv6 literal, no wildcard.
_HOST_NAME_RE: Final = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_MAX_HOST_NAME: Final = 253

_U16: Final = struct.Struct(">H")
_RECORD_HEADER: Final = struct.Struct(">BBBH")
_EXT_HEADER: Final = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the edge needs from a ClientHello: routing (SNI, ALPN) and fingerprinting (JA4) inputs.

    Lists that JA4 hashes keep GREASE values as sent (``cipher_suites``, ``extensions``, ``signature_algorithms``);
    JA4 drops them itself and a raw log is more useful with them. ``supported_versions`` has GREASE removed because
    its only use is "which versions does this client speak".
    """

    server_name: str | None
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    length: int


class NeedMore:
    """The buffer is a valid prefix of a ClientHello: wait for more bytes and call again with the whole buffer."""

    __slots__ = ()
    _instance: NeedMore | None = None

    def __new__(cls) -> NeedMore:
        # A singleton so callers may test with ``is NEED_MORE`` as well as ``isinstance``.
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


@dataclass(frozen=True, slots=True)
class Invalid:
    """The bytes are not (or cannot become) a ClientHello within the size limit; ``reason`` is for the log line."""

    reason: str


class _Malformed(Exception):
    """Internal: raised deep in the parser and turned into :class:`Invalid` at the API boundary."""


def is_grease(value: int) -> bool:
    """True for the RFC 8701 GREASE values (0x0A0A, 0x1A1A, ... 0xFAFA) clients sprinkle to keep servers tolerant."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def alert_record(description: int, level: int = 2) -> bytes:
    """A plaintext TLS alert record (fatal by default) to answer a ClientHello before any handshake.

    The record version is 0x0301, which every TLS version's ClientHello processing accepts before a version has
    been negotiated (OpenSSL and browsers ignore the record version of a plaintext alert).
    """
    if not 0 <= description <= 255 or level not in (1, 2):
        raise ValueError(f"bad alert level {level} or description {description}")
    return bytes((21, 3, 1, 0, 2, level, description))


def unrecognized_name_alert() -> bytes:
    """The fatal ``unrecognized_name`` (112) alert: RFC 6066's answer to an SNI the edge does not serve."""
    return alert_record(112)


def parse_client_hello(
    data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_SIZE
) -> ClientHello | NeedMore | Invalid:
    """Parse the ClientHello at the start of ``data`` (everything peeked so far from the connection).

    ``max_size`` bounds the bytes of records needed to carry the hello; a hello that would need more is
    :class:`Invalid` as soon as that is known (from a record or handshake header), so a peer cannot make the edge
    peek and wait forever. Never raises.
    """
    try:
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        return _parse(mv, max_size)
    except _Malformed as exc:
        return Invalid(str(exc))
    except (struct.error, IndexError, ValueError, TypeError, UnicodeError) as exc:  # pragma: no cover - defensive
        # Every check is explicit; reaching this is a parser bug, but the edge must still answer, not crash.
        return Invalid(f"malformed ClientHello (internal: {exc!r})")


def _parse(mv: memoryview, max_size: int) -> ClientHello | NeedMore:
    n = len(mv)
    if n == 0:
        return NEED_MORE
    if mv[0] != _RECORD_HANDSHAKE:
        raise _Malformed(_not_tls_reason(mv))
    parts: list[memoryview] = []  # handshake bytes from complete records, when the message spans several
    have = 0  # handshake bytes in ``parts``
    total = -1  # 4 + handshake body length, once the handshake header has been seen
    off = 0
    while True:
        if n - off < 5:
            _check_partial_record_header(mv[off:n])
            if off + 5 > max_size:
                raise _Malformed(f"ClientHello not complete within {max_size} bytes")
            return NEED_MORE
        ctype, major, minor, rlen = _RECORD_HEADER.unpack_from(mv, off)
        _check_record_header(ctype, major, minor, rlen)
        end = off + 5 + rlen
        if end > max_size:
            raise _Malformed(f"ClientHello records need {end} bytes or more, above the limit of {max_size}")
        chunk = mv[off + 5 : min(end, n)]
        if total < 0:
            head = (b"".join(parts) + bytes(chunk[:4]))[:4] if parts else bytes(chunk[:4])
            if head and head[0] != _HANDSHAKE_CLIENT_HELLO:
                raise _Malformed(f"handshake message type {head[0]} is not a ClientHello")
            if len(head) == 4:
                total = 4 + int.from_bytes(head[1:4], "big")
                if total > max_size:
                    raise _Malformed(f"ClientHello of {total} bytes is above the limit of {max_size}")
        if total >= 0 and have + rlen > total:
            raise _Malformed("handshake record carries data after the ClientHello")
        if end > n:
            return NEED_MORE
        if total == have + rlen:
            msg = chunk.tobytes() if not parts else b"".join((*parts, chunk))
            return _parse_hello(msg, end)
        parts.append(chunk)
        have += rlen
        off = end


def _not_tls_reason(mv: memoryview) -> str:
    """Why a buffer whose first byte is not a handshake record is refused, as precisely as the bytes allow."""
    first = mv[0]
    if first in _RECORD_TYPE_NAMES:
        return f"record type {first} is not a handshake ({_RECORD_TYPE_NAMES[first]})"
    head = bytes(mv[:16])
    for start in _HTTP_STARTS:
        k = min(len(head), len(start))
        if head[:k] == start[:k]:
            return "not TLS: looks like plain HTTP"
    if first & 0x80 and len(head) >= 3 and head[2] == 1:
        return "not TLS: SSLv2-format ClientHello is not supported"
    return f"not TLS: first byte 0x{first:02x} is not a TLS record type"


def _check_partial_record_header(head: memoryview) -> None:
    """Reject a record header as soon as its first bytes are wrong, so garbage is not waited on."""
    if len(head) >= 1 and head[0] != _RECORD_HANDSHAKE:
        first = head[0]
        name = _RECORD_TYPE_NAMES.get(first)
        raise _Malformed(f"record type {first} is not a handshake" + (f" ({name})" if name else ""))
    if len(head) >= 2 and head[1] != 3:
        raise _Malformed(f"record version major {head[1]} is not 3")
    if len(head) >= 3 and head[2] > 4:
        raise _Malformed(f"record version 0x03{head[2]:02x} is not a TLS version")
    if len(head) >= 4 and head[3] > MAX_RECORD_BODY >> 8:
        raise _Malformed(f"record length {head[3] << 8} or more is above {MAX_RECORD_BODY}")


def _check_record_header(ctype: int, major: int, minor: int, rlen: int) -> None:
    if ctype != _RECORD_HANDSHAKE:
        name = _RECORD_TYPE_NAMES.get(ctype)
        raise _Malformed(f"record type {ctype} is not a handshake" + (f" ({name})" if name else ""))
    if major != 3:
        raise _Malformed(f"record version major {major} is not 3")
    if minor > 4:
        raise _Malformed(f"record version 0x03{minor:02x} is not a TLS version")
    if rlen == 0:
        raise _Malformed("empty handshake record")  # RFC 8446 5.1: no zero-length handshake fragments
    if rlen > MAX_RECORD_BODY:
        raise _Malformed(f"record length {rlen} is above {MAX_RECORD_BODY}")


def _parse_hello(msg: bytes, length: int) -> ClientHello:
    """Parse a complete handshake message (header included) known to be a ClientHello."""
    e = len(msg)
    p = 4
    if e - p < 2 + 32 + 1:
        raise _Malformed("ClientHello too short for version, random and session id")
    (legacy_version,) = _U16.unpack_from(msg, p)
    p += 2 + 32
    sid_len = msg[p]
    p += 1
    if sid_len > 32:
        raise _Malformed(f"session id of {sid_len} bytes is longer than 32")
    p += sid_len
    if p + 2 > e:
        raise _Malformed("ClientHello ends before the cipher suites")
    (cs_len,) = _U16.unpack_from(msg, p)
    p += 2
    if cs_len == 0 or cs_len % 2:
        raise _Malformed(f"cipher suites length {cs_len} is not a positive even number")
    if p + cs_len > e:
        raise _Malformed(f"cipher suites length {cs_len} exceeds the {e - p} bytes left")
    cipher_suites = struct.unpack_from(f">{cs_len // 2}H", msg, p)
    p += cs_len
    if p >= e:
        raise _Malformed("ClientHello ends before the compression methods")
    cm_len = msg[p]
    p += 1
    if cm_len == 0 or p + cm_len > e:
        raise _Malformed(f"compression methods length {cm_len} is empty or exceeds the {e - p} bytes left")
    if 0 not in msg[p : p + cm_len]:
        raise _Malformed("compression methods lack the null method")
    p += cm_len

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    sig_algs: tuple[int, ...] = ()
    types: list[int] = []
    if p < e:  # a hello without extensions is legal before TLS 1.2 (and simply ends here)
        if e - p < 2:
            raise _Malformed("ClientHello ends inside the extensions length")
        (ext_total,) = _U16.unpack_from(msg, p)
        p += 2
        if ext_total != e - p:
            raise _Malformed(f"extensions length {ext_total} does not match the {e - p} bytes left")
        append = types.append
        while p < e:
            if e - p < 4:
                raise _Malformed("ClientHello ends inside an extension header")
            etype, elen = _EXT_HEADER.unpack_from(msg, p)
            p += 4
            if elen > e - p:
                raise _Malformed(f"extension {etype} length {elen} exceeds the {e - p} bytes left")
            append(etype)
            if etype in _PARSED_EXTENSIONS:  # one set lookup for the common, uninteresting extension
                stop = p + elen
                if etype == _EXT_SERVER_NAME:
                    server_name = _parse_server_name(msg, p, stop)
                elif etype == _EXT_ALPN:
                    alpn = _parse_alpn(msg, p, stop)
                elif etype == _EXT_SUPPORTED_VERSIONS:
                    versions = _parse_supported_versions(msg, p, stop)
                else:
                    sig_algs = _parse_u16_list(msg, p, stop, "signature_algorithms")
            p += elen
        seen = set(types)
        if len(seen) != len(types):
            duplicate = next(t for i, t in enumerate(types) if t in types[:i])
            raise _Malformed(f"duplicate extension {duplicate}")  # RFC 8446 4.2
        if _EXT_PRE_SHARED_KEY in seen and types[-1] != _EXT_PRE_SHARED_KEY:
            raise _Malformed("pre_shared_key extension is not the last one")  # RFC 8446 4.2.11
    return ClientHello(
        server_name=server_name,
        alpn=alpn,
        legacy_version=legacy_version,
        supported_versions=versions,
        cipher_suites=cipher_suites,
        extensions=tuple(types),
        signature_algorithms=sig_algs,
        length=length,
    )


def _parse_server_name(msg: bytes, p: int, stop: int) -> str | None:
    """RFC 6066 3: ``ServerName server_name_list<1..2^16-1>``; one ``host_name`` (type 0) at most."""
    if stop - p < 2:
        raise _Malformed("server_name extension too short for its list length")
    (list_len,) = _U16.unpack_from(msg, p)
    p += 2
    if list_len != stop - p or list_len == 0:
        raise _Malformed(f"server_name list length {list_len} does not match the {stop - p} bytes of the extension")
    host: str | None = None
    while p < stop:
        if stop - p < 3:
            raise _Malformed("server_name entry truncated")
        name_type = msg[p]
        (name_len,) = _U16.unpack_from(msg, p + 1)
        p += 3
        if name_len > stop - p:
            raise _Malformed(f"server name length {name_len} exceeds the {stop - p} bytes left")
        if name_type == 0:
            if host is not None:
                raise _Malformed("more than one host_name in server_name")
            host = _host_name(msg[p : p + name_len])
        # Other name types are undefined; RFC 6066 lets a server ignore them.
        p += name_len
    return host


def _host_name(raw: bytes) -> str:
    if not raw:
        raise _Malformed("empty SNI host name")
    if len(raw) > _MAX_HOST_NAME + (raw.endswith(b".")):
        raise _Malformed(f"SNI host name of {len(raw)} bytes is too long")
    if _HOST_NAME_RE.fullmatch(raw) is None:
        raise _Malformed(f"SNI host name {raw[:64]!r} is not a valid DNS name")
    return raw.rstrip(b".").decode("ascii").lower()


def _parse_alpn(msg: bytes, p: int, stop: int) -> tuple[str, ...]:
    """RFC 7301 3.1: ``ProtocolName protocol_name_list<2..2^16-1>``, each name ``<1..2^8-1>``.

    Names are opaque bytes; they are decoded as latin-1 so any byte string round-trips (``name.encode("latin-1")``)
    and the usual ASCII ones (``h2``, ``http/1.1``, ``acme-tls/1``) read naturally.
    """
    if stop - p < 2:
        raise _Malformed("ALPN extension too short for its list length")
    (list_len,) = _U16.unpack_from(msg, p)
    p += 2
    if list_len != stop - p or list_len < 2:
        raise _Malformed(f"ALPN list length {list_len} does not match the {stop - p} bytes of the extension")
    names: list[str] = []
    while p < stop:
        name_len = msg[p]
        p += 1
        if name_len == 0 or name_len > stop - p:
            raise _Malformed(f"ALPN protocol name length {name_len} is empty or exceeds the {stop - p} bytes left")
        names.append(msg[p : p + name_len].decode("latin-1"))
        p += name_len
    return tuple(names)


def _parse_supported_versions(msg: bytes, p: int, stop: int) -> tuple[int, ...]:
    """RFC 8446 4.2.1, client form: ``ProtocolVersion versions<2..254>``; GREASE values removed."""
    if stop - p < 1:
        raise _Malformed("supported_versions extension is empty")
    list_len = msg[p]
    p += 1
    if list_len != stop - p or list_len < 2 or list_len % 2:
        raise _Malformed(f"supported_versions list length {list_len} is odd or does not match the extension")
    return tuple(v for v in struct.unpack_from(f">{list_len // 2}H", msg, p) if not is_grease(v))


def _parse_u16_list(msg: bytes, p: int, stop: int, what: str) -> tuple[int, ...]:
    """A ``uint16 list<2..2^16-2>`` as in signature_algorithms (RFC 8446 4.2.3)."""
    if stop - p < 2:
        raise _Malformed(f"{what} extension too short for its list length")
    (list_len,) = _U16.unpack_from(msg, p)
    p += 2
    if list_len != stop - p or list_len < 2 or list_len % 2:
        raise _Malformed(f"{what} list length {list_len} is odd or does not match the extension")
    return struct.unpack_from(f">{list_len // 2}H", msg, p)
