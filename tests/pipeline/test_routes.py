"""Compiled routing rules: matching, rewrites, header edits on a real header block, and the path safety rules."""

from __future__ import annotations

import pytest

from tlsedge.config.schema import HeaderEdits, RouteConfig
from tlsedge.pipeline.routes import AmbiguousPath, RouteTable, apply_edits, normalise_escapes

POOLS = {"api": "API", "static": "STATIC", "admin": "ADMIN", "web": "WEB"}


def table(*routes: RouteConfig) -> RouteTable[str]:
    return RouteTable(routes, POOLS, "WEB")


def pool_of(t: RouteTable[str], target: bytes, method: bytes = b"GET", headers=()) -> str:
    return t.match(method, target, list(headers)).pool


def block_of(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """A header block as the data plane builds it: name, ": ", value, CRLF per field."""
    out: list[bytes] = []
    for name, value in headers:
        out.extend((name, b": ", value, b"\r\n"))
    return out


# --- matching ------------------------------------------------------------------------------------------------------


def test_empty_table_returns_the_shared_default() -> None:
    t = table()
    route = t.match(b"GET", b"/anything", [])
    assert route is t.default
    assert route.pool == "WEB"
    assert route.name == "default"
    assert route.host is None
    assert not route.has_request_edits and not route.has_response_edits
    assert route.rewrite(b"/x?y=1") == b"/x?y=1"
    # the fast path does not even look at the target: a dot-segment path is not refused
    assert t.match(b"GET", b"/a/../b", []) is t.default


def test_first_matching_route_wins() -> None:
    t = table(
        RouteConfig(pool="admin", path_prefix="/api/admin/"),
        RouteConfig(pool="api", path_prefix="/api/"),
        RouteConfig(pool="static", path_prefix="/api/admin/never"),
    )
    assert pool_of(t, b"/api/admin/never") == "ADMIN"
    assert pool_of(t, b"/api/users") == "API"
    assert pool_of(t, b"/other") == "WEB"
    assert t.match(b"GET", b"/api/users", []).name == "route[1] /api/ -> api"


def test_exact_path_ignores_the_query_string() -> None:
    t = table(RouteConfig(pool="admin", path="/login"))
    assert pool_of(t, b"/login") == "ADMIN"
    assert pool_of(t, b"/login?next=/x") == "ADMIN"
    assert pool_of(t, b"/login/") == "WEB"
    assert pool_of(t, b"/logins") == "WEB"
    assert t.routes[0].name == "route[0] = /login -> admin"


def test_prefix_is_a_raw_byte_prefix_of_the_path_only() -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api"))
    assert pool_of(t, b"/api") == "API"
    assert pool_of(t, b"/apiary") == "API"  # like an nginx prefix location: write "/api/" to mean the directory
    assert pool_of(t, b"/x?next=/api") == "WEB"  # the query string is not part of the path
    assert pool_of(t, b"/API") == "WEB"  # paths are case-sensitive


def test_regex_is_searched_in_the_path() -> None:
    t = table(RouteConfig(pool="static", path_regex=r"\.(css|js|png)$"), RouteConfig(pool="api", path_regex=r"^/u/\d+"))
    assert pool_of(t, b"/assets/app.js") == "STATIC"
    assert pool_of(t, b"/assets/app.js?v=3") == "STATIC"
    assert pool_of(t, b"/assets/app.jsx") == "WEB"
    assert pool_of(t, b"/u/42/profile") == "API"
    assert pool_of(t, b"/x/u/42") == "WEB"
    assert t.routes[1].name == r"route[1] ~ ^/u/\d+ -> api"


def test_invalid_regex_and_unknown_pool_are_refused_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"route\[0\]: path_regex"):
        table(RouteConfig(pool="api", path_regex="(unclosed"))
    with pytest.raises(ValueError, match=r"route\[1\]: unknown pool 'nope'"):
        table(RouteConfig(pool="api"), RouteConfig(pool="nope"))


def test_methods() -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api/", methods=("POST", "PUT")))
    assert pool_of(t, b"/api/x", b"POST") == "API"
    assert pool_of(t, b"/api/x", b"PUT") == "API"
    assert pool_of(t, b"/api/x", b"GET") == "WEB"
    assert pool_of(t, b"/api/x", b"post") == "WEB"  # methods are case-sensitive (RFC 9110 section 9.1)
    assert t.routes[0].name == "route[0] POST,PUT /api/ -> api"


def test_method_only_rule_matches_any_path() -> None:
    t = table(RouteConfig(pool="api", methods=("DELETE",)))
    assert pool_of(t, b"/a/b", b"DELETE") == "API"
    assert pool_of(t, b"/a/b", b"GET") == "WEB"


