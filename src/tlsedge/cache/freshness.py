"""RFC 9111 as a shared cache: may a response be stored, how long is it fresh, may a stored one be served.

Sans-IO: plain functions over header lists and numbers. The cache layer calls ``storable`` and ``response_facts`` once
per origin response and keeps the resulting numbers in the CacheEntry; ``verdict`` runs on every hit and, for a request
without cache directives, is two comparisons.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tlsedge.cache.dates import parse_http_date
from tlsedge.cache.directives import NO_REQUEST_DIRECTIVES, RequestDirectives, ResponseDirectives, parse_delta_seconds
from tlsedge.cache.entry import CacheEntry

# RFC 9110 section 15.1 (heuristically cacheable), plus 451 which RFC 7725 section 3 declares cacheable by default.
CACHEABLE_BY_DEFAULT: frozenset[int] = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 451, 501})

# Final statuses whose caching requirements this cache meets by treating them generically: the RFC 9110 ones and 451.
# must-understand (RFC 9111 section 5.2.2.3) lets a response with any other status be stored only by caches that know
# it. 206 and 304 are understood but never stored as such (see storable).
UNDERSTOOD: frozenset[int] = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 307, 308}
    | {400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 451}
    | {500, 501, 502, 503, 504, 505}
)

# RFC 6585 sections 3, 4, 5 and 6: "MUST NOT be stored by a cache", whatever the response says.
_NEVER_STORED = frozenset({428, 429, 431, 511})


class Verdict(enum.IntEnum):
    """What to do with a stored response for one request."""

    FRESH = 0  # serve it
    STALE_ALLOWED = 1  # stale, but the request's max-stale allows it: serve (with no refresh)
    STALE_REFRESH = 2  # stale within stale-while-revalidate: serve it and refresh in the background
    VALIDATE = 3  # must be validated with the origin before use (conditional request)


@dataclass(frozen=True, slots=True)
class Facts:
    """The numbers a CacheEntry keeps so that a hit needs no header parsing."""

    lifetime: float
    initial_age: float
    stale_while_revalidate: float
    stale_if_error: float
    no_cache: bool
    must_revalidate: bool  # must-revalidate, proxy-revalidate, or s-maxage (RFC 9111 section 5.2.2.10)


def storable(
    method: bytes,
    status: int,
    directives: ResponseDirectives,
    headers: list[tuple[bytes, bytes]],
    *,
    request_has_authorization: bool,
    request_no_store: bool,
) -> str | None:
    """None when a shared cache may store the response (RFC 9111 section 3), else a short reason for Cache-Status.

    Reasons: ``method``, ``status``, ``partial``, ``must-understand``, ``no-store``, ``private``, ``authorization``,
    ``no-freshness``, ``vary-star``.

    - Only GET responses are stored. RFC 9111 allows storing HEAD responses, but one has no content, so it could never
      answer the GET requests that make up the traffic; it would only take a slot (and, as a stored response without
      a body, risk being served for a GET). HEAD requests are answered from stored GET responses instead.
    - The status must be final; 304 is never stored as a response of its own (it updates a stored one, section 4.3.4)
      and 206 is not stored (``partial``: this cache keeps complete responses only). RFC 6585 forbids storing 428,
      429, 431 and 511.
    - must-understand with a status this cache does not understand: not stored; with one it understands, the
      response's no-store is ignored (section 5.2.2.3). The request's no-store always applies (section 5.2.1.5).
    - Unqualified private: not stored by a shared cache (qualified private is stored, the layer strips the fields).
    - A request with Authorization: only when public, s-maxage or must-revalidate allows it (section 3.5).
    - Some freshness information is needed: Expires (unless a targeted field made Cache-Control and Expires moot,
      RFC 9213 section 2.1), max-age, s-maxage, public, or a status cacheable by default (heuristics).
    - ``Vary: *`` never matches a later request (section 4.1), so storing it would only waste space.
    """
    if method != b"GET":
        return "method"
    if status < 200 or status == 304 or status > 999 or status in _NEVER_STORED:
        return "status"
    if status == 206:
        return "partial"
    if request_no_store:
        return "no-store"
    if directives.must_understand:
        if status not in UNDERSTOOD:
            return "must-understand"
    elif directives.no_store:
        return "no-store"
    if directives.private:
        return "private"
    if request_has_authorization and not (
        directives.public or directives.s_maxage is not None or directives.must_revalidate
    ):
        return "authorization"
    if not (
        directives.public
        or directives.max_age is not None
        or directives.s_maxage is not None
        or status in CACHEABLE_BY_DEFAULT
        or (not directives.targeted and _has_field(headers, b"expires"))
    ):
        return "no-freshness"
    if _vary_star(headers):
        return "vary-star"
    return None


def freshness_lifetime(
    directives: ResponseDirectives,
    headers: list[tuple[bytes, bytes]],
    status: int,
    response_time: float,
    *,
    heuristic_max: float,
) -> float:
    """Seconds the response is fresh for (RFC 9111 section 4.2.1): s-maxage, else max-age, else Expires - Date.

    Expires: invalid (including ``0``) or present on several lines with different values means already expired (0);
    without a valid Date the time the response arrived stands in for it. Expires is ignored when the directives come
    from a targeted field (RFC 9213 section 2.1).
    Heuristic (section 4.2.2), only without any of those, only for statuses cacheable by default or with ``public``:
    10 % of the time between Last-Modified and Date (or arrival), capped at ``heuristic_max``; a Last-Modified later
    than Date is invalid (RFC 9110 section 8.8.2.1) and gives no heuristic. Otherwise 0.
    """
    if directives.s_maxage is not None:
        return float(directives.s_maxage)
    if directives.max_age is not None:
        return float(directives.max_age)
    date: float | None = None
    expires: list[bytes] = []
    last_modified: bytes | None = None
    for name, value in headers:
        size = len(name)
        if size == 4:
            if date is None and name.lower() == b"date":
                date = parse_http_date(value)
        elif size == 7:
            if not directives.targeted and name.lower() == b"expires":
                expires.append(value)
        elif size == 13 and last_modified is None and name.lower() == b"last-modified":
            last_modified = value
    reference = response_time if date is None else date
    if expires:
        return _expires_lifetime(expires, reference)
    if last_modified is None or not (directives.public or status in CACHEABLE_BY_DEFAULT):
        return 0.0
    modified = parse_http_date(last_modified)
    if modified is None or modified > reference:
        return 0.0
    return min((reference - modified) * 0.1, heuristic_max)


def corrected_initial_age(headers: list[tuple[bytes, bytes]], request_time: float, response_time: float) -> float:
    """The age the response had when it arrived (RFC 9111 section 4.2.3).

    apparent_age = max(0, response_time - date_value); corrected_age_value = age_value + (response_time -
    request_time); the result is the larger. Age: the first valid non-negative integer among its lines (or members
    of a combined line), saturated at 2**31; none valid means 0. No valid Date: apparent_age is 0.
    """
    date: float | None = None
    age: int | None = None
    for name, value in headers:
        if len(name) == 3:
            if age is None and name.lower() == b"age":
                age = _first_delta(value)
        elif len(name) == 4 and date is None and name.lower() == b"date":
            date = parse_http_date(value)
    apparent_age = 0.0 if date is None else max(0.0, response_time - date)
    corrected_age_value = (age or 0) + (response_time - request_time)
    return max(apparent_age, corrected_age_value)


def response_facts(
    directives: ResponseDirectives,
    headers: list[tuple[bytes, bytes]],
    status: int,
    request_time: float,
    response_time: float,
    *,
    heuristic_max: float,
    ttl_override: float | None = None,
) -> Facts:
    """Everything about a response's freshness the cache entry keeps, computed once when it is stored or revalidated.

    ``ttl_override`` (an operator rule "cache this path for N seconds") replaces the lifetime only: no-cache and the
    revalidation directives still hold; a rule meant to overrule them should adjust the directives it passes.
    """
    if ttl_override is None:
        lifetime = freshness_lifetime(directives, headers, status, response_time, heuristic_max=heuristic_max)
    else:
        lifetime = float(ttl_override)
    return Facts(
        lifetime=lifetime,
        initial_age=corrected_initial_age(headers, request_time, response_time),
        stale_while_revalidate=float(directives.stale_while_revalidate or 0),
        stale_if_error=float(directives.stale_if_error or 0),
        no_cache=directives.no_cache,
        must_revalidate=directives.must_revalidate or directives.proxy_revalidate or directives.s_maxage is not None,
    )


def verdict(entry: CacheEntry, request: RequestDirectives, now: float) -> Verdict:
    """How a stored response may serve this request (RFC 9111 sections 4.2, 4.2.4, 5.2.1; RFC 5861 section 3).

    In order: no-cache (request or response) -> VALIDATE; request max-age exceeded by the age, or min-fresh not met
    -> VALIDATE; fresh -> FRESH; stale with must-revalidate (or proxy-revalidate, s-maxage) -> VALIDATE, never stale;
    staleness within the request's max-stale -> STALE_ALLOWED; within stale-while-revalidate -> STALE_REFRESH; else
    VALIDATE. Fresh means lifetime > age (section 4.2); the windows include their upper bound ("no more than").
    only-if-cached is the layer's: it answers 504 instead of contacting the origin for anything but FRESH or STALE_*.
    """
    age = entry.age(now)
    if request is NO_REQUEST_DIRECTIVES:
        if entry.no_cache:
            return Verdict.VALIDATE
        if age < entry.lifetime:
            return Verdict.FRESH
    else:
        if request.no_cache or entry.no_cache:
            return Verdict.VALIDATE
        if request.max_age is not None and age > request.max_age:
            return Verdict.VALIDATE
        remaining = entry.lifetime - age
        if request.min_fresh is not None and remaining < request.min_fresh:
            return Verdict.VALIDATE
        if remaining > 0:
            return Verdict.FRESH
        if request.max_stale is not None and not entry.must_revalidate and -remaining <= request.max_stale:
            return Verdict.STALE_ALLOWED
    if entry.must_revalidate:
        return Verdict.VALIDATE
    window = entry.stale_while_revalidate
    if window > 0 and age - entry.lifetime <= window:
        return Verdict.STALE_REFRESH
    return Verdict.VALIDATE


def usable_on_error(entry: CacheEntry, request: RequestDirectives, now: float, *, always_online_max: float) -> bool:
    """May the stored response be served because the origin failed (unreachable, timeout, 5xx)?

    - A fresh response: yes, unless it carries no-cache, which forbids any use without a successful validation
      (RFC 9111 section 5.2.2.4, and section 4.2.4 names it among the directives that forbid stale responses).
    - A stale one: not with must-revalidate, proxy-revalidate or s-maxage (sections 5.2.2.2, 5.2.2.8, 5.2.2.10: "even
      if disconnected", the error must be passed on). These win even over the site's "always online" option: that
      option fills in where the origin said nothing, it does not overrule what the origin said explicitly.
    - Otherwise yes within the largest window granted: stale-if-error from the response or the request (RFC 5861
      section 4), or ``always_online_max`` seconds of staleness (0: off). Windows include their upper bound.
    """
    if entry.no_cache:
        return False
    staleness = entry.age(now) - entry.lifetime
    if staleness < 0:
        return True
    if entry.must_revalidate:
        return False
    window = max(entry.stale_if_error, always_online_max)
    if request.stale_if_error is not None:
        window = max(window, request.stale_if_error)
    return window > 0 and staleness <= window


def _expires_lifetime(values: list[bytes], date: float) -> float:
    """Expires - Date, or 0 when an Expires line is invalid or the lines disagree (RFC 9111 sections 4.2.1, 5.3)."""
    expires = parse_http_date(values[0])
    if expires is None:
        return 0.0
    for value in values[1:]:
        if parse_http_date(value) != expires:
            return 0.0
    return max(0.0, expires - date)


def _first_delta(value: bytes) -> int | None:
    """The first valid delta-seconds among the comma-separated members of an Age line."""
    for member in value.split(b","):
        seconds = parse_delta_seconds(member.strip())
        if seconds is not None:
            return seconds
    return None


def _has_field(headers: list[tuple[bytes, bytes]], lower_name: bytes) -> bool:
    size = len(lower_name)
    return any(len(name) == size and name.lower() == lower_name for name, _ in headers)


def _vary_star(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a Vary line lists ``*`` (RFC 9110 section 12.5.5)."""
    for name, value in headers:
        if len(name) == 4 and b"*" in value and name.lower() == b"vary":
            for member in value.split(b","):
                if member.strip() == b"*":
                    return True
    return False
