"""Rate limits per site (GCRA over the shared table) and per-IP connection limits at accept time.

Each rule counts the requests under its ``path_prefix`` (and of its methods) per key and lets ``rate`` per second
through with bursts of ``burst``; the counters live in the `SharedTable` every worker updates, so a limit is exact
for the whole edge, not per worker. Keys:

* ``ip``: the client address (IPv4-mapped IPv6 counted as the IPv4 address).
* ``ip_prefix``: the client's /24 (IPv4) or /64 (IPv6): one IPv6 host owns a whole /64, so per-address limits
  would let it rotate addresses freely.
* ``header:<Name>`` / ``cookie:<name>``: the first such header's / cookie's value, e.g. an API key. A request
  without it is *not limited by that rule*: a client can skip such a rule by leaving the header out, so pair it
  with an ``ip`` rule when that matters.
* ``path``: the path alone (without the query), one counter per URL shared by every client: a global limit
  protecting an expensive endpoint, not a per-client one.

Paths are compared as the router compares them (`pipeline.routes.normalise_escapes`, so ``/%61pi`` is ``/api``),
with dot-segments resolved (``/x/../login`` is ``/login`` to the origin, so it is to the limits too). A request
counts against every rule it matches, in order, until one trips: that rule is the verdict.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tlsedge.guard.iprules import canonical_ip
from tlsedge.guard.shared import SharedTable
from tlsedge.pipeline.routes import has_dot_segment, normalise_escapes

Action = Literal["reject", "challenge", "ban"]
ACTIONS: tuple[str, ...] = ("reject", "challenge", "ban")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_EXAMPLE = "write a count per second, minute or hour, e.g. '10/s', '600/m' or '1000/h'"
_IP, _IP_PREFIX, _PATH, _HEADER, _COOKIE = range(5)
_COUNT_TTL = 3600.0  # a connection count nobody touched for an hour lapses (a crashed worker never released it)


def parse_rate(text: str) -> float:
    """Requests per second from ``"10/s"``, ``"100/m"`` or ``"1000/h"``; ValueError says what is wrong."""
    count, slash, unit = text.strip().partition("/")
    per = _UNITS.get(unit.strip().lower())
    if not slash or per is None:
        raise ValueError(f"{text!r} is not a rate; {_RATE_EXAMPLE}")
    try:
        number = float(count.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a rate: {count.strip()!r} is not a number; {_RATE_EXAMPLE}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{text!r}: a rate must be a number above zero; {_RATE_EXAMPLE} (to refuse a path "
                         "altogether, use an IP deny rule or the origin)")
    return number / per


@dataclass(frozen=True, slots=True)
class RateRule:
    """One limit of a site, as the configuration wrote it (``rate`` already in requests per second)."""

    name: str
    key: str  # "ip", "ip_prefix", "path", "header:<Name>" or "cookie:<name>"
    rate: float
    burst: int
    path_prefix: str = "/"
    methods: frozenset[bytes] | None = None  # None: every method
    action: Action = "reject"

    def __post_init__(self) -> None:
        kind, colon, name = self.key.partition(":")
        if not (self.key in ("ip", "ip_prefix", "path") or (colon and name and kind in ("header", "cookie"))):
            raise ValueError(f"rate limit {self.name!r}: key {self.key!r} is not 'ip', 'ip_prefix', 'path', "
                             "'header:<Name>' or 'cookie:<name>'")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate limit {self.name!r}: rate {self.rate!r} must be a number of requests per second "
                             "above zero")
        if self.burst < 1:
            raise ValueError(f"rate limit {self.name!r}: burst {self.burst} must be 1 or more")
        if not self.path_prefix.startswith("/"):
            raise ValueError(f"rate limit {self.name!r}: path_prefix {self.path_prefix!r} must start with '/'")
        if self.action not in ACTIONS:
            raise ValueError(f"rate limit {self.name!r}: action {self.action!r} is not one of {', '.join(ACTIONS)}")


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """The rule a request tripped; ``retry_after`` is whole seconds (at least 1), ready for ``Retry-After``."""

    rule: RateRule
    retry_after: int
    action: Action


class _Compiled:
    """A rule prepared for the hot path: byte prefixes, the key kind, the namespaced key prefix."""

    __slots__ = ("burst", "emission", "field", "kind", "methods", "namespace", "prefix", "rule")

    def __init__(self, site: str, rule: RateRule) -> None:
        self.rule = rule
        prefix = normalise_escapes(rule.path_prefix.encode())
        self.prefix = prefix if prefix != b"/" else None  # None: every path
        self.methods = rule.methods
        kind, _, name = rule.key.partition(":")
        self.kind = {"ip": _IP, "ip_prefix": _IP_PREFIX, "path": _PATH, "header": _HEADER, "cookie": _COOKIE}[kind]
        self.field = name.lower().encode() if kind == "header" else name.encode()
        self.namespace = b"r\0%s\0%s\0" % (site.encode(), rule.name.encode())
        self.emission = 1.0 / rule.rate
        self.burst = rule.burst


class RateLimiter:
    """A site's rate limits over the table shared by the workers; keys are namespaced by site and rule name."""

    __slots__ = ("_needs_path", "_rules", "_table")

    def __init__(self, table: SharedTable, site: str, rules: Sequence[RateRule]) -> None:
        self._table = table
        self._rules = tuple(_Compiled(site, rule) for rule in rules)
        self._needs_path = any(r.prefix is not None or r.kind == _PATH for r in self._rules)

    def check(self, client_ip: str, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
              now: float) -> RateVerdict | None:
        """Count the request against every rule it matches; the first rule it exceeds, or None.

        ``target`` is the origin-form request target; ``now`` is on the table's clock (see `guard.shared`).
        """
        path = request_path(target) if self._needs_path else b""
        ip: str | None = None
        gcra = self._table.gcra
        for r in self._rules:
            if r.prefix is not None and not path.startswith(r.prefix):
                continue
            if r.methods is not None and method not in r.methods:
                continue
            kind = r.kind
            if kind == _IP:
                if ip is None:
                    ip = canonical_ip(client_ip)
                value = ip.encode()
            elif kind == _IP_PREFIX:
                if ip is None:
                    ip = canonical_ip(client_ip)
                value = ip_prefix_key(ip)
            elif kind == _PATH:
                value = path
            else:
                found = _header(headers, r.field) if kind == _HEADER else _cookie(headers, r.field)
                if found is None:
                    continue
                value = found
            wait = gcra(r.namespace + value, r.emission, r.burst, now)
            if wait:
                return RateVerdict(r.rule, max(1, math.ceil(wait)), r.rule.action)
        return None


