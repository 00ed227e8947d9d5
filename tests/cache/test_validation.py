"""Validation rules (RFC 9111 sections 3.2, 4.3; RFC 9110 sections 13.1, 13.2, 15.4.5) as pure functions."""

from __future__ import annotations

from email.utils import formatdate

from tlsedge.cache.entry import CacheEntry
from tlsedge.cache.validation import (
    NOT_MODIFIED_FIELDS,
    STRIPPED_ON_FORWARD,
    conditional_lines,
    merge_not_modified,
    not_modified,
    not_modified_head_fields,
    validators,
)

T0 = 1_700_000_000.0


def http_date(ts: float) -> bytes:
    return formatdate(ts, usegmt=True).encode()


def entry(
    *,
    etag: bytes | None = None,
    last_modified: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 200,
) -> CacheEntry:
    return CacheEntry(
        key=b"https://example.com/a",
        variant=b"",
        site="example",
        url=b"https://example.com/a",
        status=status,
        headers=headers if headers is not None else [],
        vary=(),
        tags=(),
        request_time=T0,
        response_time=T0,
        initial_age=0.0,
        lifetime=60.0,
        stale_while_revalidate=0.0,
        stale_if_error=0.0,
        no_cache=False,
        must_revalidate=False,
        etag=etag,
        last_modified=last_modified,
        body_size=0,
    )


# --- RFC 9111 section 4.3.1: the edge's own revalidation ----------------------------------------------------------


def test_rfc9111_4_3_1_both_validators_sent() -> None:
    lm = http_date(T0)
    lines = conditional_lines(entry(etag=b'"v1"', last_modified=lm))
    assert lines == b'If-None-Match: "v1"\r\nIf-Modified-Since: ' + lm + b"\r\n"


def test_rfc9111_4_3_1_etag_only() -> None:
    assert conditional_lines(entry(etag=b'W/"v1"')) == b'If-None-Match: W/"v1"\r\n'


def test_rfc9111_4_3_1_last_modified_only() -> None:
    lm = http_date(T0)
    assert conditional_lines(entry(last_modified=lm)) == b"If-Modified-Since: " + lm + b"\r\n"


def test_rfc9111_4_3_1_no_validator_means_plain_request() -> None:
    assert conditional_lines(entry()) == b""


def test_rfc9111_4_3_2_client_conditionals_and_ranges_are_not_forwarded_on_fills() -> None:
    assert {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range"} == (
        STRIPPED_ON_FORWARD
    )


def test_rfc9110_8_8_validators_first_line_trimmed_empty_is_none() -> None:
    headers = [(b"ETag", b' "a" '), (b"etag", b'"b"'), (b"Last-Modified", b""), (b"Content-Type", b"text/plain")]
    assert validators(headers) == (b'"a"', None)
    assert validators([(b"last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT")]) == (
        None,
        b"Sun, 06 Nov 1994 08:49:37 GMT",
    )


# --- RFC 9111 section 3.2: updating stored fields from a 304 ------------------------------------------------------


def test_rfc9111_3_2_304_replaces_every_line_of_a_name_in_place() -> None:
    stored = [(b"Date", b"old"), (b"X-A", b"1"), (b"Cache-Control", b"max-age=1"), (b"X-A", b"2"), (b"X-B", b"b")]
    fresh = [(b"x-a", b"3"), (b"Cache-Control", b"max-age=3600"), (b"Date", b"new")]
    assert merge_not_modified(stored, fresh) == [
        (b"Date", b"new"),
        (b"x-a", b"3"),
        (b"Cache-Control", b"max-age=3600"),
        (b"X-B", b"b"),
    ]


def test_rfc9111_3_2_304_new_fields_appended_in_order() -> None:
    stored = [(b"Content-Type", b"text/plain")]
    fresh = [(b"X-New", b"1"), (b"Set-Cookie", b"a=1"), (b"X-New", b"2")]
    assert merge_not_modified(stored, fresh) == [
        (b"Content-Type", b"text/plain"),
        (b"X-New", b"1"),
        (b"X-New", b"2"),
        (b"Set-Cookie", b"a=1"),
    ]


def test_rfc9111_3_2_content_length_never_updated() -> None:
    stored = [(b"Content-Length", b"5")]
    assert merge_not_modified(stored, [(b"Content-Length", b"10")]) == [(b"Content-Length", b"5")]


