"""The cache phase of a request: look up, answer from the cache, collapse misses, store, revalidate, serve stale.

Called by `ClientConnection` at four points: when a request starts (`begin`), when the origin's head arrives
(`response_head`), when the edge is about to send an error page (`serve_stale_on_error`) and when the client goes
away (`abandon`). The RFC 9111 rules themselves are pure functions in `tlsedge.cache`; this module only applies
them to a live exchange.
"""

from __future__ import annotations

import logging
import os
import time
from time import monotonic
from typing import TYPE_CHECKING

from tlsedge.cache.dates import format_http_date
from tlsedge.cache.directives import (
    NO_REQUEST_DIRECTIVES,
    RequestDirectives,
    ResponseDirectives,
    request_directives,
    response_directives,
)
from tlsedge.cache.entry import CacheEntry
from tlsedge.cache.fill import DONE, PENDING, STREAMING, Fill
from tlsedge.cache.freshness import Verdict, response_facts, storable, usable_on_error, verdict
from tlsedge.cache.invalidation import SAFE_METHODS, invalidation_targets
from tlsedge.cache.ranges import if_range_allows, parse_range, range_reply
from tlsedge.cache.status import cache_status
from tlsedge.cache.validation import (
    STRIPPED_ON_FORWARD,
    conditional_lines,
    merge_not_modified,
    not_modified,
    not_modified_head_fields,
    validators,
)
from tlsedge.cache.vary import variant_key, vary_names
from tlsedge.edge.cache_reply import CacheReply
from tlsedge.edge.headers import HOP_BY_HOP, connection_tokens, status_line

if TYPE_CHECKING:
    from tlsedge.cache.runtime import SiteCacheRuntime
    from tlsedge.config.cache import CacheRule
    from tlsedge.edge.exchange import Exchange
    from tlsedge.edge.http1 import ClientConnection

log = logging.getLogger("tlsedge.cache")

# Response fields never stored: they describe this hop or this transfer, not the resource (the targeted cache fields
# are dropped too, per site).
_NOT_STORED = HOP_BY_HOP | {b"age", b"content-length"}
_NO_BODY = frozenset({204, 304})
# Bodies up to this size are joined with their head: one write (one batch of TLS records) costs less than two.
_JOIN_LIMIT = 256 * 1024
_UNCACHEABLE_MEMORY = 10.0  # seconds a key that answered uncacheable is forwarded as is (no collapsing, no strip)
# Reasons that say the URL's responses cannot be stored whoever asks (not "authorization": that was this request).
# Nor a status or missing freshness: a URL failing with 5xx must still be cached (and collapsed) once it recovers.
_URL_UNCACHEABLE = frozenset({"private", "no-store", "vary-star", "set-cookie"})


class CacheRequest:
    """What the cache phase knows about one request (``Exchange.cache``)."""

    __slots__ = (
        "body",
        "collapsed",
        "detail",
        "entry",
        "fill",
        "fwd",
        "key",
        "own_fields",
        "request",
        "revalidated",
        "revalidating",
        "rule",
        "served",
        "site",
        "stored",
        "timer",
        "wants_range",
        "wants_validation",
    )

    def __init__(self, site: SiteCacheRuntime) -> None:
        self.site = site
        self.key = b""
        self.rule: CacheRule | None = None
        self.request: RequestDirectives = NO_REQUEST_DIRECTIVES
        self.entry: CacheEntry | None = None  # a stored copy that needs validation (or may be served on error)
        self.body = b""
        self.fill: Fill | None = None  # the fill this request leads
        self.fwd = b"uri-miss"
        self.detail: bytes | None = None
        self.revalidating = False
        self.revalidated = False  # the origin answered our revalidation with 304
        self.own_fields = b""  # fields for this client only (a 304's Set-Cookie)
        self.served = False  # the response came from the cache
        self.collapsed = False
        self.stored = False
        self.timer = None
        self.wants_range = False  # the client sent Range: a collapsed follower waits for the whole body
        self.wants_validation = False  # the client sent If-None-Match / If-Modified-Since

    def log_value(self) -> str:
        """The cache's part of the access log line: hit, or why the request was forwarded."""
        if self.served:
            return "hit" if self.fwd == b"uri-miss" or self.entry is None else f"{self.fwd.decode()}-served"
        value = self.fwd.decode()
        if self.collapsed:
            value += ",collapsed"
        if self.stored:
            value += ",stored"
        return value

    def error_field(self) -> bytes:
        """Cache-Status of an error page the edge sends itself."""
        if self.detail == b"only-if-cached":
            return cache_status(self.site.status_name, hit=False, detail=self.detail)
        return cache_status(self.site.status_name, hit=False, fwd=self.fwd, detail=self.detail)


