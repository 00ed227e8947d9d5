"""Routing rules in the configuration: [[site.route]] matching conditions, the pool they name, and their rewrites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tlsedge.config import load_config
from tlsedge.config.schema import HeaderEdits, RouteConfig

from .conftest import changed, problem_at, problems_of, server, warning_at, warnings_of


def site(routes: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """A plain-HTTP site with the pools "default" and "api", and the given routes."""
    base = {
        "name": "app",
        "hosts": ["app.example"],
        "origins": ["http://127.0.0.1:9000"],
        "pool": [{"name": "api", "servers": ["http://127.0.0.1:9001"]}],
        "route": routes,
    }
    return changed(base, changes)


def route(**changes: Any) -> dict[str, Any]:
    return changed({"path_prefix": "/api/", "pool": "api"}, changes)


@pytest.fixture
def routes_config(config_file):
    def write(*routes: dict[str, Any], **site_changes: Any) -> Path:
        return config_file(server(https=None), [site(list(routes), **site_changes)])

    return write


def routes_of(path: Path) -> tuple[RouteConfig, ...]:
    return load_config(path).site("app").routes


def test_routes_keep_their_order_and_only_what_was_written(routes_config):
    path = routes_config(route(), route(path_prefix=None, path="/login", pool="default"), route(path_prefix=None))
    assert routes_of(path) == (
        RouteConfig(pool="api", path_prefix="/api/"),
        RouteConfig(pool="default", path="/login"),
        RouteConfig(pool="api"),
    )


def test_route_conditions_and_edits(routes_config):
    path = routes_config(
        route(
            methods=["get", "GET", "post"],
            headers={"X-Beta": "1", "X-Debug": True, "X-Empty": ""},
            host="[::1]:8080",
            prefix_rewrite="",
            request_headers={"remove": ["X-A", "x-a"], "set": {"X-B": "two words"}, "add": {"X-C": "1", "x-c": "2"}},
            response_headers={"remove": ["Server"], "set": {"Host": "allowed in responses"}},
        )
    )
    assert routes_of(path) == (
        RouteConfig(
            pool="api",
            path_prefix="/api/",
            methods=("GET", "POST"),
            headers=(("x-beta", "1"), ("x-debug", None), ("x-empty", "")),
            host="[::1]:8080",
            prefix_rewrite="",
            request_headers=HeaderEdits(remove=("x-a",), set=(("x-b", "two words"),), add=(("x-c", "1"), ("x-c", "2"))),
            response_headers=HeaderEdits(remove=("server",), set=(("host", "allowed in responses"),)),
        ),
    )


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"path": "/x"}, "site[app].route[0]", "sets path and path_prefix; a route matches the path in one way"),
        (
            {"path_prefix": None, "path": "/x", "path_regex": "^/y"},
            "site[app].route[0]",
            "sets path and path_regex",
        ),
        ({"path_prefix": "api/"}, "site[app].route[0].path_prefix", "'api/' does not start with '/'"),
        (
            {"path_prefix": None, "path": "/a?b=1"},
            "site[app].route[0].path",
            "has a query string; only the path is compared",
        ),
        ({"path_prefix": "/a b/"}, "site[app].route[0].path_prefix", "write them percent-encoded, e.g. '%20'"),
        ({"path_prefix": "/café/"}, "site[app].route[0].path_prefix", "characters requests never carry raw"),
        ({"path_prefix": "/a/../b/"}, "site[app].route[0].path_prefix", "has a '.' or '..' segment"),
        ({"path_prefix": None, "path_regex": "(["}, "site[app].route[0].path_regex", "unterminated character set"),
        ({"path_prefix": None, "path_regex": r"\u00e9"}, "site[app].route[0].path_regex", r"bad escape \u"),
        ({"path_prefix": ""}, "site[app].route[0].path_prefix", "is empty"),
        ({"methods": []}, "site[app].route[0].methods", "is empty; list methods such as"),
        ({"methods": ["GET", "GE T"]}, "site[app].route[0].methods[1]", "'GE T' is not an HTTP method"),
        ({"methods": "GET"}, "site[app].route[0].methods", "must be an array of strings"),
        ({"headers": {"X Beta": "1"}}, "site[app].route[0].headers.X Beta", "'X Beta' is not a header name"),
        ({"headers": {"X-A": "1\r\nX-B: 2"}}, "site[app].route[0].headers.X-A", "contains a control character"),
        ({"headers": {"X-A": " 1"}}, "site[app].route[0].headers.X-A", "starts or ends with whitespace"),
        ({"headers": {"X-A": False}}, "site[app].route[0].headers.X-A", "must be a string (the exact value) or true"),
        (
            {"headers": {"X-A": "1", "x-a": "2"}},
            "site[app].route[0].headers.x-a",
            "tests the header 'x-a' a second time",
        ),
        ({"pool": None}, "site[app].route[0].pool", "missing; name the pool"),
        ({"pool": "apii"}, "site[app].route[0].pool", "no pool of this site is named 'apii' (did you mean 'api'?)"),
        ({"pool": "web"}, "site[app].route[0].pool", "its pools are: 'default', 'api'"),
        ({"host": "a b"}, "site[app].route[0].host", "not a host name or IP address"),
        ({"host": "api.internal:0"}, "site[app].route[0].host", "port '0' is not valid"),
        (
            {"path_prefix": None, "path": "/", "prefix_rewrite": "/"},
            "site[app].route[0].prefix_rewrite",
            "needs path_prefix",
        ),
        ({"prefix_rewrite": "v2/"}, "site[app].route[0].prefix_rewrite", "does not start with '/'"),
        ({"prefix_rewrite": "/v 2/"}, "site[app].route[0].prefix_rewrite", "percent-encoded"),
        ({"request_headers": {"sets": {}}}, "site[app].route[0].request_headers.sets", "did you mean 'set'?"),
        ({"request_headers": []}, "site[app].route[0].request_headers", "must be a table"),
        (
            {"request_headers": {"set": {"Transfer-Encoding": "chunked"}}},
            "site[app].route[0].request_headers.set.Transfer-Encoding",
            "'transfer-encoding' cannot be edited: the edge sets it itself",
        ),
        (
            {"response_headers": {"remove": ["Content-Length"]}},
            "site[app].route[0].response_headers.remove[0]",
            "'content-length' cannot be edited",
        ),
        (
            {"request_headers": {"set": {"Host": "x"}}},
            "site[app].route[0].request_headers.set.Host",
            "is set with the route's host key",
        ),
        (
            {"request_headers": {"set": {"X-A": "1", "x-a": "2"}}},
            "site[app].route[0].request_headers.set.x-a",
            "sets the header 'x-a' a second time",
        ),
        (
            {"request_headers": {"add": {"X-A": "a\nb"}}},
            "site[app].route[0].request_headers.add.X-A",
            "contains a control character",
        ),
        ({"request_headers": {"add": {"X-A": 1}}}, "site[app].route[0].request_headers.add.X-A", "must be a string"),
        ({"request_headers": {"remove": ["X:A"]}}, "site[app].route[0].request_headers.remove[0]", "not a header name"),
        ({"pth": "/x"}, "site[app].route[0].pth", "did you mean 'path'?"),
    ],
)
def test_bad_routes(routes_config, changes, field, reason):
    assert reason in problem_at(routes_config(route(**changes)), field).reason


def test_route_must_be_an_array_of_tables(config_file):
    path = config_file(server(https=None), [site([], route={"pool": "api"})])
    assert "must be an array of tables (write [[site.route]]" in problem_at(path, "site[app].route").reason
    path = config_file(server(https=None), [site(["/api/"])])
    assert "must be a table (write [[site.route]])" in problem_at(path, "site[app].route[0]").reason


def test_a_route_to_a_refused_pool_name_is_not_reported_twice(config_file):
    pools = [{"name": "API", "servers": ["http://127.0.0.1:9001"]}]
    path = config_file(server(https=None), [site([route(pool="API")], pool=pools)])
    assert [p.field for p in problems_of(path)] == ["site[app].pool[0].name"]


def test_every_problem_in_a_route_is_reported(routes_config):
    path = routes_config(route(path_prefix="x", methods=["A B"], pool="nope", host="-", prefix_rewrite="y"))
    assert {p.field for p in problems_of(path)} == {
        "site[app].route[0].path_prefix",
        "site[app].route[0].methods[0]",
        "site[app].route[0].pool",
        "site[app].route[0].host",
        "site[app].route[0].prefix_rewrite",
    }


def test_routes_after_a_catch_all_never_match(routes_config):
    path = routes_config(route(path_prefix="/"), route(path_prefix="/static/", pool="default"))
    warning = warning_at(path, "site[app].route[1]")
    assert "never matches: site[app].route[0] before it matches every request" in warning
    # The pool only that unreachable route names is then unused as well.
    assert "no request reaches this pool" in warning_at(path, "site[app].origins")


def test_a_route_with_any_condition_is_no_catch_all(routes_config):
    for condition in ({"methods": ["GET"]}, {"headers": {"X-A": True}}, {"path_prefix": "/a"}):
        path = routes_config(route(**{"path_prefix": None, **condition}), route(pool="default"))
        assert warnings_of(path) == []
