#!/usr/bin/env python3
"""Keyless TLS 1.3 vs terminated TLS vs nginx: handshakes, resumptions and record throughput, one run, one table.

Issue 7 asks, measured in one run: full TLS 1.3 handshakes/s and CPU µs per handshake of a keyless site (the edge
asks a local key server for the CertificateVerify signature) against a terminated one (the key on the edge, Python
``ssl`` under uvloop) and against nginx, all with the same ECDSA P-256 certificate (target: the keyless edge's CPU per
handshake at most 2x the terminated edge's); MB/s on one established connection, keyless against terminated (target:
at least 0.5x); and resumed handshakes/s, which need no key server. Why the script is shaped the way it is:

* It measures like ``edge_vs_nginx.py`` and imports its helpers: the certificate, the static nginx origin, the
  reference nginx proxy, the edge config, the ``/proc`` CPU sampler, process handling, and its full-handshake
  client (``run_handshakes``: fresh ``SSLSocket`` per connection, no session offered, TLS 1.3 only, ``GET /1k`` with
  ``Connection: close``, each connection checked to be a full TLS 1.3 handshake). Three servers, one process tree
  each, all pinned to the server core with one worker: the terminated edge, the keyless edge and nginx. Only the one
  under load is busy.
* The key server (``tlsedge keyserver``, one signing thread) runs on ``--keyserver-core`` (the load core by default:
  a 2-core machine has no third core) and its CPU is sampled in every window and reported per handshake on its own
  line, so the edge's figure is the edge's alone and the key server's cost is still visible.
* Resumption: our client keeps the session (ticket) of its previous connection and offers it on the next one, and
  counts per connection whether the server resumed; a window where the server did full handshakes is flagged.
* Throughput: one keep-alive TLS connection downloads a ``--body-mib`` (64) MiB body from the origin again and
  again; bytes are counted as they arrive, so the window edges fall inside a body without skewing MB/s. Server CPU
  per MB is reported beside it.
* Other processes' CPU is counted around every window (``balancing.py``'s helpers) and a disturbed window is
  measured again; medians of ``--runs`` runs, the server order alternating per run. Raw numbers go to
  ``bench/results/keyless_vs_nginx-<time>.json``.

Needs the project venv (the edge and the key server are ``tlsedge``) and the tools of ``edge_vs_nginx.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package: import its helpers by path
from balancing import check_edge_conf, others_cpu_seconds, process_ticks
from edge_vs_nginx import (
    HOST,
    LOOPBACK,
    REPO,
    RESULTS_DIR,
    BenchRun,
    CpuSampler,
    OriginRef,
    Service,
    Window,
    check_tools,
    default_edge_cmd,
    environment,
    free_port,
    https_get,
    make_certificates,
    make_docroot,
    nginx_binary,
    run_checked,
    run_handshakes,
    tree_cpu_seconds,
    wait_port,
    wait_ready,
    write_edge_conf,
    write_origin_conf,
    write_proxy_conf,
)

SERVERS = ("terminated", "keyless", "nginx")
SCENARIOS = ("full", "resumed", "download")
SCENARIO_TITLES = {
    "full": "full handshakes",
    "resumed": "resumed (ticket)",
    "download": "download, 1 conn",
}
HANDSHAKE_CPU_TARGET = 2.0  # issue 7: keyless edge CPU per full handshake <= 2x the terminated edge's
THROUGHPUT_TARGET = 0.5  # issue 7: keyless MB/s on one connection >= 0.5x the terminated edge's
EDGE_IDENTITY = "edge-1.bench.example"
BODY_PATH = "/big"


# --------------------------------------------------------------------------------------------------------------------
# Certificates and configs
# --------------------------------------------------------------------------------------------------------------------


def make_keyless_certificates(d: Path) -> dict[str, Path]:
    """The key server's self-signed certificate (edges pin its key), the owner's edge CA, and the edge's client
    certificate (identity ``EDGE_IDENTITY``, clientAuth): what docs/keyserver.md tells an owner to make."""
    d.mkdir()
    out = {k: d / f"{k}.pem" for k in ("keyserver", "edges_ca", "edge")}
    keys = {k: d / f"{k}.key" for k in out}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run_checked(["openssl", "req", "-x509", *ec, "-days", "2", "-keyout", str(keys["keyserver"]),
                 "-out", str(out["keyserver"]), "-subj", "/CN=keys.bench.example"])  # fmt: skip
    run_checked(["openssl", "req", "-x509", *ec, "-days", "2", "-keyout", str(keys["edges_ca"]),
                 "-out", str(out["edges_ca"]), "-subj", "/CN=bench edges CA",
                 "-addext", "basicConstraints=critical,CA:true",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    csr, ext = d / "edge.csr", d / "edge.ext"
    run_checked(["openssl", "req", "-new", *ec, "-keyout", str(keys["edge"]), "-out", str(csr),
                 "-subj", f"/CN={EDGE_IDENTITY}"])  # fmt: skip
    ext.write_text(
        f"subjectAltName = DNS:{EDGE_IDENTITY}\nextendedKeyUsage = clientAuth\n"
        "keyUsage = critical, digitalSignature\nbasicConstraints = critical, CA:false\n"
    )
    run_checked(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(out["edges_ca"]), "-CAkey",
                 str(keys["edges_ca"]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
                 "-out", str(out["edge"])])  # fmt: skip
    for key in keys.values():
        key.chmod(0o600)
    return {**out, **{f"{k}_key": v for k, v in keys.items()}}


def write_keyserver_conf(d: Path, port: int, certs: dict[str, Path], kcerts: dict[str, Path]) -> Path:
    """One key (the site's, which only the key server has), one signing thread, a rate far above what the bench
    asks for (the default 200/s per edge would refuse most handshakes of a window)."""
    cfg = d / "keyserver.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            listen = ["{LOOPBACK}:{port}"]
            certificate = "{kcerts["keyserver"]}"
            certificate_key = "{kcerts["keyserver_key"]}"
            client_ca = "{kcerts["edges_ca"]}"
            log = "{d / "keyserver-ops.log"}"
            rate = "1000000/s"
            burst = 1000000
            threads = 1

            [[key]]
            file = "{certs["key"]}"
            names = ["{HOST}"]
            edges = ["{EDGE_IDENTITY}"]
            """
        )
    )
    return cfg


