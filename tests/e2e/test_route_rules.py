"""Routing rules of a site through a real edge: which pool serves a request (first match wins; path, prefix, regex,
methods, headers; no match goes to the first pool), and what the route changes (prefix_rewrite, Host, request and
response headers). Each pool is its own Python origin, so the origin that saw a request names the pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import Edge, PythonOrigin, Response, site

HOST = "routes.example"
POOLS_ONLY_HOST = "pools.example"


@pytest.fixture(scope="module")
def origins(tmp_path_factory) -> Iterator[dict[str, PythonOrigin]]:
    logs = tmp_path_factory.mktemp("route-origins")
    started = {name: PythonOrigin(logs / f"{name}.log") for name in ("web", "api", "admin")}
    yield started
    for origin in started.values():
        origin.stop()


def _routes() -> list[dict]:
    return [
        # first match wins: the more specific prefix is listed first here...
        {"path_prefix": "/api/admin/", "pool": "admin"},
        {"path_prefix": "/api/v1/", "pool": "api", "prefix_rewrite": "/v2/"},
        {"path_prefix": "/api/", "pool": "api"},
        # ...and after a broader one here, so it never matches
        {"path_prefix": "/first/", "pool": "api"},
        {"path": "/first/special", "pool": "admin"},
        {"path": "/login", "pool": "admin"},
        {"path_regex": "^/u/[0-9]+$", "pool": "api"},
        {"path_prefix": "/m/", "methods": ["POST", "PUT"], "pool": "api"},
        {"path_prefix": "/h/", "headers": {"X-Tier": "gold"}, "pool": "admin"},
        {"path_prefix": "/h/", "headers": {"X-Beta": True}, "pool": "api"},
        {"path_prefix": "/strip/", "pool": "api", "prefix_rewrite": ""},
        {"path_prefix": "/internal/", "pool": "api", "host": "api.internal:8080"},
        {
            "path_prefix": "/edit/",
            "pool": "api",
            "prefix_rewrite": "/",
            "request_headers": {"remove": ["X-Drop"], "set": {"X-Set": "edge"}, "add": {"X-Add": "two"}},
            "response_headers": {"remove": ["X-Kept"], "set": {"Content-Type": "text/x-edited"},
                                 "add": {"X-Served-By": "edge"}},
        },
    ]


@pytest.fixture(scope="module")
def route_edge(tmp_path_factory, pki, origins) -> Iterator[Edge]:
    cert = pki.good(HOST, POOLS_ONLY_HOST)
    pools = [{"name": "api", "servers": [origins["api"].url]}, {"name": "admin", "servers": [origins["admin"].url]}]
    with_origins = site("routes", [HOST], [origins["web"].url], cert, pool=pools, route=_routes())
    # A site without `origins`: its first [[site.pool]] gets what no route matches.
    pools_only = site("pools", [POOLS_ONLY_HOST], [], cert,
                      pool=[{"name": "web", "servers": [origins["web"].url]}, *pools],
                      route=[{"path_prefix": "/api/", "pool": "api"}])
    del pools_only["origins"]
    edge = Edge(tmp_path_factory.mktemp("route-edge"), [with_origins, pools_only], pki.ca_pem)
    edge.start()
    yield edge
    edge.stop()


@pytest.fixture
def fresh(origins) -> dict[str, PythonOrigin]:
    for origin in origins.values():
        origin.reset()
    return origins


def _get(edge: Edge, target: str, method: str = "GET", host: str = HOST,
         headers: list[tuple[str, str]] | None = None) -> Response:
    with edge.conn(sni=host) as c:
        return c.request(method, target, host=host, headers=headers, body=b"x" if method in ("POST", "PUT") else b"")


def _served_by(origins: dict[str, PythonOrigin]) -> list[tuple[str, str]]:
    """(origin name, target) of every request the origins received since the reset."""
    return [(name, target) for name, origin in origins.items() for target in origin.stats()["targets"]]


def _headers(resp: Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest.mark.parametrize(("target", "pool"), [
    ("/api/admin/users", "admin"),
    ("/api/users", "api"),
    ("/first/special", "api"),  # the prefix rule before it matches first
    ("/first/other", "api"),
    ("/login", "admin"),
    ("/login?next=/x", "admin"),  # the query string is not part of the path
    ("/login/", "web"),  # exact means exact
    ("/u/42", "api"),
    ("/u/abc", "web"),
    ("/x/u/42", "web"),  # the regex is anchored
    ("/nothing/matches", "web"),
    ("/%61pi/users", "api"),  # an escaped unreserved character matches as itself
])
def test_first_matching_route_picks_the_pool(route_edge, fresh, target, pool):
    resp = _get(route_edge, target)
    assert resp.status == 200
    assert _served_by(fresh) == [(pool, resp.json()["target"])]


@pytest.mark.parametrize(("method", "pool"), [("POST", "api"), ("PUT", "api"), ("GET", "web"), ("DELETE", "web")])
def test_route_methods(route_edge, fresh, method, pool):
    resp = _get(route_edge, "/m/thing", method=method)
    assert resp.status == 200
    assert [name for name, _ in _served_by(fresh)] == [pool]


@pytest.mark.parametrize(("headers", "pool"), [
    ([("X-Tier", "gold")], "admin"),
    ([("x-tier", "gold")], "admin"),  # names are case-insensitive
    ([("X-Tier", "Gold")], "web"),  # values are exact
    ([("X-Tier", "silver")], "web"),
    ([("X-Tier", "silver"), ("X-Tier", "gold")], "admin"),  # one of its occurrences
    ([("X-Beta", "anything")], "api"),  # present
    ([("X-Beta", "")], "api"),  # present, even empty
    ([("X-Tier", "gold"), ("X-Beta", "1")], "admin"),  # both match: the first route wins
    ([], "web"),
])
def test_route_header_conditions(route_edge, fresh, headers, pool):
    resp = _get(route_edge, "/h/page", headers=headers)
    assert resp.status == 200
    assert [name for name, _ in _served_by(fresh)] == [pool]


def test_no_route_goes_to_the_first_declared_pool(route_edge, fresh):
    assert _get(route_edge, "/api/x", host=POOLS_ONLY_HOST).status == 200
    assert _get(route_edge, "/other", host=POOLS_ONLY_HOST).status == 200
    assert sorted(_served_by(fresh)) == [("api", "/api/x"), ("web", "/other")]


@pytest.mark.parametrize(("target", "sent"), [
    ("/api/v1/users?id=1&x=%2F", "/v2/users?id=1&x=%2F"),
    ("/api/v1/", "/v2/"),
    ("/strip/users?id=1", "/users?id=1"),
    ("/strip/", "/"),
    ("/strip/?q=1", "/?q=1"),
    ("/%73trip/a", "/a"),  # matched once escapes are normalised, rewritten the same way
])
def test_prefix_rewrite(route_edge, fresh, target, sent):
    resp = _get(route_edge, target)
    assert resp.status == 200
    assert resp.json()["target"] == sent
    assert _served_by(fresh) == [("api", sent)]


def test_host_override_keeps_the_clients_host_in_x_forwarded_host(route_edge, fresh):
    h = _headers(_get(route_edge, "/internal/x"))
    assert h["host"] == ["api.internal:8080"]
    assert h["x-forwarded-host"] == [HOST]
    # other routes send the client's Host unchanged
    assert _headers(_get(route_edge, "/api/x"))["host"] == [HOST]


def test_request_header_edits(route_edge, fresh):
    sent = [("X-Drop", "1"), ("x-drop", "2"), ("X-Set", "client1"), ("X-Set", "client2"), ("X-Add", "one"),
            ("X-Other", "k")]
    resp = _get(route_edge, "/edit/echo", headers=sent)
    assert resp.status == 200
    h = _headers(resp)
    assert "x-drop" not in h
    assert h["x-set"] == ["edge"]
    assert h["x-add"] == ["one", "two"]
    assert h["x-other"] == ["k"]
    assert _served_by(fresh) == [("api", "/echo")]


def test_response_header_edits(route_edge, fresh):
    resp = _get(route_edge, "/edit/hop")  # the origin's /hop answers with X-Kept: yes
    assert resp.status == 200
    assert resp.body == b"hop"
    assert resp.header("x-kept") is None
    assert resp.all("content-type") == ["text/x-edited"]
    assert resp.all("x-served-by") == ["edge"]
    echo = _get(route_edge, "/edit/echo")  # set replaces the origin's Content-Type
    assert echo.all("content-type") == ["text/x-edited"]
    # other routes leave responses alone
    plain = _get(route_edge, "/api/x")
    assert plain.all("content-type") == ["application/json"]
    assert plain.header("x-served-by") is None


@pytest.mark.parametrize("target", [
    "/api/../admin",
    "/api/./users",
    "/api/%2e%2e/admin",
    "/api/..;/admin",
    "/api/..%2Fadmin",
    "/api/..\\admin",
])
def test_dot_segment_paths_get_400(route_edge, fresh, target):
    resp = _get(route_edge, target)
    assert resp.status == 400
    assert resp.header("connection") == "close"
    assert _served_by(fresh) == []
