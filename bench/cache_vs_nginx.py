#!/usr/bin/env python3
"""tlsedge's cache vs nginx ``proxy_cache``: cache HITs and request collapsing, measured in one run, one table.

Issue 5 asks for cache HIT requests/s and CPU µs/request for a 1 KiB and a 100 KiB object against nginx's
``proxy_cache`` HIT (target: at most 1.3x nginx's CPU per hit), and for the origin requests that 200 concurrent
misses of one key cause (target: 1). Why the script is shaped the way it is:

* It measures the way ``edge_vs_nginx.py`` does and imports its helpers: wrk keep-alive load on one core, the proxy
  under test (one worker) pinned to the other, its **CPU µs per request** summed over its whole process tree from
  ``/proc``, medians of ``--runs`` runs, the server order alternating per run. Around every window it also sums the
  CPU of processes outside the test (``balancing.py``'s helpers) and measures a disturbed window again.
* Both proxies sit in front of the same nginx origin, which serves the objects with ``Cache-Control: max-age=3600``.
  Both caches are warmed first, and a HIT is checked from the response (``Cache-Status: tlsedge; hit`` /
  ``X-Cache-Status: HIT``) before every window. During the window the origin's own request counter must not move:
  that proves every request wrk made was answered from the cache, which wrk itself cannot see.
* HTTPS like the other benchmarks, and plain HTTP too: without TLS the figure is mostly the cache's own cost.
* Collapsing: a tiny origin in this process counts the requests per path and answers after ``--collapse-delay``;
  ``--collapse-clients`` TLS connections are opened first, then all send their GET of one fresh key at once. The
  edge is measured with ``workers = 1`` and ``workers = 2`` (collapsing within one worker is in memory; two workers
  may each fetch once), nginx with ``proxy_cache_lock on`` as the yardstick.

Only the standard library is needed; external tools (nginx, wrk, openssl, taskset) are checked first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package: import its helpers by path
from balancing import check_edge_conf, others_cpu_seconds, process_ticks
from edge_vs_nginx import (
    HOST,
    LOOPBACK,
    REPO,
    RESULTS_DIR,
    WRK_LUA,
    BenchRun,
    CpuSampler,
    OriginRef,
    Service,
    Target,
    Window,
    check_tools,
    default_edge_cmd,
    environment,
    free_port,
    make_certificates,
    make_docroot,
    nginx_binary,
    profile_edge,
    summarize_speedscope,
    tree_cpu_seconds,
    wait_port,
    write_origin_conf,
    write_proxy_conf,
)
from edge_vs_nginx import write_edge_conf as write_base_edge_conf

SCENARIOS = ("hit_1k", "hit_100k")
PATHS = {"hit_1k": "/1k", "hit_100k": "/100k"}
TRANSPORTS = ("https", "http")
SERVERS = ("tlsedge", "nginx")
CPU_TARGET = 1.3  # issue 5: edge CPU per cache hit <= 1.3x nginx's proxy_cache hit, same run
COLLAPSE_TARGET = 1  # issue 5: origin requests caused by N concurrent misses of one key
MAX_AGE = 3600
STATUS_FIELD = {"tlsedge": "cache-status", "nginx": "x-cache-status"}


def is_hit(server: str, value: str) -> bool:
    """The response says it came from the cache: RFC 9211 ``tlsedge; hit`` for the edge, HIT for nginx."""
    if server == "tlsedge":
        return value.startswith("tlsedge; hit")
    return value == "HIT"


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def _replace_once(text: str, old: str, new: str, where: Path) -> str:
    """Edit a config written by edge_vs_nginx.py; fail loudly when its shape changed instead of benchmarking garbage."""
    if text.count(old) != 1:
        raise RuntimeError(f"edge_vs_nginx.py changed the shape of {where}: expected one {old!r}")
    return text.replace(old, new)


def write_cached_origin_conf(prefix: Path, port: int, docroot: Path) -> Path:
    """edge_vs_nginx.py's static origin, with every object fresh for an hour (what both caches honour)."""
    conf = write_origin_conf(prefix, port, docroot)
    text = _replace_once(
        conf.read_text(), "location / { }", f'location / {{ add_header Cache-Control "max-age={MAX_AGE}"; }}', conf
    )
    conf.write_text(text)
    return conf


