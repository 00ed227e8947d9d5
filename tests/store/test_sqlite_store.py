"""SqliteStore against real SQLite files in tmp_path: versions, expiry, compare-and-set, scans, locks, topics, file
modes, and several processes sharing one file (forked children, as the workers are)."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsedge.store import SqliteStore, StoreError, open_store
from tlsedge.store.sqlite import FILE_NAME

_FORK = multiprocessing.get_context("fork")
_EXPIRED = 0.001  # a ttl that has surely lapsed after _lapse()


def _lapse() -> None:
    """Let a value written with ttl=_EXPIRED expire (a few milliseconds, far under the brief's 50 ms ceiling)."""
    time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path / "state")
    yield opened
    opened.close()


# --- values and versions ----------------------------------------------------------------------------------------------


def test_versions_count_every_write_of_a_key(store):
    assert store.get("cert/blog") is None
    assert [store.put("cert/blog", b"v%d" % i) for i in range(1, 4)] == [1, 2, 3]
    entry = store.get("cert/blog")
    assert (entry.value, entry.version) == (b"v3", 3)
    assert abs(entry.updated - time.time()) < 5
    assert store.put("cert/shop", b"other") == 1  # versions are per key


def test_values_are_bytes_kept_exactly(store):
    blob = bytes(range(256)) * 4
    store.put("blob", blob)
    assert store.get("blob").value == blob


def test_a_value_with_a_ttl_expires(store):
    store.put("answer", b"soon gone", ttl=_EXPIRED)
    store.put("kept", b"stays", ttl=60)
    _lapse()
    assert store.get("answer") is None
    assert store.get("kept").value == b"stays"
    assert list(store.scan("")) == ["kept"]


def test_a_put_without_ttl_makes_an_expiring_value_permanent(store):
    store.put("k", b"1", ttl=_EXPIRED)
    store.put("k", b"2")
    _lapse()
    assert store.get("k").value == b"2"


def test_put_if_version_zero_only_writes_an_absent_key(store):
    assert store.put_if_version("ca", b"first", 0) is True
    assert store.put_if_version("ca", b"second", 0) is False
    entry = store.get("ca")
    assert (entry.value, entry.version) == (b"first", 1)


def test_put_if_version_treats_an_expired_key_as_absent(store):
    store.put("ca", b"old", ttl=_EXPIRED)
    _lapse()
    assert store.put_if_version("ca", b"new", 0) is True
    assert store.get("ca").value == b"new"
    _lapse()
    assert store.get("ca").value == b"new", "a compare-and-set write must not inherit the old ttl"


def test_put_if_version_with_the_current_version_wins_and_a_stale_one_loses(store):
    store.put("acct", b"a")  # version 1
    assert store.put_if_version("acct", b"b", 1) is True
    assert store.get("acct").version == 2
    assert store.put_if_version("acct", b"c", 1) is False  # someone else wrote version 2 meanwhile
    assert store.put_if_version("missing", b"x", 3) is False
    assert store.get("acct").value == b"b"
    assert store.get("missing") is None


def test_put_if_version_does_not_resurrect_an_expired_key(store):
    store.put("lease", b"mine", ttl=_EXPIRED)  # version 1
    _lapse()
    assert store.get("lease") is None
    assert store.put_if_version("lease", b"late", 1) is False
    assert store.get("lease") is None


def test_delete(store):
    store.put("k", b"v")
    assert store.delete("k") is True
    assert store.get("k") is None
    assert store.delete("k") is False
    assert store.put("k", b"again") == 1  # a deleted key starts over


# --- scans ------------------------------------------------------------------------------------------------------------


def test_scan_returns_live_keys_with_the_prefix_in_order(store):
    for key in ("site-cert/shop", "site-cert/blog", "site-cert-status/blog", "site/x"):
        store.put(key, key.encode())
    store.put("site-cert/gone", b"x", ttl=_EXPIRED)
    _lapse()
    found = store.scan("site-cert/")
    assert list(found) == ["site-cert/blog", "site-cert/shop"]
    assert found["site-cert/blog"].value == b"site-cert/blog"
    assert found["site-cert/blog"].version == 1


def test_scan_prefix_wildcards_are_literal(store):
    for key in ("a_b/1", "axb/1", "a%c/1", "abc/1", "a\\d/1", "aXd/1"):
        store.put(key, b"")
    assert list(store.scan("a_b")) == ["a_b/1"]
    assert list(store.scan("a%")) == ["a%c/1"]
    assert list(store.scan("a\\")) == ["a\\d/1"]
    assert store.scan("a_") == {"a_b/1": store.get("a_b/1")}
    assert store.scan("%") == {}
    assert store.scan("_") == {}


# --- locks ------------------------------------------------------------------------------------------------------------


def test_lock_is_refused_to_another_owner_until_it_lapses(store):
    assert store.acquire("acme/blog", "control-1", ttl=_EXPIRED) is True
    _lapse()
    assert store.acquire("acme/blog", "control-2", ttl=60) is True  # the first holder's lock lapsed
    assert store.acquire("acme/blog", "control-1", ttl=60) is False


