"""Validation (RFC 9111 section 4.3) and invalidation (section 4.4) through a running edge.

The edge revalidates stale copies with the stored validators, a 304 refreshes the stored header fields, clients' own
conditionals are answered from the cache, and unsafe methods invalidate their target and same-origin Location /
Content-Location, in every worker. Stale copies are made with the origin's ``Age`` header, never by waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cache_support import Answer, ScriptedOrigin, Seen, cached_site, get, http_date, is_hit, status_params
from e2e_support import Edge, wait_for

HOST = "cached.example"
OTHER = "other.example"  # another cached site of the same edge: a cross-origin Location points here
STALE = [("Cache-Control", "max-age=60"), ("Age", "70")]  # stored (it has validators) but stale on arrival


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki, origin: ScriptedOrigin) -> Iterator[Edge]:
    sites = [cached_site(origin), cached_site(origin, name="other")]
    started = Edge(tmp_path_factory.mktemp("cache-validation"), sites, pki.ca_pem, https=[])
    started.start()
    yield started
    started.stop()


@pytest.fixture
def port(edge: Edge) -> int:
    return edge.http_port


def revalidating(etag: str, body: bytes, fresh: list[tuple[str, str]],
                 not_modified: list[tuple[str, str]]) -> Callable[[Seen], Answer]:
    """An origin answer: 304 with ``not_modified`` fields when If-None-Match names ``etag``, else 200 ``body``."""

    def answer(seen: Seen) -> Answer:
        if seen.headers.get("if-none-match") == etag:
            return Answer(304, [("ETag", etag), *not_modified], b"")
        return Answer(200, [("ETag", etag), *fresh], body)

    return answer


# --- RFC 9111 section 4.3.1: the edge's conditional requests ----------------------------------------------------


def test_rfc9111_4_3_1_conditional_request_carries_stored_validators(port: int, origin: ScriptedOrigin) -> None:
    modified = http_date(-3600)
    origin.answers["/val/both"] = Answer(200, [*STALE, ("ETag", '"v1"'), ("Last-Modified", modified)], b"body")
    origin.answers["/val/date-only"] = Answer(200, [*STALE, ("Last-Modified", modified)], b"body")
    for path in ("/val/both", "/val/date-only"):
        get(port, path)
        assert "if-none-match" not in origin.last(path).headers  # the fill itself is unconditional
        get(port, path)
        assert origin.count(path) == 2
        sent = origin.last(path).headers
        assert sent.get("if-modified-since") == modified
        assert sent.get("if-none-match") == ('"v1"' if path == "/val/both" else None)


def test_rfc9111_4_3_1_client_validators_replaced_by_the_edges(port: int, origin: ScriptedOrigin) -> None:
    """A client's conditional on a stale copy: the origin sees the edge's validators, not the client's."""
    origin.answers["/val/replaced"] = Answer(200, [*STALE, ("ETag", '"v1"')], b"body")
    get(port, "/val/replaced")
    get(port, "/val/replaced", headers={"If-None-Match": '"client"'})
    assert origin.last("/val/replaced").headers.get("if-none-match") == '"v1"'


# --- RFC 9111 sections 4.3.3 and 4.3.4: handling the origin's answer ---------------------------------------------


def test_rfc9111_4_3_4_304_updates_stored_headers(port: int, origin: ScriptedOrigin) -> None:
    """The 304's fields replace the stored ones (new X-Version and Content-Type served, now and on later hits), its
    freshness applies, and its Content-Length (RFC 9111 3.2) does not: the stored body keeps its length."""
    origin.answers["/val/update"] = revalidating(
        '"v1"', b"hello world",
        fresh=[*STALE, ("X-Version", "1"), ("Content-Type", "text/plain")],
        not_modified=[("Cache-Control", "max-age=60"), ("X-Version", "2"), ("Content-Type", "text/x-new"),
                      ("Content-Length", "3")],
    )
    get(port, "/val/update")
    for served_from in ("revalidation", "hit"):
        status, headers, body = get(port, "/val/update")
        assert (status, body) == (200, b"hello world"), served_from
        assert headers["x-version"] == "2" and headers["content-type"] == "text/x-new", served_from
        assert headers["content-length"] == "11", served_from
    params = status_params(headers)
    assert params.get("hit") is True
    assert origin.count("/val/update") == 2