def test_rfc9111_3_1_hop_by_hop_and_connection_named_fields_not_merged() -> None:
    stored = [(b"X-Private", b"stored")]
    fresh = [
        (b"Connection", b"close, X-Private , x-other"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"X-Other", b"1"),
        (b"X-Private", b"fresh"),
        (b"X-Kept", b"yes"),
    ]
    assert merge_not_modified(stored, fresh) == [(b"X-Private", b"stored"), (b"X-Kept", b"yes")]


def test_rfc9111_3_1_proxy_fields_not_merged() -> None:
    fresh = [
        (b"Proxy-Authenticate", b"Basic"),
        (b"Proxy-Authentication-Info", b"x"),
        (b"Proxy-Authorization", b"Basic Zm9v"),
    ]
    assert merge_not_modified([(b"X-A", b"1")], fresh) == [(b"X-A", b"1")]


def test_rfc9111_3_2_age_and_body_describing_fields_keep_stored_values() -> None:
    stored = [(b"Content-Encoding", b"gzip"), (b"Content-Range", b"bytes 0-1/2")]
    fresh = [(b"Age", b"30"), (b"Content-Encoding", b"br"), (b"Content-Range", b"bytes 0-0/2")]
    assert merge_not_modified(stored, fresh) == stored


def test_rfc9111_3_2_content_type_is_updated() -> None:
    """The edge stores bodies as received, so the cache-tests 304-*-update-*-Content-Type rule applies."""
    stored = [(b"Content-Type", b"text/plain")]
    merged = merge_not_modified(stored, [(b"Content-Type", b"text/plain;charset=utf-8")])
    assert merged == [(b"Content-Type", b"text/plain;charset=utf-8")]


def test_rfc9111_3_2_304_without_fields_keeps_stored_in_a_new_list() -> None:
    stored = [(b"X-A", b"1")]
    merged = merge_not_modified(stored, [(b"Connection", b"close")])
    assert merged == stored
    assert merged is not stored


# --- RFC 9110 section 13.1.2 / 13.2.2: If-None-Match from clients -------------------------------------------------


def test_rfc9110_13_1_2_if_none_match_weak_comparison() -> None:
    stored = entry(etag=b'W/"v1"')
    assert not_modified([(b"If-None-Match", b'"v1"')], b"GET", stored)
    assert not_modified([(b"if-none-match", b'W/"v1"')], b"HEAD", entry(etag=b'"v1"'))
    assert not not_modified([(b"If-None-Match", b'"v2"')], b"GET", stored)


def test_rfc9110_13_1_2_if_none_match_list_with_commas_inside_tags() -> None:
    stored = entry(etag=b'"a,b"')
    assert not_modified([(b"If-None-Match", b'"x", W/"a,b" ,"y"')], b"GET", stored)
    assert not not_modified([(b"If-None-Match", b'"a", "b"')], b"GET", stored)


def test_rfc9110_13_1_2_if_none_match_several_lines_combine() -> None:
    stored = entry(etag=b'"v3"')
    assert not_modified([(b"If-None-Match", b'"v1", "v2"'), (b"If-None-Match", b'"v3"')], b"GET", stored)


def test_rfc9110_13_1_2_star_matches_any_stored_response() -> None:
    assert not_modified([(b"If-None-Match", b" * ")], b"GET", entry())


def test_rfc9110_13_1_2_no_stored_etag_never_matches_a_tag() -> None:
    assert not not_modified([(b"If-None-Match", b'"v1"')], b"GET", entry(last_modified=http_date(T0)))


def test_rfc9110_13_1_2_unterminated_tag_matches_nothing() -> None:
    assert not not_modified([(b"If-None-Match", b'"v1')], b"GET", entry(etag=b'"v1"'))


def test_rfc9110_13_2_2_if_none_match_overrides_if_modified_since() -> None:
    stored = entry(etag=b'"v1"', last_modified=http_date(T0 - 100))
    request = [(b"If-Modified-Since", http_date(T0)), (b"If-None-Match", b'"other"')]
    assert not not_modified(request, b"GET", stored)


# --- RFC 9110 section 13.1.3 / RFC 9111 section 4.3.2: If-Modified-Since ------------------------------------------


