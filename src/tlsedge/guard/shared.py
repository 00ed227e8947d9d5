"""A hash table of counters in memory shared by the workers of an edge, so rate limits are exact across workers.

Why: a limit of 10 requests/s split as "10 / workers" per worker is wrong both ways (a client whose connections land
on one worker is limited too early, one spread over all gets more). So every worker updates the same counters: the
control process creates this table before forking (anonymous ``MAP_SHARED`` memory, like `cache.generations`) and
every worker inherits it.

Layout
------
``slots`` (a power of two, at least 8) slots in groups of 8. A key's 64-bit fingerprint picks its group, and the key
lives in any slot of that group: a lookup reads the group's 8 fingerprints in one ``struct`` call, so the probe
length is bounded by 8 and no tombstones are needed. Each slot holds the fingerprint (0 = empty), two float64 values
and an expiry. When a key is new and its group is full, the slot expiring soonest is replaced (an expired or empty
slot is always the soonest): under pressure the table forgets the state nearest to lapsing anyway. A forgotten rate
limit lets its key start afresh, so size the table for the keys alive at once (65,536 slots = 2 MiB).

The fingerprint is Python's ``hash()`` of a random per-table salt followed by the key: a keyed SipHash, the same in
every worker (they are forked from one interpreter, so they share its hash secret) and unpredictable to clients, who
therefore cannot aim many keys at one group (the secret salt keeps it so even under ``PYTHONHASHSEED=0``). It costs
0.15 µs where ``hashlib.blake2b(key=salt)`` costs 0.9 µs with the conversion to an integer. Two keys with the same
64-bit fingerprint would share a slot; the odds are negligible.

Locks
-----
Updates are read-modify-write, so each group is guarded by one of 64 striped locks (stripe = group mod 64; a group
never spans two stripes). They are `multiprocessing` locks (POSIX semaphores in shared memory) created before fork:
an uncontended acquire and release costs 0.11-0.13 µs here, against 1.2-1.4 µs for an ``fcntl`` byte-range lock on a
memfd (two system calls). A semaphore is not released when its holder dies, which ``fcntl`` locks are: a worker
killed inside the few microseconds it holds a lock would freeze every worker touching that stripe. So the holder
writes its pid next to the lock, and a waiter that has waited ``stuck_after`` seconds checks that pid; if the process
is gone, it takes the lock over (under an ``fcntl`` lock that the rare recovery path can afford, so two waiters never
both take over). A process killed in the instant between taking the semaphore and writing its pid (a couple of
bytecodes) cannot be identified: waiters then keep waiting and log it. Semaphores also exclude threads of one
process, so the table may be used from several threads. A `gcra` call costs about 0.9 µs in all.

Clocks
------
Every ``now`` and expiry given to one table should come from one clock: eviction compares expiries of all keys, and
an operation's ``now`` decides which slots have lapsed. The edge uses wall-clock ``time.time()`` (the challenge's
single-use tokens carry wall-clock expiries, and `first_use` defaults to it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import mmap
import multiprocessing
import os
import struct
import threading
import time
import weakref

log = logging.getLogger("tlsedge.guard")

GROUP = 8  # slots probed per key
_STRIPES = 64
_FINGERPRINTS = struct.Struct(f"<{GROUP}Q")
_MASK64 = (1 << 64) - 1
_TOLERANCE = 0.01  # GCRA: a request this fraction of an emission interval early still conforms (float rounding)

_TABLES: weakref.WeakSet[SharedTable] = weakref.WeakSet()


def _forked() -> None:
    pid = os.getpid()
    for table in _TABLES:
        table._pid = pid


os.register_at_fork(after_in_child=_forked)


class SharedTable:
    """Counters keyed by bytes, shared by every process forked after its creation; see the module docstring.

    Values per slot: ``a``, ``b`` (float64) and ``expires``. Their meaning depends on the operation that owns the
    key; callers namespace their keys (``b"r\\0site\\0rule\\0..."``) so two uses never share one.
    """

    def __init__(self, slots: int = 65536, *, stuck_after: float = 1.0) -> None:
        if slots < GROUP or slots & (slots - 1):
            raise ValueError(f"shared table size {slots} must be a power of two of at least {GROUP}")
        self.slots = slots
        self._groups = slots // GROUP
        self._stripes = min(_STRIPES, self._groups)
        self._stuck_after = stuck_after
        holders = self._stripes * 8
        self._map = mmap.mmap(-1, holders + slots * 32, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        view = memoryview(self._map)
        self._holders = view[:holders].cast("q")  # pid holding each stripe's lock, 0 when free
        self._fp_offset = holders
        self._fps = view[holders:holders + slots * 8].cast("Q")
        self._vals = view[holders + slots * 8:].cast("d")  # a, b, expires per slot
        view.release()
        context = multiprocessing.get_context("fork")
        self._locks = [context.Lock() for _ in range(self._stripes)]
        self._acquire = [lock.acquire for lock in self._locks]
        self._release = [lock.release for lock in self._locks]
        self._salt = os.urandom(16)
        self._recovery_fd = os.memfd_create("tlsedge-table-recovery", os.MFD_CLOEXEC)
        self._recovery_threads = threading.Lock()
        self._pid = os.getpid()
        _TABLES.add(self)

    # --- operations -------------------------------------------------------------------------------------------

    def gcra(self, key: bytes, emission_interval: float, burst: int, now: float) -> float:
        """Generic Cell Rate Algorithm: 0.0 when a request now conforms (and it is counted), else the seconds until
        one would (for ``Retry-After``).

        ``emission_interval`` is 1 / rate; ``burst`` requests may arrive at the same instant. The slot keeps the
        theoretical arrival time (TAT) in ``a`` and as its expiry: once TAT has passed, the key is as good as new.
        Refused requests change nothing, so a client hammering a limit does not push its own retry time back.
        """
        fp = hash(self._salt + key) & _MASK64 or 1
        group = fp & (self._groups - 1)
        stripe = group & (self._stripes - 1)
        self._lock(stripe)
        try:
            slot = self._locate(group * GROUP, fp)
            vals = self._vals
            if slot >= 0:
                i = slot * 3
                tat = vals[i]
                if tat < now:
                    tat = now
            else:
                slot = -1 - slot
                i = slot * 3
                tat = now
            delay = tat - now - emission_interval * (burst - 1)
            if delay > emission_interval * _TOLERANCE:
                return delay
            tat += emission_interval
            vals[i] = tat
            vals[i + 2] = tat
            self._fps[slot] = fp
            return 0.0
        finally:
            self._unlock(stripe)

    def hit(self, key: bytes, window: float, now: float) -> int:
        """Count an event; return how many the key had in its current window, this one included.

        Fixed window starting at the key's first event (``a`` = start, ``b`` = count, expiry = start + window):
        exact and one slot per key. The price is the usual one of fixed windows: events at the end of one window and
        the start of the next are counted apart, so up to twice the threshold can pass across the boundary.
        """
        fp = hash(self._salt + key) & _MASK64 or 1
        group = fp & (self._groups - 1)
        stripe = group & (self._stripes - 1)
        self._lock(stripe)
        try:
            slot = self._locate(group * GROUP, fp)
            vals = self._vals
            if slot >= 0 and vals[slot * 3 + 2] > now:
                count = vals[slot * 3 + 1] + 1.0
                vals[slot * 3 + 1] = count
                return int(count)
            if slot < 0:
                slot = -1 - slot
            i = slot * 3
            vals[i] = now
            vals[i + 1] = 1.0
            vals[i + 2] = now + window
            self._fps[slot] = fp
            return 1
        finally:
            self._unlock(stripe)

    def acquire_slot(self, key: bytes, limit: int, *, now: float = 0.0, expires_at: float = math.inf) -> bool:
        """Take one of ``limit`` concurrent slots of ``key`` (e.g. connections of an IP); False when all are taken.

        The count lapses at ``expires_at`` (pushed later by every acquire), so counts a crashed worker never released
        do not block the key forever; the price is that a key busy past ``expires_at`` starts counting afresh. With
        the defaults the count never lapses and ``now`` does not matter.
        """
        fp = hash(self._salt + key) & _MASK64 or 1
        group = fp & (self._groups - 1)
        stripe = group & (self._stripes - 1)
        self._lock(stripe)
        try:
            slot = self._locate(group * GROUP, fp)
            vals = self._vals
            if slot >= 0 and vals[slot * 3 + 2] > now:
                i = slot * 3
                count = vals[i]
                if count >= limit:
                    return False
                vals[i] = count + 1.0
                if expires_at > vals[i + 2]:
                    vals[i + 2] = expires_at
                return True
            if limit < 1:
                return False
            if slot < 0:
                slot = -1 - slot
            i = slot * 3
            vals[i] = 1.0
            vals[i + 1] = 0.0
            vals[i + 2] = expires_at
            self._fps[slot] = fp
            return True
        finally:
            self._unlock(stripe)

    def release_slot(self, key: bytes) -> None:
        """Give back a slot taken by `acquire_slot`; the count never goes below zero, and a key at zero is freed."""
        fp = hash(self._salt + key) & _MASK64 or 1
        group = fp & (self._groups - 1)
        stripe = group & (self._stripes - 1)
        self._lock(stripe)
        try:
            slot = self._locate(group * GROUP, fp)
            if slot < 0:
                return
            i = slot * 3
            vals = self._vals
            count = vals[i] - 1.0
            if count > 0.0:
                vals[i] = count
                return
            self._fps[slot] = 0
            vals[i] = vals[i + 1] = vals[i + 2] = 0.0
        finally:
            self._unlock(stripe)

    def first_use(self, key: bytes, expires_at: float, now: float | None = None) -> bool:
        """True the first time ``key`` is seen, False while that record lives (until ``expires_at``).

        For single-use tokens: the first presentation wins, replays lose. ``now`` defaults to the wall clock. Only
        if the table is full of records expiring later than this one can it be forgotten early (see the module
        docstring); token lifetimes should stay short.
        """
        if now is None:
            now = time.time()
        fp = hash(self._salt + key) & _MASK64 or 1
        group = fp & (self._groups - 1)
        stripe = group & (self._stripes - 1)
        self._lock(stripe)
        try:
            slot = self._locate(group * GROUP, fp)
            vals = self._vals
            if slot >= 0 and vals[slot * 3 + 2] > now:
                return False
            if slot < 0:
                slot = -1 - slot
            i = slot * 3
            vals[i] = vals[i + 1] = 0.0
            vals[i + 2] = expires_at
            self._fps[slot] = fp
            return True
        finally:
            self._unlock(stripe)

    def close(self) -> None:
        """Unmap the table in this process (other processes keep theirs)."""
        for view in (self._holders, self._fps, self._vals):
            view.release()
        self._map.close()
        os.close(self._recovery_fd)

    # --- internals --------------------------------------------------------------------------------------------

    def _locate(self, base: int, fp: int) -> int:
        """The slot of ``fp`` in the group starting at ``base``; if absent, ``-1 - slot`` of the slot to claim."""
        fps = _FINGERPRINTS.unpack_from(self._map, self._fp_offset + base * 8)
        if fp in fps:
            return base + fps.index(fp)
        if 0 in fps:
            return -1 - (base + fps.index(0))
        expiries = self._vals[base * 3 + 2:base * 3 + GROUP * 3:3].tolist()
        return -1 - (base + expiries.index(min(expiries)))

    def _stripe(self, key: bytes) -> int:
        return (hash(self._salt + key) & _MASK64 or 1) & (self._groups - 1) & (self._stripes - 1)

    def _lock(self, stripe: int) -> None:
        if not self._acquire[stripe](True, self._stuck_after):
            self._recover(stripe)
        self._holders[stripe] = self._pid

    def _unlock(self, stripe: int) -> None:
        self._holders[stripe] = 0
        self._release[stripe]()

    def _recover(self, stripe: int) -> None:
        """Wait for a lock held too long; take it over if its holder died holding it."""
        warned = False
        while True:
            holder = self._holders[stripe]
            if holder and holder != self._pid and not _alive(holder) and self._take_over(stripe, holder):
                log.error("shared table: process %d died holding lock %d; lock taken over", holder, stripe)
                return
            if not warned:
                log.warning("shared table: lock %d held for over %.1f s by process %d", stripe, self._stuck_after,
                            holder)
                warned = True
            if self._acquire[stripe](True, self._stuck_after):
                return

    def _take_over(self, stripe: int, dead: int) -> bool:
        """Become the holder of a lock whose holder ``dead`` is gone; False when another waiter already did."""
        with self._recovery_threads:
            fcntl.lockf(self._recovery_fd, fcntl.LOCK_EX)
            try:
                if self._holders[stripe] != dead:
                    return False
                self._holders[stripe] = self._pid
                return True
            finally:
                fcntl.lockf(self._recovery_fd, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie holds no lock any more: it is dead but not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    return False
