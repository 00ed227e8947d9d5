"""Storability, freshness lifetime, age and reuse of stored responses (RFC 9111 sections 3 and 4, RFC 5861)."""

from __future__ import annotations

import math

import pytest

from tlsedge.cache.dates import format_http_date
from tlsedge.cache.directives import (
    NO_REQUEST_DIRECTIVES,
    RequestDirectives,
    ResponseDirectives,
    request_directives,
    response_directives,
)
from tlsedge.cache.entry import CacheEntry
from tlsedge.cache.freshness import (
    CACHEABLE_BY_DEFAULT,
    UNDERSTOOD,
    Facts,
    Verdict,
    corrected_initial_age,
    freshness_lifetime,
    response_facts,
    storable,
    usable_on_error,
    verdict,
)

T0 = 1_700_000_000.0
NONE = ResponseDirectives()
TARGETS = (b"tlsedge-cache-control", b"cdn-cache-control")


def date(ts: float) -> bytes:
    return format_http_date(ts)


def store(
    status: int = 200,
    directives: ResponseDirectives = NONE,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    method: bytes = b"GET",
    authorization: bool = False,
    request_no_store: bool = False,
) -> str | None:
    return storable(
        method, status, directives, headers or [],
        request_has_authorization=authorization, request_no_store=request_no_store,
    )


def lifetime(
    directives: ResponseDirectives = NONE,
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 200,
    response_time: float = T0,
    heuristic_max: float = 86400.0,
) -> float:
    return freshness_lifetime(directives, headers or [], status, response_time, heuristic_max=heuristic_max)


def entry(
    lifetime: float = 100.0,
    *,
    initial_age: float = 0.0,
    swr: float = 0.0,
    sie: float = 0.0,
    no_cache: bool = False,
    must_revalidate: bool = False,
    response_time: float = T0,
) -> CacheEntry:
    return CacheEntry(
        key=b"https://example.test/", variant=b"", site="example", url=b"https://example.test/", status=200,
        headers=[], vary=(), tags=(), request_time=response_time, response_time=response_time,
        initial_age=initial_age, lifetime=lifetime, stale_while_revalidate=swr, stale_if_error=sie,
        no_cache=no_cache, must_revalidate=must_revalidate, etag=None, last_modified=None, body_size=0,
    )


def entry_from(headers: list[tuple[bytes, bytes]], request_time: float, response_time: float) -> CacheEntry:
    """What the cache layer does with an origin response: directives, facts, entry."""
    directives, _ = response_directives(headers, TARGETS)
    facts = response_facts(directives, headers, 200, request_time, response_time, heuristic_max=3600)
    stored = entry(
        facts.lifetime, initial_age=facts.initial_age, swr=facts.stale_while_revalidate, sie=facts.stale_if_error,
        no_cache=facts.no_cache, must_revalidate=facts.must_revalidate, response_time=response_time,
    )
    stored.request_time = request_time
    return stored


# --- RFC 9111 section 3: storing responses -------------------------------------------------------------------------


def test_rfc9111_3_plain_200_get_is_storable() -> None:
    assert store() is None
    assert store(200, ResponseDirectives(max_age=60)) is None


@pytest.mark.parametrize("method", [b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"get", b"PURGE"])
def test_rfc9111_3_only_get_responses_are_stored(method: bytes) -> None:
    assert store(200, ResponseDirectives(public=True, max_age=60), method=method) == "method"


@pytest.mark.parametrize("status", [100, 101, 103, 199, 304])
def test_rfc9111_3_non_final_status_and_304_are_not_stored(status: int) -> None:
    assert store(status, ResponseDirectives(max_age=60)) == "status"


@pytest.mark.parametrize("status", [428, 429, 431, 511])
def test_rfc6585_statuses_are_never_stored(status: int) -> None:
    assert store(status, ResponseDirectives(public=True, max_age=60)) == "status"


def test_rfc9111_3_partial_content_is_not_stored() -> None:
    assert store(206, ResponseDirectives(max_age=60)) == "partial"


