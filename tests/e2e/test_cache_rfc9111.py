"""RFC 9111 through a running edge: storability, freshness, Age, request and response directives, Vary, targeted
cache fields (RFC 9213) and Cache-Status (RFC 9211).

One edge (one worker) serves every test of the module from several cached sites in front of one ScriptedOrigin; each
test uses paths of its own, so tests never share a stored response. Time is controlled with the origin's ``Age`` and
``Date`` headers, never by waiting out a lifetime. Validation and invalidation are in test_cache_validation.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cache_support import Answer, ScriptedOrigin, cached_site, get, http_date, is_hit, status_params
from e2e_support import Edge, closed_port

HOST = "cached.example"
STRIP = "strip.example"  # set_cookie = "strip"
CUSTOM = "custom.example"  # targeted_field = "X-Edge-Cache"
CAPPED = "capped.example"  # heuristic_max = 5s
DEAD = "dead.example"  # its origin refuses connections


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki, origin: ScriptedOrigin) -> Iterator[Edge]:
    sites = [
        cached_site(origin, rule=[{"path_prefix": "/bypass/", "bypass": True}]),
        cached_site(origin, name="strip", set_cookie="strip"),
        cached_site(origin, name="custom", targeted_field="X-Edge-Cache"),
        cached_site(origin, name="capped", heuristic_max="5s"),
        {**cached_site(origin, name="dead"), "origins": [f"http://127.0.0.1:{closed_port()}"]},
    ]
    started = Edge(tmp_path_factory.mktemp("cache-rfc9111"), sites, pki.ca_pem, https=[])
    started.start()
    yield started
    started.stop()


@pytest.fixture
def port(edge: Edge) -> int:
    return edge.http_port


def ttl(headers: dict[str, str]) -> int:
    return int(status_params(headers)["ttl"])


def fill_then_hit(port: int, path: str, host: str = HOST, **kw) -> tuple[dict[str, str], dict[str, str]]:
    """Two requests: the first must store the response, the second must be a hit. Returns both header dicts."""
    status, first, _ = get(port, path, host=host, **kw)
    assert status < 500, first
    assert status_params(first).get("stored") is True, first
    _, second, _ = get(port, path, host=host, **kw)
    assert is_hit(second), second
    return first, second


# --- RFC 9111 section 3: storing responses ----------------------------------------------------------------------


def test_rfc9111_3_get_200_stored_then_hit(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/store/get"] = Answer(200, [("Cache-Control", "max-age=60")], b"stored body")
    status, first, body = get(port, "/store/get")
    assert (status, body) == (200, b"stored body")
    params = status_params(first)
    assert params["fwd"] == "uri-miss" and params["fwd-status"] == "200" and params["stored"] is True
    assert 58 <= ttl(first) <= 60
    status, second, body = get(port, "/store/get")
    assert (status, body) == (200, b"stored body")
    assert is_hit(second) and 58 <= ttl(second) <= 60
    assert second["age"].isdigit() and int(second["age"]) <= 2
    assert origin.count("/store/get") == 1


def test_rfc9111_3_post_response_not_stored(port: int, origin: ScriptedOrigin) -> None:
    """Only GET responses are stored: a POST answered with max-age does not answer the next GET."""
    origin.answers["/store/post"] = lambda seen: Answer(
        200, [("Cache-Control", "max-age=60")], seen.method.encode()
    )
    status, headers, body = get(port, "/store/post", method="POST", body=b"form=1")
    assert (status, body) == (200, b"POST")
    assert status_params(headers)["fwd"] == "method"
    status, headers, body = get(port, "/store/post")
    assert (status, body) == (200, b"GET")
    assert not is_hit(headers)
    assert origin.count("/store/post", "GET") == 1


@pytest.mark.parametrize(
    ("directive", "reason"), [("no-store, max-age=60", "no-store"), ("private, max-age=60", "private")]
)
def test_rfc9111_5_2_2_no_store_and_private_not_stored(port: int, origin: ScriptedOrigin, directive: str,
                                                     reason: str) -> None:
    """RFC 9111 5.2.2.5 (no-store) and 5.2.2.7 (unqualified private: a shared cache must not store it)."""
    path = f"/store/{reason}"
    origin.answers[path] = Answer(200, [("Cache-Control", directive)], b"personal")
    for _ in range(2):
        status, headers, body = get(port, path)
        assert (status, body) == (200, b"personal")
        assert "stored" not in status_params(headers) and not is_hit(headers)
        assert headers["cache-control"] == directive  # passed on to the client unchanged
    assert origin.count(path) == 2


def test_rfc9111_5_2_2_7_qualified_private_stored_without_the_field(port: int, origin: ScriptedOrigin) -> None:
    """private="X-User": a shared cache may store the response, but not the named field."""
    origin.answers["/store/private-field"] = Answer(
        200, [("Cache-Control", 'max-age=60, private="X-User"'), ("X-User", "alice"), ("X-Kept", "yes")], b"page"
    )
    first, second = fill_then_hit(port, "/store/private-field")
    assert first["x-user"] == "alice"  # the client whose request filled the cache gets it
    assert "x-user" not in second and second["x-kept"] == "yes"


def test_rfc9111_3_5_authorization_not_stored_without_public(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/store/auth"] = Answer(200, [("Cache-Control", "max-age=60")], b"for alice")
    _, headers, _ = get(port, "/store/auth", headers={"Authorization": "Bearer alice"})
    assert status_params(headers).get("detail") == "authorization"
    _, headers, _ = get(port, "/store/auth", headers={"Authorization": "Bearer alice"})
    assert not is_hit(headers) and "stored" not in status_params(headers)
    assert origin.count("/store/auth") == 2


@pytest.mark.parametrize("directive", ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"])
def test_rfc9111_3_5_authorization_stored_with_public_s_maxage_must_revalidate(
    port: int, origin: ScriptedOrigin, directive: str
) -> None:
    path = "/store/auth-ok-" + directive.split(",")[0].split("=")[0]
    origin.answers[path] = Answer(200, [("Cache-Control", directive)], b"shared")
    fill_then_hit(port, path, headers={"Authorization": "Bearer alice"})
    _, headers, body = get(port, path)
    assert is_hit(headers) and body == b"shared"
    assert origin.count(path) == 1


def test_rfc9111_3_5_authorized_request_does_not_stop_caching_for_others(port: int, origin: ScriptedOrigin) -> None:
    """A response not stored because *the request* had Authorization says nothing about the resource: the next
    anonymous request must be able to fill the cache (else one client sending Authorization now and then keeps a
    hot URL uncached for everybody)."""
    origin.answers["/store/auth-then-anon"] = Answer(200, [("Cache-Control", "max-age=60")], b"page")
    get(port, "/store/auth-then-anon", headers={"Authorization": "Bearer mallory"})
    _, first, _ = get(port, "/store/auth-then-anon")
    _, second, _ = get(port, "/store/auth-then-anon")
    assert status_params(first).get("stored") is True, first
    assert is_hit(second), second
    assert origin.count("/store/auth-then-anon") == 2


def test_rfc9110_15_1_404_cacheable_by_default_heuristic(port: int, origin: ScriptedOrigin) -> None:
    """RFC 9110 15.1: 404 is heuristically cacheable; RFC 9111 4.2.2: 10 % of the time since Last-Modified."""
    origin.answers["/store/404"] = Answer(404, [("Last-Modified", http_date(-1000))], b"not here")
    first, _ = fill_then_hit(port, "/store/404")
    assert 97 <= ttl(first) <= 100
    status, _, body = get(port, "/store/404")
    assert (status, body) == (404, b"not here")
    assert origin.count("/store/404") == 1


@pytest.mark.parametrize(("status", "stored"), [(301, True), (410, True), (302, False), (500, False)])
def test_rfc9110_15_1_heuristic_only_for_statuses_cacheable_by_default(
    port: int, origin: ScriptedOrigin, status: int, stored: bool
) -> None:
    """Last-Modified gives heuristic freshness to 301 and 410 (cacheable by default), not to 302 or 500."""
    path = f"/store/heuristic-{status}"
    origin.answers[path] = Answer(status, [("Last-Modified", http_date(-1000)), ("Location", "/elsewhere")], b"s")
    for _ in range(2):
        got, _, body = get(port, path)
        assert (got, body) == (status, b"s")
    assert origin.count(path) == (1 if stored else 2)


def test_rfc9111_3_204_stored(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/store/204"] = Answer(204, [("Cache-Control", "max-age=60")], b"")
    fill_then_hit(port, "/store/204")
    status, headers, body = get(port, "/store/204")
    assert (status, body) == (204, b"") and "content-length" not in headers and "transfer-encoding" not in headers


def test_rfc9111_5_2_2_3_must_understand_overrides_no_store(port: int, origin: ScriptedOrigin) -> None:
    """must-understand with a status the cache understands: the no-store sent for older caches is ignored."""
    origin.answers["/store/must-understand"] = Answer(
        200, [("Cache-Control", "must-understand, no-store, max-age=60")], b"x"
    )
    fill_then_hit(port, "/store/must-understand")


def test_issue5_set_cookie_bypass_by_default(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/store/cookie"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("Set-Cookie", "session=alice")], b"hi alice"
    )
    for _ in range(2):
        _, headers, _ = get(port, "/store/cookie")
        assert headers["set-cookie"] == "session=alice"
        assert "stored" not in status_params(headers) and not is_hit(headers)
    assert origin.count("/store/cookie") == 2


def test_issue5_set_cookie_strip_stores_without_it(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/store/cookie-strip"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("Set-Cookie", "session=alice")], b"page"
    )
    first, second = fill_then_hit(port, "/store/cookie-strip", host=STRIP)
    assert first["set-cookie"] == "session=alice"  # the response that filled the cache is not altered
    assert "set-cookie" not in second
    assert origin.count("/store/cookie-strip") == 1


# --- RFC 9111 section 4.2.1: freshness lifetime -----------------------------------------------------------------


def test_rfc9111_4_2_1_s_maxage_beats_max_age(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/fresh/s-maxage"] = Answer(200, [("Cache-Control", "max-age=0, s-maxage=60")], b"x")
    first, _ = fill_then_hit(port, "/fresh/s-maxage")
    assert 58 <= ttl(first) <= 60
    origin.answers["/fresh/s-maxage-short"] = Answer(
        200, [("Cache-Control", "s-maxage=0, max-age=60"), ("ETag", '"e"')], b"x"
    )
    get(port, "/fresh/s-maxage-short")
    _, headers, _ = get(port, "/fresh/s-maxage-short")
    assert not is_hit(headers)
    assert origin.count("/fresh/s-maxage-short") == 2


def test_rfc9111_4_2_1_max_age_beats_expires(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/fresh/max-age"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("Expires", http_date(-3600))], b"x"
    )
    first, _ = fill_then_hit(port, "/fresh/max-age")
    assert 58 <= ttl(first) <= 60


def test_rfc9111_4_2_1_expires_minus_date(port: int, origin: ScriptedOrigin) -> None:
    """Lifetime = Expires - Date (the origin's clock, not ours): Date 50 s ago and Expires 30 s ahead gives 80 s
    of lifetime of which 50 are used."""
    origin.answers["/fresh/expires"] = Answer(
        200, [("Date", http_date(-50)), ("Expires", http_date(30))], b"x"
    )
    first, _ = fill_then_hit(port, "/fresh/expires")
    assert 27 <= ttl(first) <= 30


def test_rfc9111_4_2_1_expires_in_the_past_is_stale(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/fresh/expired"] = Answer(200, [("Expires", http_date(-60))], b"x")
    for _ in range(2):
        _, headers, _ = get(port, "/fresh/expired")
        assert not is_hit(headers)
    assert origin.count("/fresh/expired") == 2


def test_rfc9111_5_3_invalid_expires_zero_is_stale(port: int, origin: ScriptedOrigin) -> None:
    """RFC 9111 5.3: an invalid Expires, especially "0", means already expired (even with Last-Modified, which
    would otherwise give heuristic freshness)."""
    origin.answers["/fresh/expires-zero"] = Answer(
        200, [("Expires", "0"), ("Last-Modified", http_date(-100000))], b"x"
    )
    get(port, "/fresh/expires-zero")
    _, headers, _ = get(port, "/fresh/expires-zero")
    assert not is_hit(headers)
    assert origin.count("/fresh/expires-zero") == 2


def test_rfc9111_4_2_1_missing_date_uses_arrival_time(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/fresh/no-date"] = Answer(200, [("Expires", http_date(60))], b"x", date=False)
    first, _ = fill_then_hit(port, "/fresh/no-date")
    assert 57 <= ttl(first) <= 60


def test_rfc9110_6_6_1_date_added_to_cached_response_without_one(port: int, origin: ScriptedOrigin) -> None:
    """RFC 9110 6.6.1: a recipient with a clock that caches or forwards a response without Date must add one."""
    origin.answers["/fresh/no-date-hit"] = Answer(200, [("Cache-Control", "max-age=60")], b"x", date=False)
    first, second = fill_then_hit(port, "/fresh/no-date-hit")
    assert ("date" in first, "date" in second) == (True, True), (first, second)


def test_rfc9111_4_2_2_heuristic_ten_percent_of_last_modified(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/fresh/heuristic"] = Answer(200, [("Last-Modified", http_date(-2000))], b"x")
    first, _ = fill_then_hit(port, "/fresh/heuristic")
    assert 197 <= ttl(first) <= 200


def test_rfc9111_4_2_2_heuristic_capped_by_heuristic_max(port: int, origin: ScriptedOrigin) -> None:
    """heuristic_max = 5s caps 10 % of a day: a copy already 10 s old is stale there, fresh on a default site."""
    answer = Answer(200, [("Last-Modified", http_date(-86400)), ("Age", "10")], b"x")
    origin.answers["/fresh/capped"] = answer
    _, capped, _ = get(port, "/fresh/capped", host=CAPPED)
    assert ttl(capped) <= -4  # lifetime 5 - age 10
    _, again, _ = get(port, "/fresh/capped", host=CAPPED)
    assert not is_hit(again)
    assert origin.last("/fresh/capped").headers.get("if-modified-since") is not None  # revalidated
    origin.answers["/fresh/uncapped"] = answer
    first, _ = fill_then_hit(port, "/fresh/uncapped")
    assert 8620 <= ttl(first) <= 8631


# --- RFC 9111 sections 4.2.3 and 5.1: Age ---------------------------------------------------------------------


def test_rfc9111_4_2_3_age_from_origin_age_header(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/age/header"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "30")], b"x")
    first, second = fill_then_hit(port, "/age/header")
    assert 29 <= ttl(first) <= 30
    assert 30 <= int(second["age"]) <= 31
    assert 28 <= ttl(second) <= 30


def test_rfc9111_4_2_3_age_from_date_in_the_past(port: int, origin: ScriptedOrigin) -> None:
    """apparent_age = response_time - Date when no Age is sent (and it is larger)."""
    origin.answers["/age/date"] = Answer(200, [("Cache-Control", "max-age=60"), ("Date", http_date(-20))], b"x")
    _, second = fill_then_hit(port, "/age/date")
    assert 20 <= int(second["age"]) <= 22
    assert 38 <= ttl(second) <= 40


def test_rfc9111_4_2_3_response_delay_counts_in_age(port: int, origin: ScriptedOrigin) -> None:
    """corrected_age_value = Age + response_delay: an origin that took 1 s to answer with Age: 10 gives 11."""
    origin.answers["/age/delay"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "10")], b"x", delay=1.0)
    first, second = fill_then_hit(port, "/age/delay")
    assert ttl(first) <= 49
    assert 11 <= int(second["age"]) <= 12


def test_rfc9111_5_1_age_grows_while_stored(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/age/grows"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "5")], b"x")
    _, second = fill_then_hit(port, "/age/grows")
    time.sleep(1.1)
    _, third, _ = get(port, "/age/grows")
    assert int(third["age"]) >= int(second["age"]) + 1
    assert ttl(third) <= ttl(second) - 1


def test_rfc9111_4_2_3_age_beyond_max_age_is_stale_on_arrival(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/age/too-old"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "61")], b"x")
    get(port, "/age/too-old")
    _, headers, _ = get(port, "/age/too-old")
    assert not is_hit(headers)
    assert origin.count("/age/too-old") == 2


# --- RFC 9111 section 5.2.1: request directives -----------------------------------------------------------------


def test_rfc9111_5_2_1_1_request_max_age(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/max-age"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "30")], b"x")
    fill_then_hit(port, "/req/max-age")
    _, headers, _ = get(port, "/req/max-age", headers={"Cache-Control": "max-age=40"})
    assert is_hit(headers)
    _, headers, _ = get(port, "/req/max-age", headers={"Cache-Control": "max-age=10"})
    assert not is_hit(headers)
    assert origin.count("/req/max-age") == 2


def test_rfc9111_5_2_1_2_request_max_stale(port: int, origin: ScriptedOrigin) -> None:
    """A copy 20 s stale: max-stale=30 and bare max-stale accept it, max-stale=5 does not."""
    origin.answers["/req/max-stale"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("Age", "80"), ("ETag", '"v1"')], b"old"
    )
    get(port, "/req/max-stale")
    for value in ("max-stale=30", "max-stale"):
        status, headers, body = get(port, "/req/max-stale", headers={"Cache-Control": value})
        assert (status, body) == (200, b"old")
        assert is_hit(headers) and ttl(headers) <= -20
    assert origin.count("/req/max-stale") == 1
    _, headers, _ = get(port, "/req/max-stale", headers={"Cache-Control": "max-stale=5"})
    assert not is_hit(headers)
    assert origin.count("/req/max-stale") == 2


def test_rfc9111_5_2_2_2_must_revalidate_overrides_max_stale(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/must-revalidate"] = Answer(
        200, [("Cache-Control", "max-age=60, must-revalidate"), ("Age", "80"), ("ETag", '"v1"')], b"old"
    )
    get(port, "/req/must-revalidate")
    _, headers, _ = get(port, "/req/must-revalidate", headers={"Cache-Control": "max-stale"})
    assert not is_hit(headers)
    assert origin.count("/req/must-revalidate") == 2
    assert origin.last("/req/must-revalidate").headers.get("if-none-match") == '"v1"'


def test_rfc9111_5_2_2_8_proxy_revalidate_overrides_max_stale(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/proxy-revalidate"] = Answer(
        200, [("Cache-Control", "max-age=60, proxy-revalidate"), ("Age", "80"), ("ETag", '"v1"')], b"old"
    )
    get(port, "/req/proxy-revalidate")
    _, headers, _ = get(port, "/req/proxy-revalidate", headers={"Cache-Control": "max-stale"})
    assert not is_hit(headers)
    assert origin.count("/req/proxy-revalidate") == 2


def test_rfc9111_5_2_1_3_request_min_fresh(port: int, origin: ScriptedOrigin) -> None:
    """30 s of freshness left: min-fresh=10 is satisfied, min-fresh=50 is not."""
    origin.answers["/req/min-fresh"] = Answer(200, [("Cache-Control", "max-age=60"), ("Age", "30")], b"x")
    fill_then_hit(port, "/req/min-fresh")
    _, headers, _ = get(port, "/req/min-fresh", headers={"Cache-Control": "min-fresh=10"})
    assert is_hit(headers)
    _, headers, _ = get(port, "/req/min-fresh", headers={"Cache-Control": "min-fresh=50"})
    assert not is_hit(headers)
    assert origin.count("/req/min-fresh") == 2


@pytest.mark.parametrize("header", [("Cache-Control", "no-cache"), ("Pragma", "no-cache")])
def test_rfc9111_5_2_1_4_request_no_cache_forwards(port: int, origin: ScriptedOrigin,
                                                   header: tuple[str, str]) -> None:
    """A fresh copy is not used without validation: forwarded with fwd=request (Pragma counts without
    Cache-Control, RFC 9111 5.4)."""
    path = f"/req/no-cache-{header[0].lower()}"
    origin.answers[path] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"v1"')], b"x")
    fill_then_hit(port, path)
    _, headers, _ = get(port, path, headers=dict([header]))
    params = status_params(headers)
    assert params.get("fwd") == "request" and "hit" not in params
    assert origin.count(path) == 2
    assert origin.last(path).headers.get("if-none-match") == '"v1"'


def test_rfc9111_5_2_1_7_only_if_cached_miss_is_504(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/only-if-cached-miss"] = Answer(200, [("Cache-Control", "max-age=60")], b"x")
    status, _, _ = get(port, "/req/only-if-cached-miss", headers={"Cache-Control": "only-if-cached"})
    assert status == 504
    assert origin.count("/req/only-if-cached-miss") == 0


def test_rfc9111_5_2_1_7_only_if_cached_hit_served(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/only-if-cached-hit"] = Answer(200, [("Cache-Control", "max-age=60")], b"cached")
    fill_then_hit(port, "/req/only-if-cached-hit")
    status, headers, body = get(port, "/req/only-if-cached-hit", headers={"Cache-Control": "only-if-cached"})
    assert (status, body) == (200, b"cached") and is_hit(headers)
    assert origin.count("/req/only-if-cached-hit") == 1


@pytest.mark.parametrize("directive", ["max-age=60", "max-age=60, must-revalidate", "max-age=600, no-cache"])
def test_rfc9111_5_2_1_7_only_if_cached_never_serves_a_copy_that_needs_validation(
    port: int, origin: ScriptedOrigin, directive: str
) -> None:
    """RFC 9111 4.2.4: a cache must not serve a stale copy (or a no-cache one) unless the client allows it, so
    only-if-cached without max-stale gets 504 (5.2.1.7: 'a stored response consistent with the other constraints
    of the request', or 504)."""
    path = "/req/only-if-cached-" + directive.rpartition(" ")[2]
    origin.answers[path] = Answer(200, [("Cache-Control", directive), ("Age", "80"), ("ETag", '"v1"')], b"old")
    get(port, path)
    status, _, _ = get(port, path, headers={"Cache-Control": "only-if-cached"})
    assert status == 504
    assert origin.count(path) == 1


def test_rfc9111_5_2_1_7_only_if_cached_with_max_stale_serves_stale(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/req/only-if-cached-max-stale"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("Age", "80"), ("ETag", '"v1"')], b"old"
    )
    get(port, "/req/only-if-cached-max-stale")
    status, headers, body = get(port, "/req/only-if-cached-max-stale",
                                headers={"Cache-Control": "only-if-cached, max-stale=60"})
    assert (status, body) == (200, b"old") and is_hit(headers)
    assert origin.count("/req/only-if-cached-max-stale") == 1


def test_rfc9111_5_2_1_5_request_no_store(port: int, origin: ScriptedOrigin) -> None:
    """The response to a no-store request is not stored; a stored response may still answer one."""
    origin.answers["/req/no-store"] = Answer(200, [("Cache-Control", "max-age=60")], b"x")
    _, headers, _ = get(port, "/req/no-store", headers={"Cache-Control": "no-store"})
    assert "stored" not in status_params(headers)
    fill_then_hit(port, "/req/no-store")
    _, headers, _ = get(port, "/req/no-store", headers={"Cache-Control": "no-store"})
    assert is_hit(headers)
    assert origin.count("/req/no-store") == 2


# --- RFC 9111 section 5.2.2: response directives ----------------------------------------------------------------


def test_rfc9111_5_2_2_4_no_cache_response_revalidated_every_time(port: int, origin: ScriptedOrigin) -> None:
    path = "/resp/no-cache"

    def answer(seen) -> Answer:
        if seen.headers.get("if-none-match") == '"v1"':
            return Answer(304, [("ETag", '"v1"'), ("Cache-Control", "no-cache")], b"")
        return Answer(200, [("Cache-Control", "no-cache"), ("ETag", '"v1"')], b"body")

    origin.answers[path] = answer
    get(port, path)
    for expected in (2, 3):
        status, headers, body = get(port, path)
        assert (status, body) == (200, b"body")
        params = status_params(headers)
        assert "hit" not in params and params["fwd"] == "stale" and params["fwd-status"] == "304"
        assert origin.count(path) == expected
        assert origin.last(path).headers.get("if-none-match") == '"v1"'


# --- RFC 9111 section 4.1: Vary ---------------------------------------------------------------------------------


def _by_encoding(seen) -> Answer:
    coding = seen.headers.get("accept-encoding", "none")
    return Answer(200, [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")], coding.encode())


def test_rfc9111_4_1_two_variants_stored_separately(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/vary/two"] = _by_encoding
    _, headers, body = get(port, "/vary/two", headers={"Accept-Encoding": "gzip"})
    assert body == b"gzip" and status_params(headers)["fwd"] == "uri-miss"
    _, headers, body = get(port, "/vary/two", headers={"Accept-Encoding": "br"})
    assert body == b"br" and status_params(headers)["fwd"] == "vary-miss"
    _, headers, body = get(port, "/vary/two")
    assert body == b"none" and status_params(headers)["fwd"] == "vary-miss"
    for coding, expected in (("gzip", b"gzip"), ("br", b"br"), (None, b"none")):
        _, headers, body = get(port, "/vary/two", headers={"Accept-Encoding": coding} if coding else None)
        assert body == expected and is_hit(headers)
    assert origin.count("/vary/two") == 3


def test_rfc9111_4_1_normalised_values_share_a_variant(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/vary/normalised"] = _by_encoding
    get(port, "/vary/normalised", headers={"Accept-Encoding": "gzip,br"})
    for spelling in ("gzip, br", "GZIP ,  br", "gzip,,br"):
        _, headers, body = get(port, "/vary/normalised", headers={"Accept-Encoding": spelling})
        assert is_hit(headers) and body == b"gzip,br", spelling
    _, headers, _ = get(port, "/vary/normalised", headers={"Accept-Encoding": "br, gzip"})
    assert not is_hit(headers)  # order can matter to the origin: another variant
    assert origin.count("/vary/normalised") == 2


def test_rfc9111_4_1_vary_star_never_served_from_cache(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/vary/star"] = Answer(200, [("Cache-Control", "max-age=60"), ("Vary", "Accept, *")], b"x")
    for _ in range(3):
        _, headers, _ = get(port, "/vary/star")
        assert not is_hit(headers) and "stored" not in status_params(headers)
    assert origin.count("/vary/star") == 3


def test_rfc9111_4_1_vary_curl_accept_language(edge: Edge, origin: ScriptedOrigin) -> None:
    """The same through curl: variants by Accept-Language, case-insensitively normalised."""
    origin.answers["/vary/curl"] = lambda seen: Answer(
        200, [("Cache-Control", "max-age=60"), ("Vary", "accept-language")], seen.headers["accept-language"].encode()
    )
    results = [
        edge.curl(HOST, "/vary/curl", "-H", f"Accept-Language: {value}", scheme="http")
        for value in ("en-US", "fr", "EN-us", "fr")
    ]
    assert [r.body for r in results] == [b"en-US", b"fr", b"en-US", b"fr"]
    assert origin.count("/vary/curl") == 2


# --- RFC 9213: targeted cache control fields ---------------------------------------------------------------------


def test_rfc9213_cdn_cache_control_beats_cache_control(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/cdn/cdn"] = Answer(
        200, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")], b"x"
    )
    first, second = fill_then_hit(port, "/cdn/cdn")
    for headers in (first, second):
        assert "cdn-cache-control" not in headers
        assert headers["cache-control"] == "no-store"  # for the caches downstream
    assert 58 <= ttl(first) <= 60


def test_rfc9213_tlsedge_cache_control_beats_cdn_cache_control(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/cdn/ours-no-store"] = Answer(
        200, [("Tlsedge-Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60"),
              ("Cache-Control", "max-age=60")], b"x"
    )
    for _ in range(2):
        _, headers, _ = get(port, "/cdn/ours-no-store")
        assert "stored" not in status_params(headers) and not is_hit(headers)
        assert "tlsedge-cache-control" not in headers and "cdn-cache-control" not in headers
    assert origin.count("/cdn/ours-no-store") == 2
    origin.answers["/cdn/ours-store"] = Answer(
        200, [("Tlsedge-Cache-Control", "max-age=60"), ("Cache-Control", "private")], b"x"
    )
    first, second = fill_then_hit(port, "/cdn/ours-store")
    assert "tlsedge-cache-control" not in first and "tlsedge-cache-control" not in second


def test_rfc9213_2_1_targeted_field_makes_expires_moot(port: int, origin: ScriptedOrigin) -> None:
    """With a targeted field in use, Expires is ignored too: CDN-Cache-Control: public alone gives no lifetime."""
    origin.answers["/cdn/expires"] = Answer(
        200, [("CDN-Cache-Control", "public"), ("Expires", http_date(3600))], b"x"
    )
    get(port, "/cdn/expires")
    _, headers, _ = get(port, "/cdn/expires")
    assert not is_hit(headers)
    assert origin.count("/cdn/expires") == 2


def test_rfc9213_2_1_empty_targeted_field_is_ignored(port: int, origin: ScriptedOrigin) -> None:
    """A targeted field without a valid directive is ignored (Cache-Control applies), and still not passed on."""
    origin.answers["/cdn/empty"] = Answer(
        200, [("CDN-Cache-Control", ", ,"), ("Cache-Control", "max-age=60")], b"x"
    )
    first, second = fill_then_hit(port, "/cdn/empty")
    assert "cdn-cache-control" not in first and "cdn-cache-control" not in second


def test_rfc9213_custom_targeted_field(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/cdn/custom"] = Answer(
        200, [("X-Edge-Cache", "max-age=60"), ("Cache-Control", "no-store"), ("CDN-Cache-Control", "no-store")], b"x"
    )
    first, second = fill_then_hit(port, "/cdn/custom", host=CUSTOM)
    for headers in (first, second):
        assert "x-edge-cache" not in headers and "cdn-cache-control" not in headers
    # the default field is nothing special on this site: it is passed on like any header
    origin.answers["/cdn/custom-default"] = Answer(
        200, [("Tlsedge-Cache-Control", "no-store"), ("Cache-Control", "max-age=60")], b"x"
    )
    first, _ = fill_then_hit(port, "/cdn/custom-default", host=CUSTOM)
    assert first["tlsedge-cache-control"] == "no-store"


# --- RFC 9211: Cache-Status on every response --------------------------------------------------------------------


def test_rfc9211_cache_status_on_every_response(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/status/a"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"a"')], b"x")
    origin.answers["/bypass/b"] = Answer(200, [("Cache-Control", "max-age=60")], b"x")
    seen = {
        "miss": get(port, "/status/a"),
        "hit": get(port, "/status/a"),
        "head": get(port, "/status/a", method="HEAD"),
        "304": get(port, "/status/a", headers={"If-None-Match": '"a"'}),
        "post": get(port, "/status/other", method="POST", body=b"x"),
        "options": get(port, "/status/a", method="OPTIONS"),
        "bypass": get(port, "/bypass/b"),
        "404": get(port, "/status/unscripted"),
    }
    expected = {"miss": 200, "hit": 200, "head": 200, "304": 304, "bypass": 200, "404": 404}
    for label, (status, headers, _) in seen.items():
        assert status == expected.get(label, status), label
        assert "cache-status" in headers, f"{label}: no Cache-Status in {headers}"
        status_params(headers)
    assert status_params(seen["bypass"][1])["fwd"] == "bypass"
    assert status_params(seen["post"][1])["fwd"] == "method"
    assert status_params(seen["options"][1])["fwd"] == "method"
    assert is_hit(seen["head"][1]) and is_hit(seen["304"][1])


def test_rfc9211_cache_status_on_the_edges_own_error_pages(port: int, origin: ScriptedOrigin) -> None:
    """The edge's own answers on a cached site carry Cache-Status too: 504 for only-if-cached, 502 when the
    origin is unreachable."""
    gateway_timeout = get(port, "/status/only-if-cached", headers={"Cache-Control": "only-if-cached"})
    bad_gateway = get(port, "/status/dead", host=DEAD)
    assert (gateway_timeout[0], bad_gateway[0]) == (504, 502)
    missing = [status for status, headers, _ in (gateway_timeout, bad_gateway) if "cache-status" not in headers]
    assert not missing, f"no Cache-Status on the edge's {missing} pages"
