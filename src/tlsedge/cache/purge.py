"""Purges: what to remove (a URL, a prefix, a tag, a site, everything), and how a purge reaches every worker.

`tlsedge purge` removes matching objects from the disk tier itself, then writes the purge to the store and bumps
the purge topic. Every worker reads the topic in its one-second sweep, removes matching objects from its memory
tier, refuses to store fills that started before the purge, and writes how many it removed under the purge's id;
the command waits for those answers so it can report per worker.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tlsedge.cache.key import base_of

if TYPE_CHECKING:
    from tlsedge.cache.entry import CacheEntry
    from tlsedge.store.base import Store

PurgeKind = Literal["url", "prefix", "tag", "site", "all"]
KINDS: tuple[str, ...] = ("url", "prefix", "tag", "site", "all")
TOPIC = "cache-purge"
RECORD_PREFIX = "cache-purge/"
ANSWER_PREFIX = "cache-purged/"
RECORD_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Purge:
    """One purge. ``value`` is the URL, prefix or tag (lower-case scheme and host for URLs), or the site's name."""

    id: str
    kind: PurgeKind
    value: bytes = b""
    site: str | None = None  # restricts url / prefix / tag purges to one site

    def matches(self, entry: CacheEntry) -> bool:
        if self.site is not None and entry.site != self.site:
            return False
        kind = self.kind
        if kind == "url":
            return base_of(entry.key) == self.value
        if kind == "prefix":
            return entry.url.startswith(self.value)
        if kind == "tag":
            return self.value in entry.tags
        if kind == "site":
            return entry.site == self.value.decode()
        return True

    def encode(self) -> bytes:
        return json.dumps(
            {"id": self.id, "kind": self.kind, "value": self.value.decode("latin-1"), "site": self.site}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Purge | None:
        try:
            raw = json.loads(data)
            if raw["kind"] not in KINDS or not isinstance(raw["id"], str):
                return None
            site = raw.get("site")
            return cls(raw["id"], raw["kind"], str(raw["value"]).encode("latin-1"), site if isinstance(site, str)
                       else None)
        except (ValueError, KeyError, TypeError):
            return None


def normalise_url(url: str) -> bytes:
    """A URL as cache keys spell it: scheme and host lower-cased, no port (keys use the Host's name), the rest
    unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f"{url!r} has no host")
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (name.endswith("]") or ":" not in name):
        host = name
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".encode("latin-1")


def publish(store: Store, purge: Purge) -> None:
    store.put(RECORD_PREFIX + purge.id, purge.encode(), ttl=RECORD_TTL)
    store.publish(TOPIC)


def pending(store: Store, seen: set[str]) -> list[Purge]:
    """Purges in the store this worker has not applied yet (in id order: ids start with the issuing time)."""
    purges = []
    for name, entry in store.scan(RECORD_PREFIX).items():
        purge_id = name[len(RECORD_PREFIX):]
        if purge_id in seen:
            continue
        purge = Purge.decode(entry.value)
        if purge is not None:
            purges.append(purge)
    return purges


def answer(store: Store, purge: Purge, pid: int, removed: int) -> None:
    store.put(f"{ANSWER_PREFIX}{purge.id}/{pid}", str(removed).encode(), ttl=RECORD_TTL)


def answers(store: Store, purge: Purge) -> dict[int, int]:
    """Worker pid -> objects it removed from its memory tier."""
    prefix = f"{ANSWER_PREFIX}{purge.id}/"
    result = {}
    for name, entry in store.scan(prefix).items():
        try:
            result[int(name[len(prefix):])] = int(entry.value)
        except ValueError:
            continue
    return result


def new_id() -> str:
    return f"{time.time():.6f}-{time.monotonic_ns() % 1_000_000:06d}"
