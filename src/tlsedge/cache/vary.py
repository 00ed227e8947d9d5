"""Vary: which request fields select among the stored variants of one URL (RFC 9111 section 4.1).

The secondary key is built from normalised field values, so that requests differing only in spelling (``gzip, br``
and ``gzip,br``, ``en-US`` and ``en-us``) share one stored response instead of filling the cache with copies.
Normalisation never merges values that could mean something different to the origin: list order is kept (with equal
q-values order is meaningful) and quoted strings are left byte for byte.
"""

from __future__ import annotations

# Fields whose values are case-insensitive tokens: content-codings, charsets, language ranges (RFC 4647 section 2)
# and media ranges (RFC 9110 section 8.3.1). Their parameter values in quoted strings keep their case.
_CASE_INSENSITIVE = frozenset({b"accept", b"accept-charset", b"accept-encoding", b"accept-language"})

_PLACEHOLDER = b"\x00"
_MEMO_SIZE = 4096  # remembered values per table; with _MEMO_VALUE_MAX, at most a few MiB per worker
_MEMO_VALUE_MAX = 256  # longer values (cookies) are rarely repeated: normalised each time, never remembered
_MEMO: dict[bytes, bytes] = {}  # raw value -> normalised, for case-sensitive fields
_MEMO_FOLDED: dict[bytes, bytes] = {}  # the same for case-insensitive fields


def vary_names(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, ...] | None:
    """The response's Vary as sorted, de-duplicated, lower-cased field names.

    () when the response has no Vary; None when it lists ``*``, which no later request matches (RFC 9111 section
    4.1). Several Vary lines form one list; whitespace and empty list elements are ignored (RFC 9110 section 5.6.1).
    """
    names: set[bytes] | None = None
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"vary":
            for item in value.split(b","):
                item = item.strip()
                if not item:
                    continue
                if item == b"*":
                    return None
                if names is None:
                    names = set()
                names.add(item.lower())
    if names is None:
        return ()
    return tuple(sorted(names))


def variant_key(names: tuple[bytes, ...], request_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The secondary key: the request's normalised values of the fields ``names`` lists, in that order.

    Each entry is the field name, a NUL, then ``-`` for an absent field or the value's length, ``=`` and the value:
    an absent field differs from an empty one, and no value, whatever bytes it holds, can imitate the next entry.
    Naming the fields keeps keys built from different Vary lists apart. b"" when ``names`` is ().
    """
    if not names:
        return b""
    if len(names) == 1:
        return _single(names[0], request_headers)
    found: dict[bytes, list[bytes]] = {}
    for name, value in request_headers:
        lower = name.lower()
        if lower in names:
            lines = found.get(lower)
            if lines is None:
                found[lower] = [value]
            else:
                lines.append(value)
    parts = []
    for name in names:
        lines = found.get(name)
        if lines is None:
            parts.append(name + b"\x00-")
        else:
            value = _normalise(lines[0] if len(lines) == 1 else b",".join(lines), name in _CASE_INSENSITIVE)
            parts.append(b"%s\x00%d=%s" % (name, len(value), value))
    return b"".join(parts)


def _single(wanted: bytes, request_headers: list[tuple[bytes, bytes]]) -> bytes:
    """variant_key for the common one-name Vary (Accept-Encoding), comparing only names of the right length."""
    size = len(wanted)
    value: bytes | None = None
    for name, line in request_headers:
        if len(name) == size and name.lower() == wanted:
            value = line if value is None else value + b"," + line
    if value is None:
        return wanted + b"\x00-"
    value = _normalise(value, wanted in _CASE_INSENSITIVE)
    return b"%s\x00%d=%s" % (wanted, len(value), value)


def _normalise(value: bytes, fold_case: bool) -> bytes:
    """A field value with the spelling differences RFC 9111 section 4.1 lets a cache ignore removed.

    Whitespace around list separators and parameter separators goes, runs of whitespace become one space, empty
    list elements and empty parameters are dropped (RFC 9110 sections 5.6.1 and 5.6.6), and case-insensitive fields
    are lower-cased. Quoted strings are set aside first so none of this reaches inside them.

    Browsers send the same few Accept-Encoding / Accept-Language strings over and over, so results are remembered;
    the memory starts over when full, which bounds it whatever values clients invent.
    """
    memo = _MEMO_FOLDED if fold_case else _MEMO
    normalised = memo.get(value)
    if normalised is not None:
        return normalised
    if b'"' in value:
        normalised = _normalise_quoted(value, fold_case)
    else:
        normalised = _normalise_list(value.lower() if fold_case else value)
    if len(value) <= _MEMO_VALUE_MAX:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[value] = normalised
    return normalised


def _normalise_list(value: bytes) -> bytes:
    """_normalise for a value without quoted strings, case already folded."""
    if b"," not in value and b";" not in value:
        return b" ".join(value.split())
    elements = []
    for element in value.split(b","):
        if b";" in element:
            head, *params = (b" ".join(piece.split()) for piece in element.split(b";"))
            element = b";".join([head, *(param for param in params if param)])
        else:
            element = b" ".join(element.split())
        if element:
            elements.append(element)
    return b",".join(elements)


def _normalise_quoted(value: bytes, fold_case: bool) -> bytes:
    """_normalise for a value with quoted strings: each is replaced by a NUL-delimited index while the rest is
    normalised, then put back. A value that already holds a NUL, or whose quote is not closed, is kept as it is:
    left unnormalised it can only miss a match, never make one."""
    if _PLACEHOLDER in value:
        return value
    quoted = []
    outside = []
    position = 0
    end = len(value)
    while True:
        start = value.find(b'"', position)
        if start < 0:
            outside.append(value[position:])
            break
        outside.append(value[position:start])
        cursor = start + 1
        while cursor < end:
            char = value[cursor]
            if char == 0x22:
                break
            cursor += 2 if char == 0x5C else 1
        if cursor >= end:
            return value
        outside.append(b"\x00%d\x00" % len(quoted))
        quoted.append(value[start : cursor + 1])
        position = cursor + 1
    text = b"".join(outside)
    if fold_case:
        text = text.lower()
    pieces = _normalise_list(text).split(_PLACEHOLDER)
    for index in range(1, len(pieces), 2):
        pieces[index] = quoted[int(pieces[index])]
    return b"".join(pieces)
