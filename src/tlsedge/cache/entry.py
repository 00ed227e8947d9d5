"""What the cache keeps about one stored response: its identity, its header fields and the facts its policy needs.

The freshness facts (lifetime, the age it had on arrival, how long it may be served stale) are computed once when the
response is stored or revalidated, so a hit only adds the time since it arrived and compares two numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CacheEntry:
    """Metadata of one stored response: one variant (secondary key) of one primary key.

    All times are wall-clock seconds (``time.time()``): entries outlive a process, and on disk they are shared by
    the workers.
    """

    key: bytes  # primary cache key: scheme, host, path and query as the site's key options shape them
    variant: bytes  # secondary key built from the request fields the response's Vary names (b"": no Vary)
    site: str
    url: bytes  # b"https://host/path?query" as the client asked: what purge by URL and by prefix compare
    status: int
    headers: list[tuple[bytes, bytes]]  # stored fields: no hop-by-hop ones, no Age, no targeted cache fields
    vary: tuple[bytes, ...]  # lower-cased names of the request fields the response varies on
    tags: tuple[bytes, ...]  # Cache-Tag values, for purge by tag
    request_time: float  # when the request that produced the response was sent to the origin
    response_time: float  # when its head arrived
    initial_age: float  # corrected_initial_age (RFC 9111 section 4.2.3)
    lifetime: float  # freshness lifetime in seconds (RFC 9111 section 4.2.1), after any operator override
    stale_while_revalidate: float  # seconds past the lifetime a stale copy may be served while it is refreshed
    stale_if_error: float  # seconds past the lifetime a stale copy may be served when the origin fails
    no_cache: bool  # validate with the origin before every use (unqualified no-cache)
    must_revalidate: bool  # must-revalidate, proxy-revalidate or s-maxage: never served stale
    etag: bytes | None
    last_modified: bytes | None
    body_size: int
    # Kept in memory only (never stored): the header block a hit writes, built on first use, and the shared
    # invalidation generation of the key when this copy was read or stored (see cache/generations.py).
    block: bytes = b""
    generation: int = 0

    def age(self, now: float) -> float:
        """current_age of RFC 9111 section 4.2.3: the age on arrival plus the time it has been resident."""
        return self.initial_age + max(0.0, now - self.response_time)
