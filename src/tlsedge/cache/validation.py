"""Validation: the edge revalidating a stored response with the origin, and answering clients' own conditionals.

Sans-IO (DESIGN.md): these functions take header lists and a CacheEntry and return bytes or decisions; the cache
layer does the I/O. They run on the request path, so they scan header lists once and allocate little.
"""

from __future__ import annotations

from tlsedge.cache.dates import parse_http_date
from tlsedge.cache.entry import CacheEntry

STRIPPED_ON_FORWARD: frozenset[bytes] = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range"}
)
"""Request fields removed when the edge fetches to fill the cache.

The fill must bring back the full, unconditional representation every client can share; the edge then evaluates
each client's own conditionals and ranges against the stored copy itself (RFC 9111 section 4.3.2).
"""

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

# The 304 fields that never replace stored ones (RFC 9111 section 3.2, which lists four kinds of exception):
# - excepted from storage (section 3.1): hop-by-hop fields, those the 304's Connection names, and the proxy fields;
# - Content-Length, which section 3.2 names itself: the stored body keeps its own length;
# - fields the stored response depends upon: Content-Encoding describes the stored body bytes (a 304 cannot
#   re-encode them), and Content-Range is processed by the recipient (section 3.2 allows ignoring it); the edge
#   stores whole bodies, so Content-Type is NOT excepted: it is updated (cache-tests 304-*-update-*-Content-Type);
# - Age, which describes the message, not the resource: the cache computes its own (section 4.2.3).
_NOT_UPDATED = _HOP_BY_HOP | {
    b"proxy-authenticate",
    b"proxy-authentication-info",
    b"proxy-authorization",
    b"content-length",
    b"content-encoding",
    b"content-range",
    b"age",
}

NOT_MODIFIED_FIELDS: frozenset[bytes] = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)
"""The stored fields a 304 from the cache carries (RFC 9110 section 15.4.5): those a 200 would have had.

Last-Modified is added only when there is no ETag: section 15.4.5 allows other metadata only to guide cache updates,
and Last-Modified is the validator of a response without an entity-tag.
"""


def conditional_lines(entry: CacheEntry) -> bytes:
    """The header lines that make the edge's fetch a revalidation of ``entry`` (RFC 9111 section 4.3.1).

    Both validators are sent when both exist: an origin that ignores entity-tags may still honour the date, and one
    that evaluates both gives If-None-Match precedence anyway. b"" means a plain request.
    """
    etag = entry.etag
    last_modified = entry.last_modified
    if etag:
        if last_modified:
            return b"If-None-Match: %s\r\nIf-Modified-Since: %s\r\n" % (etag, last_modified)
        return b"If-None-Match: " + etag + b"\r\n"
    if last_modified:
        return b"If-Modified-Since: " + last_modified + b"\r\n"
    return b""


