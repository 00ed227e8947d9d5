"""A pool of origin servers, per worker: choosing a server (stickiness, balancing, backups), queueing when every
server is at its connection limit, and the pool's retry budget.

A request that finds a server with a free slot is dispatched at once; when every usable server is full it waits in
the pool's queue (FIFO) until a connection is freed or `queue_timeout` passes. Queued requests hold no task and no
timer: the worker's sweep expires them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from tlsedge.upstream.balance import make_balancer
from tlsedge.upstream.budget import RetryBudget
from tlsedge.upstream.sticky import cookie_value

if TYPE_CHECKING:
    from tlsedge.config.schema import PoolConfig
    from tlsedge.edge.exchange import Exchange
    from tlsedge.upstream.server import UpstreamServer
    from tlsedge.upstream.sticky import StickyCookie


class Waiter(Protocol):
    """A client connection with a request waiting for a free server."""

    closed: bool

    def dispatch_queued(self, ex: Exchange) -> None: ...
    def queue_timed_out(self, ex: Exchange) -> None: ...


def _free(server: UpstreamServer) -> bool:
    return server.usable and not server.full


class ServerPool:
    """Runtime of one `[[site.pool]]` in one worker."""

    __slots__ = (
        "backup_balancer",
        "backups",
        "balancer",
        "budget",
        "by_key",
        "config",
        "hash_key",
        "hash_on",
        "name",
        "primaries",
        "queue",
        "servers",
        "sticky",
    )

    def __init__(self, config: PoolConfig, servers: list[UpstreamServer], sticky: StickyCookie | None) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self.primaries = [s for s in servers if not s.backup]
        self.backups = [s for s in servers if s.backup]
        self.balancer = make_balancer(config.balance, self.primaries, config.hash_method)
        self.backup_balancer = make_balancer(config.balance, self.backups, config.hash_method) if self.backups else None
        self.by_key = {s.key: s for s in servers}
        self.sticky = sticky
        self.hash_on = config.hash_on if config.balance == "hash" else None
        self.hash_key = config.hash_key.encode() if config.hash_key else b""
        self.budget = RetryBudget(config.retry_budget)
        self.queue: deque[tuple[Waiter, Exchange, float]] = deque()
        for server in servers:
            server.conns.free_listeners.append(self.wake)

    def hash_key_of(self, headers: list[tuple[bytes, bytes]], target: bytes, client_ip: bytes) -> bytes | None:
        """The value consistent hashing uses for a request (None: the request lacks it, so plain balancing)."""
        source = self.hash_on
        if source == "client_ip":
            return client_ip
        if source == "uri":
            return target
        name = self.hash_key
        if source == "header":
            for key, value in headers:
                if key.lower() == name:
                    return value
            return None
        return cookie_value([value for key, value in headers if key.lower() == b"cookie"], name)

    def pick(self, key: bytes | None, tried: list[UpstreamServer] | None) -> UpstreamServer | None:
        """A server with a free slot for a request, never one already tried; backups only when no primary is up."""
        if tried:

            def available(server: UpstreamServer) -> bool:
                return server.usable and not server.full and server not in tried

        else:
            available = _free
        server = self.balancer.pick(available, key)
        if server is None and self.backup_balancer is not None and not self._primaries_left(tried):
            server = self.backup_balancer.pick(available, key)
        return server

    def _primaries_left(self, tried: list[UpstreamServer] | None) -> bool:
        """Whether a primary server is up and not yet tried by this request (else backups may take it)."""
        return any(s.usable and (not tried or s not in tried) for s in self.primaries)

    def pinned(self, server_key: str) -> UpstreamServer | None:
        """The server a valid sticky cookie names, if it can take the request (draining servers still can)."""
        server = self.by_key.get(server_key)
        if server is None or not server.up or server.full:
            return None
        return server

    def waiting_helps(self, tried: list[UpstreamServer] | None) -> bool:
        """Whether some usable, untried server is merely full, so waiting for a slot makes sense."""
        candidates = self.primaries if self._primaries_left(tried) else self.backups
        return any(s.usable and (not tried or s not in tried) for s in candidates)

    def enqueue(self, waiter: Waiter, ex: Exchange, deadline: float) -> None:
        """Wait for a free slot until `deadline` (set once per request, so being woken and re-queued keeps it)."""
        self.queue.append((waiter, ex, deadline))

    def wake(self) -> None:
        """A connection was freed somewhere in the pool: hand it to the oldest request still waiting."""
        queue = self.queue
        while queue:
            waiter, ex, _ = queue.popleft()
            if not waiter.closed and not ex.finished:
                waiter.dispatch_queued(ex)
                return

    def sweep(self, now: float) -> None:
        """Expire queued requests past their queue_timeout; end ejections and slow starts."""
        for server in self.servers:
            server.sweep(now)
        if not self.queue:
            return
        waiting = self.queue
        self.queue = deque()
        for waiter, ex, deadline in waiting:
            if waiter.closed or ex.finished:
                continue
            if deadline <= now:
                waiter.queue_timed_out(ex)
            else:
                self.queue.append((waiter, ex, deadline))
