"""One origin server of a pool, as one worker sees it: its connections, its health and its statistics.

Health has two sources. Active checks run once per edge in the monitor process and arrive through shared memory
(`health_up`); passive checks are this worker's own experience of real requests (outlier detection): a run of
failures ejects the server for a growing period. A server that comes back is ramped up (slow start) by lowering its
`load_weight`, which the balancers read; the ramp is recomputed by the worker's sweep, not per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tlsedge.config.schema import OutlierDetection, PoolServer

if TYPE_CHECKING:
    from tlsedge.upstream.pool import OriginPool

log = logging.getLogger("tlsedge.upstream")

_SLOW_START_FLOOR = 0.1  # a returning server starts at this fraction of its weight
_LATENCY_SMOOTHING = 0.2  # weight of the newest sample in the moving average


class UpstreamServer:
    """A pool member: satisfies the balancers' ``Member`` protocol (key, weight, load_weight, active)."""

    __slots__ = (
        "backup",
        "config",
        "conns",
        "consecutive_failures",
        "drain",
        "ejected_until",
        "ejections",
        "failures",
        "health_slot",
        "health_up",
        "key",
        "latency",
        "load_weight",
        "outlier",
        "pool_name",
        "requests",
        "returned_at",
        "slow_start",
        "usable",
        "weight",
    )

    def __init__(
        self,
        config: PoolServer,
        conns: OriginPool,
        *,
        pool_name: str,
        outlier: OutlierDetection,
        slow_start: float,
        health_slot: int | None,
    ) -> None:
        self.config = config
        self.conns = conns
        self.key = str(config.origin)
        self.pool_name = pool_name
        self.weight = config.weight
        self.load_weight = float(config.weight)
        self.backup = config.backup
        self.drain = config.drain
        self.outlier = outlier
        self.slow_start = slow_start
        self.health_slot = health_slot
        self.health_up = True
        self.ejected_until = 0.0
        self.ejections = 0
        self.consecutive_failures = 0
        self.returned_at = 0.0
        self.requests = 0
        self.failures = 0
        self.latency = 0.0
        # Up (healthy and not ejected) and not draining: may be chosen by the balancer.
        self.usable = not self.drain

    @property
    def up(self) -> bool:
        """Healthy for the monitor and not ejected by this worker (draining servers are up)."""
        return self.health_up and not self.ejected_until

    @property
    def active(self) -> int:
        """Requests in flight to this server from this worker (shared by the pools that use the server)."""
        return self.conns.active

    @property
    def full(self) -> bool:
        """At max_connections with none idle: a new request would have to wait."""
        return self.conns.full

    def state(self) -> str:
        if self.drain:
            return "draining"
        if not self.health_up:
            return "down"
        return "ejected" if self.ejected_until else "up"

    # --- outcomes of real requests ----------------------------------------------------------------------------------

    def record_response(self, status: int, latency: float) -> None:
        """A response head arrived: 5xx counts towards ejection, anything else clears the failure run."""
        self.requests += 1
        self.latency = latency if not self.latency else self.latency + _LATENCY_SMOOTHING * (latency - self.latency)
        if status >= 500:
            self.failures += 1
            self._failed_once(f"answered {status}")
        else:
            self.consecutive_failures = 0

    def record_connect(self, latency: float) -> None:
        """A pass-through connection reached the server: it is answering, so its failure run ends."""
        self.requests += 1
        self.latency = latency if not self.latency else self.latency + _LATENCY_SMOOTHING * (latency - self.latency)
        self.consecutive_failures = 0

    def record_failure(self, now: float, reason: str) -> None:
        """A connect failure, a reset or a timeout."""
        self.requests += 1
        self.failures += 1
        self._failed_once(reason, now)

    def _failed_once(self, reason: str, now: float | None = None) -> None:
        self.consecutive_failures += 1
        threshold = self.outlier.consecutive_failures
        if not threshold or self.consecutive_failures < threshold or self.ejected_until:
            return
        if now is None:
            now = self.conns.loop.time()
        self.ejections += 1
        period = min(self.outlier.base_ejection * self.ejections, self.outlier.max_ejection)
        self.ejected_until = now + period
        self.consecutive_failures = 0
        self.usable = False
        log.warning(
            "pool %s server %s ejected for %.0f s after %d failures in a row (last: %s)",
            self.pool_name, self.key, period, threshold, reason,
        )

    # --- periodic upkeep ---------------------------------------------------------------------------------------------

    def set_health(self, up: bool, now: float) -> None:
        """The monitor's verdict changed."""
        if up and not self.health_up:
            self.returned_at = now
        self.health_up = up
        self._refresh(now)

    def sweep(self, now: float) -> None:
        """End an ejection that ran out, ramp the weight of a returning server, forget old ejections."""
        if self.ejected_until and self.ejected_until <= now:
            self.ejected_until = 0.0
            self.returned_at = now
            log.info("pool %s server %s returns after ejection", self.pool_name, self.key)
        elif self.ejections and not self.ejected_until and now - self.returned_at > self.outlier.max_ejection:
            self.ejections = 0  # well-behaved for a long time: the next ejection starts short again
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        self.usable = self.up and not self.drain
        ramp = self.slow_start
        if ramp and self.returned_at and now - self.returned_at < ramp:
            share = max(_SLOW_START_FLOOR, (now - self.returned_at) / ramp)
            self.load_weight = self.weight * share
        else:
            self.load_weight = float(self.weight)

    def stats(self) -> dict[str, object]:
        return {
            "pool": self.pool_name,
            "server": self.key,
            "state": self.state(),
            "active": self.conns.active,
            "connections": len(self.conns.connections),
            "requests": self.requests,
            "failures": self.failures,
            "ejections": self.ejections,
            "latency_ms": round(self.latency * 1000, 3),
            "tls_resumed": self.conns.tls_resumed,
        }
