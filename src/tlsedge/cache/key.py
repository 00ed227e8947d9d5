"""Cache keys: which requests share a stored response.

The primary key is the URL the client asked for (scheme, host, path, query) with the site's key options applied:
query parameters left out, request headers or cookies added. The URL part alone (``base``) is what purge by URL and
by prefix compare, so a purge of ``https://example.com/a`` removes every header, cookie and Vary variant of it.
"""

from __future__ import annotations

from tlsedge.config.cache import CacheRule, SiteCache

_SEPARATOR = b"\x00"


class KeyPolicy:
    """A site's key options and path rules, compiled once per configuration."""

    __slots__ = ("_cookies", "_headers", "_ignored_params", "_rules")

    def __init__(self, config: SiteCache) -> None:
        # Longest prefix first: the most specific rule applies.
        self._rules = sorted(
            ((rule.path_prefix.encode(), rule) for rule in config.rules), key=lambda item: -len(item[0])
        )
        self._headers = tuple(name.encode() for name in config.key_headers)
        self._cookies = tuple(name.encode() for name in config.key_cookies)
        self._ignored_params = frozenset(name.encode() for name in config.ignore_query_params)

    def rule_for(self, target: bytes) -> CacheRule | None:
        """The rule of the longest path_prefix matching the request target's path, or None."""
        for prefix, rule in self._rules:
            if target.startswith(prefix):
                return rule
        return None

    def base(self, scheme: bytes, host: bytes, target: bytes, rule: CacheRule | None) -> bytes:
        """``scheme://host/path?query`` with ignored query parameters removed (the whole query for ignore_query)."""
        path, question, query = target.partition(b"?")
        if question:
            if rule is not None and rule.ignore_query:
                query = b""
            elif self._ignored_params:
                query = b"&".join(
                    part for part in query.split(b"&") if part.partition(b"=")[0] not in self._ignored_params
                )
        host = host.lower()
        if query:
            return b"%s://%s%s?%s" % (scheme, host, path, query)
        return b"%s://%s%s" % (scheme, host, path)

    def extras(self, headers: list[tuple[bytes, bytes]], rule: CacheRule | None) -> bytes:
        """The key's header and cookie part (b"" when the site adds none, the common case)."""
        names = self._headers
        cookies = self._cookies if rule is None or not rule.ignore_cookies else ()
        if not names and not cookies:
            return b""
        parts = []
        for name in names:
            values = [value.strip() for field, value in headers if field.lower() == name]
            parts.append(b"h:%s=%s" % (name, b",".join(values)))
        if cookies:
            jar = _cookie_jar(headers)
            for name in cookies:
                value = jar.get(name)
                parts.append(b"c:%s" % name if value is None else b"c:%s=%s" % (name, value))
        return _SEPARATOR + _SEPARATOR.join(parts)


def _cookie_jar(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request's cookies by name (the first of a repeated name, as browsers order the most specific first)."""
    jar: dict[bytes, bytes] = {}
    for name, value in headers:
        if name.lower() == b"cookie":
            for pair in value.split(b";"):
                cookie, _, cookie_value = pair.strip().partition(b"=")
                jar.setdefault(cookie, cookie_value)
    return jar


def base_of(key: bytes) -> bytes:
    """The URL part of a primary key."""
    return key.partition(_SEPARATOR)[0]
