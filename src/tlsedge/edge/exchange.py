"""The context one request carries through the phases: routing decisions, framing, timings and outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlsedge.cache.fill import Fill
    from tlsedge.edge.cache_phase import CacheRequest, _Follower
    from tlsedge.edge.cache_reply import CacheReply
    from tlsedge.edge.guard_phase import BodyWait
    from tlsedge.guard.chain import GuardRequest
    from tlsedge.guard.waf import RequestCheck
    from tlsedge.pipeline.routes import Route
    from tlsedge.pipeline.site import SiteRuntime
    from tlsedge.upstream.connection import OriginConnection
    from tlsedge.upstream.group import ServerPool
    from tlsedge.upstream.pool import OriginPool
    from tlsedge.upstream.server import UpstreamServer


class Exchange:
    """One request and its response on a client connection; also the source of its access log line."""

    __slots__ = (
        "acme_answer",
        "answered",
        "attempts",
        "body_done",
        "body_limit",
        "body_wait",
        "bytes_in",
        "bytes_out",
        "cache",
        "chunked_upload",
        "client_ip",
        "decision",
        "error",
        "expect_continue",
        "fill",
        "finished",
        "follower",
        "group",
        "guard_request",
        "has_body",
        "hash_key",
        "head",
        "headers",
        "held",
        "host",
        "http10",
        "keep_alive",
        "method",
        "origin",
        "origin_eof_ends_body",
        "pending",
        "pending_bytes",
        "pool",
        "queue_deadline",
        "redirect",
        "reject",
        "replay",
        "reply",
        "request_id",
        "response_checked",
        "response_chunked",
        "response_started",
        "reused",
        "route",
        "server",
        "set_cookie",
        "site",
        "start",
        "status",
        "sticky_key",
        "t_first",
        "t_head",
        "t_upstream",
        "target",
        "tried",
        "tunnel",
        "upgrade",
        "waf",
        "waf_logged",
    )

    def __init__(self, request_id: str, start: float) -> None:
        self.request_id = request_id
        self.start = start
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b"-"
        self.target = b"-"
        self.host = b""
        self.http10 = False
        self.keep_alive = True
        self.site: SiteRuntime | None = None
        self.reject: tuple[int, str] | None = None
        self.redirect = False
        self.acme_answer: bytes | None = None  # HTTP-01: the key authorization to answer with (b"": none, 404)
        self.head = b""
        self.has_body = False
        self.chunked_upload = False
        self.expect_continue = False
        self.body_limit = 0
        self.body_done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.replay: bytes | None = None
        self.route: Route | None = None
        self.group: ServerPool | None = None  # the pool of servers the route chose
        self.server: UpstreamServer | None = None  # the server of the current attempt
        self.pool: OriginPool | None = None  # its keep-alive connections
        self.origin: OriginConnection | None = None
        self.attempts = 0
        self.tried: list[UpstreamServer] | None = None  # servers that failed this request (retries avoid them)
        self.t_first = 0.0  # loop time of the first attempt (retry_timeout counts from it)
        self.queue_deadline = 0.0  # set when the request first waits for a free server
        self.hash_key: bytes | None = None
        self.sticky_key: str | None = None  # server named by a valid sticky cookie
        self.set_cookie = b""  # Set-Cookie line pinning the client to the chosen server
        self.upgrade: bytes | None = None  # Upgrade header value of a request to tunnel (WebSocket)
        self.tunnel = False  # the origin switched protocols: bytes flow both ways unparsed
        self.reused = False
        self.status = 0
        self.response_started = False
        self.response_chunked = False
        self.origin_eof_ends_body = False
        self.answered = False
        self.finished = False
        self.error: str | None = None
        self.t_upstream = 0.0
        self.t_head = 0.0
        self.cache: CacheRequest | None = None  # the cache phase's state, on sites with the cache on
        self.fill: Fill | None = None  # the response is being stored while it streams to this client
        self.follower: _Follower | None = None  # waiting for (or reading) the fill of another request
        self.reply: CacheReply | None = None  # the response comes from the cache
        self.guard_request: GuardRequest | None = None  # set when the site's guard looked at the request
        self.decision: str | None = None  # what the guard decided, for the access log (None: nothing to say)
        self.body_wait: BodyWait | None = None  # the body is being collected for the guard's decision
        self.waf: RequestCheck | None = None  # the WAF's transaction, kept for the response head (phase 3)
        self.waf_logged = 0  # WAF matches already written to the error log
        self.held: list[tuple[str, object]] | None = None  # origin events queued while the WAF checks the response
        self.response_checked = False
