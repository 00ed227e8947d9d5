"""Bans like fail2ban's or Banjax's: repeated offenses ban a client address for a period that grows with each ban.

Offenses (a WAF block, a rate-limit hit, a failed challenge...) are counted in the `SharedTable`, so every worker's
offenses add up: ``threshold`` of them within ``window`` seconds (a fixed window from the first one) ban the address.
The ban lasts ``duration * factor ** previous`` seconds, capped at ``max_duration``, where ``previous`` is how many
bans the address already had in that scope; that count is kept in the store for a day (or twice ``max_duration``),
so a repeat offender gets longer bans across restarts too.

Where bans live, and why
------------------------
The store holds each ban under ``bans/<scope>/<ip>`` (JSON: ip, scope, reason, created, expires, count) with a TTL
ending with the ban, and the repeat count under ``ban-counts/<scope>/<ip>``; every change publishes the topic
``bans``. Bans therefore survive restarts, are shared with the CLI (`list_bans`, `add_ban`, `remove_ban`), and reach
the other workers at their next `Bans.refresh` (the worker's sweep, twice a second). The check on the request
path, `banned_any`, is a dictionary lookup in the worker's own copy: no store read per request. The worker that
bans enforces its ban at once; if the store cannot be written, the ban is still enforced by that worker and the
error logged.

A scope is a site name or ``"*"`` (every site of the edge). Bans are per address, not per network: networks an
operator wants kept out belong in the ``deny`` lists of `guard.iprules`, which are configuration, not reactions.
Times are wall-clock seconds (``time.time()``), since they are persisted and shown to operators.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from tlsedge.guard.iprules import canonical_ip
from tlsedge.guard.shared import SharedTable
from tlsedge.store import Store, StoreError

log = logging.getLogger("tlsedge.guard")

BANS_TOPIC = "bans"
GLOBAL_SCOPE = "*"
_BAN_PREFIX = "bans/"
_COUNT_PREFIX = "ban-counts/"
_REMEMBER_AT_LEAST = 86400.0  # seconds a repeat count is kept after a ban


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """When offenses ban, and for how long; ``scope`` says whether a ban covers one site or all of them."""

    threshold: int
    window: float
    duration: float
    factor: float = 2.0
    max_duration: float = 86400.0
    scope: Literal["site", "global"] = "site"

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"ban threshold {self.threshold} must be 1 or more offenses")
        if not (self.window > 0 and self.duration > 0):
            raise ValueError("ban window and duration must be above zero seconds")
        if self.factor < 1:
            raise ValueError(f"ban factor {self.factor} must be 1 or more (each repeat ban lasts factor times longer)")
        if self.max_duration < self.duration:
            raise ValueError(f"ban max_duration {self.max_duration} is shorter than duration {self.duration}")
        if self.scope not in ("site", "global"):
            raise ValueError(f"ban scope {self.scope!r} is not 'site' or 'global'")

    def duration_of(self, count: int) -> float:
        """How long the ``count``-th ban (1 for the first) of an address lasts."""
        try:
            return min(self.duration * self.factor ** (count - 1), self.max_duration)
        except OverflowError:
            return self.max_duration

    @property
    def remember(self) -> float:
        """How long the store keeps the repeat count of an address after its last ban."""
        return max(2 * self.max_duration, _REMEMBER_AT_LEAST)


@dataclass(frozen=True, slots=True)
class Ban:
    """One banned address in one scope (a site name or ``"*"``); times are wall-clock seconds."""

    ip: str
    scope: str
    reason: str
    created: float
    expires: float
    count: int  # 1 for the address's first ban in this scope, 2 for the next...

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ban:
        data = json.loads(raw)
        return cls(str(data["ip"]), str(data["scope"]), str(data["reason"]), float(data["created"]),
                   float(data["expires"]), int(data["count"]))


class Bans:
    """A worker's view of the bans: counts offenses, bans, and answers `banned_any` from memory.

    Call `refresh` when the worker starts and in its periodic sweep: it loads the store's bans when the ``bans``
    topic moved (bans by other workers, by the CLI, or from before a restart) and drops expired ones.
    """

    def __init__(self, store: Store, table: SharedTable) -> None:
        self._store = store
        self._table = table
        self._active: dict[tuple[str, str], Ban] = {}  # (scope, ip) -> ban
        self._seen: int | None = None  # topic version of the last load; None: never loaded

    def banned(self, scope: str, ip: str, now: float) -> Ban | None:
        """The ban in force on ``ip`` in ``scope`` (a site name or ``"*"``), or None."""
        if not self._active:
            return None
        ban = self._active.get((scope, canonical_ip(ip)))
        return ban if ban is not None and ban.expires > now else None

    def banned_any(self, site: str, ip: str, now: float) -> Ban | None:
        """The ban in force on ``ip`` for ``site``: an edge-wide one first, then one of the site."""
        if not self._active:
            return None
        ip = canonical_ip(ip)
        ban = self._active.get((GLOBAL_SCOPE, ip))
        if ban is not None and ban.expires > now:
            return ban
        ban = self._active.get((site, ip))
        return ban if ban is not None and ban.expires > now else None

    def offense(self, scope: str, ip: str, reason: str, policy: BanPolicy, now: float) -> Ban | None:
        """Count an offense of ``ip`` in ``scope``; the ban it led to, or None.

        Every ``threshold``-th offense within the window bans (exactly one worker sees that count, since the count
        is shared); offenses of an address this worker already bans are not counted. Creating a ban writes the
        store (milliseconds); offenses that do not ban touch only the shared table (a microsecond).
        """
        ip = canonical_ip(ip)
        if self.banned(scope, ip, now) is not None:
            return None
        count = self._table.hit(b"o\0%s\0%s" % (scope.encode(), ip.encode()), policy.window, now)
        if count % policy.threshold:
            return None
        return self.ban_now(scope, ip, reason, policy, now)

    def ban_now(self, scope: str, ip: str, reason: str, policy: BanPolicy, now: float) -> Ban:
        """Ban ``ip`` in ``scope`` at once (a rate-limit rule whose action is "ban", or the threshold reached).

        A ban already in the store for that address (written by another worker within the last sweep) is adopted
        as it is rather than stacked, so one burst of offenses seen by several workers bans once.
        """
        ip = canonical_ip(ip)
        try:
            ban = _stored_ban(self._store, scope, ip, now) or _write_ban(
                self._store, scope, ip, reason, policy.duration_of, policy.remember, now)
        except StoreError as exc:
            ban = Ban(ip, scope, reason, now, now + policy.duration, 1)
            log.error("ban of %s in scope %s enforced by this worker only: %s", ip, scope, exc)
        self._active[(scope, ip)] = ban
        return ban

    def refresh(self, now: float) -> None:
        """Load the store's bans if the ``bans`` topic moved since the last load; drop the expired ones."""
        try:
            version = self._store.topic_version(BANS_TOPIC)
            if version != self._seen:
                self._active = {(ban.scope, ban.ip): ban for ban in list_bans(self._store, now)}
                self._seen = version
                return
        except StoreError as exc:
            log.error("bans not refreshed, keeping the %d known: %s", len(self._active), exc)
        if any(ban.expires <= now for ban in self._active.values()):
            self._active = {key: ban for key, ban in self._active.items() if ban.expires > now}


