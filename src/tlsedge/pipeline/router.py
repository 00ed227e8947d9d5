"""Host routing: which site answers for a host name (exact names first, then one-label wildcards)."""

from __future__ import annotations

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
        self._cache: dict[bytes, SiteRuntime | None] = {}

    def lookup(self, host: bytes) -> SiteRuntime | None:
        """The site serving `host`, or None; `host` must already be lower-cased and without port."""
        site = self.exact.get(host)
        if site is not None:
            return site
        cached = self._cache.get(host, False)
        if cached is not False:
            return cached
        dot = host.find(b".")
        site = self.wildcard.get(host[dot + 1 :]) if dot > 0 else None
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[host] = site
        return site
