"""Cache-Control and targeted fields parsed into directives (RFC 9111 section 5.2, RFC 9213, RFC 5861)."""

from __future__ import annotations

import math

import pytest

from tlsedge.cache.directives import (
    DELTA_SECONDS_MAX,
    NO_REQUEST_DIRECTIVES,
    NO_RESPONSE_DIRECTIVES,
    RequestDirectives,
    ResponseDirectives,
    parse_delta_seconds,
    request_directives,
    response_directives,
)

TARGETS = (b"tlsedge-cache-control", b"cdn-cache-control")


def cc(*values: bytes) -> ResponseDirectives:
    """Directives of a response with these Cache-Control lines (and no targeted field)."""
    directives, used = response_directives([(b"Cache-Control", value) for value in values], TARGETS)
    assert used is None
    return directives


def req(*values: bytes) -> RequestDirectives:
    return request_directives([(b"Cache-Control", value) for value in values])


# --- RFC 9111 section 1.2.2: delta-seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0", 0),
        (b"5", 5),
        (b"000000000000000000005", 5),
        (b"2147483647", 2147483647),
        (b"2147483648", 2**31),
        (b"2147483649", 2**31),
        (b"9999999999", 2**31),
        (b"99999999999999999999", 2**31),
        (b"1" * 5000, 2**31),
        (b"0" * 5000, 0),
        (b"-1", None),
        (b"+1", None),
        (b"1.5", None),
        (b" 1", None),
        (b"1 ", None),
        (b"", None),
        (b"1_000", None),
        (b"0x10", None),
        ("\u0665".encode(), None),
    ],
)
def test_rfc9111_1_2_2_delta_seconds(value: bytes, expected: int | None) -> None:
    assert parse_delta_seconds(value) == expected


def test_rfc9111_1_2_2_large_max_age_saturates_at_2_31() -> None:
    assert DELTA_SECONDS_MAX == 2**31
    assert cc(b"max-age=99999999999999999999999").max_age == 2**31
    assert cc(b"s-maxage=4294967296").s_maxage == 2**31
    assert cc(b"stale-while-revalidate=4294967296").stale_while_revalidate == 2**31
    assert req(b"max-stale=4294967296").max_stale == float(2**31)


# --- RFC 9111 section 5.2: syntax ----------------------------------------------------------------------------------


def test_rfc9111_5_2_absent_field_gives_the_shared_empty_directives() -> None:
    assert response_directives([], TARGETS) == (NO_RESPONSE_DIRECTIVES, None)
    directives, used = response_directives([(b"Content-Type", b"text/html"), (b"ETag", b'"x"')], TARGETS)
    assert directives is NO_RESPONSE_DIRECTIVES
    assert used is None


def test_rfc9111_5_2_only_unknown_directives_gives_the_shared_empty_directives() -> None:
    assert cc(b"foo, bar=baz, x-ext=\"a, b\"") is NO_RESPONSE_DIRECTIVES
    assert cc(b"") is NO_RESPONSE_DIRECTIVES
    assert cc(b" , ,, ") is NO_RESPONSE_DIRECTIVES


def test_rfc9111_5_2_names_are_case_insensitive() -> None:
    directives = cc(b"MAX-AGE=5, Public, No-Store, S-MaxAge=7, Must-Revalidate")
    assert directives.max_age == 5
    assert directives.s_maxage == 7
    assert directives.public and directives.no_store and directives.must_revalidate


def test_rfc9111_5_2_field_name_is_case_insensitive() -> None:
    directives, _ = response_directives([(b"cache-control", b"max-age=5")], TARGETS)
    assert directives.max_age == 5
    directives, _ = response_directives([(b"CACHE-CONTROL", b"max-age=6")], TARGETS)
    assert directives.max_age == 6


def test_rfc9111_5_2_arguments_in_token_or_quoted_string_form() -> None:
    assert cc(b'max-age="5"').max_age == 5
    assert cc(b"max-age=5").max_age == 5
    assert cc(b's-maxage="10"').s_maxage == 10
    assert cc(b'stale-if-error="30"').stale_if_error == 30
    assert cc(b"private=Set-Cookie").private_fields == (b"set-cookie",)
    assert cc(b'private="Set-Cookie"').private_fields == (b"set-cookie",)


