"""Allow/deny lists: parsing, IPv4/IPv6 and mapped addresses, allow over deny, combining, and the cost of a decision."""

from __future__ import annotations

import ipaddress
import random
import re
import timeit

import pytest

from tlsedge.guard.iprules import IpRules, canonical_ip, parse_network


def test_parse_network():
    assert parse_network("192.0.2.0/24") == ipaddress.IPv4Network("192.0.2.0/24")
    assert parse_network(" 192.0.2.7 ") == ipaddress.IPv4Network("192.0.2.7/32")
    assert parse_network("2001:db8::/32") == ipaddress.IPv6Network("2001:db8::/32")
    assert parse_network("::ffff:192.0.2.0/120") == ipaddress.IPv4Network("192.0.2.0/24")  # mapped: stored as v4
    assert parse_network("::ffff:192.0.2.9") == ipaddress.IPv4Network("192.0.2.9/32")


@pytest.mark.parametrize(("text", "reason"), [
    ("192.0.2.1/24", "bits set after the prefix length; write the network as '192.0.2.0/24'"),
    ("2001:db8::1/32", "write the network as '2001:db8::/32'"),
    ("example.com", "not an IP address or network"),
    ("192.0.2.0/33", "not an IP address or network"),
    ("300.1.1.1", "not an IP address or network"),
    ("", "empty"),
])
def test_parse_network_errors(text: str, reason: str):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_network(text)


def test_bad_rule_is_refused_at_construction():
    with pytest.raises(ValueError, match=re.escape("'10.0.0.1/8' has bits set")):
        IpRules(deny=["10.0.0.1/8"])


def test_decide_v4_v6_and_mapped():
    rules = IpRules(deny=["192.0.2.0/24", "198.51.100.7", "2001:db8:bad::/48", "::ffff:203.0.113.0/120"])
    assert rules.decide("192.0.2.200") == "deny"
    assert rules.decide("::ffff:192.0.2.200") == "deny"  # an IPv4 client through a dual-stack socket
    assert rules.decide("198.51.100.7") == "deny"
    assert rules.decide("198.51.100.8") is None
    assert rules.decide("203.0.113.5") == "deny"  # written as mapped, matched as IPv4
    assert rules.decide("2001:db8:bad:1::5") == "deny"
    assert rules.decide("2001:db8:bad0::5") is None
    assert rules.decide("fe80::1%eth0") is None  # a zone is not part of the address
    assert rules.decide("::c000:2c8") is None  # IPv4-compatible (not mapped) ::192.0.2.200 is IPv6


def test_allow_wins_over_deny():
    rules = IpRules(allow=["10.1.2.0/24", "2001:db8::/32"], deny=["10.0.0.0/8", "10.1.2.3", "2001:db8:1::/48"])
    assert rules.decide("10.1.2.3") == "allow"  # the operator's own network, even inside a deny
    assert rules.decide("10.9.9.9") == "deny"
    assert rules.decide("2001:db8:1::1") == "allow"
    assert rules.decide("192.0.2.1") is None


def test_combine_global_and_site():
    edge = IpRules(allow=["10.0.0.0/8"], deny=["192.0.2.0/24"])
    site = IpRules(allow=["192.0.2.10"], deny=["10.66.0.0/16", "198.51.100.0/24"])
    both = IpRules.combine(edge, site)
    assert both.decide("192.0.2.10") == "allow"  # a site allow beats the global deny
    assert both.decide("10.66.1.1") == "allow"  # a global allow beats the site deny
    assert both.decide("192.0.2.11") == "deny"
    assert both.decide("198.51.100.1") == "deny"
    assert both.decide("203.0.113.1") is None
    assert not IpRules() and both


def test_answers_stay_right_past_the_cache_size():
    rules = IpRules(deny=["10.0.0.0/16"])
    for i in range(10_000):
        ip = f"10.{i % 3}.{i // 256 % 256}.{i % 256}"
        assert rules.decide(ip) == ("deny" if i % 3 == 0 else None)


def test_garbage_address_is_an_error():
    with pytest.raises(ValueError, match="not an IP address"):
        IpRules(deny=["10.0.0.0/8"]).decide("not-an-ip")


def test_canonical_ip():
    assert canonical_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert canonical_ip("fe80::1%eth0") == "fe80::1"
    assert canonical_ip("2001:db8::1") == "2001:db8::1"
    assert canonical_ip("192.0.2.1") == "192.0.2.1"


def test_decide_cost_with_10000_rules():
    rng = random.Random(6)
    deny = set()
    while len(deny) < 9_000:
        length = rng.choice((32, 32, 32, 28, 24, 24, 20, 16))
        deny.add(str(ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - length) << (32 - length), length))))
    deny |= {f"2001:db8:{i:x}::/48" for i in range(500)} | {f"2a00:{i:x}::1" for i in range(500)}
    rules = IpRules(allow=["10.0.0.0/8", "2001:db8:ffff::/48"], deny=sorted(deny))
    assert len(rules.deny) == 10_000
    some = sorted(deny)[123]
    assert rules.decide(str(ipaddress.ip_network(some)[-1])) == "deny"
    clients = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
               for _ in range(50_000)]
    uncached = min(timeit.repeat(lambda: [rules.decide(ip) for ip in clients], number=1, repeat=3)) / len(clients)
    cached = min(timeit.repeat(lambda: rules.decide("192.0.2.1"), number=50_000, repeat=3)) / 50_000
    print(f"IpRules.decide, 10,000 rules: {uncached * 1e6:.2f} us uncached, {cached * 1e6:.2f} us cached")
    assert uncached < 50e-6 and cached < 10e-6  # ~1.2 and ~0.06 us on the development machine
