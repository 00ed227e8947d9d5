"""The cache's configuration: the edge-wide ``[cache]`` storage table and each site's ``[site.cache]``.

Caching is off unless a site turns it on: an operator who puts an edge in front of an application expects nothing
to be served from a copy until they say so (nginx's ``proxy_cache`` is off by default too). When it is on, the
origin's headers decide what is stored and for how long (RFC 9111), and the rules here only narrow or override that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tlsedge.config.load import _Table

SetCookiePolicy = Literal["bypass", "strip"]
SET_COOKIE_POLICIES: tuple[str, ...] = ("bypass", "strip")
STORAGE_KEYS = ("memory_size", "disk_size", "path", "status_name")
SITE_KEYS = (
    "enabled",
    "max_object_size",
    "set_cookie",
    "always_online",
    "always_online_max_stale",
    "targeted_field",
    "key_headers",
    "key_cookies",
    "ignore_query_params",
    "heuristic_max",
    "collapse_timeout",
    "rule",
)
RULE_KEYS = ("path_prefix", "bypass", "ttl", "ignore_query", "ignore_cookies")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_TOKEN_RE = _FIELD_NAME_RE


@dataclass(frozen=True, slots=True)
class CacheStorage:
    """``[cache]``: the two storage tiers every cached site of the edge shares."""

    memory_size: int = 64 * 1024 * 1024  # for the whole edge; each worker gets an equal share
    disk_size: int = 1024 * 1024 * 1024
    path: Path | None = None  # None: <state_dir>/cache
    status_name: str = "tlsedge"  # the cache's name in Cache-Status (RFC 9211)


@dataclass(frozen=True, slots=True)
class CacheRule:
    """A path rule: the longest matching ``path_prefix`` applies to a request."""

    path_prefix: str
    bypass: bool = False  # never served from or stored in the cache
    ttl: float | None = None  # freshness lifetime replacing the origin's (no-store and private still win)
    ignore_query: bool = False  # the query string is not part of the cache key
    ignore_cookies: bool = False  # the site's key_cookies are not part of the key on this path


@dataclass(frozen=True, slots=True)
class SiteCache:
    """``[site.cache]``: whether the site is cached, and how."""

    enabled: bool = False
    max_object_size: int = 16 * 1024 * 1024  # larger responses pass through uncached
    set_cookie: SetCookiePolicy = "bypass"  # bypass: never store a response with Set-Cookie; strip: store it without
    always_online: bool = False  # serve a stale copy when every origin fails or answers 5xx
    always_online_max_stale: float = 86400.0  # ... if it has been stale for less than this
    targeted_field: str = "tlsedge-cache-control"  # read before CDN-Cache-Control and Cache-Control; lower-case
    key_headers: tuple[str, ...] = ()  # request headers that are part of the key (lower-case)
    key_cookies: tuple[str, ...] = ()  # cookies that are part of the key
    ignore_query_params: tuple[str, ...] = ()  # query parameters left out of the key (e.g. utm_source)
    heuristic_max: float = 86400.0  # cap of heuristic freshness (10 % of the age of Last-Modified)
    collapse_timeout: float = 10.0  # how long a request waits for a fill of the same key before fetching itself
    rules: tuple[CacheRule, ...] = ()


def load_storage(root: _Table) -> CacheStorage:
    """The edge-wide ``[cache]`` table."""
    raw = root.table("cache")
    if raw is None:
        return CacheStorage()
    t = root.child(raw, "cache", STORAGE_KEYS)
    status_name = t.string("status_name")
    if status_name is not None and not _TOKEN_RE.match(status_name):
        t.problem("status_name", f"{status_name!r} is not an HTTP token; use letters, digits and '-', e.g. 'tlsedge'")
        status_name = None
    values = {
        "memory_size": t.size("memory_size", minimum=1024 * 1024),
        "disk_size": t.size("disk_size", minimum=1024 * 1024),
        "path": t.path("path"),
        "status_name": status_name,
    }
    return CacheStorage(**{key: value for key, value in values.items() if value is not None})


def load_site_cache(t: _Table) -> SiteCache | None:
    """A site's ``cache`` table (None when the site has none)."""
    raw = t.table("cache")
    if raw is None:
        return None
    c = t.child(raw, t.field("cache"), SITE_KEYS)
    targeted = c.string("targeted_field")
    if targeted is not None:
        if not _FIELD_NAME_RE.match(targeted):
            c.problem("targeted_field", f"{targeted!r} is not a header field name")
            targeted = None
        elif targeted.lower() in ("cache-control", "cdn-cache-control"):
            c.problem("targeted_field", f"{targeted!r} is read anyway; name a field of your own, e.g. "
                      "'Tlsedge-Cache-Control'")
            targeted = None
        else:
            targeted = targeted.lower()
    values: dict[str, Any] = {
        "enabled": c.boolean("enabled"),
        "max_object_size": c.size("max_object_size", minimum=1),
        "set_cookie": c.choice("set_cookie", SET_COOKIE_POLICIES),
        "always_online": c.boolean("always_online"),
        "always_online_max_stale": c.duration("always_online_max_stale"),
        "targeted_field": targeted,
        "key_headers": _names(c, "key_headers", lower=True),
        "key_cookies": _names(c, "key_cookies", lower=False),
        "ignore_query_params": _names(c, "ignore_query_params", lower=False),
        "heuristic_max": c.duration("heuristic_max", allow_zero=True),
        "collapse_timeout": c.duration("collapse_timeout"),
        "rules": _rules(c),
    }
    return SiteCache(**{key: value for key, value in values.items() if value is not None})


def _names(c: _Table, key: str, *, lower: bool) -> tuple[str, ...] | None:
    items = c.strings(key)
    if items is None:
        return None
    names = []
    for where, value in items:
        if not _FIELD_NAME_RE.match(value):
            c.at(where, f"{value!r} is not a valid name (letters, digits and -_.!#$%&'*+^`|~)")
            continue
        names.append(value.lower() if lower else value)
    return tuple(names)


def _rules(c: _Table) -> tuple[CacheRule, ...] | None:
    rules = []
    seen: dict[str, str] = {}
    for index, item in c.tables("rule", "[[site.cache.rule]]"):
        where = f"{c.field('rule')}[{index}]"
        r = c.child(item, where, RULE_KEYS)
        if not r.require("path_prefix", 'say which paths the rule covers, e.g. path_prefix = "/static/"'):
            continue
        prefix = r.string("path_prefix")
        if prefix is None:
            continue
        if not prefix.startswith("/"):
            r.problem("path_prefix", f"{prefix!r} must start with '/'")
            continue
        if prefix in seen:
            r.problem("path_prefix", f"{prefix!r} is already the prefix of {seen[prefix]}; merge the two rules")
            continue
        seen[prefix] = where
        bypass = r.boolean("bypass") or False
        ttl = r.duration("ttl", allow_zero=True)
        if bypass and ttl is not None:
            r.problem("ttl", "a bypass rule stores nothing, so a ttl has no effect; remove one of them")
        rules.append(
            CacheRule(
                path_prefix=prefix,
                bypass=bypass,
                ttl=ttl,
                ignore_query=r.boolean("ignore_query") or False,
                ignore_cookies=r.boolean("ignore_cookies") or False,
            )
        )
    return tuple(rules)
