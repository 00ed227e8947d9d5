"""The health monitor: one process per configuration generation that checks every health-checked origin server.

Checks run here, once per edge, rather than in each worker: N workers checking would multiply the load on origins
by N and could disagree about which server is up. The monitor publishes each transition in the `SharedHealth`
mapping the workers read, logs it once, and writes ``state_dir/run/health.json`` every second for `tlsedge status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvloop

from tlsedge.config.schema import Config, HealthCheck, Origin, PoolConfig, SiteConfig
from tlsedge.control.status import run_dir, write_json_atomic
from tlsedge.upstream.health import HealthState, ProbeResult, probe
from tlsedge.upstream.proxy_protocol import proxy_v2_local
from tlsedge.upstream.shared import SharedHealth, health_slots

log = logging.getLogger("tlsedge.monitor")

TlsFor = Callable[[SiteConfig, PoolConfig, Origin], tuple[ssl.SSLContext | None, str | None]]
WRITE_INTERVAL = 1.0  # seconds between two writes of health.json
PARENT_CHECK = 0.5  # seconds between two checks that the control process is still there


@dataclass(slots=True)
class Target:
    """One server of one health-checked pool: how to check it, its rise/fall state and what the last check said."""

    site: str
    pool: str
    origin: Origin
    slot: int
    check: HealthCheck
    host: str  # Host header of the check
    ssl_context: ssl.SSLContext | None
    server_name: str | None
    state: HealthState
    preface: bytes = b""  # sent before TLS: a PROXY v2 LOCAL header for pass-through origins that expect one
    checks: int = 0
    failed: int = 0
    last_check: float | None = None  # unix time
    last_reason: str = ""
    last_latency: float | None = None  # seconds
    since: float | None = None  # unix time of the last transition

    @property
    def label(self) -> str:
        return f"site {self.site} pool {self.pool} server {self.origin}"

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "pool": self.pool,
            "server": str(self.origin),
            "state": "up" if self.state.up else "down",
            "since": self.since,
            "last_check": self.last_check,
            "reason": self.last_reason,
            "latency_ms": None if self.last_latency is None else round(self.last_latency * 1000, 3),
            "consecutive_ok": self.state.successes,
            "consecutive_failed": self.state.failures,
            "checks": self.checks,
            "checks_failed": self.failed,
        }


def check_host(site: SiteConfig, check: HealthCheck, origin: Origin) -> str:
    """Host header of a check: the configured one, else the site's first exact name, else the origin's address."""
    if check.host:
        return check.host
    for name in site.hosts:
        if not name.startswith("*."):
            return name
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return f"{host}:{origin.port}"


def build_targets(config: Config, shared: SharedHealth, tls_for: TlsFor) -> list[Target]:
    """Every server of every pool with a `health` table, in the slot order of `health_slots`.

    Each starts in the state ``shared`` holds: up, unless the supervisor carried a down state over from the previous
    generation (then it needs ``rise`` good checks, and its first success is published like any transition).
    """
    slots = health_slots(config)
    targets: dict[int, Target] = {}
    for site in config.sites:
        for pool in site.pools:
            if pool.health is None:
                continue
            for server in pool.servers:
                slot = slots[(site.name, pool.name, str(server.origin))]
                if slot in targets:
                    continue
                ssl_context, server_name = tls_for(site, pool, server.origin)
                host = check_host(site, pool.health, server.origin)
                preface = b""
                if site.passthrough is not None:
                    server_name = host.rsplit(":", 1)[0]  # checked as clients reach it: by the site name
                    preface = proxy_v2_local() if site.passthrough.proxy_protocol else b""
                targets[slot] = Target(
                    site=site.name,
                    pool=pool.name,
                    origin=server.origin,
                    slot=slot,
                    check=pool.health,
                    host=host,
                    ssl_context=ssl_context,
                    server_name=server_name,
                    state=HealthState(pool.health.rise, pool.health.fall, shared.is_up(slot)),
                    preface=preface,
                )
    return list(targets.values())


def record(target: Target, result: ProbeResult, shared: SharedHealth, now: float) -> None:
    """Account one check; on a transition publish it to the workers and log it (once: only transitions log)."""
    target.checks += 1
    if not result.ok:
        target.failed += 1
    target.last_check = now
    target.last_reason = result.reason
    target.last_latency = result.latency
    if not target.state.record(result.ok):
        return
    target.since = now
    shared.set_up(target.slot, target.state.up)
    if target.state.up:
        log.warning("%s is UP again: %s (%d checks passed)", target.label, result.reason, target.state.successes)
    else:
        log.warning("%s is DOWN: %s (%d checks failed)", target.label, result.reason, target.state.failures)


async def _check_forever(target: Target, shared: SharedHealth) -> None:
    """Check one server every `interval`, counted from the start of each check so slow checks do not drift it."""
    loop = asyncio.get_running_loop()
    interval = target.check.interval
    await asyncio.sleep(random.random() * interval)  # spread the checks so they do not all fire at once
    while True:
        started = loop.time()
        result = await probe(target.origin, target.check, target.ssl_context, target.server_name, target.host,
                             target.preface)
        record(target, result, shared, time.time())
        await asyncio.sleep(max(0.0, started + interval - loop.time()))


def _report_crash(target: Target, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("health checks of %s stopped: %r", target.label, task.exception())


class _JsonWriter:
    """Writes health.json, logging a failure (full disk, permissions) once rather than every second."""

    def __init__(self, config: Config) -> None:
        self.path = run_dir(config.server.state_dir) / "health.json"
        self.error: str | None = None

    def write(self, targets: list[Target]) -> None:
        try:
            write_json_atomic(self.path, {"pid": os.getpid(), "time": time.time(),
                                          "servers": [t.as_json() for t in targets]})
        except OSError as exc:
            if str(exc) != self.error:
                log.error("cannot write %s (tlsedge status will not show health checks): %s", self.path, exc)
            self.error = str(exc)
        else:
            self.error = None


async def monitor(config: Config, shared: SharedHealth, tls_for: TlsFor, stop: asyncio.Event, *,
                  write_interval: float = WRITE_INTERVAL, on_tick: Callable[[], object] | None = None) -> None:
    """Check every health-checked server until ``stop`` is set; the in-process core of `run_monitor`.

    ``on_tick`` runs every ``write_interval`` (the supervisor uses it to follow origin CA revocations, so checks
    refuse a revoked origin certificate as requests do).
    """
    targets = build_targets(config, shared, tls_for)
    writer = _JsonWriter(config)
    tasks = []
    for target in targets:
        task = asyncio.create_task(_check_forever(target, shared))
        task.add_done_callback(lambda t, target=target: _report_crash(target, t))
        tasks.append(task)
    log.info("health monitor started: %d servers to check", len(targets))
    try:
        while not stop.is_set():
            writer.write(targets)
            if on_tick is not None:
                on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), write_interval)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the control process is gone (we were re-parented), as workers do."""
    while not stop.is_set():
        await asyncio.sleep(PARENT_CHECK)
        if os.getppid() != parent:
            log.error("control process is gone; health monitor %d exits", os.getpid())
            stop.set()


async def _run(config: Config, shared: SharedHealth, tls_for: TlsFor, parent: int,
               on_tick: Callable[[], object] | None) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent, stop))
    try:
        await monitor(config, shared, tls_for, stop, on_tick=on_tick)
    finally:
        watcher.cancel()


def run_monitor(config: Config, shared: SharedHealth, tls_for: TlsFor,
                on_tick: Callable[[], object] | None = None) -> int:
    """Entry point of the forked monitor process; returns its exit code. SIGTERM stops it."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the control process, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload starts a new monitor; this one gets SIGTERM
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        uvloop.run(_run(config, shared, tls_for, parent, on_tick))
    except OSError:
        log.exception("health monitor %d failed", os.getpid())
        return 1
    return 0
