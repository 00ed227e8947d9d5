"""When to order: renewal times and backoff after failures, as pure functions of the stored state and the clock.

Renew when ``renew_remaining`` (a third by default, as Caddy and certbot do) of the lifetime is left, or inside the
window the CA suggests over ARI when it offers one. After a failure wait exponentially longer (with jitter, so a
fleet of edges does not retry in step), never less than the CA's Retry-After, and never so long that a short-lived
certificate (days, hours, minutes in tests) expires while we wait.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime

from tlsedge.config.schema import AcmeSettings
from tlsedge.pki.site_certs import CertificateStatus, StoredCertificate

_RATE_LIMIT_PAUSE = 3600.0  # a rate-limited order without Retry-After waits at least this (capped by retry_max)
_MIN_DELAY = 1.0


def scheduled_renewal(stored: StoredCertificate, settings: AcmeSettings) -> datetime:
    """The renewal time from the lifetime alone: ``renew_remaining`` of it before not-after."""
    return stored.not_after - (stored.not_after - stored.not_before) * settings.renew_remaining


def order_due(
    stored: StoredCertificate | None,
    wanted: Sequence[str],
    settings: AcmeSettings,
    status: CertificateStatus,
    now: float,
) -> float:
    """Wall-clock time at which the next order should start (``<= now``: at once)."""
    if stored is None or stored.source != "acme" or set(stored.names) != set(wanted) or status.renew_requested:
        due = now
    elif status.ari_renew_at is not None:
        due = min(status.ari_renew_at, stored.not_after.timestamp())
    else:
        due = (stored.renew_at or scheduled_renewal(stored, settings)).timestamp()
    if status.next_attempt is not None:
        due = max(due, status.next_attempt)
    return due


def backoff(
    failures: int,
    settings: AcmeSettings,
    *,
    retry_after: float | None,
    rate_limited: bool,
    lifetime: float | None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    delay = min(settings.retry_max, settings.retry_min * 2 ** min(failures - 1, 30))
    if lifetime:
        delay = min(delay, lifetime / 10)  # a 2-minute certificate must get several tries before it expires
    delay *= 0.5 + (rng or random).random() / 2
    if rate_limited and retry_after is None:
        delay = max(delay, min(settings.retry_max, _RATE_LIMIT_PAUSE))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(delay, _MIN_DELAY)


def ari_choice(start: float, end: float, now: float, rng: random.Random | None = None) -> float:
    """A random time in the CA's suggested window (RFC 9773 4.2); a window already past means now."""
    if end <= now:
        return now
    return max(now, start + (rng or random).random() * (end - start))
