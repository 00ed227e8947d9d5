"""Failover through a real edge: servers stopped and restarted under load (Python and nginx origins), retries and
when they must not happen, the retry budget, backups, sticky pins to lost or draining servers, queueing at
max_connections, and consistent hashing when a server goes away.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest
from e2e_support import build_request, closed_port, wait_for
from pool_support import (
    FleetServer,
    LoadLoop,
    NginxServer,
    get,
    health,
    pool,
    pool_site,
    served_by,
    wait_health,
)

NO_EJECTION = {"consecutive_failures": 0}


def _dead() -> str:
    """An origin URL that refuses connections."""
    return f"http://127.0.0.1:{closed_port()}"


def _failure_lines(edge, url: str, what: str) -> list[str]:
    """Error-log lines that mention ``url`` and ``what``."""
    return [line for line in edge.error_text().splitlines() if url in line and what in line]


# ---------------------------------------------------------------------------------------------------------- under load


def _kill_and_restart(servers, stop, start, down: float = 0.6, up: float = 0.6) -> None:
    for server in servers:
        stop(server)
        time.sleep(down)
        start(server)
        time.sleep(up)


def _assert_back_in_rotation(load: LoadLoop, names: list[str]) -> None:
    """Every server serves again after its restart (health rise, end of ejection, slow start)."""
    before = Counter(load.by_server)
    wait_for(lambda: all(load.by_server[n] > before[n] for n in names), 10, what=f"traffic to all of {names}")


def test_stopping_and_restarting_servers_under_load_loses_no_request(blog_edge, fleet):
    servers = fleet("a", "b", "c")
    for server in servers:
        server.delay = 0.005  # some stops land while a request is being answered
    edge = blog_edge(pool("main", servers, health=health(), outlier={"base_ejection": "1s"}))
    with LoadLoop(edge) as load:
        wait_for(lambda: load.count >= 20, 10, what="the load loop to run")
        _kill_and_restart(servers, FleetServer.stop, FleetServer.start)
        _kill_and_restart(servers[:1], FleetServer.stop, FleetServer.start, down=0.05, up=0.05)  # a quick bounce
        _assert_back_in_rotation(load, ["a", "b", "c"])
    assert load.failures == [], load.failures[:10]
    assert load.count >= 200, load.count
    for server in servers:  # every stop really failed some attempts, which retries hid from the client
        assert _failure_lines(edge, server.url, "site blog: origin"), server


def test_nginx_in_the_fleet_killed_with_sigterm_and_sigkill_loses_no_request(blog_edge, fleet, tmp_path):
    a, b = fleet("a", "b")
    nginx = NginxServer(tmp_path / "nginx", "nginx")
    try:
        edge = blog_edge(pool("main", [a, b, nginx], health=health(), outlier={"base_ejection": "1s"}))
        with LoadLoop(edge) as load:
            wait_for(lambda: load.by_server["nginx"] >= 5, 10, what="traffic to nginx")
            _kill_and_restart([nginx], lambda s: s.stop(signal.SIGTERM), NginxServer.start)
            _kill_and_restart([nginx], lambda s: s.stop(signal.SIGKILL), NginxServer.start)
            _kill_and_restart([a], FleetServer.stop, FleetServer.start)
            _assert_back_in_rotation(load, ["a", "b", "nginx"])
        assert load.failures == [], load.failures[:10]
        assert nginx.requests >= 5
        assert _failure_lines(edge, nginx.url, "site blog: origin")
    finally:
        nginx.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------- retries


def test_refused_connection_is_retried_for_post_too(blog_edge, fleet):
    (a,) = fleet("a")
    dead = _dead()
    edge = blog_edge(pool("main", [dead, a], outlier=NO_EJECTION))
    for i in range(6):
        resp = get(edge, f"/post/{i}", method="POST", body=b"payload %d" % i)
        assert resp.status == 200, resp.body
        assert resp.header("x-server") == "a"
    # nothing reached the dead server, so resending the POST was safe; each arrived exactly once, body intact
    assert a.targets() == [f"/post/{i}" for i in range(6)]
    assert [s.body for s in a.seen] == [b"payload %d" % i for i in range(6)]
    wait_for(lambda: len(_failure_lines(edge, dead, "unreachable")) >= 2, 5, what="the refused attempts logged")


def test_reset_before_answer_retries_get_but_never_post(blog_edge, fleet):
    resetter, good = fleet("resetter", "good")
    resetter.mode = "reset"
    edge = blog_edge(pool("main", [resetter, good], outlier=NO_EJECTION))
    for i in range(6):
        resp = get(edge, f"/get/{i}")
        assert resp.status == 200 and resp.header("x-server") == "good"
    assert good.targets() == [f"/get/{i}" for i in range(6)]
    assert any(t.startswith("/get/") for t in resetter.targets())  # the GETs that met the reset were resent

    statuses = {}
    for i in range(6):
        statuses[f"/post/{i}"] = get(edge, f"/post/{i}", method="POST", body=b"order").status
    reset_posts = [t for t in resetter.targets() if t.startswith("/post/")]
    good_posts = [t for t in good.targets() if t.startswith("/post/")]
    assert len(reset_posts) >= 2, statuses
    assert sorted(reset_posts + good_posts) == sorted(statuses)  # every POST reached exactly one origin, once
    assert {t: 502 for t in reset_posts} == {t: s for t, s in statuses.items() if s != 200}
    assert all(statuses[t] == 200 for t in good_posts)


def test_no_retry_once_response_bytes_reached_the_client(blog_edge, fleet):
    dier, good = fleet("dier", "good")
    dier.mode = "head_then_die"
    edge = blog_edge(pool("main", [dier, good], outlier=NO_EJECTION))
    truncated = 0
    for i in range(4):
        with edge.conn() as conn:
            conn.send(build_request("GET", f"/t/{i}"))
            resp = conn.read_response()
        if resp.header("x-server") == "dier":
            truncated += 1
            assert resp.status == 200 and not resp.complete and len(resp.body) == 100
        else:
            assert resp.status == 200 and resp.complete and resp.body == b"good"
    assert truncated >= 2
    # each request reached one origin once: the truncated ones were not resent
    assert Counter(dier.targets() + good.targets()) == {f"/t/{i}": 1 for i in range(4)}
    assert len(dier.targets()) == truncated


def test_retries_zero_disables_retrying(blog_edge, fleet):
    (a,) = fleet("a")
    edge = blog_edge(pool("main", [_dead(), a], retries=0, outlier=NO_EJECTION))
    statuses = [get(edge, f"/r/{i}").status for i in range(6)]
    assert statuses.count(502) >= 2, statuses
    assert statuses.count(200) == a.requests, statuses


def test_retry_budget_stops_a_retry_storm(blog_edge, fleet):
    servers = fleet("x", "y", "z")
    for server in servers:
        server.mode = "reset"
    edge = blog_edge(pool("main", servers, retries=2, retry_budget=0.2, outlier=NO_EJECTION))
    n = 60
    with edge.conn() as conn:
        for i in range(n):
            assert conn.request("GET", f"/storm/{i}").status == 502
    attempts = sum(s.connections for s in servers)
    # retries = 2 alone would allow 3 attempts per request (180); the budget allows 20 % more plus a burst of 10
    assert attempts <= n * (1 + 0.2) + 10, attempts
    assert attempts >= n + 5, attempts  # but a few retries did happen (the burst)
    assert sum(s.requests for s in servers) == attempts
    wait_for(lambda: any("retry budget is spent" in e.get("error", "") for e in edge.access_entries()), 5,
             what="the spent budget named in the access log")


# ---------------------------------------------------------------------------------------------------------- backups


def test_backup_serves_only_while_every_primary_is_down(blog_edge, fleet):
    a, b, spare = fleet("a", "b", "spare")
    edge = blog_edge(pool("main", [a, b, {"address": spare.url, "backup": True}], health=health()))
    assert set(served_by(edge, 10)) == {"a", "b"}
    a.stop()
    wait_health(edge, a, "DOWN")
    assert set(served_by(edge, 6)) == {"b"}  # one primary left: still no backup
    b.stop()
    wait_health(edge, b, "DOWN")
    assert set(served_by(edge, 10)) == {"spare"}
    a.start()
    b.start()
    wait_health(edge, a, "UP again")
    wait_health(edge, b, "UP again")
    wait_for(lambda: get(edge).header("x-server") != "spare", 5, what="a primary to serve again")
    spare.reset_counts()
    assert set(served_by(edge, 10)) <= {"a", "b"}
    assert spare.requests == 0


def test_request_whose_primaries_all_fail_is_retried_on_the_backup(blog_edge, fleet):
    (spare,) = fleet("spare")
    edge = blog_edge(pool("main", [_dead(), {"address": spare.url, "backup": True}]))
    resp = get(edge, "/")  # the primary refuses: nothing was sent, the backup can take the request
    assert (resp.status, resp.header("x-server")) == (200, "spare")


# ---------------------------------------------------------------------------------------------------------- sticky


def _sticky(resp) -> str:
    lines = [v for v in resp.all("set-cookie") if v.startswith("tlsedge_srv=")]
    assert len(lines) == 1, resp.headers
    return lines[0].split(";")[0].split("=", 1)[1]


def test_sticky_pin_to_a_stopped_server_fails_over_and_is_replaced(blog_edge, fleet):
    servers = fleet("a", "b", "c")
    edge = blog_edge(pool("main", servers, sticky=True))
    first = get(edge, "/")
    cookie = _sticky(first)
    pinned = next(s for s in servers if s.name == first.header("x-server"))
    pinned.stop()
    resp = get(edge, "/", headers=[("Cookie", f"tlsedge_srv={cookie}")])
    assert resp.status == 200
    assert resp.header("x-server") != pinned.name
    fresh = _sticky(resp)  # re-pinned to the server that answered
    assert fresh != cookie
    for _ in range(4):
        again = get(edge, "/", headers=[("Cookie", f"tlsedge_srv={fresh}")])
        assert again.header("x-server") == resp.header("x-server")
        assert not again.all("set-cookie")


def test_draining_server_keeps_only_its_pinned_clients(blog_edge, fleet, site_certs):
    a, b, c = fleet("a", "b", "c")

    def pools(drain: bool) -> dict:
        return pool("main", [a, b, {"address": c.url, "drain": drain}], sticky=True)

    edge = blog_edge(pools(False))
    with edge.conn() as conn:
        responses = [conn.request("GET", "/") for _ in range(3)]
    on_c = next(r for r in responses if r.header("x-server") == "c")
    cookie = [("Cookie", f"tlsedge_srv={_sticky(on_c)}")]
    old_workers = set(edge.worker_pids())
    edge.reload([pool_site(site_certs["blog"], [pools(True)])])
    wait_for(lambda: "reloaded" in edge.error_text(), 10, what="the reload")
    wait_for(lambda: not old_workers & set(edge.worker_pids()), 10, what="the old worker to exit")
    c.reset_counts()
    assert set(served_by(edge, 12)) == {"a", "b"}  # new clients never go to the draining server
    for _ in range(4):
        resp = get(edge, "/", headers=cookie)
        assert resp.header("x-server") == "c"  # the pin outlives the reload (same key in state_dir)
        assert not resp.all("set-cookie")
    assert c.requests == 4


# ---------------------------------------------------------------------------------------------------------- queueing


def _at_once(edge, targets: list[str]) -> list[tuple[int, str | None, float]]:
    """Send the requests concurrently; (status, Retry-After, seconds) of each, in order."""
    results: list[tuple[int, str | None, float] | None] = [None] * len(targets)
    start = time.monotonic()

    def one(i: int) -> None:
        resp = get(edge, targets[i])
        results[i] = (resp.status, resp.header("retry-after"), time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
        time.sleep(0.02)  # arrival order = queue order
    for t in threads:
        t.join(20)
    assert all(r is not None for r in results), results
    return results  # type: ignore[return-value]


def test_max_connections_queues_requests_until_queue_timeout(blog_edge, fleet):
    fits, overflows = fleet("fits", "overflows")
    edge = blog_edge(
        pool("wait", [{"address": fits.url, "max_connections": 1}], queue_timeout="5s"),
        pool("full", [{"address": overflows.url, "max_connections": 1}], queue_timeout="500ms"),
        route=[{"path_prefix": "/full/", "pool": "full"}],
    )
    results = _at_once(edge, [f"/wait/{i}?delay=0.3" for i in range(3)])
    assert [status for status, _, _ in results] == [200, 200, 200], results
    assert fits.max_inflight == 1
    assert max(t for _, _, t in results) >= 0.85  # served one after the other

    results = _at_once(edge, [f"/full/{i}?delay=2" for i in range(3)])
    assert results[0][0] == 200, results
    for status, retry_after, seconds in results[1:]:
        assert (status, retry_after) == (503, "1"), results
        assert 0.45 <= seconds < 1.9, results  # queue_timeout (checked every half second), not the slow answer
    assert overflows.requests == 1 and overflows.max_inflight == 1


# ---------------------------------------------------------------------------------------------------------- hashing


@pytest.mark.parametrize("method", ["ring", "maglev"])
def test_hash_moves_only_the_keys_of_a_lost_server(blog_edge, fleet, method):
    servers = fleet("a", "b", "c")
    edge = blog_edge(pool("main", servers, balance="hash", hash_on="header:X-User", hash_method=method,
                          health=health()))
    keys = [f"user{i}" for i in range(30)]

    def placement() -> dict[str, str]:
        out = {}
        with edge.conn() as conn:
            for key in keys:
                resp = conn.request("GET", "/", headers=[("X-User", key)])
                assert resp.status == 200, (key, resp.status)
                out[key] = resp.header("x-server")
        return out

    before = placement()
    assert set(before.values()) == {"a", "b", "c"}
    b = servers[1]
    b.stop()
    wait_health(edge, b, "DOWN")
    during = placement()
    assert {k: v for k, v in during.items() if before[k] != "b"} == {k: v for k, v in before.items() if v != "b"}
    assert all(during[k] in ("a", "c") for k in keys if before[k] == "b")
    b.start()
    wait_health(edge, b, "UP again")
    assert placement() == before  # b's keys come home
