"""The handshake messages the keyless server sends, and its key exchange.

Our messages are few and fixed in shape, so they are assembled directly: aioquic's push_* encoders spend ~20 us
each on context managers, a tenth of a handshake's CPU. The tests read them back with aioquic's parsers.
"""

from __future__ import annotations

import struct

from aioquic.tls import TLS_VERSION_1_3, AlertDescription, ExtensionType, Group, HandshakeType
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from tlsedge.tls.keyless.records import FatalAlert

GROUP_NAMES = {Group.X25519: "x25519", Group.SECP256R1: "secp256r1", Group.SECP384R1: "secp384r1"}
_CURVES = {Group.SECP256R1: (ec.SECP256R1(), 65), Group.SECP384R1: (ec.SECP384R1(), 97)}


def handshake_message(message_type: int, body: bytes) -> bytes:
    return bytes((message_type,)) + len(body).to_bytes(3, "big") + body


def extension(extension_type: int, body: bytes) -> bytes:
    return extension_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


_SUPPORTED_VERSIONS_13 = extension(ExtensionType.SUPPORTED_VERSIONS, TLS_VERSION_1_3.to_bytes(2, "big"))


def encode_server_hello(random: bytes, session_id: bytes, suite: int, extensions: bytes) -> bytes:
    """ServerHello or HelloRetryRequest (RFC 8446 4.1.3); ``extensions`` follow supported_versions."""
    extensions = _SUPPORTED_VERSIONS_13 + extensions
    body = b"".join((
        b"\x03\x03",
        random,
        bytes((len(session_id),)),
        session_id,
        suite.to_bytes(2, "big"),
        b"\x00",
        len(extensions).to_bytes(2, "big"),
        extensions,
    ))
    return handshake_message(HandshakeType.SERVER_HELLO, body)


def encode_encrypted_extensions(alpn: str | None, acknowledge_sni: bool) -> bytes:
    """EncryptedExtensions (4.3.1): the chosen ALPN protocol; an empty server_name when the SNI was used (RFC 6066)."""
    extensions = b""
    if alpn is not None:
        name = alpn.encode("ascii")
        extensions += extension(ExtensionType.ALPN, (len(name) + 1).to_bytes(2, "big") + bytes((len(name),)) + name)
    if acknowledge_sni:
        extensions += extension(ExtensionType.SERVER_NAME, b"")
    return handshake_message(HandshakeType.ENCRYPTED_EXTENSIONS, len(extensions).to_bytes(2, "big") + extensions)


def encode_certificate_verify(algorithm: int, signature: bytes) -> bytes:
    body = algorithm.to_bytes(2, "big") + len(signature).to_bytes(2, "big") + signature
    return handshake_message(HandshakeType.CERTIFICATE_VERIFY, body)


def encode_new_session_ticket(lifetime: int, age_add: int, nonce: bytes, ticket: bytes) -> bytes:
    """NewSessionTicket (4.6.1) with no extensions: no early_data, so no 0-RTT."""
    body = b"".join((
        struct.pack("!IIB", lifetime, age_add, len(nonce)),
        nonce,
        len(ticket).to_bytes(2, "big"),
        ticket,
        b"\x00\x00",
    ))
    return handshake_message(HandshakeType.NEW_SESSION_TICKET, body)


def extension_types(raw: bytes) -> list[int]:
    """The extension types of a ClientHello aioquic has parsed (so the framing is known to be sound), in order."""
    pos = 4 + 2 + 32
    pos += 1 + raw[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(raw[pos : pos + 2], "big")  # cipher_suites
    pos += 1 + raw[pos]  # legacy_compression_methods
    end = pos + 2 + int.from_bytes(raw[pos : pos + 2], "big")
    pos += 2
    types = []
    while pos + 4 <= end:
        types.append(int.from_bytes(raw[pos : pos + 2], "big"))
        pos += 4 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
    return types


def key_exchange(group: Group, share: bytes) -> tuple[bytes, bytes]:
    """Our key share and the shared secret for the client's ``share`` (RFC 8446 4.2.8, 7.4)."""
    try:
        if group == Group.X25519:
            if len(share) != 32:
                raise ValueError("an X25519 share is 32 bytes")
            x_private = x25519.X25519PrivateKey.generate()
            shared = x_private.exchange(x25519.X25519PublicKey.from_public_bytes(share))
            return x_private.public_key().public_bytes_raw(), shared
        curve, length = _CURVES[group]
        if len(share) != length or share[0] != 4:
            raise ValueError("an ECDHE share is an uncompressed point")
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, share)
        ec_private = ec.generate_private_key(curve)
        ours = ec_private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return ours, ec_private.exchange(ec.ECDH(), peer)
    except ValueError as exc:
        raise FatalAlert(AlertDescription.illegal_parameter, f"invalid {GROUP_NAMES[group]} key share: {exc}") from exc
