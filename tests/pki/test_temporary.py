"""Temporary certificates from the store's own CA: issued when a site has nothing, renewed at half life, never
replacing a real (ACME or imported) certificate; the CA itself is made once per store."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tlsedge.pki.local_ca import LocalCA
from tlsedge.pki.site_certs import load_certificate, save_certificate
from tlsedge.pki.temporary import LIFETIME, ensure_temporary, needs_temporary, temporary_ca
from tlsedge.store import SqliteStore, open_store
from tlsedge.store.secrets import ENV_KEY

HOSTS = ["blog.example", "*.blog.example"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def test_issues_a_temporary_certificate_for_every_host(store):
    issued = ensure_temporary(store, "blog", HOSTS)
    assert issued.source == "temporary"
    assert issued.names == tuple(HOSTS)
    assert "tlsedge temporary" in issued.issuer
    leaf = issued.leaf
    leaf.verify_directly_issued_by(temporary_ca(store).cert)
    now = datetime.now(UTC)
    assert issued.not_before <= now < issued.not_after
    assert issued.not_after - issued.not_before <= LIFETIME + timedelta(minutes=10)
    stored = load_certificate(store, "blog")
    assert (stored.serial, stored.key_pem) == (issued.serial, issued.key_pem)


def test_keeps_a_young_temporary_certificate(store):
    first = ensure_temporary(store, "blog", HOSTS)
    assert ensure_temporary(store, "blog", HOSTS).serial == first.serial


def _save_temporary(store: SqliteStore, age: timedelta, lifetime: timedelta = LIFETIME) -> int:
    start = datetime.now(UTC) - age
    issued = temporary_ca(store).issue(HOSTS, not_before=start, not_after=start + lifetime)
    return save_certificate(store, "blog", "temporary", issued.cert_pem, issued.key_pem).serial


def test_reissues_a_temporary_certificate_past_half_its_life(store):
    old = _save_temporary(store, age=LIFETIME * 0.75)
    renewed = ensure_temporary(store, "blog", HOSTS)
    assert renewed.serial != old
    assert renewed.source == "temporary"
    assert datetime.now(UTC) - renewed.not_before < timedelta(minutes=10)
    assert load_certificate(store, "blog").serial == renewed.serial


def test_keeps_a_temporary_certificate_before_half_its_life(store):
    kept = _save_temporary(store, age=LIFETIME * 0.4)
    assert ensure_temporary(store, "blog", HOSTS).serial == kept


def test_reissues_an_expired_temporary_certificate(store):
    old = _save_temporary(store, age=timedelta(days=10))
    assert ensure_temporary(store, "blog", HOSTS).serial != old


@pytest.mark.parametrize("source", ["acme", "import"])
def test_never_replaces_a_real_certificate(store, source):
    public_ca = LocalCA.create("a public CA")
    start = datetime.now(UTC) - timedelta(days=100)
    expired = public_ca.issue(["blog.example"], not_before=start, not_after=start + timedelta(days=90))
    saved = save_certificate(store, "blog", source, expired.cert_pem, expired.key_pem)
    kept = ensure_temporary(store, "blog", HOSTS)
    assert (kept.source, kept.serial) == (source, saved.serial)
    assert load_certificate(store, "blog").source == source


def test_needs_temporary_turns_at_half_life(store):
    issued = ensure_temporary(store, "blog", HOSTS)
    half = issued.not_before + (issued.not_after - issued.not_before) / 2
    assert needs_temporary(None) is True
    assert needs_temporary(issued, half - timedelta(seconds=1)) is False
    assert needs_temporary(issued, half) is True
    real = replace(issued, source="acme")
    assert needs_temporary(real, issued.not_after + timedelta(days=1)) is False


def test_temporary_ca_is_made_once_per_store(tmp_path):
    first = open_store(tmp_path)
    second = open_store(tmp_path)  # another process's view of the same file
    ca = temporary_ca(first)
    assert temporary_ca(first).cert.serial_number == ca.cert.serial_number
    assert temporary_ca(second).cert.serial_number == ca.cert.serial_number
    assert temporary_ca(second).key.private_numbers() == ca.key.private_numbers()
    assert "tlsedge temporary" in ca.cert.subject.rfc4514_string()
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    first.close()
    second.close()


def test_temporary_ca_is_separate_per_store(tmp_path):
    one, other = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert temporary_ca(one).cert.serial_number != temporary_ca(other).cert.serial_number
    one.close()
    other.close()


def test_temporary_ca_key_is_sealed_with_the_store_key(store, monkeypatch):
    monkeypatch.setenv(ENV_KEY, base64.b64encode(bytes(range(32))).decode())
    ca = temporary_ca(store)
    record = json.loads(store.get("temporary-ca").value)
    assert b"PRIVATE KEY" not in base64.b64decode(record["key"])
    assert temporary_ca(store).key.private_numbers() == ca.key.private_numbers()
