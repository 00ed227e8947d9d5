"""Signing keys in a real SQLite store: created once by racing workers, rotated without breaking live signatures,
sealed at rest, and failing closed (StoreUnavailable) when the store cannot be read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsedge.guard.signing import (
    KEYS_KEY,
    KEYS_TOPIC,
    MAC_BYTES,
    SigningKeys,
    StoreUnavailable,
    load_or_create,
    rotate,
)
from tlsedge.store import SqliteStore, open_store
from tlsedge.store.secrets import ENV_KEY, unseal


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def _secrets(store: SqliteStore) -> dict[str, bytes]:
    entry = store.get(KEYS_KEY)
    assert entry is not None
    document = json.loads(unseal(KEYS_KEY, entry.value))
    return {kid: base64.b64decode(record["secret"]) for kid, record in document["keys"].items()}


def test_first_load_creates_one_key_that_later_loads_share(store: SqliteStore) -> None:
    first = load_or_create(store)
    second = load_or_create(store)
    assert first.current == second.current and first.kids == (first.current,)
    kid, mac = first.sign(b"payload")
    assert kid == first.current and len(mac) == MAC_BYTES
    assert second.verify(kid, b"payload", mac)
    assert not second.verify(kid, b"payloaD", mac)


def test_mac_is_truncated_hmac_sha256_of_the_stored_secret(store: SqliteStore) -> None:
    keys = load_or_create(store)
    secret = _secrets(store)[keys.current]
    assert len(secret) == 32
    for payload in (b"", b"x", b"y" * 200):
        assert keys.mac(keys.current, payload) == hmac.digest(secret, payload, "sha256")[:MAC_BYTES]
    long_secret = os.urandom(100)  # longer than a SHA-256 block: HMAC hashes it first
    other = SigningKeys("k", {"k": long_secret})
    assert other.mac("k", b"abc") == hmac.new(long_secret, b"abc", hashlib.sha256).digest()[:MAC_BYTES]


def test_unknown_kid_and_bad_macs_are_refused(store: SqliteStore) -> None:
    keys = load_or_create(store)
    kid, mac = keys.sign(b"p")
    assert keys.mac("nosuch", b"p") is None
    assert not keys.verify("nosuch", b"p", mac)
    assert not keys.verify(kid, b"p", mac[:-1])
    assert not keys.verify(kid, b"p", mac + b"\0")
    assert not keys.verify(kid, b"p", bytes([mac[0] ^ 1]) + mac[1:])
    assert not keys.knows("nosuch") and keys.knows(kid)


def test_workers_racing_to_create_agree_on_one_key(tmp_path: Path) -> None:
    stores = [open_store(tmp_path) for _ in range(8)]
    for store in stores:  # each worker has its store open (schema made, WAL on) before the race, as in `serve`
        store.get("warm-up")
    barrier = threading.Barrier(len(stores))
    results: list[str] = []

    def worker(store: SqliteStore) -> None:
        barrier.wait()
        try:
            results.append(load_or_create(store).current)
        except StoreUnavailable as exc:
            results.append(f"failed: {exc}")

    threads = [threading.Thread(target=worker, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for store in stores:
        store.close()
    assert len(results) == 8 and len(set(results)) == 1, results
    assert list(_secrets(open_store(tmp_path))) == results[:1]


def test_rotation_keeps_old_signatures_until_the_key_is_dropped(store: SqliteStore) -> None:
    worker = load_or_create(store)
    old_kid, old_mac = worker.sign(b"cookie")
    assert worker.refresh(store) is False  # nothing published: one topic read, no reload

    rotated = rotate(store, keep=2)
    assert rotated.current != old_kid and set(rotated.kids) == {old_kid, rotated.current}
    assert store.topic_version(KEYS_TOPIC) >= 1
    assert worker.refresh(store) is True
    assert worker.current == rotated.current
    assert worker.verify(old_kid, b"cookie", old_mac)  # live cookies survive the rotation
    new_kid, new_mac = worker.sign(b"cookie")
    assert new_kid == rotated.current and rotated.verify(new_kid, b"cookie", new_mac)

    rotate(store, keep=2)
    assert worker.refresh(store) is True
    assert not worker.knows(old_kid) and not worker.verify(old_kid, b"cookie", old_mac)  # dropped
    assert worker.verify(new_kid, b"cookie", new_mac)

    rotate(store, keep=1)
    assert worker.refresh(store) is True
    assert worker.kids == (worker.current,) and not worker.verify(new_kid, b"cookie", new_mac)
    with pytest.raises(ValueError, match="at least 1"):
        rotate(store, keep=0)


def test_rotate_on_an_empty_store_creates_the_record(store: SqliteStore) -> None:
    rotated = rotate(store)
    assert load_or_create(store).current == rotated.current


def test_keys_are_sealed_when_a_store_key_is_set(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KEY, base64.b64encode(os.urandom(32)).decode())
    keys = load_or_create(store)
    raw = store.get(KEYS_KEY)
    assert raw is not None and b"secret" not in raw.value and raw.value.startswith(b"tlsedge-sealed-v1:")
    assert load_or_create(store).current == keys.current
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(StoreUnavailable, match=ENV_KEY):
        load_or_create(store)


def test_damaged_record_is_reported_with_what_to_do(store: SqliteStore) -> None:
    store.put(KEYS_KEY, b'{"current": "a", "keys": {}}')
    with pytest.raises(StoreUnavailable, match=r"guard/signing-keys.*damaged.*delete it"):
        load_or_create(store)
    store.put(KEYS_KEY, b"not json")
    with pytest.raises(StoreUnavailable, match="damaged"):
        load_or_create(store)


def test_unreadable_store_fails_closed_and_refresh_keeps_loaded_keys(store: SqliteStore, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    broken = open_store(blocker)  # its parent "directory" is a file: every call fails
    with pytest.raises(StoreUnavailable, match="cannot open the store"):
        load_or_create(broken)
    keys = load_or_create(store)
    kid, mac = keys.sign(b"p")
    with pytest.raises(StoreUnavailable):
        keys.refresh(broken)
    assert keys.verify(kid, b"p", mac)


def test_generated_keys_are_independent() -> None:
    one, two = SigningKeys.generate(), SigningKeys.generate()
    kid, mac = one.sign(b"p")
    assert one.verify(kid, b"p", mac) and not two.verify(kid, b"p", mac)
    assert "." not in one.current and len(one.current) == 6
    with pytest.raises(ValueError, match="current key"):
        SigningKeys("missing", {"k": b"s"})
