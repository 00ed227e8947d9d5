#!/usr/bin/env python3
"""tlsedge vs nginx as a TLS-terminating reverse proxy, measured in one run, printed as one table.

Why this script is shaped the way it is:

* Both proxies sit in front of the *same* origin (Debian's nginx serving static files over plain HTTP), with the same
  ECDSA P-256 certificate, one worker each, pinned to the same core. Only the proxy under test differs.
* Throughput on a 2-core machine is usually limited by the load generator, not by the server. So besides req/s we
  report the server's **CPU µs per operation**: utime+stime of its whole process tree (nginx master + worker; tlsedge
  control + workers) from ``/proc/PID/stat``, sampled right before and after the load window. That figure stays honest
  whoever the bottleneck is, and it is what the targets are about.
* New-connection cost is measured with our own client (``ssl`` in a few processes) because wrk resumes TLS sessions on
  reconnect (it ``SSL_clear``s and reuses its SSL object); our client offers no session/PSK, and checks per connection
  that the handshake was full (``SSLSocket.session_reused`` is False) and TLS 1.3. The counts are in the table footer.
  A self-test first asks a logging nginx (``$ssl_session_reused``) what it saw from our client and from wrk.
* The origin shares the load core, so its CPU per operation and the connections it accepted are reported too: a proxy
  that handles the upstream worse slows the client, and that should be visible, not silently folded into req/s.
* Every figure is the median of ``--runs`` runs; servers alternate order from run to run so slow drift does not favour
  one side. Raw numbers go to ``bench/results/*.json``.

Only stdlib is needed to run it; external tools (nginx, wrk, openssl, taskset, optionally py-spy) are checked first.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
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

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
HOST = "bench.example"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = ("keepalive_1k", "handshake", "keepalive_100k")
SCENARIO_TITLES = {
    "keepalive_1k": "HTTPS keep-alive, 1 KiB (wrk, 50 conns)",
    "handshake": "New TLS 1.3 connections, full handshakes",
    "keepalive_100k": "HTTPS keep-alive, 100 KiB (wrk, 50 conns)",
}
# Targets from issue 2: edge CPU per operation relative to nginx's, same run, one worker each on one core.
CPU_TARGETS = {"keepalive_1k": 1.4, "handshake": 1.2, "keepalive_100k": 1.0}


# --------------------------------------------------------------------------------------------------------------------
# Tools and environment
# --------------------------------------------------------------------------------------------------------------------


def check_tools(need_edge: bool, edge_cmd: Sequence[str], profile: bool) -> list[str]:
    """Return human-readable problems (missing tools etc.); empty when everything needed is present.

    Checked up front so a run never dies half-way with a bare FileNotFoundError.
    """
    problems: list[str] = []
    hints = {
        "nginx": "apt-get install nginx-light (or nginx); used as origin and as the reference proxy",
        "wrk": "apt-get install wrk; the keep-alive load generator",
        "openssl": "apt-get install openssl; makes the CA and the ECDSA P-256 leaf certificate",
        "taskset": "apt-get install util-linux; pins servers and load to separate cores",
    }
    for tool, hint in hints.items():
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            problems.append(f"missing tool '{tool}': {hint}")
    if profile and find_py_spy() is None:
        problems.append("missing tool 'py-spy' (needed by --profile): .venv/bin/pip install py-spy")
    if need_edge:
        try:
            out = subprocess.run([*edge_cmd, "serve", "--help"], capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                problems.append(
                    f"'{' '.join(edge_cmd)} serve --help' failed (exit {out.returncode}); is the edge built yet? "
                    f"Use --servers nginx to measure nginx alone.\n{out.stderr.strip()[-800:]}"
                )
        except FileNotFoundError:
            problems.append(f"edge command not found: {edge_cmd[0]} (pip install -e . into .venv, or --edge-cmd)")
    if len(os.sched_getaffinity(0)) < 2:
        problems.append("need at least 2 usable cores: one for the server under test, one for load + origin")
    return problems


def find_py_spy() -> str | None:
    """py-spy from the repo venv first (where the README says to install it), then PATH."""
    venv = REPO / ".venv" / "bin" / "py-spy"
    if venv.exists():
        return str(venv)
    return shutil.which("py-spy")


def nginx_binary() -> str:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or "/usr/sbin/nginx"


def default_edge_cmd() -> list[str]:
    """The venv's console script if installed there, else ``python -m tlsedge`` with this interpreter."""
    script = REPO / ".venv" / "bin" / "tlsedge"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tlsedge"]