def validators(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The response's (ETag, Last-Modified) values, trimmed, None when absent or empty: what CacheEntry keeps.

    Both are singleton fields; of repeated lines the first counts. They are kept as sent, since they go back to the
    origin and to clients byte for byte; not_modified parses the date when it needs one.
    """
    etag = last_modified = None
    for name, value in headers:
        size = len(name)
        if size == 4 and etag is None and name.lower() == b"etag":
            etag = value.strip() or None
        elif size == 13 and last_modified is None and name.lower() == b"last-modified":
            last_modified = value.strip() or None
    return etag, last_modified


def merge_not_modified(
    stored: list[tuple[bytes, bytes]], fresh: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The stored fields updated by a 304 (RFC 9111 sections 3.2 and 4.3.4).

    Every field of the 304 replaces all stored lines of that name, at the place of the first of them, except:
    hop-by-hop fields (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade and any the
    304's Connection names), Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Authorization, Content-Length,
    Content-Encoding, Content-Range and Age (see _NOT_UPDATED for why each). Fields new to the stored response are
    appended in the 304's order. Set-Cookie is updated like any field, as section 3.2 says; whether a response with
    one may be stored at all is the site's policy, applied by the caller to the merged result.
    """
    excluded = _NOT_UPDATED
    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in fresh:
        lower = name.lower()
        if lower == b"connection":
            excluded = excluded | {token.strip().lower() for token in value.split(b",")}
        by_name.setdefault(lower, []).append((name, value))
    # Filtered only now: Connection may come after the fields it names.
    updates = {name: lines for name, lines in by_name.items() if name not in excluded}
    if not updates:
        return list(stored)
    merged: list[tuple[bytes, bytes]] = []
    placed: set[bytes] = set()
    for field in stored:
        lower = field[0].lower()
        lines = updates.get(lower)
        if lines is None:
            merged.append(field)
        elif lower not in placed:
            placed.add(lower)
            merged.extend(lines)
    for lower, lines in updates.items():
        if lower not in placed:
            merged.extend(lines)
    return merged


def not_modified(request_headers: list[tuple[bytes, bytes]], method: bytes, entry: CacheEntry) -> bool:
    """Whether the edge answers a client's conditional GET/HEAD with 304 from ``entry``.

    RFC 9110 section 13.2.2 precedence: If-None-Match, when present, decides alone (weak comparison, section
    13.1.2); otherwise If-Modified-Since (section 13.1.3), ignored unless it is a single valid HTTP-date. A stored
    response without Last-Modified is compared by its Date, or by when it arrived, as RFC 9111 section 4.3.2 asks
    of caches. Preconditions only apply where the unconditional answer would be 2xx (RFC 9110 section 13.2.1), and
    If-Match / If-Unmodified-Since are the origin's business: the caller forwards such requests.
    """
    if (method != b"GET" and method != b"HEAD") or not 200 <= entry.status < 300:
        return False
    none_match: bytes | None = None
    since: bytes | None = None
    since_lines = 0
    for name, value in request_headers:
        size = len(name)
        if size == 13 and name.lower() == b"if-none-match":
            none_match = value if none_match is None else none_match + b"," + value
        elif size == 17 and name.lower() == b"if-modified-since":
            since = value
            since_lines += 1
    if none_match is not None:
        return _none_match_fails(none_match, entry.etag)
    if since is None or since_lines > 1:
        return False
    since_time = parse_http_date(since)
    if since_time is None:
        return False
    modified = parse_http_date(entry.last_modified) if entry.last_modified else _stored_date(entry)
    return modified is not None and modified <= since_time


def not_modified_head_fields(stored: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The stored fields a 304 sent from the cache carries: NOT_MODIFIED_FIELDS, and Last-Modified without ETag."""
    fields = []
    has_etag = has_last_modified = False
    for field in stored:
        lower = field[0].lower()
        if lower in NOT_MODIFIED_FIELDS:
            fields.append(field)
            has_etag = has_etag or lower == b"etag"
        elif lower == b"last-modified":
            fields.append(field)
            has_last_modified = True
    if has_etag and has_last_modified:
        return [field for field in fields if field[0].lower() != b"last-modified"]
    return fields


def _none_match_fails(field: bytes, etag: bytes | None) -> bool:
    """True when If-None-Match evaluates to false, i.e. the client's copy matches (RFC 9110 section 13.1.2)."""
    if field.strip() == b"*":
        return True  # any current representation matches, and the caller has one
    if not etag:
        return False
    wanted = _opaque(etag.strip())
    return any(_opaque(tag) == wanted for tag in _entity_tags(field))


def _opaque(tag: bytes) -> bytes:
    """The opaque-tag of an entity-tag: the weak comparison (RFC 9110 section 8.8.3.2) ignores the W/ prefix."""
    return tag[2:] if tag.startswith(b"W/") else tag


def _entity_tags(field: bytes) -> list[bytes]:
    """The entity-tags of an If-None-Match list.

    A scan rather than a split: the quoted opaque-tag may itself contain commas. Unquoted tags (sent back by clients
    of origins that emit them) are taken up to the next comma, so the same bytes still compare equal.
    """
    tags = []
    position = 0
    end = len(field)
    while position < end:
        if field[position] in b" \t,":
            position += 1
            continue
        start = position
        if field.startswith(b"W/", position):
            position += 2
        if position < end and field[position] == 0x22:
            close = field.find(b'"', position + 1)
            if close < 0:
                break  # an unterminated tag matches nothing
            position = close + 1
            tags.append(field[start:position])
        else:
            comma = field.find(b",", position)
            position = end if comma < 0 else comma
            tags.append(field[start:position].strip())
    return tags


def _stored_date(entry: CacheEntry) -> float | None:
    """The stored response's Date, or the time it arrived when it has none (RFC 9111 section 4.3.2).

    An invalid Date counts as none, as RFC 9110 section 6.6.1 lets a recipient replace it with the time received.
    """
    for name, value in entry.headers:
        if len(name) == 4 and name.lower() == b"date":
            date = parse_http_date(value)
            return entry.response_time if date is None else date
    return entry.response_time