def test_rfc9110_15_1_cacheable_by_default_statuses() -> None:
    assert {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501} <= CACHEABLE_BY_DEFAULT
    assert 451 in CACHEABLE_BY_DEFAULT  # RFC 7725 section 3
    assert not {201, 302, 303, 307, 400, 403, 500, 502, 503, 504} & CACHEABLE_BY_DEFAULT
    assert CACHEABLE_BY_DEFAULT <= UNDERSTOOD


@pytest.mark.parametrize("status", sorted(CACHEABLE_BY_DEFAULT - {206}))
def test_rfc9111_3_cacheable_by_default_status_needs_no_explicit_freshness(status: int) -> None:
    assert store(status) is None


@pytest.mark.parametrize("status", [201, 302, 303, 307, 400, 403, 500, 502, 503, 504, 599])
def test_rfc9111_3_other_statuses_need_explicit_freshness(status: int) -> None:
    assert store(status) == "no-freshness"
    assert store(status, ResponseDirectives(max_age=0)) is None
    assert store(status, ResponseDirectives(s_maxage=10)) is None
    assert store(status, ResponseDirectives(public=True)) is None
    assert store(status, NONE, [(b"Expires", date(T0 + 60))]) is None
    assert store(status, NONE, [(b"expires", b"0")]) is None  # present, even if invalid (then already stale)


def test_rfc9213_2_1_expires_does_not_count_when_a_targeted_field_is_used() -> None:
    targeted = ResponseDirectives(targeted=True)
    assert store(302, targeted, [(b"Expires", date(T0 + 60))]) == "no-freshness"
    assert store(302, ResponseDirectives(max_age=60, targeted=True)) is None


def test_rfc9111_3_no_freshness_ignores_other_directives() -> None:
    assert store(302, ResponseDirectives(must_revalidate=True, stale_while_revalidate=60)) == "no-freshness"


def test_rfc9111_5_2_2_5_response_no_store() -> None:
    assert store(200, ResponseDirectives(no_store=True, max_age=60, public=True)) == "no-store"


def test_rfc9111_5_2_1_5_request_no_store() -> None:
    assert store(200, ResponseDirectives(max_age=60), request_no_store=True) == "no-store"
    assert store(200, ResponseDirectives(must_understand=True, no_store=True), request_no_store=True) == "no-store"


def test_rfc9111_5_2_2_3_must_understand_with_understood_status_overrides_no_store() -> None:
    directives = ResponseDirectives(must_understand=True, no_store=True, max_age=60)
    for status in (200, 404, 301, 302, 410, 501):
        assert store(status, directives) is None


@pytest.mark.parametrize("status", [299, 418, 425, 499, 509, 599, 600])
def test_rfc9111_5_2_2_3_must_understand_with_unknown_status_is_not_stored(status: int) -> None:
    assert store(status, ResponseDirectives(must_understand=True, no_store=True, max_age=60)) == "must-understand"
    assert store(status, ResponseDirectives(must_understand=True, max_age=60)) == "must-understand"
    assert store(status, ResponseDirectives(max_age=60)) is None  # without must-understand it is stored generically


def test_rfc9111_5_2_2_7_private_is_not_stored_by_a_shared_cache() -> None:
    assert store(200, ResponseDirectives(private=True, max_age=60)) == "private"
    assert store(200, ResponseDirectives(private_fields=(b"set-cookie",), max_age=60)) is None


def test_rfc9111_3_5_authorization_needs_explicit_permission() -> None:
    assert store(200, NONE, authorization=True) == "authorization"
    assert store(200, ResponseDirectives(max_age=60), authorization=True) == "authorization"
    assert store(200, ResponseDirectives(public=True), authorization=True) is None
    assert store(200, ResponseDirectives(s_maxage=60), authorization=True) is None
    assert store(200, ResponseDirectives(must_revalidate=True, max_age=60), authorization=True) is None
    assert store(200, ResponseDirectives(proxy_revalidate=True, max_age=60), authorization=True) == "authorization"