def test_rfc9111_4_3_4_304_update_reaches_the_disk_tier(make_edge, origin: ScriptedOrigin) -> None:
    """The refreshed fields and freshness are written to disk too: after a restart (memory tier empty) the copy
    is a hit with the 304's fields."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/val/disk"] = revalidating(
        '"v1"', b"on disk", fresh=[*STALE, ("X-Version", "1")],
        not_modified=[("Cache-Control", "max-age=600"), ("X-Version", "2")],
    )
    get(edge.http_port, "/val/disk")
    assert get(edge.http_port, "/val/disk")[1]["x-version"] == "2"
    edge.stop()
    edge.start()
    status, headers, body = get(edge.http_port, "/val/disk")
    assert (status, body) == (200, b"on disk")
    assert is_hit(headers) and headers["x-version"] == "2", headers
    assert origin.count("/val/disk") == 2


def test_rfc9111_4_3_3_revalidation_304_status(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/val/status"] = revalidating('"v1"', b"body", fresh=STALE, not_modified=[])
    get(port, "/val/status")
    status, headers, body = get(port, "/val/status")
    assert (status, body) == (200, b"body")
    params = status_params(headers)
    assert params["fwd"] == "stale" and params["fwd-status"] == "304" and "hit" not in params
    assert headers["age"].isdigit()


@pytest.mark.parametrize("validator", [True, False], ids=["with-etag", "stale-if-error-no-validator"])
def test_rfc9111_4_3_3_full_response_replaces_stale_copy(port: int, origin: ScriptedOrigin, validator: bool) -> None:
    """The origin answers the revalidation (or the plain refetch of a stale copy kept for stale-if-error) with a
    new 200: it is served and it replaces the stored copy, so the next request is a hit on the new body."""
    path = f"/val/replace-{validator}"
    old = [("Cache-Control", "max-age=60, stale-if-error=600"), ("Age", "70")]
    origin.answers[path] = Answer(200, [*old, ("ETag", '"v1"')] if validator else old, b"old")
    get(port, path)
    origin.answers[path] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"v2"')], b"new")
    _, headers, body = get(port, path)
    assert body == b"new"
    assert status_params(headers).get("stored") is True, headers
    _, headers, body = get(port, path)
    assert body == b"new" and is_hit(headers), headers
    assert origin.count(path) == 2


def test_rfc9111_4_3_3_reload_with_no_cache_refreshes_the_copy_for_everyone(port: int,
                                                                          origin: ScriptedOrigin) -> None:
    """A client's no-cache reload finds a changed resource: the new 200 is stored, so the clients after it get the
    new body instead of the old copy (which is still fresh by its own max-age)."""
    origin.answers["/val/reload"] = Answer(200, [("Cache-Control", "max-age=600"), ("ETag", '"v1"')], b"old")
    get(port, "/val/reload")
    origin.answers["/val/reload"] = Answer(200, [("Cache-Control", "max-age=600"), ("ETag", '"v2"')], b"new")
    assert get(port, "/val/reload", headers={"Cache-Control": "no-cache"})[2] == b"new"
    _, headers, body = get(port, "/val/reload")
    assert body == b"new", headers


def _cookie_on_304(origin: ScriptedOrigin, path: str) -> None:
    origin.answers[path] = revalidating(
        '"v1"', b"page", fresh=STALE,
        not_modified=[("Cache-Control", "max-age=60"), ("Set-Cookie", "session=alice")],
    )


def test_rfc9111_3_2_304_set_cookie_never_served_to_others(port: int, origin: ScriptedOrigin) -> None:
    """A 304 may carry Set-Cookie; the site's policy (set_cookie = "bypass": never store a response with one)
    applies to the updated copy too, so one client's session cookie is never served to the next client."""
    _cookie_on_304(origin, "/val/cookie")
    get(port, "/val/cookie")
    get(port, "/val/cookie")
    _, bob, _ = get(port, "/val/cookie")
    assert "set-cookie" not in bob, bob


