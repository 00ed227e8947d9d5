"""A scripted origin for the cache tests: each test says what every path answers, and reads what the edge sent.

It runs in a thread of the test process (a real HTTP/1.1 server on 127.0.0.1 with keep-alive), so a test changes an
answer between two requests with one assignment and counts origin requests exactly.
"""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any


@dataclass
class Answer:
    """What the origin sends for a path. ``body`` None with ``chunked`` sends chunks; ``delay`` waits first."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"hello"
    delay: float = 0.0
    chunked: bool = False
    date: bool = True  # add a Date header (now) unless the headers have one
    close: bool = False  # close the connection after the answer


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names (last value wins)
    body: bytes = b""  # de-chunked


Script = Answer | Callable[[Seen], Answer]


class ScriptedOrigin:
    """``origin.answers["/path"] = Answer(...)`` (or a function of the request); ``origin.seen`` lists requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Script] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        origin = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while origin._one(self):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            request_queue_size = 256  # many concurrent misses reach it at once in the collapsing tests
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str, method: str | None = None) -> int:
        """Requests the origin received for a path (the target without its query when ``path`` has none)."""
        with self.lock:
            return sum(
                1 for s in self.seen
                if (s.target == path or ("?" not in path and s.target.split("?")[0] == path))
                and (method is None or s.method == method)
            )

    def last(self, path: str) -> Seen:
        with self.lock:
            return [s for s in self.seen if s.target.split("?")[0] == path.split("?")[0]][-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- serving
    def unscripted(self, seen: Seen) -> Answer:
        """The answer to a path the test gave no script for."""
        return Answer(404, [("Content-Type", "text/plain")], b"no script for this path\n")

    def _one(self, handler: socketserver.StreamRequestHandler) -> bool:
        rfile, wfile = handler.rfile, handler.wfile
        line = rfile.readline(65536)
        if not line.strip():
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = rfile.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = b""
        if length:
            body = rfile.read(length)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(rfile.readline().split(b";")[0], 16)
                parts.append(rfile.read(size + 2)[:size])
                if size == 0:
                    break
            body = b"".join(parts)
        seen = Seen(method, target, headers, body)
        with self.lock:
            self.seen.append(seen)
        script = self.answers.get(target) or self.answers.get(target.split("?")[0])
        if script is None:
            script = self.unscripted
        answer = script(seen) if callable(script) else script
        if answer.delay:
            time.sleep(answer.delay)
        try:
            wfile.write(_render(answer, head_only=method == "HEAD"))
            wfile.flush()
        except OSError:
            return False
        return not answer.close and headers.get("connection", "").lower() != "close"


def _render(answer: Answer, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} Status"]
    names = {name.lower() for name, _ in answer.headers}
    if answer.date and "date" not in names:
        lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.extend(f"{name}: {value}" for name, value in answer.headers)
    no_body = answer.status in (204, 304) or 100 <= answer.status < 200
    if answer.chunked and not no_body:
        lines.append("Transfer-Encoding: chunked")
    elif not no_body and "content-length" not in names:
        lines.append(f"Content-Length: {len(answer.body)}")
    if answer.close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or no_body:
        return head
    if answer.chunked:
        body = answer.body
        parts = [b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000]) for i in range(0, len(body), 1000)]
        return head + b"".join(parts) + b"0\r\n\r\n"
    return head + answer.body


def http_date(offset: float = 0.0) -> str:
    """An IMF-fixdate ``offset`` seconds from now (negative: in the past)."""
    return formatdate(time.time() + offset, usegmt=True)


def cached_site(origin: ScriptedOrigin, name: str = "cached", hosts: list[str] | None = None,
                **cache: Any) -> dict[str, Any]:
    """A plain-HTTP site with the cache on in front of the scripted origin (extra ``cache`` keys as given)."""
    return {
        "name": name,
        "hosts": hosts or [f"{name}.example"],
        "origins": [origin.url],
        "cache": {"enabled": True, **cache},
    }


def get(port: int, path: str, host: str = "cached.example", headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes = b"", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns status, headers (lower-case names, repeated ones joined) and body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    if body:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    out: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
    if out.get("transfer-encoding", "").lower() == "chunked":
        body_out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body_out += rest[:size]
            rest = rest[size + 2:]
        rest = body_out
    return int(status_line.split()[1]), out, rest


# --- slow origins, checkable bodies, Cache-Status parameters (stale, ranges, collapsing, purge and crash tests) ------


class _Trickle:
    """A handler's write file that sends every write in ``piece``-byte pieces, ``interval`` seconds apart."""

    def __init__(self, wfile: Any, piece: int, interval: float) -> None:
        self.wfile, self.piece, self.interval = wfile, piece, interval

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for start in range(0, len(view), self.piece):
            self.wfile.write(view[start:start + self.piece])
            self.wfile.flush()
            time.sleep(self.interval)
        return len(data)

    def __getattr__(self, name: str) -> Any:  # flush, close, closed: the socket file's own
        return getattr(self.wfile, name)


class TricklingOrigin(ScriptedOrigin):
    """A ScriptedOrigin whose answers (head and body) leave in small pieces with pauses: responses are still
    arriving when a test acts on the edge (a client leaves, the edge is killed). ~``piece / interval`` bytes/s."""

    def __init__(self, piece: int = 16384, interval: float = 0.01) -> None:
        super().__init__()
        self.piece, self.interval = piece, interval
        deep_backlog(self)

    def _one(self, handler: socketserver.StreamRequestHandler) -> bool:
        if not isinstance(handler.wfile, _Trickle):
            handler.wfile = _Trickle(handler.wfile, self.piece, self.interval)
        return super()._one(handler)


def deep_backlog(origin: ScriptedOrigin) -> ScriptedOrigin:
    """Let the origin queue 512 connections (socketserver's default of 5 makes the edge's 6th concurrent connect
    wait for a SYN retransmission, a second or more, when many requests go to the origin at once)."""
    origin.server.socket.listen(512)
    return origin


def body_for(path: str, size: int) -> bytes:
    """``size`` bytes that only ``path`` produces (seeded by it): a test checks a body byte for byte, with no list."""
    return random.Random(path).randbytes(size)


def cache_status(headers: dict[str, str]) -> dict[str, str | bool]:
    """The parameters of a response's Cache-Status (RFC 9211), e.g. ``{"hit": True, "ttl": "59"}``; the cache's name
    under ``"name"``. Bare keys are True."""
    name, *params = [part.strip() for part in headers.get("cache-status", "").split(";")]
    out: dict[str, str | bool] = {"name": name}
    for param in params:
        key, eq, value = param.partition("=")
        out[key] = value if eq else True
    return out


def status_params(headers: dict[str, str]) -> dict[str, str | bool]:
    """The Cache-Status of a response as {parameter: value or True}; asserts there is exactly one, from the edge."""
    value = headers.get("cache-status")
    assert value is not None, f"no Cache-Status in {headers}"
    assert "," not in value, f"more than one Cache-Status member: {value!r}"
    name, *params = [part.strip() for part in value.split(";")]
    assert name == "tlsedge", value
    out: dict[str, str | bool] = {}
    for param in params:
        key, equals, arg = param.partition("=")
        out[key] = arg if equals else True
    return out


def is_hit(headers: dict[str, str]) -> bool:
    return status_params(headers).get("hit") is True