@pytest.mark.parametrize("vary", [b"*", b" * ", b"Accept, *", b"*, Accept-Encoding"])
def test_rfc9111_4_1_vary_star_is_not_stored(vary: bytes) -> None:
    assert store(200, ResponseDirectives(max_age=60), [(b"Vary", vary)]) == "vary-star"
    assert store(200, ResponseDirectives(max_age=60), [(b"Vary", b"Accept"), (b"VARY", vary)]) == "vary-star"


@pytest.mark.parametrize("vary", [b"Accept", b"Accept-Encoding, Origin", b"X-*", b""])
def test_rfc9111_4_1_other_vary_values_are_stored(vary: bytes) -> None:
    assert store(200, ResponseDirectives(max_age=60), [(b"Vary", vary)]) is None


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (store(200, method=b"HEAD"), "method"),
        (store(101), "status"),
        (store(206), "partial"),
        (store(200, ResponseDirectives(no_store=True, private=True)), "no-store"),
        (store(200, ResponseDirectives(private=True), authorization=True), "private"),
        (store(302, NONE, [(b"Vary", b"*")]), "no-freshness"),
        (store(299, ResponseDirectives(must_understand=True, private=True)), "must-understand"),
        (store(200, ResponseDirectives(max_age=1), [(b"Vary", b"*")], authorization=True), "authorization"),
    ],
)
def test_rfc9111_3_first_failing_rule_names_a_short_ascii_reason(reason: str | None, expected: str) -> None:
    assert reason == expected
    assert reason.isascii() and reason.replace("-", "").isalpha()


def test_rfc9111_3_storability_from_parsed_fields() -> None:
    def from_fields(*headers: tuple[bytes, bytes], status: int = 200) -> str | None:
        directives, _ = response_directives(list(headers), TARGETS)
        return store(status, directives, list(headers))

    assert from_fields((b"Cache-Control", b"no-store")) == "no-store"
    assert from_fields((b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"none")) is None
    assert from_fields((b"Cache-Control", b"max-age=60"), (b"CDN-Cache-Control", b"no-store")) == "no-store"
    assert from_fields((b"Cache-Control", b"private")) == "private"
    assert from_fields((b"Cache-Control", b'private="Set-Cookie"')) is None
    assert from_fields((b"Expires", date(T0)), status=302) is None
    assert from_fields((b"Expires", date(T0)), (b"CDN-Cache-Control", b"none"), status=302) == "no-freshness"


# --- RFC 9111 section 4.2.1: freshness lifetime --------------------------------------------------------------------


def test_rfc9111_4_2_1_s_maxage_wins() -> None:
    headers = [(b"Date", date(T0)), (b"Expires", date(T0 + 1000))]
    assert lifetime(ResponseDirectives(s_maxage=10, max_age=20), headers) == 10
    assert lifetime(ResponseDirectives(s_maxage=0, max_age=20), headers) == 0


def test_rfc9111_4_2_1_max_age_wins_over_expires() -> None:
    headers = [(b"Date", date(T0)), (b"Expires", date(T0 + 1000))]
    assert lifetime(ResponseDirectives(max_age=20), headers) == 20
    assert lifetime(ResponseDirectives(max_age=0), headers) == 0
    assert lifetime(ResponseDirectives(max_age=20), [(b"Expires", b"0")]) == 20


def test_rfc9111_4_2_1_max_age_wins_over_heuristics() -> None:
    headers = [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 100_000))]
    assert lifetime(ResponseDirectives(max_age=5), headers) == 5


def test_rfc9111_4_2_1_expires_minus_date() -> None:
    headers = [(b"Date", date(T0)), (b"Expires", date(T0 + 300))]
    assert lifetime(NONE, headers) == 300
    assert lifetime(NONE, headers, response_time=T0 + 50) == 300  # Date, not arrival, is the reference
    assert lifetime(NONE, [(b"EXPIRES", date(T0 + 300)), (b"date", date(T0))]) == 300


def test_rfc9111_4_2_1_expires_without_date_uses_response_time() -> None:
    assert lifetime(NONE, [(b"Expires", date(T0 + 300))], response_time=T0 + 100) == 200


