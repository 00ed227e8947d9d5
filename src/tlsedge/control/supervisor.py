"""The control process: opens listeners, forks worker generations, reloads on SIGHUP, drains on SIGTERM.

It runs no event loop (workers are forked from it, and a forked child must not inherit a running loop); it waits
for signals with `sigtimedwait`, which also reaps and restarts crashed workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tlsedge.cache.disk import DiskTier
from tlsedge.cache.generations import Generations
from tlsedge.config import ConfigError, load_config
from tlsedge.config.errors import Problem
from tlsedge.config.schema import Config
from tlsedge.control.certmanager import needs_certmanager, run_certmanager
from tlsedge.control.listeners import ListenerSet
from tlsedge.control.monitor import run_monitor
from tlsedge.edge.worker import RETIRE_SIGNAL, run_worker
from tlsedge.guard.runtime import shared_table, waf_problems
from tlsedge.guard.shared import SharedTable
from tlsedge.pipeline.site import UpstreamSetup
from tlsedge.pki.temporary import ensure_temporary
from tlsedge.store import Store, StoreError, open_store
from tlsedge.tls.server import TlsSetupError, TlsTable, build_tls_table
from tlsedge.tls.tickets import load_or_create_ticket_keys
from tlsedge.upstream.shared import SharedHealth, carry_over, health_slots
from tlsedge.upstream.sticky import load_or_create_sticky_key
from tlsedge.upstream.tls import origin_ca_watch, origin_server_name, origin_ssl_contexts

log = logging.getLogger("tlsedge.control")

_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_KILL_GRACE = 5.0
_RESPAWN_FIRST = 0.1  # seconds before restarting a crashed worker; doubles per crash within _CRASH_WINDOW
_RESPAWN_MAX = 30.0
_CRASH_WINDOW = 60.0
_AUX_RESPAWN = 2.0  # seconds before restarting a crashed auxiliary process (workers keep its last results)


class Generation:
    """The workers, and the auxiliary processes (health monitor, certificate manager), started from one configuration.

    Auxiliary processes run what must happen once per edge; they are named, and restarted by name when they crash.
    """

    def __init__(self, config: Config, tls: TlsTable | None, sockets: list, upstream: UpstreamSetup) -> None:
        self.config = config
        self.tls = tls
        self.sockets = sockets
        self.upstream = upstream
        self.pids: set[int] = set()
        self.aux: dict[str, int] = {}  # name -> pid of the running auxiliary processes

    @property
    def all_pids(self) -> set[int]:
        return self.pids | set(self.aux.values())


class Supervisor:
    """Owns listeners and worker processes for one configuration file."""

    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.listeners = ListenerSet()
        self.current: Generation | None = None
        self.old: list[Generation] = []
        self.stopping = False
        self._initial = config
        # Crashed workers are restarted with exponential backoff, so a worker that dies at start cannot spin.
        self.respawns = 0
        self.respawn_at = 0.0
        self.crashes = 0
        self.last_crash = 0.0
        self.aux_respawn_at: dict[str, float] = {}
        self.guard_table: SharedTable | None = None  # kept across reloads: counters survive a SIGHUP

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        config = self._initial
        for warning in config.warnings:
            log.warning("%s", warning)
        generation = self._prepare(config)
        self._spawn_all(generation)
        self.current = generation
        log.info("tlsedge started: %d workers, %d sites, pid %d", len(generation.pids), len(config.sites),
                 os.getpid())
        while True:
            wait = 1.0
            if self.respawns:
                wait = max(0.0, min(wait, self.respawn_at - time.monotonic()))
            for at in self.aux_respawn_at.values():
                wait = max(0.0, min(wait, at - time.monotonic()))
            info = signal.sigtimedwait(_SIGNALS, wait)
            self._reap()
            self._respawn_due()
            if info is None:
                continue
            if info.si_signo == signal.SIGHUP:
                self.reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self.shutdown()

    def _prepare(self, config: Config) -> Generation:
        """Everything a generation needs, built before forking so workers share it (and fail early here)."""
        sockets = self.listeners.update(config.server.https, config.server.http)
        tls = None
        if config.server.https:
            keys = load_or_create_ticket_keys(config.server.state_dir)
            tls = build_tls_table(config, keys, _store_with_certificates(config))
        problems = waf_problems(config)
        if problems:
            raise TlsSetupError(problems)
        upstream = _upstream_setup(config)
        upstream.guard_table = shared_table(config, self.guard_table)
        self.guard_table = upstream.guard_table or self.guard_table
        return Generation(config, tls, sockets, upstream)

    def _spawn_all(self, generation: Generation) -> None:
        for _ in range(generation.config.server.workers):
            self._spawn(generation)
        for name in self._aux_processes(generation):
            self._spawn_aux(generation, name)

    def _aux_processes(self, generation: Generation) -> dict[str, Callable[[], int]]:
        """What runs once per edge for this configuration, by name."""
        processes: dict[str, Callable[[], int]] = {}
        if generation.upstream.health is not None:
            processes["health monitor"] = lambda: self._run_monitor(generation)
        if needs_certmanager(generation.config):
            processes["certificate manager"] = lambda: self._run_certmanager(generation)
        return processes

    def _spawn_aux(self, generation: Generation, name: str) -> None:
        run = self._aux_processes(generation)[name]

        def child() -> int:
            # Auxiliary processes serve no clients: holding listening sockets would keep removed ports half-open.
            self.listeners.close_all()
            return run()

        generation.aux[name] = _fork(child)

    def _run_certmanager(self, generation: Generation) -> int:
        return run_certmanager(generation.config, open_store(generation.config.server.state_dir))

    def _run_monitor(self, generation: Generation) -> int:
        """Active health checks, once per edge; workers read the verdicts from shared memory."""
        contexts = generation.upstream.contexts
        watch = origin_ca_watch(contexts)
        store = open_store(generation.config.server.state_dir)  # opened on first use: only when there is a watch
        return run_monitor(
            generation.config,
            generation.upstream.health,
            lambda site, pool, origin: (
                contexts.get((site.name, pool.name)) if origin.tls else None,
                origin_server_name(pool, origin),
            ),
            on_tick=(lambda: watch.refresh(store)) if watch is not None else None,
        )

    def _spawn(self, generation: Generation) -> None:
        generation.pids.add(
            _fork(lambda: run_worker(generation.config, generation.sockets, generation.tls, generation.upstream))
        )

    def reload(self) -> None:
        """Start a new generation from the file; on any problem keep the running one and say why."""
        log.info("reloading %s", self.config_path)
        try:
            config = load_config(self.config_path)
            generation = self._prepare(config)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the running configuration: %s", problem)
            return
        except TlsSetupError as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the running configuration: %s", problem)
            return
        except OSError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        for warning in config.warnings:
            log.warning("%s", warning)
        previous = self.current
        if previous is not None and previous.upstream.health is not None and generation.upstream.health is not None:
            carry_over(previous.upstream.health, previous.upstream.health_slots, generation.upstream.health,
                       generation.upstream.health_slots)
        self._spawn_all(generation)
        self.current = generation
        if previous is not None:
            self.old.append(previous)
            for pid in previous.pids:
                _signal(pid, RETIRE_SIGNAL)
            for pid in previous.aux.values():
                _signal(pid, signal.SIGTERM)
        self.listeners.retain_only(config.server.https, config.server.http)
        log.info("reloaded: %d workers, %d sites", len(generation.pids), len(config.sites))

    def _reap(self) -> None:
        """Collect exited workers; restart those of the current generation that died unexpectedly."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for old in self.old:
                old.pids.discard(pid)
                old.aux = {name: p for name, p in old.aux.items() if p != pid}
            for gone in [g for g in self.old if not g.all_pids]:
                if gone.upstream.health is not None:
                    gone.upstream.health.close()
            self.old = [g for g in self.old if g.all_pids]
            current = self.current
            aux_name = next((n for n, p in current.aux.items() if p == pid), None) if current is not None else None
            if current is not None and aux_name is not None:
                del current.aux[aux_name]
                if not self.stopping:
                    log.error("%s %d exited unexpectedly (status %d); starting a new one in %.0f s",
                              aux_name, pid, status, _AUX_RESPAWN)
                    self.aux_respawn_at[aux_name] = time.monotonic() + _AUX_RESPAWN
            elif current is not None and pid in current.pids:
                current.pids.discard(pid)
                if not self.stopping:
                    self._schedule_respawn(pid, status)

    def _schedule_respawn(self, pid: int, status: int) -> None:
        now = time.monotonic()
        if now - self.last_crash > _CRASH_WINDOW:
            self.crashes = 0
        self.crashes += 1
        self.last_crash = now
        delay = min(_RESPAWN_FIRST * 2 ** (self.crashes - 1), _RESPAWN_MAX)
        self.respawns += 1
        self.respawn_at = now + delay
        log.error("worker %d exited unexpectedly (status %d); starting a new one in %.1f s", pid, status, delay)

    def _respawn_due(self) -> None:
        current = self.current
        for name, at in list(self.aux_respawn_at.items()):
            if time.monotonic() >= at and current is not None:
                del self.aux_respawn_at[name]
                if not self.stopping and name not in current.aux:
                    self._spawn_aux(current, name)
        if self.respawns and not self.stopping and time.monotonic() >= self.respawn_at and self.current is not None:
            for _ in range(self.respawns):
                self._spawn(self.current)
            self.respawns = 0

    def shutdown(self) -> int:
        """Drain every worker (they finish in-flight requests within drain_timeout), then exit."""
        self.stopping = True
        generations = [g for g in [self.current, *self.old] if g is not None]
        pids = {pid for g in generations for pid in g.all_pids}
        log.info("shutting down: draining %d workers", len(pids))
        # Close our copies of the listeners so new connections are refused, not left waiting in a backlog.
        self.listeners.retain_only((), ())
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        config = self.current.config if self.current is not None else self._initial
        deadline = time.monotonic() + config.server.drain_timeout + _KILL_GRACE
        while pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                pids.discard(pid)
            else:
                time.sleep(0.05)
        for pid in pids:
            log.error("worker %d did not drain in time; killing it", pid)
            _signal(pid, signal.SIGKILL)
        log.info("stopped")
        return 0