def test_header_presence_value_case_and_repeats() -> None:
    t = table(
        RouteConfig(pool="admin", headers=(("x-role", "admin"), ("x-debug", None))),
        RouteConfig(pool="api", headers=(("accept", "application/json"),)),
    )
    assert pool_of(t, b"/", headers=[(b"X-Role", b"admin"), (b"X-DEBUG", b"")]) == "ADMIN"
    assert pool_of(t, b"/", headers=[(b"x-role", b"admin")]) == "WEB"  # x-debug missing
    assert pool_of(t, b"/", headers=[(b"x-role", b"Admin"), (b"x-debug", b"1")]) == "WEB"  # values are exact
    # a repeated header matches when any occurrence does
    repeated = [(b"Accept", b"text/html"), (b"accept", b"application/json")]
    assert pool_of(t, b"/", headers=repeated) == "API"
    assert pool_of(t, b"/", headers=[(b"Accept", b"text/html")]) == "WEB"


def test_all_conditions_of_a_rule_must_hold() -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api/", methods=("POST",), headers=(("x-v", "2"),)))
    assert pool_of(t, b"/api/x", b"POST", [(b"X-V", b"2")]) == "API"
    assert pool_of(t, b"/api/x", b"GET", [(b"X-V", b"2")]) == "WEB"
    assert pool_of(t, b"/web/x", b"POST", [(b"X-V", b"2")]) == "WEB"
    assert pool_of(t, b"/api/x", b"POST", [(b"X-V", b"1")]) == "WEB"


class _Exploding(list):
    """A header list that fails the test if anyone iterates it."""

    def __iter__(self):
        raise AssertionError("headers were scanned")


def test_rules_without_header_conditions_never_scan_headers() -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api/"), RouteConfig(pool="static", methods=("PUT",)))
    assert t.match(b"GET", b"/api/x", _Exploding()).pool == "API"
    assert t.match(b"GET", b"/other", _Exploding()).pool == "WEB"
    # a header rule that the path already rules out does not scan either
    t = table(RouteConfig(pool="api", path_prefix="/api/", headers=(("x-a", None),)))
    assert t.match(b"GET", b"/other", _Exploding()).pool == "WEB"
    with pytest.raises(AssertionError, match="scanned"):
        t.match(b"GET", b"/api/x", _Exploding())


# --- the path safety rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/api/../admin",
        b"/api/./x",
        b"/api/..",
        b"/api/%2e%2e/admin",
        b"/api/%2E./admin",
        b"/api/..%2fadmin",
        b"/api/..%5Cadmin",
        b"/api/..\\admin",
        b"/api/..;/admin",
        b"/api/x/..?q=1",
    ],
)
def test_dot_segments_are_refused(target: bytes) -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api/"))
    with pytest.raises(AmbiguousPath):
        t.match(b"GET", target, [])


@pytest.mark.parametrize("target", [b"/api/.well-known", b"/api/a..b", b"/api/...", b"/api/x.y/z", b"/api/x?q=/../"])
def test_dots_that_are_not_segments_are_fine(target: bytes) -> None:
    assert pool_of(table(RouteConfig(pool="api", path_prefix="/api/")), target) == "API"


def test_encoded_unreserved_characters_match_their_plain_spelling() -> None:
    t = table(RouteConfig(pool="api", path_prefix="/api/"), RouteConfig(pool="admin", path="/a%2Fb"))
    assert pool_of(t, b"/%61pi/x") == "API"
    assert pool_of(t, b"/a%2fb") == "ADMIN"  # escape case does not matter
    assert pool_of(t, b"/a/b") == "WEB"  # an encoded slash is not a slash
    assert normalise_escapes(b"/%7euser/%41%zz%") == b"/~user/A%zz%"


def test_rules_without_path_conditions_do_not_look_at_the_path() -> None:
    t = table(RouteConfig(pool="api", methods=("GET",)))
    assert pool_of(t, b"/a/../b") == "API"


# --- rewrites ------------------------------------------------------------------------------------------------------


def rewriting(prefix: str, replacement: str) -> RouteTable[str]:
    return table(RouteConfig(pool="api", path_prefix=prefix, prefix_rewrite=replacement))


def test_prefix_rewrite_replaces_the_prefix_and_keeps_the_query() -> None:
    t = rewriting("/api/", "/v2/")
    route = t.match(b"GET", b"/api/users?id=1", [])
    assert route.rewrite(b"/api/users?id=1") == b"/v2/users?id=1"
    assert route.rewrite(b"/api/") == b"/v2/"


