"""The embedded store: one SQLite file under the state directory, shared by the control process and the workers.

Why SQLite: it needs no server, survives ``kill -9`` (WAL journal), and lets several processes read while one writes.
The file is created with mode 0600 before SQLite opens it (SQLite gives its -wal and -shm files the same mode), since
it holds private keys. Each process opens its own connection: a connection must never cross a ``fork``, so the
connection is reopened whenever the process id changes. Calls are serialized by a lock, so the certificate manager's
threads can share one store object.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from tlsedge.store.base import Entry, StoreError

FILE_NAME = "store.sqlite3"
_BUSY_TIMEOUT_MS = 5000
_OPEN_RETRY = 0.02  # seconds between two tries to open a file another process is setting up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""


class SqliteStore:
    """The :class:`~tlsedge.store.base.Store` interface over one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self._db = self._open()
            self._pid = os.getpid()
        return self._db

    def _open(self) -> sqlite3.Connection:
        """Open (and on first use create) the file; processes opening a new file at once are retried, not failed.

        Switching a fresh file to WAL and creating the tables need the write lock, and SQLite answers "database is
        locked" at once, without its busy handler, when two connections upgrade from reading at the same moment
        (workers of a new edge starting together did): such an open is tried again until the busy timeout.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._try_open()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open the store {str(self.path)!r}: {exc}") from None
                time.sleep(_OPEN_RETRY)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the store {str(self.path)!r}: {exc}") from None

    def _try_open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store {str(self.path)!r}: {exc}") from None

    def _transaction(self, steps: list[tuple[str, tuple]]) -> list[list[tuple]]:
        """Run statements in one write transaction (BEGIN IMMEDIATE: writers queue instead of failing late)."""
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    results = [db.execute(sql, args).fetchall() for sql, args in steps]
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return results
            except sqlite3.Error as exc:
                raise StoreError(f"store {str(self.path)!r}: {exc}") from None

    def get(self, key: str) -> Entry | None:
        rows = self._run(
            "SELECT value, version, updated FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)",
            (key, time.time()),
        )
        return Entry(bytes(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        now = time.time()
        expires = now + ttl if ttl is not None else None
        (rows,) = self._transaction([(
            "INSERT INTO kv (key, value, version, updated, expires) VALUES (?, ?, 1, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = kv.version + 1, "
            "updated = excluded.updated, expires = excluded.expires RETURNING version",
            (key, value, now, expires),
        )])
        return rows[0][0]

    def put_if_version(self, key: str, value: bytes, version: int) -> bool:
        now = time.time()
        if version == 0:
            steps = [
                ("DELETE FROM kv WHERE key = ? AND expires IS NOT NULL AND expires <= ?", (key, now)),
                ("INSERT OR IGNORE INTO kv (key, value, version, updated) VALUES (?, ?, 1, ?) RETURNING version",
                 (key, value, now)),
            ]
        else:
            steps = [(
                "UPDATE kv SET value = ?, version = version + 1, updated = ?, expires = NULL "
                "WHERE key = ? AND version = ? AND (expires IS NULL OR expires > ?) RETURNING version",
                (value, now, key, version, now),
            )]
        return bool(self._transaction(steps)[-1])

    def delete(self, key: str) -> bool:
        (rows,) = self._transaction([("DELETE FROM kv WHERE key = ? RETURNING key", (key,))])
        return bool(rows)

    def scan(self, prefix: str) -> dict[str, Entry]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._run(
            "SELECT key, value, version, updated FROM kv WHERE key LIKE ? ESCAPE '\\' "
            "AND (expires IS NULL OR expires > ?) ORDER BY key",
            (escaped + "%", time.time()),
        )
        return {key: Entry(bytes(value), version, updated) for key, value, version, updated in rows}

    def acquire(self, lock: str, owner: str, ttl: float) -> bool:
        now = time.time()
        (rows,) = self._transaction([(
            "INSERT INTO locks (name, owner, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
            "WHERE locks.owner = excluded.owner OR locks.expires <= ? RETURNING owner",
            (lock, owner, now + ttl, now),
        )])
        return bool(rows)

    def release(self, lock: str, owner: str) -> None:
        self._transaction([("DELETE FROM locks WHERE name = ? AND owner = ?", (lock, owner))])

    def publish(self, topic: str) -> int:
        (rows,) = self._transaction([(
            "INSERT INTO topics (name, version) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET version = topics.version + 1 RETURNING version",
            (topic,),
        )])
        return rows[0][0]

    def topic_version(self, topic: str) -> int:
        rows = self._run("SELECT version FROM topics WHERE name = ?", (topic,))
        return rows[0][0] if rows else 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None


def open_store(state_dir: Path) -> SqliteStore:
    """The edge's store under ``state_dir`` (opened lazily, on first use, in each process)."""
    return SqliteStore(Path(state_dir) / FILE_NAME)