# --- request start ------------------------------------------------------------------------------------------------


def begin(conn: ClientConnection, ex: Exchange) -> bool:
    """Run the cache phase for a request about to be forwarded; True when the cache answered it or it waits."""
    site = ex.site.cache
    state = CacheRequest(site)
    ex.cache = state
    method = ex.method
    keys = site.keys
    if method != b"GET" and method != b"HEAD":
        state.fwd = b"method"
        if method not in SAFE_METHODS:
            rule = keys.rule_for(ex.target)
            state.rule = rule
            state.key = _key(conn, ex, ex.host or ex.site.default_host, ex.target, rule)
        return False
    rule = keys.rule_for(ex.target)
    if rule is not None and rule.bypass:
        state.fwd = b"bypass"
        return False
    state.rule = rule
    key = state.key = _key(conn, ex, ex.host or ex.site.default_host, ex.target, rule)
    directives = False
    for name, _ in ex.headers:
        lname = name.lower()
        if lname in STRIPPED_ON_FORWARD:
            if lname == b"range":
                state.wants_range = True
            else:
                state.wants_validation = True
        elif lname == b"cache-control" or lname == b"pragma":
            directives = True
    request = state.request = request_directives(ex.headers) if directives else NO_REQUEST_DIRECTIVES
    runtime = site.runtime
    entry, body, known = runtime.lookup(site.site, key, ex.headers)
    now = time.time()
    if entry is not None:
        decision = verdict(entry, request, now)
        if decision is Verdict.FRESH or decision is Verdict.STALE_ALLOWED:
            serve(conn, ex, entry, body, _hit_status(site, entry, now), now)
            return True
        if decision is Verdict.STALE_REFRESH:
            serve(conn, ex, entry, body, _hit_status(site, entry, now, b"stale-while-revalidate"), now)
            _refresh_in_background(conn, ex, state, entry, body)
            return True
        state.entry, state.body = entry, body
        state.fwd = b"request" if request.no_cache else b"stale"
    elif known:
        state.fwd = b"vary-miss"
    if request.only_if_cached:
        # RFC 9111 5.2.1.7: a stored response the request accepts (handled above), else 504, never the origin.
        state.detail = b"only-if-cached"
        conn.cache_error(ex, 504, "only-if-cached and no stored response satisfies the request")
        return True
    if method == b"HEAD":
        return False  # forwarded as is: a HEAD response has no body to store
    expiry = runtime.uncacheable.get(key)
    if expiry is not None:
        if expiry > now:
            state.detail = b"uncacheable"
            return False
        del runtime.uncacheable[key]
    if request.no_store:
        return False
    fill = runtime.fills.get(key)
    if entry is None and fill is not None and fill.state in (PENDING, STREAMING):
        _follow(conn, ex, state, fill)
        return True
    if fill is None:
        # Also when a stale copy is revalidated: a full response instead of a 304 replaces it (RFC 9111 4.3.3).
        # A plain miss also takes the cross-worker lock; when another worker holds it, wait for its object.
        timeout = site.config.collapse_timeout if entry is None else 0.0
        state.fill = runtime.begin_fill(site.site, key, site.config.max_object_size, claim_ttl=timeout)
        if state.fill is None:
            _OtherWorker(conn, ex, state).poll()
            return True
    if state.wants_range or state.wants_validation or entry is not None:
        lines = b""
        if entry is not None and (entry.etag is not None or entry.last_modified is not None):
            lines = conditional_lines(entry)
            state.revalidating = True
        ex.head = _rewrite_head(ex.head, lines)
    return False


def _key(conn: ClientConnection, ex: Exchange, host: bytes, target: bytes, rule: CacheRule | None) -> bytes:
    keys = ex.site.cache.keys
    return keys.base(b"https" if conn.tls else b"http", host, target, rule) + keys.extras(ex.headers, rule)


