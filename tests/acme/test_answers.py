"""Challenge answers in a real store (HTTP-01 tokens, TLS-ALPN-01 certificates served over a real TLS handshake), and
the pure helpers of the ACME client: ARI certificate ids, Retry-After, CSRs and keys."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlsedge.acme.answers import (
    http01_answer,
    put_http01,
    put_tls_alpn01,
    remove_answers,
    tls_alpn01_context,
    validation_certificate,
)
from tlsedge.acme.client import ari_cert_id, make_csr, new_private_key, retry_after_seconds
from tlsedge.store import SqliteStore, open_store

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 8.3 example token
KEY_AUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path / "state")
    yield opened
    opened.close()


def acme_identifier(cert: x509.Certificate) -> x509.Extension:
    return cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)


# --- TLS-ALPN-01 validation certificate -------------------------------------------------------------------------------


def test_validation_certificate_carries_the_key_authorization_digest():
    cert_pem, key_pem = validation_certificate("shop.example", KEY_AUTH)
    cert = x509.load_pem_x509_certificate(cert_pem)
    extension = acme_identifier(cert)
    assert extension.critical is True
    # RFC 8737 3: the extension value is the DER encoding of an OCTET STRING holding SHA-256(key authorization).
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(KEY_AUTH.encode()).digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("shop.example")]
    assert cert.issuer == cert.subject
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc


def test_each_validation_certificate_has_its_own_key():
    first = x509.load_pem_x509_certificate(validation_certificate("a.example", KEY_AUTH)[0])
    second = x509.load_pem_x509_certificate(validation_certificate("a.example", KEY_AUTH)[0])
    assert first.public_key().public_numbers() != second.public_key().public_numbers()
    other = x509.load_pem_x509_certificate(validation_certificate("a.example", KEY_AUTH + "x")[0])
    assert acme_identifier(other).value.value != acme_identifier(first).value.value


# --- HTTP-01 ----------------------------------------------------------------------------------------------------------


def test_http01_round_trip(store):
    put_http01(store, TOKEN, KEY_AUTH)
    assert http01_answer(store, TOKEN.encode()) == KEY_AUTH.encode()
    assert http01_answer(store, b"someOtherToken") is None


@pytest.mark.parametrize(
    "token",
    [b"", b"a/b", b"..", b"../a", b"a%2Fb", b"a.b", b"a b", b"a\x00b", "caf\u00e9".encode(), b"x" * 257],
)
def test_http01_refuses_what_is_not_a_token_without_touching_the_store(tmp_path, token):
    (tmp_path / "state").write_text("a file where the store's directory should be: any store access raises")
    unusable = open_store(tmp_path / "state")
    assert http01_answer(unusable, token) is None


def test_http01_does_not_answer_a_stored_key_reached_by_path_tricks(store):
    put_http01(store, "a/b", "smuggled")  # a key no CA token could name
    assert http01_answer(store, b"a/b") is None


def test_http01_accepts_the_longest_token(store):
    token = "A-_z" * 64  # 256 characters of the base64url alphabet
    put_http01(store, token, "answer")
    assert http01_answer(store, token.encode()) == b"answer"


# --- TLS-ALPN-01 contexts and a real handshake ------------------------------------------------------------------------


def handshake(server_ctx: ssl.SSLContext, server_name: str, alpn: list[str]) -> tuple[str | None, x509.Certificate]:
    """Complete a TLS handshake over a socketpair; return the ALPN protocol and the certificate the client saw."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(5)
    client_sock.settimeout(5)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.recv(1)  # wait for the client's close
        except (OSError, ssl.SSLError) as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # the CA checks the extension, not a chain: so do we, below
    client_ctx.set_alpn_protocols(alpn)
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_name) as tls:
            protocol = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
    finally:
        thread.join(5)
    assert not failures, failures
    return protocol, x509.load_der_x509_certificate(der)


def test_tls_alpn01_handshake_presents_the_validation_certificate(store):
    put_tls_alpn01(store, "shop.example", KEY_AUTH)
    ctx = tls_alpn01_context(store, "shop.example")
    assert ctx is not None
    protocol, cert = handshake(ctx, "shop.example", ["acme-tls/1"])
    assert protocol == "acme-tls/1"
    extension = acme_identifier(cert)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(KEY_AUTH.encode()).digest()
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["shop.example"]


def test_tls_alpn01_context_matches_names_case_and_trailing_dot_insensitively(store):
    put_tls_alpn01(store, "Shop.Example", KEY_AUTH)
    assert tls_alpn01_context(store, "SHOP.example.") is not None
    assert tls_alpn01_context(store, "shop.example") is not None


def test_tls_alpn01_context_is_none_for_names_without_a_pending_validation(store):
    put_tls_alpn01(store, "shop.example", KEY_AUTH)
    assert tls_alpn01_context(store, "other.example") is None
    assert tls_alpn01_context(store, None) is None
    assert tls_alpn01_context(store, "") is None


def test_remove_answers(store):
    put_http01(store, TOKEN, KEY_AUTH)
    put_http01(store, "kept", "other")
    put_tls_alpn01(store, "shop.example", KEY_AUTH)
    remove_answers(store, [TOKEN], ["Shop.Example"])
    assert http01_answer(store, TOKEN.encode()) is None
    assert tls_alpn01_context(store, "shop.example") is None
    assert http01_answer(store, b"kept") == b"other"
    remove_answers(store, [TOKEN], ["shop.example"])  # removing twice is harmless


# --- ACME client helpers ----------------------------------------------------------------------------------------------


def certificate_with(aki: bytes, serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_ari_cert_id_matches_the_rfc_9773_example():
    # RFC 9773 4.1: keyIdentifier 69:88:5B:...:C8:D4 and serial 00:87:65:43:21 (a positive integer with its high bit
    # set, hence the leading zero byte of its DER encoding).
    cert = certificate_with(bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"), 0x87654321)
    assert ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_ari_cert_id_serial_without_a_leading_zero():
    cert = certificate_with(b"\x01\x02", 0x012345)
    assert ari_cert_id(cert) == "AQI.ASNF"


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 30 ", 30.0), ("0", 0.0)])
def test_retry_after_in_seconds(header, seconds):
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date():
    now = datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 01 Jan 2025 00:02:00 GMT", now) == 120.0
    assert retry_after_seconds("Tue, 31 Dec 2024 23:00:00 GMT", now) == 0.0  # already past: retry now


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2025"])
def test_retry_after_garbage_is_none(header):
    assert retry_after_seconds(header) is None


def test_make_csr_names_every_name_and_is_signed_by_the_key():
    key = new_private_key("ecdsa-p256")
    csr = x509.load_pem_x509_csr(make_csr(["shop.example", "www.shop.example"], key))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "shop.example"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example", "www.shop.example"]
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [("ecdsa-p256", ec.EllipticCurvePrivateKey, 256), ("ecdsa-p384", ec.EllipticCurvePrivateKey, 384),
     ("rsa2048", rsa.RSAPrivateKey, 2048), ("rsa3072", rsa.RSAPrivateKey, 3072)],
)
def test_new_private_key_types_and_sizes(key_type, kind, size):
    key = new_private_key(key_type)
    assert isinstance(key, kind)
    assert key.key_size == size
