"""Private keys at rest: sealing with TLSEDGE_STORE_KEY (AES-GCM bound to the key name), the operator's errors, and
site certificates kept in a real store (tlsedge.pki.site_certs)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tlsedge.pki.local_ca import LocalCA
from tlsedge.pki.site_certs import (
    CERTS_TOPIC,
    CertificateStatus,
    load_certificate,
    load_status,
    save_certificate,
    save_status,
)
from tlsedge.store import SqliteStore, StoreError, open_store
from tlsedge.store.secrets import ENV_KEY, get_secret, put_secret, seal, unseal

PLAINTEXT = b"-----BEGIN PRIVATE KEY-----\nnot really a key but secret all the same\n-----END PRIVATE KEY-----\n"


def _random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def no_key(monkeypatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)


@pytest.fixture
def store_key(monkeypatch) -> str:
    key = _random_key()
    monkeypatch.setenv(ENV_KEY, key)
    return key


# --- sealing ----------------------------------------------------------------------------------------------------------


def test_without_a_key_values_are_stored_as_is(store, no_key):
    put_secret(store, "acme-account/x", PLAINTEXT)
    assert store.get("acme-account/x").value == PLAINTEXT
    assert get_secret(store, "acme-account/x") == PLAINTEXT
    assert get_secret(store, "absent") is None


def test_an_empty_variable_means_no_key(store, monkeypatch):
    monkeypatch.setenv(ENV_KEY, "")
    put_secret(store, "k", PLAINTEXT)
    assert store.get("k").value == PLAINTEXT


def test_with_a_key_values_are_sealed_and_unsealed(store, store_key):
    put_secret(store, "acme-account/x", PLAINTEXT)
    raw = store.get("acme-account/x").value
    assert b"PRIVATE KEY" not in raw
    assert b"secret all the same" not in raw
    assert get_secret(store, "acme-account/x") == PLAINTEXT
    assert seal("k", PLAINTEXT) != seal("k", PLAINTEXT), "each seal must use a fresh nonce"


def test_values_written_before_the_key_was_set_still_read(store, monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    put_secret(store, "old", PLAINTEXT)
    monkeypatch.setenv(ENV_KEY, _random_key())
    assert get_secret(store, "old") == PLAINTEXT


def test_a_sealed_value_moved_to_another_name_does_not_decrypt(store, store_key):
    put_secret(store, "site-cert/blog", PLAINTEXT)
    store.put("site-cert/evil", store.get("site-cert/blog").value)
    with pytest.raises(StoreError) as caught:
        get_secret(store, "site-cert/evil")
    message = str(caught.value)
    assert "cannot decrypt" in message
    assert "'site-cert/evil'" in message
    assert get_secret(store, "site-cert/blog") == PLAINTEXT


def test_a_wrong_key_is_a_store_error_naming_the_variable(store, monkeypatch):
    monkeypatch.setenv(ENV_KEY, _random_key())
    put_secret(store, "k", PLAINTEXT)
    monkeypatch.setenv(ENV_KEY, _random_key())
    with pytest.raises(StoreError) as caught:
        get_secret(store, "k")
    assert ENV_KEY in str(caught.value)
    assert "not the key it was written with" in str(caught.value)
    assert PLAINTEXT.decode() not in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    [
        "not base64 at all!",
        base64.b64encode(os.urandom(16)).decode(),  # AES-128 length: not what we use
        base64.b64encode(os.urandom(33)).decode(),
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # url-safe alphabet: '-' and '_' are not base64
    ],
)
def test_a_malformed_key_is_a_store_error_with_the_openssl_hint(store, monkeypatch, bad):
    monkeypatch.setenv(ENV_KEY, bad)
    with pytest.raises(StoreError) as caught:
        put_secret(store, "k", PLAINTEXT)
    assert ENV_KEY in str(caught.value)
    assert "openssl rand -base64 32" in str(caught.value)
    assert store.get("k") is None


def test_a_malformed_key_is_reported_when_reading_a_sealed_value(store, monkeypatch):
    monkeypatch.setenv(ENV_KEY, _random_key())
    put_secret(store, "k", PLAINTEXT)
    monkeypatch.setenv(ENV_KEY, "short")
    with pytest.raises(StoreError, match="openssl rand -base64 32"):
        get_secret(store, "k")


def test_reading_a_sealed_value_without_the_key_says_to_set_it(store, monkeypatch):
    monkeypatch.setenv(ENV_KEY, _random_key())
    put_secret(store, "k", PLAINTEXT)
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(StoreError) as caught:
        get_secret(store, "k")
    assert f"set {ENV_KEY}" in str(caught.value)
    assert "'k'" in str(caught.value)


def test_seal_and_unseal_without_a_store(store_key):
    assert unseal("name", seal("name", b"")) == b""
    assert unseal("name", seal("name", PLAINTEXT)) == PLAINTEXT


# --- site certificates ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("tlsedge test CA for site certificates")


def _raw_key_field(store: SqliteStore, site: str) -> bytes:
    """The key as it lies in the store row (the record's base64 undone, the sealing not)."""
    record = json.loads(store.get(f"site-cert/{site}").value)
    return base64.b64decode(record["key"])


def test_certificate_round_trip_with_a_sealed_key(store, store_key, ca):
    issued = ca.issue(["blog.example", "*.blog.example", "127.0.0.1"])
    renew_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    saved = save_certificate(store, "blog", "acme", issued.cert_pem, issued.key_pem, renew_at=renew_at,
                             details={"order": "https://ca.example/order/1"})
    assert b"PRIVATE KEY" not in _raw_key_field(store, "blog")
    assert b"PRIVATE KEY" not in store.get("site-cert/blog").value
    loaded = load_certificate(store, "blog")
    assert loaded == saved
    assert loaded.key_pem == issued.key_pem
    assert loaded.chain_pem == issued.cert_pem
    assert loaded.names == ("blog.example", "*.blog.example", "127.0.0.1")
    assert loaded.serial == issued.cert.serial_number
    assert loaded.issuer == ca.cert.subject.rfc4514_string()
    assert loaded.not_after == issued.cert.not_valid_after_utc
    assert loaded.renew_at == renew_at
    assert loaded.details == {"order": "https://ca.example/order/1"}


def test_certificate_key_is_plain_pem_without_a_store_key(store, no_key, ca):
    issued = ca.issue(["blog.example"])
    save_certificate(store, "blog", "import", issued.cert_pem, issued.key_pem)
    assert _raw_key_field(store, "blog") == issued.key_pem  # the control for the sealed case above
    loaded = load_certificate(store, "blog")
    assert (loaded.source, loaded.renew_at, loaded.details) == ("import", None, {})


def test_a_sealed_certificate_without_the_key_is_a_store_error(store, monkeypatch, ca):
    monkeypatch.setenv(ENV_KEY, _random_key())
    issued = ca.issue(["blog.example"])
    save_certificate(store, "blog", "acme", issued.cert_pem, issued.key_pem)
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(StoreError, match=ENV_KEY):
        load_certificate(store, "blog")


def test_saving_a_certificate_publishes_the_certs_topic(store, no_key, ca):
    issued = ca.issue(["blog.example"])
    before = store.topic_version(CERTS_TOPIC)
    save_certificate(store, "blog", "acme", issued.cert_pem, issued.key_pem)
    assert store.topic_version(CERTS_TOPIC) == before + 1
    save_certificate(store, "shop", "acme", issued.cert_pem, issued.key_pem)
    assert store.topic_version(CERTS_TOPIC) == before + 2


def test_missing_and_unreadable_certificates(store, no_key):
    assert load_certificate(store, "nothing") is None
    store.put("site-cert/broken", b"{not json")
    with pytest.raises(StoreError) as caught:
        load_certificate(store, "broken")
    assert "'broken'" in str(caught.value)
    assert "re-import or re-order" in str(caught.value)


def test_status_round_trip(store):
    assert load_status(store, "blog") == CertificateStatus()
    now = datetime.now(UTC).timestamp()
    status = CertificateStatus(
        last_error="rate limited", last_error_at=now, failures=3, next_attempt=now + 600,
        last_success_at=now - timedelta(days=1).total_seconds(), ari_renew_at=now + 86400, ari_next_check=now + 3600,
        renew_requested=True,
    )
    save_status(store, "blog", status)
    assert load_status(store, "blog") == status
    assert load_status(store, "shop") == CertificateStatus()
    assert load_certificate(store, "blog") is None, "a status is not a certificate"
