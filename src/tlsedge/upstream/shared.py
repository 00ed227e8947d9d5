"""Health states shared between the monitor process (the one writer) and the workers (readers).

The supervisor creates the mapping before forking, so the monitor and every worker of a generation see the same
anonymous shared memory: no file, no socket, and a read costs a byte lookup. Layout: an 8-byte little-endian change
counter, then one state byte per health-checked server (1 up, 0 down).

The writer stores the state byte before bumping the counter, so a reader that sees a new counter value also sees the
states that caused it; a reader that catches the counter mid-write merely sees a changed value and re-reads states,
which is always safe. Workers compare `version()` with the value of their last sweep and skip everything else when
it is unchanged.
"""

from __future__ import annotations

import mmap
import struct

from tlsedge.config.schema import Config

_COUNTER = struct.Struct("<Q")
_UP = 1
_DOWN = 0


class SharedHealth:
    """One up/down byte per slot plus a change counter, in memory shared across fork()."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, _COUNTER.size + max(slots, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        # Every server starts up: it is only taken out after `fall` failed checks.
        self._map[_COUNTER.size:_COUNTER.size + slots] = bytes([_UP]) * slots

    def set_up(self, slot: int, up: bool) -> None:
        """Publish a server's state; the counter moves only on a real change."""
        index = self._index(slot)
        value = _UP if up else _DOWN
        if self._map[index] != value:
            self._map[index] = value
            _COUNTER.pack_into(self._map, 0, (self.version() + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def is_up(self, slot: int) -> bool:
        return self._map[self._index(slot)] == _UP

    def version(self) -> int:
        return _COUNTER.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()

    def _index(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"health slot {slot} out of range (0..{self.slots - 1})")
        return _COUNTER.size + slot


def health_slots(config: Config) -> dict[tuple[str, str, str], int]:
    """A slot for every server of every health-checked pool: (site name, pool name, str(origin)) -> slot.

    The order (sites, pools, servers as configured) is deterministic, so the supervisor, the monitor and the workers
    of one generation, each computing it from the same configuration, agree on every slot.
    """
    slots: dict[tuple[str, str, str], int] = {}
    for site in config.sites:
        for pool in site.pools:
            if pool.health is None:
                continue
            for server in pool.servers:
                slots.setdefault((site.name, pool.name, str(server.origin)), len(slots))
    return slots


def carry_over(old: SharedHealth, old_slots: dict[tuple[str, str, str], int], new: SharedHealth,
               new_slots: dict[tuple[str, str, str], int]) -> None:
    """Mark down in ``new`` every server that ``old`` (the previous generation) knows to be down.

    Without this a reload would put every dead server back in rotation until ``fall`` checks fail again. Call it
    before forking the new generation; its monitor starts each server in the state found here.
    """
    for key, slot in new_slots.items():
        old_slot = old_slots.get(key)
        if old_slot is not None and not old.is_up(old_slot):
            new.set_up(slot, False)
