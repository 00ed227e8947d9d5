"""A keyless site's public half: the chain the edge sends, the id the key server knows the key by, and the TLS 1.3
signature schemes that key can make. Built once per site (in the control process first, so an unusable chain is
reported at start)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from aioquic.tls import HandshakeType, SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

_ECDSA_ALGORITHMS = {
    "secp256r1": (SignatureAlgorithm.ECDSA_SECP256R1_SHA256,),
    "secp384r1": (SignatureAlgorithm.ECDSA_SECP384R1_SHA384,),
}
# PSS with rsaEncryption keys only: TLS 1.3 forbids PKCS#1 v1.5 in CertificateVerify (RFC 8446 4.4.3).
_RSA_ALGORITHMS = (
    SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA384,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA512,
)
def signature_algorithms_for(public_key: CertificatePublicKeyTypes) -> tuple[int, ...]:
    """The TLS 1.3 SignatureSchemes a certificate's key can make, in preference order; ValueError if none."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithms = _ECDSA_ALGORITHMS.get(public_key.curve.name)
        if algorithms is None:
            raise ValueError(f"ECDSA curve {public_key.curve.name} is not supported: use P-256 or P-384")
        return algorithms
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise ValueError(f"RSA key of {public_key.key_size} bits is too small: use 2048 bits or more")
        return _RSA_ALGORITHMS
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return (SignatureAlgorithm.ED25519,)
    raise ValueError(
        f"{type(public_key).__name__} keys are not supported: use ECDSA P-256/P-384, RSA or Ed25519"
    )


def _certificate_message(chain_der: tuple[bytes, ...]) -> bytes:
    """The Certificate handshake message (RFC 8446 4.4.2): the same for every connection, so built once."""
    entries = b"".join(len(der).to_bytes(3, "big") + der + b"\x00\x00" for der in chain_der)
    body = b"\x00" + len(entries).to_bytes(3, "big") + entries
    return bytes((HandshakeType.CERTIFICATE,)) + len(body).to_bytes(3, "big") + body


@dataclass(frozen=True, slots=True)
class KeylessIdentity:
    """A keyless site's public half: the chain we send, the id the key server knows the key by, what it can sign."""

    chain_der: tuple[bytes, ...]  # leaf first, DER
    key_id: bytes  # SHA-256 of the leaf's SubjectPublicKeyInfo DER (what the key server uses)
    signature_algorithms: tuple[int, ...]  # TLS SignatureSchemes this key can make in TLS 1.3, preference order
    public_key: CertificatePublicKeyTypes = field(init=False, repr=False, compare=False)
    certificate_message: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chain_der:
            raise ValueError("keyless identity: the certificate chain is empty")
        try:
            leaf = x509.load_der_x509_certificate(self.chain_der[0])
            public_key = leaf.public_key()
        except ValueError as exc:
            raise ValueError(f"keyless identity: the leaf certificate cannot be read: {exc}") from exc
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if self.key_id != hashlib.sha256(spki).digest():
            raise ValueError("keyless identity: key_id is not the SHA-256 of the leaf's SubjectPublicKeyInfo")
        possible = signature_algorithms_for(public_key)
        if not self.signature_algorithms or not set(self.signature_algorithms) <= set(possible):
            raise ValueError(
                f"keyless identity: this key signs with {[hex(a) for a in possible]} in TLS 1.3, "
                f"not {[hex(a) for a in self.signature_algorithms]}"
            )
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "certificate_message", _certificate_message(self.chain_der))

    @classmethod
    def from_pem_chain(cls, pem: bytes) -> KeylessIdentity:
        """The identity of a PEM chain (leaf first); ValueError with the reason when it cannot be served keylessly."""
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise ValueError(f"no PEM certificate could be read: {exc}") from exc
        public_key = certificates[0].public_key()
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(
            chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in certificates),
            key_id=hashlib.sha256(spki).digest(),
            signature_algorithms=signature_algorithms_for(public_key),
        )
