"""Invalidation generations shared by the workers of an edge, so an unsafe request seen by one worker reaches all.

Each worker keeps hot objects in its own memory tier. When a POST (or any unsafe method) invalidates a URL on one
worker, the disk copy is deleted there, but the other workers' memory copies would live on. A counter per key
bucket in anonymous shared memory (created before fork, like the health states) fixes that for the price of one
read per hit: a memory copy remembers its bucket's counter when stored, and is dropped when the counter moved.
Buckets are shared by many keys, so an invalidation may drop innocent copies of the same bucket: they are simply
read again from disk, never served wrong.
"""

from __future__ import annotations

import mmap
import struct
import zlib

_SLOTS = 1 << 16
_COUNTER = struct.Struct("<I")


class Generations:
    """65,536 32-bit counters in memory shared across fork()."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _SLOTS * _COUNTER.size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    @staticmethod
    def slot(key: bytes) -> int:
        return (zlib.crc32(key) & (_SLOTS - 1)) * _COUNTER.size

    def current(self, key: bytes) -> int:
        return _COUNTER.unpack_from(self._map, self.slot(key))[0]

    def bump(self, key: bytes) -> None:
        """Invalidate every memory copy of ``key`` (and of the keys that share its bucket) in every worker."""
        offset = self.slot(key)
        _COUNTER.pack_into(self._map, offset, (_COUNTER.unpack_from(self._map, offset)[0] + 1) & 0xFFFF_FFFF)
