"""Choosing one server of a pool for a request: round robin, least requests, power of two choices, consistent hashing.

Sans-IO: a balancer sees the pool's members through the small `Member` protocol and asks the caller, through an
`Available` predicate, whether a member may take a request now (up, not ejected, not full, not excluded by a retry).
The data plane calls `pick` once per request, so a pick allocates nothing that grows with the pool and hashes only
for hash balancing.

Hashing uses blake2b with an 8-byte digest: it is stable across processes (unlike the built-in `hash`, which is
salted per process, so workers would disagree), well distributed, and costs about 0.35 µs for a short key here;
md5 and sha1 truncated to 64 bits measured slower (0.6 µs) and crc32 is only 32 bits and linear.
"""

from __future__ import annotations

import math
import random
import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Protocol


class Member(Protocol):
    """What a balancer needs to know of a server; the data plane's runtime server objects satisfy it."""

    key: str  # stable identity, e.g. "http://127.0.0.1:9001": the same across workers, restarts and reloads
    weight: int  # configured weight 1..1000; the only weight hashing looks at, so the key mapping stays stable
    load_weight: float  # weight right now (> 0): slow start ramps it up to `weight`
    active: int  # requests in flight from this worker


Available = Callable[[Member], bool]


class Balancer(Protocol):
    def pick(self, available: Available, key: bytes | None) -> Member | None:
        """One available member for a request, or None when no member is available."""
        ...


_HASH64 = blake2b(digest_size=8)


def hash64(data: bytes) -> int:
    """A 64-bit hash of `data`, the same in every process (copying a prepared hasher skips argument parsing)."""
    hasher = _HASH64.copy()
    hasher.update(data)
    return int.from_bytes(hasher.digest(), "little")


class RoundRobin:
    """Smooth weighted round robin (nginx): each pick, every available member gains its weight and the richest pays
    the total; picks of a heavy member are spread between the others' (5, 1, 1 gives a a b a c a a).

    An unavailable member neither gains nor pays, so the sequence among the others keeps its smoothness; it uses
    `load_weight` so a server in slow start gets its reduced share.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        self._members = tuple(members)
        self._current = [0.0] * len(self._members)

    def pick(self, available: Available, key: bytes | None = None) -> Member | None:
        members = self._members
        current = self._current
        best = -1
        best_current = 0.0
        total = 0.0
        for i in range(len(members)):
            member = members[i]
            if not available(member):
                continue
            weight = member.load_weight
            value = current[i] + weight
            current[i] = value
            total += weight
            if best < 0 or value > best_current:
                best = i
                best_current = value
        if best < 0:
            return None
        current[best] = best_current - total
        return members[best]


class LeastRequests:
    """Fewest requests in flight relative to the current weight, (active + 1) / load_weight.

    The scan starts just after the previous pick, so among equally loaded members the first one found is a new one
    each time: ties rotate and idle servers share the load evenly instead of the first one taking every request.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        self._members = tuple(members)
        self._doubled = self._members * 2  # lets a scan start anywhere and run n steps without a modulo
        self._start = 0

    def pick(self, available: Available, key: bytes | None = None) -> Member | None:
        doubled = self._doubled
        best = -1
        best_score = 0.0
        for i in range(self._start, self._start + len(self._members)):
            member = doubled[i]
            if not available(member):
                continue
            score = (member.active + 1) / member.load_weight
            if best < 0 or score < best_score:
                best = i
                best_score = score
        if best < 0:
            return None
        self._start = (best + 1) % len(self._members)
        return doubled[best]


def _lighter(a: Member, b: Member) -> Member:
    """The one of two members with fewer requests in flight relative to its current weight."""
    return a if (a.active + 1) / a.load_weight <= (b.active + 1) / b.load_weight else b


class PowerOfTwo:
    """Two distinct members drawn at random, the less loaded of them wins ("power of two choices").

    Nearly as good as least requests at spreading load, with constant work per pick. Draws are uniform, so a member
    can receive at most 2/n of the requests whatever its weight; weights only tilt each duel.
    """

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None) -> None:
        self._members = tuple(members)
        self._random = (rng or random.Random()).random

    def pick(self, available: Available, key: bytes | None = None) -> Member | None:
        members = self._members
        n = len(members)
        if n >= 2:
            i = int(self._random() * n)
            j = int(self._random() * (n - 1))
            if j >= i:
                j += 1
            a = members[i]
            b = members[j]
            if available(a) and available(b):
                return _lighter(a, b)
        return self._pick_among_available(available)

    def _pick_among_available(self, available: Available) -> Member | None:
        """The same duel restricted to the available members, when a first draw hit an unavailable one."""
        candidates = [member for member in self._members if available(member)]
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        n = len(candidates)
        i = int(self._random() * n)
        j = int(self._random() * (n - 1))
        if j >= i:
            j += 1
        return _lighter(candidates[i], candidates[j])


