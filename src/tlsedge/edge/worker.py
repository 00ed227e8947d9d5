"""A worker process: the data plane on uvloop over listening sockets inherited from the control process.

The worker owns per-process state (connection pools, the client connection set) and one periodic sweep that
enforces every deadline, so no per-request timer objects are created.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from time import monotonic
from typing import TYPE_CHECKING

import uvloop

from tlsedge.acme.answers import tls_alpn01_context
from tlsedge.cache import purge as cache_purge
from tlsedge.cache.runtime import CacheRuntime
from tlsedge.config.schema import Config
from tlsedge.control.status import write_json_atomic
from tlsedge.edge.acceptor import PeekingTlsAcceptor, UvloopListener
from tlsedge.edge.accesslog import AccessLog
from tlsedge.edge.exchange import Exchange
from tlsedge.edge.hellos import HelloRouter
from tlsedge.edge.http1 import ClientConnection, deadline_timeouts
from tlsedge.edge.passthrough import Tunnel
from tlsedge.guard.admission import Admission
from tlsedge.guard.chain import GuardServices
from tlsedge.guard.runtime import build_guards, needs_admission
from tlsedge.guard.signing import load_or_create as load_signing_keys
from tlsedge.pipeline.router import HostRouter
from tlsedge.pipeline.site import SiteRuntime, UpstreamSetup
from tlsedge.store import Store, StoreError, open_store
from tlsedge.tls.server import TlsTable
from tlsedge.upstream.tls import origin_ca_watch

if TYPE_CHECKING:
    from tlsedge.tls.keyless.runtime import KeylessSite

log = logging.getLogger("tlsedge.worker")

SWEEP_INTERVAL = 0.5
STATS_EVERY = 2  # sweeps between two writes of this worker's statistics file (for `tlsedge status`)
EVICT_EVERY = 5  # sweeps between two checks of the disk tier's budget (by whichever worker takes the lock)
# Sent by the control process to the workers of a generation a reload replaced (SIGTERM means shut down).
RETIRE_SIGNAL = signal.SIGUSR1
# How long a retired worker keeps an idle keep-alive connection open for one more request.
RETIRE_IDLE_GRACE = 10.0
# Shortest drain: a connection accepted before the listeners closed finishes its TLS handshake within it.
DRAIN_SETTLE = 0.3
_BACKLOG = 1024


class Edge:
    """Per-worker state shared by all connections: sites, routing, TLS table, limits, logs."""

    def __init__(
        self, config: Config, tls: TlsTable | None, loop: asyncio.AbstractEventLoop, setup: UpstreamSetup | None = None
    ) -> None:
        self.config = config
        self.loop = loop
        self.limits = config.server.limits
        self.deadline_timeouts = deadline_timeouts(self.limits)
        self.tls = tls
        setup = setup or UpstreamSetup()
        self.sites = {site.name: SiteRuntime(site, loop, setup) for site in config.sites}
        self.groups = [group for site in self.sites.values() for group in site.pools.values()]
        self.connection_pools = [conns for site in self.sites.values() for conns in site.connection_pools()]
        self.health = setup.health
        self.health_version = -1
        self.checked_servers = [
            server for site in self.sites.values() for server in site.servers if server.health_slot is not None
        ]
        self.stats_path = config.server.state_dir / "run" / f"worker-{os.getpid()}.json"
        self.sweeps = 0
        self._follow_health(loop.time())  # a reload must not put servers the monitor knows are down back in use
        default = self.sites.get(config.server.default_site) if config.server.default_site else None
        self.router = HostRouter(list(self.sites.values()), default)
        self.clients: set[ClientConnection] = set()
        self.tunnels: set[Tunnel] = set()  # pass-through connections
        self.draining = False
        https = config.server.https
        port = https[0].port if https else 443
        self.https_port_suffix = b"" if port == 443 else b":%d" % port
        self._trusted = config.server.trusted_proxies
        self._trusted_cache: dict[str, bool] = {}
        self._prefix = os.urandom(3).hex()
        self._counter = 0
        self.access = AccessLog(config.server.access_log)
        self.idle_event: asyncio.Event | None = None
        self.listeners: list[PeekingTlsAcceptor | UvloopListener] = []
        self.full = False
        # The store (opened on first use): ACME challenge answers, renewed certificates, origin CA revocations.
        store = tls.store if tls is not None else None
        self.store: Store = store if store is not None else open_store(config.server.state_dir)
        self.origin_watch = origin_ca_watch(setup.contexts)
        acme = [site.managed_certificate.acme for site in config.sites if self.sites[site.name].orders_acme]
        self.answers_acme = bool(acme)  # serve HTTP-01 answers from the store
        self.tls_alpn_challenges = any("tls-alpn-01" in settings.challenges for settings in acme)
        self.cache: CacheRuntime | None = None
        self.purges_seen: set[str] = set()
        self.purge_version = -1
        self.evicting = False
        cached = [site for site in self.sites.values() if site.config.cache.enabled]
        if cached:
            self.cache = CacheRuntime(config.cache, config.server.state_dir, config.server.workers,
                                      setup.cache_generations)
            for site in cached:
                site.enable_cache(self.cache)
            # Purges issued before this worker started found nothing of it in memory: only newer ones apply.
            self.purges_seen = {purge.id for purge in cache_purge.pending(self.store, set())}
        self.guard: GuardServices | None = None
        self.peer: Admission | None = None  # checks at accept time, before any TLS work
        if setup.guard_table is not None:
            self.guard = build_guards(config, self.store, setup.guard_table, self.sites)
            if needs_admission(config):
                self.peer = Admission(self.guard.global_rules, self.guard.bans, setup.guard_table, self.limits)
        self.keyless: dict[str, KeylessSite] = {}
        if tls is not None and tls.keyless_identities:
            from tlsedge.tls.keyless.runtime import KeylessSite, ticket_keys  # aioquic only when a site needs it

            tickets = ticket_keys(tls.ticket_keys)
            identities = tls.keyless_identities
            self.keyless = {name: KeylessSite(config.site(name), ident, tickets) for name, ident in identities.items()}
        site_deny = {site.name: frozenset(site.guard.ip_rules.deny_ja4) for site in config.sites
                     if site.guard.ip_rules.deny_ja4}
        self.hellos = HelloRouter(self, self.keyless, frozenset(config.guard.ip_rules.deny_ja4), site_deny)
        # The acceptor hands hellos over when a site is pass-through or keyless, or fingerprints are screened.
        self.hellos_needed = bool((tls is not None and tls.modes) or self.hellos.screening)

    def tls_alpn_answer(self, server_name: str | None) -> ssl.SSLContext | None:
        """The TLS-ALPN-01 validation context for a name, when an order awaits it (else None)."""
        try:
            return tls_alpn01_context(self.store, server_name)
        except (StoreError, ssl.SSLError, ValueError) as exc:
            log.error("cannot answer the TLS-ALPN-01 challenge for %s: %s", server_name, exc)
            return None

    def next_request_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter:07x}"

    def is_trusted(self, ip: str) -> bool:
        """Whether a peer may vouch for the client address in X-Forwarded-* headers."""
        if not self._trusted:
            return False
        known = self._trusted_cache.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            known = any(address in network for network in self._trusted)
            if len(self._trusted_cache) < 4096:
                self._trusted_cache[ip] = known
        return known

    def log_exchange(self, ex: Exchange) -> None:
        if self.access.enabled:
            self.access.write(ex, monotonic())

    def connection_opened(self) -> None:
        """At max_connections this worker stops accepting, leaving new connections to workers with room."""
        if len(self.clients) + len(self.tunnels) >= self.limits.max_connections and not self.full:
            self.full = True
            for listener in self.listeners:
                listener.pause()

    def connection_closed(self) -> None:
        if self.full and not self.draining and len(self.clients) + len(self.tunnels) < self.limits.max_connections:
            self.full = False
            for listener in self.listeners:
                listener.resume()
        if self.draining and not self.clients and not self.tunnels and self.idle_event is not None:
            self.idle_event.set()

    def sweep(self) -> None:
        """Enforce every client and origin deadline, follow server health; flush the access log."""
        now = self.loop.time()
        for client in [c for c in self.clients if c.deadline and c.deadline <= now]:
            client.on_timeout()
        for tunnel in list(self.tunnels):
            tunnel.check(now)
        self._follow_health(now)
        for group in self.groups:
            group.sweep(now)
        for conns in self.connection_pools:
            conns.sweep(now)
        for listener in self.listeners:
            listener.sweep(now)
        if self.tls is not None:
            try:
                self.tls.refresh()
            except StoreError as exc:
                log.error("cannot look for new certificates: %s", exc)
        if self.origin_watch is not None:
            self.origin_watch.refresh(self.store)
        if self.guard is not None:
            self._follow_guard()
        if self.cache is not None:
            self._follow_purges()
            if self.sweeps % EVICT_EVERY == 0 and not self.evicting:
                self._evict_disk()
        self.access.flush()
        self.sweeps += 1
        if self.sweeps % STATS_EVERY == 0:
            self.write_stats()

    def _follow_guard(self) -> None:
        """Bans made by other workers or the CLI, and rotated signing keys, apply within a sweep."""
        guard = self.guard
        guard.bans.refresh(time.time())
        try:
            if guard.keys is None:
                guard.keys = load_signing_keys(self.store)
            else:
                guard.keys.refresh(self.store)
        except StoreError as exc:
            if guard.store_ok:
                log.error("cannot read the signing keys: %s; password and challenge pages answer 503 until "
                          "the store is readable again", exc)
            guard.store_ok = False
        else:
            guard.store_ok = True

    def _follow_purges(self) -> None:
        """Apply purges published since the last sweep to this worker's memory tier, and say how many it removed."""
        try:
            version = self.store.topic_version(cache_purge.TOPIC)
            if version == self.purge_version:
                return
            self.purge_version = version
            for purge in cache_purge.pending(self.store, self.purges_seen):
                self.purges_seen.add(purge.id)
                removed = self.cache.purge_memory(purge)
                cache_purge.answer(self.store, purge, os.getpid(), removed)
        except StoreError as exc:
            log.error("cannot read cache purges: %s", exc)

    def _evict_disk(self) -> None:
        """Keep the shared disk tier within disk_size: one worker at a time (a store lock), in a thread, since it
        walks the directory tree."""
        owner = f"worker-{os.getpid()}"
        try:
            if not self.store.acquire("cache-evict", owner, 60.0):
                return
        except StoreError as exc:
            log.error("cannot take the cache eviction lock: %s", exc)
            return
        self.evicting = True

        def evict() -> int:
            try:
                return self.cache.disk.evict()
            finally:
                with contextlib.suppress(StoreError):
                    self.store.release("cache-evict", owner)

        def done(future: asyncio.Future) -> None:
            self.evicting = False
            exc = future.exception()
            if exc is not None:
                log.error("cache: evicting from %s failed: %s", self.cache.disk.root, exc)
            elif future.result():
                log.info("cache: evicted %d objects from the disk tier (disk_size)", future.result())

        self.loop.run_in_executor(None, evict).add_done_callback(done)

    def _follow_health(self, now: float) -> None:
        """Take the monitor's verdicts from shared memory (only when one changed)."""
        health = self.health
        if health is None:
            return
        version = health.version()
        if version == self.health_version:
            return
        self.health_version = version
        for server in self.checked_servers:
            up = health.is_up(server.health_slot)
            if up != server.health_up:
                server.set_health(up, now)

    def write_stats(self) -> None:
        """Per-server statistics of this worker, merged by `tlsedge status`."""
        servers = [
            {"site": site.name, **server.stats()} for site in self.sites.values() for server in site.servers
        ]
        for name, keyless in self.keyless.items():  # key servers show as the pool "keyserver" of their site
            for entry in keyless.pool.status():
                servers.append({
                    "site": name, "pool": "keyserver", "server": entry["endpoint"],
                    "state": "down" if entry["state"] == "down" else "up", "active": entry["in_flight"],
                    "connections": int(entry["connected"]), "latency_ms": entry["rtt_ms"] or 0.0,
                })  # fmt: skip
        try:
            write_json_atomic(self.stats_path, {"pid": os.getpid(), "time": time.time(), "servers": servers})
        except OSError as exc:
            log.warning("cannot write %s: %s", self.stats_path, exc)

    def remove_stats(self) -> None:
        with contextlib.suppress(OSError):
            self.stats_path.unlink()


