"""Bans over a real SQLite store and a shared table: thresholds, growing durations, scopes, workers, CLI, restarts."""

from __future__ import annotations

import multiprocessing
import re
import time
import timeit
from pathlib import Path

import pytest

from tlsedge.guard.bans import (
    GLOBAL_SCOPE,
    Ban,
    BanPolicy,
    Bans,
    add_ban,
    list_bans,
    parse_ban_address,
    remove_ban,
)
from tlsedge.guard.shared import SharedTable
from tlsedge.store import open_store

POLICY = BanPolicy(threshold=3, window=60.0, duration=100.0, factor=2.0, max_duration=350.0)
IP = "192.0.2.66"


@pytest.fixture
def table() -> SharedTable:
    return SharedTable(4096)


def worker(state: Path, table: SharedTable) -> Bans:
    """What one worker holds: its own store connection, the shared table, its own view of the bans."""
    bans = Bans(open_store(state), table)
    bans.refresh(time.time())
    return bans


def test_threshold_within_window_bans(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    now = time.time()
    assert bans.offense("blog", IP, "waf", POLICY, now) is None
    assert bans.offense("blog", IP, "waf", POLICY, now + 1) is None
    assert bans.banned_any("blog", IP, now + 2) is None
    ban = bans.offense("blog", IP, "rate-limit login", POLICY, now + 2)
    assert ban is not None
    assert (ban.ip, ban.scope, ban.reason, ban.count) == (IP, "blog", "rate-limit login", 1)
    assert ban.expires == pytest.approx(now + 2 + 100)
    assert bans.banned("blog", IP, now + 3) == ban
    assert bans.banned_any("blog", IP, now + 3) == ban
    assert bans.banned_any("blog", "192.0.2.67", now + 3) is None
    assert bans.banned_any("blog", IP, now + 103) is None  # over


def test_offenses_outside_the_window_do_not_ban(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    now = time.time()
    for step in range(6):
        assert bans.offense("blog", IP, "waf", BanPolicy(2, 10.0, 100.0), now + step * 10.5) is None
    assert list_bans(open_store(tmp_path), now) == []


def test_durations_grow_and_cap(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    policy = BanPolicy(threshold=1, window=1.0, duration=100.0, factor=2.0, max_duration=350.0)
    now = time.time()
    durations = []
    for _ in range(5):
        ban = bans.offense("blog", IP, "waf", policy, now)
        assert ban is not None
        durations.append((ban.count, ban.expires - ban.created))
        now = ban.expires + 1
    assert durations == [(1, 100.0), (2, 200.0), (3, 350.0), (4, 350.0), (5, 350.0)]
    assert [policy.duration_of(n) for n in (1, 2, 3, 10_000)] == [100.0, 200.0, 350.0, 350.0]


def test_site_and_global_scopes(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    now = time.time()
    bans.ban_now("blog", "192.0.2.1", "waf", POLICY, now)
    bans.ban_now(GLOBAL_SCOPE, "192.0.2.2", "waf", BanPolicy(3, 60.0, 100.0, scope="global"), now)
    assert bans.banned_any("blog", "192.0.2.1", now) is not None
    assert bans.banned_any("shop", "192.0.2.1", now) is None  # a site ban covers that site only
    assert bans.banned_any("blog", "192.0.2.2", now) is not None
    assert bans.banned_any("shop", "192.0.2.2", now) is not None
    assert bans.banned("shop", "192.0.2.2", now) is None and bans.banned(GLOBAL_SCOPE, "192.0.2.2", now)


def test_offenses_add_up_across_workers_and_bans_reach_them_on_refresh(tmp_path: Path, table: SharedTable):
    first, second = worker(tmp_path, table), worker(tmp_path, table)
    now = time.time()
    context = multiprocessing.get_context("fork")
    child = context.Process(target=lambda: first.offense("blog", IP, "waf", POLICY, now))  # a third worker
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert first.offense("blog", IP, "waf", POLICY, now) is None
    ban = second.offense("blog", IP, "challenge-failed", POLICY, now)  # the third offense, in another worker
    assert ban is not None and ban.count == 1
    assert first.banned_any("blog", IP, now) is None  # not yet: no store read per request
    first.refresh(now)
    assert first.banned_any("blog", IP, now) == ban


def test_one_burst_seen_by_two_workers_bans_once(tmp_path: Path, table: SharedTable):
    first, second = worker(tmp_path, table), worker(tmp_path, table)
    now = time.time()
    ban = first.ban_now("blog", IP, "rate limit", POLICY, now)
    again = second.ban_now("blog", IP, "rate limit", POLICY, now + 0.5)  # before its refresh
    assert again == ban and again.count == 1  # adopted from the store, not stacked into a longer ban


def test_cli_add_list_remove(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    store = open_store(tmp_path)
    now = time.time()
    added = add_ban(store, "blog", "::ffff:192.0.2.9", 3600, "manual", now)
    add_ban(store, GLOBAL_SCOPE, "2001:db8::0:7", 60, "manual", now)
    assert added.ip == "192.0.2.9" and added.count == 1
    assert [(b.scope, b.ip) for b in list_bans(store, now)] == [("*", "2001:db8::7"), ("blog", "192.0.2.9")]
    bans.refresh(now)
    assert bans.banned_any("blog", "192.0.2.9", now) == added
    assert bans.banned_any("shop", "2001:db8::7", now) is not None
    assert remove_ban(store, "blog", "192.0.2.9") is True
    assert remove_ban(store, "blog", "192.0.2.9") is False
    assert bans.banned_any("blog", "192.0.2.9", now) is not None  # until the worker's next sweep
    bans.refresh(now)
    assert bans.banned_any("blog", "192.0.2.9", now) is None
    assert [(b.scope, b.ip) for b in list_bans(store, now)] == [("*", "2001:db8::7")]


@pytest.mark.parametrize(("text", "reason"), [
    ("192.0.2.0/24", "is a network; bans are per address"),
    ("banana", "is not an IP address"),
])
def test_cli_rejects(tmp_path: Path, text: str, reason: str):
    with pytest.raises(ValueError, match=re.escape(reason)):
        add_ban(open_store(tmp_path), "blog", text, 60, "manual")
    with pytest.raises(ValueError, match="above zero"):
        add_ban(open_store(tmp_path), "blog", "192.0.2.1", 0, "manual")
    with pytest.raises(ValueError, match="site name or"):
        add_ban(open_store(tmp_path), "", "192.0.2.1", 60, "manual")


def test_bans_and_repeat_counts_survive_a_restart(tmp_path: Path, table: SharedTable):
    now = time.time()
    ban = worker(tmp_path, table).ban_now("blog", IP, "waf", POLICY, now)
    restarted = worker(tmp_path, SharedTable(4096))  # new process state: a fresh table, a new store connection
    assert restarted.banned_any("blog", IP, now + 1) == ban
    second = restarted.ban_now("blog", IP, "waf", POLICY, ban.expires + 1)
    assert second.count == 2 and second.expires - second.created == 200.0


def test_expired_bans_vanish(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    store = open_store(tmp_path)
    add_ban(store, "blog", IP, 0.3, "manual")
    bans.refresh(time.time())
    assert bans.banned_any("blog", IP, time.time()) is not None
    time.sleep(0.4)
    assert list_bans(store) == []
    assert store.scan("bans/") == {}  # gone from the store too, not only filtered
    assert bans.banned_any("blog", IP, time.time()) is None
    bans.refresh(time.time())
    assert bans._active == {}


def test_mapped_addresses_are_the_same_client(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    now = time.time()
    bans.ban_now("blog", "::ffff:192.0.2.44", "waf", POLICY, now)
    assert bans.banned_any("blog", "192.0.2.44", now) is not None
    assert parse_ban_address("::ffff:192.0.2.44") == "192.0.2.44"
    assert parse_ban_address("2001:DB8:0::1") == "2001:db8::1"


def test_an_unwritable_store_still_bans_in_this_worker(tmp_path: Path, table: SharedTable,
                                                       caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bans = Bans(open_store(blocker), table)  # its store cannot even be created
    bans.refresh(time.time())  # logs, keeps what it knows
    ban = bans.offense("blog", IP, "waf", BanPolicy(1, 60.0, 100.0), time.time())
    assert ban is not None and bans.banned_any("blog", IP, time.time()) == ban
    assert "enforced by this worker only" in caplog.text and "cannot open the store" in caplog.text


def test_policy_validation():
    with pytest.raises(ValueError, match="threshold"):
        BanPolicy(0, 60.0, 100.0)
    with pytest.raises(ValueError, match="shorter than duration"):
        BanPolicy(3, 60.0, 100.0, max_duration=50.0)
    with pytest.raises(ValueError, match="factor"):
        BanPolicy(3, 60.0, 100.0, factor=0.5)


def test_ban_json_round_trip():
    ban = Ban("2001:db8::1", "*", "waf 942100", 1.5, 101.5, 3)
    assert Ban.from_json(ban.to_json()) == ban


def test_banned_any_cost(tmp_path: Path, table: SharedTable):
    bans = worker(tmp_path, table)
    now = time.time()
    for i in range(50):
        bans.ban_now("blog", f"198.51.100.{i}", "waf", POLICY, now)
    number = 100_000
    best = min(timeit.repeat(lambda: bans.banned_any("blog", "192.0.2.1", now), number=number, repeat=5)) / number
    print(f"Bans.banned_any with 50 bans: {best * 1e6:.2f} us")
    assert best < 10e-6