def test_rfc9111_5_2_whitespace_and_empty_members_are_tolerated() -> None:
    directives = cc(b" ,  max-age = 5 ,, public ,")
    assert directives.max_age == 5
    assert directives.public


def test_rfc9111_5_2_several_field_lines_form_one_list() -> None:
    directives = cc(b"public", b"max-age=60", b"stale-while-revalidate=30")
    assert directives.public
    assert directives.max_age == 60
    assert directives.stale_while_revalidate == 30


def test_rfc9111_5_2_commas_inside_quoted_strings_do_not_split() -> None:
    directives = cc(b'no-cache="Set-Cookie, X-Token", max-age=5, private="A,B"')
    assert directives.no_cache_fields == (b"set-cookie", b"x-token")
    assert not directives.no_cache
    assert directives.max_age == 5
    assert directives.private_fields == (b"a", b"b")
    assert not directives.private


def test_rfc9111_5_2_escaped_quotes_inside_quoted_strings() -> None:
    directives = cc(b'x-ext="a\\", max-age=1", max-age=9, no-store')
    assert directives.max_age == 9
    assert directives.no_store
    directives = cc(b'x-ext="a\\\\", max-age=9')
    assert directives.max_age == 9


def test_rfc9111_5_2_unterminated_quote_swallows_the_rest_and_stays_conservative() -> None:
    directives = cc(b'no-cache="Set-Cookie, max-age=5')
    assert directives.no_cache
    assert directives.no_cache_fields == ()
    assert directives.max_age is None


def test_rfc9111_5_2_members_without_a_token_name_are_skipped() -> None:
    directives = cc(b'=5, "public", max age=3, @x, max-age=7')
    assert directives.max_age == 7
    assert not directives.public


# --- RFC 9111 section 5.2.2: response directives ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "attribute"),
    [
        (b"no-store", "no_store"),
        (b"no-cache", "no_cache"),
        (b"private", "private"),
        (b"public", "public"),
        (b"must-revalidate", "must_revalidate"),
        (b"proxy-revalidate", "proxy_revalidate"),
        (b"must-understand", "must_understand"),
        (b"immutable", "immutable"),
    ],
)
def test_rfc9111_5_2_2_boolean_directives(value: bytes, attribute: str) -> None:
    directives = cc(value)
    assert getattr(directives, attribute) is True
    others = {"no_store", "no_cache", "private", "public", "must_revalidate", "proxy_revalidate", "must_understand",
              "immutable"} - {attribute}
    assert not any(getattr(directives, other) for other in others)
    assert directives.max_age is None
    assert not directives.targeted


@pytest.mark.parametrize(
    "value",
    [
        b"max-age=-1", b"max-age=abc", b"max-age=", b"max-age", b"max-age=1.5", b"max-age=+5", b'max-age="5',
        b"max-age=5s", b'max-age=""', b'max-age="-3"', b"max-age=0x10",
    ],
)
def test_rfc9111_4_2_1_invalid_max_age_means_stale(value: bytes) -> None:
    assert cc(value).max_age == 0


@pytest.mark.parametrize("value", [b"s-maxage=-1", b"s-maxage=x", b"s-maxage", b"s-maxage=1e3"])
def test_rfc9111_4_2_1_invalid_s_maxage_means_stale(value: bytes) -> None:
    assert cc(value).s_maxage == 0


def test_rfc9111_4_2_1_duplicate_equal_max_age_is_kept() -> None:
    assert cc(b"max-age=5, max-age=5").max_age == 5
    assert cc(b"max-age=5", b'max-age="5"').max_age == 5
    assert cc(b"s-maxage=9, s-maxage=9").s_maxage == 9


@pytest.mark.parametrize(
    "values",
    [
        (b"max-age=5, max-age=10",),
        (b"max-age=10", b"max-age=5"),
        (b"max-age=5, max-age=10, max-age=5",),
        (b"max-age=5, max-age=abc",),
        (b"max-age=abc, max-age=5",),
    ],
)
def test_rfc9111_4_2_1_conflicting_duplicate_max_age_means_stale(values: tuple[bytes, ...]) -> None:
    assert cc(*values).max_age == 0


