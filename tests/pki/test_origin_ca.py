"""The origin CA: root profile, validity choices, host names, CSRs (the key stays at the origin), revocation and the
CRL, the passphrase-encrypted key, client certificates per site, the CLI, and strict origin contexts that trust the
CA and refuse what it revoked (real OpenSSL, real TLS servers)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsedge.commands.origin_ca import register
from tlsedge.config.schema import (
    ORIGIN_CA_CLIENT,
    Config,
    Origin,
    PoolConfig,
    PoolServer,
    ServerConfig,
    SiteConfig,
)
from tlsedge.pki import origin_ca
from tlsedge.pki.local_ca import LocalCA
from tlsedge.store import SqliteStore, open_store
from tlsedge.store.secrets import seal
from tlsedge.tls.memory import load_pem_chain
from tlsedge.tls.server import TlsSetupError
from tlsedge.upstream.tls import (
    describe_tls_failure,
    origin_ca_watch,
    origin_ssl_contexts,
)

PASS = origin_ca.PASSPHRASE_ENV


@pytest.fixture(autouse=True)
def _no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASS, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def ca_store(store: SqliteStore) -> SqliteStore:
    origin_ca.init_ca(store)
    return store


def root(store: SqliteStore) -> x509.Certificate:
    pem = origin_ca.root_pem(store)
    assert pem is not None
    return x509.load_pem_x509_certificate(pem)


def make_csr(tmp_path: Path, subject: str = "/CN=origin.example", *extra: str,
             name: str = "origin") -> tuple[Path, Path]:
    """A CSR and its key made on "the origin" by openssl req (the key file never reaches tlsedge)."""
    key, csr = tmp_path / f"{name}.key", tmp_path / f"{name}.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", subject, *extra],
        check=True, capture_output=True, timeout=30,
    )
    return csr, key


def names_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def openssl_verify(tmp_path: Path, store: SqliteStore, cert_pem: bytes, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "root.pem").write_bytes(origin_ca.root_pem(store) or b"")
    (tmp_path / "leaf.pem").write_bytes(cert_pem)
    return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), *args,
                           str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=10)


# --- the root ---------------------------------------------------------------------------------------------------


def test_root_is_a_p384_ca_that_signs_certificates_and_crls(ca_store: SqliteStore) -> None:
    cert = root(ca_store)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=5475 + 365 * 9)


def test_init_refuses_to_replace_a_ca_unless_forced(ca_store: SqliteStore) -> None:
    first = origin_ca.root_pem(ca_store)
    origin_ca.issue_with_new_key(ca_store, ["a.example"], "ecdsa", 7)
    with pytest.raises(origin_ca.OriginCAError, match=r"already exists.*--force"):
        origin_ca.init_ca(ca_store)
    assert origin_ca.root_pem(ca_store) == first
    version = ca_store.topic_version(origin_ca.TOPIC)
    origin_ca.init_ca(ca_store, force=True)
    assert origin_ca.root_pem(ca_store) != first
    assert origin_ca.list_issued(ca_store) == []  # what the old CA issued is no longer ours to list or revoke
    assert ca_store.topic_version(origin_ca.TOPIC) > version


def test_nothing_is_issued_without_a_ca(store: SqliteStore) -> None:
    with pytest.raises(origin_ca.OriginCAError, match="run tlsedge ca init"):
        origin_ca.issue_with_new_key(store, ["a.example"], "ecdsa", 30)
    with pytest.raises(origin_ca.OriginCAError, match="run tlsedge ca init"):
        origin_ca.crl_pem(store)
    assert origin_ca.revoked_serials(store) == frozenset()


# --- validity and names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", origin_ca.VALIDITY_DAYS)
def test_every_validity_choice_is_issued_with_that_lifetime(ca_store: SqliteStore, days: int) -> None:
    cert_pem, _ = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", days)
    cert = x509.load_pem_x509_certificate(cert_pem)
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=days) - timedelta(minutes=1) < lifetime <= timedelta(days=days)


@pytest.mark.parametrize("days", [0, 1, 14, 31, 364, 5476, -7])
def test_other_validities_are_refused_with_the_choices(ca_store: SqliteStore, days: int) -> None:
    with pytest.raises(origin_ca.OriginCAError, match=r"7, 30, 90, 365, 730, 1095 or 5475 days") as caught:
        origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", days)
    assert f"{days} days" in str(caught.value)
    assert origin_ca.list_issued(ca_store) == []


def test_names_wildcards_and_ips(ca_store: SqliteStore) -> None:
    hosts = ["Origin.Blog.Example.", "*.blog.example", "10.0.0.7", "[2001:db8::1]", "::1", "origin.blog.example"]
    cert_pem, _ = origin_ca.issue_with_new_key(ca_store, hosts, "ecdsa", 30)
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["origin.blog.example", "*.blog.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "2001:db8::1", "::1"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "origin.blog.example"


def test_a_name_too_long_for_the_cn_is_only_in_the_subject_alt_name(ca_store: SqliteStore) -> None:
    long_name = "a" * 60 + ".blog.example"
    cert_pem, _ = origin_ca.issue_with_new_key(ca_store, [long_name], "ecdsa", 7)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert names_of(cert) == [long_name]


@pytest.mark.parametrize(("name", "reason"), [
    ("*.*.blog.example", "one level only"),
    ("a*.blog.example", "whole leftmost label"),
    ("a.*.example", "only as the leftmost label"),
    ("*", "bare '\\*'"),
    ("*.example", "at least two labels"),
    ("under_score.example", "not valid"),
    ("", "empty"),
])
def test_bad_names_are_refused_with_a_reason(ca_store: SqliteStore, name: str, reason: str) -> None:
    with pytest.raises(origin_ca.OriginCAError, match=reason):
        origin_ca.issue_with_new_key(ca_store, ["good.example", name], "ecdsa", 30)


def test_every_bad_name_is_reported_at_once(ca_store: SqliteStore) -> None:
    with pytest.raises(origin_ca.OriginCAError) as caught:
        origin_ca.issue_with_new_key(ca_store, ["*.*.x.example", "a*.x.example"], "ecdsa", 30)
    assert "'*.*.x.example'" in str(caught.value) and "'a*.x.example'" in str(caught.value)


# --- issuing ----------------------------------------------------------------------------------------------------


def test_server_certificate_profile_and_openssl_accepts_it(ca_store: SqliteStore, tmp_path: Path) -> None:
    cert_pem, key_pem = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "rsa", 90)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment  # RSA
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    ok = openssl_verify(tmp_path, ca_store, cert_pem, "-purpose", "sslserver", "-verify_hostname", "origin.example")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    as_client = openssl_verify(tmp_path, ca_store, cert_pem, "-purpose", "sslclient")
    assert as_client.returncode != 0  # serverAuth only


def test_csr_keeps_the_key_at_the_origin(ca_store: SqliteStore, tmp_path: Path) -> None:
    csr_path, key_path = make_csr(tmp_path, "/CN=ignored.example", "-addext",
                                  "subjectAltName=DNS:csr-name.example,IP:10.1.2.3")
    cert_pem = origin_ca.issue_from_csr(ca_store, csr_path.read_bytes(), [], 30)
    assert b"PRIVATE KEY" not in cert_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    origin_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == origin_key.public_key().public_bytes(*spki)
    assert names_of(cert) == ["csr-name.example", "10.1.2.3"]  # no --host: the CSR's subjectAltName names
    [record] = origin_ca.list_issued(ca_store)
    assert record.key_source == "csr" and record.serial == cert.serial_number


def test_hosts_given_replace_the_csr_names(ca_store: SqliteStore, tmp_path: Path) -> None:
    csr_path, _ = make_csr(tmp_path, "/CN=from-cn.example")
    from_cn = x509.load_pem_x509_certificate(origin_ca.issue_from_csr(ca_store, csr_path.read_bytes(), [], 7))
    assert names_of(from_cn) == ["from-cn.example"]  # no subjectAltName: the CN
    chosen = origin_ca.issue_from_csr(ca_store, csr_path.read_bytes(), ["origin.blog.example", "*.blog.example"], 7)
    assert names_of(x509.load_pem_x509_certificate(chosen)) == ["origin.blog.example", "*.blog.example"]


def test_csr_with_a_bad_signature_is_refused(ca_store: SqliteStore, tmp_path: Path) -> None:
    csr_path, _ = make_csr(tmp_path)
    der = bytearray(x509.load_pem_x509_csr(csr_path.read_bytes()).public_bytes(serialization.Encoding.DER))
    index = der.find(b"origin.example")
    der[index] = ord("O")  # the signed subject changed after signing
    tampered = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(origin_ca.OriginCAError, match="signature does not verify"):
        origin_ca.issue_from_csr(ca_store, tampered, ["origin.example"], 30)
    assert origin_ca.list_issued(ca_store) == []


@pytest.mark.parametrize(("data", "reason"), [
    (b"hello", "no PEM certificate signing request"),
    (b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "holds a private key"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n-----END CERTIFICATE REQUEST-----\n", "cannot parse"),
])
def test_garbage_csrs_are_refused(ca_store: SqliteStore, data: bytes, reason: str) -> None:
    with pytest.raises(origin_ca.OriginCAError, match=reason):
        origin_ca.issue_from_csr(ca_store, data, ["origin.example"], 30)


def test_csr_with_a_weak_key_is_refused(ca_store: SqliteStore, tmp_path: Path) -> None:
    key, csr = tmp_path / "weak.key", tmp_path / "weak.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", "/CN=x.example"],
                   check=True, capture_output=True, timeout=30)
    with pytest.raises(origin_ca.OriginCAError, match="secp256k1"):
        origin_ca.issue_from_csr(ca_store, csr.read_bytes(), [], 30)


# --- revocation -------------------------------------------------------------------------------------------------


def test_revoke_puts_the_serial_on_a_crl_signed_by_the_root(ca_store: SqliteStore, tmp_path: Path) -> None:
    cert_pem, _ = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", 30)
    keep_pem, _ = origin_ca.issue_with_new_key(ca_store, ["keep.example"], "ecdsa", 30)
    serial = x509.load_pem_x509_certificate(cert_pem).serial_number
    before = ca_store.topic_version(origin_ca.TOPIC)
    empty = x509.load_pem_x509_crl(origin_ca.crl_pem(ca_store))
    assert len(empty) == 0

    record, now = origin_ca.revoke(ca_store, serial, "key-compromise")
    assert now and record.revoked_at is not None and record.reason == "key-compromise"
    assert ca_store.topic_version(origin_ca.TOPIC) > before
    crl = x509.load_pem_x509_crl(origin_ca.crl_pem(ca_store))
    assert crl.is_signature_valid(root(ca_store).public_key())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > \
        empty.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert origin_ca.revoked_serials(ca_store) == frozenset({serial})
    statuses = {r.serial: r.status() for r in origin_ca.list_issued(ca_store)}
    assert statuses == {serial: "revoked", x509.load_pem_x509_certificate(keep_pem).serial_number: "valid"}
    (tmp_path / "crl.pem").write_bytes(origin_ca.crl_pem(ca_store))
    checked = openssl_verify(tmp_path, ca_store, cert_pem, "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"))
    assert "certificate revoked" in checked.stdout + checked.stderr
    kept = openssl_verify(tmp_path, ca_store, keep_pem, "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"))
    assert kept.returncode == 0, kept.stdout + kept.stderr

    again, now = origin_ca.revoke(ca_store, serial)
    assert not now and again.reason == "key-compromise"


def test_revoking_an_unknown_serial_or_reason_fails(ca_store: SqliteStore) -> None:
    with pytest.raises(origin_ca.OriginCAError, match="no certificate with serial abc"):
        origin_ca.revoke(ca_store, 0xABC)
    with pytest.raises(origin_ca.OriginCAError, match="unknown revocation reason"):
        origin_ca.revoke(ca_store, 0xABC, "because")


def test_serials_are_read_as_list_and_openssl_print_them() -> None:
    assert origin_ca.parse_serial("3f2a") == origin_ca.parse_serial("serial=3F2A") == 0x3F2A
    assert origin_ca.parse_serial("0x3f:2a") == 0x3F2A
    with pytest.raises(origin_ca.OriginCAError, match="not a serial number"):
        origin_ca.parse_serial("xyz")


# --- the passphrase ---------------------------------------------------------------------------------------------


def test_encrypted_ca_needs_its_passphrase(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASS, "correct horse")
    origin_ca.init_ca(store)
    assert origin_ca.key_encrypted(store)
    cert_pem, _ = origin_ca.issue_with_new_key(store, ["origin.example"], "ecdsa", 7)
    serial = x509.load_pem_x509_certificate(cert_pem).serial_number

    monkeypatch.delenv(PASS)
    with pytest.raises(origin_ca.OriginCAError, match=f"encrypted.*set {PASS}"):
        origin_ca.issue_with_new_key(store, ["origin.example"], "ecdsa", 7)
    with pytest.raises(origin_ca.OriginCAError, match=PASS):
        origin_ca.revoke(store, serial)
    assert origin_ca.revoked_serials(store) == frozenset()  # nothing changed without the key
    assert origin_ca.root_pem(store) is not None  # showing the root needs no key
    monkeypatch.setenv(PASS, "wrong")
    with pytest.raises(origin_ca.OriginCAError, match=f"{PASS} is not the passphrase"):
        origin_ca.issue_with_new_key(store, ["origin.example"], "ecdsa", 7)

    monkeypatch.setenv(PASS, "correct horse")
    assert origin_ca.revoke(store, serial)[1]
    assert origin_ca.revoked_serials(store) == frozenset({serial})


def test_plain_ca_key_is_not_encrypted(ca_store: SqliteStore) -> None:
    assert not origin_ca.key_encrypted(ca_store)


# --- client certificates ----------------------------------------------------------------------------------------


def test_client_certificate_profile_names_the_site(ca_store: SqliteStore, tmp_path: Path) -> None:
    cert_pem, key_pem = origin_ca.client_certificate_for_site(ca_store, "blog")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=tlsedge edge for site blog"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tlsedge:site:blog"]
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    ok = openssl_verify(tmp_path, ca_store, cert_pem, "-purpose", "sslclient")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert openssl_verify(tmp_path, ca_store, cert_pem, "-purpose", "sslserver").returncode != 0
    assert origin_ca.client_certificate_for_site(ca_store, "blog") == (cert_pem, key_pem)  # stored, not reissued
    assert origin_ca.client_certificate_for_site(ca_store, "shop")[0] != cert_pem
    [record] = [r for r in origin_ca.list_issued(ca_store) if r.site == "blog"]
    assert record.kind == "client" and record.serial == cert.serial_number


def test_revoked_client_certificate_is_replaced(ca_store: SqliteStore) -> None:
    old, _ = origin_ca.client_certificate_for_site(ca_store, "blog")
    origin_ca.revoke(ca_store, x509.load_pem_x509_certificate(old).serial_number)
    new, _ = origin_ca.client_certificate_for_site(ca_store, "blog")
    assert new != old


def _store_client(store: SqliteStore, site: str, not_before: datetime, not_after: datetime) -> bytes:
    """Put a client certificate with chosen dates where the CA keeps the site's (to test renewal)."""
    ca = origin_ca.load_ca(store)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after).sign(ca.key, origin_ca._HASH))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    name = f"origin-ca/client/{site}"
    record = {"cert_pem": pem.decode(), "key": base64.b64encode(seal(name, key_pem)).decode()}
    store.put(name, json.dumps(record).encode())
    return pem