def test_owner_reacquiring_extends_the_lock(store):
    assert store.acquire("acme/blog", "me", ttl=_EXPIRED) is True
    assert store.acquire("acme/blog", "me", ttl=60) is True
    _lapse()  # the first ttl is over, the extension is not
    assert store.acquire("acme/blog", "other", ttl=60) is False


def test_release_by_a_non_owner_does_nothing(store):
    assert store.acquire("acme/blog", "me", ttl=60)
    store.release("acme/blog", "other")
    assert store.acquire("acme/blog", "other", ttl=60) is False
    store.release("acme/blog", "me")
    assert store.acquire("acme/blog", "other", ttl=60) is True


def test_locks_are_independent_of_keys_and_of_each_other(store):
    assert store.acquire("one", "me", ttl=60)
    assert store.acquire("two", "other", ttl=60)
    assert store.get("one") is None


# --- topics -----------------------------------------------------------------------------------------------------------


def test_topics_count_publications(store):
    assert store.topic_version("certs") == 0
    assert store.publish("certs") == 1
    assert store.publish("certs") == 2
    assert store.topic_version("certs") == 2
    assert store.topic_version("certs-renew") == 0
    assert store.publish("certs-renew") == 1
    assert store.topic_version("certs") == 2


# --- files ------------------------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_and_journal_files_are_private(tmp_path):
    old_umask = os.umask(0o022)  # a common umask, under which files are world-readable unless the code says otherwise
    try:
        store = open_store(tmp_path / "state")
        store.put("k", b"secret")
        db = tmp_path / "state" / FILE_NAME
        files = [db, db.with_name(FILE_NAME + "-wal"), db.with_name(FILE_NAME + "-shm")]
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
        assert _mode(tmp_path / "state") == 0o700
        store.close()
    finally:
        os.umask(old_umask)


def test_an_existing_world_readable_file_is_made_private(tmp_path):
    db = tmp_path / FILE_NAME
    db.touch()
    db.chmod(0o644)
    store = SqliteStore(db)
    store.put("k", b"v")
    assert _mode(db) == 0o600
    store.close()


def test_unopenable_location_is_a_store_error_naming_the_path(tmp_path):
    state = tmp_path / "state"
    state.write_text("not a directory")
    store = open_store(state)
    with pytest.raises(StoreError) as caught:
        store.get("k")
    assert str(state / FILE_NAME) in str(caught.value)
    assert "cannot open the store" in str(caught.value)


def test_reopening_the_file_sees_the_data(tmp_path):
    first = open_store(tmp_path)
    first.put("k", b"v")
    first.publish("certs")
    first.close()
    second = open_store(tmp_path)
    assert second.get("k").value == b"v"
    assert second.topic_version("certs") == 1
    second.close()


# --- several processes ------------------------------------------------------------------------------------------------


def _writer(path: Path, name: str, count: int, errors) -> None:
    store = SqliteStore(path)
    try:
        for i in range(count):
            store.put(f"{name}/{i}", b"x")
            store.put("shared", name.encode())
            store.publish("hits")
    except Exception as exc:  # reported to the parent, which fails the test with the message
        errors.put(f"{name}: {exc}")


def test_two_processes_write_concurrently_without_lock_errors(tmp_path):
    path = tmp_path / FILE_NAME
    SqliteStore(path).put("created", b"")  # create the file and switch it to WAL before the race
    errors = _FORK.Queue()
    writers = [_FORK.Process(target=_writer, args=(path, name, 200, errors)) for name in ("w1", "w2")]
    for process in writers:
        process.start()
    for process in writers:
        process.join(30)
    assert [process.exitcode for process in writers] == [0, 0]
    assert errors.empty(), errors.get()
    store = SqliteStore(path)
    assert len(store.scan("w1/")) == 200
    assert len(store.scan("w2/")) == 200
    assert store.get("shared").version == 400  # no write lost
    assert store.topic_version("hits") == 400
    store.close()


def _child_writes(store: SqliteStore, errors) -> None:
    try:
        # White-box on purpose: the parent's connection must not be used across fork, and nothing else tells.
        inherited = store._db
        assert inherited is not None
        store.put("from-child", str(os.getpid()).encode())
        assert store._db is not inherited, "the child used the parent's SQLite connection"
    except BaseException as exc:
        errors.put(repr(exc))


def test_a_forked_child_reopens_the_connection(tmp_path):
    store = open_store(tmp_path)
    store.put("from-parent", b"1")  # the parent's connection is open now
    errors = _FORK.Queue()
    child = _FORK.Process(target=_child_writes, args=(store, errors))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert errors.empty(), errors.get()
    assert store.get("from-child").value == str(child.pid).encode()
    assert store.put("from-parent", b"2") == 2  # the parent's own connection still works
    store.close()


def _open_at_once(path: Path, barrier, results) -> None:
    store = SqliteStore(path)
    barrier.wait()
    try:
        store.topic_version("x")
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path):
    """Workers of a new edge open the fresh store together: SQLite refuses one of two simultaneous WAL/schema
    set-ups with "database is locked" without waiting, which the open must retry (before: ~1 in 100 opens failed)."""
    outcomes = []
    for round_ in range(40):
        barrier, results = _FORK.Barrier(8), _FORK.Queue()
        path = tmp_path / str(round_) / FILE_NAME
        procs = [_FORK.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=30)
        outcomes += [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * len(outcomes)