def environment() -> dict[str, Any]:
    """Facts that make a result file interpretable later (numbers from a VM with steal time mean little alone)."""

    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_openssl": ssl.OPENSSL_VERSION,
        "nginx": first_line([nginx_binary(), "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "openssl": first_line(["openssl", "version"]),
    }


# --------------------------------------------------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in ticks) of one process, None if it is gone.

    cutime/cstime hold children that were already reaped, so a worker that exits and is replaced mid-window is still
    counted; live children are not in them, so nothing is counted twice when we sum over the tree.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    # rest[0] is field 3 (state): field N is rest[N - 3]
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, ticks


def tree_cpu_seconds(root: int) -> tuple[float, list[int]]:
    """CPU seconds used so far by ``root`` and all its live descendants, and their pids."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _read_stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    pids: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            pids.append(pid)
            todo.extend(children.get(pid, []))
    return sum(stats[p][1] for p in pids) / CLK_TCK, sorted(pids)


def core_times(cores: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """(busy, idle, steal) seconds per core from /proc/stat: shows which side of the test saturated its core."""
    out: dict[int, tuple[float, float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            cpu = int(name[3:])
            if cpu in cores:
                v = [int(x) for x in vals]
                # user nice system idle iowait irq softirq steal guest guest_nice
                busy = v[0] + v[1] + v[2] + v[5] + v[6]
                out[cpu] = (busy / CLK_TCK, (v[3] + v[4]) / CLK_TCK, v[7] / CLK_TCK)
    return out


@dataclass
class Window:
    """Server tree CPU and per-core usage between two instants."""

    seconds: float = 0.0
    server_cpu_s: float = 0.0
    server_pids: list[int] = field(default_factory=list)
    core_busy_pct: dict[str, float] = field(default_factory=dict)
    core_steal_pct: dict[str, float] = field(default_factory=dict)
    origin_cpu_s: float = 0.0
    origin_conns: int = 0


@dataclass
class OriginRef:
    """The shared origin: its pid (for CPU) and port (for nginx stub_status: connections accepted)."""

    pid: int
    port: int


def origin_accepts(port: int) -> int:
    """Connections the origin has accepted so far, from its stub_status (the query's own connection included).

    The difference over a window shows whether a proxy reuses upstream connections; a proxy that does not makes
    the origin, which shares the load core, slower for everyone, so this is worth seeing beside the other figures.
    """
    with socket.create_connection((LOOPBACK, port), timeout=3) as s:
        s.sendall(b"GET /__status HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := s.recv(4096):
            data += chunk
    # "... server accepts handled requests\n 12 12 34\n ..."
    lines = bytes(data).split(b"\r\n\r\n", 1)[1].decode().splitlines()
    return int(lines[2].split()[0])


class CpuSampler:
    """Samples a process tree, the origin and the cores at the start and end of a load window."""

    def __init__(self, root: int, cores: Sequence[int], origin: OriginRef | None = None) -> None:
        self.root = root
        self.cores = list(cores)
        self.origin = origin
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._origin_cpu0 = 0.0
        self._origin_conns0 = 0
        self._cores0: dict[int, tuple[float, float, float]] = {}

    def start(self) -> None:
        if self.origin:
            self._origin_conns0 = origin_accepts(self.origin.port)
            self._origin_cpu0, _ = tree_cpu_seconds(self.origin.pid)
        self._cores0 = core_times(self.cores)
        self._cpu0, _ = tree_cpu_seconds(self.root)
        self._t0 = time.monotonic()

    def stop(self) -> Window:
        t1 = time.monotonic()
        cpu1, pids = tree_cpu_seconds(self.root)
        cores1 = core_times(self.cores)
        w = Window(seconds=t1 - self._t0, server_cpu_s=cpu1 - self._cpu0, server_pids=pids)
        if self.origin:
            w.origin_cpu_s = tree_cpu_seconds(self.origin.pid)[0] - self._origin_cpu0
            w.origin_conns = origin_accepts(self.origin.port) - self._origin_conns0 - 1  # minus our first query
        for c in self.cores:
            b0, i0, s0 = self._cores0[c]
            b1, i1, s1 = cores1[c]
            total = (b1 - b0) + (i1 - i0) + (s1 - s0)
            w.core_busy_pct[str(c)] = 100.0 * (b1 - b0) / total if total > 0 else 0.0
            w.core_steal_pct[str(c)] = 100.0 * (s1 - s0) / total if total > 0 else 0.0
        return w


# --------------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------------


class Service:
    """A server we started in its own session, so we can stop its whole tree (and nothing else) by process group."""

    def __init__(self, name: str, cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._logf = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        """First and last lines of the log: the cause (a traceback) is often at the top, a restart loop at the end."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if len(lines) <= 2 * n:
            return "\n".join(lines)
        return "\n".join([*lines[:n], f"... ({len(lines) - 2 * n} lines) ...", *lines[-n:]])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, wait a bounded time, then SIGKILL whatever is left of the group."""
        pgid = self.proc.pid  # start_new_session: pgid == pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._logf.close()


def free_port() -> int:
    """A free loopback port (bound then released; racy in theory, fine on a bench machine)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def run_checked(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a short setup command; on failure raise with its output (openssl errors are otherwise invisible)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: certificates, document root, configs
# --------------------------------------------------------------------------------------------------------------------


def make_certificates(d: Path) -> dict[str, Path]:
    """A throwaway CA and an ECDSA P-256 leaf for bench.example, with the openssl CLI (no Python deps needed)."""
    ca_key, ca_pem = d / "ca.key", d / "ca.pem"
    leaf_key, leaf_csr, leaf_pem = d / "leaf.key", d / "leaf.csr", d / "leaf.pem"
    ext = d / "leaf.ext"
    ext.write_text(
        f"subjectAltName=DNS:{HOST}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    gen = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run_checked([*gen, "-out", str(ca_key)])
    run_checked(
        ["openssl", "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
         "-subj", "/CN=tlsedge bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca_pem)]
    )  # fmt: skip
    run_checked([*gen, "-out", str(leaf_key)])
    run_checked(["openssl", "req", "-new", "-key", str(leaf_key), "-subj", f"/CN={HOST}", "-out", str(leaf_csr)])
    run_checked(
        ["openssl", "x509", "-req", "-in", str(leaf_csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(leaf_pem)]
    )  # fmt: skip
    return {"ca": ca_pem, "cert": leaf_pem, "key": leaf_key}


def make_docroot(d: Path) -> Path:
    """Static bodies of exactly 1 KiB and 100 KiB (incompressible, though nothing here compresses)."""
    root = d / "www"
    root.mkdir()
    (root / "1k").write_bytes(os.urandom(1024))
    (root / "100k").write_bytes(os.urandom(100 * 1024))
    return root


def _nginx_common(prefix: Path, workers: int, affinity_core: int | None) -> str:
    """Top of an nginx.conf that keeps every path inside ``prefix`` (never touches /var/log/nginx or /run)."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # temp dirs are 0700 root; workers must read them
    aff = ""
    if affinity_core is not None:
        aff = "worker_cpu_affinity " + bin(1 << affinity_core)[2:] + ";\n"
    return textwrap.dedent(
        f"""\
        {user}daemon off;
        master_process on;
        worker_processes {workers};
        {aff}pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 4096; }}
        """
    )


def _nginx_temp_paths(prefix: Path) -> str:
    return "".join(
        f"    {k}_temp_path {prefix}/{k}_temp;\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def write_origin_conf(prefix: Path, port: int, docroot: Path) -> Path:
    """Plain-HTTP static origin: cheap per request, keep-alive long so proxies keep their pooled connections."""
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        _nginx_common(prefix, 1, None)
        + "http {\n"
        + _nginx_temp_paths(prefix)
        + textwrap.dedent(
            f"""\
                access_log off;
                default_type application/octet-stream;
                sendfile on;
                tcp_nopush on;
                tcp_nodelay on;
                keepalive_timeout 120s;
                keepalive_requests 10000000;
                open_file_cache max=100 inactive=60s;
                server {{
                    listen {LOOPBACK}:{port} reuseport backlog=4096;
                    root {docroot};
                    location / {{ }}
                    location = /__status {{ stub_status; }}
                }}
            }}
            """
        )
    )
    return conf


def write_proxy_conf(
    prefix: Path, port: int, origin_port: int, certs: dict[str, Path], core: int, resumption_log: Path | None = None
) -> Path:
    """nginx as a normal TLS-terminating reverse proxy: Mozilla intermediate TLS, session cache + tickets on,
    upstream keep-alive pool, access log off; one worker pinned to the server core.

    ``resumption_log`` is only for the handshake self-test: it logs "$ssl_protocol $ssl_session_reused" per request so
    the *server* tells us whether a client resumed.
    """
    prefix.mkdir()
    log = "access_log off;"
    if resumption_log is not None:
        log = f'log_format resumption "$ssl_protocol $ssl_session_reused"; access_log {resumption_log} resumption;'
    conf = prefix / "nginx.conf"
    ciphers = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )
    conf.write_text(
        _nginx_common(prefix, 1, core)
        + "http {\n"
        + _nginx_temp_paths(prefix)
        + textwrap.dedent(
            f"""\
                {log}
                sendfile on;
                tcp_nopush on;
                tcp_nodelay on;
                keepalive_timeout 75s;
                ssl_protocols TLSv1.2 TLSv1.3;
                ssl_ciphers {ciphers};
                ssl_prefer_server_ciphers off;
                ssl_ecdh_curve X25519:prime256v1:secp384r1;
                ssl_session_cache shared:SSL:10m;
                ssl_session_timeout 1d;
                ssl_session_tickets on;
                upstream origin {{
                    server {LOOPBACK}:{origin_port};
                    keepalive 64;
                }}
                server {{
                    listen {LOOPBACK}:{port} ssl backlog=4096;
                    server_name {HOST};
                    ssl_certificate {certs["cert"]};
                    ssl_certificate_key {certs["key"]};
                    location / {{
                        proxy_pass http://origin;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $host;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                        proxy_set_header X-Forwarded-Proto $scheme;
                        proxy_set_header X-Forwarded-Host $host;
                    }}
                }}
            }}
            """
        )
    )
    return conf


def write_edge_conf(
    d: Path, port: int, origin_port: int, certs: dict[str, Path], origins: str | None = None, stored: bool = False
) -> Path:
    """The tlsedge config from the brief: one worker, access log off, same certificate and origin.

    ``origins`` replaces the site's ``origins = [...]`` line (e.g. by ``[[site.pool]]`` tables, for balancing.py).
    ``stored``: the site serves the same certificate from the store (``tlsedge cert import``), as ACME sites do.
    """
    certificate = "{ imported = true }" if stored else f'{{ cert = "{certs["cert"]}", key = "{certs["key"]}" }}'
    origins = origins or f'origins = ["http://{LOOPBACK}:{origin_port}"]\n'
    cfg = d / "tlsedge.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            [server]
            state_dir = "{d / "state"}"
            workers = 1
            https = ["{LOOPBACK}:{port}"]
            access_log = "off"

            [[site]]
            name = "bench"
            hosts = ["{HOST}"]
            certificate = {certificate}
            origin_tls = "flexible"
            """
        )
        + origins
    )
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Probing a server
# --------------------------------------------------------------------------------------------------------------------


