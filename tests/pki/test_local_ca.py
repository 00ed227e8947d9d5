"""The local CA: what it issues is accepted by OpenSSL and Python ssl, with the names, usages and files promised."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlsedge.pki.local_ca import IssuedCert, LocalCA, self_signed


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


def openssl_verify(ca_pem: Path, cert_pem: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_pem), *args, str(cert_pem)], capture_output=True, text=True, timeout=10
    )


def test_root_is_an_ecdsa_ca(ca: LocalCA) -> None:
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.cert.subject.rfc4514_string() == "CN=tlsedge local CA"
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc > timedelta(days=3649)


def test_save_load_round_trip_and_modes(ca: LocalCA, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca.pem", tmp_path / "private" / "ca.key")
    assert stat.S_IMODE((tmp_path / "private" / "ca.key").stat().st_mode) == 0o600
    loaded = LocalCA.load(tmp_path / "ca.pem", tmp_path / "private" / "ca.key")
    assert loaded.cert == ca.cert
    assert loaded.cert_pem == ca.cert_pem
    leaf = loaded.issue(["a.example"])
    leaf.write(tmp_path / "a.pem", tmp_path / "a.key")
    assert openssl_verify(tmp_path / "ca.pem", tmp_path / "a.pem").returncode == 0


def test_existing_key_file_mode_is_tightened(ca: LocalCA, tmp_path: Path) -> None:
    (tmp_path / "k.key").write_text("old")
    (tmp_path / "k.key").chmod(0o644)
    ca.issue(["a.example"]).write(tmp_path / "k.pem", tmp_path / "k.key")
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("key_type", "key_class"), [("ecdsa", ec.EllipticCurvePrivateKey), ("rsa", rsa.RSAPrivateKey)])
def test_issue_names_and_key_types(ca: LocalCA, tmp_path: Path, key_type: str, key_class: type) -> None:
    leaf = ca.issue(["www.example", "*.example", "127.0.0.1", "::1"], key_type=key_type)
    cert = leaf.cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example", "*.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert cert.subject.rfc4514_string() == "CN=www.example"
    assert leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(leaf.key_pem, None)
    assert isinstance(key, key_class)
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size == 2048
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Python ssl loads it and trusts it through the CA
    leaf.write(tmp_path / "l.pem", tmp_path / "l.key")
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "l.pem", tmp_path / "l.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    assert openssl_verify(tmp_path / "ca.pem", tmp_path / "l.pem", "-purpose", "sslserver").returncode == 0


def test_extended_key_usages(ca: LocalCA) -> None:
    def ekus(leaf: IssuedCert) -> list[x509.ObjectIdentifier]:
        return list(leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert ekus(ca.issue(["s.example"])) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ekus(ca.issue(["c"], server=False, client=True)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ekus(ca.issue(["b.example"], client=True)) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]


def test_client_cert_is_not_a_server_cert(ca: LocalCA, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "c.pem").write_bytes(ca.issue(["client"], server=False, client=True).cert_pem)
    assert openssl_verify(tmp_path / "ca.pem", tmp_path / "c.pem", "-purpose", "sslclient").returncode == 0
    assert openssl_verify(tmp_path / "ca.pem", tmp_path / "c.pem", "-purpose", "sslserver").returncode != 0


def test_validity_and_expired_certificates(ca: LocalCA, tmp_path: Path) -> None:
    leaf = ca.issue(["a.example"], days=10)
    now = datetime.now(UTC)
    assert leaf.cert.not_valid_before_utc <= now
    assert timedelta(days=10, seconds=-1) <= leaf.cert.not_valid_after_utc - now <= timedelta(days=10, minutes=1)
    expired = ca.issue(["a.example"], not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "e.pem").write_bytes(expired.cert_pem)
    result = openssl_verify(tmp_path / "ca.pem", tmp_path / "e.pem")
    assert result.returncode != 0 and "certificate has expired" in result.stdout + result.stderr


def test_self_signed(tmp_path: Path) -> None:
    leaf = self_signed(["origin.example", "10.0.0.1"], key_type="rsa", days=5)
    assert leaf.cert.issuer == leaf.cert.subject
    (tmp_path / "s.pem").write_bytes(leaf.cert_pem)
    other = tmp_path / "other.pem"
    other.write_bytes(self_signed(["origin.example"]).cert_pem)
    result = openssl_verify(other, tmp_path / "s.pem")
    assert result.returncode != 0 and "self-signed certificate" in result.stderr
    # an operator may pin it: explicitly trusted, a self-signed leaf is its own trust anchor
    assert openssl_verify(tmp_path / "s.pem", tmp_path / "s.pem").returncode == 0


def test_bad_arguments(ca: LocalCA) -> None:
    with pytest.raises(ValueError, match="key type"):
        ca.issue(["a.example"], key_type="dsa")
    with pytest.raises(ValueError, match="at least one name"):
        ca.issue([])
    with pytest.raises(ValueError, match="at least one name"):
        self_signed([])
