"""Helpers for the end-to-end tests of origin pools: a fleet of small origins that can be stopped and restarted on
the same port, an nginx member for the same fleet, a client load loop, and shortcuts for pool configs and requests.

The fleet servers run in threads of the test process, so a test flips their behaviour (fail with 500, reset, fail
their health check) and reads their counters directly, without a control protocol. Each answers with its own name
(body and ``X-Server`` header), which is how the tests see where the edge sent a request.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_support import (
    BLOG_HOSTS,
    ConnClosed,
    Edge,
    RawConn,
    Response,
    free_port,
    site,
    start_nginx,
    stop_process,
    wait_for,
    write_nginx_conf,
)

from tlsedge.edge.worker import SWEEP_INTERVAL

HEALTH_PATH = "/health"
_MAX_HEAD = 64 * 1024


@dataclass
class Seen:
    """One request as a fleet server received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class FleetServer:
    """A threaded HTTP/1.1 origin on a fixed port that answers with its name, and counts what it gets.

    ``mode`` picks what it does with a request (health checks excepted): ``"ok"`` (200, body = name), ``"fail500"``,
    ``"reset"`` (read the request, then reset the connection without a byte), ``"head_then_die"`` (a head announcing
    1000 bytes, 100 of them, then close). ``delay`` (or ``?delay=S`` in the target) holds the answer that long.
    ``GET /health`` answers 200 with ``health_body`` while ``healthy``, else 503; checks are counted apart.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.delay = 0.0
        self.healthy = True
        self.health_body = "healthy"
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self.port = 0
        self.reset_counts()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"FleetServer({self.name}, {self.url})"

    # --- counters

    def reset_counts(self) -> None:
        with self._lock:
            self.seen: list[Seen] = []
            self.connections = 0
            self.health_checks = 0
            self.health_failed = 0
            self.inflight = 0
            self.max_inflight = 0

    @property
    def requests(self) -> int:
        """Requests received (health checks not counted)."""
        return len(self.seen)

    def targets(self) -> list[str]:
        with self._lock:
            return [s.target for s in self.seen]

    # --- life

    def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Like the process dying: the port refuses connections and every open connection is closed."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the accept thread
            listener.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    conn.close()
                    return
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while self._one(conn, buf):
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    # --- requests

    def _one(self, conn: socket.socket, buf: bytearray) -> bool:
        """Serve one request; whether the connection stays open."""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data or len(buf) > _MAX_HEAD:
                return False
            buf += data
        end = buf.index(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        method, target, _ = lines[0].split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(buf) < length:
            data = conn.recv(65536)
            if not data:
                return False
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        keep = not any(k.lower() == "connection" and "close" in v.lower() for k, v in headers)
        if target.split("?")[0] == HEALTH_PATH:
            self._health(conn)
            return keep
        return self._request(conn, Seen(method, target, headers, body)) and keep

    def _health(self, conn: socket.socket) -> None:
        with self._lock:
            self.health_checks += 1
            healthy = self.healthy
            if not healthy:
                self.health_failed += 1
        text = self.health_body if healthy else "unhealthy"
        conn.sendall(_response("200 OK" if healthy else "503 Service Unavailable", self.name, text.encode()))

    def _request(self, conn: socket.socket, seen: Seen) -> bool:
        with self._lock:
            self.seen.append(seen)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            mode = self.mode
        try:
            delay = self.delay
            if "delay=" in seen.target:
                delay = float(seen.target.split("delay=", 1)[1].split("&")[0])
            if delay:
                time.sleep(delay)
            if mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            if mode == "head_then_die":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Server: %s\r\n\r\n" % self.name.encode()
                             + b"x" * 100)
                return False
            if mode == "fail500":
                conn.sendall(_response("500 Internal Server Error", self.name, b"failing"))
            else:
                conn.sendall(_response("200 OK", self.name, self.name.encode()))
            return True
        finally:
            with self._lock:
                self.inflight -= 1


class Fleet:
    """Fleet servers made for one test (or module), all stopped at the end."""

    def __init__(self) -> None:
        self.servers: list[FleetServer] = []

    def __call__(self, *names: str) -> list[FleetServer]:
        made = [FleetServer(name) for name in names]
        self.servers.extend(made)
        return made

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def _response(status: str, name: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nX-Server: {name}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


NGINX_FLEET_HTTP = """\
    access_log {prefix}/access.log;
    keepalive_requests 100000;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        location = {health} {{ access_log off; return 200 "healthy"; }}
        location / {{ add_header X-Server {name} always; return 200 "{name}"; }}
    }}"""


class NginxServer:
    """An nginx member of a fleet: answers with its name like a FleetServer; stopped with a real signal and started
    again on the same port. Requests are counted from its access log."""

    def __init__(self, prefix: Path, name: str = "nginx") -> None:
        self.name = name
        self.prefix = prefix
        self.port = free_port()
        http = NGINX_FLEET_HTTP.format(prefix=prefix, port=self.port, name=name, health=HEALTH_PATH)
        self.conf = write_nginx_conf(prefix, http)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        log = self.prefix / "access.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def start(self) -> None:
        self.proc = start_nginx(self.prefix, self.conf, [self.port])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)


# ---------------------------------------------------------------------------------------------------------- configs


def health(interval: str = "200ms", timeout: str = "150ms", rise: int = 1, fall: int = 1, **extra: Any) -> dict:
    """A fast ``[site.pool.health]`` table on the fleet's health path."""
    return {"path": HEALTH_PATH, "interval": interval, "timeout": timeout, "rise": rise, "fall": fall, **extra}