def https_get(port: int, path: str, cafile: Path, timeout: float = 3.0) -> tuple[int, bytes, str, str]:
    """One verified HTTPS GET (SNI and Host bench.example): (status, body, TLS version, cipher)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as s,
    ):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
        version, cipher = s.version() or "?", (s.cipher() or ("?",))[0]
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body, version, cipher


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return bytes(out)


def wait_ready(svc: Service, port: int, cafile: Path, docroot: Path, timeout: float = 30.0) -> str:
    """Wait until the proxy answers both paths with the right bytes; returns 'TLSv1.3 / cipher' for the log."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; log tail:\n{svc.log_tail()}")
        try:
            desc = ""
            for path in ("/1k", "/100k"):
                status, body, version, cipher = https_get(port, path, cafile)
                want = (docroot / path.lstrip("/")).read_bytes()
                if status != 200 or body != want:
                    raise RuntimeError(f"GET {path}: status {status}, {len(body)} bytes (want 200, {len(want)})")
                desc = f"{version} {cipher}"
            return desc
        except (OSError, RuntimeError, ValueError, IndexError) as e:
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
    raise RuntimeError(
        f"{svc.name} not ready on port {port} after {timeout:.0f}s ({last}); log tail:\n{svc.log_tail()}"
    )


def wait_port(svc: Service, port: int, timeout: float = 15.0) -> None:
    """Wait for a plain TCP listener (the origin)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; log tail:\n{svc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{svc.name} did not listen on {port}; log tail:\n{svc.log_tail()}")


# --------------------------------------------------------------------------------------------------------------------
# Load: wrk for keep-alive
# --------------------------------------------------------------------------------------------------------------------

# wrk connects to the URL's host; we want SNI and Host "bench.example" but the address 127.0.0.1 without touching
# /etc/hosts, so the script overrides wrk.resolve. done() prints the numbers as JSON so we never parse wrk's text.
WRK_LUA = """\
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup("%(addr)s", service)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%%d,"bytes":%%d,"duration_us":%%d,"lat_p50_us":%%d,"lat_p99_us":%%d,' ..
      '"lat_mean_us":%%.1f,"err_connect":%%d,"err_read":%%d,"err_write":%%d,"err_status":%%d,"err_timeout":%%d}\\n',
      summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(
    lua: Path, port: int, path: str, seconds: int, connections: int, core: int, timeout_s: int = 5
) -> dict[str, Any]:
    """One wrk run pinned to the load core; returns wrk's own counters (requests, bytes, latency µs, errors)."""
    cmd = [
        "taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        f"--timeout={timeout_s}s", "-s", str(lua), "-H", f"Host: {HOST}", f"https://{HOST}:{port}{path}",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line[len("WRKJSON ") :]))
    raise RuntimeError(f"wrk gave no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")


# --------------------------------------------------------------------------------------------------------------------
# Load: full-handshake client
# --------------------------------------------------------------------------------------------------------------------

# Per-client counters in shared memory, read by the parent at the window edges.
_OK, _FAIL, _REUSED, _NOT13 = range(4)


def _handshake_client(
    port: int, path: str, core: int, deadline: float, counters: Any, idx: int, request_timeout: float
) -> None:
    """Loop until ``deadline``: new TCP connection, fresh TLS 1.3 handshake, GET with Connection: close, read to EOF.

    No session is ever passed to wrap_socket and the context has no client session cache (OpenSSL's default for
    clients), so no PSK is offered; OP_NO_TICKET additionally keeps TLS 1.2 from offering a ticket. Each connection
    still checks session_reused and the version, so the table can show the handshakes really were full TLS 1.3 ones.
    Certificate verification is off to spend the (bottleneck) client core on handshakes, not on chain building;
    the readiness check already verified the chain.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us via the deadline/terminate
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # undo the parent's SIGTERM-as-Ctrl-C handler inherited by fork
    os.sched_setaffinity(0, {core})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    base = idx * 4
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection((LOOPBACK, port), timeout=request_timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=HOST) as s,
            ):
                s.sendall(request)
                first = s.recv(65536)
                n = len(first)
                while chunk := s.recv(65536):
                    n += len(chunk)
                reused, version = s.session_reused, s.version()
            if not first.startswith(b"HTTP/1.1 200") or n < 1024:
                counters[base + _FAIL] += 1
                continue
            counters[base + _OK] += 1
            if reused:
                counters[base + _REUSED] += 1
            if version != "TLSv1.3":
                counters[base + _NOT13] += 1
        except (OSError, ssl.SSLError):
            counters[base + _FAIL] += 1


def run_handshakes(
    port: int, clients: int, core: int, warmup: float, seconds: float, sampler: CpuSampler
) -> tuple[dict[str, Any], Window]:
    """Run the full-handshake clients; count completions only inside the sampled window (warm-up excluded)."""
    ctx = mp.get_context("fork")
    counters = ctx.RawArray(ctypes.c_uint64, clients * 4)
    deadline = time.monotonic() + warmup + seconds + 0.5
    procs = [
        ctx.Process(target=_handshake_client, args=(port, "/1k", core, deadline, counters, i, 5.0), daemon=True)
        for i in range(clients)
    ]

    def totals() -> list[int]:
        return [sum(counters[i * 4 + k] for i in range(clients)) for k in range(4)]

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
            p.join(timeout=10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
    d = [a - b for a, b in zip(after, before, strict=True)]
    return {"connections": d[_OK], "failures": d[_FAIL], "resumed": d[_REUSED], "not_tls13": d[_NOT13]}, window


def verify_full_handshakes(
    tmp: Path, origin_port: int, certs: dict[str, Path], lua: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Server-side proof that the handshake client does full handshakes (and that the check can see resumption).

    A throw-away nginx, configured like the reference proxy but logging ``$ssl_session_reused`` per request, is loaded
    for a moment by our handshake client and then by ``wrk -H "Connection: close"``. The server must see 0 resumed
    handshakes from our client; wrk, which reuses its SSL object across reconnects, shows the check does detect
    resumption (and why wrk is not used for this scenario).
    """
    prefix = tmp / "probe"
    log = prefix / "resumption.log"
    port = free_port()
    conf = write_proxy_conf(prefix, port, origin_port, certs, args.server_core, resumption_log=log)
    svc = Service(
        "probe-nginx",
        ["taskset", "-c", str(args.server_core), nginx_binary(), "-p", str(prefix), "-c", str(conf),
         "-e", str(prefix / "error.log")],
        tmp / "probe.log", tmp,
    )  # fmt: skip

    def counts() -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in log.read_text().splitlines():
                out[line] = out.get(line, 0) + 1
        log.write_text("")  # nginx keeps appending with O_APPEND, so truncating separates the two clients
        return {k.replace(" .", " full").replace(" r", " resumed"): v for k, v in out.items()}

    try:
        wait_ready(svc, port, certs["ca"], tmp / "www")
        counts()
        sampler = CpuSampler(svc.pid, [args.server_core, args.load_core])
        ours, _ = run_handshakes(port, args.hs_clients, args.load_core, 0.0, 1.0, sampler)
        time.sleep(0.3)
        ours_seen = counts()
        wrk_lua = tmp / "wrk-close.lua"
        wrk_lua.write_text(lua.read_text())
        cmd = [
            "taskset", "-c", str(args.load_core), "wrk", "-t1", "-c4", "-d1s", "-s", str(wrk_lua),
            "-H", f"Host: {HOST}", "-H", "Connection: close", f"https://{HOST}:{port}/1k",
        ]  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=30)
        time.sleep(0.3)
        wrk_seen = counts()
    finally:
        svc.stop()
    return {"our_client": {"client_side": ours, "server_side": ours_seen}, "wrk_connection_close": wrk_seen}


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One measured window of one scenario against one server."""

    server: str
    scenario: str
    run: int
    ops: int  # requests (keep-alive) or completed connections (handshake)
    seconds: float
    window: Window
    detail: dict[str, Any]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return 1e6 * self.window.server_cpu_s / self.ops if self.ops else math.inf

    def metrics(self) -> dict[str, float]:
        """The figures the table shows for this window."""
        m: dict[str, float] = {
            "ops_per_s": self.ops_per_s,
            "cpu_us_per_op": self.cpu_us_per_op,
            "server_core_pct": 100.0 * self.window.server_cpu_s / self.window.seconds if self.window.seconds else 0.0,
            "origin_cpu_us_per_op": 1e6 * self.window.origin_cpu_s / self.ops if self.ops else math.inf,
            "origin_conns_per_kop": 1000.0 * self.window.origin_conns / self.ops if self.ops else math.inf,
        }
        if self.scenario.startswith("keepalive"):
            m["p99_ms"] = self.detail["lat_p99_us"] / 1000.0
            m["mb_per_s"] = self.detail["bytes"] / self.seconds / 1e6
        return m


@dataclass
class Target:
    """A running proxy under test, and the origin behind it."""

    name: str
    port: int
    service: Service
    origin: OriginRef


def measure_wrk(
    target: Target, scenario: str, run: int, args: argparse.Namespace, lua: Path, cores: Sequence[int]
) -> Measurement:
    """Warm up, then one wrk window with the server tree's CPU sampled right around it."""
    path = "/1k" if scenario == "keepalive_1k" else "/100k"
    if args.warmup > 0:
        run_wrk(lua, target.port, path, max(1, round(args.warmup)), args.connections, args.load_core)
    sampler = CpuSampler(target.service.pid, cores, target.origin)
    sampler.start()
    res = run_wrk(lua, target.port, path, args.duration, args.connections, args.load_core)
    window = sampler.stop()
    seconds = res["duration_us"] / 1e6
    return Measurement(target.name, scenario, run, int(res["requests"]), seconds, window, res)