@pytest.mark.parametrize("bad_date", [b"", b"0", b"yesterday", b"Sun, 31 Apr 2023 00:00:00 GMT"])
def test_rfc9111_4_2_1_expires_with_invalid_date_uses_response_time(bad_date: bytes) -> None:
    assert lifetime(NONE, [(b"Date", bad_date), (b"Expires", date(T0 + 300))], response_time=T0 + 100) == 200


def test_rfc9111_4_2_1_first_valid_date_is_used() -> None:
    headers = [(b"Date", b"nonsense"), (b"Date", date(T0)), (b"Date", date(T0 + 200)), (b"Expires", date(T0 + 300))]
    assert lifetime(NONE, headers, response_time=T0 + 100) == 300


def test_rfc9111_4_2_1_date_in_the_future_keeps_expires_minus_date() -> None:
    headers = [(b"Date", date(T0 + 1000)), (b"Expires", date(T0 + 1300))]
    assert lifetime(NONE, headers, response_time=T0) == 300


def test_rfc9111_4_2_1_expires_in_the_past_is_stale() -> None:
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Expires", date(T0 - 1))]) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Expires", date(T0))]) == 0
    assert lifetime(NONE, [(b"Expires", date(T0 - 3600))], response_time=T0) == 0


@pytest.mark.parametrize(
    "bad", [b"0", b"-1", b"", b"never", b"Thu, 01 Jan 1970 00:00:00", b"Sun, 30 Feb 2025 10:00:00 GMT"]
)
def test_rfc9111_5_3_invalid_expires_means_already_expired(bad: bytes) -> None:
    headers = [(b"Date", date(T0)), (b"Expires", bad), (b"Last-Modified", date(T0 - 100_000))]
    assert lifetime(NONE, headers) == 0  # and no heuristic: an explicit expiration time is present


def test_rfc9111_5_3_several_expires_lines() -> None:
    same = [(b"Date", date(T0)), (b"Expires", date(T0 + 60)), (b"Expires", b"  " + date(T0 + 60))]
    assert lifetime(NONE, same) == 60
    equivalent = [(b"Date", date(T0)), (b"Expires", date(T0 + 60)), (b"Expires", b"Tue Nov 14 22:14:20 2023")]
    assert lifetime(NONE, equivalent) == 60
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Expires", date(T0 + 60)), (b"Expires", date(T0 + 61))]) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Expires", date(T0 + 60)), (b"Expires", b"0")]) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Expires", b"0"), (b"Expires", date(T0 + 60))]) == 0


def test_rfc9213_2_1_targeted_field_makes_expires_ignored() -> None:
    headers = [(b"Date", date(T0)), (b"Expires", date(T0 + 300))]
    assert lifetime(ResponseDirectives(targeted=True), headers) == 0
    assert lifetime(ResponseDirectives(targeted=True), [*headers, (b"Last-Modified", date(T0 - 1000))]) == 100
    assert lifetime(ResponseDirectives(targeted=True, max_age=30), headers) == 30


# --- RFC 9111 section 4.2.2: heuristic freshness ----------------------------------------------------------------


def test_rfc9111_4_2_2_heuristic_is_ten_percent_of_last_modified_age() -> None:
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))]) == 100
    assert lifetime(NONE, [(b"last-modified", date(T0 - 50)), (b"DATE", date(T0))]) == 5


def test_rfc9111_4_2_2_heuristic_is_capped() -> None:
    headers = [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 10_000_000))]
    assert lifetime(NONE, headers, heuristic_max=3600) == 3600
    assert lifetime(NONE, headers, heuristic_max=0) == 0


def test_rfc9111_4_2_2_heuristic_without_date_uses_response_time() -> None:
    assert lifetime(NONE, [(b"Last-Modified", date(T0 - 1000))], response_time=T0 + 1000) == 200


@pytest.mark.parametrize("status", sorted(CACHEABLE_BY_DEFAULT))
def test_rfc9111_4_2_2_heuristic_for_every_cacheable_by_default_status(status: int) -> None:
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))], status=status) == 100


