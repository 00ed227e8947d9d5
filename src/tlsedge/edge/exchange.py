"""The context one request carries through the phases: routing decisions, framing, timings and outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlsedge.pipeline.site import SiteRuntime
    from tlsedge.upstream.connection import OriginConnection
    from tlsedge.upstream.pool import OriginPool


class Exchange:
    """One request and its response on a client connection; also the source of its access log line."""

    __slots__ = (
        "answered",
        "attempts",
        "body_done",
        "body_limit",
        "bytes_in",
        "bytes_out",
        "chunked_upload",
        "client_ip",
        "error",
        "expect_continue",
        "finished",
        "has_body",
        "head",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "method",
        "origin",
        "origin_eof_ends_body",
        "pending",
        "pending_bytes",
        "pool",
        "redirect",
        "reject",
        "replay",
        "request_id",
        "response_chunked",
        "response_started",
        "reused",
        "site",
        "start",
        "status",
        "t_head",
        "t_upstream",
        "target",
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
        self.pool: OriginPool | None = None
        self.origin: OriginConnection | None = None
        self.attempts = 0
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