def _fork(run: Callable[[], int]) -> int:
    """Start a child that runs `run` with the signals unblocked and exits with its code; returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            code = run()
        except BaseException:
            log.exception("process %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _upstream_setup(config: Config) -> UpstreamSetup:
    """Origin-side state made before forking: TLS contexts (checked now, so a bad reload keeps the old config), the
    shared health table, the sticky-cookie key and the cache's shared invalidation counters."""
    contexts = origin_ssl_contexts(config)
    slots = health_slots(config)
    pools = [pool for site in config.sites for pool in site.pools]
    sticky_key = load_or_create_sticky_key(config.server.state_dir) if any(p.sticky for p in pools) else b""
    return UpstreamSetup(
        contexts=contexts,
        health=SharedHealth(len(slots)) if slots else None,
        health_slots=slots,
        sticky_key=sticky_key,
        cache_generations=_cache_generations(config),
    )


def _cache_generations(config: Config) -> Generations | None:
    """The shared invalidation counters when a site caches; the disk tier's directory is checked here, before
    forking, so an unusable one stops a start (or a reload) with its reason instead of killing every worker."""
    if not any(site.cache.enabled for site in config.sites):
        return None
    storage = config.cache
    DiskTier(storage.path if storage.path is not None else config.server.state_dir / "cache", storage.disk_size)
    return Generations()


def _store_with_certificates(config: Config) -> Store | None:
    """The store, when a site keeps its certificate there; each such site gets a temporary one if it has none yet."""
    managed = [site for site in config.sites if site.managed_certificate is not None]
    if not managed:
        return None
    store = open_store(config.server.state_dir)
    try:
        for site in managed:
            ensure_temporary(store, site.name, site.hosts)
    except StoreError as exc:
        raise TlsSetupError([Problem(config.path, "server.state_dir", str(exc))]) from None
    return store


def _signal(pid: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signo)