@pytest.mark.parametrize("status", [201, 302, 303, 307, 403, 500, 503])
def test_rfc9111_4_2_2_no_heuristic_for_other_statuses_unless_public(status: int) -> None:
    headers = [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))]
    assert lifetime(NONE, headers, status=status) == 0
    assert lifetime(ResponseDirectives(public=True), headers, status=status) == 100


def test_rfc9111_4_2_2_last_modified_in_the_future_or_invalid_gives_no_heuristic() -> None:
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", date(T0 + 1))]) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", date(T0))]) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", b"last week")]) == 0
    assert lifetime(NONE, [(b"Last-Modified", date(T0 + 10))], response_time=T0) == 0
    assert lifetime(NONE, [(b"Date", date(T0)), (b"Last-Modified", date(T0 + 10))], response_time=T0 + 100) == 0


def test_rfc9111_4_2_2_heuristic_measures_last_modified_against_date_on_the_origin_clock() -> None:
    headers = [(b"Date", date(T0 + 1000)), (b"Last-Modified", date(T0 + 500))]
    assert lifetime(NONE, headers, response_time=T0) == 50


def test_rfc9111_4_2_2_nothing_at_all_is_zero() -> None:
    assert lifetime(NONE, []) == 0
    assert lifetime(NONE, [(b"Date", date(T0))]) == 0
    assert lifetime(ResponseDirectives(public=True, must_revalidate=True), [(b"Date", date(T0))]) == 0


# --- RFC 9111 section 4.2.3: age -------------------------------------------------------------------------------------


def test_rfc9111_4_2_3_no_age_no_date_is_the_response_delay() -> None:
    assert corrected_initial_age([], T0, T0 + 2) == 2
    assert corrected_initial_age([], T0, T0) == 0


def test_rfc9111_4_2_3_age_header_adds_the_response_delay() -> None:
    assert corrected_initial_age([(b"Age", b"100")], T0, T0 + 2) == 102
    assert corrected_initial_age([(b"AGE", b" 100 ")], T0, T0 + 2) == 102
    assert corrected_initial_age([(b"Age", b"0")], T0, T0 + 0.5) == 0.5


def test_rfc9111_4_2_3_apparent_age_from_date_when_larger() -> None:
    headers = [(b"Date", date(T0 - 50)), (b"Age", b"10")]
    assert corrected_initial_age(headers, T0, T0 + 2) == 52
    headers = [(b"Date", date(T0 - 5)), (b"Age", b"10")]
    assert corrected_initial_age(headers, T0, T0 + 2) == 12


def test_rfc9111_4_2_3_date_in_the_future_gives_no_negative_age() -> None:
    assert corrected_initial_age([(b"Date", date(T0 + 3600))], T0, T0 + 1) == 1
    assert corrected_initial_age([(b"Date", date(T0 + 3600)), (b"Age", b"7")], T0, T0 + 1) == 8


def test_rfc9111_4_2_3_invalid_date_gives_no_apparent_age() -> None:
    assert corrected_initial_age([(b"Date", b"0"), (b"Age", b"3")], T0, T0 + 1) == 4


@pytest.mark.parametrize("bad", [b"-5", b"abc", b"1.5", b"", b"+3", b"0x10", b"1 2"])
def test_rfc9111_5_1_invalid_age_is_ignored(bad: bytes) -> None:
    assert corrected_initial_age([(b"Age", bad)], T0, T0 + 2) == 2


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"abc", b"30"], 30),
        ([b"30", b"40"], 30),
        ([b"30, 40"], 30),
        ([b"x, 40"], 40),
        ([b"-1", b"", b"7"], 7),
        ([b"99999999999999999999"], 2**31),
    ],
)
def test_rfc9111_5_1_age_first_valid_value(lines: list[bytes], expected: int) -> None:
    assert corrected_initial_age([(b"Age", line) for line in lines], T0, T0) == expected


