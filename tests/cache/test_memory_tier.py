"""The memory tier: byte budget, S3-FIFO eviction (Yang et al., SOSP'23), replacement, purge, admission by size."""

from __future__ import annotations

import random

from tlsedge.cache.entry import CacheEntry
from tlsedge.cache.memory import MemoryTier, charged_size


def entry(key: bytes, size: int, *, tags: tuple[bytes, ...] = (), site: str = "blog") -> CacheEntry:
    return CacheEntry(
        key=key, variant=b"", site=site, url=b"https://blog.test" + key, status=200,
        headers=[(b"Content-Type", b"text/plain"), (b"ETag", b'"' + key + b'"')], vary=(), tags=tags,
        request_time=1000.0, response_time=1000.5, initial_age=0.0, lifetime=60.0, stale_while_revalidate=0.0,
        stale_if_error=0.0, no_cache=False, must_revalidate=False, etag=b'"' + key + b'"', last_modified=None,
        body_size=size,
    )


def put(tier: MemoryTier, key: bytes, size: int, **kw: object) -> bool:
    return tier.put(key, entry(key, size, **kw), b"x" * size)  # type: ignore[arg-type]


def test_get_returns_the_stored_tuple_itself() -> None:
    """A hit allocates nothing: the same (entry, body) tuple comes back every time."""
    tier = MemoryTier(1 << 20)
    e = entry(b"/a", 10)
    assert tier.put(b"/a", e, b"0123456789")
    first = tier.get(b"/a")
    assert first is not None and first[0] is e and first[1] == b"0123456789"
    assert tier.get(b"/a") is first
    assert tier.get(b"/missing") is None
    assert len(tier) == 1


def test_budget_is_never_exceeded_and_accounting_returns_to_zero() -> None:
    """Random puts, hits, replacements and deletes: used stays within the budget and equals the charged sizes."""
    rng = random.Random(5)
    budget = 200_000
    tier = MemoryTier(budget)
    for _ in range(5000):
        key = b"/k%d" % rng.randrange(400)
        action = rng.random()
        if action < 0.5:
            put(tier, key, rng.randrange(0, 20_000))
        elif action < 0.9:
            tier.get(key)
        else:
            tier.delete(key)
        assert 0 <= tier.used <= budget
    resident = [k for k in (b"/k%d" % i for i in range(400)) if tier.get(k) is not None]
    assert len(resident) == len(tier) > 0
    assert tier.used == sum(charged_size(*tier.get(k)) for k in resident)  # type: ignore[misc]
    for key in resident:
        assert tier.delete(key)
    assert tier.used == 0 and len(tier) == 0


def test_scan_resistance_one_hit_wonders_leave_through_the_small_queue() -> None:
    """S3-FIFO section 4: a burst of once-requested keys does not evict a working set that is being hit."""
    budget = 1_000_000
    tier = MemoryTier(budget)
    working = [b"/hot%d" % i for i in range(60)]  # 60 x ~10 KB: about 60 % of the budget
    for key in working:
        assert put(tier, key, 10_000)
        assert tier.get(key) is not None  # requested again while in the small queue: promoted to main
    for i in range(2000):  # 20 MB of one-time keys, 20 times the budget, in a single burst
        assert put(tier, b"/scan%d" % i, 10_000)
        assert tier.used <= budget
    assert all(tier.get(key) is not None for key in working)
    resident_scan = [i for i in range(2000) if tier.get(b"/scan%d" % i) is not None]
    assert resident_scan and min(resident_scan) >= 2000 - 40  # only the burst's tail, in the space left over


def test_main_queue_gives_frequently_hit_objects_more_rounds() -> None:
    """S3-FIFO section 4 (main FIFO with a 0..3 counter): when main is over its share, once-hit objects go first."""
    tier = MemoryTier(100_000)
    for i in range(50):  # about 95 % of the budget, more than main's 90 % share
        put(tier, b"/o%d" % i, 1000)
        for _ in range(3 if i % 2 else 1):
            tier.get(b"/o%d" % i)
    for i in range(300):
        put(tier, b"/new%d" % i, 1000)
    evicted = [i for i in range(50) if tier.get(b"/o%d" % i) is None]
    assert evicted  # main had to shrink to its share
    assert all(i % 2 == 0 for i in evicted)  # only the once-hit objects


def test_ghost_hit_goes_to_main_and_survives_the_next_scan() -> None:
    """S3-FIFO section 4: a key evicted from the small queue and inserted again soon after is admitted to main."""
    tier = MemoryTier(100_000)
    put(tier, b"/again", 5000)
    for i in range(20):  # pushes /again out of the small queue unrequested: only its key stays, in the ghost
        put(tier, b"/a%d" % i, 5000)
    assert tier.get(b"/again") is None
    assert put(tier, b"/again", 5000)
    assert put(tier, b"/newcomer", 5000)  # inserted at the same time, but never seen before: small queue
    for i in range(200):
        put(tier, b"/b%d" % i, 5000)
    assert tier.get(b"/again") is not None
    assert tier.get(b"/newcomer") is None


def test_replacement_updates_size_accounting_and_content() -> None:
    tier = MemoryTier(1 << 20)
    put(tier, b"/r", 1000)
    before = tier.used
    assert tier.put(b"/r", entry(b"/r", 5000), b"y" * 5000)
    assert tier.used == before + 4000
    assert len(tier) == 1
    got = tier.get(b"/r")
    assert got is not None and got[1] == b"y" * 5000 and got[0].body_size == 5000
    assert tier.put(b"/r", entry(b"/r", 10), b"z" * 10)
    assert tier.used == before - 990


def test_too_big_items_are_refused_and_drop_the_older_version() -> None:
    """Default max_item is budget // 8; a refused replacement must not leave the outdated object served."""
    tier = MemoryTier(80_000)
    assert tier.max_item == 10_000
    assert not put(tier, b"/big", 20_000)
    assert tier.get(b"/big") is None and tier.used == 0
    assert put(tier, b"/grows", 1000)
    assert not put(tier, b"/grows", 50_000)
    assert tier.get(b"/grows") is None and tier.used == 0 and len(tier) == 0
    roomy = MemoryTier(80_000, max_item=70_000)
    assert put(roomy, b"/big", 20_000)


def test_purge_deletes_every_match_and_counts() -> None:
    tier = MemoryTier(1 << 20)
    for i in range(10):
        put(tier, b"/p%d" % i, 100, tags=(b"even",) if i % 2 == 0 else (b"odd",))
    assert tier.purge(lambda e: b"even" in e.tags) == 5
    assert len(tier) == 5
    assert all(tier.get(b"/p%d" % i) is None for i in range(0, 10, 2))
    assert all(tier.get(b"/p%d" % i) is not None for i in range(1, 10, 2))
    assert tier.purge(lambda e: b"even" in e.tags) == 0
    used = tier.used
    assert tier.purge(lambda e: True) == 5 and tier.used == 0 and used > 0


def test_delete_reports_whether_it_was_stored() -> None:
    tier = MemoryTier(1 << 20)
    put(tier, b"/d", 10)
    assert tier.delete(b"/d")
    assert not tier.delete(b"/d")
    assert tier.get(b"/d") is None and tier.used == 0
