"""Origin responses that fill the cache with no client attached: background refreshes and orphaned fills.

A stale-while-revalidate hit answers the client from the stale copy and sends one conditional request of its own;
a leader whose client disconnected hands its origin connection over so the requests collapsed onto it still get
their response. Both are an `OriginFeed`: the receiving end of an origin connection that only feeds the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tlsedge.cache.fill import PENDING
from tlsedge.edge.cache_phase import CacheRequest, decide, refresh_copy, sent_at, start_fill

if TYPE_CHECKING:
    from tlsedge.cache.entry import CacheEntry
    from tlsedge.edge.exchange import Exchange
    from tlsedge.edge.worker import Edge
    from tlsedge.upstream.connection import OriginConnection
    from tlsedge.upstream.pool import OriginPool

log = logging.getLogger("tlsedge.cache")


class OriginFeed:
    """Implements the `OriginClient` interface of an origin connection, for a response nobody reads directly."""

    __slots__ = ("headers", "method", "pool", "refresh_key", "request_time", "state")

    def __init__(self, state: CacheRequest, method: bytes, headers: list[tuple[bytes, bytes]], pool: OriginPool,
                 request_time: float, refresh_key: bytes | None) -> None:
        self.state = state
        self.method = method
        self.headers = headers
        self.pool = pool
        self.request_time = request_time
        self.refresh_key = refresh_key  # set for a background refresh: the key to clear when it ends

    def origin_head(self, conn: OriginConnection, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        state = self.state
        site = state.site
        now = time.time()
        if status == 304 and state.entry is not None and state.revalidating:
            refresh_copy(site, state.entry, state.body, headers, self.request_time, now, state.rule)
            return
        fill = state.fill
        if fill is None or fill.state != PENDING:
            return
        entry, reason = decide(site, state, self.method, status, headers, self.headers, self.request_time, now)
        if entry is None:
            fill.uncacheable(reason)
            state.fill = None
            return
        start_fill(site, fill, entry, headers)

    def origin_body(self, body: bytes) -> None:
        fill = self.state.fill
        if fill is not None:
            fill.add(body)

    def origin_done(self, conn: OriginConnection, reusable: bool) -> None:
        fill = self.state.fill
        if fill is not None:
            fill.complete()
        if reusable:
            self.pool.release(conn)
        else:
            conn.abort()
        self._end()

    def origin_lost(self, conn: OriginConnection, reason: str) -> None:
        self._failed(f"origin {self.pool.label}: {reason}")

    def origin_timeout(self, conn: OriginConnection) -> None:
        conn.abort()
        self._failed(f"origin {self.pool.label} timed out")

    def origin_upgraded(self, conn: OriginConnection, headers: list[tuple[bytes, bytes]]) -> None:
        conn.abort()
        self._failed("the origin switched protocols")

    def tunnel_from_origin(self, data: bytes) -> None:
        return

    def flush(self) -> None:
        return

    def pause_origin_writes(self) -> None:
        return

    def resume_origin_writes(self) -> None:
        return

    def _failed(self, reason: str) -> None:
        fill = self.state.fill
        if fill is not None:
            fill.fail("origin-failed")
        if self.refresh_key is not None:
            log.warning("site %s: background refresh failed: %s", self.state.site.site, reason)
        self._end()

    def _end(self) -> None:
        if self.refresh_key is not None:
            self.state.site.runtime.refreshing.discard(self.refresh_key)
            self.refresh_key = None


def adopt(ex: Exchange, state: CacheRequest, origin: OriginConnection) -> None:
    """Take over a leader's origin connection after its client left."""
    request_time = sent_at(ex, time.time())
    origin.client = OriginFeed(state, ex.method, ex.headers, ex.pool, request_time, None)
    if not origin.closed:
        origin.transport.resume_reading()  # the leader's slow client may have paused it


def refresh(edge: Edge, ex: Exchange, state: CacheRequest, entry: CacheEntry, body: bytes, head: bytes) -> None:
    """Send a background conditional request for a stale-while-revalidate hit (one per key at a time)."""
    runtime = state.site.runtime
    server = ex.group.pick(ex.hash_key, None)
    if server is None:
        return
    own = CacheRequest(state.site)
    own.key, own.rule, own.entry, own.body, own.revalidating = state.key, state.rule, entry, body, True
    if state.key not in runtime.fills:  # a 200 instead of a 304 is stored through a fill of its own
        own.fill = runtime.begin_fill(state.site.site, state.key, state.site.config.max_object_size)
    runtime.refreshing.add(state.key)
    pool = server.conns
    feed = OriginFeed(own, b"GET", list(ex.headers), pool, time.time(), state.key)
    conn = pool.acquire()
    if conn is not None:
        conn.send(feed, head, head_request=False, upgrade=False, now=edge.loop.time())
        return

    def connected(task: asyncio.Task) -> None:
        if edge.draining or task.cancelled() or task.exception() is not None:
            feed._failed(f"connecting failed: {task.exception() if not task.cancelled() else 'cancelled'}")
            return
        task.result().send(feed, head, head_request=False, upgrade=False, now=edge.loop.time())

    edge.loop.create_task(pool.connect()).add_done_callback(connected)
