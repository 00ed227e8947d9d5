"""Admission at accept time: the edge-wide deny list, edge-wide bans and per-address connection limits.

These run before the TLS handshake (the acceptor peeks, see `edge.acceptor`), so a denied, banned or flooding
address costs the edge one accept and one close, not a handshake. An address on the edge-wide allow list skips them
all: operators' own networks (monitoring, an office behind one NAT address) are never locked out.
"""

from __future__ import annotations

import logging
import time

from tlsedge.config.schema import Limits
from tlsedge.guard.bans import Bans
from tlsedge.guard.iprules import IpRules
from tlsedge.guard.ratelimit import ConnectionLimiter
from tlsedge.guard.shared import SharedTable

log = logging.getLogger("tlsedge.guard")

_REFUSAL_LOG_EVERY = 10.0  # seconds between two log lines about refused connections


class Admission:
    """`admit` once per accepted connection; `closed` once per connection it admitted (see `edge.acceptor`)."""

    __slots__ = ("_bans", "_last_log", "_limiter", "_refused", "_rules")

    def __init__(self, rules: IpRules, bans: Bans | None, table: SharedTable, limits: Limits) -> None:
        self._rules = rules
        self._bans = bans
        self._limiter = (
            ConnectionLimiter(table, limits.max_connections_per_ip, limits.connection_rate_per_ip,
                              limits.connection_burst_per_ip or max(1, round(limits.connection_rate_per_ip)))
            if limits.max_connections_per_ip or limits.connection_rate_per_ip
            else None
        )
        self._refused = 0
        self._last_log = 0.0

    def admit(self, ip: str) -> bool:
        verdict = self._rules.decide(ip)
        if verdict == "allow":
            return True
        now = time.time()
        if verdict == "deny":
            return self._refuse(ip, "on the edge-wide deny list", now)
        if self._bans is not None and self._bans.banned("*", ip, now) is not None:
            return self._refuse(ip, "banned on every site", now)
        if self._limiter is not None and not self._limiter.admit(ip, now):
            return self._refuse(ip, "over its connection limits", now)
        return True

    def closed(self, ip: str) -> None:
        if self._limiter is not None and self._rules.decide(ip) != "allow":
            self._limiter.closed(ip)

    def _refuse(self, ip: str, why: str, now: float) -> bool:
        """Refusals are counted and logged at most every few seconds: a flood must not flood the log too."""
        self._refused += 1
        if now - self._last_log >= _REFUSAL_LOG_EVERY:
            log.warning("refused %d connection(s) at accept; latest: %s, %s", self._refused, ip, why)
            self._refused = 0
            self._last_log = now
        return False
