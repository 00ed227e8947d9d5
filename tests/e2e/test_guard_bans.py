"""IP rules and bans of issue 6 through a running edge, and the operator's `tlsedge bans` commands against it.

IP rules: a site's deny list answers 403; the edge-wide deny list closes connections at accept (no ServerHello, no
HTTP response); an allow entry wins over a broader deny and skips rate limits. Bans: offenses (rate-limit hits, WAF
blocks) past a threshold ban the address (403 + Retry-After, or closed at accept for an edge-wide ban), across
both workers; `tlsedge bans list/add/remove` see and change them while the edge runs; bans outlive a restart; a
repeat ban lasts ``factor`` times longer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from e2e_support import wait_for
from guard_support import BodyOrigin, EdgeFactory, GuardEdge, plain_site, refused_at_accept, with_certificate

from tlsedge.guard.modsecurity import available

SQLI = "/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"


def one_per_minute(burst: int = 1) -> list[dict]:
    return [{"name": "slow", "key": "ip", "rate": "1/m", "burst": burst}]


@pytest.fixture(scope="module")
def origin() -> Iterator[BodyOrigin]:
    made = BodyOrigin()
    yield made
    made.close()


@pytest.fixture(scope="module")
def factory(tmp_path_factory, pki) -> Iterator[EdgeFactory]:
    made = EdgeFactory(tmp_path_factory.mktemp("ban-edges"), pki.ca_pem)
    yield made
    made.close()


def statuses(edge: GuardEdge, host: str, path: str = "/", n: int = 1, source: str | None = None) -> list[int]:
    return [edge.ask(host, path, source=source).status for _ in range(n)]


def wait_banned(edge: GuardEdge, host: str, source: str) -> None:
    """Until every worker answers with the ban (the request ids of the 403s name the worker): the worker that bans
    enforces it at once, the others from their next sweep (every 0.5 s)."""
    enforcing: set[str] = set()

    def everyone() -> bool:
        resp = edge.ask(host, "/poll", source=source)
        if resp.status == 403:
            enforcing.add(resp.header("x-request-id")[:-7])
        return len(enforcing) == int(edge.server["workers"])

    wait_for(everyone, 2, interval=0.01, what=f"{source} banned on {host} by every worker")


def refused(edge: GuardEdge, source: str, tls: bool = True) -> bool:
    return refused_at_accept(edge.https_port if tls else edge.http_port, source, "offend.example", tls)


def bans_json(edge: GuardEdge) -> list[dict]:
    done = edge.cli("bans", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- IP rules -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules_edge(factory, origin) -> GuardEdge:
    return factory([
        plain_site(origin, "denied", ip_rules={"deny": ["127.0.0.0/8"], "allow": ["127.0.4.7"]}),
        plain_site(origin, "trusted", ip_rules={"allow": ["127.0.5.5"]}, rate_limit=one_per_minute()),
        plain_site(origin, "open"),
    ])


def test_site_deny_list(rules_edge, origin) -> None:
    denied = rules_edge.ask("denied.example", "/secret", source="127.0.4.2")
    assert denied.status == 403
    assert origin.received("/secret") == []
    assert rules_edge.access_entry(denied.header("x-request-id"))["guard"] == "ip-deny"
    assert statuses(rules_edge, "open.example", "/secret", source="127.0.4.2") == [200]  # other sites serve it


def test_allow_wins_over_a_broader_deny(rules_edge, origin) -> None:
    assert statuses(rules_edge, "denied.example", "/for-seven", source="127.0.4.7") == [200]
    assert len(origin.received("/for-seven")) == 1


def test_allow_skips_rate_limits(rules_edge) -> None:
    assert statuses(rules_edge, "trusted.example", n=4, source="127.0.5.5") == [200] * 4
    assert statuses(rules_edge, "trusted.example", n=2, source="127.0.5.6") == [200, 429]


@pytest.fixture(scope="module")
def walled(factory, origin, pki) -> GuardEdge:
    return factory([with_certificate(plain_site(origin, "walled"), pki)], https=True,
                   top={"ip_rules": {"deny": ["127.0.0.0/8"], "allow": ["127.0.0.1", "127.0.7.7"]}})


def test_edge_wide_deny_closes_at_accept(walled, origin) -> None:
    assert refused_at_accept(walled.https_port, "127.0.7.8", "walled.example")
    assert refused_at_accept(walled.http_port, "127.0.7.8", "walled.example", tls=False)
    assert not refused_at_accept(walled.https_port, "127.0.7.7", "walled.example")
    resp = walled.ask("walled.example", "/in", source="127.0.7.7")
    assert resp.status == 200 and len(origin.received("/in")) == 1


# --- bans -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ban_edge(factory, origin, pki) -> GuardEdge:
    sites = [
        plain_site(origin, "offend", rate_limit=one_per_minute(), bans={"threshold": 3, "duration": "30s"}),
        plain_site(origin, "everywhere", rate_limit=one_per_minute()),  # offenses here follow the edge-wide [bans]
        plain_site(origin, "grow", rate_limit=one_per_minute(),
                   bans={"threshold": 1, "duration": "1s", "factor": 3, "max_duration": "1h"}),
        plain_site(origin, "unguarded"),
    ]
    if available() is None:
        sites.append(plain_site(origin, "wafban", waf={}, bans={"threshold": 2, "duration": "30s"}))
    top = {"ip_rules": {"allow": ["127.0.0.1"]}, "bans": {"threshold": 2, "duration": "30s", "scope": "global"}}
    return factory([with_certificate(site, pki) for site in sites], top=top, https=True, workers=2)


def test_rate_limit_offenses_ban_on_the_site(ban_edge, origin) -> None:
    src = "127.0.8.1"
    assert statuses(ban_edge, "offend.example", n=4, source=src) == [200, 429, 429, 429]
    wait_banned(ban_edge, "offend.example", src)
    for _ in range(4):  # whichever worker answers
        banned = ban_edge.ask("offend.example", "/after-ban", source=src)
        assert banned.status == 403 and 25 <= int(banned.header("retry-after")) <= 30
    assert origin.received("/after-ban") == []
    assert ban_edge.access_entry(banned.header("x-request-id"))["guard"] == "banned"
    assert statuses(ban_edge, "unguarded.example", source=src) == [200]  # a site ban
    assert statuses(ban_edge, "offend.example", source="127.0.8.2") == [200]
    [ban] = [b for b in bans_json(ban_edge) if b["ip"] == src]
    assert ban["scope"] == "offend" and ban["count"] == 1 and ban["expires"] - ban["created"] == pytest.approx(30)


@pytest.mark.skipif(available() is not None, reason=f"{available()}")
def test_waf_blocks_are_offenses(ban_edge, origin) -> None:
    src = "127.0.8.5"
    assert [ban_edge.ask("wafban.example", SQLI, source=src).status for _ in range(2)] == [403, 403]
    wait_banned(ban_edge, "wafban.example", src)
    for _ in range(4):
        benign = ban_edge.ask("wafban.example", "/harmless", source=src)
        assert benign.status == 403 and benign.header("retry-after")
    assert ban_edge.access_entry(benign.header("x-request-id"))["guard"] == "banned"
    assert origin.received("/harmless") == []


def test_global_ban_closes_connections_at_accept_and_cli_lifts_it(ban_edge) -> None:
    src = "127.0.9.1"
    assert statuses(ban_edge, "everywhere.example", n=3, source=src) == [200, 429, 429]
    wait_for(lambda: refused(ban_edge, src), 1, what="the ban")
    time.sleep(0.6)  # the other worker learns of it at its next sweep (every 0.5 s); which worker accepts is unknown
    assert all(refused(ban_edge, src) for _ in range(8))
    assert all(refused(ban_edge, src, tls=False) for _ in range(8))
    assert not refused(ban_edge, "127.0.9.2")
    listed = ban_edge.cli("bans", "list")
    assert listed.returncode == 0
    [line] = [line for line in listed.stdout.splitlines() if src in line]
    assert "every site" in line and "rate-limit slow" in line
    assert [b["scope"] for b in bans_json(ban_edge) if b["ip"] == src] == ["*"]
    removed = ban_edge.cli("bans", "remove", src, "--global")
    assert removed.returncode == 0, removed.stderr
    lifted_at = time.monotonic()
    wait_for(lambda: all(not refused(ban_edge, src) for _ in range(6)), 1.5,
             what="the lifted ban to reach both workers")
    assert time.monotonic() - lifted_at < 1.5
    assert ban_edge.cli("bans", "remove", src, "--global").returncode == 1  # nothing left to lift


def test_bans_added_by_hand(ban_edge, origin) -> None:
    added = ban_edge.cli("bans", "add", "127.0.10.1", "--site", "offend", "--duration", "1h", "--reason", "abuse")
    assert added.returncode == 0, added.stderr
    wait_banned(ban_edge, "offend.example", "127.0.10.1")
    for _ in range(4):  # whichever worker answers
        banned = ban_edge.ask("offend.example", "/by-hand", source="127.0.10.1")
        assert banned.status == 403 and 3500 <= int(banned.header("retry-after")) <= 3600
    assert origin.received("/by-hand") == []
    assert ban_edge.cli("bans", "add", "127.0.10.2", "--global", "--duration", "10m").returncode == 0
    wait_for(lambda: refused(ban_edge, "127.0.10.2"), 1.5, what="the global ban by hand")
    assert ban_edge.cli("bans", "add", "127.0.10.4", "--site", "unguarded").returncode == 0
    wait_banned(ban_edge, "unguarded.example", "127.0.10.4")  # a site without guard tables enforces bans too
    assert ban_edge.ask("offend.example", source="127.0.10.4").status == 200  # ... on that site only
    bad = ban_edge.cli("bans", "add", "127.0.10.0/24", "--global")
    assert bad.returncode != 0 and "network" in bad.stderr and "Traceback" not in bad.stderr
    unknown = ban_edge.cli("bans", "add", "127.0.10.3", "--site", "nosuchsite")
    assert unknown.returncode != 0 and "nosuchsite" in unknown.stderr


def test_a_repeat_ban_lasts_factor_times_longer(ban_edge) -> None:
    src = "127.0.11.1"
    assert statuses(ban_edge, "grow.example", n=2, source=src) == [200, 429]
    [first] = [b for b in bans_json(ban_edge) if b["ip"] == src]
    assert first["count"] == 1 and first["expires"] - first["created"] == pytest.approx(1)
    time.sleep(max(0.0, first["expires"] - time.time()) + 0.1)
    assert statuses(ban_edge, "grow.example", source=src) == [429]  # the limit still trips: a second offense
    [second] = [b for b in bans_json(ban_edge) if b["ip"] == src]
    assert second["count"] == 2 and second["expires"] - second["created"] == pytest.approx(3)
    wait_banned(ban_edge, "grow.example", src)
    retry = ban_edge.ask("grow.example", source=src).header("retry-after")
    assert retry is not None and 1 <= int(retry) <= 3


def test_bans_outlive_a_restart(ban_edge) -> None:
    """Last in this module: it restarts the edge."""
    assert ban_edge.cli("bans", "add", "127.0.12.1", "--global", "--duration", "10m").returncode == 0
    assert statuses(ban_edge, "offend.example", n=4, source="127.0.12.2")[-1] == 429
    wait_banned(ban_edge, "offend.example", "127.0.12.2")
    ban_edge.stop()
    ban_edge.start()
    assert refused(ban_edge, "127.0.12.1")
    assert statuses(ban_edge, "offend.example", source="127.0.12.2") == [403]
    assert statuses(ban_edge, "offend.example", source="127.0.12.3") == [200]
