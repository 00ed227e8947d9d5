"""The store interface: versioned keys, expiring locks and change topics.

Why this shape: everything the processes of an edge share (certificates, ACME accounts and challenge answers, the
origin CA, revocations) fits in a key/value map whose values are opaque bytes. Locks make sure one process (later: one
edge of a cluster) does a job such as an ACME order; topics are counters that readers poll cheaply to learn that
something changed, which is all the "publish/subscribe" a worker's one-second sweep needs. A Redis backend can
implement the same five verbs with GET/SET, SET NX PX and INCR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot be opened, read or written; the message names the file or server and the reason."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored value and its version (incremented on every write of the key)."""

    value: bytes
    version: int
    updated: float  # wall-clock seconds of the last write


class Store(Protocol):
    """What every backend provides. Keys are short ASCII paths such as ``cert/blog``; values are bytes."""

    def get(self, key: str) -> Entry | None:
        """The key's entry, or None when it is absent or expired."""

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write a value (expiring after ``ttl`` seconds when given); return its new version."""

    def put_if_version(self, key: str, value: bytes, version: int) -> bool:
        """Write only if the key's version is still ``version`` (0: only if absent); False when someone else won."""

    def delete(self, key: str) -> bool:
        """Remove a key; True when it existed."""

    def scan(self, prefix: str) -> dict[str, Entry]:
        """Every live key starting with ``prefix``, sorted by key."""

    def acquire(self, lock: str, owner: str, ttl: float) -> bool:
        """Take (or extend, when already ours) a lock that lapses after ``ttl`` seconds unless extended."""

    def release(self, lock: str, owner: str) -> None:
        """Give up a lock we hold; a lock held by someone else is left alone."""

    def publish(self, topic: str) -> int:
        """Announce a change: bump the topic's counter and return it."""

    def topic_version(self, topic: str) -> int:
        """The topic's counter (0 before the first publish): readers compare it with the value they last saw."""

    def close(self) -> None:
        """Release the connection (a forked process opens its own)."""