def test_rfc9111_4_3_4_304_set_cookie_reaches_the_client_that_revalidated(port: int, origin: ScriptedOrigin) -> None:
    """The 304's Set-Cookie answers the request that caused the revalidation: that client must get it (only the
    stored copy must not keep it)."""
    _cookie_on_304(origin, "/val/cookie-own")
    get(port, "/val/cookie-own")
    _, alice, _ = get(port, "/val/cookie-own")
    assert alice.get("set-cookie") == "session=alice", alice


@pytest.mark.parametrize("directive", ["private, max-age=60", "no-store, max-age=60"])
def test_rfc9111_4_3_4_304_that_forbids_storing_makes_the_copy_unusable(port: int, origin: ScriptedOrigin,
                                                                       directive: str) -> None:
    """A 304 that says private (or no-store) updates the stored response, which a shared cache may then no
    longer reuse: the next request goes to the origin again."""
    path = "/val/forbid-" + directive.split(",")[0]
    origin.answers[path] = revalidating('"v1"', b"page", fresh=STALE, not_modified=[("Cache-Control", directive)])
    get(port, path)
    get(port, path)
    _, headers, _ = get(port, path)
    assert not is_hit(headers), headers
    assert origin.count(path) == 3


# --- RFC 9111 section 4.3.2: clients' conditionals answered from the cache ---------------------------------------


@pytest.mark.parametrize("condition", ['"abc"', 'W/"abc"', '"zzz", "abc"', "*"])
def test_rfc9111_4_3_2_if_none_match_answered_304(port: int, origin: ScriptedOrigin, condition: str) -> None:
    path = "/cond/inm-" + condition.replace('"', "").replace(" ", "").replace("/", "").replace(",", "+")
    origin.answers[path] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"abc"')], b"body")
    get(port, path)
    status, headers, body = get(port, path, headers={"If-None-Match": condition})
    assert (status, body) == (304, b"")
    assert headers["etag"] == '"abc"' and headers["cache-control"] == "max-age=60"
    assert "content-length" not in headers or headers["content-length"] == "4"
    assert is_hit(headers)
    assert origin.count(path) == 1