def write_nginx_cache_conf(
    prefix: Path,
    https_port: int,
    http_port: int | None,
    origin_port: int,
    certs: dict[str, Path],
    core: int | None,
    workers: int = 1,
) -> Path:
    """edge_vs_nginx.py's reference proxy with ``proxy_cache`` on (freshness from the origin's headers, as the edge),
    ``proxy_cache_lock`` (nginx's collapsing), ``X-Cache-Status``, and a plain-HTTP listener beside the TLS one.

    ``core`` None: the workers are not pinned (the collapsing runs); ``workers`` > 1 only there.
    """
    conf = write_proxy_conf(prefix, https_port, origin_port, certs, 0)
    text = conf.read_text()
    pinned = f"worker_cpu_affinity {bin(1 << core)[2:]};" if core is not None else ""
    text = _replace_once(text, "worker_processes 1;", f"worker_processes {workers};", conf)
    text = _replace_once(text, "worker_cpu_affinity 1;", pinned, conf)
    # With sendfile and tcp_nopush both on, nginx 1.22 stalls ~40 ms (a delayed ACK) on every keep-alive cache hit
    # of 100 KiB over plain HTTP: 26 hits/s on one connection instead of 4,660, at 2.5x the CPU per hit. HTTPS does
    # not use sendfile, so this only keeps the plain-HTTP figures from flattering the edge.
    text = _replace_once(text, "tcp_nopush on;", "tcp_nopush off;", conf)
    text = _replace_once(
        text,
        "    upstream origin {",
        f"    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=60m "
        "use_temp_path=off;\n    upstream origin {",
        conf,
    )
    text = _replace_once(
        text,
        "proxy_pass http://origin;",
        "proxy_pass http://origin;\n"
        "                proxy_cache bench;\n"
        "                proxy_cache_lock on;\n"
        "                add_header X-Cache-Status $upstream_cache_status always;",
        conf,
    )
    if http_port is not None:
        listen = f"listen {LOOPBACK}:{https_port} ssl backlog=4096;"
        text = _replace_once(text, listen, f"{listen}\n            listen {LOOPBACK}:{http_port} backlog=4096;", conf)
    conf.write_text(text)
    return conf


def write_edge_cache_conf(
    d: Path, https_port: int, http_port: int | None, origin_port: int, certs: dict[str, Path], workers: int = 1
) -> Path:
    """edge_vs_nginx.py's edge (one worker, access log off, same certificate) with ``[site.cache] enabled = true``,
    the ``[cache]`` storage table, and a plain-HTTP listener that serves the site instead of redirecting."""
    d.mkdir()
    site = f'origins = ["http://{LOOPBACK}:{origin_port}"]\n'
    if http_port is not None:
        site += "redirect_http = false\n"
    site += (
        "\n[site.cache]\nenabled = true\n"
        f'\n[cache]\nmemory_size = "64MiB"\ndisk_size = "256MiB"\npath = "{d / "cache"}"\nstatus_name = "tlsedge"\n'
    )
    cfg = write_base_edge_conf(d, https_port, origin_port, certs, site)
    text = cfg.read_text()
    if workers != 1:
        text = _replace_once(text, "workers = 1\n", f"workers = {workers}\n", cfg)
    if http_port is not None:
        https = f'https = ["{LOOPBACK}:{https_port}"]\n'
        text = _replace_once(text, https, f'{https}http = ["{LOOPBACK}:{http_port}"]\n', cfg)
    cfg.write_text(text)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A running proxy under test."""

    name: str
    https_port: int
    http_port: int
    service: Service

    def url(self, transport: str, path: str) -> str:
        return f"{transport}://{HOST}:{self.port(transport)}{path}"

    def port(self, transport: str) -> int:
        return self.https_port if transport == "https" else self.http_port


@dataclass
class Reply:
    """One response as the checks need it."""

    status: int
    headers: dict[str, str]  # lower-case names, last value wins
    body: bytes


def get(port: int, path: str, tls: bool, cafile: Path, timeout: float = 5.0) -> Reply:
    """One GET (SNI and Host bench.example, verified TLS when ``tls``), reading to EOF (Connection: close)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls:
            sock = ssl.create_default_context(cafile=str(cafile)).wrap_socket(raw, server_hostname=HOST)
        with sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
    return parse_reply(bytes(data))


