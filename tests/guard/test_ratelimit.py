"""Rate-limit rules over the shared table: rates, keys, scoping, verdicts, and connection limits at accept time."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import timeit

import pytest

from tlsedge.guard.ratelimit import ConnectionLimiter, RateLimiter, RateRule, parse_rate, request_path
from tlsedge.guard.shared import SharedTable

NOW = 1_763_700_000.0


@pytest.fixture(scope="module")
def table() -> SharedTable:
    return SharedTable()


def limiter(table: SharedTable, *rules: RateRule, site: str = "blog") -> RateLimiter:
    return RateLimiter(table, site, rules)


def passes(lim: RateLimiter, ip: str = "192.0.2.1", method: bytes = b"GET", target: bytes = b"/",
           headers: list[tuple[bytes, bytes]] | None = None, now: float = NOW) -> bool:
    return lim.check(ip, method, target, headers or [], now) is None


# --- parse_rate -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "rate"), [("10/s", 10.0), ("600/m", 10.0), ("1000/h", 1000 / 3600),
                                            (" 5 / S ", 5.0), ("0.5/s", 0.5)])
def test_parse_rate(text: str, rate: float):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize(("text", "reason"), [
    ("0/s", "above zero"), ("-3/m", "above zero"), ("nan/s", "above zero"), ("inf/h", "above zero"),
    ("ten/s", "'ten' is not a number"), ("10", "is not a rate"), ("10/d", "is not a rate"), ("", "is not a rate"),
])
def test_parse_rate_rejects(text: str, reason: str):
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        parse_rate(text)
    assert "'10/s'" in str(caught.value)  # says how to write one


@pytest.mark.parametrize(("fields", "reason"), [
    ({"key": "host"}, "key 'host'"), ({"key": "header:"}, "key 'header:'"), ({"rate": 0.0}, "above zero"),
    ({"burst": 0}, "burst 0"), ({"path_prefix": "api"}, "must start with '/'"), ({"action": "drop"}, "action"),
])
def test_rule_validation(fields: dict, reason: str):
    values = {"name": "r", "key": "ip", "rate": 1.0, "burst": 1, **fields}
    with pytest.raises(ValueError, match=re.escape(reason)):
        RateRule(**values)


# --- verdicts -------------------------------------------------------------------------------------------------------


def test_ip_rule_burst_then_verdict(table: SharedTable):
    rule = RateRule("per-ip", "ip", 1 / 60, 3, action="challenge")  # 1/m
    lim = limiter(table, rule)
    assert [passes(lim, "198.51.100.1") for _ in range(3)] == [True, True, True]
    verdict = lim.check("198.51.100.1", b"GET", b"/", [], NOW)
    assert verdict is not None
    assert verdict.rule is rule and verdict.action == "challenge"
    assert verdict.retry_after == 60  # whole seconds for Retry-After
    assert passes(lim, "198.51.100.2")  # another client
    assert not passes(lim, "::ffff:198.51.100.1")  # the same IPv4 client through a dual-stack socket
    assert passes(lim, "198.51.100.1", now=NOW + 60)


def test_retry_after_is_at_least_one_second(table: SharedTable):
    lim = limiter(table, RateRule("fast", "ip", 100.0, 1))
    assert passes(lim, "198.51.100.9")
    verdict = lim.check("198.51.100.9", b"GET", b"/", [], NOW)
    assert verdict is not None and verdict.retry_after == 1  # 0.01 s rounds up to 1


def test_ip_prefix_groups_a_v4_24_and_a_v6_64(table: SharedTable):
    lim = limiter(table, RateRule("prefix", "ip_prefix", 1.0, 1))
    assert passes(lim, "203.0.113.1")
    assert not passes(lim, "203.0.113.200")
    assert passes(lim, "203.0.114.1")
    assert passes(lim, "2001:db8:1:2::1")
    assert not passes(lim, "2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert passes(lim, "2001:db8:1:3::1")


def test_header_key_and_missing_header(table: SharedTable):
    lim = limiter(table, RateRule("api-key", "header:X-Api-Key", 1.0, 1))
    assert passes(lim, headers=[(b"x-api-key", b"alpha")])
    assert not passes(lim, "192.0.2.99", headers=[(b"X-API-KEY", b"alpha")])  # per key value, any client
    assert passes(lim, headers=[(b"X-Api-Key", b"beta")])
    assert all(passes(lim, headers=[(b"Accept", b"*/*")]) for _ in range(5))  # no header: not limited by this rule


def test_cookie_key(table: SharedTable):
    lim = limiter(table, RateRule("session", "cookie:sid", 1.0, 2))
    jar = [(b"Cookie", b"theme=dark; sid=abc123; lang=en")]
    assert passes(lim, headers=jar) and passes(lim, headers=jar)
    assert not passes(lim, "192.0.2.50", headers=[(b"cookie", b"sid=abc123")])
    assert passes(lim, headers=[(b"Cookie", b"sid=other")])
    assert all(passes(lim, headers=[(b"Cookie", b"sidx=abc123")]) for _ in range(4))  # another cookie's name


def test_path_key_is_one_counter_per_url_for_everyone(table: SharedTable):
    lim = limiter(table, RateRule("per-url", "path", 1.0, 2))
    assert passes(lim, "192.0.2.1", target=b"/search?q=a")
    assert passes(lim, "192.0.2.2", target=b"/search?q=b")
    assert not passes(lim, "192.0.2.3", target=b"/search")
    assert not passes(lim, "192.0.2.3", target=b"/%73earch")  # the same URL spelled with an escape
    assert not passes(lim, "192.0.2.3", target=b"/x/../search")  # and with a dot-segment
    assert passes(lim, "192.0.2.3", target=b"/other")


def test_path_prefix_and_methods_scope_a_rule(table: SharedTable):
    lim = limiter(table, RateRule("login", "ip", 1.0, 1, path_prefix="/login", methods=frozenset({b"POST"})))
    ip = "192.0.2.77"
    assert passes(lim, ip, b"POST", b"/login")
    assert not passes(lim, ip, b"POST", b"/login?next=/")
    assert not passes(lim, ip, b"POST", b"/%6Cogin")
    assert not passes(lim, ip, b"POST", b"/static/..%2Flogin")
    assert passes(lim, ip, b"GET", b"/login")  # another method
    assert passes(lim, ip, b"POST", b"/about")  # another path


def test_keys_are_namespaced_by_site_and_rule(table: SharedTable):
    a = limiter(table, RateRule("r", "ip", 1.0, 1), site="a")
    b = limiter(table, RateRule("r", "ip", 1.0, 1), site="b")
    two = limiter(table, RateRule("one", "ip", 1.0, 1), RateRule("two", "ip", 1.0, 2), site="c")
    ip = "192.0.2.33"
    assert passes(a, ip) and passes(b, ip)
    assert not passes(a, ip) and not passes(b, ip)
    assert passes(two, ip)
    verdict = two.check(ip, b"GET", b"/", [], NOW)
    assert verdict is not None and verdict.rule.name == "one"  # the first rule that trips


def test_later_rules_count_until_one_trips(table: SharedTable):
    lim = limiter(table, RateRule("loose", "ip", 1.0, 10), RateRule("tight", "ip", 1.0, 2), site="order")
    ip = "192.0.2.34"
    results = [lim.check(ip, b"GET", b"/", [], NOW) for _ in range(3)]
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].rule.name == "tight"


def test_request_path():
    assert request_path(b"/a/b?x=1") == b"/a/b"
    assert request_path(b"/a/./b/../c") == b"/a/c"
    assert request_path(b"/a/b/..") == b"/a/"
    assert request_path(b"/../../etc") == b"/etc"
    assert request_path(b"/a\\..\\b") == b"/b"
    assert request_path(b"/%7Euser/%2e%2e/x") == b"/x"


def test_limits_are_exact_across_workers():
    table = SharedTable(1024)
    lim = limiter(table, RateRule("exact", "ip", 1.0, 20))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()

    def worker() -> None:
        barrier.wait(30)
        results.put(sum(passes(lim, "192.0.2.10") for _ in range(50)))

    processes = [context.Process(target=worker) for _ in range(4)]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(10)
    assert total == 20  # the burst, for the whole edge, not per worker


# --- connections at accept time -------------------------------------------------------------------------------------


def test_connection_limiter_concurrency(table: SharedTable):
    limits = ConnectionLimiter(table, per_ip_concurrent=2, per_ip_rate=0, per_ip_burst=0)
    ip = "192.0.2.200"
    assert [limits.admit(ip, NOW) for _ in range(3)] == [True, True, False]
    assert limits.admit("192.0.2.201", NOW)
    limits.closed(ip)
    assert limits.admit("::ffff:192.0.2.200", NOW)  # the same client, seen through a dual-stack socket
    assert not limits.admit(ip, NOW)


def test_connection_limiter_rate(table: SharedTable):
    limits = ConnectionLimiter(table, per_ip_concurrent=0, per_ip_rate=2.0, per_ip_burst=3)
    ip = "192.0.2.210"
    assert [limits.admit(ip, NOW) for _ in range(4)] == [True, True, True, False]
    assert limits.admit(ip, NOW + 0.5)
    assert not limits.admit(ip, NOW + 0.5)
    for _ in range(10):
        limits.closed(ip)  # no concurrency limit: nothing to give back, and nothing breaks


def test_no_limits_admit_everything(table: SharedTable):
    limits = ConnectionLimiter(table, 0, 0, 0)
    assert all(limits.admit("192.0.2.220", NOW) for _ in range(1000))


def test_check_cost(table: SharedTable):
    lim = limiter(table, RateRule("ip", "ip", 1.0, 10), RateRule("api", "ip_prefix", 1.0, 10, path_prefix="/api/"),
                  RateRule("key", "header:x-api-key", 1.0, 10), site="bench")
    headers = [(b"Host", b"example.com"), (b"User-Agent", b"bench"), (b"Accept", b"*/*"), (b"X-Api-Key", b"k1")]
    clock = itertools.count(NOW)  # one request per second: every call passes every rule

    def check() -> object:
        return lim.check("192.0.2.1", b"GET", b"/api/items?page=2", headers, next(clock))

    number = 20_000
    best = min(timeit.repeat(check, number=number, repeat=5)) / number
    print(f"RateLimiter.check, 3 matching rules: {best * 1e6:.2f} us")
    assert check() is None
    assert best < 60e-6  # ~2.5 us on the development machine; generous for loaded CI runners
