"""Allow and deny lists of IP addresses and networks, decided in a few dictionary lookups per client.

Why this shape: a list of 10,000 networks tested one by one (``ip in network``) costs milliseconds. Instead the
networks are grouped by prefix length, each group a set of integer network values; a client's address, as an integer,
is shifted right once per prefix length present and looked up. That is at most 33 lookups for IPv4 (129 for IPv6),
and in practice the handful of lengths a list uses. Recent answers are cached, since a client sends many requests.

An address on an allow list is allowed even when a deny list also covers it: operators allow their own networks
(monitoring, offices) and must not lock themselves out with a broad deny. IPv4 clients seen through a dual-stack
socket arrive as IPv4-mapped IPv6 addresses (``::ffff:192.0.2.7``); they are matched as the IPv4 address they are,
and networks written in that form are stored as IPv4 networks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = Literal["allow", "deny"]

_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
_MAPPED_NETWORK = ipaddress.IPv6Network("::ffff:0:0/96")
_CACHE_SIZE = 4096
_MISSING = object()


def parse_network(text: str) -> Network:
    """An IP address (a network of one) or a CIDR network; ValueError says what is wrong and how to write it."""
    text = text.strip()
    if not text:
        raise ValueError("an empty string is not an IP address or network; write e.g. '192.0.2.0/24' or '2001:db8::1'")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IP address or network; write e.g. '10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'"
            ) from None
        hint = f"write the network as {str(loose)!r}"
        raise ValueError(f"{text!r} has bits set after the prefix length; {hint}") from None
    return _unmapped(network)


def _unmapped(network: Network) -> Network:
    """``::ffff:192.0.2.0/120`` is the IPv4 network 192.0.2.0/24: store it so, since clients are matched as IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_NETWORK):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFF_FFFF, network.prefixlen - 96))
    return network


def canonical_ip(ip: str) -> str:
    """The address as the rest of the guard keys it: IPv4-mapped IPv6 as plain IPv4, without an IPv6 zone.

    ``ip`` is a peer address as the kernel writes it (lower case, RFC 5952 compressed), so a prefix test suffices.
    """
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    if "%" in ip:
        return ip.partition("%")[0]
    return ip


def address_value(ip: str) -> tuple[int, int]:
    """(version, integer value) of an address, IPv4-mapped IPv6 as IPv4; ValueError when it is not an address."""
    try:
        if ":" in ip:
            packed = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
            if packed[:12] == _MAPPED_PREFIX:
                return 4, int.from_bytes(packed[12:], "big")
            return 6, int.from_bytes(packed, "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except OSError:
        raise ValueError(f"{ip!r} is not an IP address") from None


class _Matcher:
    """Networks of one family as (shift, set of network values) per prefix length, longest prefix first."""

    __slots__ = ("levels",)

    def __init__(self, networks: Iterable[Network], bits: int) -> None:
        by_length: dict[int, set[int]] = {}
        for network in networks:
            length = network.prefixlen
            by_length.setdefault(length, set()).add(int(network.network_address) >> (bits - length))
        self.levels = tuple((bits - length, frozenset(by_length[length])) for length in sorted(by_length, reverse=True))

    def __contains__(self, value: int) -> bool:
        for shift, values in self.levels:  # noqa: SIM110 (a loop: any() would build a generator per call)
            if value >> shift in values:
                return True
        return False


class IpRules:
    """Allow and deny lists; `decide` answers "allow", "deny" or None (neither list covers the address)."""

    __slots__ = ("_allow4", "_allow6", "_cache", "_deny4", "_deny6", "allow", "deny")

    def __init__(self, allow: Sequence[str | Network] = (), deny: Sequence[str | Network] = ()) -> None:
        self.allow: tuple[Network, ...] = tuple(_network(item) for item in allow)
        self.deny: tuple[Network, ...] = tuple(_network(item) for item in deny)
        self._allow4 = _Matcher((n for n in self.allow if n.version == 4), 32)
        self._allow6 = _Matcher((n for n in self.allow if n.version == 6), 128)
        self._deny4 = _Matcher((n for n in self.deny if n.version == 4), 32)
        self._deny6 = _Matcher((n for n in self.deny if n.version == 6), 128)
        self._cache: dict[str, Verdict | None] = {}

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    @classmethod
    def combine(cls, global_rules: IpRules, site_rules: IpRules) -> IpRules:
        """The rules a site enforces: both lists of both, so an allow in either wins over a deny in either.

        A site cannot deny what the edge-wide list allows (the operator's own networks), and on the request path
        the edge-wide list cannot deny what a site allows (a site's own monitoring). The edge-wide deny list is
        also applied at accept time, before the site is known: there only the edge-wide allow list exempts.
        """
        return cls(global_rules.allow + site_rules.allow, global_rules.deny + site_rules.deny)

    def decide(self, ip: str) -> Verdict | None:
        """"allow" if an allow rule covers ``ip``, else "deny" if a deny rule does, else None.

        ``ip`` is a peer address as the kernel writes it; an unparsable one raises ValueError.
        """
        verdict = self._cache.get(ip, _MISSING)
        if verdict is not _MISSING:
            return verdict  # type: ignore[return-value]
        if not (self.allow or self.deny):
            return None
        version, value = address_value(ip)
        if version == 4:
            verdict = "allow" if value in self._allow4 else "deny" if value in self._deny4 else None
        else:
            verdict = "allow" if value in self._allow6 else "deny" if value in self._deny6 else None
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()  # a client rotating addresses must not grow the cache without bound
        self._cache[ip] = verdict
        return verdict


def _network(item: str | Network) -> Network:
    return parse_network(item) if isinstance(item, str) else _unmapped(item)
