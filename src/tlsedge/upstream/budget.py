"""A retry budget: retries may add at most a fixed fraction of extra load to a pool, plus a small burst.

Why a budget and not only a per-request retry count: when every server fails, per-request retries multiply the load
by (1 + retries) exactly when the origins can least afford it (a retry storm). A token bucket filled by first attempts
and drained by retries caps the extra load at `ratio` of the traffic, whatever the failure rate (Finagle and Linkerd
use the same idea). The burst lets a quiet pool still retry its first few failures.
"""

from __future__ import annotations

DEFAULT_BURST = 10.0


class RetryBudget:
    """Token bucket: each first attempt deposits `ratio` tokens, each retry spends one."""

    __slots__ = ("burst", "ratio", "tokens")

    def __init__(self, ratio: float, burst: float = DEFAULT_BURST) -> None:
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst

    def deposit(self) -> None:
        """A request's first attempt."""
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.burst else self.burst

    def withdraw(self) -> bool:
        """Whether a retry may go ahead (and pay for it)."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
