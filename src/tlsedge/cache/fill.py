"""A response being stored while it streams: the object requests for the same key wait on and read from.

The request that missed first (the leader) forwards to the origin; requests for the same key that arrive meanwhile
(followers) register here instead of forwarding too. When the head arrives the fill knows whether the response can be
stored: if not, followers are released to fetch for themselves (collapsing only pays for cacheable answers); if so,
followers with a matching variant read the body as it arrives, each at its own pace, and the body is written to the
disk tier as it streams. The fill belongs to no client connection: when the leader's client goes away the origin
connection is handed to the fill (see `refresh.OriginFeed`), so followers still get their response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tlsedge.cache.disk import DiskWriter
    from tlsedge.cache.entry import CacheEntry
    from tlsedge.cache.runtime import CacheRuntime

log = logging.getLogger("tlsedge.cache")

PENDING, STREAMING, DONE, FAILED = 0, 1, 2, 3


class FillReader(Protocol):
    """A request reading a fill: told when more body arrived, when it ended, and when it cannot be used."""

    def fill_progress(self, fill: Fill) -> None: ...
    def fill_released(self, fill: Fill, reason: str) -> None: ...


class Fill:
    """One origin response for one primary key, kept in memory while it streams (bounded by max_object_size)."""

    __slots__ = (
        "chunks",
        "claimed",
        "entry",
        "expected",
        "generation",
        "joined",
        "key",
        "limit",
        "readers",
        "runtime",
        "site",
        "size",
        "started",
        "state",
        "waiting",
        "writer",
    )

    def __init__(self, runtime: CacheRuntime, site: str, key: bytes, limit: int, started: float) -> None:
        self.runtime = runtime
        self.site = site
        self.key = key
        self.claimed = False  # holds the disk tier's cross-worker fill lock of the key
        self.limit = limit
        self.started = started  # wall clock: a purge issued after this instant means the result must not be kept
        self.generation = 0  # the key's invalidation generation when the fetch started (see cache/generations.py)
        self.state = PENDING
        self.entry: CacheEntry | None = None
        self.expected: int | None = None  # Content-Length of the response, when it has one
        self.chunks: list[bytes] = []
        self.joined: bytes | None = None  # the whole body, once complete
        self.size = 0
        self.writer: DiskWriter | None = None
        # Followers waiting for the head, each with the variant key of its own request fields.
        self.waiting: list[tuple[FillReader, Callable[[tuple[bytes, ...]], bytes]]] = []
        self.readers: list[FillReader] = []  # followers streaming the body

    def body(self) -> bytes:
        """The whole body, once complete (readers of a growing fill read `chunks` by index instead)."""
        if self.joined is None:
            self.joined = b"".join(self.chunks)
        return self.joined

    def wait(self, reader: FillReader, variant_of: Callable[[tuple[bytes, ...]], bytes]) -> None:
        """A follower: called back once the head says whether it can share this response (at once when the head is
        already in)."""
        if self.state == PENDING:
            self.waiting.append((reader, variant_of))
        else:
            self._admit(reader, variant_of)

    def forget(self, reader: FillReader) -> None:
        """A follower gave up (its client left, or it timed out)."""
        self.waiting = [item for item in self.waiting if item[0] is not reader]
        if reader in self.readers:
            self.readers.remove(reader)

    def start(self, entry: CacheEntry, expected: int | None, writer: DiskWriter | None) -> None:
        """The head arrived and the response is storable: followers of the same variant become readers.

        Followers stream it only when its length is known in advance: a response without Content-Length may turn
        out too large to keep, and then a follower that already sent part of it could not be helped.
        """
        self.state = STREAMING
        self.entry = entry
        self.expected = expected
        self.writer = writer
        waiting, self.waiting = self.waiting, []
        for reader, variant_of in waiting:
            self._admit(reader, variant_of)

    def _admit(self, reader: FillReader, variant_of: Callable[[tuple[bytes, ...]], bytes]) -> None:
        """A follower of a streaming fill: released (another variant), reading now, or waiting for the end."""
        entry = self.entry
        if variant_of(entry.vary) != entry.variant:
            reader.fill_released(self, "vary-miss")
        elif self.expected is None:
            self.waiting.append((reader, variant_of))  # read it once it is complete
        else:
            self.readers.append(reader)
            reader.fill_progress(self)

    def add(self, data: bytes) -> bool:
        """More body; False when the response outgrew the limit (it is then dropped, readers released)."""
        if self.state != STREAMING:
            return False
        self.size += len(data)
        if self.size > self.limit or (self.expected is not None and self.size > self.expected):
            self.fail("too-big")
            return False
        self.chunks.append(data)
        if self.writer is not None:
            self.writer.write(data)
        for reader in self.readers:
            reader.fill_progress(self)
        return True

    def complete(self) -> None:
        """The whole body arrived: store it, and let every follower read it."""
        if self.state != STREAMING:
            return
        entry = self.entry
        if self.expected is not None and self.size != self.expected:
            self.fail("truncated")
            return
        entry.body_size = self.size
        self.state = DONE
        self.runtime.finish_fill(self)
        readers, self.readers = self.readers, []
        waiting, self.waiting = self.waiting, []
        for reader in readers:
            reader.fill_progress(self)
        for reader, _ in waiting:
            self.readers.append(reader)
            reader.fill_progress(self)
        self.readers = []

    def uncacheable(self, reason: str) -> None:
        """The head says the response cannot be stored: nobody shares it."""
        self.fail(reason)

    def fail(self, reason: str) -> None:
        """Nothing is stored; followers that have not started fetch for themselves, others are cut off."""
        if self.state in (DONE, FAILED):
            return
        self.state = FAILED
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self.chunks = []
        self.runtime.drop_fill(self)
        waiting, self.waiting = self.waiting, []
        readers, self.readers = self.readers, []
        for reader, _ in waiting:
            reader.fill_released(self, reason)
        for reader in readers:
            reader.fill_released(self, reason)
