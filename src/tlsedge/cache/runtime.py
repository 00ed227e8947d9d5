"""One worker's cache: its memory tier, the disk tier it shares, the fills in progress and the purges it applied.

Lookups go memory, then disk; a disk hit is promoted to memory. Stores go to both when the fill completes. The
Vary names of a primary key are remembered here (and kept on disk) so the variant of a request can be computed
before any object is read.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from tlsedge.cache.disk import DiskTier
from tlsedge.cache.fill import Fill
from tlsedge.cache.key import KeyPolicy
from tlsedge.cache.memory import MemoryTier
from tlsedge.cache.purge import Purge
from tlsedge.cache.vary import variant_key

if TYPE_CHECKING:
    from tlsedge.cache.entry import CacheEntry
    from tlsedge.cache.generations import Generations
    from tlsedge.config.cache import CacheStorage, SiteCache

log = logging.getLogger("tlsedge.cache")

_VARIANT = b"\x01"  # between a primary key and its variant in memory-tier keys
_MAX_VARY_NAMES = 100_000  # remembered Vary lists; past it the map starts over (the disk keeps them)
_PURGE_MEMORY = 300.0  # seconds a purge is remembered, to refuse fills that started before it


class SiteCacheRuntime:
    """Per worker, per cached site: the configuration compiled for the request path."""

    __slots__ = ("config", "keys", "runtime", "site", "status_name", "targeted")

    def __init__(self, site: str, config: SiteCache, runtime: CacheRuntime) -> None:
        self.site = site
        self.config = config
        self.runtime = runtime
        self.keys = KeyPolicy(config)
        # RFC 9213: the edge's own targeted field first, then CDN-Cache-Control, both before Cache-Control.
        self.targeted = (config.targeted_field.encode(), b"cdn-cache-control")
        self.status_name = runtime.status_name


class CacheRuntime:
    """The cache state of one worker process."""

    def __init__(self, storage: CacheStorage, state_dir: Path, workers: int, generations: Generations | None) -> None:
        self.status_name = storage.status_name.encode()
        self.memory = MemoryTier(max(storage.memory_size // max(workers, 1), 1024 * 1024))
        root = storage.path if storage.path is not None else state_dir / "cache"
        self.disk = DiskTier(root, storage.disk_size)
        self.generations = generations
        self.vary_of: dict[bytes, tuple[bytes, ...]] = {}
        self.fills: dict[bytes, Fill] = {}  # primary key -> the fill in progress
        self.refreshing: set[bytes] = set()  # primary keys with a background refresh in flight
        self.purges: deque[tuple[float, Purge]] = deque()
        # Keys whose last response could not be stored, until when: forwarded as is, without waiting on a fill.
        self.uncacheable: dict[bytes, float] = {}

    # --- lookups -----------------------------------------------------------------------------------------------

    def lookup(
        self, site: str, key: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[CacheEntry | None, bytes, bool]:
        """The stored response for a request: (entry, body, known) where ``known`` says the primary key exists
        (so a miss is a vary-miss rather than a uri-miss)."""
        names = self.vary_of.get(key)
        if names is None:
            names = self.disk.vary_of(site, key)
            if names is None:
                return None, b"", False
            self._remember_vary(key, names)
        variant = variant_key(names, headers) if names else b""
        memory_key = key + _VARIANT + variant
        found = self.memory.get(memory_key)
        generations = self.generations
        if found is not None:
            entry = found[0]
            if generations is None or entry.generation == generations.current(key):
                return entry, found[1], True
            self.memory.delete(memory_key)
        found = self.disk.get(site, key, variant)
        if found is None:
            return None, b"", bool(names)  # a missing variant of a varying key; else the object is simply gone
        entry, body = found
        if generations is not None:
            entry.generation = generations.current(key)
        self.memory.put(memory_key, entry, body)
        return entry, body, True

    def variant_of(self, key: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        names = self.vary_of.get(key)
        return variant_key(names, headers) if names else b""

    def _remember_vary(self, key: bytes, names: tuple[bytes, ...]) -> None:
        if len(self.vary_of) >= _MAX_VARY_NAMES:
            self.vary_of.clear()
        self.vary_of[key] = names

    # --- fills -------------------------------------------------------------------------------------------------

    def own_fill(self, site: str, key: bytes, limit: int) -> Fill:
        """A fill only its request reads (not registered for collapsing): for a request that stopped waiting on
        another's fill, so its own response is still stored."""
        fill = Fill(self, site, key, limit, time.time())
        if self.generations is not None:
            fill.generation = self.generations.current(key)
        return fill

    def begin_fill(self, site: str, key: bytes, limit: int, *, claim_ttl: float = 0.0) -> Fill | None:
        """Register this worker's fetch of a key. With ``claim_ttl``, also take the disk tier's fill lock so the other
        workers wait for this fetch instead of making their own: None when another worker holds it already."""
        if claim_ttl and not self.disk.claim(site, key, b"", claim_ttl):
            return None
        fill = Fill(self, site, key, limit, time.time())
        fill.claimed = bool(claim_ttl)
        if self.generations is not None:
            fill.generation = self.generations.current(key)
        self.fills[key] = fill
        return fill

    def open_writer(self, fill: Fill) -> None:
        """Start streaming a storable response to a disk temp file (a failure only costs the disk copy)."""
        fill.writer = self.disk.writer(fill.entry)

    def finish_fill(self, fill: Fill) -> None:
        """A complete, storable response: keep it in both tiers unless a purge since it started covers it."""
        if self.fills.get(fill.key) is fill:
            del self.fills[fill.key]
        try:
            self._commit(fill)
        finally:
            self._release(fill)

    def _commit(self, fill: Fill) -> None:
        entry = fill.entry
        invalidated = self.generations is not None and self.generations.current(fill.key) != fill.generation
        if invalidated or self._purged_since(fill.started, entry):
            # RFC 9111 4.4 / purge: what was fetched before an invalidation of the key must not be kept.
            if fill.writer is not None:
                fill.writer.abort()
                fill.writer = None
            return
        self.store(entry, fill.body())
        if fill.writer is not None:
            writer, fill.writer = fill.writer, None
            if not writer.commit(entry):
                log.error("cache: could not write %s to disk under %s: %s", entry.url.decode("latin-1"),
                          self.disk.root, writer.error or "the object changed meanwhile")

    def remember_uncacheable(self, key: bytes, until: float) -> None:
        if len(self.uncacheable) >= _MAX_VARY_NAMES:
            self.uncacheable.clear()
        self.uncacheable[key] = until

    def drop_fill(self, fill: Fill) -> None:
        if self.fills.get(fill.key) is fill:
            del self.fills[fill.key]
        self._release(fill)

    def _release(self, fill: Fill) -> None:
        if fill.claimed:
            fill.claimed = False
            self.disk.release(fill.site, fill.key, b"")

    def store(self, entry: CacheEntry, body: bytes) -> None:
        """Keep a response in this worker's memory tier (the disk copy is written by the fill's writer)."""
        self._remember_vary(entry.key, entry.vary)
        if self.generations is not None:
            entry.generation = self.generations.current(entry.key)
        entry.block = b""
        self.memory.put(entry.key + _VARIANT + entry.variant, entry, body)

    def updated(self, entry: CacheEntry, body: bytes) -> None:
        """Headers refreshed by a 304: both tiers get the new metadata."""
        self.store(entry, body)
        self.disk.update(entry)

    def invalidate(self, site: str, key: bytes) -> None:
        """RFC 9111 section 4.4: every stored variant of the key goes, in this worker and (by generation) in all."""
        if self.generations is not None:
            self.generations.bump(key)
        names = self.vary_of.pop(key, None)
        if names is not None and not names:
            self.memory.delete(key + _VARIANT)
        elif names:
            self.memory.purge(lambda entry: entry.key == key)
        self.disk.delete(site, key)

    # --- purges ------------------------------------------------------------------------------------------------

    def purge_memory(self, purge: Purge) -> int:
        """Apply a purge to this worker's memory tier and remember it for the fills still running."""
        now = time.time()
        self.purges.append((now, purge))
        while self.purges and now - self.purges[0][0] > _PURGE_MEMORY:
            self.purges.popleft()
        for fill in list(self.fills.values()):
            if fill.entry is not None and purge.matches(fill.entry):
                fill.fail("purged")
        return self.memory.purge(purge.matches)

    def _purged_since(self, started: float, entry: CacheEntry) -> bool:
        return any(when >= started and purge.matches(entry) for when, purge in self.purges)