@pytest.mark.parametrize(
    ("date_offset", "age", "delay"),
    [(-100, 0, 1), (-100, 200, 1), (0, 0, 0), (0, 5, 3), (10, 0, 4), (-3, 2, 2.5)],
)
def test_rfc9111_4_2_3_formula(date_offset: float, age: int, delay: float) -> None:
    response_time = T0 + delay
    headers = [(b"Date", date(T0 + date_offset)), (b"Age", str(age).encode())]
    apparent_age = max(0.0, response_time - (T0 + date_offset))
    assert corrected_initial_age(headers, T0, response_time) == max(apparent_age, age + delay)


# --- facts kept in the entry -----------------------------------------------------------------------------------------


def test_rfc9111_4_2_response_facts() -> None:
    directives = ResponseDirectives(max_age=60, stale_while_revalidate=30, stale_if_error=600, no_cache=True)
    facts = response_facts(directives, [(b"Age", b"5")], 200, T0, T0 + 1, heuristic_max=10)
    assert facts == Facts(
        lifetime=60.0, initial_age=6.0, stale_while_revalidate=30.0, stale_if_error=600.0, no_cache=True,
        must_revalidate=False,
    )
    assert isinstance(facts.lifetime, float)
    assert isinstance(facts.stale_while_revalidate, float)


def test_rfc9111_4_2_response_facts_without_directives() -> None:
    facts = response_facts(NONE, [], 200, T0, T0, heuristic_max=10)
    assert facts == Facts(0.0, 0.0, 0.0, 0.0, False, False)


def test_operator_ttl_override_replaces_the_lifetime_only() -> None:
    directives = ResponseDirectives(max_age=60, no_cache=True, must_revalidate=True)
    facts = response_facts(directives, [], 200, T0, T0, heuristic_max=10, ttl_override=3600)
    assert facts.lifetime == 3600.0
    assert facts.no_cache and facts.must_revalidate
    assert response_facts(directives, [], 200, T0, T0, heuristic_max=10, ttl_override=0).lifetime == 0.0


@pytest.mark.parametrize(
    ("directives", "expected"),
    [
        (ResponseDirectives(must_revalidate=True), True),
        (ResponseDirectives(proxy_revalidate=True), True),
        (ResponseDirectives(s_maxage=60), True),
        (ResponseDirectives(s_maxage=0), True),
        (ResponseDirectives(max_age=60, public=True, immutable=True), False),
    ],
)
def test_rfc9111_5_2_2_10_s_maxage_and_proxy_revalidate_mean_must_revalidate(
    directives: ResponseDirectives, expected: bool
) -> None:
    assert response_facts(directives, [], 200, T0, T0, heuristic_max=10).must_revalidate is expected


# --- RFC 9111 section 4.2 / 4.2.4 / 5.2.1: reuse ---------------------------------------------------------------------


def test_rfc9111_4_2_fresh_while_lifetime_exceeds_age() -> None:
    stored = entry(100)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 99.9) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 100) is Verdict.VALIDATE
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 5000) is Verdict.VALIDATE


def test_rfc9111_4_2_3_initial_age_counts_toward_staleness() -> None:
    stored = entry(100, initial_age=95)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 4) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 6) is Verdict.VALIDATE


def test_rfc9111_4_2_3_clock_going_back_does_not_make_an_entry_younger() -> None:
    stored = entry(100, initial_age=10)
    assert stored.age(T0 - 1000) == 10
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 - 1000) is Verdict.FRESH


def test_rfc9111_4_2_zero_lifetime_always_validates() -> None:
    assert verdict(entry(0), NO_REQUEST_DIRECTIVES, T0) is Verdict.VALIDATE
    assert verdict(entry(0), RequestDirectives(only_if_cached=True), T0) is Verdict.VALIDATE


def test_rfc9111_5_2_2_4_no_cache_response_always_validates() -> None:
    stored = entry(100, no_cache=True, swr=100)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_stale=math.inf), T0 + 150) is Verdict.VALIDATE


