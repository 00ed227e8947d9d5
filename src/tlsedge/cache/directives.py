"""Cache-Control style fields parsed into the facts the cache policy needs (RFC 9111 section 5.2, RFC 9213).

Parsing is lenient the way RFC 9111 asks of recipients: names compare case-insensitively, arguments may be tokens or
quoted-strings (commas inside quotes do not split), members that do not parse are skipped, and several field lines
form one list. Where a malformed or repeated directive leaves a choice, the choice is the one that serves less from
the cache: a response with a broken or contradictory max-age is stale, a no-cache or private whose field list cannot
be read applies to the whole response, and a malformed request directive asks for nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DELTA_SECONDS_MAX = 2**31  # RFC 9111 section 1.2.2: what a delta-seconds too large to represent stands for

_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BACKSLASH = 0x5C

Members = list[tuple[bytes, bytes | None]]  # (lower-cased name, raw argument as received or None)


@dataclass(frozen=True, slots=True)
class ResponseDirectives:
    """The response directives a shared cache acts on (RFC 9111 section 5.2.2, RFC 5861, RFC 8246)."""

    no_store: bool = False
    no_cache: bool = False  # unqualified no-cache
    no_cache_fields: tuple[bytes, ...] = ()  # no-cache="a, b": lower-cased names the layer strips from stored copies
    private: bool = False  # unqualified private
    private_fields: tuple[bytes, ...] = ()  # private="a": a shared cache may store but must strip those fields
    public: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    stale_while_revalidate: int | None = None  # RFC 5861
    stale_if_error: int | None = None  # RFC 5861
    immutable: bool = False
    # The directives came from a targeted field (RFC 9213 section 2.1): Expires must then be ignored too, which the
    # freshness functions can only know from here.
    targeted: bool = False


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """The request directives a cache acts on (RFC 9111 section 5.2.1, RFC 5861 section 4)."""

    max_age: int | None = None
    max_stale: float | None = None  # None: absent; math.inf: "max-stale" without a value; else seconds
    min_fresh: int | None = None
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    stale_if_error: int | None = None


NO_RESPONSE_DIRECTIVES = ResponseDirectives()
NO_REQUEST_DIRECTIVES = RequestDirectives()
_PRAGMA_NO_CACHE = RequestDirectives(no_cache=True)

# Field values repeat endlessly ("max-age=0", "public, max-age=3600") and a frozen dataclass costs microseconds to
# build, so results are remembered by the exact field lines. The results are immutable, hence shareable; the memo is
# emptied when full, so values that never repeat cost one parse each and no memory.
_MEMO_LIMIT = 512
_MEMO_VALUE_MAX = 256  # longer field values are parsed every time rather than kept
_request_memo: dict[tuple[bytes, ...], RequestDirectives] = {}
_response_memo: dict[tuple[bool, tuple[bytes, ...]], ResponseDirectives | None] = {}


def response_directives(
    headers: list[tuple[bytes, bytes]], targeted: tuple[bytes, ...] = ()
) -> tuple[ResponseDirectives, bytes | None]:
    """The directives that govern this cache, and the targeted field they came from (None: Cache-Control or none).

    RFC 9213 section 2.1: the first field of the target list (``targeted``, lower-cased names in precedence order)
    that is present with a valid, non-empty value is used, and then BOTH Cache-Control and Expires are ignored (the
    returned directives have ``targeted=True`` so the freshness functions skip Expires). A targeted field that is
    empty or has no parsable member is ignored as if absent, and the next one, then Cache-Control, is tried. The
    targeted field is read with the Cache-Control parser (accepting ``max-age=60, private``) and, as a Structured
    Fields dictionary allows, parameters after ``;`` on a member are dropped.
    """
    cache_control: list[bytes] | None = None
    found: dict[bytes, list[bytes]] | None = None
    for name, value in headers:
        if len(name) == 13 and name.lower() == b"cache-control":
            if cache_control is None:
                cache_control = [value]
            else:
                cache_control.append(value)
        elif targeted:
            lower = name.lower()
            if lower in targeted:
                if found is None:
                    found = {}
                found.setdefault(lower, []).append(value)
    if found is not None:
        for field in targeted:
            values = found.get(field)
            if values is not None:
                directives = _remembered_response(values, targeted=True)
                if directives is not None:
                    return directives, field
    if cache_control is None:
        return NO_RESPONSE_DIRECTIVES, None
    return _remembered_response(cache_control, targeted=False) or NO_RESPONSE_DIRECTIVES, None  # never None here


def request_directives(headers: list[tuple[bytes, bytes]]) -> RequestDirectives:
    """The request's cache directives; the shared NO_REQUEST_DIRECTIVES when it has none this cache acts on.

    ``Pragma: no-cache`` counts only when the request has no Cache-Control field (RFC 9111 section 5.4). A directive
    whose argument is malformed is ignored: for max-stale and stale-if-error that means no stale response is accepted,
    for max-age and min-fresh the client gets what it would get without them. Repeated directives: the first wins.
    """
    cache_control: list[bytes] | None = None
    pragma: list[bytes] | None = None
    for name, value in headers:
        size = len(name)
        if size == 13 and name.lower() == b"cache-control":
            if cache_control is None:
                cache_control = [value]
            else:
                cache_control.append(value)
        elif size == 6 and name.lower() == b"pragma":
            if pragma is None:
                pragma = [value]
            else:
                pragma.append(value)
    if cache_control is None:
        if pragma is not None and any(name == b"no-cache" for name, _ in _parse(pragma, parameters=False)):
            return _PRAGMA_NO_CACHE
        return NO_REQUEST_DIRECTIVES
    key = tuple(cache_control)
    directives = _request_memo.get(key)
    if directives is None:
        directives = _request(_parse(cache_control, parameters=False))
        if _memorable(cache_control):
            if len(_request_memo) >= _MEMO_LIMIT:
                _request_memo.clear()
            _request_memo[key] = directives
    return directives


def parse_delta_seconds(value: bytes) -> int | None:
    """``1*DIGIT`` as an int saturated at 2**31 (RFC 9111 section 1.2.2); None for anything else (sign, space, "")."""
    if not value.isdigit():
        return None
    if len(value) > 10:  # int() of thousands of digits is slow (and refused past 4300): count significant ones
        value = value.lstrip(b"0")
        if len(value) > 10:
            return DELTA_SECONDS_MAX
    return min(int(value or b"0"), DELTA_SECONDS_MAX)


def _remembered_response(values: list[bytes], *, targeted: bool) -> ResponseDirectives | None:
    """The directives of these field lines; None for a targeted field with no parsable member (it is then ignored)."""
    key = (targeted, tuple(values))
    try:
        return _response_memo[key]
    except KeyError:
        pass
    members = _parse(values, parameters=targeted)
    directives = _response(members, targeted=targeted) if members or not targeted else None
    if _memorable(values):
        if len(_response_memo) >= _MEMO_LIMIT:
            _response_memo.clear()
        _response_memo[key] = directives
    return directives


def _memorable(values: list[bytes]) -> bool:
    return sum(len(value) for value in values) <= _MEMO_VALUE_MAX


def _response(members: Members, *, targeted: bool) -> ResponseDirectives:
    """Fold parsed members into ResponseDirectives.

    Repeats: boolean directives are idempotent; for valued ones the first occurrence decides, except that a max-age
    or s-maxage repeated with a different value makes the response stale (0), the conservative reading RFC 9111
    section 4.2.1 allows, and that no-cache / private are the strictest union of their occurrences (any unqualified
    one applies to the whole response; field lists add up).
    """
    no_store = no_cache = private = public = must_revalidate = proxy_revalidate = must_understand = False
    immutable = seen_swr = seen_sie = recognized = False
    no_cache_fields: tuple[bytes, ...] = ()
    private_fields: tuple[bytes, ...] = ()
    max_age: int | None = None
    s_maxage: int | None = None
    swr: int | None = None
    sie: int | None = None
    for name, raw in members:
        if name == b"max-age":
            max_age = _freshness_value(max_age, raw)
        elif name == b"s-maxage":
            s_maxage = _freshness_value(s_maxage, raw)
        elif name == b"public":
            public = True
        elif name == b"private":
            fields = _field_names(raw)
            if fields:
                private_fields = _union(private_fields, fields)
            else:
                private = True
        elif name == b"no-cache":
            fields = _field_names(raw)
            if fields:
                no_cache_fields = _union(no_cache_fields, fields)
            else:
                no_cache = True
        elif name == b"no-store":
            no_store = True
        elif name == b"must-revalidate":
            must_revalidate = True
        elif name == b"proxy-revalidate":
            proxy_revalidate = True
        elif name == b"stale-while-revalidate":
            if not seen_swr:
                seen_swr, swr = True, _argument_seconds(raw)
        elif name == b"stale-if-error":
            if not seen_sie:
                seen_sie, sie = True, _argument_seconds(raw)
        elif name == b"immutable":
            immutable = True
        elif name == b"must-understand":
            must_understand = True
        else:
            continue
        recognized = True
    if not (recognized or targeted):
        return NO_RESPONSE_DIRECTIVES
    return ResponseDirectives(
        no_store=no_store,
        no_cache=no_cache,
        no_cache_fields=no_cache_fields,
        private=private,
        private_fields=private_fields,
        public=public,
        max_age=max_age,
        s_maxage=s_maxage,
        must_revalidate=must_revalidate,
        proxy_revalidate=proxy_revalidate,
        must_understand=must_understand,
        stale_while_revalidate=swr,
        stale_if_error=sie,
        immutable=immutable,
        targeted=targeted,
    )


def _request(members: Members) -> RequestDirectives:
    """Fold parsed request members; the shared NO_REQUEST_DIRECTIVES when none matters (no allocation)."""
    max_age: int | None = None
    max_stale: float | None = None
    min_fresh: int | None = None
    sie: int | None = None
    no_cache = no_store = only_if_cached = False
    seen: set[bytes] = set()
    for name, raw in members:
        if name == b"no-cache":
            no_cache = True
        elif name == b"no-store":
            no_store = True
        elif name == b"only-if-cached":
            only_if_cached = True
        elif name in seen:
            continue
        elif name == b"max-age":
            seen.add(name)
            max_age = _argument_seconds(raw)
        elif name == b"max-stale":
            seen.add(name)
            if raw is None:
                max_stale = math.inf
            else:
                seconds = _argument_seconds(raw)
                max_stale = None if seconds is None else float(seconds)
        elif name == b"min-fresh":
            seen.add(name)
            min_fresh = _argument_seconds(raw)
        elif name == b"stale-if-error":
            seen.add(name)
            sie = _argument_seconds(raw)
    valued = max_age is not None or max_stale is not None or min_fresh is not None or sie is not None
    if not (valued or no_cache or no_store or only_if_cached):
        return NO_REQUEST_DIRECTIVES
    return RequestDirectives(
        max_age=max_age,
        max_stale=max_stale,
        min_fresh=min_fresh,
        no_cache=no_cache,
        no_store=no_store,
        only_if_cached=only_if_cached,
        stale_if_error=sie,
    )


def _freshness_value(previous: int | None, raw: bytes | None) -> int:
    """max-age / s-maxage: invalid means stale (RFC 9111 section 4.2.1), a conflicting repeat means stale too."""
    seconds = _argument_seconds(raw)
    if seconds is None:
        seconds = 0
    if previous is None or previous == seconds:
        return seconds
    return 0


def _argument_seconds(raw: bytes | None) -> int | None:
    """A delta-seconds argument in token or quoted-string form (RFC 9111 section 5.2 asks recipients to take both)."""
    if raw is None:
        return None
    if raw[:1] == b'"':
        raw = _unquote(raw)
        if raw is None:
            return None
    return parse_delta_seconds(raw)


def _field_names(raw: bytes | None) -> tuple[bytes, ...]:
    """Lower-cased field names of a no-cache / private argument; () when absent, empty or unreadable.

    RFC 9111 sections 5.2.2.4 and 5.2.2.7 give the qualified forms their meaning only with "one or more field names",
    so an argument that names none leaves the unqualified directive, the stricter one.
    """
    if raw is None:
        return ()
    text = _unquote(raw)
    if text is None:
        return ()
    names: list[bytes] = []
    for part in text.split(b","):
        name = part.strip().lower()
        if _is_token(name) and name not in names:
            names.append(name)
    return tuple(names)


def _union(existing: tuple[bytes, ...], more: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return existing + tuple(name for name in more if name not in existing)


def _parse(values: list[bytes], *, parameters: bool) -> Members:
    """Split field lines into (lower-cased name, raw argument) members; members without a token name are skipped.

    ``parameters``: drop ``;param`` suffixes (Structured Fields dictionaries carry them, RFC 9213 says ignore them).
    """
    members: Members = []
    for value in values:
        for member in _split_members(value):
            if parameters and b";" in member:
                member = _drop_parameters(member)
            name, equals, argument = member.partition(b"=")
            name = name.strip().lower()
            if _is_token(name):
                members.append((name, argument.strip() if equals else None))
    return members


def _split_members(value: bytes) -> list[bytes]:
    """Split on commas that are not inside a quoted-string (``no-cache="Set-Cookie, X"`` is one member)."""
    if b'"' not in value:
        return value.split(b",")
    members: list[bytes] = []
    start = position = 0
    while True:
        comma = value.find(b",", position)
        if comma == -1:
            break
        quote = value.find(b'"', position)
        if quote == -1 or comma < quote:
            members.append(value[start:comma])
            start = position = comma + 1
        else:
            position = _end_of_quoted(value, quote)
            if position == -1:
                break
    members.append(value[start:])
    return members


def _end_of_quoted(value: bytes, quote: int) -> int:
    """Index just past the quoted-string that opens at ``quote``; -1 when it is never closed.

    A quote closes the string when an even number of backslashes precedes it (each pair is an escaped backslash).
    """
    position = quote + 1
    while True:
        end = value.find(b'"', position)
        if end == -1:
            return -1
        before = end - 1
        while before > quote and value[before] == _BACKSLASH:
            before -= 1
        if (end - 1 - before) % 2 == 0:
            return end + 1
        position = end + 1


def _unquote(raw: bytes) -> bytes | None:
    """The content of a token or of one well-formed quoted-string (escapes resolved); None otherwise."""
    if raw[:1] != b'"':
        return raw if _is_token(raw) else None
    if _end_of_quoted(raw, 0) != len(raw):
        return None
    inner = raw[1:-1]
    if b"\\" not in inner:
        return inner
    out = bytearray()
    index = 0
    while index < len(inner):
        if inner[index] == _BACKSLASH:
            index += 1
        out.append(inner[index])
        index += 1
    return bytes(out)


def _drop_parameters(member: bytes) -> bytes:
    """``max-age=60;foo=1`` -> ``max-age=60``; a ``;`` inside a quoted-string argument is kept."""
    semicolon = member.find(b";")
    quote = member.find(b'"')
    if quote == -1 or semicolon < quote:
        return member[:semicolon]
    end = _end_of_quoted(member, quote)
    if end == -1:
        return member
    semicolon = member.find(b";", end)
    return member if semicolon == -1 else member[:semicolon]


def _is_token(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _TCHARS)