class ConnectionLimiter:
    """Per-IP limits at accept time, before any TLS work: concurrent connections and new connections per second.

    A limit of 0 is no limit. Call `closed` exactly once for every connection `admit` let in, never for one it
    refused. Counts lapse an hour after an IP's last new connection, so a worker that crashed with connections
    open cannot lock an address out for good (an IP with connections older than that may then get more).
    """

    __slots__ = ("_burst", "_concurrent", "_interval", "_table")

    def __init__(self, table: SharedTable, per_ip_concurrent: int, per_ip_rate: float, per_ip_burst: int) -> None:
        self._table = table
        self._concurrent = per_ip_concurrent
        self._interval = 1.0 / per_ip_rate if per_ip_rate > 0 else 0.0
        self._burst = max(1, per_ip_burst)

    def admit(self, ip: str, now: float) -> bool:
        """Whether a connection from ``ip`` may proceed (it is then counted as open)."""
        key = canonical_ip(ip).encode()
        if self._interval and self._table.gcra(b"cr\0" + key, self._interval, self._burst, now):
            return False
        return not self._concurrent or self._table.acquire_slot(b"cc\0" + key, self._concurrent, now=now,
                                                                expires_at=now + _COUNT_TTL)

    def closed(self, ip: str) -> None:
        """A connection `admit` let in has closed."""
        if self._concurrent:
            self._table.release_slot(b"cc\0" + canonical_ip(ip).encode())


def ip_prefix_key(ip: str) -> bytes:
    """The /24 of an IPv4 address or the /64 of an IPv6 one, as key bytes (``ip`` already `canonical_ip`)."""
    if ":" in ip:
        return b"6:" + socket.inet_pton(socket.AF_INET6, ip)[:8]
    return b"4:" + ip.rpartition(".")[0].encode()


def request_path(target: bytes) -> bytes:
    """The path of an origin-form target as the limits see it: no query, escapes normalised, dot-segments resolved."""
    path = normalise_escapes(target.partition(b"?")[0])
    return _resolve_dots(path) if has_dot_segment(path) else path


def _resolve_dots(path: bytes) -> bytes:
    """RFC 3986 remove_dot_segments over every separator an origin might honour (``/``, ``\\``, ``%2F``, ``%5C``).

    Only for matching: the origin still receives the request as sent.
    """
    unified = path.replace(b"\\", b"/").replace(b"%2F", b"/").replace(b"%5C", b"/")
    out: list[bytes] = []
    for segment in unified.split(b"/")[1:]:
        bare = segment.split(b";", 1)[0]
        if bare == b"..":
            if out:
                out.pop()
        elif bare != b".":
            out.append(segment)
    trailing = unified.endswith((b"/.", b"/..", b"/.;", b"/..;"))
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:
            return value
    return None


def _cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if len(key) == 6 and key.lower() == b"cookie":
            for part in value.split(b";"):
                cookie, eq, content = part.strip().partition(b"=")
                if eq and cookie == name:
                    return content
    return None