def test_rfc9111_5_2_1_4_no_cache_request_validates() -> None:
    assert verdict(entry(100), RequestDirectives(no_cache=True), T0) is Verdict.VALIDATE
    assert verdict(entry(100), request_directives([(b"Pragma", b"no-cache")]), T0) is Verdict.VALIDATE


def test_rfc9111_5_2_1_1_request_max_age() -> None:
    stored = entry(100)
    assert verdict(stored, RequestDirectives(max_age=5), T0 + 10) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_age=10), T0 + 10) is Verdict.FRESH
    assert verdict(stored, RequestDirectives(max_age=20), T0 + 10) is Verdict.FRESH
    assert verdict(stored, RequestDirectives(max_age=0), T0 + 0.001) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_age=500), T0 + 150) is Verdict.VALIDATE  # does not accept stale


def test_rfc9111_5_2_1_3_request_min_fresh() -> None:
    stored = entry(100)
    assert verdict(stored, RequestDirectives(min_fresh=90), T0 + 10) is Verdict.FRESH
    assert verdict(stored, RequestDirectives(min_fresh=91), T0 + 10) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(min_fresh=0), T0 + 10) is Verdict.FRESH


def test_rfc9111_5_2_1_2_request_max_stale() -> None:
    stored = entry(100)
    assert verdict(stored, RequestDirectives(max_stale=10.0), T0 + 110) is Verdict.STALE_ALLOWED
    assert verdict(stored, RequestDirectives(max_stale=9.0), T0 + 110) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_stale=math.inf), T0 + 1e9) is Verdict.STALE_ALLOWED
    assert verdict(stored, RequestDirectives(max_stale=0.0), T0 + 100) is Verdict.STALE_ALLOWED
    assert verdict(stored, RequestDirectives(max_stale=math.inf), T0 + 50) is Verdict.FRESH


def test_rfc9111_5_2_1_2_max_stale_with_max_age_and_min_fresh() -> None:
    stored = entry(100)
    assert verdict(stored, RequestDirectives(max_stale=50.0, max_age=120), T0 + 110) is Verdict.STALE_ALLOWED
    assert verdict(stored, RequestDirectives(max_stale=50.0, max_age=100), T0 + 110) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_stale=50.0, min_fresh=1), T0 + 110) is Verdict.VALIDATE


def test_rfc9111_5_2_2_2_must_revalidate_is_never_served_stale() -> None:
    stored = entry(100, must_revalidate=True, swr=100)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 50) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 101) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(max_stale=math.inf), T0 + 101) is Verdict.VALIDATE


def test_rfc5861_3_stale_while_revalidate() -> None:
    stored = entry(100, swr=30)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 99) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 100) is Verdict.STALE_REFRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 130) is Verdict.STALE_REFRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 130.01) is Verdict.VALIDATE
    assert verdict(stored, RequestDirectives(only_if_cached=True), T0 + 110) is Verdict.STALE_REFRESH


def test_rfc5861_3_max_stale_is_preferred_to_a_background_refresh_and_swr_is_the_fallback() -> None:
    stored = entry(100, swr=30)
    assert verdict(stored, RequestDirectives(max_stale=20.0), T0 + 110) is Verdict.STALE_ALLOWED
    assert verdict(stored, RequestDirectives(max_stale=5.0), T0 + 110) is Verdict.STALE_REFRESH
    assert verdict(stored, RequestDirectives(max_age=5), T0 + 110) is Verdict.VALIDATE


def test_rfc9111_4_2_verdict_over_time_from_origin_fields() -> None:
    headers = [(b"Date", date(T0)), (b"Cache-Control", b"max-age=60, stale-while-revalidate=30")]
    stored = entry_from(headers, T0, T0)
    assert [verdict(stored, NO_REQUEST_DIRECTIVES, T0 + dt) for dt in (0, 59, 61, 90, 91)] == [
        Verdict.FRESH, Verdict.FRESH, Verdict.STALE_REFRESH, Verdict.STALE_REFRESH, Verdict.VALIDATE,
    ]
    headers = [(b"Cache-Control", b"s-maxage=60, stale-while-revalidate=30")]
    stored = entry_from(headers, T0, T0)
    assert [verdict(stored, NO_REQUEST_DIRECTIVES, T0 + dt) for dt in (59, 61)] == [Verdict.FRESH, Verdict.VALIDATE]


