"""Balancing through a real edge: how each algorithm spreads requests over a pool, consistent hashing on each key
source with both methods, and the sticky cookie (attributes, pinning, stripping, tampering).

One edge serves every pool of this module from the same three fleet servers; routes pick the pool by path prefix, so
each pool keeps its own balancer state while the servers are shared.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from e2e_support import Edge
from pool_support import Fleet, FleetServer, get, pool, pool_site, served_by

HASH_SOURCES = {"hip": "client_ip", "hdr": "header:X-User", "ck": "cookie:session", "uri": "uri"}
METHODS = ("ring", "maglev")


@pytest.fixture(scope="module")
def servers() -> Iterator[list[FleetServer]]:
    fleet = Fleet()
    yield fleet("a", "b", "c")
    fleet.close()


def _pools(a: FleetServer, b: FleetServer, c: FleetServer) -> list[dict]:
    trio = [a, b, c]
    pools = [
        pool("rr", trio),
        pool("w31", [a, {"address": b.url, "weight": 3}]),
        pool("lr", trio, balance="least_requests"),
        pool("p2c", trio, balance="power_of_two"),
        pool("sticky", trio, sticky=True),
        pool("other", trio, sticky={"cookie": "srv_other"}),
    ]
    for prefix, source in HASH_SOURCES.items():
        for method in METHODS:
            pools.append(pool(f"{prefix}-{method}", trio, balance="hash", hash_on=source, hash_method=method))
    return pools


@pytest.fixture(scope="module")
def edge(tmp_path_factory, pki, site_certs, servers) -> Iterator[Edge]:
    pools = _pools(*servers)
    routes = [{"path_prefix": f"/{p['name']}/", "pool": p["name"]} for p in pools[1:]]
    blog = pool_site(site_certs["blog"], pools, route=routes, redirect_http=False)
    edge = Edge(tmp_path_factory.mktemp("balancing-edge"), [blog], pki.ca_pem)
    edge.start()
    yield edge
    edge.stop()


@pytest.fixture(autouse=True)
def _fresh(servers: list[FleetServer]) -> None:
    for server in servers:
        server.reset_counts()
        server.delay = 0.0


# ---------------------------------------------------------------------------------------------------------- spread


def test_round_robin_equal_weights_is_exact(edge):
    names = served_by(edge, 60, "/")
    assert Counter(names) == {"a": 20, "b": 20, "c": 20}
    # smooth: every window of three consecutive requests visits every server
    assert all(len(set(names[i:i + 3])) == 3 for i in range(0, 60, 3)), names


def test_round_robin_weights_three_to_one(edge):
    names = served_by(edge, 60, "/w31/x")
    assert Counter(names) == {"b": 45, "a": 15}
    # smooth weighted round robin spreads the heavy server: never 4 "b" in a row
    assert "bbbb" not in "".join(names), names


def _concurrent(edge: Edge, target: str, clients: int, per_client: int) -> Counter[str]:
    """Requests from several client threads at once (each on its own keep-alive connection)."""
    counts: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            names = served_by(edge, per_client, target)
        except Exception as exc:  # reported below, in the test's thread
            errors.append(repr(exc))
            return
        with lock:
            counts.update(names)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(counts.values()) == clients * per_client
    return counts


@pytest.mark.parametrize("balance", ["lr", "p2c"])
def test_load_aware_balancers_send_less_to_a_slow_server(edge, servers, balance):
    servers[2].delay = 0.25  # c
    counts = _concurrent(edge, f"/{balance}/slow", clients=4, per_client=12)
    # round robin would give c a third (16); load-aware picks avoid it while it holds requests in flight
    assert counts["c"] < min(counts["a"], counts["b"]) / 2, counts
    assert counts["c"] <= 10, counts


@pytest.mark.parametrize("balance", ["lr", "p2c"])
def test_load_aware_balancers_use_every_server_when_idle(edge, balance):
    counts = Counter(served_by(edge, 60, f"/{balance}/idle"))
    assert set(counts) == {"a", "b", "c"}, counts
    assert min(counts.values()) >= 8, counts  # p2c is random: 20 expected each, 8 is more than 3 sigma below


# ---------------------------------------------------------------------------------------------------------- hashing


@pytest.mark.parametrize("method", METHODS)
def test_hash_client_ip_keeps_a_client_on_one_server(edge, method):
    target = f"/hip-{method}/x"
    one_client = {get(edge, target).header("x-server") for _ in range(8)}  # new connection each time
    assert len(one_client) == 1, one_client
    many = {f"127.0.0.{i}": get(edge, target, source=f"127.0.0.{i}").header("x-server") for i in range(2, 42)}
    assert set(many.values()) == {"a", "b", "c"}, many
    again = {ip: get(edge, target, source=ip).header("x-server") for ip in list(many)[:10]}
    assert again == {ip: many[ip] for ip in again}


def _by_key(edge: Edge, target: str, keys: list[str], header: str) -> dict[str, str]:
    placed = {}
    with edge.conn() as conn:
        for key in keys:
            resp = conn.request("GET", target, headers=[(header, key)])
            assert resp.status == 200
            placed[key] = resp.header("x-server")
    return placed


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("prefix", "header", "value"), [("hdr", "X-User", "{}"), ("ck", "Cookie", "a=1; session={}")])
def test_hash_on_header_and_cookie(edge, method, prefix, header, value):
    target = f"/{prefix}-{method}/page"
    keys = [value.format(f"user{i}") for i in range(40)]
    placed = _by_key(edge, target, keys, header)
    assert set(placed.values()) == {"a", "b", "c"}, placed  # different values spread
    # the same value goes to the same server, on other connections and whatever else the request carries
    for key in keys[:8]:
        for path in ("/other", "/yet/another?q=1"):
            resp = get(edge, f"/{prefix}-{method}{path}", headers=[(header, key)])
            assert resp.header("x-server") == placed[key], key


@pytest.mark.parametrize("method", METHODS)
def test_hash_without_the_key_falls_back_to_round_robin(edge, method):
    names = served_by(edge, 6, f"/hdr-{method}/anon")
    assert Counter(names) == {"a": 2, "b": 2, "c": 2}, names


@pytest.mark.parametrize("method", METHODS)
def test_hash_on_uri(edge, method):
    targets = [f"/uri-{method}/item/{i}?v={i % 3}" for i in range(40)]
    placed = {t: get(edge, t).header("x-server") for t in targets}
    assert set(placed.values()) == {"a", "b", "c"}, placed
    with edge.conn() as conn:
        for t in targets[:10]:
            assert conn.request("GET", t).header("x-server") == placed[t], t


# ---------------------------------------------------------------------------------------------------------- sticky


def _sticky_cookie(resp) -> tuple[str, list[str]]:
    """The value and attributes of the edge's sticky Set-Cookie in a response."""
    lines = [v for v in resp.all("set-cookie") if v.startswith("tlsedge_srv=")]
    assert len(lines) == 1, resp.headers
    pair, *attributes = [part.strip() for part in lines[0].split(";")]
    return pair.split("=", 1)[1], attributes


