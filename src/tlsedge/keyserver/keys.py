"""The key server's signing keys: loaded from mode-0600 files, found by key id, signing only TLS 1.3 schemes.

A key id is the SHA-256 of the key's SubjectPublicKeyInfo DER (`tlsedge.tls.keyless.wire.key_id`): the edge computes
the same value from the site's certificate, so no name or serial number has to be kept in step on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tlsedge.config.errors import ConfigError, Problem
from tlsedge.keyserver.config import KeyserverConfig
from tlsedge.pki.local_ca import private_file_problem
from tlsedge.tls.keyless.wire import SignatureScheme, key_id

MIN_RSA_BITS = 2048

_HASHES = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: hashes.SHA256(),
    SignatureScheme.ECDSA_SECP384R1_SHA384: hashes.SHA384(),
    SignatureScheme.RSA_PSS_RSAE_SHA256: hashes.SHA256(),
    SignatureScheme.RSA_PSS_RSAE_SHA384: hashes.SHA384(),
    SignatureScheme.RSA_PSS_RSAE_SHA512: hashes.SHA512(),
}
# RFC 8446 section 4.2.3: RSASSA-PSS with MGF1 on the same hash and a salt as long as the hash.
_PSS = {
    scheme: padding.PSS(mgf=padding.MGF1(_HASHES[scheme]), salt_length=_HASHES[scheme].digest_size)
    for scheme in (
        SignatureScheme.RSA_PSS_RSAE_SHA256,
        SignatureScheme.RSA_PSS_RSAE_SHA384,
        SignatureScheme.RSA_PSS_RSAE_SHA512,
    )
}
_ECDSA = {scheme: ec.ECDSA(_HASHES[scheme]) for scheme in (0x0403, 0x0503)}


@dataclass(frozen=True, slots=True, eq=False)
class SigningKey:
    """One configured key. ``sign`` assumes the policy already accepted the algorithm for this key's kind."""

    key_id: bytes
    kind: str  # "p256", "p384", "rsa", "ed25519": the keys of `policy.ALGORITHMS`
    names: frozenset[str]
    edges: frozenset[str]
    field: str  # "key[0]"
    private: PrivateKeyTypes = field(repr=False)

    def sign(self, algorithm: int, payload: bytes) -> bytes:
        """The TLS 1.3 signature: DER ECDSA-Sig-Value, RSASSA-PSS, or Ed25519 (blocking: call it off the loop)."""
        key = self.private
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(payload, _PSS[algorithm], _HASHES[algorithm])
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(payload, _ECDSA[algorithm])
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(payload)


def load_private_key(path: Path) -> tuple[str, PrivateKeyTypes]:
    """(kind, key) from a PEM file of mode 0600; ValueError names the file and the reason."""
    problem = private_file_problem(path)
    if problem is not None:
        raise ValueError(problem)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise ValueError(f"{path} is encrypted; the key server needs an unencrypted PEM key (kept mode 0600)") from None
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a PEM private key ({exc}); give a PKCS#8 or traditional PEM key") from None
    return _kind(path, key), key


def _kind(path: Path, key: PrivateKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = key.curve.name
        if curve == "secp256r1":
            return "p256"
        if curve == "secp384r1":
            return "p384"
        raise ValueError(f"{path}: ECDSA curve {curve} is not supported; use P-256 or P-384")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{path}: RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits")
        return "rsa"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ValueError(f"{path}: {type(key).__name__} keys are not supported; use ECDSA P-256/P-384, RSA or Ed25519")


def load_keyring(config: KeyserverConfig) -> dict[bytes, SigningKey]:
    """Every ``[[key]]`` loaded and indexed by key id; raises `ConfigError` listing every key that cannot be used."""
    problems: list[Problem] = []
    keyring: dict[bytes, SigningKey] = {}
    for entry in config.keys:
        try:
            kind, private = load_private_key(entry.file)
        except ValueError as exc:
            problems.append(Problem(config.path, f"{entry.field}.file", str(exc)))
            continue
        identifier = key_id(private.public_key())
        other = keyring.get(identifier)
        if other is not None:
            problems.append(Problem(config.path, f"{entry.field}.file", f"the same key as {other.field}; merge their "
                                    "names and edges into one [[key]]"))
            continue
        keyring[identifier] = SigningKey(identifier, kind, entry.names, entry.edges, entry.field, private)
    if problems:
        raise ConfigError(problems)
    return keyring