def test_rfc9111_4_2_1_conflicting_duplicate_s_maxage_means_stale() -> None:
    directives = cc(b"s-maxage=60, max-age=30, s-maxage=120")
    assert directives.s_maxage == 0
    assert directives.max_age == 30


def test_rfc5861_duplicate_stale_windows_first_occurrence_wins() -> None:
    directives = cc(b"stale-while-revalidate=30, stale-if-error=60, stale-while-revalidate=90, stale-if-error=5")
    assert directives.stale_while_revalidate == 30
    assert directives.stale_if_error == 60


def test_rfc5861_invalid_stale_windows_are_ignored() -> None:
    directives = cc(b"stale-while-revalidate=-1, stale-if-error=abc, stale-if-error=60")
    assert directives.stale_while_revalidate is None
    assert directives.stale_if_error is None
    assert cc(b"stale-while-revalidate").stale_while_revalidate is None
    assert cc(b"stale-while-revalidate=0").stale_while_revalidate == 0


def test_rfc9111_5_2_2_4_qualified_no_cache_lists_lower_cased_unique_fields() -> None:
    directives = cc(b'no-cache="Set-Cookie, X-A ,x-a,  ", no-cache="X-B, set-cookie"')
    assert directives.no_cache_fields == (b"set-cookie", b"x-a", b"x-b")
    assert not directives.no_cache


@pytest.mark.parametrize("value", [b'no-cache=""', b'no-cache=" , "', b'no-cache="@@"', b"no-cache=", b'no-cache="a'])
def test_rfc9111_5_2_2_4_no_cache_naming_no_field_is_unqualified(value: bytes) -> None:
    directives = cc(value)
    assert directives.no_cache
    assert directives.no_cache_fields == ()


def test_rfc9111_5_2_2_4_unqualified_no_cache_wins_over_qualified() -> None:
    for values in ((b'no-cache="X", no-cache',), (b"no-cache", b'no-cache="X"')):
        directives = cc(*values)
        assert directives.no_cache
        assert directives.no_cache_fields == (b"x",)


def test_rfc9111_5_2_2_7_private_qualified_and_unqualified() -> None:
    assert cc(b'private="Set-Cookie, Authorization-Info"').private_fields == (b"set-cookie", b"authorization-info")
    assert not cc(b'private="Set-Cookie"').private
    assert cc(b'private=""').private
    assert cc(b'private="x", private').private
    assert cc(b"PRIVATE").private


def test_rfc9111_5_2_2_response_combination() -> None:
    directives = cc(b"public, max-age=60, s-maxage=300, stale-while-revalidate=30, stale-if-error=600, immutable")
    assert directives == ResponseDirectives(
        public=True, max_age=60, s_maxage=300, stale_while_revalidate=30, stale_if_error=600, immutable=True
    )


# --- RFC 9213: targeted fields -----------------------------------------------------------------------------------


def test_rfc9213_2_1_targeted_field_replaces_cache_control() -> None:
    headers = [(b"Cache-Control", b"max-age=60, s-maxage=120"), (b"CDN-Cache-Control", b"max-age=600")]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert directives == ResponseDirectives(max_age=600, targeted=True)


def test_rfc9213_2_1_no_store_in_cache_control_does_not_reach_the_targeted_cache() -> None:
    headers = [(b"CDN-Cache-Control", b"max-age=600"), (b"Cache-Control", b"no-store")]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert not directives.no_store
    assert directives.max_age == 600


def test_rfc9213_3_unknown_directive_in_targeted_field_still_selects_it() -> None:
    headers = [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"none")]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert directives == ResponseDirectives(targeted=True)
    assert directives is not NO_RESPONSE_DIRECTIVES


