"""The HAProxy PROXY protocol, version 2 (binary): the header that tells an origin who the client really is.

Why: in pass-through mode the edge splices TCP bytes it cannot read, so it cannot add ``X-Forwarded-For``; the origin
would see every connection coming from the edge. A PROXY v2 header, written once before the client's first byte,
carries the client's address and port (and optionally the SNI and a connection id as TLVs) in a form nginx
(``listen ... proxy_protocol``), HAProxy (``accept-proxy``), Envoy and most TLS servers' front ends read.

Specification: ``doc/proxy-protocol.txt`` in github.com/haproxy/haproxy, section 2.2. Summary of the wire format::

    12 bytes  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    1 byte    version (high nibble, always 2) and command (low nibble: 0 LOCAL, 1 PROXY)
    1 byte    family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX), transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
    2 bytes   length of what follows, big-endian
    addresses source, destination, source port, destination port (12 bytes for IPv4, 36 for IPv6, 216 for UNIX)
    TLVs      type (1 byte), length (2 bytes), value, until the announced length is used up

Both directions are sans-IO: :func:`proxy_v2_header` and :func:`proxy_v2_local` return bytes to write first on the
origin connection; :func:`parse_proxy_v2` reads a header at the start of a buffer (for tests' origins, and for a
future edge placed behind a load balancer that speaks it). The parser is bounded by ``max_length``, checks every
length against the bytes it covers, and never raises.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tlsedge.tls.clienthello import NEED_MORE, NeedMore

__all__ = [
    "COMMAND_LOCAL",
    "COMMAND_PROXY",
    "DEFAULT_MAX_LENGTH",
    "FAMILY_INET",
    "FAMILY_INET6",
    "FAMILY_UNIX",
    "FAMILY_UNSPEC",
    "MAX_AUTHORITY",
    "MAX_UNIQUE_ID",
    "NEED_MORE",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "PROTOCOL_DGRAM",
    "PROTOCOL_STREAM",
    "PROTOCOL_UNSPEC",
    "SIGNATURE",
    "NeedMore",
    "ProxyError",
    "ProxyHeader",
    "parse_proxy_v2",
    "proxy_v2_header",
    "proxy_v2_local",
]

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

COMMAND_LOCAL: Final = 0x0
COMMAND_PROXY: Final = 0x1

FAMILY_UNSPEC: Final = 0x0
FAMILY_INET: Final = 0x1
FAMILY_INET6: Final = 0x2
FAMILY_UNIX: Final = 0x3

PROTOCOL_UNSPEC: Final = 0x0
PROTOCOL_STREAM: Final = 0x1
PROTOCOL_DGRAM: Final = 0x2

#: Registered TLV types (section 2.2). The edge sends AUTHORITY (the SNI) and UNIQUE_ID (a connection id).
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

#: Largest values receivers accept: UNIQUE_ID is "up to 128 bytes" (2.2.5); HAProxy refuses an AUTHORITY over 255.
MAX_UNIQUE_ID: Final = 128
MAX_AUTHORITY: Final = 255

#: Default cap on a whole header when parsing; nginx's limit. A header the edge sends is a few dozen bytes.
DEFAULT_MAX_LENGTH: Final = 4096

_HEADER_SIZE: Final = 16
_VERSION_2: Final = 0x20
_FIXED: Final = struct.Struct(">12sBBH")
_TLV_HEADER: Final = struct.Struct(">BH")
_PORTS: Final = struct.Struct(">HH")
_ADDRESS_SIZES: Final = {FAMILY_INET: 12, FAMILY_INET6: 36, FAMILY_UNIX: 216}
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
_LOCAL_HEADER: Final = _FIXED.pack(SIGNATURE, _VERSION_2 | COMMAND_LOCAL, 0, 0)
_TLV_LIMITS: Final = {
    PP2_TYPE_UNIQUE_ID: ("UNIQUE_ID", MAX_UNIQUE_ID),
    PP2_TYPE_AUTHORITY: ("AUTHORITY", MAX_AUTHORITY),
}

#: ``(host, port)``, or the ``(host, port, flowinfo, scope_id)`` an IPv6 socket reports.
Address = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY v2 header.

    ``source`` and ``destination`` are ``(address, port)`` for a PROXY command over IPv4 or IPv6, and ``None`` for
    LOCAL (the receiver keeps the real endpoints) or for families that carry no IP address (UNSPEC, UNIX).
    ``tlvs`` are ``(type, value)`` in wire order, values unchecked beyond their length (a CRC32C TLV is returned, not
    verified). ``length`` is the header's size: the connection's own bytes start at ``data[length:]``.
    """

    command: int
    family: int
    protocol: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...]
    length: int

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or ``None``."""
        for t, value in self.tlvs:
            if t == kind:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ProxyError:
    """The bytes are not an acceptable PROXY v2 header; ``reason`` is for the log line. Close the connection."""

    reason: str


def proxy_v2_local() -> bytes:
    """The header of a LOCAL command: a connection of the edge's own (a health check), not relayed for a client."""
    return _LOCAL_HEADER