async def _serve(
    config: Config, sockets: list[tuple[socket.socket, bool]], tls: TlsTable | None, setup: UpstreamSetup
) -> None:
    loop = asyncio.get_running_loop()
    edge = Edge(config, tls, loop, setup)
    limits = config.server.limits
    for sock, is_tls in sockets:
        listener: PeekingTlsAcceptor | UvloopListener
        if is_tls and (
            tls.site_for_name(None) is None or edge.tls_alpn_challenges or edge.peer is not None or edge.hellos_needed
        ):
            # No default site: unknown names must get an unrecognized_name alert, which needs a look first; so do
            # ACME TLS-ALPN-01 validations (ALPN "acme-tls/1").
            listener = PeekingTlsAcceptor(
                loop,
                sock,
                tls,
                lambda: ClientConnection(edge, True),
                limits.handshake_timeout,
                lambda: not edge.draining and len(edge.clients) + len(edge.tunnels) < limits.max_connections,
                edge.tls_alpn_answer if edge.tls_alpn_challenges else None,
                edge.peer,
                edge.hellos if edge.hellos_needed else None,
            )
        elif is_tls:
            listener = UvloopListener(
                loop,
                sock,
                lambda: ClientConnection(edge, True),
                ssl=tls.context,
                ssl_handshake_timeout=limits.handshake_timeout,
                ssl_shutdown_timeout=1.0,
                backlog=_BACKLOG,
            )
            await listener.start()
        else:
            listener = UvloopListener(loop, sock, lambda: ClientConnection(edge, False), backlog=_BACKLOG)
            await listener.start()
        edge.listeners.append(listener)

    stop = asyncio.Event()
    retire = False

    def on_retire() -> None:
        nonlocal retire
        retire = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(RETIRE_SIGNAL, on_retire)
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL)
        edge.sweep()
        if os.getppid() != parent:
            log.error("control process is gone; worker %d drains and exits", os.getpid())
            break

    # Drain: stop accepting and let in-flight exchanges finish within drain_timeout. On shutdown idle connections
    # close at once; a worker retired by a reload lets them send one more request (answered with Connection: close).
    edge.draining = True
    for listener in edge.listeners:
        listener.close()
    deadline = loop.time() + config.server.drain_timeout
    for client in list(edge.clients):
        client.drain(close_idle=not retire, deadline=min(deadline, loop.time() + RETIRE_IDLE_GRACE))
    edge.idle_event = asyncio.Event()
    # Connections accepted just before the listeners closed may still be in their handshake: give them a moment.
    settle = loop.time() + DRAIN_SETTLE
    while loop.time() < deadline:
        busy = bool(edge.clients or edge.tunnels) or any(listener.pending for listener in edge.listeners)
        if not busy and loop.time() >= settle:
            break
        edge.idle_event.clear()
        try:
            await asyncio.wait_for(edge.idle_event.wait(), SWEEP_INTERVAL if busy else settle - loop.time())
        except TimeoutError:
            edge.sweep()
    if edge.clients:
        log.warning("worker %d: %d connections still open after drain_timeout; closing them", os.getpid(),
                    len(edge.clients))
        for client in list(edge.clients):
            client.transport.abort()
    if edge.tunnels:
        log.warning("worker %d: %d pass-through connections still open after drain_timeout; closing them",
                    os.getpid(), len(edge.tunnels))
        for tunnel in list(edge.tunnels):
            tunnel.close("drain_timeout")
    for site in edge.keyless.values():
        await site.close()
    for conns in edge.connection_pools:
        conns.close_idle()
    edge.remove_stats()
    edge.access.close()
    if edge.guard is not None and edge.guard.waf is not None:
        edge.guard.waf.shutdown()


def run_worker(
    config: Config, sockets: list[tuple[socket.socket, bool]], tls: TlsTable | None, setup: UpstreamSetup
) -> int:
    """Entry point of a forked worker; returns the process exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the control process, which drains us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        uvloop.run(_serve(config, sockets, tls, setup))
    except (OSError, ssl.SSLError):
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0