def pool(name: str, servers: list[Any], **settings: Any) -> dict[str, Any]:
    """A ``[[site.pool]]`` table; ``servers`` holds FleetServer/NginxServer objects, URLs or server tables."""
    return {"name": name, "servers": [getattr(s, "url", s) for s in servers], **settings}


def pool_site(cert: Any, pools: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The ``blog`` site served by the given pools instead of ``origins``."""
    table = site("blog", BLOG_HOSTS, [], cert, **extra)
    del table["origins"]
    table["pool"] = pools
    return table


# ---------------------------------------------------------------------------------------------------------- clients


def get(edge: Edge, target: str = "/", *, method: str = "GET", headers: list[tuple[str, str]] | None = None,
        body: bytes = b"", source: str | None = None, conn: RawConn | None = None) -> Response:
    """One request, over ``conn`` or a new TLS connection (from ``source``, an address of 127/8)."""
    if conn is not None:
        return conn.request(method, target, headers=headers, body=body)
    with edge.conn(source=source) as fresh:
        return fresh.request(method, target, headers=headers, body=body)


def served_by(edge: Edge, count: int, target: str = "/", **kw: Any) -> list[str]:
    """The server names of ``count`` sequential requests over one keep-alive connection (all must be 200)."""
    names = []
    with edge.conn() as conn:
        for _ in range(count):
            resp = conn.request("GET", target, **kw)
            assert resp.status == 200, (resp.status, resp.body[:300])
            names.append(resp.header("x-server"))
    return names


class LoadLoop:
    """A client thread sending idempotent GETs back to back until stopped, alternating a few requests on one
    keep-alive connection with a new connection; every status other than 200 or transport error is a failure."""

    def __init__(self, edge: Edge, target: str = "/", per_connection: int = 4) -> None:
        self.edge = edge
        self.target = target
        self.per_connection = per_connection
        self.by_server: Counter[str] = Counter()
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.edge.conn(timeout=10) as conn:
                    for _ in range(self.per_connection):
                        if self._stop.is_set():
                            return
                        resp = conn.request("GET", f"{self.target}?n={self.count}")
                        self._record(resp)
                        if resp.header("connection") == "close":
                            break
            except (OSError, ConnClosed, AssertionError) as exc:
                self.count += 1
                self.failures.append(f"request {self.count}: {exc!r}")

    def _record(self, resp: Response) -> None:
        self.count += 1
        if resp.status == 200 and resp.complete:
            self.by_server[resp.header("x-server") or "?"] += 1
        else:
            self.failures.append(f"request {self.count}: {resp.status} {resp.header('x-request-id')} "
                                 f"{resp.body[:200]!r}")


def wait_logged(edge: Edge, pattern: str, timeout: float = 10) -> re.Match:
    """The first match of ``pattern`` in the edge's error log, once it is there."""
    regex = re.compile(pattern)
    return wait_for(lambda: regex.search(edge.error_text()), timeout, what=f"{pattern!r} in the error log")


def wait_health(edge: Edge, server: FleetServer | NginxServer, state: str) -> re.Match:
    """The monitor's log line for ``server`` going ``"DOWN"`` or coming ``"UP again"``, once the workers have read
    the verdict too (they take it from shared memory at their next sweep). Group 1 is the reason."""
    match = wait_logged(edge, rf"server {re.escape(server.url)} is {state}: (.*)")
    time.sleep(SWEEP_INTERVAL + 0.1)
    return match


def tlsedge_status(edge: Edge, *args: str) -> subprocess.CompletedProcess:
    """``tlsedge status -c <config>`` through the installed command."""
    command = Path(sys.executable).with_name("tlsedge")
    argv = [str(command)] if command.exists() else [sys.executable, "-m", "tlsedge"]
    return subprocess.run([*argv, "status", "-c", str(edge.config_path), *args], capture_output=True, text=True,
                          timeout=30)
