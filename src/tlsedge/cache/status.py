"""The Cache-Status response field (RFC 9211): how the edge's cache handled the request, for clients and operators.

The value is a Structured Fields list member (RFC 8941): the cache's name followed by parameters. Every response
carries one, so the common line, a hit with its ttl, is built from a cached prefix and one integer format.
"""

from __future__ import annotations

from functools import lru_cache

FWD_REASONS: frozenset[bytes] = frozenset(
    {b"bypass", b"method", b"uri-miss", b"vary-miss", b"miss", b"request", b"stale", b"partial"}
)
"""The ``fwd`` values of RFC 9211 section 2.2: why the request went to the origin."""

_MAX_INTEGER = 999_999_999_999_999  # the sf-integer range (RFC 8941 section 3.3.1)
_TOKEN_REST = b"!#$%&'*+-.^_`|~:/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN_FIRST = b"*abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# sf-string holds printable ASCII only: anything else is shown as "?".
_PRINTABLE = bytes(char if 0x20 <= char < 0x7F else 0x3F for char in range(256))


def cache_status(
    name: bytes,
    *,
    hit: bool,
    fwd: bytes | None = None,
    fwd_status: int | None = None,
    ttl: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: bytes | None = None,
) -> bytes:
    """One complete ``Cache-Status: <name>; hit; ttl=12\\r\\n`` line (RFC 9211 section 2).

    ``hit``, ``stored`` and ``collapsed`` are boolean parameters (bare keys); ``fwd`` is one of FWD_REASONS;
    ``ttl`` is negative for a stale response; ``detail`` is a token when it is one, else a string. The parameters
    appear in RFC 9211's order. An unknown ``fwd`` is a programming error and raises ValueError.
    """
    if ttl is not None and not -_MAX_INTEGER <= ttl <= _MAX_INTEGER:
        ttl = _MAX_INTEGER if ttl > 0 else -_MAX_INTEGER
    if hit and fwd is None and fwd_status is None and not stored and not collapsed and detail is None:
        if ttl is None:
            return _hit_line(name)
        return b"%s%d\r\n" % (_hit_ttl(name), ttl)
    parts = [_prefix(name)]
    if hit:
        parts.append(b"; hit")
    if fwd is not None:
        if fwd not in FWD_REASONS:
            raise ValueError(f"Cache-Status fwd={fwd!r} is not one of RFC 9211's reasons: {sorted(FWD_REASONS)}")
        parts.append(b"; fwd=" + fwd)
    if fwd_status is not None:
        parts.append(b"; fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"; ttl=%d" % ttl)
    if stored:
        parts.append(b"; stored")
    if collapsed:
        parts.append(b"; collapsed")
    if detail is not None:
        parts.append(b"; detail=" + _token_or_string(detail))
    parts.append(b"\r\n")
    return b"".join(parts)


@lru_cache(maxsize=64)
def _prefix(name: bytes) -> bytes:
    """``Cache-Status: <name>``: computed once per cache name (one per site or edge)."""
    return b"Cache-Status: " + _token_or_string(name)


@lru_cache(maxsize=64)
def _hit_line(name: bytes) -> bytes:
    return _prefix(name) + b"; hit\r\n"


@lru_cache(maxsize=64)
def _hit_ttl(name: bytes) -> bytes:
    return _prefix(name) + b"; hit; ttl="


def _token_or_string(value: bytes) -> bytes:
    """An sf-token when ``value`` is one (RFC 8941 section 3.3.4), else an sf-string (section 3.3.3)."""
    if value[:1] and value[:1] in _TOKEN_FIRST and not value.translate(None, _TOKEN_REST):
        return value
    escaped = value.translate(_PRINTABLE).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + escaped + b'"'