def test_rfc9111_4_3_2_if_none_match_mismatch_full_response(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/cond/inm-miss"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"abc"')], b"body")
    get(port, "/cond/inm-miss")
    status, headers, body = get(port, "/cond/inm-miss", headers={"If-None-Match": '"old"'})
    assert (status, body) == (200, b"body") and is_hit(headers)
    assert origin.count("/cond/inm-miss") == 1


def test_rfc9110_13_1_3_if_modified_since_answered_from_cache(port: int, origin: ScriptedOrigin) -> None:
    modified = http_date(-1000)
    origin.answers["/cond/ims"] = Answer(200, [("Cache-Control", "max-age=60"), ("Last-Modified", modified)], b"b")
    get(port, "/cond/ims")
    for since, expected in ((modified, 304), (http_date(-10), 304), (http_date(-2000), 200), ("yesterday", 200)):
        status, headers, _ = get(port, "/cond/ims", headers={"If-Modified-Since": since})
        assert status == expected, since
        assert is_hit(headers)
    assert origin.count("/cond/ims") == 1


def test_rfc9111_4_3_2_if_modified_since_against_date_without_last_modified(port: int,
                                                                           origin: ScriptedOrigin) -> None:
    """Without Last-Modified the stored response's Date is the modification time to compare with."""
    origin.answers["/cond/ims-date"] = Answer(200, [("Cache-Control", "max-age=600"), ("Date", http_date(-100))], b"b")
    get(port, "/cond/ims-date")
    assert get(port, "/cond/ims-date", headers={"If-Modified-Since": http_date(-50)})[0] == 304
    assert get(port, "/cond/ims-date", headers={"If-Modified-Since": http_date(-200)})[0] == 200
    status, headers, body = get(port, "/cond/ims-date", method="HEAD", headers={"If-Modified-Since": http_date(-50)})
    assert (status, body) == (304, b"") and is_hit(headers)
    assert origin.count("/cond/ims-date") == 1


def test_rfc9110_13_2_2_if_none_match_takes_precedence(port: int, origin: ScriptedOrigin) -> None:
    modified = http_date(-1000)
    origin.answers["/cond/precedence"] = Answer(
        200, [("Cache-Control", "max-age=60"), ("ETag", '"abc"'), ("Last-Modified", modified)], b"b"
    )
    get(port, "/cond/precedence")
    status, _, _ = get(port, "/cond/precedence", headers={"If-None-Match": '"other"', "If-Modified-Since": modified})
    assert status == 200


def test_rfc9111_4_3_2_conditional_with_curl(edge: Edge, origin: ScriptedOrigin) -> None:
    origin.answers["/cond/curl"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"c1"')], b"body")
    assert edge.curl(HOST, "/cond/curl", scheme="http").status == 200
    result = edge.curl(HOST, "/cond/curl", "-H", 'If-None-Match: "c1"', scheme="http")
    assert (result.status, result.body) == (304, b"")
    assert origin.count("/cond/curl") == 1


def test_rfc9111_4_3_2_client_conditional_on_a_stale_copy_revalidated_then_304(port: int,
                                                                            origin: ScriptedOrigin) -> None:
    origin.answers["/cond/stale"] = revalidating('"s1"', b"body", fresh=STALE, not_modified=[])
    get(port, "/cond/stale")
    status, headers, body = get(port, "/cond/stale", headers={"If-None-Match": '"s1"'})
    assert (status, body) == (304, b"")
    assert headers["etag"] == '"s1"'
    assert status_params(headers)["fwd-status"] == "304"
    assert origin.last("/cond/stale").headers.get("if-none-match") == '"s1"'


def test_rfc9111_4_3_2_client_conditional_on_a_miss_fills_the_cache(port: int, origin: ScriptedOrigin) -> None:
    """On a miss the edge fetches the whole response for everybody (the client's validators are not forwarded)."""
    origin.answers["/cond/miss"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"m"')], b"body")
    status, headers, _ = get(port, "/cond/miss", headers={"If-None-Match": '"m"'})
    assert status in (200, 304)
    assert "if-none-match" not in origin.last("/cond/miss").headers
    assert status_params(headers).get("stored") is True
    status, headers, body = get(port, "/cond/miss")
    assert (status, body) == (200, b"body") and is_hit(headers)


# --- RFC 9111 section 4.4: invalidation -------------------------------------------------------------------------


def _store(port: int, origin: ScriptedOrigin, *paths: str, host: str = HOST) -> None:
    """Store each path (asserting the second request is a hit)."""
    for path in paths:
        origin.answers[path] = Answer(200, [("Cache-Control", "max-age=600")], b"cached " + path.encode())
        get(port, path, host=host)
        _, headers, _ = get(port, path, host=host)
        assert is_hit(headers), (path, headers)


def _is_still_hit(port: int, path: str, host: str = HOST) -> bool:
    return is_hit(get(port, path, host=host)[1])


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PROPPATCH"])
def test_rfc9111_4_4_unsafe_method_invalidates_target(port: int, origin: ScriptedOrigin, method: str) -> None:
    """POST, PUT, DELETE, PATCH and a method the cache knows nothing about (PROPPATCH) with a 2xx."""
    path = f"/inv/{method.lower()}"
    _store(port, origin, path)
    origin.answers[path] = Answer(204 if method == "DELETE" else 200, [], b"" if method == "DELETE" else b"done")
    status, headers, _ = get(port, path, method=method, body=b"data")
    assert status in (200, 204)
    assert status_params(headers)["fwd"] == "method"
    assert not _is_still_hit(port, path)
    assert origin.count(path, "GET") == 2


def test_rfc9111_4_4_invalidation_drops_every_variant(port: int, origin: ScriptedOrigin) -> None:
    origin.answers["/inv/vary"] = lambda seen: Answer(
        200, [("Cache-Control", "max-age=600"), ("Vary", "Accept-Language")],
        seen.headers.get("accept-language", "-").encode()
    )
    for language in ("en", "fr", "en", "fr"):
        get(port, "/inv/vary", headers={"Accept-Language": language})
    assert origin.count("/inv/vary") == 2
    get(port, "/inv/vary", method="POST", body=b"x")
    for language in ("en", "fr"):
        _, headers, body = get(port, "/inv/vary", headers={"Accept-Language": language})
        assert not is_hit(headers) and body == language.encode()
    assert origin.count("/inv/vary", "GET") == 4


def test_rfc9211_after_invalidation_a_miss_is_a_uri_miss(port: int, origin: ScriptedOrigin) -> None:
    """Nothing is stored for the URI after an invalidation, so the next miss is fwd=uri-miss, not vary-miss (the
    response has no Vary at all)."""
    origin.answers["/inv/miss-status"] = Answer(200, [("Cache-Control", "max-age=600")], b"x")
    get(port, "/inv/miss-status")
    get(port, "/inv/miss-status", method="POST", body=b"x")
    _, headers, _ = get(port, "/inv/miss-status")
    assert status_params(headers)["fwd"] == "uri-miss", headers


def test_rfc9111_4_4_same_origin_location_and_content_location(port: int, origin: ScriptedOrigin) -> None:
    targets = ["/inv/loc/relative", "/inv/loc/absolute", "/inv/loc/content", "/inv/loc/dotted"]
    _store(port, origin, *targets)
    origin.answers["/inv/loc/form"] = Answer(201, [
        ("Location", "relative"),
        ("Location", "http://CACHED.example:80/inv/loc/absolute"),
        ("Content-Location", "/inv/loc/content"),
    ], b"created")
    get(port, "/inv/loc/form", method="POST", body=b"x")
    origin.answers["/inv/loc/redirect"] = Answer(303, [("Location", "./x/../dotted")], b"")
    get(port, "/inv/loc/redirect", method="POST", body=b"x")
    still = [path for path in targets if _is_still_hit(port, path)]
    assert still == []


def test_rfc9111_4_4_cross_origin_location_not_invalidated(port: int, origin: ScriptedOrigin) -> None:
    _store(port, origin, "/inv/cross/x", host=OTHER)
    _store(port, origin, "/inv/cross/y", "/inv/cross/z")
    origin.answers["/inv/cross/form"] = Answer(201, [
        ("Location", "http://other.example/inv/cross/x"),  # another host (a site of this very edge)
        ("Location", "https://cached.example/inv/cross/y"),  # another scheme
        ("Content-Location", "http://cached.example:8080/inv/cross/z"),  # another port
    ], b"created")
    status, _, _ = get(port, "/inv/cross/form", method="POST", body=b"x")
    assert status == 201
    assert _is_still_hit(port, "/inv/cross/x", host=OTHER)
    assert _is_still_hit(port, "/inv/cross/y") and _is_still_hit(port, "/inv/cross/z")


def test_rfc9111_4_4_fill_in_flight_not_stored_after_invalidation(port: int, origin: ScriptedOrigin) -> None:
    """A GET whose origin response was produced before a POST changed the resource, but arrives after the POST's
    2xx, must not be stored as fresh: otherwise the invalidation is undone for max-age (purge guards against the
    same race, see CacheRuntime._purged_since)."""
    state = {"body": b"before"}

    def answer(seen: Seen) -> Answer:
        if seen.method == "POST":
            state["body"] = b"after"
            return Answer(200, [], b"updated")
        body = state["body"]
        return Answer(200, [("Cache-Control", "max-age=600")], body, delay=1.0 if body == b"before" else 0.0)

    origin.answers["/inv/race"] = answer
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, port, "/inv/race")
        time.sleep(0.3)
        assert get(port, "/inv/race", method="POST", body=b"x")[0] == 200
        assert slow.result()[2] == b"before"
    _, headers, body = get(port, "/inv/race")
    assert body == b"after", headers


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
def test_rfc9111_4_4_error_status_does_not_invalidate(port: int, origin: ScriptedOrigin, status: int) -> None:
    path = f"/inv/error-{status}"
    _store(port, origin, path, f"{path}-location")
    origin.answers[path] = Answer(status, [("Location", f"{path}-location")], b"refused")
    got, _, _ = get(port, path, method="POST", body=b"x")
    assert got == status
    assert _is_still_hit(port, path) and _is_still_hit(port, f"{path}-location")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE"])
def test_rfc9111_4_4_safe_methods_do_not_invalidate(port: int, origin: ScriptedOrigin, method: str) -> None:
    path = f"/inv/safe-{method.lower()}"
    _store(port, origin, path)
    get(port, path, method=method)
    assert _is_still_hit(port, path)


def test_rfc9111_4_4_invalidation_reaches_every_worker(make_edge, origin: ScriptedOrigin) -> None:
    """workers = 2: whichever worker sees the POST, no worker serves the old copy afterwards. Fresh connections
    spread over both workers (the access log's request-id prefixes name the worker), and the origin sees exactly
    one refill."""
    edge = make_edge([cached_site(origin)], https=[], workers=2)
    port = edge.http_port
    origin.answers["/inv/workers"] = Answer(200, [("Cache-Control", "max-age=600")], b"v1")
    # Fresh connections until both workers hold the copy (the kernel spreads them; a burst may favour one).
    for sent in range(1, 201):
        assert get(port, "/inv/workers")[2] == b"v1"
        before = wait_for(lambda n=sent: _served(edge, n), 5.0, what=f"{sent} access log lines")
        if sent >= 10 and len({_worker(e) for e in before}) == 2:
            break
    assert len({_worker(e) for e in before}) == 2, "the requests did not reach both workers"
    assert origin.count("/inv/workers", "GET") == 1
    origin.answers["/inv/workers"] = Answer(200, [("Cache-Control", "max-age=600")], b"v2")
    assert get(port, "/inv/workers", method="POST", body=b"x")[0] == 200
    poster = next(_worker(e) for e in wait_for(lambda: _served(edge, sent + 1), 5.0) if e["method"] == "POST")
    # Then until the worker that did not see the POST has answered: it must not serve its old copy.
    for count in range(sent + 2, sent + 202):
        assert get(port, "/inv/workers")[2] == b"v2"
        after = wait_for(lambda n=count: _served(edge, n), 5.0, what=f"{count} access log lines")
        if any(_worker(e) != poster for e in after[sent + 1:] if e["method"] == "GET"):
            break
    else:
        raise AssertionError("no request after the POST reached the other worker")
    assert origin.count("/inv/workers", "GET") == 2


def _served(edge: Edge, count: int) -> list[dict] | None:
    entries = [e for e in edge.access_entries() if e["path"] == "/inv/workers"]
    return entries if len(entries) >= count else None


def _worker(entry: dict) -> str:
    """The worker that served a request: request ids are a per-worker prefix and a 7-digit counter."""
    return entry["request_id"][:-7]