def test_rfc9213_2_1_first_field_of_the_target_list_wins() -> None:
    headers = [
        (b"CDN-Cache-Control", b"max-age=600"),
        (b"Tlsedge-Cache-Control", b"max-age=30, must-revalidate"),
        (b"Cache-Control", b"max-age=1"),
    ]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"tlsedge-cache-control"
    assert directives.max_age == 30
    assert directives.must_revalidate
    directives, used = response_directives(headers, (b"cdn-cache-control", b"tlsedge-cache-control"))
    assert used == b"cdn-cache-control"
    assert directives.max_age == 600


@pytest.mark.parametrize("invalid", [b"", b"   ", b",,,", b"=5", b'"max-age=5"', b"@@@, ;;;", b";a=1"])
def test_rfc9213_2_2_empty_or_invalid_targeted_field_falls_back(invalid: bytes) -> None:
    headers = [
        (b"Tlsedge-Cache-Control", invalid),
        (b"CDN-Cache-Control", b"max-age=600"),
        (b"Cache-Control", b"no-store"),
    ]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert directives.max_age == 600
    headers = [(b"CDN-Cache-Control", invalid), (b"Cache-Control", b"no-store")]
    directives, used = response_directives(headers, TARGETS)
    assert used is None
    assert directives.no_store
    assert not directives.targeted
    directives, used = response_directives([(b"CDN-Cache-Control", invalid)], TARGETS)
    assert (directives, used) == (NO_RESPONSE_DIRECTIVES, None)


def test_rfc9213_2_1_fields_not_on_the_target_list_change_nothing() -> None:
    headers = [(b"CDN-Cache-Control", b"max-age=600"), (b"Cache-Control", b"max-age=5")]
    directives, used = response_directives(headers)
    assert used is None
    assert directives.max_age == 5
    directives, used = response_directives(headers, (b"tlsedge-cache-control",))
    assert used is None
    assert directives.max_age == 5


def test_rfc9213_2_2_targeted_field_lines_combine_and_names_are_case_insensitive() -> None:
    headers = [(b"cdn-cache-control", b"max-age=600"), (b"CDN-CACHE-CONTROL", b"stale-if-error=60")]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert directives.max_age == 600
    assert directives.stale_if_error == 60


def test_rfc9213_2_2_parameters_on_targeted_members_are_ignored() -> None:
    headers = [(b"CDN-Cache-Control", b'max-age=600;a=1, private;x="y;z", no-cache="A, b;c";p, stale-if-error=5;q')]
    directives, used = response_directives(headers, TARGETS)
    assert used == b"cdn-cache-control"
    assert directives.max_age == 600
    assert directives.private
    assert directives.no_cache_fields == (b"a",)  # the ";" inside the quotes did not cut the member
    assert not directives.no_cache
    assert directives.stale_if_error == 5


def test_rfc9213_2_2_structured_fields_forms_are_read_leniently() -> None:
    headers = [(b"CDN-Cache-Control", b'max-age=60, private, no-cache="set-cookie", no-store=?1')]
    directives, _ = response_directives(headers, TARGETS)
    assert directives.max_age == 60
    assert directives.private
    assert directives.no_cache_fields == (b"set-cookie",)
    assert directives.no_store


# --- RFC 9111 section 5.2.1: request directives ------------------------------------------------------------------


def test_rfc9111_5_2_1_no_directives_gives_the_shared_instance() -> None:
    assert request_directives([]) is NO_REQUEST_DIRECTIVES
    assert request_directives([(b"Host", b"a"), (b"Accept", b"*/*")]) is NO_REQUEST_DIRECTIVES
    assert req(b"foo, bar=1") is NO_REQUEST_DIRECTIVES
    assert req(b"") is NO_REQUEST_DIRECTIVES
    assert req(b"max-age=abc, min-fresh=-1, max-stale=x") is NO_REQUEST_DIRECTIVES
    assert req(b"public, s-maxage=5, must-revalidate") is NO_REQUEST_DIRECTIVES


def test_rfc9111_5_2_1_1_max_age() -> None:
    assert req(b"max-age=0") == RequestDirectives(max_age=0)
    assert req(b"Max-Age=30").max_age == 30
    assert req(b'max-age="30"').max_age == 30


