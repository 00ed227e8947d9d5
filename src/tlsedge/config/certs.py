"""Reading certificate and key files for validation, so a broken pair is reported by `tlsedge check`, not at handshake.

Each function raises ``ValueError`` with a reason for the operator; the loader adds the file, site and field.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

# Curves that TLS clients accept for ECDSA certificates (RFC 8446 signature schemes).
_TLS_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_MIN_RSA_BITS = 2048  # OpenSSL's default security level refuses smaller keys at load time


def read_bytes(path: Path) -> bytes:
    """Read a file, turning OS errors into a reason that names the path."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}; check the path "
            "(relative paths are relative to the configuration file's directory) and its permissions"
        ) from None


def read_certificates(path: Path) -> list[x509.Certificate]:
    """All PEM certificates of a file, in file order (a chain: leaf first, then intermediates)."""
    data = read_bytes(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        holds_key = b"PRIVATE KEY-----" in data
        what = " (it holds a private key: are cert and key swapped?)" if holds_key else ""
        raise ValueError(
            f"no PEM certificate found in {str(path)!r}{what}; the file must hold the certificate chain in PEM "
            "('-----BEGIN CERTIFICATE-----'), leaf first"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(
            f"cannot parse the certificates in {str(path)!r} ({exc}); re-export the chain as PEM"
        ) from None


def read_private_key(path: Path) -> PrivateKeyTypes:
    """An unencrypted PEM private key; encrypted keys cannot be used by unattended workers."""
    data = read_bytes(path)
    if b"PRIVATE KEY-----" not in data:
        holds_cert = b"-----BEGIN CERTIFICATE-----" in data
        what = " (it holds a certificate: are cert and key swapped?)" if holds_cert else ""
        raise ValueError(f"no PEM private key found in {str(path)!r}{what}; give the certificate's PEM private key")
    if b"ENCRYPTED" in data:
        raise _encrypted(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _encrypted(path) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"cannot parse the private key in {str(path)!r} ({exc}); give a PEM private key") from None


def _encrypted(path: Path) -> ValueError:
    return ValueError(
        f"the private key in {str(path)!r} is encrypted; tlsedge needs an unencrypted key (protect it with mode 0600): "
        f"openssl pkey -in {path} -out {path}.plain"
    )


def key_type(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """The key type ("EC", "RSA", "Ed25519"...): a site holds one certificate per type; clients pick by type."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return "DSA"
    return type(key).__name__


def key_unfit_reason(key: PrivateKeyTypes) -> str | None:
    """Why TLS clients or OpenSSL would refuse this key, or None when it is fine to serve."""
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _MIN_RSA_BITS:
        return (
            f"RSA key of {key.key_size} bits is too small (OpenSSL refuses it); use 2048 bits or more, or ECDSA P-256"
        )
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _TLS_CURVES:
        return f"EC curve {key.curve.name} is not accepted by TLS clients; use P-256 (secp256r1) or P-384"
    if isinstance(key, dsa.DSAPrivateKey):
        return "DSA keys cannot be used with TLS 1.2/1.3 as configured; use ECDSA P-256 or RSA 2048+"
    return None


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Compare public keys by their SubjectPublicKeyInfo encoding (works for every key type)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def dns_names(cert: x509.Certificate) -> list[str] | None:
    """The certificate's subjectAltName DNS names, or None when it has no subjectAltName extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def allows_client_auth(cert: x509.Certificate) -> bool:
    """Whether a certificate may authenticate a TLS client: no extended key usage, or one that includes clientAuth.

    Origins that verify client certificates (nginx ``ssl_verify_client``, OpenSSL) refuse one whose extended key
    usage lists only serverAuth, a common result of reusing a server certificate as the edge's client certificate.
    """
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