def _rewrite_head(head: bytes, add: bytes) -> bytes:
    """The request head without the client's conditional and range fields (the edge answers those itself), plus the
    edge's own validators when it revalidates."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if line.partition(b":")[0].strip().lower() not in STRIPPED_ON_FORWARD:
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n" + add + b"\r\n"


def _hit_status(site: SiteCacheRuntime, entry: CacheEntry, now: float, detail: bytes | None = None) -> bytes:
    return cache_status(site.status_name, hit=True, ttl=int(entry.lifetime - entry.age(now)), detail=detail)


# --- answering from the cache -------------------------------------------------------------------------------------


def serve(conn: ClientConnection, ex: Exchange, entry: CacheEntry, body: bytes, status_field: bytes,
          now: float, own_fields: bytes = b"") -> None:
    """Answer from a stored response: 304 to a matching conditional, 206/416 to a range, else the whole of it."""
    head_only = ex.method == b"HEAD"
    block = _entry_block(entry)
    tail = _tail(conn, ex, status_field, b"Age: %d\r\n" % int(entry.age(now)) + own_fields)
    ex.cache.served = True
    pieces: list[bytes | memoryview]
    if (ex.cache.wants_validation and entry.status == 200) and not_modified(ex.headers, ex.method, entry):
        ex.status = 304
        fields = _block(not_modified_head_fields(entry.headers))
        pieces = [b"".join((status_line(304), fields, tail))]
    elif ex.cache.wants_range and entry.status == 200 and not head_only:
        pieces = _ranges(ex, entry, body, block, tail)
    else:
        ex.status = entry.status
        length = b"" if entry.status in _NO_BODY else b"Content-Length: %d\r\n" % len(body)
        head = b"".join((status_line(entry.status), block, length, tail))
        if head_only or not body:
            pieces = [head]
        elif len(body) > _JOIN_LIMIT:
            pieces = [head, body]
        else:
            pieces = [head + body]
    ex.response_started = True
    if len(pieces) == 1 and not conn.write_paused:
        # The common hit: one write, no reply object to keep.
        ex.bytes_out += len(pieces[0])
        conn.out.append(pieces[0])
        conn.cache_reply_done(ex)
        return
    reply = CacheReply(conn, ex)
    ex.reply = reply
    reply.send(pieces)


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([b"%s: %s\r\n" % field for field in fields])


def _entry_block(entry: CacheEntry) -> bytes:
    """The stored fields as the header block hits write, built once per stored copy."""
    if not entry.block:
        entry.block = _block(entry.headers)
    return entry.block


def _ranges(ex: Exchange, entry: CacheEntry, body: bytes, block: bytes, tail: bytes) -> list[bytes | memoryview]:
    """RFC 9110 section 14: 206 with one part or multipart/byteranges, 416, or the whole body when the Range (or
    its If-Range) does not apply."""
    value = if_range = None
    content_type = None
    for name, field in ex.headers:
        lname = name.lower()
        if lname == b"range":
            value = field
        elif lname == b"if-range":
            if_range = field
    for name, field in entry.headers:
        if name.lower() == b"content-type":
            content_type = field
    size = len(body)
    ranges = parse_range(value, size) if value is not None else None
    if ranges is not None and if_range is not None and not if_range_allows(if_range, entry.etag, entry.last_modified):
        ranges = None
    if ranges is None:
        ex.status = entry.status
        return [b"".join((status_line(entry.status), block, b"Content-Length: %d\r\n" % size, tail)), body]
    reply = range_reply(ranges, size, content_type, os.urandom(8).hex().encode())
    ex.status = reply.status
    skip = (b"content-type", b"content-range") if reply.status == 206 and len(reply.parts) > 1 else (b"content-range",)
    fields = _block([field for field in entry.headers if field[0].lower() not in skip]) if reply.status == 206 else b""
    extra = _block(reply.fields)
    pieces: list[bytes | memoryview] = [
        b"".join((status_line(reply.status), fields, extra, b"Content-Length: %d\r\n" % reply.length, tail))
    ]
    view = memoryview(body)
    for prefix, start, end in reply.parts:
        if prefix:
            pieces.append(prefix)
        pieces.append(view[start:end])
    if reply.epilogue:
        pieces.append(reply.epilogue)
    return pieces


def _tail(conn: ClientConnection, ex: Exchange, status_field: bytes, age: bytes) -> bytes:
    close = not ex.keep_alive or conn.edge.draining or (ex.has_body and not ex.body_done)
    if close:
        ex.keep_alive = False
    hsts = ex.site.https_response_head if conn.tls else b""
    return b"".join((age, status_field, hsts, b"Connection: close\r\n\r\n" if close else b"\r\n"))


# --- collapsed requests -------------------------------------------------------------------------------------------


class _Follower:
    """A request waiting for (then reading) the fill another request leads."""

    __slots__ = ("conn", "ex", "reply", "state")

    def __init__(self, conn: ClientConnection, ex: Exchange, state: CacheRequest) -> None:
        self.conn, self.ex, self.state = conn, ex, state
        self.reply: CacheReply | None = None

    def fill_progress(self, fill: Fill) -> None:
        ex = self.ex
        if ex.finished or self.conn.closed:
            fill.forget(self)
            return
        self._stop_timer()
        if self.reply is not None:
            self.reply.fill_progress(fill)
            return
        if fill.state == DONE:
            fill.forget(self)
            entry = fill.entry
            now = time.time()
            serve(self.conn, ex, entry, fill.body(), _collapsed_status(self.state, entry, now), now)
            self.conn.flush()
            return
        if self.state.wants_range or self.state.wants_validation:
            return  # answered once the whole body is in
        entry = fill.entry
        now = time.time()
        block = _entry_block(entry)
        tail = _tail(self.conn, ex, _collapsed_status(self.state, entry, now), b"Age: %d\r\n" % int(entry.age(now)))
        ex.status = entry.status
        ex.response_started = True
        reply = self.reply = CacheReply(self.conn, ex)
        ex.reply = reply
        reply.fill = fill
        reply.pieces = [b"".join((status_line(entry.status), block, b"Content-Length: %d\r\n" % fill.expected, tail))]
        reply.fill_progress(fill)

    def fill_released(self, fill: Fill, reason: str) -> None:
        self._stop_timer()
        if self.reply is not None:
            self.reply.fill_released(fill, reason)
            return
        if self.ex.finished or self.conn.closed:
            return
        # The shared response cannot be used (not storable, another variant, failed): fetch for ourselves.
        self.state.collapsed = False
        self.state.detail = reason.encode() if reason.isascii() else None
        self.conn.cache_forward(self.ex)

    def timed_out(self) -> None:
        self.state.timer = None
        fill = self.state.fill
        if fill is not None:
            fill.forget(self)
        if self.reply is None and not self.ex.finished and not self.conn.closed:
            self.state.detail = b"collapse-timeout"
            self.conn.cache_forward(self.ex)

    def _stop_timer(self) -> None:
        if self.state.timer is not None:
            self.state.timer.cancel()
            self.state.timer = None


def _follow(conn: ClientConnection, ex: Exchange, state: CacheRequest, fill: Fill) -> None:
    follower = _Follower(conn, ex, state)
    state.collapsed = True
    state.fill = fill  # not the leader: `follower` marks it
    ex.follower = follower
    headers = ex.headers
    state.timer = conn.edge.loop.call_later(state.site.config.collapse_timeout, follower.timed_out)
    fill.wait(follower, lambda names: variant_key(names, headers) if names else b"")


class _OtherWorker:
    """A miss whose key another worker is fetching: look for its object in the disk tier until it appears, the other
    worker gives up, or collapse_timeout passes; then serve it, or fetch ourselves."""

    __slots__ = ("conn", "deadline", "ex", "state")
    _INTERVAL = 0.02

    def __init__(self, conn: ClientConnection, ex: Exchange, state: CacheRequest) -> None:
        self.conn, self.ex, self.state = conn, ex, state
        self.deadline = conn.edge.loop.time() + state.site.config.collapse_timeout
        state.collapsed = True

    def poll(self) -> None:
        conn, ex, state = self.conn, self.ex, self.state
        if conn.closed or ex.finished or ex is not conn.current:
            return
        site = state.site
        runtime = site.runtime
        entry, body, _ = runtime.lookup(site.site, state.key, ex.headers)
        now = time.time()
        if entry is not None and verdict(entry, state.request, now) is not Verdict.VALIDATE:
            serve(conn, ex, entry, body, _collapsed_status(state, entry, now), now)
            conn.flush()
            return
        if conn.edge.loop.time() < self.deadline and runtime.disk.claimed(site.site, state.key, b"",
                                                                          site.config.collapse_timeout):
            state.timer = conn.edge.loop.call_later(self._INTERVAL, self.poll)
            return
        state.collapsed = False
        state.detail = b"collapse-timeout" if conn.edge.loop.time() >= self.deadline else None
        conn.cache_forward(ex)


def fetch_alone(ex: Exchange) -> None:
    """A request that waited on another's fetch goes to the origin itself; its response may still be stored."""
    state = ex.cache
    site = state.site
    state.fill = None if state.request.no_store else site.runtime.own_fill(site.site, state.key,
                                                                         site.config.max_object_size)