def proxy_v2_header(client: Address, server: Address, *, tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """The header of a PROXY command over TCP for a client connected to ``server`` (the edge's address it reached).

    Both addresses are the socket's view (``getpeername()``/``getsockname()``). IPv4-mapped IPv6 addresses, as a
    dual-stack listener reports IPv4 clients, are sent as IPv4 when both ends are IPv4; when one end is IPv4 and the
    other IPv6, both go as IPv6 (the IPv4 one mapped), since one header has one family.
    ``tlvs`` are ``(type, value)`` pairs appended in order, e.g. ``(PP2_TYPE_AUTHORITY, sni.encode())``.
    The specification asks senders to send the header "at once": never split it across writes (writing it with the
    first relayed bytes, the replayed ClientHello, also saves a segment).

    Raises :class:`ValueError` for an address that is not an IP literal, a port outside 0..65535, a TLV type outside
    0..255 or a value too long: these come from the edge's own sockets and configuration, not from the network.
    """
    src, src_port = _packed(client)
    dst, dst_port = _packed(server)
    if len(src) != len(dst):
        src, dst = _as_v6(src), _as_v6(dst)
    family = FAMILY_INET if len(src) == 4 else FAMILY_INET6
    parts = [b"", src, dst, _PORTS.pack(src_port, dst_port)]
    for kind, value in tlvs:
        if not 0 <= kind <= 255:
            raise ValueError(f"PROXY v2 TLV type {kind} is not a byte")
        limit = _TLV_LIMITS.get(kind)
        if limit is not None and len(value) > limit[1]:
            raise ValueError(f"PROXY v2 {limit[0]} TLV of {len(value)} bytes is longer than {limit[1]}")
        parts.append(_TLV_HEADER.pack(kind, len(value)))
        parts.append(value)
    body_length = sum(map(len, parts))
    if body_length > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {body_length} bytes does not fit its 16-bit length")
    parts[0] = _FIXED.pack(SIGNATURE, _VERSION_2 | COMMAND_PROXY, family << 4 | PROTOCOL_STREAM, body_length)
    return b"".join(parts)


def parse_proxy_v2(
    data: bytes | bytearray | memoryview, max_length: int = DEFAULT_MAX_LENGTH
) -> ProxyHeader | NeedMore | ProxyError:
    """Parse the PROXY v2 header at the start of ``data`` (everything received so far on the connection).

    Returns :data:`NEED_MORE` while ``data`` is a valid prefix of a header (read more, with a timeout, and call again
    with the whole buffer), :class:`ProxyError` as soon as the bytes cannot be a header of at most ``max_length``
    bytes, else the :class:`ProxyHeader`. Never raises.
    """
    try:
        return _parse(memoryview(data).cast("B"), max_length)
    except (struct.error, ValueError, TypeError, OSError) as exc:  # pragma: no cover - defensive
        # Every length is checked before it is used; reaching this is a bug, but the caller must still get an answer.
        return ProxyError(f"malformed PROXY v2 header (internal: {exc!r})")


def _parse(mv: memoryview, max_length: int) -> ProxyHeader | NeedMore | ProxyError:
    n = len(mv)
    head = bytes(mv[:_HEADER_SIZE])
    if head[:12] != SIGNATURE[: min(n, 12)]:
        if head[:5] == b"PROXY"[: min(n, 5)]:
            return ProxyError("PROXY protocol version 1 (text) header; only version 2 is accepted")
        return ProxyError("not a PROXY v2 header: the 12-byte signature does not match")
    if n > 12 and head[12] >> 4 != 2:
        return ProxyError(f"PROXY protocol version {head[12] >> 4} is not 2")
    if n > 12 and head[12] & 0x0F not in (COMMAND_LOCAL, COMMAND_PROXY):
        return ProxyError(f"PROXY v2 command {head[12] & 0x0F} is neither LOCAL (0) nor PROXY (1)")
    if n > 13:
        family, protocol = head[13] >> 4, head[13] & 0x0F
        if family > FAMILY_UNIX:
            return ProxyError(f"PROXY v2 address family {family} is unknown")
        if protocol > PROTOCOL_DGRAM:
            return ProxyError(f"PROXY v2 transport protocol {protocol} is unknown")
    if n < _HEADER_SIZE:
        return NEED_MORE
    _, ver_cmd, fam, body_length = _FIXED.unpack(head)
    total = _HEADER_SIZE + body_length
    if total > max_length:
        return ProxyError(f"PROXY v2 header of {total} bytes is above the limit of {max_length}")
    if n < total:
        return NEED_MORE
    command, family, protocol = ver_cmd & 0x0F, fam >> 4, fam & 0x0F
    if command == COMMAND_LOCAL:
        # "The receiver must use the real connection endpoints and discard the protocol block including the family."
        return ProxyHeader(command, family, protocol, None, None, (), total)

    source = destination = None
    tlv_start = total  # UNSPEC family or transport: the block's layout is unknown; skip it whole
    if family != FAMILY_UNSPEC and protocol != PROTOCOL_UNSPEC:
        address_size = _ADDRESS_SIZES[family]
        if body_length < address_size:
            return ProxyError(f"PROXY v2 length {body_length} is shorter than the {address_size} address bytes")
        tlv_start = _HEADER_SIZE + address_size
        if family != FAMILY_UNIX:
            size, af = (4, socket.AF_INET) if family == FAMILY_INET else (16, socket.AF_INET6)
            p = _HEADER_SIZE
            src_port, dst_port = _PORTS.unpack_from(mv, p + 2 * size)
            source = (socket.inet_ntop(af, mv[p : p + size]), src_port)
            destination = (socket.inet_ntop(af, mv[p + size : p + 2 * size]), dst_port)
    tlvs = _parse_tlvs(mv, tlv_start, total)
    if isinstance(tlvs, ProxyError):
        return tlvs
    return ProxyHeader(command, family, protocol, source, destination, tlvs, total)


def _parse_tlvs(mv: memoryview, p: int, end: int) -> tuple[tuple[int, bytes], ...] | ProxyError:
    tlvs: list[tuple[int, bytes]] = []
    while p < end:
        if end - p < 3:
            return ProxyError(f"PROXY v2 TLV header truncated: {end - p} bytes left of 3")
        kind, length = _TLV_HEADER.unpack_from(mv, p)
        p += 3
        if length > end - p:
            return ProxyError(f"PROXY v2 TLV type 0x{kind:02x} of {length} bytes exceeds the {end - p} bytes left")
        limit = _TLV_LIMITS.get(kind)
        if limit is not None and length > limit[1]:
            return ProxyError(f"PROXY v2 {limit[0]} TLV of {length} bytes is longer than {limit[1]}")
        tlvs.append((kind, bytes(mv[p : p + length])))
        p += length
    return tuple(tlvs)


def _packed(address: Address) -> tuple[bytes, int]:
    """An IP literal and port as (4 or 16 packed bytes, port); an IPv4-mapped IPv6 address comes out as IPv4."""
    host, port = address[0], address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is outside 0..65535")
    try:
        return socket.inet_pton(socket.AF_INET, host), port
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])  # a zone id is local to the edge
    except OSError:
        raise ValueError(f"{host!r} is not an IPv4 or IPv6 address") from None
    return (packed[12:] if packed[:12] == _V4_MAPPED_PREFIX else packed), port


def _as_v6(packed: bytes) -> bytes:
    return _V4_MAPPED_PREFIX + packed if len(packed) == 4 else packed
