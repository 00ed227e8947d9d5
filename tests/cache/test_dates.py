"""HTTP dates (RFC 9110 section 5.6.7): the three accepted forms, rejection of everything else, IMF-fixdate output."""

from __future__ import annotations

import calendar
import email.utils
import time

import pytest

from tlsedge.cache.dates import format_http_date, parse_http_date

EXAMPLE = 784111777.0  # RFC 9110 section 5.6.7's example instant: Sun, 06 Nov 1994 08:49:37 GMT
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def test_rfc9110_5_6_7_the_three_forms_of_the_example_are_the_same_instant() -> None:
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == EXAMPLE
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == EXAMPLE
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == EXAMPLE


@pytest.mark.parametrize(
    "value",
    [
        b"  Sun, 06 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49:37 GMT  ",
        b"\tSun, 06 Nov 1994 08:49:37 GMT\r\n",
        b" Sunday, 06-Nov-94 08:49:37 GMT ",
        b" Sun Nov  6 08:49:37 1994 ",
        b"Sun Nov 06 08:49:37 1994",
    ],
)
def test_rfc9110_5_6_7_surrounding_whitespace_and_asctime_day_forms(value: bytes) -> None:
    assert parse_http_date(value) == EXAMPLE


def _imf(t: time.struct_time) -> bytes:
    names = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    text = f"{names[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
    return (text + f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode()


def _sample_instants() -> list[int]:
    """Instants from 1970 to 2100 covering every month, leap days, and the start and end of days."""
    instants = []
    for day in range(0, 47_500, 61):
        instants.append(day * 86400)
        instants.append(day * 86400 + 86399)
        instants.append(day * 86400 + 3600 * (day % 24) + 60 * (day % 60) + day % 60)
    for year in (1972, 2000, 2004, 2024, 2096):
        instants.append(calendar.timegm((year, 2, 29, 12, 0, 0)))
    return instants


def test_rfc9110_5_6_7_imf_fixdate_parses_like_the_calendar_module() -> None:
    for instant in _sample_instants():
        assert parse_http_date(_imf(time.gmtime(instant))) == instant


def test_rfc9110_5_6_7_asctime_parses_like_the_calendar_module() -> None:
    for instant in _sample_instants()[::3]:
        assert parse_http_date(time.asctime(time.gmtime(instant)).encode()) == instant


def test_rfc9110_5_6_7_format_matches_email_utils_and_round_trips() -> None:
    for instant in _sample_instants():
        formatted = format_http_date(instant + 0.75)
        assert formatted == email.utils.formatdate(instant, usegmt=True).encode()
        assert parse_http_date(formatted) == instant


def test_rfc9110_5_6_7_format_example_and_epoch() -> None:
    assert format_http_date(EXAMPLE) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(EXAMPLE + 0.999) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(EXAMPLE + 1) == b"Sun, 06 Nov 1994 08:49:38 GMT"
    assert format_http_date(-0.5) == b"Wed, 31 Dec 1969 23:59:59 GMT"


def test_format_reuses_the_bytes_of_the_same_second() -> None:
    first = format_http_date(1_700_000_000.1)
    assert format_http_date(1_700_000_000.9) is first
    other = format_http_date(1_700_000_001.0)
    assert other is not first
    assert other == b"Tue, 14 Nov 2023 22:13:21 GMT"
    assert format_http_date(1_700_000_000.5) == first


def test_rfc9110_5_6_7_rfc850_two_digit_year_more_than_50_years_ahead_is_in_the_past() -> None:
    this_year = time.gmtime().tm_year
    for ahead in range(0, 51):
        year = this_year + ahead
        value = f"Monday, 01-Jan-{year % 100:02d} 00:00:00 GMT".encode()
        assert time.gmtime(parse_http_date(value)).tm_year == year
    for ahead in range(51, 100):
        year = this_year + ahead - 100
        value = f"Monday, 01-Jan-{year % 100:02d} 00:00:00 GMT".encode()
        assert time.gmtime(parse_http_date(value)).tm_year == year


def test_rfc9110_5_6_7_rfc850_with_a_four_digit_year_is_tolerated() -> None:
    assert parse_http_date(b"Sunday, 06-Nov-1994 08:49:37 GMT") == EXAMPLE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Tue, 29 Feb 2000 00:00:00 GMT", calendar.timegm((2000, 2, 29, 0, 0, 0))),
        (b"Thu, 29 Feb 2024 23:59:59 GMT", calendar.timegm((2024, 2, 29, 23, 59, 59))),
        (b"Fri, 31 Dec 1999 23:59:60 GMT", calendar.timegm((2000, 1, 1, 0, 0, 0))),
        (b"Thu, 01 Jan 1970 00:00:00 GMT", 0),
        (b"Wed, 31 Dec 1969 23:59:59 GMT", -1),
        (b"Fri, 31 Dec 9999 23:59:59 GMT", calendar.timegm((9999, 12, 31, 23, 59, 59))),
        (b"Mon, 06 Nov 1994 08:49:37 GMT", EXAMPLE),  # the day name is not checked against the date
    ],
)
def test_rfc9110_5_6_7_calendar_edges(value: bytes, expected: float) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"   ",
        b"0",
        b"-1",
        b"1700000000",
        b"garbage",
        b"Sun, 06 Nov 1994 08:49:37",
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 06 Nov 1994 08:49:37 gmt",
        b"Sun, 06 Nov 1994 08:49:37 +0000",
        b"Sun, 06 nov 1994 08:49:37 GMT",
        b"Sun, 06 November 1994 08:49:37 GMT",
        b"sun, 06 Nov 1994 08:49:37 GMT",
        b"Sun 06 Nov 1994 08:49:37 GMT",
        b"Sunday, 06 Nov 1994 08:49:37 GMT",
        b"Sun, 6 Nov 1994 08:49:37 GMT",
        b"Sun, 006 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 94 08:49:37 GMT",
        b"Sun, 06 Nov 19944 08:49:37 GMT",
        b"Sun, 06 Nov 1994 8:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49 GMT",
        b"Sun, 06 Nov 1994 08-49-37 GMT",
        b"Sun, 06 Nov 1994 08:49:3a GMT",
        b"Sun, 06 Nov 1994 24:00:00 GMT",
        b"Sun, 06 Nov 1994 23:60:00 GMT",
        b"Sun, 06 Nov 1994 23:59:61 GMT",
        b"Sun, 00 Nov 1994 08:49:37 GMT",
        b"Sun, 31 Nov 1994 08:49:37 GMT",
        b"Sun, 31 Apr 2023 08:49:37 GMT",
        b"Wed, 29 Feb 2023 08:49:37 GMT",
        b"Mon, 29 Feb 2100 08:49:37 GMT",
        b"Sun, 32 Jan 1994 08:49:37 GMT",
        b"Sun, 0_6 Nov 1994 08:49:37 GMT",
        b"Sun, +6 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1_94 08:49:37 GMT",
        b"Sun, 06 Nov -994 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT".encode(),
        b"Sun,06 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49:37 GMT extra",
        b"1994-11-06T08:49:37Z",
        b"Sunday, 06-Nov-94 08:49:37 UTC",
        b"Sunday 06-Nov-94 08:49:37 GMT",
        b"Sun, 06-Nov-94 08:49:37 GMT",
        b"Sunday, 06-Nov 94 08:49:37 GMT",
        b"Sunday, 06-Nov-94-1 08:49:37 GMT",
        b"Sunday, 6-Nov-94 08:49:37 GMT",
        b"Sunday, 06-Nov-994 08:49:37 GMT",
        b"Sunday, 06-Foo-94 08:49:37 GMT",
        b"Sunday, 31-Feb-94 08:49:37 GMT",
        b"Sun Nov 6 08:49:37 94",
        b"Sun Nov 106 08:49:37 1994",
        b"Sun Nov 31 08:49:37 1994",
        b"Sun, Nov  6 08:49:37 1994",
        b"Sunday Nov  6 08:49:37 1994",
        b"Sun Nov  6 08:49:37 1994 GMT",
        b"Sun Nov  x 08:49:37 1994",
    ],
)
def test_rfc9110_5_6_7_anything_else_is_not_a_date(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_repeated_values_give_the_same_answers_past_the_memo_limit() -> None:
    instants = [1_600_000_000 + 7919 * i for i in range(2500)]
    values = [format_http_date(instant) for instant in instants]
    for _ in range(2):
        for instant, value in zip(instants, values, strict=True):
            assert parse_http_date(value) == instant
            assert parse_http_date(b" " + value) == instant
        assert parse_http_date(b"0") is None
        assert parse_http_date(b"Sun, 31 Nov 1994 08:49:37 GMT") is None
    long_value = b"Sun, 06 Nov 1994 08:49:37 GMT" + b" " * 100
    assert parse_http_date(long_value) == EXAMPLE
    assert parse_http_date(long_value) == EXAMPLE