def test_rfc9111_5_2_1_2_max_stale_with_and_without_value() -> None:
    assert req(b"max-stale").max_stale == math.inf
    assert req(b"max-stale=30").max_stale == 30.0
    assert req(b"max-stale=0").max_stale == 0.0


def test_rfc9111_5_2_1_2_malformed_max_stale_accepts_nothing_stale() -> None:
    assert req(b"max-stale=abc").max_stale is None
    assert req(b"max-stale=").max_stale is None
    assert req(b"max-stale=-5").max_stale is None


def test_rfc9111_5_2_1_3_min_fresh() -> None:
    assert req(b"min-fresh=10").min_fresh == 10
    assert req(b"min-fresh=ten").min_fresh is None


def test_rfc9111_5_2_1_4_to_7_boolean_request_directives() -> None:
    assert req(b"no-cache") == RequestDirectives(no_cache=True)
    assert req(b"no-store") == RequestDirectives(no_store=True)
    assert req(b"only-if-cached") == RequestDirectives(only_if_cached=True)
    assert req(b"NO-CACHE, No-Store") == RequestDirectives(no_cache=True, no_store=True)


def test_rfc5861_4_request_stale_if_error() -> None:
    assert req(b"stale-if-error=60").stale_if_error == 60
    assert req(b"stale-if-error").stale_if_error is None


def test_rfc9111_5_2_1_repeated_request_directives_first_wins() -> None:
    directives = req(b"max-age=10, max-age=20", b"max-stale=5, max-stale, min-fresh=1, min-fresh=2")
    assert directives == RequestDirectives(max_age=10, max_stale=5.0, min_fresh=1)
    assert req(b"max-age=x, max-age=5").max_age is None


def test_rfc9111_5_2_1_request_combination() -> None:
    directives = req(b"max-age=60, max-stale=30, min-fresh=5, only-if-cached, stale-if-error=10")
    expected = RequestDirectives(max_age=60, max_stale=30.0, min_fresh=5, only_if_cached=True, stale_if_error=10)
    assert directives == expected


def test_rfc9111_5_4_pragma_no_cache_without_cache_control() -> None:
    assert request_directives([(b"Pragma", b"no-cache")]) == RequestDirectives(no_cache=True)
    assert request_directives([(b"pragma", b"No-Cache")]).no_cache
    assert request_directives([(b"Pragma", b"foo, no-cache")]).no_cache
    shared = request_directives([(b"Pragma", b"no-cache")])
    assert request_directives([(b"PRAGMA", b"no-cache")]) is shared


def test_rfc9111_5_4_pragma_is_ignored_when_cache_control_is_present() -> None:
    assert request_directives([(b"Pragma", b"no-cache"), (b"Cache-Control", b"max-age=5")]) == RequestDirectives(
        max_age=5
    )
    assert request_directives([(b"Cache-Control", b"foo"), (b"Pragma", b"no-cache")]) is NO_REQUEST_DIRECTIVES


def test_rfc9111_5_4_other_pragmas_mean_nothing() -> None:
    assert request_directives([(b"Pragma", b"x-foo")]) is NO_REQUEST_DIRECTIVES
    assert request_directives([(b"Pragma", b"")]) is NO_REQUEST_DIRECTIVES


def test_results_are_shared_and_stay_right_past_the_memo_limit() -> None:
    assert req(b"max-age=0") is req(b"max-age=0")
    assert cc(b"public, max-age=3600") is cc(b"public, max-age=3600")
    for _ in range(2):
        for seconds in range(1500):
            value = b"max-age=%d" % seconds
            assert req(value).max_age == seconds
            assert cc(value, b"public").max_age == seconds
            directives, used = response_directives([(b"CDN-Cache-Control", value)], TARGETS)
            assert (directives.max_age, directives.targeted, used) == (seconds, True, b"cdn-cache-control")
    long_value = b"max-age=5," + b" " * 1000 + b"no-store"
    assert req(long_value) == RequestDirectives(max_age=5, no_store=True)
    assert cc(long_value) == ResponseDirectives(max_age=5, no_store=True)
    assert cc(long_value) == ResponseDirectives(max_age=5, no_store=True)
