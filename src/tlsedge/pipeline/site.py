"""A site as the data plane sees it: everything decided once from its configuration.

The chain for a site is built here when the configuration is loaded, so a request only follows precomputed
references: its routes, its pools of origin servers, the header block added to responses, whether plain HTTP is
redirected.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from tlsedge.cache.generations import Generations
from tlsedge.cache.runtime import CacheRuntime, SiteCacheRuntime
from tlsedge.config.schema import PoolConfig, SiteConfig
from tlsedge.edge.headers import HOP_BY_HOP
from tlsedge.guard.chain import SiteGuard
from tlsedge.guard.shared import SharedTable
from tlsedge.pipeline.routes import RouteTable
from tlsedge.upstream.group import ServerPool
from tlsedge.upstream.pool import OriginPool
from tlsedge.upstream.server import UpstreamServer
from tlsedge.upstream.shared import SharedHealth
from tlsedge.upstream.sticky import StickyCookie
from tlsedge.upstream.tls import origin_server_name


@dataclass
class UpstreamSetup:
    """What the control process prepared for the origin side before forking the workers."""

    contexts: dict[tuple[str, str], ssl.SSLContext | None] = field(default_factory=dict)  # by (site, pool)
    health: SharedHealth | None = None
    health_slots: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (site, pool, server) -> slot
    sticky_key: bytes = b""
    cache_generations: Generations | None = None  # shared invalidation counters (when a site caches)
    guard_table: SharedTable | None = None  # counters the workers share (when any protection is on)


class SiteRuntime:
    """Per-worker runtime of one site: routes, origin pools and prepared response fragments."""

    __slots__ = (
        "cache",
        "config",
        "default_host",
        "guard",
        "has_tls",
        "https_response_head",
        "max_body_size",
        "name",
        "orders_acme",
        "pools",
        "redirect_http",
        "response_skip",
        "routes",
        "servers",
    )

    def __init__(self, config: SiteConfig, loop: asyncio.AbstractEventLoop, setup: UpstreamSetup) -> None:
        self.config = config
        self.name = config.name
        self.has_tls = config.serves_https
        managed = config.managed_certificate
        self.orders_acme = managed is not None and managed.acme is not None
        self.redirect_http = config.redirect_http and self.has_tls
        self.max_body_size = config.max_body_size
        self.cache: SiteCacheRuntime | None = None  # set by the worker when the site's cache is on
        self.guard: SiteGuard | None = None  # set by the worker when the site has protection on
        # Origin response fields never passed to clients: hop-by-hop ones, and the cache's targeted fields.
        self.response_skip = HOP_BY_HOP
        # Host sent to the origin for a request that had none (HTTP/1.0): a real name, never a "*." pattern.
        exact = [h for h in config.hosts if not h.startswith("*.")]
        self.default_host = (exact[0] if exact else config.hosts[0][2:]).encode()
        # Header lines added to every response this site sends over https.
        self.https_response_head = b"Strict-Transport-Security: %s\r\n" % config.hsts.encode() if config.hsts else b""
        connections: dict[tuple, OriginPool] = {}
        self.pools: dict[str, ServerPool] = {}
        self.servers: list[UpstreamServer] = []
        for pool in config.pools:
            self.pools[pool.name] = self._pool(pool, loop, setup, connections)
        self.routes = RouteTable(config.routes, self.pools, self.pools[config.pools[0].name])

    def _pool(
        self,
        pool: PoolConfig,
        loop: asyncio.AbstractEventLoop,
        setup: UpstreamSetup,
        connections: dict[tuple, OriginPool],
    ) -> ServerPool:
        context = setup.contexts.get((self.name, pool.name))
        servers = []
        for member in pool.servers:
            origin = member.origin
            tls_context = context if origin.tls else None
            server_name = origin_server_name(pool, origin) if origin.tls else None
            limit = member.max_connections if member.max_connections is not None else self.config.origin.max_connections
            # One keep-alive pool per (server, TLS settings, limit): pools of the site that share them share it.
            key = (origin, id(tls_context), server_name, limit)
            conns = connections.get(key)
            if conns is None:
                conns = OriginPool(origin, self.config.origin, tls_context, server_name, loop, limit)
                connections[key] = conns
            server = UpstreamServer(
                member,
                conns,
                pool_name=pool.name,
                outlier=pool.outlier,
                slow_start=pool.slow_start,
                health_slot=setup.health_slots.get((self.name, pool.name, str(origin))),
            )
            servers.append(server)
            self.servers.append(server)
        sticky = None
        if pool.sticky is not None:
            sticky = StickyCookie(
                setup.sticky_key, self.name, pool.name, pool.sticky.cookie, pool.sticky.max_age,
                [server.key for server in servers],
            )
        return ServerPool(pool, servers, sticky)

    def enable_cache(self, runtime: CacheRuntime) -> None:
        """Turn the cache phase on for this site (RFC 9213: targeted fields never leave the edge)."""
        self.cache = SiteCacheRuntime(self.name, self.config.cache, runtime)
        self.response_skip = HOP_BY_HOP | frozenset(self.cache.targeted)

    def connection_pools(self) -> list[OriginPool]:
        """Every keep-alive pool of the site, once each."""
        return list({id(s.conns): s.conns for s in self.servers}.values())