def parse_reply(data: bytes) -> Reply:
    """Status, headers and body of a response with a Content-Length (all these servers send one here)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split(" ", 2)[1]), headers, body)


def wait_answers(svc: Service, port: int, path: str, want: bytes, cafile: Path, timeout: float = 30.0) -> None:
    """Wait until the proxy answers ``path`` over TLS with the right bytes (the edge needs a moment to start)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; log tail:\n{svc.log_tail()}")
        try:
            r = get(port, path, True, cafile)
            if r.status == 200 and r.body == want:
                return
            last = f"GET {path}: status {r.status}, {len(r.body)} bytes (want 200, {len(want)})"
        except (OSError, ValueError, IndexError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise RuntimeError(f"{svc.name} not ready on port {port} after {timeout:.0f}s ({last}); log:\n{svc.log_tail()}")


def check_hit(server: str, port: int, path: str, tls: bool, want: bytes, cafile: Path) -> str | None:
    """None when the proxy answers ``path`` from its cache with the right body, else what was wrong."""
    r = get(port, path, tls, cafile)
    value = r.headers.get(STATUS_FIELD[server], "")
    if r.status != 200 or r.body != want:
        return f"GET {path}: status {r.status}, {len(r.body)} bytes (want 200, {len(want)})"
    if not is_hit(server, value):
        return f"GET {path} was not a hit: {STATUS_FIELD[server]}: {value or '(absent)'}"
    return None


def warm(proxy: Proxy, transports: Sequence[str], docroot: Path, cafile: Path) -> str:
    """Fill the proxy's cache for every object through every listener (nginx's key has the scheme in it), then check
    that the next request of each is a hit. Returns the status field of the last check, for the log line."""
    value = ""
    for transport in transports:
        port, tls = proxy.port(transport), transport == "https"
        for path in PATHS.values():
            want = (docroot / path.lstrip("/")).read_bytes()
            get(port, path, tls, cafile)
            problem = check_hit(proxy.name, port, path, tls, want, cafile)
            if problem:
                raise RuntimeError(f"{proxy.name} did not cache {transport} {path}: {problem}")
            value = get(port, path, tls, cafile).headers[STATUS_FIELD[proxy.name]]
    return value


def origin_requests(port: int) -> int:
    """Requests the origin has handled so far, from its stub_status (this query included)."""
    with socket.create_connection((LOOPBACK, port), timeout=3) as s:
        s.sendall(b"GET /__status HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := s.recv(4096):
            data += chunk
    # "Active connections: 1\nserver accepts handled requests\n 12 12 34\n..."
    return int(parse_reply(bytes(data)).body.decode().splitlines()[2].split()[2])


# --------------------------------------------------------------------------------------------------------------------
# Cache HITs under wrk
# --------------------------------------------------------------------------------------------------------------------


def run_wrk(lua: Path, url: str, seconds: int, connections: int, core: int) -> dict[str, Any]:
    """edge_vs_nginx.run_wrk for either scheme: one wrk run pinned to the load core, its counters as a dict."""
    cmd = [
        "taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout=5s",
        "-s", str(lua), "-H", f"Host: {HOST}", url,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line[len("WRKJSON ") :]))
    raise RuntimeError(f"wrk gave no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")


@dataclass
class Sample:
    """One measured HIT window."""

    server: str
    scenario: str
    transport: str
    run: int
    requests: int
    seconds: float
    window: Window
    wrk: dict[str, Any]
    origin_requests: int  # requests that reached the origin in the window: 0 when every one was a hit
    hit_check: str | None  # what was wrong with the hit check before the window (None: a hit)
    others_pct: float  # CPU of processes outside the test, % of a core

    @property
    def key(self) -> str:
        return f"{self.transport}_{self.scenario}"

    def metrics(self) -> dict[str, float]:
        n = self.requests
        return {
            "req_per_s": n / self.seconds if self.seconds > 0 else 0.0,
            "cpu_us_per_req": 1e6 * self.window.server_cpu_s / n if n else math.inf,
            "server_core_pct": 100.0 * self.window.server_cpu_s / self.window.seconds if self.window.seconds else 0.0,
            "p99_ms": self.wrk["lat_p99_us"] / 1000.0,
            "mb_per_s": self.wrk["bytes"] / self.seconds / 1e6 if self.seconds > 0 else 0.0,
            "origin_requests": float(self.origin_requests),
            "others_pct": self.others_pct,
        }


def measure(
    proxy: Proxy,
    scenario: str,
    transport: str,
    run: int,
    args: argparse.Namespace,
    lua: Path,
    origin: Service,
    origin_port: int,
    docroot: Path,
    cafile: Path,
) -> Sample:
    """Warm-up load, a hit check, then one wrk window with the proxy tree's CPU and the origin's counter around it."""
    path = PATHS[scenario]
    url = proxy.url(transport, path)
    if args.warmup > 0:
        run_wrk(lua, url, max(1, round(args.warmup)), args.connections, args.load_core)
    want = (docroot / path.lstrip("/")).read_bytes()
    hit_check = check_hit(proxy.name, proxy.port(transport), path, transport == "https", want, cafile)
    sampler = CpuSampler(proxy.service.pid, [args.server_core, args.load_core])
    test = [proxy.service.pid, origin.pid, os.getpid()]  # wrk, our child, is born and reaped inside the window
    before = origin_requests(origin_port)
    procs0 = process_ticks()
    sampler.start()
    res = run_wrk(lua, url, args.duration, args.connections, args.load_core)
    w = sampler.stop()
    procs1 = process_ticks()
    during = origin_requests(origin_port) - before - 1  # minus the second status query itself
    others = others_cpu_seconds(procs0, procs1, test)
    return Sample(
        proxy.name, scenario, transport, run, int(res["requests"]), res["duration_us"] / 1e6, w, res,
        during, hit_check, 100.0 * others / w.seconds,
    )  # fmt: skip


def sample_flags(s: Sample, noise_limit: float) -> list[str]:
    """What makes a HIT window suspect: errors, a response that was not a hit, load on the origin, others' load."""
    flags = [f"wrk errors {k[4:]}={v}" for k, v in s.wrk.items() if k.startswith("err_") and v]
    if s.requests == 0:
        flags.append("no completed requests")
    if s.hit_check:
        flags.append(s.hit_check)
    if s.origin_requests:
        flags.append(f"{s.origin_requests} requests reached the origin (not all hits)")
    if s.others_pct > noise_limit:
        flags.append(f"other processes used {s.others_pct:.0f}% of a core")
    return flags


def measure_quiet(
    proxy: Proxy,
    scenario: str,
    transport: str,
    run: int,
    args: argparse.Namespace,
    discarded: list[Sample],
    **kw: Any,
) -> Sample:
    """balancing.py's rule: measure again (up to ``--retries``) while other processes disturbed the window, and keep
    the least disturbed attempt (the others go to the results file)."""
    attempts = [measure(proxy, scenario, transport, run, args, **kw)]
    print(progress_line(attempts[-1], args), flush=True)
    while attempts[-1].others_pct > args.noise_limit and len(attempts) <= args.retries:
        attempts.append(measure(proxy, scenario, transport, run, args, **kw))
        print(f"{progress_line(attempts[-1], args)}  (attempt {len(attempts)})", flush=True)
    best = min(attempts, key=lambda s: s.others_pct)
    discarded.extend(s for s in attempts if s is not best)
    return best


def progress_line(s: Sample, args: argparse.Namespace) -> str:
    m = s.metrics()
    flags = sample_flags(s, args.noise_limit)
    return (
        f"  run {s.run} {s.key:14} {s.server:8} {m['req_per_s']:>9,.0f} req/s {m['cpu_us_per_req']:>7.1f} µs CPU/req  "
        f"core {m['server_core_pct']:3.0f}%  origin requests {s.origin_requests}  "
        f"other processes {s.others_pct:3.0f}%" + (f"  !! {'; '.join(flags)}" if flags else "")
    )


# --------------------------------------------------------------------------------------------------------------------
# Collapsing
# --------------------------------------------------------------------------------------------------------------------


class SlowOrigin:
    """An HTTP/1.1 keep-alive origin in a thread of this script: ``/slow/...`` answers after ``delay`` seconds,
    cacheable for an hour, and every request is counted per path (so collapsing is counted exactly, not guessed)."""

    def __init__(self, delay: float, body: bytes) -> None:
        self.delay = delay
        self.body = body
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with origin.lock:
                    origin.counts[self.path] += 1
                slow = self.path.startswith("/slow/")
                if slow:
                    time.sleep(origin.delay)
                self.send_response(200)
                self.send_header("Cache-Control", f"max-age={MAX_AGE}" if slow else "no-store")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(origin.body)))
                self.end_headers()
                self.wfile.write(origin.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: 200 lines per trial would bury the table."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

        self.server = Server((LOOPBACK, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Trial:
    """One burst of concurrent misses of one fresh key."""

    server: str
    workers: int
    run: int
    path: str
    clients: int
    origin_requests: int
    ok: int  # 200 with the right body
    failures: list[str]
    statuses: dict[str, int]  # the cache status field's values (ttl dropped), counted
    send_ms: float  # first to last request written
    last_ms: float  # first request written to last response read
    connect_s: float


async def _one_response(reader: asyncio.StreamReader) -> tuple[Reply, float]:
    head = await reader.readuntil(b"\r\n\r\n")
    reply = parse_reply(head)
    length = int(reply.headers.get("content-length", "0"))
    reply.body = await reader.readexactly(length)
    return reply, time.monotonic()


async def _burst(port: int, path: str, clients: int, cafile: Path, timeout: float) -> dict[str, Any]:
    """Open every connection (TLS handshakes done), then write every request back to back, then read them all."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    t0 = time.monotonic()
    conns = await asyncio.wait_for(
        asyncio.gather(
            *(asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=HOST) for _ in range(clients))
        ),
        timeout,
    )
    connected = time.monotonic()
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        start = time.monotonic()
        for _, writer in conns:
            writer.write(request)
        sent = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(_one_response(r) for r, _ in conns), return_exceptions=True), timeout
        )
    finally:
        for _, writer in conns:
            writer.close()
    return {"results": results, "connect_s": connected - t0, "start": start, "sent": sent}


def run_trial(
    server: str, workers: int, run: int, port: int, origin: SlowOrigin, args: argparse.Namespace, cafile: Path
) -> Trial:
    """One burst against one proxy, with a key no one asked for before."""
    path = f"/slow/{server}-w{workers}-r{run}-{os.urandom(4).hex()}"
    out = asyncio.run(_burst(port, path, args.collapse_clients, cafile, args.collapse_delay + 20))
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    ok = 0
    last = out["start"]
    for res in out["results"]:
        if isinstance(res, BaseException):
            failures.append(f"{type(res).__name__}: {res}")
            continue
        reply, done = res
        last = max(last, done)
        value = reply.headers.get(STATUS_FIELD[server], "(absent)")
        statuses["; ".join(p for p in value.split("; ") if not p.startswith("ttl="))] += 1
        if reply.status == 200 and reply.body == origin.body:
            ok += 1
        else:
            failures.append(f"status {reply.status}, {len(reply.body)} bytes")
    time.sleep(0.05)  # a straggler fetch (a second worker's) would be counted just after the responses
    return Trial(
        server, workers, run, path, args.collapse_clients, origin.count(path), ok, failures[:5], dict(statuses),
        1000.0 * (out["sent"] - out["start"]), 1000.0 * (last - out["start"]), out["connect_s"],
    )  # fmt: skip


def collapse(
    tmp: Path, certs: dict[str, Path], args: argparse.Namespace, edge_cmd: list[str], services: list[Service]
) -> list[Trial]:
    """Every (server, workers) pair gets its own proxy in front of the slow origin, then ``--collapse-runs`` bursts.

    These proxies are not pinned: with two workers on two cores the race between workers is as real as it gets.
    """
    origin = SlowOrigin(args.collapse_delay, os.urandom(4096))
    trials: list[Trial] = []
    try:
        proxies: list[tuple[str, int, int, Service]] = []
        for workers in args.collapse_workers:
            for server in args.servers:
                key = f"collapse_{server}_w{workers}"
                port = free_port()
                if server == "nginx":
                    conf = write_nginx_cache_conf(tmp / key, port, None, origin.port, certs, None, workers)
                    cmd = [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "e.log")]
                else:
                    cfg = write_edge_cache_conf(tmp / key, port, None, origin.port, certs, workers)
                    check_edge_conf(edge_cmd, cfg)
                    cmd = [*edge_cmd, "serve", "-c", str(cfg)]
                svc = Service(key, cmd, tmp / f"{key}.log", tmp)
                services.append(svc)
                proxies.append((server, workers, port, svc))
        for _, workers, port, svc in proxies:
            wait_answers(svc, port, "/ready", origin.body, certs["ca"])
            time.sleep(0.5 if workers > 1 else 0.0)  # every worker listening, not only the first
            print(f"  {svc.name:22} ready on {LOOPBACK}:{port}, tree {tree_cpu_seconds(svc.pid)[1]}", flush=True)
        for run in range(1, args.collapse_runs + 1):
            for server, workers, port, _ in proxies:
                t = run_trial(server, workers, run, port, origin, args, certs["ca"])
                trials.append(t)
                print(
                    f"  run {run} collapse {server:8} workers={workers}: {t.origin_requests} origin request(s) for "
                    f"{t.clients} concurrent misses; {t.ok}/{t.clients} ok; last response after {t.last_ms:.0f} ms "
                    f"(requests sent in {t.send_ms:.1f} ms)" + (f"  !! {t.failures[0]}" if t.failures else ""),
                    flush=True,
                )
    finally:
        origin.close()
    return trials


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def medians(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, float]]]:
    """{transport_scenario: {server: {metric: median over runs}}} with the run-to-run spread of CPU µs/request."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for s in samples:
        groups.setdefault((s.key, s.server), []).append(s.metrics())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (key, server), rows in groups.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        cpu = [r["cpu_us_per_req"] for r in rows]
        if len(cpu) > 1:
            med["cpu_spread"] = (max(cpu) - min(cpu)) / med["cpu_us_per_req"]
        med["origin_requests"] = max(r["origin_requests"] for r in rows)  # any non-hit matters, not the median
        out.setdefault(key, {})[server] = med
    return out


def _table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: set[int], groups: bool = True) -> list[str]:
    """Aligned columns; with ``groups``, a blank line before each row that starts a group (a non-empty first cell)."""
    widths = [max(len(r[i]) for r in [*rows, cols]) for i in range(len(cols))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    for r in rows:
        if groups and r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    return out


def render_hits(med: dict[str, dict[str, dict[str, float]]], keys: Sequence[str]) -> list[str]:
    """edge_vs_nginx.py's table: each figure for tlsedge, nginx and the ratio, the CPU target beside."""
    specs: list[tuple[str, str, Callable[[float], str], str]] = [
        ("req_per_s", "hits/s", lambda v: f"{v:,.0f}", "higher"),
        ("mb_per_s", "MB/s", lambda v: f"{v:,.1f}", "higher"),
        ("p99_ms", "p99 latency ms", lambda v: f"{v:.2f}", "lower"),
        ("cpu_us_per_req", "server CPU µs/hit", lambda v: f"{v:.1f}", "lower"),
        ("cpu_spread", "  run-to-run spread", lambda v: f"{100 * v:.0f}%", ""),
        ("server_core_pct", "server CPU, % of a core", lambda v: f"{v:.0f}", ""),
        ("origin_requests", "origin requests (max/window)", lambda v: f"{v:.0f}", "0 = all hits"),
    ]
    rows: list[tuple[str, ...]] = []
    for key in keys:
        if key not in med:
            continue
        transport, scenario = key.split("_", 1)
        title = f"{transport.upper()} keep-alive HIT, {PATHS[scenario][1:].replace('k', ' KiB')}"
        for i, (metric, label, fmt, note) in enumerate(specs):
            e = med[key].get("tlsedge", {}).get(metric)
            n = med[key].get("nginx", {}).get(metric)
            ratio = f"{e / n:.2f}x" if e is not None and n and metric not in ("cpu_spread", "origin_requests") else "-"
            target = f"({note} is better)" if note in ("higher", "lower") else note
            if metric == "cpu_us_per_req":
                verdict = ("ok" if e / n <= CPU_TARGET else "MISS") if e is not None and n else ""
                target = f"<= {CPU_TARGET:.1f}x {verdict}".rstrip()
            rows.append(
                (title if i == 0 else "", label, fmt(e) if e is not None else "-", fmt(n) if n is not None else "-",
                 ratio, target)
            )  # fmt: skip
    return _table(("scenario", "figure", "tlsedge", "nginx", "tlsedge/nginx", "target"), rows, {0, 1, 5})


def collapse_summary(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    """Per (server, workers): origin requests (median, max), responses ok, statuses, latency of the last response."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(f"{t.server} workers={t.workers}", []).append(t)
    out: dict[str, dict[str, Any]] = {}
    for key, ts in groups.items():
        statuses: Counter[str] = Counter()
        for t in ts:
            statuses.update(t.statuses)
        out[key] = {
            "server": ts[0].server,
            "workers": ts[0].workers,
            "trials": len(ts),
            "origin_requests_median": statistics.median(t.origin_requests for t in ts),
            "origin_requests_max": max(t.origin_requests for t in ts),
            "ok": sum(t.ok for t in ts),
            "responses": sum(t.clients for t in ts),
            "statuses": dict(statuses.most_common()),
            "last_ms_median": statistics.median(t.last_ms for t in ts),
        }
    return out


def render_collapse(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    rows = []
    for s in sorted(summary.values(), key=lambda s: (s["workers"], SERVERS.index(s["server"]))):
        target = ""
        if s["server"] == "tlsedge":
            target = f"{COLLAPSE_TARGET} {'ok' if s['origin_requests_max'] <= COLLAPSE_TARGET else 'MISS'}"
        name = "nginx (proxy_cache_lock)" if s["server"] == "nginx" else s["server"]
        statuses = ", ".join(f"{n}x {v.removeprefix('tlsedge; ')}" for v, n in s["statuses"].items())
        rows.append(
            (name, str(s["workers"]), f"{s['origin_requests_median']:g} / {s['origin_requests_max']}", target,
             f"{s['ok']}/{s['responses']}", f"{s['last_ms_median']:.0f}", statuses)
        )  # fmt: skip
    cols = ("server", "workers", "origin requests (median / max)", "target", "responses ok", "last ms", "status field")
    head = (
        f"collapsing: {args.collapse_clients} concurrent GETs of one fresh key over TLS, origin answers after "
        f"{args.collapse_delay:g} s; {args.collapse_runs} burst(s) per row, a new key each"
    )
    return [head, *_table(cols, rows, {0, 3, 6}, groups=False)]


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure tlsedge's cache against nginx proxy_cache: HITs (CPU, req/s) and request collapsing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (< 1 min): --runs 1 --duration 2 --prewarm 1 --retries 0 --collapse-runs 1 unless given",
    )
    p.add_argument("--runs", type=int, default=None, help="repeats of every HIT window; the table shows medians (3)")
    p.add_argument("--duration", type=int, default=None, help="seconds per measured window (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window (wrk: whole seconds)")
    p.add_argument("--prewarm", type=int, default=None, help="seconds of load on each proxy once, before run 1 (3)")
    p.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections")
    p.add_argument("--server-core", type=int, default=0, help="core for the proxy under test")
    p.add_argument("--load-core", type=int, default=1, help="core for wrk, the origins and this script")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma list from tlsedge,nginx")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"HIT objects, from {','.join(SCENARIOS)}")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma list from https,http")
    p.add_argument("--collapse-clients", type=int, default=200, help="concurrent misses of one key per burst")
    p.add_argument("--collapse-delay", type=float, default=0.5, help="seconds the slow origin waits before answering")
    p.add_argument("--collapse-runs", type=int, default=None, help="bursts per (server, workers), a new key each (3)")
    p.add_argument("--collapse-workers", default="1,2", help="worker counts to measure collapsing with ('' = skip)")
    p.add_argument("--edge-cmd", default=None, help="command that runs tlsedge (default: .venv/bin/tlsedge)")
    p.add_argument(
        "--profile", action="store_true", help="after the HIT windows, py-spy the edge under HTTPS 1 KiB hits"
    )
    p.add_argument(
        "--profile-format",
        choices=("speedscope", "flamegraph", "raw"),
        default="speedscope",
        help="speedscope also prints a top-frames summary; flamegraph writes an SVG",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: include C frames (ssl, uvloop)")
    p.add_argument(
        "--noise-limit",
        type=float,
        default=10.0,
        help="%% of a core used by processes outside the test above which a window is measured again",
    )
    p.add_argument("--retries", type=int, default=None, help="extra attempts for a disturbed window (1; --quick: 0)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.prewarm = (1 if args.quick else 3) if args.prewarm is None else args.prewarm
    args.collapse_runs = args.collapse_runs or (1 if args.quick else 3)
    args.retries = (0 if args.quick else 1) if args.retries is None else args.retries
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.transports = [s.strip() for s in args.transports.split(",") if s.strip()]
    try:
        args.collapse_workers = [int(w) for w in args.collapse_workers.split(",") if w.strip()]
    except ValueError:
        p.error(f"--collapse-workers: {args.collapse_workers!r} is not a comma list of worker counts, e.g. 1,2")
    bad = (
        [s for s in args.servers if s not in SERVERS]
        + [s for s in args.scenarios if s not in SCENARIOS]
        + [s for s in args.transports if s not in TRANSPORTS]
    )
    if bad or not args.servers:
        p.error(f"unknown server/scenario/transport: {bad}")
    if args.runs < 1 or args.duration < 1 or args.prewarm < 0 or args.collapse_runs < 1:
        p.error("--runs, --duration and --collapse-runs must be >= 1, --prewarm >= 0")
    if args.collapse_clients < 1 or any(w < 1 for w in args.collapse_workers):
        p.error("--collapse-clients and --collapse-workers must be >= 1")
    if args.server_core == args.load_core:
        p.error("--server-core and --load-core must differ")
    if args.profile and ("tlsedge" not in args.servers or "https" not in args.transports or not args.scenarios):
        p.error("--profile needs tlsedge in --servers, https in --transports and a HIT scenario")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_hit_proxies(
    tmp: Path,
    origin_port: int,
    certs: dict[str, Path],
    args: argparse.Namespace,
    edge_cmd: list[str],
    services: list[Service],
) -> dict[str, Proxy]:
    """One proxy per server, HTTPS and HTTP listeners, pinned to the server core (not waiting for them); each is in
    ``services`` as soon as it runs, so a later failure still stops it."""
    pin = ["taskset", "-c", str(args.server_core)]
    proxies: dict[str, Proxy] = {}
    for server in args.servers:
        https_port, http_port = free_port(), free_port()
        if server == "nginx":
            conf = write_nginx_cache_conf(tmp / "nginx", https_port, http_port, origin_port, certs, args.server_core)
            cmd = [*pin, nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "e.log")]
        else:
            cfg = write_edge_cache_conf(tmp / "tlsedge", https_port, http_port, origin_port, certs)
            check_edge_conf(edge_cmd, cfg)
            cmd = [*pin, *edge_cmd, "serve", "-c", str(cfg)]
        proxies[server] = Proxy(server, https_port, http_port, Service(server, cmd, tmp / f"{server}.log", tmp))
        services.append(proxies[server].service)
    return proxies


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    edge_cmd = args.edge_cmd.split() if args.edge_cmd else default_edge_cmd()
    problems = check_tools("tlsedge" in args.servers, edge_cmd, profile=args.profile)
    usable = os.sched_getaffinity(0)
    problems += [f"core {c} is not usable here (allowed: {sorted(usable)})" for c in (args.server_core, args.load_core)
                 if c not in usable]  # fmt: skip
    if problems:
        print("cannot run the benchmark:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2

    os.sched_setaffinity(0, {args.load_core})  # this script sleeps, reads /proc and runs the slow origin
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="tlsedge-cache-bench-"))
    tmp.chmod(0o755)  # nginx workers must read files in here
    services: list[Service] = []
    samples: list[Sample] = []
    discarded: list[Sample] = []
    trials: list[Trial] = []
    profile_path: Path | None = None
    started = time.monotonic()
    with BenchRun(services, tmp, args.keep_tmp) as run:
        certs = make_certificates(tmp)
        docroot = make_docroot(tmp)
        lua = tmp / "wrk.lua"
        lua.write_text(WRK_LUA % {"addr": LOOPBACK})

        keys = [f"{t}_{s}" for t in args.transports for s in args.scenarios]
        med: dict[str, dict[str, dict[str, float]]] = {}
        if keys:
            origin_port = free_port()
            conf = write_cached_origin_conf(tmp / "origin", origin_port, docroot)
            origin = Service(
                "origin",
                ["taskset", "-c", str(args.load_core), nginx_binary(), "-p", str(conf.parent), "-c", str(conf),
                 "-e", str(conf.parent / "error.log")],
                tmp / "origin.log", tmp,
            )  # fmt: skip
            services.append(origin)
            wait_port(origin, origin_port)
            proxies = start_hit_proxies(tmp, origin_port, certs, args, edge_cmd, services)
            for px in proxies.values():
                wait_answers(px.service, px.https_port, "/1k", (docroot / "1k").read_bytes(), certs["ca"])
                seen = warm(px, args.transports, docroot, certs["ca"])
                print(
                    f"{px.name:8} ready on {LOOPBACK}:{px.https_port} (https) / {px.http_port} (http), tree "
                    f"{tree_cpu_seconds(px.service.pid)[1]} on core {args.server_core}; cache warm: {seen!r}"
                )
            print(f"origin   nginx on {LOOPBACK}:{origin_port}, core {args.load_core}; temp dir {tmp}")
            n = args.runs * len(proxies) * len(keys)
            minutes = (n * (args.duration + math.ceil(args.warmup) + 0.8) + len(proxies) * args.prewarm) / 60
            print(f"{n} HIT windows of {args.duration}s (+{args.warmup:g}s warm-up): ~{minutes:.1f} min")
            for px in proxies.values() if args.prewarm > 0 else ():
                run_wrk(lua, px.url("https", "/1k"), args.prewarm, args.connections, args.load_core)
            order = [s for s in SERVERS if s in proxies]
            for run in range(1, args.runs + 1):
                for key in keys:
                    transport, scenario = key.split("_", 1)
                    for server in order if run % 2 else order[::-1]:  # alternate so drift favours no server
                        px = proxies[server]
                        if not px.service.alive():
                            raise RuntimeError(f"{server} died; log tail:\n{px.service.log_tail()}")
                        samples.append(
                            measure_quiet(
                                px, scenario, transport, run, args, discarded, lua=lua, origin=origin,
                                origin_port=origin_port, docroot=docroot, cafile=certs["ca"],
                            )
                        )  # fmt: skip
            med = medians(samples)
            if args.profile:
                edge = proxies["tlsedge"]
                target = Target("tlsedge", edge.https_port, edge.service, OriginRef(origin.pid, origin_port))
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                profile_path = profile_edge(target, args, lua, stamp)
            for px in proxies.values():  # the HIT proxies leave the server core to the collapsing ones
                px.service.stop()
                services.remove(px.service)

        if args.collapse_workers:
            print(f"collapsing: {args.collapse_clients} concurrent misses per burst")
            trials = collapse(tmp, certs, args, edge_cmd, services)
        summary = collapse_summary(trials)

        print()
        if samples:
            steal = max(max(s.window.core_steal_pct.values()) for s in samples)
            load_busy = statistics.median(s.window.core_busy_pct[str(args.load_core)] for s in samples)
            print("\n".join(render_hits(med, keys)))
            print(
                f"\nmedians of {args.runs} run(s); proxies on core {args.server_core}, wrk + origin on core "
                f"{args.load_core} (load core median {load_busy:.0f}% busy; other processes, median "
                f"{statistics.median(s.others_pct for s in samples):.0f}% of a core; max steal {steal:.1f}%)\n"
            )
        if summary:
            print("\n".join(render_collapse(summary, args)))
        if discarded:
            print(f"{len(discarded)} disturbed window(s) were measured again; the least disturbed attempt is kept")
        flags = [f"run {s.run} {s.key} {s.server}: {'; '.join(f)}" for s in samples
                 if (f := sample_flags(s, args.noise_limit))]  # fmt: skip
        flags += [f"collapse {t.server} workers={t.workers} run {t.run}: {t.clients - t.ok} failed, e.g. "
                  f"{t.failures[0]}" for t in trials if t.failures]  # fmt: skip
        for f in flags:
            print(f"WARNING {f}")

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"cache_vs_nginx-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "started": stamp,
                    "elapsed_s": time.monotonic() - started,
                    "args": vars(args),
                    "edge_cmd": edge_cmd,
                    "environment": environment(),
                    "targets": {"cpu_per_hit_ratio": CPU_TARGET, "collapse_origin_requests": COLLAPSE_TARGET},
                    "hit_medians": med,
                    "hit_samples": [{**asdict(s), "metrics": s.metrics()} for s in samples],
                    "discarded_noisy_samples": [{**asdict(s), "metrics": s.metrics()} for s in discarded],
                    "collapse": summary,
                    "collapse_trials": [asdict(t) for t in trials],
                    "profile": str(profile_path) if profile_path else None,
                },
                indent=2,
            )
        )
        print(f"raw numbers: {out.relative_to(REPO)} ({time.monotonic() - started:.0f} s)")
        if profile_path:
            print(f"edge profile: {profile_path.relative_to(REPO)}")
            if args.profile_format == "speedscope":
                print(summarize_speedscope(profile_path))
        return 1 if flags else 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