def test_sticky_cookie_attributes_over_https_and_http(edge):
    value, attributes = _sticky_cookie(get(edge, "/sticky/"))
    assert "." in value
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Lax", "Secure"}
    with edge.plain_conn() as conn:
        resp = conn.request("GET", "/sticky/")
    assert resp.status == 200
    _, plain_attributes = _sticky_cookie(resp)
    assert set(plain_attributes) == {"Path=/", "HttpOnly", "SameSite=Lax"}  # never Secure over plain http


def test_sticky_cookie_pins_the_client_despite_round_robin(edge):
    first = get(edge, "/sticky/")
    value, _ = _sticky_cookie(first)
    pinned = first.header("x-server")
    cookie = [("Cookie", f"tlsedge_srv={value}")]
    with edge.conn() as conn:
        for i in range(9):
            resp = get(edge, f"/sticky/{i}", headers=cookie, conn=conn if i % 2 else None)
            assert resp.header("x-server") == pinned
            assert not resp.all("set-cookie"), resp.headers  # a valid pin is not set again
    # without the cookie the same pool still rotates
    assert len(set(served_by(edge, 6, "/sticky/anon"))) == 3


def _origin_cookie(servers: list[FleetServer], target: str) -> list[str | None]:
    """The Cookie header each server received with ``target`` (one entry per request)."""
    return [seen.header("cookie") for s in servers for seen in s.seen if seen.target == target]


def test_origin_never_receives_the_sticky_cookie(edge, servers):
    value, _ = _sticky_cookie(get(edge, "/sticky/"))
    get(edge, "/sticky/mixed", headers=[("Cookie", f"a=1; tlsedge_srv={value}; b=2")])
    assert _origin_cookie(servers, "/sticky/mixed") == ["a=1; b=2"]
    get(edge, "/sticky/split", headers=[("Cookie", "a=1"), ("Cookie", f"tlsedge_srv={value}")])
    assert _origin_cookie(servers, "/sticky/split") == ["a=1"]
    get(edge, "/sticky/alone", headers=[("Cookie", f"tlsedge_srv={value}")])
    assert _origin_cookie(servers, "/sticky/alone") == [None]  # nothing left: no Cookie header at all
    # a pool without sticky sessions passes the cookie on untouched: it is not ours there
    get(edge, "/w31/cookie", headers=[("Cookie", f"tlsedge_srv={value}")])
    assert _origin_cookie(servers, "/w31/cookie") == [f"tlsedge_srv={value}"]


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


def _tampered(value: str, other_pool_value: str) -> dict[str, str]:
    token, mac = value.split(".")
    return {
        "token": f"{_flip(token[0])}{token[1:]}.{mac}",
        "mac": f"{token}.{mac[:-1]}{_flip(mac[-1])}",
        "no mac": token,
        "other pool": other_pool_value,
        "garbage": "x.y",
    }


def test_tampered_or_foreign_cookie_is_ignored_and_replaced(edge):
    value, _ = _sticky_cookie(get(edge, "/sticky/"))
    other = [v for v in get(edge, "/other/").all("set-cookie") if v.startswith("srv_other=")]
    assert other, "the second sticky pool sets its own cookie"
    other_value = other[0].split(";")[0].split("=", 1)[1]
    for label, bad in _tampered(value, other_value).items():
        seen = set()
        with edge.conn() as conn:
            for _ in range(6):
                resp = conn.request("GET", "/sticky/t", headers=[("Cookie", f"tlsedge_srv={bad}")])
                assert resp.status == 200
                fresh, _ = _sticky_cookie(resp)  # a fresh, valid cookie every time
                assert fresh != bad
                seen.add(resp.header("x-server"))
                pinned = get(edge, "/sticky/check", headers=[("Cookie", f"tlsedge_srv={fresh}")])
                assert pinned.header("x-server") == resp.header("x-server"), label
        assert len(seen) == 3, (label, seen)  # balanced normally: round robin over the pool