def test_client_certificate_is_renewed_with_a_third_of_its_life_left(store: SqliteStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASS, "secret")
    origin_ca.init_ca(store)
    now = datetime.now(UTC)
    fresh = _store_client(store, "fresh", now - timedelta(days=10), now + timedelta(days=20))
    due = _store_client(store, "due", now - timedelta(days=25), now + timedelta(days=5))
    assert origin_ca.client_certificate_for_site(store, "fresh")[0] == fresh
    monkeypatch.delenv(PASS)
    assert origin_ca.client_certificate_for_site(store, "due")[0] == due  # locked CA: the valid one is kept
    monkeypatch.setenv(PASS, "secret")
    renewed = x509.load_pem_x509_certificate(origin_ca.client_certificate_for_site(store, "due")[0])
    assert renewed.not_valid_after_utc - now > timedelta(days=origin_ca.CLIENT_DAYS - 1)


# --- the CLI ----------------------------------------------------------------------------------------------------


CONFIG = """\
[server]
state_dir = "state"
https = []
http = ["127.0.0.1:1"]

[[site]]
name = "blog"
hosts = ["blog.example"]
origins = ["https://127.0.0.1:9443"]
origin_tls = "strict"
"""


class Cli:
    """``tlsedge ca|origin-cert ...`` run in-process through the commands' own parsers."""

    def __init__(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        self.config = tmp_path / "tlsedge.toml"
        self.config.write_text(CONFIG)
        self.tmp = tmp_path
        self.capfd = capfd
        parser = argparse.ArgumentParser(prog="tlsedge")
        register(parser.add_subparsers(dest="command", required=True))
        self.parser = parser

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        group, command, *rest = argv
        args = self.parser.parse_args([group, command, "-c", str(self.config), *rest])
        self.capfd.readouterr()
        code = args.func(args)
        out, err = self.capfd.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    @property
    def store(self) -> SqliteStore:
        return open_store(self.tmp / "state")


@pytest.fixture
def cli(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capfd)


def test_cli_ca_init_show_and_crl(cli: Cli) -> None:
    code, _, err = cli("ca", "show")
    assert code == 1 and "error: the origin CA does not exist yet: run tlsedge ca init" in err
    code, out, _ = cli("ca", "init")
    assert code == 0 and "origin CA created" in out and "not encrypted" in out
    code, _, err = cli("ca", "init")
    assert code == 1 and "--force" in err
    code, out, _ = cli("ca", "show")
    assert code == 0
    assert x509.load_pem_x509_certificate(out.encode()).subject.rfc4514_string() == "CN=tlsedge origin CA"
    code, out, _ = cli("ca", "crl")
    assert code == 0 and x509.load_pem_x509_crl(out.encode()).is_signature_valid(
        x509.load_pem_x509_certificate(origin_ca.root_pem(cli.store)).public_key())
    assert cli("ca", "init", "--force")[0] == 0


def test_cli_issue_from_csr_writes_no_key(cli: Cli, tmp_path: Path) -> None:
    cli("ca", "init")
    csr, _ = make_csr(tmp_path)
    code, out, err = cli("origin-cert", "issue", "--csr", str(csr), "--host", "origin.example", "--days", "30")
    assert code == 0 and "PRIVATE KEY" not in out and out.count("BEGIN CERTIFICATE") == 1
    assert "issued serial" in err
    prefix = tmp_path / "out" / "origin"
    code, out, _ = cli("origin-cert", "issue", "--csr", str(csr), "--days", "30", "--out", str(prefix))
    assert code == 0 and "wrote" in out
    assert prefix.with_suffix(".pem").exists() and not prefix.with_suffix(".key").exists()


def test_cli_issue_with_new_key_writes_the_key_0600(cli: Cli, tmp_path: Path) -> None:
    cli("ca", "init")
    code, out, _ = cli("origin-cert", "issue", "--host", "origin.example", "--new-key", "ecdsa", "--days", "7")
    assert code == 0 and "BEGIN CERTIFICATE" in out and "BEGIN PRIVATE KEY" in out
    prefix = tmp_path / "o"
    code, _, _ = cli("origin-cert", "issue", "--host", "origin.example", "--new-key", "rsa", "--days", "7",
                     "--out", str(prefix))
    assert code == 0
    assert stat.S_IMODE(os.stat(f"{prefix}.key").st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in Path(f"{prefix}.key").read_bytes()


@pytest.mark.parametrize(("argv", "message"), [
    (["--host", "o.example", "--new-key", "ecdsa", "--days", "31"], "7, 30, 90, 365, 730, 1095 or 5475"),
    (["--host", "*.*.example", "--new-key", "ecdsa", "--days", "30"], "one level only"),
    (["--new-key", "ecdsa", "--days", "30"], "at least one host name"),
    (["--csr", "/nonexistent/req.pem", "--days", "30"], "--csr: cannot read '/nonexistent/req.pem'"),
])
def test_cli_issue_failures(cli: Cli, argv: list[str], message: str) -> None:
    cli("ca", "init")
    code, out, err = cli("origin-cert", "issue", *argv)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err


def test_cli_issue_bad_csr(cli: Cli, tmp_path: Path) -> None:
    cli("ca", "init")
    bad = tmp_path / "bad.csr"
    bad.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    code, _, err = cli("origin-cert", "issue", "--csr", str(bad), "--days", "30")
    assert code == 1 and "cannot parse the certificate signing request" in err


def test_cli_missing_ca_says_to_init(cli: Cli) -> None:
    code, _, err = cli("origin-cert", "issue", "--host", "o.example", "--new-key", "ecdsa", "--days", "30")
    assert code == 1 and "run tlsedge ca init" in err


def test_cli_list_and_revoke(cli: Cli) -> None:
    cli("ca", "init")
    assert "no certificates issued yet" in cli("origin-cert", "list")[1]
    cli("origin-cert", "issue", "--host", "origin.example", "--new-key", "ecdsa", "--days", "90")
    code, out, _ = cli("origin-cert", "list", "--json")
    [record] = json.loads(out)
    assert record["hosts"] == ["origin.example"] and record["status"] == "valid" and record["kind"] == "server"
    assert cli("origin-cert", "list")[1].splitlines()[1].startswith(record["serial"])

    code, out, _ = cli("origin-cert", "revoke", record["serial"].upper(), "--reason", "superseded")
    assert code == 0 and "revoked serial" in out
    code, _, err = cli("origin-cert", "revoke", record["serial"])
    assert code == 0 and "already revoked" in err
    assert json.loads(cli("origin-cert", "list", "--json")[1])[0]["status"] == "revoked"
    assert "revoked (superseded)" in cli("origin-cert", "list")[1]
    code, _, err = cli("origin-cert", "revoke", "abcdef")
    assert code == 1 and "no certificate with serial abcdef" in err


def test_cli_client_certificate(cli: Cli, tmp_path: Path) -> None:
    cli("ca", "init")
    code, _, err = cli("origin-cert", "client", "--site", "nope")
    assert code == 1 and "no site named 'nope'" in err and "blog" in err
    prefix = tmp_path / "client" / "blog"
    code, out, _ = cli("origin-cert", "client", "--site", "blog", "--out", str(prefix))
    assert code == 0 and "mode 0600" in out
    assert stat.S_IMODE(os.stat(f"{prefix}.key").st_mode) == 0o600
    code, out, _ = cli("origin-cert", "client", "--site", "blog")
    assert code == 0 and "PRIVATE KEY" not in out
    assert out.encode() == Path(f"{prefix}.pem").read_bytes()  # the stored one, not a new one
    serial = x509.load_pem_x509_certificate(out.encode()).serial_number
    code, out, _ = cli("origin-cert", "revoke", f"{serial:x}")
    assert code == 0 and "site blog now presents a new client certificate" in out
    assert cli("origin-cert", "client", "--site", "blog")[1].encode() != Path(f"{prefix}.pem").read_bytes()


def test_cli_passphrase_messages(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASS, "s3cret")
    code, out, _ = cli("ca", "init")
    assert code == 0 and f"{PASS} is set" in out
    monkeypatch.delenv(PASS)
    code, _, err = cli("origin-cert", "issue", "--host", "o.example", "--new-key", "ecdsa", "--days", "30")
    assert code == 1 and f"set {PASS}" in err
    assert cli("ca", "show")[0] == 0
    monkeypatch.setenv(PASS, "nope")
    code, _, err = cli("origin-cert", "issue", "--host", "o.example", "--new-key", "ecdsa", "--days", "30")
    assert code == 1 and "is not the passphrase" in err


def test_cli_config_problems_are_printed(cli: Cli) -> None:
    cli.config.write_text("[server]\nworkers = 'many'\n")
    code, out, err = cli("ca", "init")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "workers" in err


# --- strict origin contexts -------------------------------------------------------------------------------------


class TlsOrigin:
    """A TLS server in a thread that answers b"ok" and records the client certificate it saw (if it asks for one)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, tmp: Path, client_ca: bytes | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "cert.pem").write_bytes(cert_pem)
        (tmp / "key.pem").write_bytes(key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        if client_ca is not None:
            self.ctx.load_verify_locations(cadata=client_ca.decode())
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.clients: list[x509.Certificate] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    if der:
                        self.clients.append(x509.load_der_x509_certificate(der))
                    tls.sendall(b"ok")
                    tls.recv(10)
            except OSError:
                conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def config_for(state_dir: Path, *pools: tuple[str, PoolConfig]) -> Config:
    sites = tuple(SiteConfig(name, (f"{name}.example",), (), (pool,), pool.origin_tls) for name, pool in pools)
    return Config(state_dir / "tlsedge.toml", ServerConfig(state_dir, 1, (), ()), sites)


def strict_pool(port: int, *, origin_ca_file: Path | None = None, client: object = None,
                mode: str = "strict") -> PoolConfig:
    return PoolConfig("default", (PoolServer(Origin("https", "127.0.0.1", port)),), mode,  # type: ignore[arg-type]
                      origin_ca=origin_ca_file, origin_server_name="origin.example",
                      client_certificate=client)  # type: ignore[arg-type]


def connect(ctx: ssl.SSLContext, port: int, remember: bool = False) -> str:
    """Connect like the edge (uvloop, server_hostname); "ok", "ok resumed", or the described failure."""

    async def go() -> str:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=ctx,
                                                        server_hostname="origin.example")
        except (ssl.SSLError, ConnectionError) as exc:
            return describe_tls_failure(exc)
        ssl_object = transport.get_extra_info("ssl_object")
        resumed = ssl_object.session_reused
        await asyncio.sleep(0.05)  # TLS 1.3 tickets arrive after the handshake
        if remember and ssl_object.session is not None:
            ctx.remember("origin.example", ssl_object.session)  # type: ignore[attr-defined]
        transport.close()
        return "ok resumed" if resumed else "ok"

    return uvloop.run(go())


@pytest.fixture
def other_pki(tmp_path: Path) -> tuple[LocalCA, Path]:
    """A CA configured with origin_ca (standing in for a public CA) next to the origin CA."""
    ca = LocalCA.create("another CA")
    (tmp_path / "other-ca.pem").write_bytes(ca.cert_pem)
    return ca, tmp_path / "other-ca.pem"


def test_strict_context_trusts_the_origin_ca_and_refuses_what_it_revoked(ca_store: SqliteStore, tmp_path: Path,
                                                                      other_pki: tuple[LocalCA, Path]) -> None:
    cert_pem, key_pem = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", 30)
    other = other_pki[0].issue(["origin.example"])
    ours = TlsOrigin(cert_pem, key_pem, tmp_path / "ours")
    theirs = TlsOrigin(other.cert_pem, other.key_pem, tmp_path / "theirs")
    try:
        config = config_for(ca_store.path.parent, ("a", strict_pool(ours.port)),
                            ("b", strict_pool(theirs.port, origin_ca_file=other_pki[1])),
                            ("full", strict_pool(ours.port, mode="full")))
        contexts = origin_ssl_contexts(config)
        watch = origin_ca_watch(contexts)
        assert watch is not None
        strict_ctx, other_ctx = contexts[("a", "default")], contexts[("b", "default")]
        assert connect(strict_ctx, ours.port, remember=True) == "ok"
        assert connect(other_ctx, theirs.port) == "ok"
        assert connect(other_ctx, ours.port) == "ok"  # every strict pool trusts the origin CA

        origin_ca.revoke(ca_store, x509.load_pem_x509_certificate(cert_pem).serial_number)
        assert connect(strict_ctx, ours.port) == "ok resumed"  # not refreshed yet
        assert watch.refresh(ca_store) and not watch.refresh(ca_store)  # re-read only on a change
        refused = connect(strict_ctx, ours.port)
        assert refused.startswith("origin certificate rejected: it was revoked by the tlsedge origin CA"), refused
        assert connect(other_ctx, theirs.port) == "ok"  # another CA's origin is unaffected (no CRL required)
        assert connect(contexts[("full", "default")], ours.port) == "ok"  # full mode does not authenticate
    finally:
        ours.close()
        theirs.close()


def test_revocations_already_in_the_store_apply_from_the_start(ca_store: SqliteStore, tmp_path: Path) -> None:
    cert_pem, key_pem = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", 30)
    origin_ca.revoke(ca_store, x509.load_pem_x509_certificate(cert_pem).serial_number)
    server = TlsOrigin(cert_pem, key_pem, tmp_path / "o")
    try:
        contexts = origin_ssl_contexts(config_for(ca_store.path.parent, ("a", strict_pool(server.port))))
        assert "revoked" in connect(contexts[("a", "default")], server.port)
    finally:
        server.close()


def test_without_a_ca_nothing_is_added_and_no_store_is_created(tmp_path: Path, other_pki) -> None:
    cert = other_pki[0].issue(["origin.example"])
    server = TlsOrigin(cert.cert_pem, cert.key_pem, tmp_path / "o")
    state = tmp_path / "state"
    state.mkdir()
    try:
        contexts = origin_ssl_contexts(config_for(state, ("a", strict_pool(server.port))))
        assert origin_ca_watch(contexts) is None
        assert "certificate rejected" in connect(contexts[("a", "default")], server.port)  # not trusted
        assert list(state.iterdir()) == []
    finally:
        server.close()


def test_origin_ca_client_certificate_per_site(ca_store: SqliteStore, tmp_path: Path) -> None:
    cert_pem, key_pem = origin_ca.issue_with_new_key(ca_store, ["origin.example"], "ecdsa", 30)
    server = TlsOrigin(cert_pem, key_pem, tmp_path / "o", client_ca=origin_ca.root_pem(ca_store))
    try:
        config = config_for(ca_store.path.parent, ("blog", strict_pool(server.port, client=ORIGIN_CA_CLIENT)),
                            ("shop", strict_pool(server.port, client=ORIGIN_CA_CLIENT)))
        contexts = origin_ssl_contexts(config)
        open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                      if os.path.exists(f"/proc/self/fd/{fd}")]
        # The memory files holding keys and chains are closed (other memfds of this test process are not ours).
        assert not [f for f in open_files if "memfd:tlsedge-key" in f or "memfd:tlsedge-chain" in f], open_files
        assert contexts[("blog", "default")] is not contexts[("shop", "default")]
        assert connect(contexts[("blog", "default")], server.port) == "ok"
        assert connect(contexts[("shop", "default")], server.port) == "ok"
        seen = [c.subject.rfc4514_string() for c in server.clients]
        assert seen == ["CN=tlsedge edge for site blog", "CN=tlsedge edge for site shop"]
        first = server.clients[0].serial_number

        # Revoked and replaced (as `tlsedge origin-cert revoke` does): the worker loads the new one on refresh.
        origin_ca.revoke(ca_store, first)
        new_pem, _ = origin_ca.client_certificate_for_site(ca_store, "blog")
        watch = origin_ca_watch(contexts)
        assert watch is not None and watch.refresh(ca_store)
        assert connect(contexts[("blog", "default")], server.port) == "ok"
        assert server.clients[-1].serial_number == x509.load_pem_x509_certificate(new_pem).serial_number != first
    finally:
        server.close()


def test_origin_ca_client_certificate_without_a_ca_is_a_setup_problem(tmp_path: Path) -> None:
    config = config_for(tmp_path, ("blog", strict_pool(1, client=ORIGIN_CA_CLIENT)))
    with pytest.raises(TlsSetupError) as caught:
        origin_ssl_contexts(config)
    [problem] = caught.value.problems
    assert problem.field == "site[blog].pool[default].client_certificate" and problem.site == "blog"
    assert "run tlsedge ca init" in problem.reason


def test_load_pem_chain_refuses_a_mismatched_key(ca_store: SqliteStore) -> None:
    cert_pem, _ = origin_ca.client_certificate_for_site(ca_store, "blog")
    _, other_key = origin_ca.client_certificate_for_site(ca_store, "shop")
    with pytest.raises(ssl.SSLError):
        load_pem_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_pem, other_key)