# --- what the CLI offers on top of the store ---------------------------------------------------------------------


def list_bans(store: Store, now: float | None = None) -> list[Ban]:
    """Every ban in force, by scope then address; unreadable records are skipped with a warning."""
    if now is None:
        now = time.time()
    bans = []
    for key, entry in store.scan(_BAN_PREFIX).items():
        try:
            ban = Ban.from_json(entry.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("store record %s is not a ban (%s); ignored", key, exc)
            continue
        if ban.expires > now:
            bans.append(ban)
    return sorted(bans, key=lambda ban: (ban.scope, ban.ip))


def add_ban(store: Store, scope: str, ip: str, duration: float, reason: str, now: float | None = None) -> Ban:
    """Ban one address by hand for ``duration`` seconds (it counts as a ban for later repeat durations).

    ``scope`` is a site name or ``"*"`` for every site. ValueError for a network, a bad address or duration.
    """
    if now is None:
        now = time.time()
    _check_scope(scope)
    address = parse_ban_address(ip)
    if not duration > 0:
        raise ValueError(f"ban duration {duration} must be above zero seconds")
    return _write_ban(store, scope, address, reason, lambda count: duration, max(2 * duration, _REMEMBER_AT_LEAST),
                      now)


def remove_ban(store: Store, scope: str, ip: str) -> bool:
    """Lift the ban of ``ip`` in ``scope`` and forget its repeat count (a pardon); False when it was not banned.

    Workers stop enforcing it at their next refresh.
    """
    _check_scope(scope)
    address = parse_ban_address(ip)
    existed = store.delete(f"{_BAN_PREFIX}{scope}/{address}")
    store.delete(f"{_COUNT_PREFIX}{scope}/{address}")
    if existed:
        store.publish(BANS_TOPIC)
    return existed


def parse_ban_address(text: str) -> str:
    """The canonical form of one IP address (as `banned_any` looks it up); ValueError explains what is accepted."""
    text = text.strip()
    if "/" in text:
        raise ValueError(f"{text!r} is a network; bans are per address (put networks in an [ip_rules] deny list)")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address; write e.g. '192.0.2.7' or '2001:db8::7'") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _check_scope(scope: str) -> None:
    if not scope or "/" in scope:
        raise ValueError(f"ban scope {scope!r} must be a site name or '*' (every site)")


def _stored_ban(store: Store, scope: str, ip: str, now: float) -> Ban | None:
    entry = store.get(f"{_BAN_PREFIX}{scope}/{ip}")
    if entry is None:
        return None
    try:
        ban = Ban.from_json(entry.value)
    except (ValueError, KeyError, TypeError):
        return None
    return ban if ban.expires > now else None


def _write_ban(store: Store, scope: str, ip: str, reason: str, duration_of: Callable[[int], float], remember: float,
               now: float) -> Ban:
    """Store a new ban whose duration depends on the address's repeat count; publish it."""
    entry = store.get(f"{_COUNT_PREFIX}{scope}/{ip}")
    try:
        previous = int(entry.value) if entry is not None else 0
    except ValueError:
        previous = 0
    count = previous + 1
    duration = duration_of(count)
    ban = Ban(ip, scope, reason, now, now + duration, count)
    store.put(f"{_BAN_PREFIX}{scope}/{ip}", ban.to_json(), ttl=duration)
    store.put(f"{_COUNT_PREFIX}{scope}/{ip}", str(count).encode(), ttl=max(remember, duration))
    store.publish(BANS_TOPIC)
    return ban