def _collapsed_status(state: CacheRequest, entry: CacheEntry, now: float) -> bytes:
    return cache_status(state.site.status_name, hit=False, fwd=b"uri-miss", fwd_status=entry.status,
                        ttl=int(entry.lifetime - entry.age(now)), collapsed=True)


# --- the origin's answer ------------------------------------------------------------------------------------------


def response_head(
    conn: ClientConnection, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]
) -> bytes | None:
    """The origin answered a request of a cached site: decide what to store; return the Cache-Status line for the
    response, or None when the cache answers instead (a 304 to our revalidation, or a 5xx with a usable stale copy).
    """
    state = ex.cache
    site = state.site
    now = time.time()
    if ex.method not in SAFE_METHODS:
        if 200 <= status < 400:
            _invalidate(conn, ex, status, headers)
        return cache_status(site.status_name, hit=False, fwd=b"method", fwd_status=status)
    entry = state.entry
    if entry is not None:
        if status == 304 and state.revalidating:
            state.own_fields = refresh_copy(site, entry, state.body, headers, sent_at(ex, now), now, state.rule)
            return None
        if status >= 500 and usable_on_error(entry, state.request, now,
                                             always_online_max=_always_online(site)):
            return None
    fill = state.fill
    if fill is None or ex.follower is not None:
        detail = state.detail
        return cache_status(site.status_name, hit=False, fwd=state.fwd, fwd_status=status, detail=detail)
    new, reason = decide(site, state, ex.method, status, headers, ex.headers, sent_at(ex, now), now)
    if new is None:
        fill.uncacheable(reason)
        state.fill = None
        if reason in _URL_UNCACHEABLE:
            site.runtime.remember_uncacheable(state.key, now + _UNCACHEABLE_MEMORY)
        return cache_status(site.status_name, hit=False, fwd=state.fwd, fwd_status=status, detail=reason.encode())
    start_fill(site, fill, new, headers)
    state.stored = True
    return cache_status(site.status_name, hit=False, fwd=state.fwd, fwd_status=status, stored=True,
                        ttl=int(new.lifetime - new.initial_age), detail=state.detail)


