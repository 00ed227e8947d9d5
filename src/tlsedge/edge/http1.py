"""The client side of the data plane: one HTTP/1.1 connection from a client, parsed with httptools.

An `asyncio.Protocol` drives the request phases (route, answer-or-forward, stream back, log) with callbacks only;
a task is created just for connecting to an origin. Output produced while handling one read (from the client or
from the origin) is written with one call at the end of that read, so a small response is one TLS record batch.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from time import monotonic, time
from typing import TYPE_CHECKING

import httptools

from tlsedge.acme.answers import HTTP01_PREFIX, http01_answer
from tlsedge.cache.dates import format_http_date
from tlsedge.cache.fill import DONE
from tlsedge.edge import cache_phase, guard_phase
from tlsedge.edge.acceptor import CountedConnection
from tlsedge.edge.errors import NO_ORIGIN_TEXT, REDIRECT_LOOP_TEXT, error_response, redirect_response, text_response
from tlsedge.edge.exchange import Exchange
from tlsedge.edge.flexible import redirects_to_itself
from tlsedge.edge.headers import (
    FORWARDING,
    HOP_BY_HOP,
    VIA_TOKEN,
    connection_tokens,
    status_line,
)
from tlsedge.pipeline.routes import AmbiguousPath, apply_edits
from tlsedge.upstream.connection import OriginConnection
from tlsedge.upstream.pool import PoolFull
from tlsedge.upstream.tls import describe_tls_failure

if TYPE_CHECKING:
    from tlsedge.config.schema import Limits
    from tlsedge.edge.worker import Edge
    from tlsedge.pipeline.site import SiteRuntime
    from tlsedge.upstream.group import ServerPool
    from tlsedge.upstream.server import UpstreamServer

log = logging.getLogger("tlsedge.edge")

# Why the client connection's deadline is set (_TUNNEL: an upgraded connection, timed by its site's tunnel_timeout).
_IDLE, _HEAD, _BODY, _WAIT, _SEND, _TUNNEL = 0, 1, 2, 3, 4, 5
# Reasons reading from the client is paused; reading resumes when none is left.
_PAUSE_QUEUE, _PAUSE_PENDING, _PAUSE_ORIGIN = 1, 2, 4

_PENDING_HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_VIA_LINE = b"Via: " + VIA_TOKEN + b"\r\n"


def deadline_timeouts(limits: Limits) -> tuple[float, ...]:
    """The timeout of each deadline kind, indexed by _IDLE, _HEAD, _BODY, _WAIT (none: the origin works), _SEND
    (_TUNNEL is per site, set where the tunnel starts)."""
    return (limits.keepalive_timeout, limits.header_timeout, limits.body_idle_timeout, 0.0, limits.send_timeout, 0.0)


class Rejected(Exception):
    """A request the edge refuses before forwarding; raised from parser callbacks."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientConnection(CountedConnection):
    """One client connection (TLS already terminated by the transport, or plain HTTP)."""

    def __init__(self, edge: Edge, tls: bool) -> None:
        self.edge = edge
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = "-"
        self.tls_site: SiteRuntime | None = None
        self.trusted = False
        self.xfp_line = b""
        self.xff_line = b""
        self.out: list[bytes] = []
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.paused = 0
        self.write_paused = False
        self.kind_before_send = _IDLE
        self.closed = False
        self.deadline = 0.0
        self.deadline_kind = _IDLE
        self.head_bytes = 0
        self.head_raw = 0
        self.url = b""
        self.client_ip_bytes = b"-"
        # An upgrade request whose answer is awaited: what the client sends meanwhile is held in `early` and goes to
        # the origin only if it switches protocols.
        self.upgrading: Exchange | None = None
        self.early: list[bytes] = []
        self.early_bytes = 0
        # Body bytes still due for an upgrade request the edge does not tunnel: httptools ends such a request at its
        # head, so its Content-Length body is read here, never parsed as the next request.
        self.raw_body_left = 0

    # --- connection lifecycle ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = True
        edge = self.edge
        # While draining, a connection accepted before the listeners closed is still served (with Connection: close).
        if len(edge.clients) >= edge.limits.max_connections:
            transport.abort()
            self.closed = True
            return
        edge.clients.add(self)
        edge.connection_opened()
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        if edge.peer is not None and not self.tls and peer:
            # Plain HTTP: nothing was spent on the connection yet; TLS ones were admitted before their handshake.
            if not edge.peer.admit(self.client_ip):
                transport.abort()
                self.closed = True
                return
            self.counted_ip = self.client_ip
        self.client_ip_bytes = self.client_ip.encode()
        self.trusted = edge.is_trusted(self.client_ip)
        if self.tls:
            self.tls_site = edge.sites.get(edge.tls.site_of(transport.get_extra_info("ssl_object")))
        proto = b"https" if self.tls else b"http"
        self.xfp_line = b"X-Forwarded-Proto: %s\r\n" % proto
        self.xff_line = b"X-Forwarded-For: %s\r\n" % self.client_ip.encode()
        # The first request must arrive within header_timeout: an idle new connection holds a slot for nothing.
        self._arm(_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.counted_ip is not None:
            self.edge.peer.closed(self.counted_ip)
            self.counted_ip = None
        self.edge.clients.discard(self)
        ex = self.current
        if ex is not None and ex.cache is not None and not ex.finished:
            cache_phase.abandon(self, ex)
        if ex is not None and ex.waf is not None:
            guard_phase.finished(ex)
        if ex is not None and ex.tunnel:
            if ex.origin is not None:
                ex.origin.close_tunnel()
                ex.origin = None
            self._log(ex)
        elif ex is not None and not ex.finished:
            if ex.origin is not None:
                ex.origin.abort()
                ex.origin = None
            ex.status = ex.status if ex.response_started else 499
            ex.error = ex.error or "client closed the connection"
            self._log(ex)
        self.current = None
        self.queue.clear()
        self.edge.connection_closed()

    def pause_writing(self) -> None:
        """The client does not read fast enough: pause the origin, and time the client instead of the origin."""
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.origin is not None:
            ex.origin.transport.pause_reading()
            ex.origin.deadline = 0.0
        self.kind_before_send = self.deadline_kind
        self._arm(_SEND)

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.reply is not None:
            ex.reply.pump()
        if ex is not None and ex.origin is not None and not ex.origin.closed:
            ex.origin.transport.resume_reading()
            if not ex.tunnel:
                ex.origin.deadline = self.edge.loop.time() + ex.pool.timeouts.read_timeout
        if self.deadline_kind == _SEND:
            self._arm(self.kind_before_send)

    def _arm(self, kind: int) -> None:
        """Set the connection's deadline for what it is waiting for now (no deadline while the origin works)."""
        self.deadline_kind = kind
        timeout = self.edge.deadline_timeouts[kind] if kind != _TUNNEL else self.current.pool.timeouts.tunnel_timeout
        self.deadline = self.edge.loop.time() + timeout if timeout else 0.0

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.upgrading is not None:
            self._to_tunnel(data)
            return
        if self.parser is None:
            return  # a rejected request: the connection closes once the answer is out
        kind = self.deadline_kind
        if kind == _IDLE:
            self._arm(_HEAD)
        elif kind == _BODY:
            self._arm(_BODY)
        if self.raw_body_left:
            data = self._raw_body(data)
            if not data or self.parser is None:
                self.flush()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :] if exc.args and isinstance(exc.args[0], int) else b""
            upgrade = self._last_upgrade()
            if upgrade is not None:
                # What follows the head belongs to the new protocol: no more HTTP parsing on this connection.
                self.parser = None
                self.upgrading = upgrade
                if rest:
                    self._to_tunnel(rest)
                    return
            else:
                # An upgrade the edge does not tunnel (it had a body, or was refused): HTTP goes on after it.
                self.parser = httptools.HttpRequestParser(self)
                if rest and self.raw_body_left:
                    rest = self._raw_body(rest)
                if rest and self.parser is not None:
                    self.data_received(rest)
                    return
        except httptools.HttpParserError as exc:
            # httptools wraps exceptions raised by our callbacks; the original is the context.
            cause = exc.__context__
            if isinstance(cause, Rejected):
                self._reject_parse(cause.status, cause.reason)
            else:
                self._reject_parse(400, f"malformed request: {exc}")
        else:
            if self.deadline_kind == _HEAD and self.parsing is not None:
                # Still inside a request head: httptools buffers an unfinished header line without limit.
                self.head_raw += len(data)
                limits = self.edge.limits
                if self.head_raw > limits.max_header_bytes + limits.max_uri_bytes:
                    self._reject_parse(431, "request head too large")
        self.flush()

    def flush(self) -> None:
        """Write everything produced since the last flush in one call."""
        out = self.out
        if not out or self.closed:
            out.clear()
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.write(b"".join(out))
        out.clear()

    def on_timeout(self) -> None:
        """Called by the sweeper when the client deadline passed."""
        kind = self.deadline_kind
        self.deadline = 0.0
        if kind == _TUNNEL:
            ex = self.current
            ex.error = "tunnel idle for longer than tunnel_timeout"
            if ex.origin is not None:
                ex.origin.close_tunnel()
                ex.origin = None
            self._close()
            return
        if kind == _SEND:
            if self.current is not None:
                self.current.error = "client left the response unread for send_timeout"
            self.closed = True
            self.transport.abort()
            return
        idle = self.current is None and self.parsing is None
        if kind == _IDLE or idle or (self.current is not None and self.current.response_started):
            self._close()
            return
        reason = "request headers timed out" if kind == _HEAD else "request body timed out"
        ex = self.current or self.parsing
        if ex is None:
            ex = self._new_exchange()
        if ex.origin is not None:
            ex.origin.abort()
            ex.origin = None
        self._answer(ex, 408, reason, close=True)
        self.flush()
        self._close()

    def drain(self, close_idle: bool, deadline: float) -> None:
        """Stop keeping this connection alive: busy ones close after their response (Connection: close).

        On shutdown idle connections close now. When a reload retires this worker they may still send one more
        request until `deadline`, so a client that reuses its connection right after a reload is not cut off.
        """
        if self.current is not None or self.parsing is not None:
            return
        if close_idle:
            self._close()
        elif self.deadline_kind == _IDLE:
            self.deadline = min(self.deadline, deadline)

    def _close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()

    # --- request parsing (httptools callbacks) ---------------------------------------------------------------------

    def _new_exchange(self) -> Exchange:
        ex = Exchange(self.edge.next_request_id(), monotonic())
        ex.client_ip = self.client_ip
        return ex

    def on_message_begin(self) -> None:
        self.parsing = self._new_exchange()
        self.url = b""
        self.head_bytes = 0
        self.head_raw = 0
        if self.deadline_kind != _HEAD:
            self._arm(_HEAD)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.edge.limits.max_uri_bytes:
            raise Rejected(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.parsing.headers
        headers.append((name, value))
        if len(headers) > self.edge.limits.max_header_count:
            raise Rejected(431, "too many request headers")
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.edge.limits.max_header_bytes:
            raise Rejected(431, "request headers larger than max_header_bytes")
        # Integer membership: `b"\n" in value` first fails as an int lookup inside CPython (~10x slower per header).
        if 0 in value or 13 in value or 10 in value:
            raise Rejected(400, "control character in header value")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser
        ex.method = parser.get_method()
        ex.target = self.url
        ex.keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():
            ex.upgrade = b""  # the value is read with the other headers in _prepare
            self.raw_body_left = _upgrade_body_length(ex.headers)
        version = parser.get_http_version()
        ex.http10 = version == "1.0"
        if version != "1.1" and not ex.http10:
            raise Rejected(505 if version.startswith(("2", "3")) else 400, f"unsupported HTTP version {version}")
        self._prepare(ex)
        if ex.has_body and ex.reject is None and ex.site.guard is not None:
            guard_phase.prepare(ex)
        self._arm(_BODY if ex.has_body else _WAIT)
        if self.current is None:
            self.current = ex
            self._start(ex)
        else:
            self.queue.append(ex)
            self._pause(_PAUSE_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        ex.bytes_in += len(body)
        if ex.body_limit and ex.bytes_in > ex.body_limit:
            raise Rejected(413, "request body larger than max_body_size")
        if ex.answered:
            return
        if ex.body_wait is not None:
            guard_phase.body_chunk(self, ex, body)
            if ex.answered:
                return
        if ex.chunked_upload:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        origin = ex.origin
        if origin is not None:
            origin.write(body)
        else:
            ex.pending.append(body)
            ex.pending_bytes += len(body)
            if ex.pending_bytes > _PENDING_HIGH_WATER and (ex.body_wait is None or ex.body_wait.full):
                self._pause(_PAUSE_PENDING)

    def _raw_body(self, data: bytes) -> bytes:
        """Consume the body of a non-tunnelled upgrade request; return what follows it."""
        n = min(len(data), self.raw_body_left)
        self.raw_body_left -= n
        try:
            if n:
                self.on_body(data[:n])
            if not self.raw_body_left:
                self.on_message_complete()
        except Rejected as exc:
            self.raw_body_left = 0
            self._reject_parse(exc.status, exc.reason)
            return b""
        return data[n:]

    def on_message_complete(self) -> None:
        if self.raw_body_left:
            return  # httptools ends an upgrade request at its head; _raw_body reads its body and ends it
        ex = self.parsing
        self.parsing = None
        ex.body_done = True
        if self.deadline_kind == _BODY:
            self._arm(_WAIT)
        if ex.chunked_upload and not ex.answered:
            if ex.origin is not None:
                ex.origin.write(b"0\r\n\r\n")
            else:
                ex.pending.append(b"0\r\n\r\n")
        if ex.body_wait is not None and not ex.answered and guard_phase.body_end(self, ex):
            return  # the guard took its decision; an answer goes on to the next exchange itself
        if ex.finished:
            # The response went out before the body ended (an error, a redirect): now the connection can go on.
            self._next_exchange()

    def _reject_parse(self, status: int, reason: str) -> None:
        """A request that cannot be parsed safely: answer it (in order) and close the connection."""
        ex = self.parsing or self._new_exchange()
        self.parsing = None
        ex.reject = (status, reason)
        ex.keep_alive = False
        self.parser = None
        self._pause(_PAUSE_QUEUE)
        if ex is self.current:
            if ex.origin is not None:
                ex.origin.abort()
                ex.origin = None
            if ex.response_started:
                ex.error = reason
                self._log(ex)
                ex.finished = True
                self._close()
            else:
                self._answer(ex, status, reason, close=True)
        elif self.current is None:
            self.current = ex
            self._start(ex)
        else:
            self.queue.append(ex)

    # --- the request phases ----------------------------------------------------------------------------------------

    def _prepare(self, ex: Exchange) -> None:
        """Route the request and build its head towards the origin, in one pass over the headers."""
        target = ex.target
        host: bytes | None = None
        hosts = 0
        content_length: bytes | None = None
        chunked = False
        via: bytes | None = None
        xff: bytes | None = None
        kept_forwarding: set[bytes] = set()
        conn_tokens: set[bytes] | None = None
        upgrade: bytes | None = None
        forward: list[bytes] = []
        append = forward.append
        trusted = self.trusted
        for name, value in ex.headers:
            lname = name.lower()
            if lname == b"host":
                host = value
                hosts += 1
            elif lname == b"content-length":
                content_length = value
            elif lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    # Only a lone "chunked" is unambiguous; other codings would be dropped when we re-frame.
                    if value.strip().lower() != b"chunked" or ex.http10:
                        raise Rejected(400, "unsupported Transfer-Encoding")
                    chunked = True
                elif lname == b"connection":
                    tokens = connection_tokens(value)
                    if tokens:
                        conn_tokens = tokens if conn_tokens is None else conn_tokens | tokens
                elif lname == b"upgrade":
                    upgrade = value
                continue
            elif lname == b"expect":
                ex.expect_continue = value.strip().lower() == b"100-continue"
                continue
            elif lname == b"via":
                via = value if via is None else via + b", " + value
                continue
            elif lname in FORWARDING:
                if not trusted:
                    continue
                if lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                    continue
                kept_forwarding.add(lname)
            elif 95 in lname and lname.replace(b"_", b"-") in FORWARDING:  # 95: "_"
                continue  # X_Forwarded_For reads as X-Forwarded-For in CGI/WSGI/PHP origins: never pass it
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        if conn_tokens:
            forward = _drop_named(forward, conn_tokens)

        if target[:1] != b"/":
            if target == b"*" and ex.method == b"OPTIONS":
                pass
            elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                # absolute-form (RFC 9112 section 3.2.2): the authority replaces Host.
                rest = target.split(b"://", 1)[1]
                slash = rest.find(b"/")
                authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
                host, hosts = authority, 1
                forward = _replace_host(forward, authority)
                ex.target = target
            else:
                raise Rejected(400, "invalid request target")
        if ex.method == b"CONNECT":
            raise Rejected(405, "CONNECT is not supported")
        if hosts > 1:
            raise Rejected(400, "several Host headers")
        if chunked and content_length is not None:
            raise Rejected(400, "both Content-Length and Transfer-Encoding")

        # Route: the site of the negotiated certificate must also own the Host (no domain fronting).
        edge = self.edge
        if host is not None:
            routed = edge.router.route(host)
            if routed is None:
                raise Rejected(400, "invalid Host header")
            host_name, site = routed
        else:
            host_name = b""
            site = None
        if self.tls:
            if host is None:
                site = self.tls_site
            elif site is not self.tls_site:
                ex.reject = (421, "Host does not belong to the site of this TLS connection")
        elif site is None:
            site = edge.router.default
        if site is None and ex.reject is None:
            ex.reject = (421, "no site serves this host")
        ex.site = site
        ex.host = host_name
        if ex.reject is not None:
            return

        if content_length is not None:
            length = int(content_length)  # httptools has checked it is a plain decimal number
            ex.has_body = length > 0
            if site.max_body_size and length > site.max_body_size:
                ex.reject = (413, "Content-Length over max_body_size")
                return
        elif chunked:
            ex.has_body = True
            ex.chunked_upload = True
        ex.body_limit = site.max_body_size

        if not self.tls and edge.answers_acme and ex.target.startswith(HTTP01_PREFIX):
            # An ACME CA validating HTTP-01 (never redirected: the CA may not trust what https serves yet).
            answer = http01_answer(edge.store, ex.target[len(HTTP01_PREFIX):])
            if answer is not None or site.orders_acme:
                ex.acme_answer = answer or b""
                return
        if not self.tls and site.redirect_http:
            ex.redirect = True
            return

        via_line = b"Via: %s, %s\r\n" % (via, VIA_TOKEN) if via is not None else _VIA_LINE
        xff_line = (
            b"X-Forwarded-For: %s, %s\r\n" % (xff, self.client_ip_bytes) if xff is not None else self.xff_line
        )
        if host is None:
            host = site.default_host
            forward.extend((b"Host", b": ", host, b"\r\n"))

        # The route: which pool, and how the request is rewritten for it.
        try:
            route = site.routes.match(ex.method, ex.target, ex.headers)
        except AmbiguousPath:
            raise Rejected(400, "dot-segment or encoded separator in the path") from None
        group = route.pool
        ex.route = route
        ex.group = group
        target = route.rewrite(ex.target)
        if route.host is not None:
            forward = _replace_host(forward, route.host)
        if group.sticky is not None:
            forward = _read_sticky_cookie(ex, group, forward)
        if group.hash_on is not None:
            ex.hash_key = group.hash_key_of(ex.headers, ex.target, self.client_ip_bytes)
        if route.has_request_edits:
            forward = apply_edits(forward, route.request_drop, route.request_lines)
        upgrade_lines = b""
        if ex.upgrade is not None:
            if upgrade and not ex.has_body:
                ex.upgrade = upgrade
                upgrade_lines = b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade
            else:
                ex.upgrade = None
        fwd_host = b"" if b"x-forwarded-host" in kept_forwarding else b"X-Forwarded-Host: %s\r\n" % host
        fwd_proto = b"" if b"x-forwarded-proto" in kept_forwarding else self.xfp_line
        ex.head = b"".join(
            (
                ex.method,
                b" ",
                target,
                b" HTTP/1.1\r\n",
                *forward,
                xff_line,
                fwd_proto,
                fwd_host,
                via_line,
                upgrade_lines,
                b"Transfer-Encoding: chunked\r\n\r\n" if ex.chunked_upload else b"\r\n",
            )
        )

    def _start(self, ex: Exchange) -> None:
        """Begin answering the exchange at the head of the queue: reject, redirect or forward."""
        if ex.reject is not None:
            status, reason = ex.reject
            self._answer(ex, status, reason, close=ex.has_body or not ex.keep_alive or status == 400)
            return
        if ex.acme_answer is not None:
            self._answer_acme(ex)
            return
        if ex.redirect:
            location = b"https://%s%s%s" % (ex.host, self.edge.https_port_suffix, ex.target)
            ex.status = 308
            ex.keep_alive = ex.keep_alive and not ex.has_body
            self.out.append(redirect_response(location, close=not ex.keep_alive, head_only=ex.method == b"HEAD"))
            self._finish(ex)
            return
        if ex.site.guard is not None and guard_phase.begin(self, ex):
            return  # answered by the guard, or waiting for the request body or the WAF
        self._proceed(ex)

    def guard_passed(self, ex: Exchange) -> None:
        """The guard let the request through after waiting (for the body or the WAF's threads)."""
        if ex is self.current and not ex.finished and not self.closed:
            self._proceed(ex)
            self.flush()

    def _proceed(self, ex: Exchange) -> None:
        """On to the cache and the origin."""
        if ex.site.cache is not None and ex.upgrade is None and cache_phase.begin(self, ex):
            return  # answered from the cache, or waiting for another request's fill
        if ex.expect_continue and ex.has_body and not ex.http10:  # RFC 9110 10.1.1: never to HTTP/1.0
            self.out.append(_CONTINUE)
        self._dispatch(ex)

    def guard_error(self, ex: Exchange, status: int, reason: str, extra: bytes) -> None:
        self._answer(ex, status, reason, close=ex.has_body and not ex.body_done, extra=extra,
                     logged=status == 503)  # the store being down is logged once by the worker

    def guard_page(self, ex: Exchange, response: bytes) -> None:
        """A page of the guard's own (challenge, password form) or its redirect, ready to write."""
        ex.status = int(response[9:12])
        ex.response_started = True
        self.out.append(response)
        self._finish(ex)

    def cache_forward(self, ex: Exchange) -> None:
        """A collapsed request that cannot share the other's response: it goes to the origin itself."""
        if ex is self.current and not ex.finished and not self.closed:
            ex.follower = None
            cache_phase.fetch_alone(ex)
            self._dispatch(ex)
            self.flush()

    def cache_error(self, ex: Exchange, status: int, reason: str) -> None:
        self._answer(ex, status, reason, close=False)

    def cache_reply_done(self, ex: Exchange) -> None:
        """A response served from the cache has been written out."""
        ex.reply = None
        if ex is self.current and not ex.finished:
            self._finish(ex)
            self.flush()

    def _answer_acme(self, ex: Exchange) -> None:
        ex.status = 200 if ex.acme_answer else 404
        ex.keep_alive = ex.keep_alive and not ex.has_body
        body = ex.acme_answer or b"No ACME challenge is pending for this token.\n"
        self.out.append(text_response(ex.status, body, close=not ex.keep_alive, head_only=ex.method == b"HEAD"))
        self._finish(ex)

    def _dispatch(self, ex: Exchange) -> None:
        """Choose a server for the request: the sticky one, else the balancer's; wait when all are busy."""
        group = ex.group
        server = group.pinned(ex.sticky_key) if ex.sticky_key is not None and ex.tried is None else None
        if server is None:
            server = group.pick(ex.hash_key, ex.tried)
        if server is None:
            if group.waiting_helps(ex.tried):
                if not ex.queue_deadline:
                    ex.queue_deadline = self.edge.loop.time() + group.config.queue_timeout
                group.enqueue(self, ex, ex.queue_deadline)
                return
            self._unavailable(ex)
            return
        self._forward(ex, server)

    def _unavailable(self, ex: Exchange) -> None:
        """No server of the pool is up: the place where serving stale content will hook in."""
        self._answer(ex, 503, f"no server of pool {ex.group.name} is up", close=ex.has_body and not ex.body_done,
                     extra=b"Retry-After: 5\r\n", text=NO_ORIGIN_TEXT)

    def dispatch_queued(self, ex: Exchange) -> None:
        """A server freed a slot while the request waited in the pool's queue."""
        if ex is self.current and not ex.finished and not self.closed:
            self._dispatch(ex)
            self.flush()

    def queue_timed_out(self, ex: Exchange) -> None:
        if ex is self.current and not ex.finished and not self.closed:
            self._answer(ex, 503, f"every server of pool {ex.group.name} stayed at max_connections for queue_timeout",
                         close=ex.has_body and not ex.body_done, extra=b"Retry-After: 1\r\n")
            self.flush()

    def _forward(self, ex: Exchange, server: UpstreamServer, fresh: bool = False) -> None:
        pool = server.conns
        ex.server = server
        sticky = ex.group.sticky
        if sticky is not None and server.key != ex.sticky_key:
            ex.set_cookie = sticky.set_cookie_line(server.key, self.tls)  # pin the client to the server it got
        ex.pool = pool
        ex.attempts += 1
        if not ex.t_first:  # the request's first attempt (resending on a fresh connection is not a new one)
            ex.t_first = self.edge.loop.time()
            ex.group.budget.deposit()
        conn = None if fresh else pool.acquire()
        if conn is not None:
            self._send(ex, conn)
            return
        task = self.edge.loop.create_task(pool.connect())
        task.add_done_callback(lambda t: self._connected(ex, server, t))

    def _connected(self, ex: Exchange, server: UpstreamServer, task: asyncio.Task) -> None:
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if exc is None:
            conn = task.result()
            if self.closed or ex.finished:
                server.conns.release(conn)
                return
            self._send(ex, conn)
            return
        if self.closed or ex.finished:
            return
        label = server.key
        if isinstance(exc, PoolFull):
            # Another request took the last slot while this one connected: choose again (or wait).
            ex.attempts -= 1
            self._dispatch(ex)
        elif isinstance(exc, TimeoutError):
            self._attempt_failed(ex, 504, f"connecting to origin {label} timed out", resend=True)
        elif isinstance(exc, ssl.SSLError | ssl.CertificateError):
            self._attempt_failed(ex, 502, f"TLS to origin {label} failed: {describe_tls_failure(exc)}", resend=True)
        elif isinstance(exc, OSError):
            self._attempt_failed(ex, 502, f"origin {label} unreachable: {exc.strerror or exc}", resend=True)
        else:
            self._answer(ex, 502, f"connecting to origin {label} failed: {exc!r}", close=True)
        self.flush()

    def _attempt_failed(self, ex: Exchange, status: int, reason: str, *, resend: bool) -> None:
        """An attempt failed before any response byte: count it against the server, and retry elsewhere if allowed.

        `resend` says whether sending the request again is safe: nothing reached the origin, or the request is
        idempotent and whole in memory. A retry also needs an untried server, the attempt count, the pool's
        retry_timeout and its retry budget.
        """
        server = ex.server
        server.record_failure(self.edge.loop.time(), reason)
        _log_failure(ex, reason)
        group = ex.group
        config = group.config
        if resend and ex.attempts <= config.retries and self.edge.loop.time() - ex.t_first < config.retry_timeout:
            tried = ex.tried = [*ex.tried, server] if ex.tried else [server]
            other = group.pick(ex.hash_key, tried)
            if other is not None:
                if group.budget.withdraw():
                    self._forward(ex, other)
                    return
                reason += " (no retry: the pool's retry budget is spent)"
        self._answer(ex, status, reason, close=ex.has_body and not ex.body_done, logged=True)

    def _send(self, ex: Exchange, conn: OriginConnection) -> None:
        ex.origin = conn
        ex.reused = conn.requests > 0
        data = ex.head
        if ex.pending:
            data = b"".join((data, *ex.pending))
            if not ex.has_body or ex.body_done:
                ex.replay = data
            ex.pending = []
            ex.pending_bytes = 0
            self._resume(_PAUSE_PENDING)
        elif not ex.has_body:
            ex.replay = data
        ex.t_upstream = monotonic()
        if self.write_paused:
            conn.transport.pause_reading()
        conn.send(self, data, head_request=ex.method == b"HEAD", upgrade=ex.upgrade is not None,
                  now=self.edge.loop.time())

    # --- events from the origin connection -------------------------------------------------------------------------

    def origin_head(self, conn: OriginConnection, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        ex = self.current
        if ex.waf is not None and guard_phase.wants_response_check(ex):
            guard_phase.hold_response(self, ex, conn, status, headers)  # replayed here once the WAF agrees
            return
        ex.t_head = monotonic()
        ex.server.record_response(status, ex.t_head - ex.t_upstream)
        if 300 < status < 400 and self.tls and conn.pool.ssl_context is None and redirects_to_itself(headers, ex):
            conn.abort()
            ex.origin = None
            self._answer(
                ex, 502,
                f"origin {ex.server.key} redirects https://{ex.host.decode()}{ex.target.decode('latin-1')} to "
                "itself: it is reached over plain HTTP (origin_tls = 'flexible') and insists on https; set "
                "origin_tls = 'full' or 'strict' for this pool so the edge talks TLS to it",
                close=False, text=REDIRECT_LOOP_TEXT,
            )
            return
        cache_field = b""
        if ex.cache is not None:
            cache_field = cache_phase.response_head(self, ex, status, headers)
            if cache_field is None:  # the cache answers: our revalidation got a 304, or the origin failed
                self._cache_answers(ex, conn, status)
                return
            ex.fill = ex.cache.fill if ex.cache.stored else None
        ex.status = status
        ex.response_started = True
        fields: list[bytes] = []
        append = fields.append
        conn_tokens: set[bytes] | None = None
        has_length = chunked = has_date = False
        skip = ex.site.response_skip
        for name, value in headers:
            lname = name.lower()
            if lname in skip:
                if lname == b"connection":
                    tokens = connection_tokens(value)
                    if tokens:
                        conn_tokens = tokens if conn_tokens is None else conn_tokens | tokens
                elif lname == b"transfer-encoding":
                    chunked = value.rstrip().lower().endswith(b"chunked")
                continue
            if lname == b"content-length":
                has_length = True
            elif lname == b"date":
                has_date = True
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        if conn_tokens:
            fields = _drop_named(fields, conn_tokens)
        route = ex.route
        if route.has_response_edits:
            fields = apply_edits(fields, route.response_drop, route.response_lines)
        tail: list[bytes] = [cache_field] if cache_field else []
        if not has_date:  # RFC 9110 6.6.1: a proxy adds the Date an origin without a clock left out
            tail.append(b"Date: %s\r\n" % format_http_date(time()))
        if ex.set_cookie:
            tail.append(ex.set_cookie)
        if self.tls and ex.site.https_response_head:
            tail.append(ex.site.https_response_head)
        has_body = ex.method != b"HEAD" and status not in _NO_BODY_STATUS
        if has_body and (chunked or not has_length):
            # Chunked or close-delimited from the origin: re-chunk for HTTP/1.1 clients, close-delimit for 1.0.
            ex.origin_eof_ends_body = not chunked
            if ex.http10:
                ex.keep_alive = False
            else:
                ex.response_chunked = True
                tail.append(b"Transfer-Encoding: chunked\r\n")
        if (
            not ex.keep_alive
            or self.edge.draining
            or (ex.has_body and not ex.body_done and status >= 300)
            or ex.upgrade is not None  # refused upgrade: what the client sends next may already be the new protocol
        ):
            ex.keep_alive = False
            tail.append(b"Connection: close\r\n\r\n")
        else:
            tail.append(b"\r\n")
        self.out.append(b"".join((status_line(status), *fields, *tail)))

    def _cache_answers(self, ex: Exchange, conn: OriginConnection, status: int) -> None:
        if status == 304:
            ex.cache.revalidated = True  # served from the cache once the 304's message has ended
            return
        conn.abort()
        ex.origin = None
        cache_phase.serve_stale_on_error(self, ex, status)

    def origin_body(self, body: bytes) -> None:
        ex = self.current
        if ex.held is not None:
            ex.held.append(("body", body))
            return
        if ex.fill is not None:
            ex.fill.add(body)
        ex.bytes_out += len(body)
        if ex.response_chunked:
            self.out.append(b"%x\r\n" % len(body))
            self.out.append(body)
            self.out.append(b"\r\n")
        else:
            self.out.append(body)

    def origin_done(self, conn: OriginConnection, reusable: bool) -> None:
        ex = self.current
        if ex.held is not None:
            ex.held.append(("done", reusable))
            return
        ex.origin = None
        if ex.fill is not None:
            ex.fill.complete()
            ex.fill = None
        if reusable and ex.body_done:
            ex.pool.release(conn)
        else:
            conn.abort()
        if ex.cache is not None and ex.cache.revalidated:
            cache_phase.answer_revalidated(self, ex)  # the 304 ended: the refreshed stored copy answers
            return
        if ex.response_chunked:
            self.out.append(b"0\r\n\r\n")
        self._finish(ex)

    def origin_lost(self, conn: OriginConnection, reason: str) -> None:
        ex = self.current
        if ex is None or ex.origin is not conn:
            return
        if ex.held is not None:
            ex.held.append(("lost", reason))
            return
        ex.origin = None
        if ex.tunnel:
            self._close()
            return
        if not ex.response_started:
            replayable = not conn.got_bytes and ex.replay is not None and ex.method in _IDEMPOTENT
            if ex.replay is not None:
                ex.head = ex.replay
            if ex.reused and replayable:
                # A pooled connection the origin had already closed: resend on a fresh connection to the same server.
                ex.attempts -= 1
                self._forward(ex, ex.server, fresh=True)
                return
            self._attempt_failed(ex, 502, f"origin {ex.server.key}: {reason}", resend=replayable)
            return
        elif ex.origin_eof_ends_body:
            # A close-delimited response: the origin's close is the end of the body, not a failure.
            if ex.response_chunked:
                self.out.append(b"0\r\n\r\n")
            self._finish(ex)
        else:
            # Never let a truncated response look complete: close the client connection without a last chunk.
            ex.error = f"origin {ex.pool.label}: {reason} mid-response"
            _log_failure(ex, ex.error)
            ex.keep_alive = False
            self._finish(ex)

    def origin_timeout(self, conn: OriginConnection) -> None:
        ex = self.current
        if ex is not None and ex.held is not None and ex.origin is conn:
            ex.held.append(("timeout", None))
            return
        conn.abort()
        if ex is None or ex.origin is not conn:
            return
        ex.origin = None
        if ex.response_started:
            ex.error = f"origin {ex.pool.label} stopped sending the response body (read_timeout)"
            _log_failure(ex, ex.error)
            ex.keep_alive = False
            self._finish(ex)
        else:
            reason = f"origin {ex.pool.label} did not answer within response_timeout"
            ex.server.record_failure(self.edge.loop.time(), reason)
            self._answer(ex, 504, reason, close=True)

    # --- upgraded connections (WebSocket and other protocols) --------------------------------------------------------

    def _last_upgrade(self) -> Exchange | None:
        """The exchange an HttpParserUpgrade belongs to, if the edge tunnels it."""
        ex = self.queue[-1] if self.queue else self.current
        return ex if ex is not None and ex.upgrade and not ex.finished else None

    def _to_tunnel(self, data: bytes) -> None:
        """Client bytes after an upgrade request: to the origin once it switched protocols, else held until then.

        Bytes sent before the 101 belong to the new protocol only if the origin agrees; an origin that refuses must
        never read them as HTTP.
        """
        ex = self.upgrading
        ex.bytes_in += len(data)
        if ex.tunnel:
            if self.deadline_kind == _TUNNEL:
                self._arm(_TUNNEL)
            if ex.origin is not None:
                ex.origin.transport.write(data)
        elif not ex.finished:
            self.early.append(data)
            self.early_bytes += len(data)
            if self.early_bytes > _PENDING_HIGH_WATER:
                self._pause(_PAUSE_PENDING)

    def origin_upgraded(self, conn: OriginConnection, headers: list[tuple[bytes, bytes]]) -> None:
        """The origin switched protocols: pass its 101 on, then relay bytes both ways until either side closes."""
        ex = self.current
        ex.t_head = monotonic()
        ex.server.record_response(101, ex.t_head - ex.t_upstream)
        ex.status = 101
        ex.response_started = True
        ex.tunnel = True
        ex.keep_alive = False
        fields = [b"%s: %s\r\n" % (name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
        protocol = next((value for name, value in headers if name.lower() == b"upgrade"), ex.upgrade)
        self.out.append(
            b"".join((status_line(101), *fields, b"Connection: upgrade\r\nUpgrade: %s\r\n\r\n" % protocol))
        )
        self.upgrading = ex
        self._arm(_TUNNEL)
        if self.early:
            conn.transport.write(b"".join(self.early))
            self.early = []
            self.early_bytes = 0
            self._resume(_PAUSE_PENDING)

    def tunnel_from_origin(self, data: bytes) -> None:
        ex = self.current
        ex.bytes_out += len(data)
        if self.deadline_kind == _TUNNEL:
            self._arm(_TUNNEL)
        self.out.append(data)
        self.flush()

    def pause_origin_writes(self) -> None:
        self._pause(_PAUSE_ORIGIN)

    def resume_origin_writes(self) -> None:
        self._resume(_PAUSE_ORIGIN)

    # --- ending an exchange ------------------------------------------------------------------------------------------

    def _answer(self, ex: Exchange, status: int, reason: str, *, close: bool, extra: bytes = b"",
                logged: bool = False, text: str | None = None) -> None:
        """Answer with an error page of our own; server-side failures also go to the error log."""
        if ex.cache is not None:
            if status >= 500 and cache_phase.serve_stale_on_error(self, ex, status):
                return
            extra += ex.cache.error_field()
        ex.status = status
        ex.error = reason
        if status >= 500 and not logged:
            _log_failure(ex, reason)
        if close:
            ex.keep_alive = False
        if ex.response_started:
            ex.keep_alive = False
        else:
            ex.response_started = True
            if self.tls and ex.site is not None and ex.site.https_response_head:
                extra += ex.site.https_response_head
            self.out.append(
                error_response(status, ex.request_id, close=not ex.keep_alive, head_only=ex.method == b"HEAD",
                               extra=extra, text=text)
            )
        if self.current is not ex:
            return
        self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        ex.finished = True
        ex.answered = True
        if ex.waf is not None:
            guard_phase.finished(ex)
        if ex.cache is not None and ex.follower is None:
            fill = ex.cache.fill
            if fill is not None and fill.state < DONE and ex.origin is None:
                fill.fail("origin-failed")
        if ex.origin is not None:
            ex.origin.abort()
            ex.origin = None
        self._resume(_PAUSE_ORIGIN | _PAUSE_PENDING)
        self._log(ex)
        if not ex.keep_alive or self.edge.draining:
            self._close()
            return
        if ex.has_body and not ex.body_done:
            # The answer came before the whole body: the rest of it is read and dropped, then the next request.
            return
        self._next_exchange()

    def _next_exchange(self) -> None:
        self.current = None
        if self.closed:
            return
        if self.queue:
            ex = self.queue.popleft()
            self.current = ex
            if not self.queue:
                self._resume(_PAUSE_QUEUE)
            self._start(ex)
            return
        self._resume(_PAUSE_QUEUE)
        if self.parsing is None:
            self._arm(_IDLE)

    def _log(self, ex: Exchange) -> None:
        self.edge.log_exchange(ex)


def _log_failure(ex: Exchange, reason: str) -> None:
    """The error-log line of a server-side failure: site, reason and the request id the client was shown."""
    log.error("site %s: %s (request id %s)", ex.site.name if ex.site else "-", reason, ex.request_id)


def _drop_named(block: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove from a header block (groups of name, ": ", value, CRLF) the fields a Connection header named."""
    out: list[bytes] = []
    it = iter(block)
    for name, sep, value, crlf in zip(it, it, it, it, strict=True):
        if name.lower() not in names:
            out.extend((name, sep, value, crlf))
    return out


def _upgrade_body_length(headers: list[tuple[bytes, bytes]]) -> int:
    """Content-Length of an upgrade request (httptools will not read its body); a chunked one is refused."""
    length = 0
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding":
            raise Rejected(400, "an upgrade request with a chunked body is not supported")
        if lname == b"content-length":
            value = value.strip()
            if not value.isdigit():
                raise Rejected(400, "invalid Content-Length")
            length = int(value)
    return length


def _read_sticky_cookie(ex: Exchange, group: ServerPool, forward: list[bytes]) -> list[bytes]:
    """Note the server a valid sticky cookie names, and remove that cookie from what the origin receives."""
    cookies = [forward[i + 2] for i in range(0, len(forward), 4) if forward[i].lower() == b"cookie"]
    if not cookies:
        return forward
    sticky = group.sticky
    ex.sticky_key = sticky.server_of(cookies)
    out: list[bytes] = []
    it = iter(forward)
    for name, sep, value, crlf in zip(it, it, it, it, strict=True):
        if name.lower() == b"cookie":
            value = sticky.strip(value)
            if value is None:
                continue
        out.extend((name, sep, value, crlf))
    return out


def _replace_host(forward: list[bytes], authority: bytes) -> list[bytes]:
    """Replace the Host line(s) in a filtered header block by the authority of an absolute-form target."""
    return [*_drop_named(forward, {b"host"}), b"Host", b": ", authority, b"\r\n"]
