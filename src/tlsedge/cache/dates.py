"""HTTP dates (RFC 9110 section 5.6.7) as POSIX seconds, without regexes or locale-dependent strftime.

Date, Expires, Last-Modified and If-Modified-Since are parsed for every origin response and many requests, and Date is
formatted for every response: parsing splits on whitespace and looks names up in small tables; formatting keeps the
bytes of the last second it produced.
"""

from __future__ import annotations

import math
import time

_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")  # time.struct_time.tm_wday order
_MONTH_NAMES = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_IMF_DAYS = frozenset(name + b"," for name in _DAY_NAMES)
_RFC850_DAYS = frozenset(
    {b"Monday,", b"Tuesday,", b"Wednesday,", b"Thursday,", b"Friday,", b"Saturday,", b"Sunday,"}
)
_ASCTIME_DAYS = frozenset(_DAY_NAMES)
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# "00".."99" (and "0".."9" for asctime's day) -> int: one lookup both validates and converts a field.
_NUMBERS = {b"%02d" % number: number for number in range(100)} | {b"%d" % number: number for number in range(10)}

_last_formatted: tuple[int, bytes] = (-1, b"")  # (second, IMF-fixdate bytes): one tuple so readers never see a mix

# The same Last-Modified, Expires and If-Modified-Since values come back on every request for an object: results are
# remembered by value (only short ones: a date is at most 33 bytes; not RFC 850 ones, the only ones with a "-", whose
# two-digit year depends on the current year), and the memo is emptied when full.
_MEMO_LIMIT = 1024
_MEMO_VALUE_MAX = 40
_parsed: dict[bytes, float | None] = {}


def parse_http_date(value: bytes) -> float | None:
    """POSIX seconds (UTC) of an HTTP-date, or None when the value is not one.

    The three forms of RFC 9110 section 5.6.7 have different numbers of whitespace-separated parts (6 for IMF-fixdate,
    4 for RFC 850, 5 for asctime), so one ``split()`` both strips surrounding whitespace and picks the form. Names
    (day, month, "GMT") are case-sensitive as the grammar says; the day name is checked for spelling but not against
    the date, as most recipients do. Impossible dates (31 Apr, 29 Feb 2023, hour 24) are rejected: a cache must treat
    an invalid Expires as "already expired", not as some nearby instant.
    """
    if value in _parsed:
        return _parsed[value]
    parsed = _parse(value)
    if len(value) <= _MEMO_VALUE_MAX and b"-" not in value:
        if len(_parsed) >= _MEMO_LIMIT:
            _parsed.clear()
        _parsed[value] = parsed
    return parsed


def _parse(value: bytes) -> float | None:
    parts = value.split()
    count = len(parts)
    if count == 6:
        day_name, day, month, year, clock, zone = parts
        if day_name not in _IMF_DAYS or zone != b"GMT" or len(day) != 2 or len(year) != 4 or not year.isdigit():
            return None
        return _timestamp(int(year), month, day, clock)
    if count == 4:
        return _parse_rfc850(parts)
    if count == 5:
        day_name, month, day, clock, year = parts
        if day_name not in _ASCTIME_DAYS or len(day) > 2 or len(year) != 4 or not year.isdigit():
            return None
        return _timestamp(int(year), month, day, clock)
    return None


def format_http_date(ts: float) -> bytes:
    """IMF-fixdate of ``ts`` (``b"Sun, 06 Nov 1994 08:49:37 GMT"``), reusing the bytes of the last second formatted.

    Every response carries a Date, and a busy worker formats the same second thousands of times.
    """
    global _last_formatted
    second = math.floor(ts)
    last = _last_formatted
    if last[0] == second:
        return last[1]
    t = time.gmtime(second)
    formatted = b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )
    _last_formatted = (second, formatted)
    return formatted


def _parse_rfc850(parts: list[bytes]) -> float | None:
    """``Sunday, 06-Nov-94 08:49:37 GMT``; a four-digit year is tolerated (some servers send one).

    RFC 9110 section 5.6.7: a two-digit year that would put the date more than 50 years in the future means the most
    recent past year with those last two digits. The comparison is by calendar year.
    """
    day_name, date, clock, zone = parts
    if day_name not in _RFC850_DAYS or zone != b"GMT":
        return None
    pieces = date.split(b"-")
    if len(pieces) != 3:
        return None
    day, month, year = pieces
    if len(day) != 2 or len(year) not in (2, 4) or not year.isdigit():
        return None
    number = int(year)
    if len(year) == 2:
        this_year = time.gmtime().tm_year
        number += this_year - this_year % 100
        if number > this_year + 50:
            number -= 100
    return _timestamp(number, month, day, clock)


def _timestamp(year: int, month_name: bytes, day: bytes, clock: bytes) -> float | None:
    """Seconds since the epoch of a validated calendar date and ``HH:MM:SS`` (second 60 allowed, for leap seconds)."""
    month = _MONTHS.get(month_name)
    if month is None or len(clock) != 8 or clock[2] != 0x3A or clock[5] != 0x3A:
        return None
    d = _NUMBERS.get(day)
    h = _NUMBERS.get(clock[0:2])
    m = _NUMBERS.get(clock[3:5])
    s = _NUMBERS.get(clock[6:8])
    if d is None or h is None or m is None or s is None or h > 23 or m > 59 or s > 60 or d == 0:
        return None
    if d > _DAYS_IN_MONTH[month] and not (month == 2 and d == 29 and year % 4 == 0 and (year % 100 or year % 400 == 0)):
        return None
    return float(_days_from_civil(year, month, d) * 86400 + h * 3600 + m * 60 + s)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm: no tables, no datetime object)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468