def start_fill(site: SiteCacheRuntime, fill: Fill, entry: CacheEntry, headers: list[tuple[bytes, bytes]]) -> None:
    length = None
    for name, value in headers:
        if name.lower() == b"content-length" and value.strip().isdigit():
            length = int(value)
    fill.entry = entry
    site.runtime.open_writer(fill)
    fill.start(entry, length if entry.status not in _NO_BODY else 0, fill.writer)
    if entry.status in _NO_BODY or length == 0:
        fill.complete()


def decide(site: SiteCacheRuntime, state: CacheRequest, method: bytes, status: int,
           headers: list[tuple[bytes, bytes]], request_headers: list[tuple[bytes, bytes]], request_time: float,
           response_time: float) -> tuple[CacheEntry | None, str]:
    """Whether a response is stored, and the entry describing it (None and the reason token when it is not)."""
    directives, _ = response_directives(headers, site.targeted)
    authorization = any(name.lower() == b"authorization" for name, _ in request_headers)
    reason = storable(method, status, directives, headers, request_has_authorization=authorization,
                      request_no_store=state.request.no_store)
    if reason is not None:
        return None, reason
    config = site.config
    set_cookie = False
    tags: list[bytes] = []
    length = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"set-cookie":
            set_cookie = True
        elif lname == b"cache-tag":
            tags.extend(tag.strip().lower() for tag in value.split(b",") if tag.strip())
        elif lname == b"content-length" and value.strip().isdigit():
            length = int(value)
    if set_cookie and config.set_cookie == "bypass":
        return None, "set-cookie"
    if length is not None and length > config.max_object_size:
        return None, "too-big"
    names = vary_names(headers)
    if names is None:
        return None, "vary-star"
    rule = state.rule
    facts = response_facts(directives, headers, status, request_time, response_time,
                           heuristic_max=config.heuristic_max, ttl_override=rule.ttl if rule is not None else None)
    etag, last_modified = validators(headers)
    if (facts.lifetime <= facts.initial_age and etag is None and last_modified is None
            and not facts.stale_if_error and not facts.stale_while_revalidate and not config.always_online):
        return None, "stale-on-arrival"
    stored = _stored_fields(site, directives, headers)
    if not any(name.lower() == b"date" for name, _ in stored):
        stored.append((b"Date", format_http_date(response_time)))  # RFC 9110 6.6.1
    key = state.key
    entry = CacheEntry(
        key=key,
        variant=variant_key(names, request_headers) if names else b"",
        site=site.site,
        url=key.partition(b"\x00")[0],
        status=status,
        headers=stored,
        vary=names,
        tags=tuple(tags),
        request_time=request_time,
        response_time=response_time,
        initial_age=facts.initial_age,
        lifetime=facts.lifetime,
        stale_while_revalidate=facts.stale_while_revalidate,
        stale_if_error=facts.stale_if_error,
        no_cache=facts.no_cache,
        must_revalidate=facts.must_revalidate,
        etag=etag,
        last_modified=last_modified,
        body_size=length or 0,
    )
    return entry, ""


