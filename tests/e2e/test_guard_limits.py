"""Rate limits and per-address connection limits of issue 6 through a running edge with two workers.

Request rate limits are exact for the whole edge (the workers share one table of counters): 40 requests against a
burst of 20 let exactly 20 through, whichever worker took each. Each key kind (ip, ip_prefix, header, cookie, path)
has a site of its own; clients play different addresses by binding to 127.0.0.x / 127.0.1.x.

Connection limits act at accept time, before TLS: a refused connection gets no ServerHello (or, on plain HTTP, no
response at all). 127.0.0.1 is on the edge-wide allow list, which skips them (the harness probes the edge from it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_support import RawConn, wait_for
from guard_support import BodyOrigin, EdgeFactory, GuardEdge, call, plain_site, refused_at_accept, with_certificate

SLOW = "1/m"  # no request gets a new token back during a test: only the burst passes


@pytest.fixture(scope="module")
def origin() -> Iterator[BodyOrigin]:
    made = BodyOrigin()
    yield made
    made.close()


@pytest.fixture(scope="module")
def factory(tmp_path_factory, pki) -> Iterator[EdgeFactory]:
    made = EdgeFactory(tmp_path_factory.mktemp("limit-edges"), pki.ca_pem)
    yield made
    made.close()


def limit(name: str, key: str, burst: int, **extra) -> dict:
    return {"name": name, "key": key, "rate": SLOW, "burst": burst, **extra}


@pytest.fixture(scope="module")
def edge(factory, origin) -> GuardEdge:
    return factory([
        plain_site(origin, "exact", rate_limit=[limit("all", "ip", 20)]),
        plain_site(origin, "hdr", rate_limit=[limit("api", "header:X-Api-Key", 2)]),
        plain_site(origin, "cookie", rate_limit=[limit("session", "cookie:session", 2)]),
        plain_site(origin, "prefix", rate_limit=[limit("net", "ip_prefix", 2)]),
        plain_site(origin, "path", rate_limit=[limit("url", "path", 2)]),
        plain_site(origin, "scoped", rate_limit=[limit("posts", "ip", 2, methods=["POST"], path_prefix="/api/")]),
        plain_site(origin, "banning", rate_limit=[limit("strict", "ip", 2, action="ban")],
                   bans={"threshold": 100, "duration": "30s"}),
    ], workers=2)


def statuses(edge: GuardEdge, host: str, path: str = "/", method: str = "GET", n: int = 1, **kw) -> list[int]:
    return [call(edge.http_port, host, path, method, **kw).status for _ in range(n)]


def test_rate_limit_is_exact_across_workers(edge, origin) -> None:
    """Requests on fresh connections, 8 at a time, against burst 20, until both workers answered some (the request
    ids tell them apart; the kernel may favour one): exactly 20 pass, the rest get 429 with Retry-After."""
    def logged(count: int) -> list[dict] | None:
        found = [e for e in edge.access_entries() if e["site"] == "exact"]
        return found if len(found) == count else None

    answers = []
    records: list[dict] = []
    with ThreadPoolExecutor(8) as pool:
        while len(answers) < 200 and len({e["request_id"][:-7] for e in records}) < 2:
            start = len(answers)
            answers += pool.map(lambda i: call(edge.http_port, "exact.example", f"/x{i}"), range(start, start + 40))
            records = wait_for(functools.partial(logged, len(answers)), 5, what="an access log record per request")
    assert len({e["request_id"][:-7] for e in records}) == 2, "only one worker took part in 200 requests"
    passed = [a for a in answers if a.status == 200]
    limited = [a for a in answers if a.status == 429]
    assert (len(passed), len(limited)) == (20, len(answers) - 20), sorted(a.status for a in answers)
    assert all(1 <= int(a.header("retry-after")) <= 60 for a in limited), [a.header("retry-after") for a in limited]
    assert len([s for s in origin.seen if s.headers.get("host") == "exact.example"]) == 20
    assert sorted(e.get("guard", "") for e in records) == [""] * 20 + ["rate-limit"] * (len(answers) - 20)


def test_header_key(edge) -> None:
    assert statuses(edge, "hdr.example", n=3, headers=[("X-Api-Key", "alpha")]) == [200, 200, 429]
    assert statuses(edge, "hdr.example", headers=[("X-Api-Key", "beta")]) == [200]
    assert statuses(edge, "hdr.example", n=3) == [200, 200, 200]  # no key: that rule does not apply


def test_cookie_key(edge) -> None:
    assert statuses(edge, "cookie.example", n=3, headers=[("Cookie", "theme=dark; session=s1")]) == [200, 200, 429]
    assert statuses(edge, "cookie.example", headers=[("Cookie", "session=s2")]) == [200]
    assert statuses(edge, "cookie.example", headers=[("Cookie", "theme=s1")]) == [200]


def test_ip_prefix_key(edge) -> None:
    """Two addresses of one /24 share a counter; another /24 has its own."""
    assert statuses(edge, "prefix.example", n=2, source="127.0.0.2") == [200, 200]
    assert statuses(edge, "prefix.example", source="127.0.0.3") == [429]
    assert statuses(edge, "prefix.example", source="127.0.1.2") == [200]


def test_path_key_is_shared_by_every_client(edge) -> None:
    assert statuses(edge, "path.example", "/report", source="127.0.0.2") == [200]
    assert statuses(edge, "path.example", "/report", source="127.0.1.2") == [200]
    assert statuses(edge, "path.example", "/report?fresh=1", source="127.0.2.2") == [429]  # the query is not the key
    assert statuses(edge, "path.example", "/other", source="127.0.2.2") == [200]


def test_methods_and_path_prefix_filter(edge) -> None:
    src = "127.0.0.4"
    assert statuses(edge, "scoped.example", "/api/items", n=4, source=src) == [200] * 4  # GETs are not counted
    assert statuses(edge, "scoped.example", "/form", "POST", n=3, source=src, body=b"a=1") == [200] * 3
    assert statuses(edge, "scoped.example", "/api/items", "POST", n=3, source=src, body=b"a=1") == [200, 200, 429]
    assert statuses(edge, "scoped.example", "/api/items", "POST", source="127.0.0.5", body=b"a=1") == [200]


def test_action_ban_bans_at_once(edge, origin) -> None:
    src = "127.0.3.3"
    assert statuses(edge, "banning.example", "/b", n=2, source=src) == [200, 200]
    banned = call(edge.http_port, "banning.example", "/b", source=src)
    assert banned.status == 403 and 25 <= int(banned.header("retry-after")) <= 30
    later = call(edge.http_port, "banning.example", "/elsewhere", source=src)
    assert later.status == 403 and later.header("retry-after")
    assert origin.received("/elsewhere") == []
    assert edge.access_entry(later.header("x-request-id"))["guard"] == "banned"
    assert statuses(edge, "banning.example", "/b", source="127.0.3.4") == [200]
    assert statuses(edge, "exact.example", "/other-site", source=src) == [200]  # a site ban: other sites serve it


# --- connection limits at accept time -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conn_edge(factory, origin, pki) -> GuardEdge:
    return factory([with_certificate(plain_site(origin, "guard"), pki)], top={"ip_rules": {"allow": ["127.0.0.1"]}},
                   https=True, workers=2, limits={"max_connections_per_ip": 3, "connection_rate_per_ip": SLOW,
                                                  "connection_burst_per_ip": 12})


def refused(edge: GuardEdge, source: str, tls: bool = True) -> bool:
    return refused_at_accept(edge.https_port if tls else edge.http_port, source, "guard.example", tls)


def tls_conn(edge: GuardEdge, source: str) -> RawConn:
    return RawConn(edge.https_port, sni="guard.example", ca_pem=edge.ca_pem, source=source, timeout=5)


def test_max_connections_per_ip_refuses_before_tls(conn_edge) -> None:
    src = "127.0.0.5"
    held = [tls_conn(conn_edge, src) for _ in range(3)]
    try:
        assert refused(conn_edge, src)
        assert refused(conn_edge, src, tls=False)
        with tls_conn(conn_edge, "127.0.0.6") as other:
            assert other.request("GET", "/", "guard.example").status == 200
        held.pop().close()
        held.append(wait_for(lambda: tls_conn(conn_edge, src), 3, interval=0.2,
                             what="the closed connection to be given back"))
        assert held[-1].request("GET", "/again", "guard.example").status == 200
    finally:
        for conn in held:
            conn.close()


def test_allowed_address_skips_connection_limits(conn_edge) -> None:
    held = [tls_conn(conn_edge, "127.0.0.1") for _ in range(5)]
    try:
        assert not refused(conn_edge, "127.0.0.1")
    finally:
        for conn in held:
            conn.close()


def test_connection_rate_per_ip(conn_edge) -> None:
    src = "127.0.0.9"
    for _ in range(12):
        assert not refused(conn_edge, src)
    assert refused(conn_edge, src)
    assert refused(conn_edge, src, tls=False)
    assert not refused(conn_edge, "127.0.0.10")
