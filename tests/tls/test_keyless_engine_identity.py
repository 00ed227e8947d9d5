"""KeylessIdentity: what a certificate's public key can sign in TLS 1.3, and clear refusals of what it cannot."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from keyless_engine_support import leaf_pem, new_key

from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless.identity import KeylessIdentity


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("keyless identity test CA")


@pytest.mark.parametrize(
    ("kind", "algorithms"),
    [("p256", (0x0403,)), ("p384", (0x0503,)), ("rsa", (0x0804, 0x0805, 0x0806)), ("ed25519", (0x0807,))],
)
def test_from_pem_chain(ca: LocalCA, kind: str, algorithms: tuple[int, ...]) -> None:
    key = new_key(kind)
    identity = KeylessIdentity.from_pem_chain(leaf_pem(ca, key) + ca.cert_pem)
    assert identity.signature_algorithms == algorithms
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert identity.key_id == hashlib.sha256(spki).digest()
    assert identity.chain_der[1] == ca.cert.public_bytes(serialization.Encoding.DER)
    message = identity.certificate_message
    assert message[0] == 11 and int.from_bytes(message[1:4], "big") == len(message) - 4
    assert identity.chain_der[0] in message and identity.chain_der[1] in message


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (ec.generate_private_key(ec.SECP521R1()), "secp521r1 is not supported: use P-256 or P-384"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits is too small"),
        (ed448.Ed448PrivateKey.generate(), "Ed448PublicKey keys are not supported"),
    ],
)
def test_unsupported_keys_are_refused_with_the_reason(ca: LocalCA, key, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        KeylessIdentity.from_pem_chain(leaf_pem(ca, key))


def test_not_pem_is_refused(ca: LocalCA) -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        KeylessIdentity.from_pem_chain(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_direct_construction_is_checked(ca: LocalCA) -> None:
    good = KeylessIdentity.from_pem_chain(leaf_pem(ca, new_key("rsa")))
    with pytest.raises(ValueError, match="SubjectPublicKeyInfo"):
        KeylessIdentity(good.chain_der, bytes(32), good.signature_algorithms)
    with pytest.raises(ValueError, match="signs with"):
        KeylessIdentity(good.chain_der, good.key_id, (0x0401,))  # PKCS#1 v1.5: not in TLS 1.3 CertificateVerify
    with pytest.raises(ValueError, match="empty"):
        KeylessIdentity((), good.key_id, good.signature_algorithms)
    assert KeylessIdentity(good.chain_der, good.key_id, (0x0806,)).signature_algorithms == (0x0806,)