def write_keyless_edge_conf(
    d: Path, port: int, origin_port: int, certs: dict[str, Path], kcerts: dict[str, Path], ks_port: int, pin: str
) -> Path:
    """``edge_vs_nginx.py``'s edge config with the site made keyless: the same certificate's public chain, the key
    server at ``ks_port`` pinned, the edge's client certificate; nothing else changed."""
    cfg = write_edge_conf(d, port, origin_port, certs)
    text = cfg.read_text()
    line = f'certificate = {{ cert = "{certs["cert"]}", key = "{certs["key"]}" }}\n'
    if text.count(line) != 1:
        raise RuntimeError(f"edge_vs_nginx.py changed the shape of {cfg}: expected one {line!r}")
    text = text.replace(line, 'mode = "keyless"\n')
    text += textwrap.dedent(
        f"""
        [site.keyless]
        certificate = "{certs["cert"]}"
        servers = ["{LOOPBACK}:{ks_port}"]
        pins = ["{pin}"]
        client_certificate = {{ cert = "{kcerts["edge"]}", key = "{kcerts["edge_key"]}" }}
        timeout = "2s"
        """
    )
    cfg.write_text(text)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Clients: resumed handshakes and a download on one connection (full handshakes: edge_vs_nginx.run_handshakes)
# --------------------------------------------------------------------------------------------------------------------

# Per-client counters in shared memory, 4 per client, read by the parent at the window edges.
SLOTS = 4
_R_OK, _R_FAIL, _R_RESUMED, _R_FULL = range(SLOTS)  # resumed-handshake client
_D_BYTES, _D_BODIES, _D_FAIL, _D_CONNS = range(SLOTS)  # download client
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,15})[ \t]*\r\n", re.IGNORECASE)


