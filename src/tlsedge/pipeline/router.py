"""Host routing: which site answers for a host name (exact names first, then one-label wildcards)."""

from __future__ import annotations

from tlsedge.edge.headers import is_valid_host, split_host_port
from tlsedge.pipeline.site import SiteRuntime

_CACHE_LIMIT = 4096


class HostRouter:
    """Maps lower-cased host names (bytes, no port) to sites; results of wildcard lookups are cached."""

    def __init__(self, sites: list[SiteRuntime], default: SiteRuntime | None) -> None:
        self.exact: dict[bytes, SiteRuntime] = {}
        self.wildcard: dict[bytes, SiteRuntime] = {}
        for site in sites:
            for host in site.config.hosts:
                if host.startswith("*."):
                    self.wildcard[host[2:].encode()] = site
                else:
                    self.exact[host.encode()] = site
        self.default = default
        self._routes: dict[bytes, tuple[bytes, SiteRuntime | None]] = {}

    def lookup(self, host: bytes) -> SiteRuntime | None:
        """The site serving `host`, or None; `host` must already be lower-cased and without port."""
        site = self.exact.get(host)
        if site is not None:
            return site
        dot = host.find(b".")
        return self.wildcard.get(host[dot + 1 :]) if dot > 0 else None

    def route(self, host_header: bytes) -> tuple[bytes, SiteRuntime | None] | None:
        """(host name, site or None) for a raw Host header value; None when the value is malformed.

        Results are cached by the raw value, so the usual request costs one dict lookup; the cache is bounded so
        random names cannot grow it without limit (past the bound they are simply computed each time).
        """
        route = self._routes.get(host_header)
        if route is not None:
            return route
        name = split_host_port(host_header)
        if not is_valid_host(name):
            return None
        route = (name, self.lookup(name))
        if len(self._routes) < _CACHE_LIMIT:
            self._routes[host_header] = route
        return route