def _stored_fields(site: SiteCacheRuntime, directives: ResponseDirectives,
                   headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response fields a stored copy keeps: not hop-by-hop ones, not the targeted cache fields, not those
    ``private="..."`` / ``no-cache="..."`` name, and no Set-Cookie with the "strip" policy."""
    dropped = set(_NOT_STORED) | set(site.targeted) | set(directives.private_fields) | set(directives.no_cache_fields)
    if site.config.set_cookie == "strip":
        dropped.add(b"set-cookie")
    for name, value in headers:
        if name.lower() == b"connection":
            dropped |= connection_tokens(value)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def refresh_copy(site: SiteCacheRuntime, entry: CacheEntry, body: bytes, headers: list[tuple[bytes, bytes]],
               request_time: float, now: float, rule: CacheRule | None) -> bytes:
    """A 304 to the edge's revalidation: the stored copy gets the new header fields and freshness. Returns the 304's
    Set-Cookie lines, meant for the client whose request revalidated and never stored."""
    if any(name.lower() == b"set-cookie" for name, _ in headers):
        # A cookie for the client whose request revalidated the copy: that client gets it, nobody else.
        own = _block([field for field in headers if field[0].lower() == b"set-cookie"])
        headers = [(name, value) for name, value in headers if name.lower() != b"set-cookie"]
    else:
        own = b""
    merged = merge_not_modified(entry.headers, headers)
    directives, _ = response_directives(merged, site.targeted)
    # The 304's own Age (never stored) still counts for the copy's age (RFC 9111 section 4.2.3).
    ages = [(name, value) for name, value in headers if name.lower() == b"age"]
    facts = response_facts(directives, merged + ages, entry.status, request_time, now,
                           heuristic_max=site.config.heuristic_max, ttl_override=rule.ttl if rule is not None else None)
    etag, last_modified = validators(merged)
    entry.headers = _stored_fields(site, directives, merged)
    entry.request_time, entry.response_time = request_time, now
    entry.initial_age, entry.lifetime = facts.initial_age, facts.lifetime
    entry.stale_while_revalidate, entry.stale_if_error = facts.stale_while_revalidate, facts.stale_if_error
    entry.no_cache, entry.must_revalidate = facts.no_cache, facts.must_revalidate
    entry.etag, entry.last_modified = etag or entry.etag, last_modified or entry.last_modified
    entry.block = b""
    reason = storable(b"GET", entry.status, directives, merged, request_has_authorization=False,
                      request_no_store=False)
    if reason is not None:
        # RFC 9111 4.3.4 with section 3: the new fields forbid keeping the copy; it still answers this request.
        site.runtime.invalidate(site.site, entry.key)
    else:
        site.runtime.updated(entry, body)
    return own


def answer_revalidated(conn: ClientConnection, ex: Exchange) -> None:
    """After the 304's message ended: serve the refreshed stored copy."""
    state = ex.cache
    entry = state.entry
    now = time.time()
    status = cache_status(state.site.status_name, hit=False, fwd=state.fwd, fwd_status=304, stored=True,
                          ttl=int(entry.lifetime - entry.age(now)))
    serve(conn, ex, entry, state.body, status, now, state.own_fields)


def serve_stale_on_error(conn: ClientConnection, ex: Exchange, status: int) -> bool:
    """The edge is about to answer 502/503/504 (or the origin sent a 5xx): serve a stale copy when allowed."""
    state = ex.cache
    if state is None or state.entry is None or ex.response_started:
        return False
    now = time.time()
    entry = state.entry
    if not usable_on_error(entry, state.request, now, always_online_max=_always_online(state.site)):
        return False
    detail = b"always-online" if entry.age(now) - entry.lifetime > entry.stale_if_error else b"stale-if-error"
    log.warning("site %s: serving a stale copy of %s: the origin failed with %d", ex.site.name,
                entry.url.decode("latin-1"), status)
    field = cache_status(state.site.status_name, hit=False, fwd=b"stale", fwd_status=status,
                         ttl=int(entry.lifetime - entry.age(now)), detail=detail)
    serve(conn, ex, entry, state.body, field, now)
    return True


def sent_at(ex: Exchange, now: float) -> float:
    """Wall-clock time the request went to the origin (the exchange keeps loop-independent monotonic times)."""
    return now - (monotonic() - ex.t_upstream)


def _always_online(site: SiteCacheRuntime) -> float:
    config = site.config
    return config.always_online_max_stale if config.always_online else 0.0


def _invalidate(conn: ClientConnection, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """RFC 9111 section 4.4: a successful unsafe request invalidates its target and same-origin Location /
    Content-Location."""
    scheme = b"https" if conn.tls else b"http"
    host = ex.host or ex.site.default_host
    site = ex.cache.site
    for url in invalidation_targets(ex.method, status, scheme, host, ex.target, headers):
        target_scheme, _, rest = url.partition(b"://")
        target_host, slash, path = rest.partition(b"/")
        target = slash + path
        rule = site.keys.rule_for(target)
        key = site.keys.base(target_scheme, target_host, target, rule) + site.keys.extras(ex.headers, rule)
        site.runtime.invalidate(site.site, key)


# --- background refresh and orphaned fills ------------------------------------------------------------------------


def _refresh_in_background(conn: ClientConnection, ex: Exchange, state: CacheRequest, entry: CacheEntry,
                           body: bytes) -> None:
    """stale-while-revalidate (RFC 5861): one conditional request per key refreshes the copy the client just got."""
    from tlsedge.edge.cache_feed import refresh

    runtime = state.site.runtime
    if state.key in runtime.refreshing or ex.group is None:
        return
    head = _rewrite_head(ex.head, conditional_lines(entry))
    refresh(conn.edge, ex, state, entry, body, head)


def abandon(conn: ClientConnection, ex: Exchange) -> None:
    """The client left: a follower stops waiting; a leader's origin response goes on filling for the others."""
    state = ex.cache
    if state.timer is not None:
        state.timer.cancel()
        state.timer = None
    follower = ex.follower
    if follower is not None:
        follower._stop_timer()
        if state.fill is not None:
            state.fill.forget(follower)
        return
    fill = state.fill
    if fill is None or fill.state not in (PENDING, STREAMING):
        return
    origin = ex.origin
    if origin is None or origin.closed:
        fill.fail("leader-left")
        return
    from tlsedge.edge.cache_feed import adopt

    adopt(ex, state, origin)
    ex.origin = None