def _client_process_setup(core: int) -> ssl.SSLContext:
    """What every load process does first: leave signals to the parent, stay on the load core, and build a TLS 1.3
    client context without verification (the chain was verified once by the readiness check; here the load core's
    time goes to the measured work)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us via the deadline
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # undo the parent's SIGTERM-as-Ctrl-C handler inherited by fork
    os.sched_setaffinity(0, {core})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _resumed_client(port: int, core: int, deadline: float, counters: Any, idx: int, timeout: float) -> None:
    """Loop until ``deadline``: new connection offering the newest session ticket this process has, GET /1k with
    ``Connection: close``, read to EOF. Counts per connection whether the server resumed (``session_reused``): the
    first connection is full (it has nothing to offer yet, and happens in the warm-up), every later one should not be.
    """
    ctx = _client_process_setup(core)
    request = f"GET /1k HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    base = idx * SLOTS
    session: ssl.SSLSession | None = None
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=HOST, session=session) as s,
            ):
                s.sendall(request)
                first = s.recv(65536)
                n = len(first)
                while chunk := s.recv(65536):
                    n += len(chunk)
                reused, newest = s.session_reused, s.session
            if newest is not None and newest.has_ticket:
                session = newest
            if not first.startswith(b"HTTP/1.1 200") or n < 1024:
                counters[base + _R_FAIL] += 1
                continue
            counters[base + _R_OK] += 1
            counters[base + (_R_RESUMED if reused else _R_FULL)] += 1
        except (OSError, ssl.SSLError):
            counters[base + _R_FAIL] += 1


def _download_client(port: int, core: int, deadline: float, counters: Any, idx: int, timeout: float) -> None:
    """One keep-alive TLS 1.3 connection, ``GET /big`` again and again until ``deadline``; every received byte is
    counted as it arrives. A broken connection is counted and replaced (the table flags it: the figure is meant to
    be one connection's)."""
    ctx = _client_process_setup(core)
    request = f"GET {BODY_PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    base = idx * SLOTS
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    s: ssl.SSLSocket | None = None
    while time.monotonic() < deadline:
        try:
            if s is None:
                s = ctx.wrap_socket(socket.create_connection((LOOPBACK, port), timeout=timeout), server_hostname=HOST)
                counters[base + _D_CONNS] += 1
            s.sendall(request)
            head = bytearray()
            while b"\r\n\r\n" not in head:
                n = s.recv_into(view)
                if not n or len(head) > 65536:
                    raise ConnectionError("connection closed (or no end of head) before the response head ended")
                head += view[:n]
                counters[base + _D_BYTES] += n
            header, _, rest = bytes(head).partition(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(header + b"\r\n")
            if not header.startswith(b"HTTP/1.1 200") or length is None:
                raise ConnectionError(f"unexpected response head: {header[:200]!r}")
            remaining = int(length.group(1)) - len(rest)
            while remaining > 0:
                n = s.recv_into(view, min(len(buf), remaining))
                if not n:
                    raise ConnectionError("connection closed inside the body")
                remaining -= n
                counters[base + _D_BYTES] += n
                if time.monotonic() >= deadline:
                    return
            counters[base + _D_BODIES] += 1
        except (OSError, ssl.SSLError):
            counters[base + _D_FAIL] += 1
            if s is not None:
                s.close()
            s = None
            time.sleep(0.05)
    if s is not None:
        s.close()


def run_clients(
    target: Callable[..., None], port: int, clients: int, core: int, warmup: float, seconds: float, sampler: CpuSampler
) -> tuple[list[int], Window]:
    """``edge_vs_nginx.run_handshakes``'s window discipline for our own clients: start them, let them warm up, then
    count (summed over clients, per slot) only what happened between the sampler's start and stop."""
    ctx = mp.get_context("fork")
    counters = ctx.RawArray(ctypes.c_uint64, clients * SLOTS)
    deadline = time.monotonic() + warmup + seconds + 0.5
    procs = [
        ctx.Process(target=target, args=(port, core, deadline, counters, i, 10.0), daemon=True) for i in range(clients)
    ]

    def totals() -> list[int]:
        return [sum(counters[i * SLOTS + k] for i in range(clients)) for k in range(SLOTS)]

    try:
        for p in procs:
            p.start()
        time.sleep(warmup)
        before = totals()
        sampler.start()
        time.sleep(seconds)
        window = sampler.stop()
        after = totals()
        for p in procs:
            p.join(timeout=15)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
    return [a - b for a, b in zip(after, before, strict=True)], window


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


class Sampler(CpuSampler):
    """``CpuSampler`` (server tree, origin, cores) plus the key server's CPU and other processes' CPU in the same
    window: the key server works for the keyless edge, and anything else running on a 2-core machine distorts it."""

    def __init__(self, root: int, cores: Sequence[int], origin: OriginRef, keyserver: int | None,
                 test_roots: Sequence[int]) -> None:  # fmt: skip
        super().__init__(root, cores, origin)
        self.keyserver = keyserver
        self.test_roots = list(test_roots)
        self.keyserver_cpu_s = 0.0
        self.others_cpu_s = 0.0
        self._ks0 = 0.0
        self._procs0: dict[int, tuple[int, int]] = {}

    def start(self) -> None:
        self._procs0 = process_ticks()
        self._ks0 = tree_cpu_seconds(self.keyserver)[0] if self.keyserver else 0.0
        super().start()

    def stop(self) -> Window:
        w = super().stop()
        if self.keyserver:
            self.keyserver_cpu_s = tree_cpu_seconds(self.keyserver)[0] - self._ks0
        self.others_cpu_s = others_cpu_seconds(self._procs0, process_ticks(), self.test_roots)
        return w


@dataclass
class Server:
    """A running server under test."""

    name: str
    port: int
    service: Service
    tls: str = ""  # version and cipher suite our client negotiated with it


@dataclass
class Sample:
    """One measured window of one scenario against one server."""

    server: str
    scenario: str
    run: int
    ops: int  # connections (full, resumed) or bytes (download)
    seconds: float
    window: Window
    keyserver_cpu_s: float
    others_pct: float
    detail: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The figures the table shows; per-op figures are per connection, or per MB for the download."""
        w = self.window
        per = self.ops / 1e6 if self.scenario == "download" else self.ops  # MB or connections
        m = {
            "ops_per_s": per / self.seconds if self.seconds else 0.0,
            "cpu_us_per_op": 1e6 * w.server_cpu_s / per if per else math.inf,
            "server_core_pct": 100.0 * w.server_cpu_s / w.seconds if w.seconds else 0.0,
            "keyserver_cpu_us_per_op": 1e6 * self.keyserver_cpu_s / per if per else math.inf,
            "origin_cpu_us_per_op": 1e6 * w.origin_cpu_s / per if per else math.inf,
        }
        m["total_cpu_us_per_op"] = m["cpu_us_per_op"] + m["keyserver_cpu_us_per_op"]
        return m


def measure(server: Server, scenario: str, run: int, args: argparse.Namespace, origin: OriginRef,
            keyserver: Service, roots: Sequence[int]) -> Sample:  # fmt: skip
    """One window: warm-up and window as in ``edge_vs_nginx.py``, with the key server and other processes sampled."""
    cores = sorted({args.server_core, args.load_core, args.keyserver_core})
    sampler = Sampler(server.service.pid, cores, origin, keyserver.pid, roots)
    if scenario == "full":
        res, w = run_handshakes(server.port, args.hs_clients, args.load_core, args.warmup, args.duration, sampler)
        ops, detail = res["connections"], res
    elif scenario == "resumed":
        d, w = run_clients(_resumed_client, server.port, args.hs_clients, args.load_core, args.warmup, args.duration,
                           sampler)  # fmt: skip
        ops, detail = d[_R_OK], {"connections": d[_R_OK], "failures": d[_R_FAIL], "resumed": d[_R_RESUMED],
                                 "full": d[_R_FULL]}  # fmt: skip
    else:
        d, w = run_clients(_download_client, server.port, 1, args.load_core, args.warmup, args.duration, sampler)
        ops, detail = d[_D_BYTES], {"bytes": d[_D_BYTES], "bodies": d[_D_BODIES], "failures": d[_D_FAIL],
                                    "connections_opened": d[_D_CONNS]}  # fmt: skip
    return Sample(server.name, scenario, run, ops, w.seconds, w, sampler.keyserver_cpu_s,
                  100.0 * sampler.others_cpu_s / w.seconds if w.seconds else 0.0, detail)  # fmt: skip


def sample_flags(s: Sample, noise_limit: float) -> list[str]:
    """What makes a window suspect: failures, handshakes of the wrong kind, a replaced connection, nothing done, or
    other processes' load."""
    d = s.detail
    flags = [f"{d['failures']} failed connections"] if d.get("failures") else []
    if s.scenario == "full":
        flags += [f"{d[k]} {k.replace('_', ' ')}" for k in ("resumed", "not_tls13") if d[k]]
    elif s.scenario == "resumed" and d["full"]:
        flags.append(f"{d['full']} of {d['connections']} connections were full handshakes, not resumed")
    elif s.scenario == "download" and d["connections_opened"]:
        flags.append(f"{d['connections_opened']} connection(s) opened inside the window (broken connection)")
    if s.ops == 0:
        flags.append("nothing completed")
    if s.others_pct > noise_limit:
        flags.append(f"other processes used {s.others_pct:.0f}% of a core")
    return flags


def progress_line(s: Sample, args: argparse.Namespace) -> str:
    m = s.metrics()
    flags = sample_flags(s, args.noise_limit)
    unit = "MB/s" if s.scenario == "download" else "conn/s"
    per = "MB" if s.scenario == "download" else "conn"
    ks = f"  key server {m['keyserver_cpu_us_per_op']:6.1f} µs/{per}" if s.server == "keyless" else ""
    return (
        f"  run {s.run} {s.scenario:8} {s.server:10} {m['ops_per_s']:>8,.0f} {unit:6} "
        f"{m['cpu_us_per_op']:>7.1f} µs CPU/{per:4}  server {m['server_core_pct']:3.0f}% of a core{ks}  "
        f"load core {s.window.core_busy_pct[str(args.load_core)]:3.0f}% busy  other processes {s.others_pct:3.0f}%"
        + (f"  !! {'; '.join(flags)}" if flags else "")
    )


def measure_quiet(server: Server, scenario: str, run: int, args: argparse.Namespace, origin: OriginRef,
                  keyserver: Service, roots: Sequence[int], discarded: list[Sample]) -> Sample:  # fmt: skip
    """balancing.py's rule: measure again (up to ``--retries``) while other processes disturbed the window, and keep
    the least disturbed attempt (the others go to the results file)."""
    attempts = [measure(server, scenario, run, args, origin, keyserver, roots)]
    print(progress_line(attempts[-1], args), flush=True)
    while attempts[-1].others_pct > args.noise_limit and len(attempts) <= args.retries:
        attempts.append(measure(server, scenario, run, args, origin, keyserver, roots))
        print(f"{progress_line(attempts[-1], args)}  (attempt {len(attempts)})", flush=True)
    best = min(attempts, key=lambda s: s.others_pct)
    discarded.extend(s for s in attempts if s is not best)
    return best


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def medians(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {server: {metric: median over runs}}}."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for s in samples:
        groups.setdefault((s.scenario, s.server), []).append(s.metrics())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (scenario, server), rows in groups.items():
        out.setdefault(scenario, {})[server] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return out


def ratio(med: dict[str, dict[str, dict[str, float]]], scenario: str, key: str, a: str, b: str) -> float | None:
    """med[scenario][a][key] / med[scenario][b][key], None when either was not measured."""
    by = med.get(scenario, {})
    if a in by and b in by and by[b][key]:
        return by[a][key] / by[b][key]
    return None


def verdicts(med: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """The issue's two targets, judged on the medians (None: not measured in this run)."""
    hs = ratio(med, "full", "cpu_us_per_op", "keyless", "terminated")
    tp = ratio(med, "download", "ops_per_s", "keyless", "terminated")
    return {
        "handshake_cpu": {"ratio": hs, "target_max": HANDSHAKE_CPU_TARGET,
                          "met": None if hs is None else hs <= HANDSHAKE_CPU_TARGET},
        "throughput": {"ratio": tp, "target_min": THROUGHPUT_TARGET,
                       "met": None if tp is None else tp >= THROUGHPUT_TARGET},
    }  # fmt: skip


def verdict_lines(v: dict[str, dict[str, Any]]) -> list[str]:
    """The two targets in words, under the table."""
    out = []
    hs, tp = v["handshake_cpu"], v["throughput"]
    if hs["ratio"] is not None:
        out.append(f"keyless edge CPU per full handshake / terminated edge's: {hs['ratio']:.2f}x "
                   f"(target <= {hs['target_max']:.1f}x): {'ok' if hs['met'] else 'MISS'}")  # fmt: skip
    if tp["ratio"] is not None:
        out.append(f"keyless MB/s on one connection / terminated: {tp['ratio']:.2f}x "
                   f"(target >= {tp['target_min']:.1f}x): {'ok' if tp['met'] else 'MISS'}")  # fmt: skip
    return out


def render_table(med: dict[str, dict[str, dict[str, float]]], runs: int, note: str) -> str:
    """One table: each figure for the three servers, keyless/terminated with the target, and both edges vs nginx."""
    f0: Callable[[float], str] = lambda v: f"{v:,.0f}"  # noqa: E731
    f1: Callable[[float], str] = lambda v: f"{v:,.1f}"  # noqa: E731
    specs: list[tuple[str, str, str, Callable[[float], str], str]] = [
        ("full", "ops_per_s", "connections/s", f0, ""),
        ("full", "cpu_us_per_op", "server CPU µs/connection", f1, "cpu"),
        ("full", "keyserver_cpu_us_per_op", "key server CPU µs/connection", f1, ""),
        ("full", "total_cpu_us_per_op", "server + key server µs/connection", f1, ""),
        ("full", "server_core_pct", "server CPU, % of a core", f0, ""),
        ("resumed", "ops_per_s", "connections/s", f0, ""),
        ("resumed", "cpu_us_per_op", "server CPU µs/connection", f1, ""),
        ("resumed", "keyserver_cpu_us_per_op", "key server CPU µs/connection", f1, ""),
        ("resumed", "server_core_pct", "server CPU, % of a core", f0, ""),
        ("download", "ops_per_s", "MB/s", f1, "mbps"),
        ("download", "cpu_us_per_op", "server CPU µs/MB", f1, ""),
        ("download", "server_core_pct", "server CPU, % of a core", f0, ""),
        ("download", "origin_cpu_us_per_op", "origin CPU µs/MB", f1, ""),
    ]
    cols = ("scenario", "figure", *SERVERS, "keyless/terminated", "target", "terminated/nginx", "keyless/nginx")
    rows: list[list[str]] = []
    last = ""
    for scenario, key, label, fmt, target in specs:
        by = med.get(scenario)
        if not by:
            continue
        if key.startswith("keyserver") and "keyless" not in by:
            continue
        head = SCENARIO_TITLES[scenario] if scenario != last else ""
        last = scenario
        ks_row = key.startswith("keyserver")  # the key server works for the keyless edge only
        cells = [fmt(by[s][key]) if s in by and (s == "keyless" or not ks_row) else "-" for s in SERVERS]
        kt = None if ks_row else ratio(med, scenario, key, "keyless", "terminated")
        verdict = ""
        if target == "cpu" and kt is not None:
            verdict = f"<= {HANDSHAKE_CPU_TARGET:.1f}x {'ok' if kt <= HANDSHAKE_CPU_TARGET else 'MISS'}"
        elif target == "mbps" and kt is not None:
            verdict = f">= {THROUGHPUT_TARGET:.1f}x {'ok' if kt >= THROUGHPUT_TARGET else 'MISS'}"
        vs_nginx = [None if ks_row else ratio(med, scenario, key, s, "nginx") for s in ("terminated", "keyless")]
        rows.append([head, label, *cells, "-" if kt is None else f"{kt:.2f}x", verdict,
                     *("-" if r is None else f"{r:.2f}x" for r in vs_nginx)])  # fmt: skip
    widths = [max(len(r[i]) for r in [*rows, list(cols)]) for i in range(len(cols))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in (0, 1, 6) else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    out += ["", f"medians of {runs} run(s); {note}"]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Keyless TLS 1.3 vs terminated TLS vs nginx: handshakes, resumptions, throughput; one table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (~1 min): --runs 1 --duration 2 --warmup 1 --prewarm 1 --retries 0 unless given",
    )
    p.add_argument("--runs", type=int, default=None, help="repeats of every window; the table shows medians (3)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured window (5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of load before each window (1.5)")
    p.add_argument("--prewarm", type=float, default=None, help="seconds of handshakes on each server once, first (2)")
    p.add_argument("--hs-clients", type=int, default=8, help="processes of the handshake clients")
    p.add_argument("--body-mib", type=int, default=64, help="size of the downloaded body, MiB")
    p.add_argument("--server-core", type=int, default=0, help="core of the servers under test")
    p.add_argument("--load-core", type=int, default=1, help="core of the clients, the origin and this script")
    p.add_argument("--keyserver-core", type=int, default=None, help="core of the key server (default: --load-core)")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma list from {','.join(SERVERS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list from {','.join(SCENARIOS)}")
    p.add_argument("--edge-cmd", default=None, help="command that runs tlsedge (default: .venv/bin/tlsedge)")
    p.add_argument(
        "--noise-limit",
        type=float,
        default=10.0,
        help="%% of a core other processes may use in a window before it is measured again",
    )
    p.add_argument("--retries", type=int, default=None, help="extra attempts for a disturbed window (1; --quick: 0)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    defaults = {"runs": (1, 3), "duration": (2.0, 5.0), "warmup": (1.0, 1.5), "prewarm": (1.0, 2.0), "retries": (0, 1)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.keyserver_core is None:
        args.keyserver_core = args.load_core
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.servers if s not in SERVERS] + [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.servers or not args.scenarios:
        p.error(f"unknown or no server/scenario: {bad}")
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0 or args.prewarm < 0 or args.retries < 0:
        p.error("--runs must be >= 1, --duration > 0, --warmup, --prewarm and --retries >= 0")
    if args.body_mib < 1 or args.hs_clients < 1:
        p.error("--body-mib and --hs-clients must be >= 1")
    if args.server_core in (args.load_core, args.keyserver_core):
        p.error("the server core must differ from the load and key server cores")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_keyserver(tmp: Path, edge_cmd: Sequence[str], certs: dict[str, Path], kcerts: dict[str, Path],
                    core: int) -> tuple[Service, int, str]:  # fmt: skip
    """Check the key server's config, read its pin with ``--pin`` (as an owner would), start it pinned to ``core``."""
    d = tmp / "keyserver"
    d.mkdir()
    port = free_port()
    cfg = write_keyserver_conf(d, port, certs, kcerts)
    check = subprocess.run([*edge_cmd, "keyserver", "-c", str(cfg), "--check"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    if check.returncode != 0:
        raise RuntimeError(f"'tlsedge keyserver --check' refused {cfg}:\n{check.stdout}{check.stderr}")
    pin = run_checked([*edge_cmd, "keyserver", "-c", str(cfg), "--pin"]).stdout.strip()
    if not pin.startswith("sha256/"):
        raise RuntimeError(f"'tlsedge keyserver --pin' printed {pin!r}, not a sha256/ pin")
    svc = Service("keyserver", ["taskset", "-c", str(core), *edge_cmd, "keyserver", "-c", str(cfg)],
                  tmp / "keyserver.log", tmp)  # fmt: skip
    wait_port(svc, port)
    return svc, port, pin


def start_servers(tmp: Path, args: argparse.Namespace, edge_cmd: Sequence[str], origin_port: int,
                  certs: dict[str, Path], kcerts: dict[str, Path], ks_port: int, pin: str,
                  services: list[Service]) -> dict[str, Server]:  # fmt: skip
    """The three servers under test, each its own process tree pinned to the server core with one worker."""
    pin_cmd = ["taskset", "-c", str(args.server_core)]
    out: dict[str, Server] = {}
    for name in args.servers:
        port = free_port()
        if name == "nginx":
            conf = write_proxy_conf(tmp / "nginx", port, origin_port, certs, args.server_core)
            cmd = [*pin_cmd, nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e",
                   str(conf.parent / "error.log")]  # fmt: skip
        else:
            d = tmp / name
            d.mkdir()
            if name == "terminated":
                cfg = write_edge_conf(d, port, origin_port, certs)
            else:
                cfg = write_keyless_edge_conf(d, port, origin_port, certs, kcerts, ks_port, pin)
            check_edge_conf(edge_cmd, cfg)
            cmd = [*pin_cmd, *edge_cmd, "serve", "-c", str(cfg)]
        svc = Service(name, cmd, tmp / f"{name}.log", tmp)
        services.append(svc)
        out[name] = Server(name, port, svc)
    return out


def check_servers(servers: dict[str, Server], certs: dict[str, Path], docroot: Path, args: argparse.Namespace) -> None:
    """Each server answers /1k and /100k with the right bytes over a verified TLS 1.3 connection, and the download
    body in full (so the download client's Content-Length parsing and the body path are proven once). The cipher
    suite each one picks is kept: the servers choose differently from the same client offer, and it shows in MB/s."""
    want = (docroot / BODY_PATH.lstrip("/")).read_bytes()
    for s in servers.values():
        s.tls = wait_ready(s.service, s.port, certs["ca"], docroot)
        status, body, version, _ = https_get(s.port, BODY_PATH, certs["ca"], timeout=30)
        if status != 200 or body != want:
            raise RuntimeError(f"{s.name}: GET {BODY_PATH} gave {status}, {len(body)} bytes (want 200, {len(want)})")
        if version != "TLSv1.3":
            raise RuntimeError(f"{s.name} negotiated {version}, not TLS 1.3")
        _, pids = tree_cpu_seconds(s.service.pid)
        print(f"{s.name:10} ready on {LOOPBACK}:{s.port} ({s.tls}); process tree {pids} on core {args.server_core}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    edge_cmd = args.edge_cmd.split() if args.edge_cmd else default_edge_cmd()
    need_edge = bool({"terminated", "keyless"} & set(args.servers))
    problems = check_tools(need_edge, edge_cmd, False)
    usable = os.sched_getaffinity(0)
    problems += [f"core {c} is not usable here (allowed: {sorted(usable)})"
                 for c in {args.server_core, args.load_core, args.keyserver_core} if c not in usable]  # fmt: skip
    if problems:
        print("cannot run the benchmark:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2

    os.sched_setaffinity(0, {args.load_core})  # this script (sleeps, reads /proc) stays off the server core
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="tlsedge-bench-keyless-"))
    tmp.chmod(0o755)  # nginx workers must read files in here
    services: list[Service] = []
    samples: list[Sample] = []
    discarded: list[Sample] = []
    with BenchRun(services, tmp, args.keep_tmp) as run:
        certs = make_certificates(tmp)
        certs["key"].chmod(0o600)  # the key server refuses a key file others can read
        kcerts = make_keyless_certificates(tmp / "keyless-pki")
        docroot = make_docroot(tmp)
        with (docroot / BODY_PATH.lstrip("/")).open("wb") as f:
            for _ in range(args.body_mib):
                f.write(os.urandom(1 << 20))

        origin_port = free_port()
        conf = write_origin_conf(tmp / "origin", origin_port, docroot)
        origin = Service("origin", ["taskset", "-c", str(args.load_core), nginx_binary(), "-p", str(conf.parent),
                                    "-c", str(conf), "-e", str(conf.parent / "error.log")],
                         tmp / "origin.log", tmp)  # fmt: skip
        services.append(origin)
        wait_port(origin, origin_port)
        origin_ref = OriginRef(origin.pid, origin_port)

        keyserver, ks_port, pin = start_keyserver(tmp, edge_cmd, certs, kcerts, args.keyserver_core)
        services.append(keyserver)
        servers = start_servers(tmp, args, edge_cmd, origin_port, certs, kcerts, ks_port, pin, services)
        check_servers(servers, certs, docroot, args)
        print(f"origin     nginx on {LOOPBACK}:{origin_port}, core {args.load_core}; key server on "
              f"{LOOPBACK}:{ks_port}, core {args.keyserver_core} (pin {pin}); temp dir {tmp}")  # fmt: skip

        roots = [os.getpid(), *(svc.pid for svc in services)]  # our clients are our children
        order = [s for s in SERVERS if s in servers]
        n = args.runs * len(order) * len(args.scenarios)
        print(f"{n} windows of {args.duration:g}s (+{args.warmup:g}s warm-up): "
              f"~{(n * (args.duration + args.warmup + 0.6) + len(order) * args.prewarm) / 60:.1f} min")  # fmt: skip
        for name in order if args.prewarm > 0 else ():
            # A fresh edge's first window costs more per operation than its later ones (balancing.py's finding).
            dummy = Sampler(servers[name].service.pid, [args.load_core], origin_ref, None, roots)
            run_handshakes(servers[name].port, args.hs_clients, args.load_core, 0.0, args.prewarm, dummy)
        for run in range(1, args.runs + 1):
            run_order = order if run % 2 else order[::-1]  # alternate so drift does not favour one server
            for scenario in args.scenarios:
                for name in run_order:
                    server = servers[name]
                    for svc in (server.service, keyserver):
                        if not svc.alive():
                            raise RuntimeError(f"{svc.name} died; log tail:\n{svc.log_tail()}")
                    samples.append(measure_quiet(server, scenario, run, args, origin_ref, keyserver, roots,
                                                 discarded))  # fmt: skip

        med = medians(samples)
        others = statistics.median(s.others_pct for s in samples)
        steal = max(max(s.window.core_steal_pct.values()) for s in samples)
        load = statistics.median(s.window.core_busy_pct[str(args.load_core)] for s in samples)
        note = (
            f"servers on core {args.server_core}; clients, origin and this script on core {args.load_core} (median "
            f"{load:.0f}% busy); key server on core {args.keyserver_core}, 1 signing thread. Other processes: median "
            f"{others:.0f}% of a core per window; max steal {steal:.1f}%. Download body {args.body_mib} MiB, "
            f"MB = 10^6 bytes. Negotiated: " + ", ".join(f"{s.name} {s.tls}" for s in servers.values()) + "."
        )
        print()
        print(render_table(med, args.runs, note))
        for line in verdict_lines(verdicts(med)):
            print(line)
        totals = {sc: {k: sum(s.detail.get(k, 0) for s in samples if s.scenario == sc)
                       for k in ("connections", "resumed", "full", "not_tls13", "failures")}
                  for sc in ("full", "resumed")}  # fmt: skip
        print(f"full-handshake client: {totals['full']['connections']:,} connections, {totals['full']['resumed']} "
              f"resumed, {totals['full']['not_tls13']} not TLS 1.3, {totals['full']['failures']} failed; "
              f"resumption client: {totals['resumed']['resumed']:,} resumed, {totals['resumed']['full']} full, "
              f"{totals['resumed']['failures']} failed")  # fmt: skip
        flagged = [(s, f) for s in samples if (f := sample_flags(s, args.noise_limit))]
        for s, f in flagged:
            print(f"WARNING run {s.run} {s.scenario} {s.server}: {'; '.join(f)}")

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"keyless_vs_nginx-{stamp}.json"
        out.write_text(json.dumps({
            "started": stamp,
            "args": vars(args),
            "edge_cmd": edge_cmd,
            "environment": environment(),
            "negotiated": {s.name: s.tls for s in servers.values()},
            "targets": verdicts(med),
            "medians": med,
            "samples": [{**asdict(s), "metrics": s.metrics()} for s in samples],
            "discarded_noisy_samples": [{**asdict(s), "metrics": s.metrics()} for s in discarded],
        }, indent=2))  # fmt: skip
        print(f"raw numbers: {out.relative_to(REPO)}")
        return 1 if flagged else 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