def test_rfc9111_4_2_age_from_upstream_cache_shortens_freshness() -> None:
    headers = [(b"Date", date(T0 - 10)), (b"Age", b"50"), (b"Cache-Control", b"max-age=60")]
    stored = entry_from(headers, T0 - 1, T0)
    assert stored.initial_age == 51
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 8) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 9) is Verdict.VALIDATE


def test_rfc9213_verdict_uses_the_targeted_lifetime() -> None:
    headers = [(b"Age", b"1800"), (b"Cache-Control", b"max-age=600"), (b"CDN-Cache-Control", b"max-age=3600")]
    stored = entry_from(headers, T0, T0)
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0) is Verdict.FRESH
    assert verdict(stored, NO_REQUEST_DIRECTIVES, T0 + 1800) is Verdict.VALIDATE


# --- RFC 9111 section 4.2.4 and RFC 5861 section 4: serving stale on origin errors -----------------------------------


def on_error(stored: CacheEntry, now: float, request: RequestDirectives = NO_REQUEST_DIRECTIVES,
             always_online_max: float = 0.0) -> bool:
    return usable_on_error(stored, request, now, always_online_max=always_online_max)


def test_rfc9111_4_2_4_fresh_entry_is_usable_on_error() -> None:
    assert on_error(entry(100), T0 + 50)
    assert on_error(entry(100, must_revalidate=True), T0 + 50)


def test_rfc9111_5_2_2_4_no_cache_entry_is_never_used_without_validation() -> None:
    assert not on_error(entry(100, no_cache=True), T0 + 50)
    assert not on_error(entry(100, no_cache=True, sie=1000), T0 + 150, always_online_max=1000)


def test_rfc9111_4_2_4_stale_without_permission_is_not_served() -> None:
    assert not on_error(entry(100), T0 + 100)
    assert not on_error(entry(100, swr=1000), T0 + 150)  # stale-while-revalidate is not stale-if-error


def test_rfc5861_4_response_stale_if_error() -> None:
    stored = entry(100, sie=60)
    assert on_error(stored, T0 + 100)
    assert on_error(stored, T0 + 160)
    assert not on_error(stored, T0 + 160.5)


def test_rfc5861_4_request_stale_if_error() -> None:
    assert on_error(entry(100), T0 + 150, RequestDirectives(stale_if_error=60))
    assert not on_error(entry(100), T0 + 170, RequestDirectives(stale_if_error=60))
    assert on_error(entry(100, sie=100), T0 + 170, RequestDirectives(stale_if_error=10))
    assert on_error(entry(100, sie=10), T0 + 170, RequestDirectives(stale_if_error=100))


def test_always_online_window() -> None:
    assert on_error(entry(100), T0 + 1000, always_online_max=3600)
    assert not on_error(entry(100), T0 + 3701, always_online_max=3600)
    assert on_error(entry(100, sie=10), T0 + 500, always_online_max=3600)
    assert not on_error(entry(100), T0 + 101, always_online_max=0)


def test_rfc9111_5_2_2_2_must_revalidate_wins_over_stale_if_error_and_always_online() -> None:
    stored = entry(100, must_revalidate=True, sie=1000)
    assert not on_error(stored, T0 + 101)
    assert not on_error(stored, T0 + 101, RequestDirectives(stale_if_error=1000), always_online_max=1e6)


def test_rfc5861_4_stale_if_error_from_origin_fields() -> None:
    stored = entry_from([(b"Cache-Control", b"max-age=60, stale-if-error=300")], T0, T0)
    assert on_error(stored, T0 + 360)
    assert not on_error(stored, T0 + 361)
    stored = entry_from([(b"Cache-Control", b"max-age=60, stale-if-error=300, proxy-revalidate")], T0, T0)
    assert not on_error(stored, T0 + 61)
