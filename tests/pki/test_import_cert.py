"""prepare_import: every way an owner's certificate can be unfit gets its own error; good chains come out ordered."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID

from tlsedge.pki.import_cert import (
    BadSignatureError,
    CaConstraintError,
    CertImportError,
    ChainOrderError,
    EncryptedKeyError,
    GarbageInputError,
    KeyMismatchError,
    MissingIntermediateError,
    NameMismatchError,
    ServerUsageError,
    UnsupportedKeyError,
    ValidityError,
    WrongPassphraseError,
    prepare_import,
)
from tlsedge.pki.local_ca import IssuedCert, LocalCA

HOSTS = ["blog.example", "www.blog.example"]


def make_root(name: str = "Import Test Root") -> LocalCA:
    """A root that may issue intermediates (LocalCA.create makes pathlen:0 roots, which may not)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return LocalCA(cert, key)


def make_intermediate(
    parent: LocalCA,
    name: str = "Test Intermediate",
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_after: datetime | None = None,
) -> LocalCA:
    """A CA certificate signed by ``parent``; as a LocalCA it issues leaves whose issuer is this intermediate."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(parent.key, hashes.SHA256())
    )
    return LocalCA(cert, key)


def pem(*certs: x509.Certificate | LocalCA | IssuedCert) -> bytes:
    out = []
    for cert in certs:
        if isinstance(cert, IssuedCert):
            out.append(cert.cert_pem)
        else:
            c = cert.cert if isinstance(cert, LocalCA) else cert
            out.append(c.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def key_pem(key, encryption=None, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())


@pytest.fixture(scope="module")
def root() -> LocalCA:
    return make_root()


@pytest.fixture(scope="module")
def inter(root: LocalCA) -> LocalCA:
    return make_intermediate(root)


@pytest.fixture(scope="module")
def leaf(inter: LocalCA) -> IssuedCert:
    return inter.issue(HOSTS)


def served(result) -> list[str]:
    return [c.subject.rfc4514_string() for c in result.chain]


# --- good chains --------------------------------------------------------------------------------------------------


def test_chain_in_wrong_order_is_reordered_and_verifies_with_openssl(root, inter, leaf, tmp_path: Path):
    result = prepare_import(pem(inter, leaf), leaf.key_pem, HOSTS, trusted_roots=[root.cert])
    assert served(result) == ["CN=blog.example", "CN=Test Intermediate"]
    assert result.chain_pem == pem(leaf, inter)
    assert result.warnings == ()
    # the served chain is what a client needs: openssl builds the path from it and the root alone
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "chain.pem").write_bytes(result.chain_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "chain.pem",
         tmp_path / "leaf.pem"], capture_output=True, text=True, timeout=10,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_root_in_file_is_dropped_from_served_chain(root, inter, leaf):
    result = prepare_import(pem(root, leaf, inter), leaf.key_pem, HOSTS, trusted_roots=[root.cert])
    assert served(result) == ["CN=blog.example", "CN=Test Intermediate"]
    assert b"Import Test Root" not in result.chain_pem and result.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert result.warnings == ()


def test_untrusted_root_in_file_completes_the_chain_with_a_warning(root, inter, leaf):
    result = prepare_import(pem(leaf, inter, root), leaf.key_pem, HOSTS)
    assert served(result) == ["CN=blog.example", "CN=Test Intermediate"]
    assert len(result.warnings) == 1 and "CN=Import Test Root" in result.warnings[0]
    assert "not a trusted root" in result.warnings[0]


def test_leaf_issued_directly_by_trusted_root_is_complete(root):
    direct = root.issue(HOSTS)
    result = prepare_import(direct.cert_pem, direct.key_pem, HOSTS, trusted_roots=[root.cert])
    assert served(result) == ["CN=blog.example"] and result.warnings == ()


def test_certificate_pasted_twice_is_served_once(root, inter, leaf):
    result = prepare_import(pem(leaf, inter, leaf, inter), leaf.key_pem, HOSTS, trusted_roots=[root.cert])
    assert result.chain_pem == pem(leaf, inter)


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_rsa_and_ecdsa_keys_come_out_as_plain_pkcs8(root, inter, key_type):
    issued = inter.issue(HOSTS, key_type=key_type)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    traditional = key_pem(key, fmt=serialization.PrivateFormat.TraditionalOpenSSL)  # "RSA/EC PRIVATE KEY"
    result = prepare_import(pem(issued, inter), traditional, HOSTS, trusted_roots=[root.cert])
    assert result.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    out_key = serialization.load_pem_private_key(result.key_pem, None)
    assert isinstance(out_key, rsa.RSAPrivateKey if key_type == "rsa" else ec.EllipticCurvePrivateKey)
    assert out_key.private_numbers() == key.private_numbers()


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
def test_encrypted_key_with_passphrase(root, inter, leaf, fmt):
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    encrypted = key_pem(key, serialization.BestAvailableEncryption(b"s3cret"), fmt)
    assert b"ENCRYPTED" in encrypted
    result = prepare_import(pem(leaf, inter), encrypted, HOSTS, passphrase=b"s3cret", trusted_roots=[root.cert])
    assert result.key_pem == leaf.key_pem
    assert result.warnings == ()


def test_passphrase_for_a_plain_key_is_ignored_with_a_warning(root, inter, leaf):
    result = prepare_import(pem(leaf, inter), leaf.key_pem, HOSTS, passphrase=b"x", trusted_roots=[root.cert])
    assert result.key_pem == leaf.key_pem
    assert any("not encrypted" in w for w in result.warnings), result.warnings


def test_wildcard_covers_one_label_and_wildcard_hosts(root, inter):
    wild = inter.issue(["blog.example", "*.blog.example"])
    hosts = ["blog.example", "www.blog.example", "shop.blog.example", "*.blog.example"]
    result = prepare_import(pem(wild, inter), wild.key_pem, hosts, trusted_roots=[root.cert])
    assert served(result)[0] == "CN=blog.example"
    with pytest.raises(NameMismatchError) as info:
        prepare_import(pem(wild, inter), wild.key_pem, [*hosts, "a.b.blog.example"], trusted_roots=[root.cert])
    assert "a.b.blog.example" in str(info.value) and "www.blog.example" not in str(info.value).split("(")[0]


def test_warning_when_expiring_within_30_days(root, inter):
    now = datetime.now(UTC)
    soon = inter.issue(HOSTS, not_after=now + timedelta(days=12, hours=1))
    result = prepare_import(pem(soon, inter), soon.key_pem, HOSTS, trusted_roots=[root.cert], now=now)
    assert len(result.warnings) == 1
    day = (now + timedelta(days=12, hours=1)).strftime("%Y-%m-%d")
    assert result.warnings[0].startswith(f"expires in 12 days ({day}): renew it soon")
    later = inter.issue(HOSTS, not_after=now + timedelta(days=31))
    assert prepare_import(pem(later, inter), later.key_pem, HOSTS, trusted_roots=[root.cert], now=now).warnings == ()


# --- unreadable input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty"),
        (b"\x00\x01garbage, not a certificate\n", "it is not PEM"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "damaged certificate"),
    ],
)
def test_garbage_certificate_file(leaf, data, reason):
    with pytest.raises(GarbageInputError) as info:
        prepare_import(data, leaf.key_pem, HOSTS, cert_file="chain.pem")
    assert reason in str(info.value)
    assert str(info.value).startswith("chain.pem")


def test_der_certificate_is_recognized(leaf):
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(GarbageInputError, match=r"binary \(DER\).*openssl x509 -inform der"):
        prepare_import(der, leaf.key_pem, HOSTS)


def test_key_file_without_a_key(root, inter, leaf):
    with pytest.raises(GarbageInputError, match=r"key.pem holds no private key: it is not PEM"):
        prepare_import(pem(leaf, inter), b"hello\n", HOSTS, key_file="key.pem")
    damaged = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(GarbageInputError, match=r"damaged private key"):
        prepare_import(pem(leaf, inter), damaged, HOSTS)


def test_swapped_files(leaf):
    with pytest.raises(GarbageInputError, match=r"holds no certificate: it holds a private key.*swapped"):
        prepare_import(leaf.key_pem, leaf.cert_pem, HOSTS)
    with pytest.raises(GarbageInputError, match=r"holds no private key: it holds a certificate.*swapped"):
        prepare_import(leaf.cert_pem, leaf.cert_pem, HOSTS)


# --- keys ---------------------------------------------------------------------------------------------------------


def test_wrong_key(root, inter, leaf):
    other = inter.issue(HOSTS)
    with pytest.raises(KeyMismatchError) as info:
        prepare_import(pem(leaf, inter), other.key_pem, HOSTS, trusted_roots=[root.cert])
    message = str(info.value)
    assert "does not match any certificate" in message and "CN=blog.example" in message
    assert isinstance(info.value, CertImportError) and isinstance(info.value, ValueError)


def test_encrypted_key_without_passphrase(leaf):
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    encrypted = key_pem(key, serialization.BestAvailableEncryption(b"s3cret"))
    with pytest.raises(EncryptedKeyError, match=r"the key in key.pem is encrypted: .*--key-passphrase-env VAR"):
        prepare_import(leaf.cert_pem, encrypted, HOSTS, key_file="key.pem")


def test_wrong_passphrase(leaf):
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    encrypted = key_pem(key, serialization.BestAvailableEncryption(b"s3cret"))
    with pytest.raises(WrongPassphraseError, match=r"passphrase does not decrypt"):
        prepare_import(leaf.cert_pem, encrypted, HOSTS, passphrase=b"guess")


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits is too small"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "curve secp256k1 is not accepted"),
        (lambda: dsa.generate_private_key(2048), "DSA keys cannot be used"),
    ],
)
def test_unsupported_keys(leaf, make_key, reason):
    with pytest.raises(UnsupportedKeyError, match=reason):
        prepare_import(leaf.cert_pem, key_pem(make_key()), HOSTS)


# --- chains -------------------------------------------------------------------------------------------------------


def test_several_leaves(root, inter, leaf):
    other = inter.issue(["shop.example"])
    with pytest.raises(ChainOrderError, match=r"several leaf certificates: CN=blog.example .*CN=shop.example"):
        prepare_import(pem(leaf, other, inter), leaf.key_pem, HOSTS, trusted_roots=[root.cert])


def test_unrelated_ca_certificate(root, inter, leaf):
    stranger = LocalCA.create("Unrelated CA")
    with pytest.raises(ChainOrderError, match=r"not in the chain of CN=blog.example: CN=Unrelated CA"):
        prepare_import(pem(leaf, inter, stranger), leaf.key_pem, HOSTS, trusted_roots=[root.cert])


def test_two_certificates_for_the_key(root, inter, leaf):
    again = x509.CertificateBuilder(
        issuer_name=inter.cert.subject, subject_name=leaf.cert.subject, public_key=leaf.cert.public_key(),
        serial_number=x509.random_serial_number(), not_valid_before=leaf.cert.not_valid_before_utc,
        not_valid_after=leaf.cert.not_valid_after_utc, extensions=list(leaf.cert.extensions),
    ).sign(inter.key, hashes.SHA256())
    with pytest.raises(ChainOrderError, match=r"2 certificates in .* are for this key"):
        prepare_import(pem(leaf, again, inter), leaf.key_pem, HOSTS, trusted_roots=[root.cert])


def test_signature_not_made_by_the_named_issuer(root, leaf):
    impostor = make_intermediate(root)  # same name "Test Intermediate", another key
    with pytest.raises(BadSignatureError, match=r"did not sign it"):
        prepare_import(pem(leaf, impostor), leaf.key_pem, HOSTS, trusted_roots=[root.cert])


def test_missing_intermediate(root, leaf):
    with pytest.raises(MissingIntermediateError) as info:
        prepare_import(leaf.cert_pem, leaf.key_pem, HOSTS, trusted_roots=[root.cert], cert_file="chain.pem")
    message = str(info.value)
    assert "incomplete: CN=blog.example was issued by CN=Test Intermediate" in message
    assert "neither in chain.pem nor a trusted root" in message and "--trust" in message


def test_missing_root_trust_is_missing_intermediate(inter, leaf):
    # the intermediate's issuer is not trusted here (the test root is no system root): the chain is not anchored
    with pytest.raises(MissingIntermediateError, match=r"CN=Test Intermediate was issued by CN=Import Test Root"):
        prepare_import(pem(leaf, inter), leaf.key_pem, HOSTS)


# --- names, dates, usage ------------------------------------------------------------------------------------------


def test_names_do_not_cover_site_hosts(root, inter):
    issued = inter.issue(["blog.example", "cdn.example"])
    with pytest.raises(NameMismatchError) as info:
        prepare_import(pem(issued, inter), issued.key_pem, [*HOSTS, "static.example"], trusted_roots=[root.cert])
    message = str(info.value)
    assert "host(s) www.blog.example, static.example (its names: blog.example, cdn.example)" in message


def test_expired(root, inter):
    now = datetime.now(UTC)
    old = inter.issue(HOSTS, not_before=now - timedelta(days=90), not_after=now - timedelta(days=1))
    with pytest.raises(ValidityError) as info:
        prepare_import(pem(old, inter), old.key_pem, HOSTS, trusted_roots=[root.cert], now=now)
    assert f"the certificate expired on {now - timedelta(days=1):%Y-%m-%d %H:%M} UTC" in str(info.value)


def test_not_yet_valid(root, inter):
    now = datetime.now(UTC)
    future = inter.issue(HOSTS, not_before=now + timedelta(days=2), not_after=now + timedelta(days=90))
    with pytest.raises(ValidityError, match=r"is not valid before .*check this machine's clock"):
        prepare_import(pem(future, inter), future.key_pem, HOSTS, trusted_roots=[root.cert], now=now)


def test_expired_intermediate(root):
    now = datetime.now(UTC)
    old_inter = make_intermediate(root, "Old Intermediate", not_after=now - timedelta(hours=1))
    issued = old_inter.issue(HOSTS, not_before=now - timedelta(days=2))
    with pytest.raises(ValidityError, match=r"the intermediate CN=Old Intermediate expired on"):
        prepare_import(pem(issued, old_inter), issued.key_pem, HOSTS, trusted_roots=[root.cert], now=now)


def test_client_only_certificate(root, inter):
    client = inter.issue(HOSTS, server=False, client=True)
    with pytest.raises(ServerUsageError, match=r"not for TLS servers .*clientAuth"):
        prepare_import(pem(client, inter), client.key_pem, HOSTS, trusted_roots=[root.cert])


def test_root_with_pathlen_zero_cannot_have_an_intermediate():
    strict = LocalCA.create("Strict Root")  # pathlen:0, like tlsedge's local CA
    below = make_intermediate(strict, "Below Strict")
    issued = below.issue(HOSTS)
    with pytest.raises(CaConstraintError, match=r"CN=Strict Root allows 0 intermediate\(s\) below it .* has 1"):
        prepare_import(pem(issued, below), issued.key_pem, HOSTS, trusted_roots=[strict.cert])


def test_issuer_that_is_not_a_ca(root, inter):
    not_ca = inter.issue(["issuer.example"])
    fake = LocalCA(not_ca.cert, serialization.load_pem_private_key(not_ca.key_pem, None))
    issued = fake.issue(HOSTS)
    with pytest.raises(CaConstraintError, match=r"CN=issuer.example issued CN=blog.example but is not a CA"):
        prepare_import(pem(issued, not_ca, inter), issued.key_pem, HOSTS, trusted_roots=[root.cert])


def test_one_file_with_chain_and_key_serves_as_both(root, inter, leaf):
    bundle = leaf.key_pem + pem(inter, leaf)
    result = prepare_import(bundle, bundle, HOSTS, trusted_roots=[root.cert])
    assert result.chain_pem == pem(leaf, inter) and result.key_pem == leaf.key_pem
