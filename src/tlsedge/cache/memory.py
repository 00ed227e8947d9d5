"""The memory tier: one per worker, a byte budget, S3-FIFO eviction.

Why S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23) rather than LRU: most objects a
CDN sees are requested once; LRU lets a burst of them (a crawler, a scan) flush the objects that are hit all day.
S3-FIFO puts new objects in a small FIFO (~10 % of the bytes); those not requested again while they sit there leave
through it and only their key is remembered in a ghost FIFO. An object requested again before reaching the small
queue's end moves to the main FIFO; a key found in the ghost goes straight to main. Main evicts in FIFO order but
gives an object that was requested since its last pass another round (a frequency counter 0..3, decremented per round,
i.e. CLOCK with a small counter). A hit only bumps the counter: no list is touched, so ``get`` is one dict lookup.

Byte accounting: each object is charged its body plus an estimate of what its headers and Python objects cost, the
queue targets are in bytes, and eviction runs before an insertion until it fits, so ``used`` never exceeds the budget.
The ghost remembers at most as many keys (their hashes: a collision only mis-files one admission) as the tier holds
objects, the paper's "as many entries as main" adapted to a main queue that starts empty.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from tlsedge.cache.entry import CacheEntry

_ENTRY_OVERHEAD = 600  # the CacheEntry, its index slots, the node, the value tuple and the key/url objects
_FIELD_OVERHEAD = 120  # per header: a tuple and two bytes objects
_SMALL_SHARE = 0.10  # of the budget, for the small (probation) queue
_MAX_FREQ = 3


class _Node:
    """One resident object: the tuple ``get`` returns, its charged size, its frequency and the queue it is in."""

    __slots__ = ("freq", "main", "size", "value")

    def __init__(self, value: tuple[CacheEntry, bytes], size: int, freq: int, main: bool) -> None:
        self.value = value
        self.size = size
        self.freq = freq
        self.main = main


def charged_size(entry: CacheEntry, body: bytes) -> int:
    """The bytes an object is charged: its body and an estimate of the memory its metadata takes."""
    size = _ENTRY_OVERHEAD + len(body) + len(entry.key) + len(entry.variant) + len(entry.url)
    for name, value in entry.headers:
        size += _FIELD_OVERHEAD + len(name) + len(value)
    return size


class MemoryTier:
    """Cached responses of one worker, within ``budget`` bytes; objects over ``max_item`` bytes are not admitted."""

    def __init__(self, budget: int, *, max_item: int | None = None) -> None:
        self.budget = budget
        self.max_item = budget // 8 if max_item is None else min(max_item, budget)
        self.used = 0
        self._small_target = int(budget * _SMALL_SHARE)
        self._index: dict[bytes, _Node] = {}
        self._small: OrderedDict[bytes, _Node] = OrderedDict()  # oldest first
        self._main: OrderedDict[bytes, _Node] = OrderedDict()
        self._small_used = 0
        self._ghost: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: bytes) -> tuple[CacheEntry, bytes] | None:
        """The stored (entry, body) for a key, counting the access; no allocation, no queue movement."""
        node = self._index.get(key)
        if node is None:
            return None
        if node.freq < _MAX_FREQ:
            node.freq += 1
        return node.value

    def put(self, key: bytes, entry: CacheEntry, body: bytes) -> bool:
        """Store or replace an object; False when it is too big (a stored older version is dropped then too).

        A replacement keeps the old object's queue and frequency: a revalidated or refreshed object is as popular as
        the one it replaces.
        """
        size = charged_size(entry, body)
        old = self._index.get(key)
        if old is not None:
            self._remove(key, old)
        if size > self.max_item:
            return False
        if old is not None:
            freq, main = old.freq, old.main
        else:
            freq, main = 0, False
            ghost_key = hash(key)
            if ghost_key in self._ghost:
                del self._ghost[ghost_key]
                main = True
        while self.used + size > self.budget:
            self._evict()
        node = _Node((entry, body), size, freq, main)
        self._index[key] = node
        if main:
            self._main[key] = node
        else:
            self._small[key] = node
            self._small_used += size
        self.used += size
        return True

    def delete(self, key: bytes) -> bool:
        """Drop a key; True when it was stored."""
        node = self._index.get(key)
        if node is None:
            return False
        self._remove(key, node)
        return True

    def purge(self, matches: Callable[[CacheEntry], bool]) -> int:
        """Delete every object whose entry ``matches``; return how many."""
        doomed = [(key, node) for key, node in self._index.items() if matches(node.value[0])]
        for key, node in doomed:
            self._remove(key, node)
        return len(doomed)

    def _remove(self, key: bytes, node: _Node) -> None:
        del self._index[key]
        if node.main:
            del self._main[key]
        else:
            del self._small[key]
            self._small_used -= node.size
        self.used -= node.size

    def _evict(self) -> None:
        """Free one object: from the small queue while it holds its share of the bytes (or main is empty)."""
        if self._small and (self._small_used >= self._small_target or not self._main):
            self._evict_small()
        else:
            self._evict_main()

    def _evict_small(self) -> None:
        """Move requested objects from the small queue's end to main until one unrequested object leaves.

        Moving to main frees nothing by itself; when the small queue empties first, the caller's loop evicts from main.
        """
        while self._small:
            key, node = self._small.popitem(last=False)
            self._small_used -= node.size
            if node.freq > 0:
                node.main = True
                self._main[key] = node
                continue
            del self._index[key]
            self.used -= node.size
            ghost = self._ghost
            ghost[hash(key)] = None
            while len(ghost) > len(self._index):
                ghost.popitem(last=False)
            return

    def _evict_main(self) -> None:
        """Evict the oldest main object not requested since its last pass; requested ones go round again (CLOCK)."""
        main = self._main
        while main:
            key, node = main.popitem(last=False)
            if node.freq > 0:
                node.freq -= 1
                main[key] = node
                continue
            del self._index[key]
            self.used -= node.size
            return