def measure_handshakes(target: Target, run: int, args: argparse.Namespace, cores: Sequence[int]) -> Measurement:
    """Full TLS 1.3 handshakes with our own client; window = the sampler's window exactly."""
    sampler = CpuSampler(target.service.pid, cores, target.origin)
    res, window = run_handshakes(target.port, args.hs_clients, args.load_core, args.warmup, args.duration, sampler)
    return Measurement(target.name, "handshake", run, res["connections"], window.seconds, window, res)


def sanity_flags(m: Measurement) -> list[str]:
    """Anything that makes a window's numbers suspect, for the footer (errors, resumption, non-1.3)."""
    flags: list[str] = []
    d = m.detail
    if m.scenario == "handshake":
        if d["resumed"]:
            flags.append(f"{d['resumed']} resumed handshakes")
        if d["not_tls13"]:
            flags.append(f"{d['not_tls13']} non-TLS1.3 handshakes")
        if d["failures"]:
            flags.append(f"{d['failures']} failed connections")
    else:
        errs = {k: v for k, v in d.items() if k.startswith("err_") and v}
        if errs:
            flags.append("wrk errors " + ", ".join(f"{k[4:]}={v}" for k, v in errs.items()))
    if m.ops == 0:
        flags.append("no completed operations")
    return flags


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def medians(ms: list[Measurement]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {server: {metric: median over runs}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for m in ms:
        groups.setdefault((m.scenario, m.server), []).append(m.metrics())
    for (scenario, server), rows in groups.items():
        out.setdefault(scenario, {})[server] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return out


def render_table(med: dict[str, dict[str, dict[str, float]]], servers: Sequence[str], runs: int, core_note: str) -> str:
    """One table: each figure for tlsedge, nginx and the ratio tlsedge/nginx, with the issue's targets beside."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    specs: list[tuple[str, str, str, Callable[[float], str], str]] = [
        # scenario, metric key, label, formatter, better
        ("keepalive_1k", "ops_per_s", "req/s", lambda v: f"{v:,.0f}", "higher"),
        ("keepalive_1k", "p99_ms", "p99 latency ms", lambda v: f"{v:.2f}", "lower"),
        ("keepalive_1k", "cpu_us_per_op", "server CPU µs/request", lambda v: f"{v:.1f}", "lower"),
        ("keepalive_1k", "server_core_pct", "server CPU, % of a core", lambda v: f"{v:.0f}", ""),
        ("keepalive_1k", "origin_cpu_us_per_op", "origin CPU µs/request", lambda v: f"{v:.1f}", "lower"),
        ("keepalive_1k", "origin_conns_per_kop", "origin conns opened/1000", lambda v: f"{v:.1f}", "lower"),
        ("handshake", "ops_per_s", "connections/s", lambda v: f"{v:,.0f}", "higher"),
        ("handshake", "cpu_us_per_op", "server CPU µs/connection", lambda v: f"{v:.1f}", "lower"),
        ("handshake", "server_core_pct", "server CPU, % of a core", lambda v: f"{v:.0f}", ""),
        ("handshake", "origin_cpu_us_per_op", "origin CPU µs/connection", lambda v: f"{v:.1f}", "lower"),
        ("handshake", "origin_conns_per_kop", "origin conns opened/1000", lambda v: f"{v:.1f}", "lower"),
        ("keepalive_100k", "mb_per_s", "MB/s", lambda v: f"{v:,.1f}", "higher"),
        ("keepalive_100k", "ops_per_s", "responses/s", lambda v: f"{v:,.0f}", "higher"),
        ("keepalive_100k", "p99_ms", "p99 latency ms", lambda v: f"{v:.2f}", "lower"),
        ("keepalive_100k", "cpu_us_per_op", "server CPU µs/response", lambda v: f"{v:.1f}", "lower"),
        ("keepalive_100k", "server_core_pct", "server CPU, % of a core", lambda v: f"{v:.0f}", ""),
        ("keepalive_100k", "origin_cpu_us_per_op", "origin CPU µs/response", lambda v: f"{v:.1f}", "lower"),
        ("keepalive_100k", "origin_conns_per_kop", "origin conns opened/1000", lambda v: f"{v:.1f}", "lower"),
    ]
    last_scenario = ""
    for scenario, key, label, fmt, better in specs:
        if scenario not in med:
            continue
        by = med[scenario]
        head = SCENARIO_TITLES[scenario] if scenario != last_scenario else ""
        last_scenario = scenario
        e = by.get("tlsedge", {}).get(key)
        n = by.get("nginx", {}).get(key)
        es = fmt(e) if e is not None else "-"
        ns = fmt(n) if n is not None else "-"
        ratio = f"{e / n:.2f}x" if e is not None and n else "-"
        target = ""
        if key == "cpu_us_per_op":
            t = CPU_TARGETS[scenario]
            verdict = ("ok" if e / n <= t else "MISS") if e is not None and n else ""
            target = f"<= {t:.1f}x {verdict}".rstrip()
        elif better:
            target = f"({better} is better)"
        rows.append((head, label, es, ns, ratio, target))
    cols = ("scenario", "figure", "tlsedge", "nginx", "tlsedge/nginx", "target (CPU/op)")
    widths = [max(len(r[i]) for r in [*rows, cols]) for i in range(6)]
    right = {2, 3, 4}

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    out.append("")
    out.append(f"medians of {runs} run(s); servers measured: {', '.join(servers)}; {core_note}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------------------------------


def profile_edge(target: Target, args: argparse.Namespace, lua: Path, stamp: str) -> Path:
    """py-spy on the edge's process tree (control + workers) during 1 KiB keep-alive load; separate from the measured
    windows because sampling a process slows it down."""
    py_spy = find_py_spy()
    assert py_spy is not None
    ext = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "folded.txt"}[args.profile_format]
    out = RESULTS_DIR / f"edge-profile-{stamp}.{ext}"
    cmd = [
        "taskset", "-c", str(args.load_core), py_spy, "record", "--pid", str(target.service.pid), "--subprocesses",
        "--rate", str(args.profile_rate), "--duration", str(args.duration), "--format", args.profile_format,
        "--output", str(out), "--function",
    ]  # fmt: skip
    # --nonblocking does not pause the edge to read its stacks (less distortion) but cannot unwind C frames.
    cmd.append("--native" if args.profile_native else "--nonblocking")
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        run_wrk(lua, target.port, "/1k", args.duration, args.connections, args.load_core)
        spy_out, _ = spy.communicate(timeout=args.duration + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}):\n{spy_out[-2000:]}")
    return out


def summarize_speedscope(path: Path, top: int = 15) -> str:
    """Top frames by self and by inclusive time from a py-spy speedscope file, so the run's output already says where
    the edge spends its time (the file itself is for https://www.speedscope.app)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    self_w: dict[int, float] = {}
    incl_w: dict[int, float] = {}
    total = 0.0
    for prof in data["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"], strict=True):
            total += w
            if stack:
                self_w[stack[-1]] = self_w.get(stack[-1], 0.0) + w
            for f in set(stack):
                incl_w[f] = incl_w.get(f, 0.0) + w
    if not total:
        return "profile is empty (was the edge busy?)"

    def name(i: int) -> str:
        f = frames[i]
        file = str(f.get("file") or "")
        for marker in ("site-packages/", "lib/python3.", "src/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{f['name']} ({file}:{f.get('line')})" if file else str(f["name"])

    out = [f"py-spy: {total:.2f}s of busy samples; top by self time:"]
    out += [f"  {100 * w / total:5.1f}%  {name(i)}" for i, w in sorted(self_w.items(), key=lambda x: -x[1])[:top]]
    out.append("top by inclusive time:")
    incl = [
        (i, w) for i, w in sorted(incl_w.items(), key=lambda x: -x[1]) if not frames[i]["name"].startswith("process ")
    ]
    out += [f"  {100 * w / total:5.1f}%  {name(i)}" for i, w in incl[:top]]
    out.append(
        "(self time in the event loop's run() is C code: uvloop, OpenSSL, syscalls; --profile-native splits it; "
        "'process ...' frames are samples py-spy could not attribute to Python)"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure tlsedge against nginx as TLS-terminating reverse proxies; print one table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=3, help="repeats of every measurement; the table shows medians")
    p.add_argument("--duration", type=int, default=8, help="seconds per measured window")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each window (wrk rounds to 1 s)")
    p.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections")
    p.add_argument("--hs-clients", type=int, default=8, help="processes of the full-handshake client")
    p.add_argument("--server-core", type=int, default=0, help="core for the proxy under test")
    p.add_argument("--load-core", type=int, default=1, help="core for wrk, the handshake client and the origin")
    p.add_argument(
        "--servers", default="tlsedge,nginx", help="comma list from tlsedge,nginx (nginx alone: before the edge exists)"
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list from {','.join(SCENARIOS)}")
    p.add_argument("--edge-cmd", default=None, help="command that runs tlsedge (default: .venv/bin/tlsedge)")
    p.add_argument("--profile", action="store_true", help="after measuring, py-spy the edge under 1 KiB keep-alive")
    p.add_argument(
        "--profile-format",
        choices=("speedscope", "flamegraph", "raw"),
        default="speedscope",
        help="speedscope also prints a top-frames summary; flamegraph writes an SVG",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: include C frames (ssl, uvloop)")
    p.add_argument(
        "--skip-handshake-check", action="store_true", help="skip the server-side check that handshakes are full"
    )
    p.add_argument(
        "--edge-certificate", choices=("files", "store"), default="files",
        help="the edge's certificate from files, or imported into its store (how ACME and imported sites load it)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.servers if s not in ("tlsedge", "nginx")] + [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.servers or not args.scenarios:
        p.error(f"unknown server/scenario: {bad}")
    if args.runs < 1 or args.duration < 1:
        p.error("--runs and --duration must be >= 1")
    if args.profile and "tlsedge" not in args.servers:
        p.error("--profile needs tlsedge in --servers")
    if args.server_core == args.load_core:
        p.error("--server-core and --load-core must differ")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class BenchRun:
    """The end of every benchmark's ``main()``: Ctrl-C and a ``RuntimeError`` become exit codes 130 and 2 with one
    line each, and however the run ends the started servers are stopped and the temporary directory is removed (or
    kept with ``--keep-tmp``). ``with BenchRun(...) as run: ... return 0`` then ``return run.code``.
    """

    def __init__(self, services: list[Service], tmp: Path, keep_tmp: bool) -> None:
        self.services = services
        self.tmp = tmp
        self.keep_tmp = keep_tmp
        self.code = 0

    def __enter__(self) -> BenchRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if kind is KeyboardInterrupt:
            print("\ninterrupted; stopping servers", file=sys.stderr)
            self.code = 130
        elif kind is not None and issubclass(kind, RuntimeError):
            print(f"benchmark failed: {exc}", file=sys.stderr)
            self.code = 2
        for svc in reversed(self.services):
            svc.stop()
        if self.keep_tmp:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.code != 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    edge_cmd = args.edge_cmd.split() if args.edge_cmd else default_edge_cmd()
    problems = check_tools("tlsedge" in args.servers, edge_cmd, args.profile)
    usable = os.sched_getaffinity(0)
    for c in (args.server_core, args.load_core):
        if c not in usable:
            problems.append(f"core {c} is not usable here (allowed: {sorted(usable)})")
    if problems:
        print("cannot run the benchmark:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2

    # This script (sampling /proc, sleeping) lives on the load core so the server core only runs the server.
    os.sched_setaffinity(0, {args.load_core})
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt so the finally-blocks stop every process we started (SIGINT is
    # installed explicitly because a shell starts background jobs with SIGINT ignored, and Python keeps that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    cores = [args.server_core, args.load_core]
    tmp = Path(tempfile.mkdtemp(prefix="tlsedge-bench-"))
    tmp.chmod(0o755)  # nginx workers (and the edge, if it drops privileges) must read files in here
    services: list[Service] = []
    measurements: list[Measurement] = []
    with BenchRun(services, tmp, args.keep_tmp) as run:
        certs = make_certificates(tmp)
        docroot = make_docroot(tmp)
        lua = tmp / "wrk.lua"
        lua.write_text(WRK_LUA % {"addr": LOOPBACK})

        origin_port = free_port()
        conf = write_origin_conf(tmp / "origin", origin_port, docroot)
        origin = Service(
            "origin",
            ["taskset", "-c", str(args.load_core), nginx_binary(), "-p", str(conf.parent), "-c", str(conf),
             "-e", str(conf.parent / "error.log")],
            tmp / "origin.log", tmp,
        )  # fmt: skip
        services.append(origin)
        wait_port(origin, origin_port)
        origin_ref = OriginRef(origin.pid, origin_port)

        handshake_check: dict[str, Any] | None = None
        if "handshake" in args.scenarios and not args.skip_handshake_check:
            handshake_check = verify_full_handshakes(tmp, origin_port, certs, lua, args)
            ours = handshake_check["our_client"]["server_side"]
            print(
                f"handshake self-test, as the server saw it: our client {ours or 'nothing'}; "
                f"wrk -H 'Connection: close' {handshake_check['wrk_connection_close'] or 'nothing'}"
            )
            if any("resumed" in k for k in ours) or not any("TLSv1.3 full" in k for k in ours):
                raise RuntimeError("the handshake client resumed sessions or did no TLS 1.3 full handshakes")

        targets: dict[str, Target] = {}
        if "nginx" in args.servers:
            port = free_port()
            conf = write_proxy_conf(tmp / "proxy", port, origin_port, certs, args.server_core)
            svc = Service(
                "nginx",
                ["taskset", "-c", str(args.server_core), nginx_binary(), "-p", str(conf.parent), "-c", str(conf),
                 "-e", str(conf.parent / "error.log")],
                tmp / "nginx.log", tmp,
            )  # fmt: skip
            services.append(svc)
            targets["nginx"] = Target("nginx", port, svc, origin_ref)
        if "tlsedge" in args.servers:
            port = free_port()
            cfg = write_edge_conf(tmp, port, origin_port, certs, stored=args.edge_certificate == "store")
            if args.edge_certificate == "store":
                run_checked([*edge_cmd, "cert", "import", "--site", "bench", "--cert", str(certs["cert"]), "--key",
                             str(certs["key"]), "--trust", str(certs["ca"]), "-c", str(cfg)])
            svc = Service(
                "tlsedge", ["taskset", "-c", str(args.server_core), *edge_cmd, "serve", "-c", str(cfg)],
                tmp / "tlsedge.log", tmp,
            )  # fmt: skip
            services.append(svc)
            targets["tlsedge"] = Target("tlsedge", port, svc, origin_ref)
        for t in targets.values():
            desc = wait_ready(t.service, t.port, certs["ca"], docroot)
            _, pids = tree_cpu_seconds(t.service.pid)
            print(f"{t.name:8} ready on {LOOPBACK}:{t.port} ({desc}); process tree {pids} on core {args.server_core}")
        print(f"origin   nginx on {LOOPBACK}:{origin_port}, core {args.load_core}; temp dir {tmp}")

        order = [s for s in ("tlsedge", "nginx") if s in targets]
        n_windows = args.runs * len(order) * len(args.scenarios)
        print(
            f"{n_windows} windows of {args.duration}s (+{args.warmup}s warm-up): "
            f"~{n_windows * (args.duration + math.ceil(args.warmup) + 0.7) / 60:.1f} min"
        )
        for run in range(1, args.runs + 1):
            run_order = order if run % 2 else order[::-1]  # alternate so drift does not favour one server
            for scenario in args.scenarios:
                for name in run_order:
                    t = targets[name]
                    if not t.service.alive():
                        raise RuntimeError(f"{name} died; log tail:\n{t.service.log_tail()}")
                    if scenario == "handshake":
                        m = measure_handshakes(t, run, args, cores)
                    else:
                        m = measure_wrk(t, scenario, run, args, lua, cores)
                    measurements.append(m)
                    mm = m.metrics()
                    flags = sanity_flags(m)
                    print(
                        f"  run {run} {scenario:15} {name:8} {mm['ops_per_s']:>10,.0f} op/s  "
                        f"{mm['cpu_us_per_op']:>7.1f} µs CPU/op  server core {mm['server_core_pct']:3.0f}%  "
                        f"core{args.server_core} {m.window.core_busy_pct[str(args.server_core)]:3.0f}% "
                        f"core{args.load_core} {m.window.core_busy_pct[str(args.load_core)]:3.0f}% busy"
                        + (f"  !! {'; '.join(flags)}" if flags else ""),
                        flush=True,
                    )

        profile_path: Path | None = None
        if args.profile:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_path = profile_edge(targets["tlsedge"], args, lua, stamp)

        med = medians(measurements)
        load_busy = statistics.median(m.window.core_busy_pct[str(args.load_core)] for m in measurements)
        # Busy time on the server core that is not the server's own tree: other tenants, kernel threads, or softirq
        # time the kernel did not charge to the server. Large values mean the CPU/op figures are polluted.
        other = statistics.median(
            m.window.core_busy_pct[str(args.server_core)] - m.metrics()["server_core_pct"] for m in measurements
        )
        steal = max(max(m.window.core_steal_pct.values()) for m in measurements)
        core_note = (
            f"server on core {args.server_core}, load+origin on core {args.load_core} "
            f"(load core median {load_busy:.0f}% busy; server core busy outside the server tree {other:.0f}%; "
            f"max steal {steal:.1f}%)"
        )
        print()
        print(render_table(med, order, args.runs, core_note))
        hs = [m for m in measurements if m.scenario == "handshake"]
        if hs:
            total = sum(m.ops for m in hs)
            resumed = sum(m.detail["resumed"] for m in hs)
            not13 = sum(m.detail["not_tls13"] for m in hs)
            failed = sum(m.detail["failures"] for m in hs)
            print(
                f"handshake client: {total:,} connections in the windows, {resumed} resumed, {not13} not TLS 1.3, "
                f"{failed} failed (fresh SSLSocket per connection, no session offered)"
            )
        if other > 10:
            print(
                f"WARNING: core {args.server_core} was busy outside the server under test {other:.0f}% of the time "
                "(other processes on this machine); req/s are unreliable and CPU/op is inflated by cache and "
                "scheduler interference. Re-run on a quiet machine."
            )
        flagged = [(m, f) for m in measurements if (f := sanity_flags(m))]
        for m, f in flagged:
            print(f"WARNING run {m.run} {m.scenario} {m.server}: {'; '.join(f)}")

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"edge_vs_nginx-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "started": stamp,
                    "args": {k: v for k, v in vars(args).items()},
                    "edge_cmd": edge_cmd,
                    "environment": environment(),
                    "cpu_targets": CPU_TARGETS,
                    "medians": med,
                    "measurements": [{**asdict(m), "metrics": m.metrics()} for m in measurements],
                    "handshake_self_test": handshake_check,
                    "profile": str(profile_path) if profile_path else None,
                },
                indent=2,
            )
        )
        print(f"raw numbers: {out.relative_to(REPO)}")
        if profile_path:
            print(f"edge profile: {profile_path.relative_to(REPO)}")
            if args.profile_format == "speedscope":
                print(summarize_speedscope(profile_path))
        return 0 if not flagged else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