RING_MIN_POINTS = 2048  # points of the lightest member: its key space share then has a standard deviation of 2 %
RING_MAX_POINTS = 1 << 15  # bound on the ring's memory (two lists) and build time; heavy pools get fewer points


def ring_points(weights: Sequence[int]) -> list[int]:
    """How many ring points each member gets: proportional to its weight, the lightest getting RING_MIN_POINTS.

    A member with V points owns a share of the key space within about ±1/√V of its due, so a fixed 100-160 points per
    unit of weight would leave weight-1 servers ±8-10 % off. The count depends only on a member's weight and the
    pool's lightest weight (unless the total is capped), so removing a server keeps the others' points in place.
    """
    if not weights:
        return []
    scale = RING_MIN_POINTS / min(weights)
    if scale * sum(weights) > RING_MAX_POINTS:
        scale = RING_MAX_POINTS / sum(weights)
    return [max(1, round(weight * scale)) for weight in weights]


_POINTS = struct.Struct("<8Q")  # one 64-byte blake2b digest gives eight ring points


def _member_points(key: str, count: int) -> list[int]:
    """`count` pseudo-random positions on the ring for a member, derived from its key only."""
    points: list[int] = []
    encoded = key.encode()
    for block in range((count + 7) // 8):
        digest = blake2b(encoded, digest_size=64, salt=block.to_bytes(16, "little")).digest()
        points.extend(_POINTS.unpack(digest))
    return points[:count]


class RingHash:
    """Consistent hashing on a ring of virtual nodes (sorted list + bisect): a key belongs to the first point at or
    after its hash.

    When that point's member is unavailable the key walks on to the next distinct available member, which is where
    it would land if the member were removed from the ring: only that member's keys move. Without a key (the request
    lacks the header, cookie...) the pick falls back to smooth weighted round robin.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        self._members = tuple(members)
        self._fallback = RoundRobin(members)
        pairs: list[tuple[int, int]] = []
        counts = ring_points([member.weight for member in self._members])
        for index, (member, count) in enumerate(zip(self._members, counts, strict=True)):
            pairs.extend((point, index) for point in _member_points(member.key, count))
        pairs.sort()
        self._hashes = [point for point, _ in pairs]
        self._owners = [index for _, index in pairs]
        self._everyone = (1 << len(self._members)) - 1

    def pick(self, available: Available, key: bytes | None) -> Member | None:
        if key is None:
            return self._fallback.pick(available, None)
        hashes = self._hashes
        if not hashes:
            return None
        position = bisect_left(hashes, hash64(key))
        if position == len(hashes):
            position = 0
        member = self._members[self._owners[position]]
        if available(member):
            return member
        return self._walk(position, available)

    def _walk(self, position: int, available: Available) -> Member | None:
        """The next available member clockwise from `position`, asking about each member at most once."""
        owners = self._owners
        members = self._members
        size = len(owners)
        seen = 1 << owners[position]
        while seen != self._everyone:
            position += 1
            if position == size:
                position = 0
            bit = 1 << owners[position]
            if seen & bit:
                continue
            member = members[owners[position]]
            if available(member):
                return member
            seen |= bit
        return None


MAGLEV_MIN_SIZE = 2048  # the table for pools up to 20 servers
MAGLEV_CACHE = 8  # tables kept for sets of available servers other than the whole pool


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def maglev_size(count: int) -> int:
    """Lookup table size: a prime at least 100 times the number of servers, taken from a few sizes a power of two apart.

    The size must stay the same when servers are added or removed (every slot's permutation depends on it, so a new
    size remaps nearly every key); rounding up to the next power of two before taking the next prime keeps it fixed
    between 11 and 20 servers, 21 and 40, and so on.
    """
    size = max(MAGLEV_MIN_SIZE, 1 << math.ceil(math.log2(max(1, 100 * count))))
    while not _is_prime(size):
        size += 1
    return size


def _maglev_permutation(key: str, size: int) -> tuple[int, int]:
    """Offset and skip of a member's preference list (offset + j * skip mod size), from two hashes of its key."""
    encoded = key.encode()
    offset = int.from_bytes(blake2b(encoded, digest_size=8, person=b"maglev-offset").digest(), "little") % size
    skip = int.from_bytes(blake2b(encoded, digest_size=8, person=b"maglev-skip").digest(), "little") % (size - 1) + 1
    return offset, skip


def maglev_table(permutations: Sequence[tuple[int, int]], weights: Sequence[int], size: int) -> list[int]:
    """Populate a Maglev lookup table (Eisenbud et al., NSDI 2016): members take turns claiming their next preferred
    free slot; a member takes a turn only when its credit (weight / heaviest weight per round) reaches one, so slots
    are shared in proportion to weights. Returns, for each slot, the index of its member.
    """
    table = [-1] * size
    if not permutations:
        return []
    heaviest = max(weights)
    shares = [weight / heaviest for weight in weights]
    credits = [0.0] * len(shares)
    positions = [offset for offset, _ in permutations]
    skips = [skip for _, skip in permutations]
    filled = 0
    while True:
        for i, share in enumerate(shares):
            credits[i] += share
            if credits[i] < 1.0:
                continue
            credits[i] -= 1.0
            position = positions[i]
            skip = skips[i]
            while table[position] >= 0:
                position += skip
                if position >= size:
                    position -= size
            table[position] = i
            position += skip
            positions[i] = position - size if position >= size else position
            filled += 1
            if filled == size:
                return table


class MaglevHash:
    """Maglev consistent hashing: a key's hash indexes a prime-sized table of members; O(1) per pick.

    A key whose member is available keeps it, so an outage moves only the missing members' keys; those are looked up
    in the table built from the members available now (the table of a pool without the missing ones, the same in
    every worker that sees the same servers down). Such tables are cached by set of available members (a few of them),
    so a flapping server does not cost a rebuild per request. Without a key the pick falls back to smooth weighted
    round robin.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        self._members = tuple(sorted(members, key=lambda member: member.key))  # population order must be canonical
        self._fallback = RoundRobin(members)
        self._size = maglev_size(len(self._members))
        self._permutations = [_maglev_permutation(member.key, self._size) for member in self._members]
        self._everyone = (1 << len(self._members)) - 1
        self._table = self._build(self._everyone)
        self._tables: dict[int, list[int]] = {}

    def pick(self, available: Available, key: bytes | None) -> Member | None:
        if key is None:
            return self._fallback.pick(available, None)
        if not self._table:
            return None
        slot = hash64(key) % self._size
        member = self._members[self._table[slot]]
        if available(member):
            return member
        mask = 0
        for i, candidate in enumerate(self._members):
            if available(candidate):
                mask |= 1 << i
        if not mask:
            return None
        table = self._table if mask == self._everyone else self._table_for(mask)
        return self._members[table[slot]]

    def _table_for(self, mask: int) -> list[int]:
        """The table for the members in `mask`, from the cache (least recently used goes first) or built now."""
        table = self._tables.pop(mask, None)
        if table is None:
            table = self._build(mask)
            if len(self._tables) >= MAGLEV_CACHE:
                del self._tables[next(iter(self._tables))]
        self._tables[mask] = table
        return table

    def _build(self, mask: int) -> list[int]:
        """A table over the members in `mask`, mapping each slot to an index into the whole pool."""
        chosen = [i for i in range(len(self._members)) if mask >> i & 1]
        table = maglev_table(
            [self._permutations[i] for i in chosen], [self._members[i].weight for i in chosen], self._size
        )
        return [chosen[entry] for entry in table]


def make_balancer(
    kind: str, members: Sequence[Member], hash_method: str = "ring", *, rng: random.Random | None = None
) -> Balancer:
    """The balancer for a pool's `balance` and `hash_method` settings (see PoolConfig); built once per pool."""
    if kind == "round_robin":
        return RoundRobin(members)
    if kind == "least_requests":
        return LeastRequests(members)
    if kind == "power_of_two":
        return PowerOfTwo(members, rng)
    if kind == "hash":
        if hash_method == "ring":
            return RingHash(members)
        if hash_method == "maglev":
            return MaglevHash(members)
        raise ValueError(f"unknown hash method {hash_method!r}: expected 'ring' or 'maglev'")
    raise ValueError(f"unknown balance {kind!r}: expected round_robin, least_requests, power_of_two or hash")