def test_stripping_the_prefix_never_leaves_an_empty_path() -> None:
    route = rewriting("/api", "").routes[0]
    assert route.rewrite(b"/api") == b"/"
    assert route.rewrite(b"/api?x=1") == b"/?x=1"
    assert route.rewrite(b"/api/users") == b"/users"
    route = rewriting("/api/", "").routes[0]
    assert route.rewrite(b"/api/users") == b"/users"
    assert route.rewrite(b"/api/") == b"/"


def test_rewrite_leaves_other_targets_alone() -> None:
    route = rewriting("/api/", "/v2/").routes[0]
    assert route.rewrite(b"/other/api/x") == b"/other/api/x"
    assert table(RouteConfig(pool="api", path_prefix="/api/")).routes[0].rewrite(b"/api/x") == b"/api/x"


def test_rewrite_follows_the_normalised_match() -> None:
    t = rewriting("/api/", "/v2/")
    route = t.match(b"GET", b"/%61pi/x%2Fy?q=%61", [])
    assert route.pool == "API"
    assert route.rewrite(b"/%61pi/x%2Fy?q=%61") == b"/v2/x%2Fy?q=%61"


def test_prefix_rewrite_without_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix_rewrite needs path_prefix"):
        table(RouteConfig(pool="api", path="/x", prefix_rewrite="/y"))


# --- header edits --------------------------------------------------------------------------------------------------


def edited_route():
    config = RouteConfig(
        pool="api",
        path_prefix="/api/",
        host="internal.example",
        request_headers=HeaderEdits(
            remove=("cookie", "x-debug"), set=(("X-Env", "prod"),), add=(("X-Tag", "a"), ("X-Tag", "b"))
        ),
        response_headers=HeaderEdits(remove=("server",), add=(("Cache-Control", "no-store"),)),
    )
    return table(config).match(b"GET", b"/api/x", [])


def test_prepared_edits() -> None:
    route = edited_route()
    assert route.host == b"internal.example"
    assert route.request_drop == frozenset({b"cookie", b"x-debug", b"x-env"})
    assert route.request_lines == b"X-Env: prod\r\nX-Tag: a\r\nX-Tag: b\r\n"
    assert route.response_drop == frozenset({b"server"})
    assert route.response_lines == b"Cache-Control: no-store\r\n"
    assert route.has_request_edits and route.has_response_edits


def test_edits_on_a_real_block() -> None:
    route = edited_route()
    block = block_of(
        [
            (b"Host", b"example.com"),
            (b"Cookie", b"a=1"),
            (b"X-Env", b"dev"),
            (b"User-Agent", b"test"),
            (b"x-env", b"staging"),
            (b"COOKIE", b"b=2"),
        ]
    )
    edited = apply_edits(block, route.request_drop, route.request_lines)
    assert b"".join(edited) == b"Host: example.com\r\nUser-Agent: test\r\nX-Env: prod\r\nX-Tag: a\r\nX-Tag: b\r\n"
    # the result is a block again: it can be edited a second time, prepared lines passing through untouched
    again = apply_edits(edited, frozenset({b"user-agent", b"x-tag"}), b"Via: 1.1 tlsedge\r\n")
    assert b"".join(again) == b"Host: example.com\r\nX-Env: prod\r\nX-Tag: a\r\nX-Tag: b\r\nVia: 1.1 tlsedge\r\n"


def test_response_edits_and_a_head_that_parses_back() -> None:
    route = edited_route()
    block = block_of([(b"Content-Type", b"text/plain"), (b"Server", b"origin/1.0"), (b"Content-Length", b"2")])
    head = b"".join((b"HTTP/1.1 200 OK\r\n", *apply_edits(block, route.response_drop, route.response_lines), b"\r\n"))
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    assert lines[1:-2] == [b"Content-Type: text/plain", b"Content-Length: 2", b"Cache-Control: no-store"]


def test_no_edits_returns_the_block_as_is() -> None:
    block = block_of([(b"A", b"1")])
    assert apply_edits(block, frozenset(), b"") == [b"A", b": ", b"1", b"\r\n"]


def test_header_injection_in_config_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid header value"):
        table(RouteConfig(pool="api", request_headers=HeaderEdits(set=(("X-A", "1\r\nX-B: 2"),))))
    with pytest.raises(ValueError, match="invalid header name"):
        table(RouteConfig(pool="api", response_headers=HeaderEdits(add=(("X-A: b", "1"),))))
    with pytest.raises(ValueError, match="invalid header value"):
        table(RouteConfig(pool="api", host="a\nb"))