def test_rfc9110_13_1_3_not_modified_since_equal_or_later_date() -> None:
    stored = entry(last_modified=http_date(T0))
    assert not_modified([(b"If-Modified-Since", http_date(T0))], b"GET", stored)
    assert not_modified([(b"If-Modified-Since", http_date(T0 + 10))], b"GET", stored)
    assert not not_modified([(b"If-Modified-Since", http_date(T0 - 1))], b"GET", stored)


def test_rfc9110_13_1_3_obsolete_date_forms_accepted() -> None:
    stored = entry(last_modified=b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert not_modified([(b"If-Modified-Since", b"Sunday, 06-Nov-94 08:49:37 GMT")], b"GET", stored)
    assert not_modified([(b"If-Modified-Since", b"Sun Nov  6 08:49:37 1994")], b"GET", stored)


def test_rfc9110_13_1_3_invalid_or_repeated_date_ignored() -> None:
    stored = entry(last_modified=http_date(T0))
    assert not not_modified([(b"If-Modified-Since", b"yesterday")], b"GET", stored)
    assert not not_modified([(b"If-Modified-Since", b"Sun, 31 Feb 2024 00:00:00 GMT")], b"GET", stored)
    twice = [(b"If-Modified-Since", http_date(T0)), (b"If-Modified-Since", http_date(T0))]
    assert not not_modified(twice, b"GET", stored)


def test_rfc9111_4_3_2_without_last_modified_the_date_field_is_used() -> None:
    stored = entry(headers=[(b"Date", http_date(T0 - 50))])
    assert not_modified([(b"If-Modified-Since", http_date(T0 - 50))], b"GET", stored)
    assert not not_modified([(b"If-Modified-Since", http_date(T0 - 51))], b"GET", stored)


def test_rfc9111_4_3_2_without_date_the_arrival_time_is_used() -> None:
    stored = entry(headers=[(b"Date", b"not a date")])
    assert not_modified([(b"If-Modified-Since", http_date(T0))], b"GET", stored)
    assert not not_modified([(b"If-Modified-Since", http_date(T0 - 1))], b"GET", entry())


def test_rfc9110_13_1_3_unparsable_last_modified_is_not_a_match() -> None:
    stored = entry(last_modified=b"garbage", headers=[(b"Date", http_date(T0 - 50))])
    assert not not_modified([(b"If-Modified-Since", http_date(T0))], b"GET", stored)


def test_rfc9110_13_1_3_only_get_and_head() -> None:
    stored = entry(etag=b'"v1"', last_modified=http_date(T0))
    for method in (b"POST", b"PUT", b"get", b"OPTIONS"):
        assert not not_modified([(b"If-None-Match", b'"v1"')], method, stored)
        assert not not_modified([(b"If-Modified-Since", http_date(T0))], method, stored)


def test_rfc9110_13_2_1_preconditions_ignored_for_non_2xx_responses() -> None:
    assert not not_modified([(b"If-None-Match", b"*")], b"GET", entry(status=404))
    assert not_modified([(b"If-None-Match", b"*")], b"GET", entry(status=203))


def test_rfc9110_13_1_no_conditional_no_304() -> None:
    assert not not_modified([(b"Accept", b"*/*")], b"GET", entry(etag=b'"v1"', last_modified=http_date(T0)))


# --- RFC 9110 section 15.4.5: the 304 the cache sends -------------------------------------------------------------


def test_rfc9110_15_4_5_not_modified_fields() -> None:
    assert {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"} == NOT_MODIFIED_FIELDS
    stored = [
        (b"Date", b"d"),
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"10"),
        (b"ETag", b'"v1"'),
        (b"Last-Modified", b"lm"),
        (b"Cache-Control", b"max-age=60"),
        (b"Vary", b"Accept-Encoding"),
        (b"Expires", b"e"),
        (b"Content-Location", b"/a.html"),
        (b"Set-Cookie", b"a=1"),
    ]
    assert not_modified_head_fields(stored) == [
        (b"Date", b"d"),
        (b"ETag", b'"v1"'),
        (b"Cache-Control", b"max-age=60"),
        (b"Vary", b"Accept-Encoding"),
        (b"Expires", b"e"),
        (b"Content-Location", b"/a.html"),
    ]


def test_rfc9110_15_4_5_last_modified_sent_when_there_is_no_etag() -> None:
    stored = [(b"Last-Modified", b"lm"), (b"Content-Type", b"text/html"), (b"Date", b"d")]
    assert not_modified_head_fields(stored) == [(b"Last-Modified", b"lm"), (b"Date", b"d")]
