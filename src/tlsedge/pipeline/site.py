"""A site as the data plane sees it: everything decided once from its configuration.

The chain for a site is built here when the configuration is loaded, so a request only follows precomputed
references: its origin pools, the header block added to responses, whether plain HTTP is redirected.
"""

from __future__ import annotations

import asyncio

from tlsedge.config.schema import SiteConfig
from tlsedge.upstream.pool import OriginPool
from tlsedge.upstream.tls import origin_server_name, origin_ssl_context


class SiteRuntime:
    """Per-worker runtime of one site: origin pools and prepared response fragments."""

    __slots__ = (
        "_next",
        "config",
        "default_host",
        "has_tls",
        "https_response_head",
        "max_body_size",
        "name",
        "pools",
        "redirect_http",
    )

    def __init__(self, config: SiteConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.has_tls = bool(config.certificates)
        self.redirect_http = config.redirect_http and self.has_tls
        self.max_body_size = config.max_body_size
        # Host sent to the origin for a request that had none (HTTP/1.0): a real name, never a "*." pattern.
        exact = [h for h in config.hosts if not h.startswith("*.")]
        self.default_host = (exact[0] if exact else config.hosts[0][2:]).encode()
        # Header lines added to every response this site sends over https.
        self.https_response_head = b"Strict-Transport-Security: %s\r\n" % config.hsts.encode() if config.hsts else b""
        context = origin_ssl_context(config)
        self.pools = [
            OriginPool(
                origin,
                config.origin,
                context if origin.tls else None,
                origin_server_name(config, origin) if origin.tls else None,
                loop,
            )
            for origin in config.origins
        ]
        self._next = 0

    def pick_pool(self) -> OriginPool:
        """Round robin over the site's origin servers (balancing algorithms are a later feature)."""
        pools = self.pools
        index = self._next
        self._next = (index + 1) % len(pools)
        return pools[index]

    def pool_after(self, pool: OriginPool) -> OriginPool:
        """The next origin server after one whose connection failed, for failover before anything was sent."""
        pools = self.pools
        return pools[(pools.index(pool) + 1) % len(pools)]
