#!/usr/bin/env python3
"""tlsedge's guard vs nginx + ModSecurity: WAF CPU per request, event-loop lag under WAF load, challenge cookies.

Issue 6 asks, measured in one run: CPU µs per request with the WAF on (CRS paranoia 1, block) and off, against
nginx with ``libnginx-mod-http-modsecurity`` and the same rules (target: at most 1.1x nginx's CPU per request with
the WAF on); the event loop's lag p99 while the WAF is busy (target: under 5 ms); and what a client holding a valid
challenge cookie costs on an ``always`` challenge site against the same site without a challenge (target: the
verification under 5 µs of CPU). Why the script is shaped the way it is:

* It measures like ``edge_vs_nginx.py`` and ``cache_vs_nginx.py`` and imports their helpers: wrk keep-alive load on
  one core, the server under test (one worker: tlsedge ``workers = 1``, ``[guard] waf_threads = 1``; nginx
  ``worker_processes 1``) pinned to the other, its **CPU µs per request** summed over its whole process tree from
  ``/proc`` (tlsedge control + worker with its WAF thread + any helper process; nginx master + worker), split into
  the processes' main threads (the edge's event loop) and other threads (its WAF thread), medians of ``--runs``
  runs, the server order alternating per run, other processes' CPU counted around every window and a disturbed
  window measured again (``balancing.py``'s rule). The WAF target is judged on the median of the per-run ratios:
  the WAF windows of both servers drift together from run to run by more than the 10 % the target allows.
* One edge and one nginx serve every case, as sites (server names) of the same process: ``plain`` (no WAF),
  ``waf``, ``challenge`` (tlsedge only) and ``probe`` (a redirect answered by the server itself). Both proxy to the
  same static nginx origin (1 KiB). Plain HTTP by default, so TLS stays out of the comparison (``--transports``).
* Same rules: the edge's config is read with tlsedge's own loader, and the ModSecurity file nginx includes is
  written from the directive text the edge loads for its ``waf`` site (``waf_rules.before_crs``, every CRS rule
  file of ``/usr/share/modsecurity-crs/rules`` in the same order, ``waf_rules.after_crs``). Both run the same
  ``libmodsecurity3``, and nginx gets a transaction id (``$request_id``) as the edge gives its own. Before
  measuring, an SQL injection must get 403 from both ``waf`` sites and 200 from both ``plain`` ones, and the benign
  requests wrk sends must match no rule (the WAF log lines are counted).
* Requests look like a browser's: a page URL with a query string and the header set of a current browser
  (User-Agent, Accept*, Referer, Sec-Fetch-*, a Cookie header), the same bytes for every server and site.
* Loop lag is observed from outside: while wrk loads the ``waf`` site, a probe client on the load core sends
  sequential GETs to the ``probe`` site of the same worker (answered by the worker itself, no origin, no WAF) and
  times each; the probe runs with ``SCHED_FIFO`` so its own scheduling behind wrk does not count. The lag is the
  probe latency under WAF load minus the same probe's latency on an idle server; the same is done under load on
  the ``plain`` site (the lag any busy loop has) and for nginx, whose worker runs ModSecurity on its loop.
* The challenge cookie is obtained by solving the challenge once with ``tests/guard/pow_solver.py`` (as a browser
  would: page, nonce, verify URL, ``Set-Cookie``); the same Cookie header goes to every site and server.
* In-process floors, timed in this process after the windows with tlsedge's own classes and the edge's config: the
  WAF check of the same request in one thread without I/O (what ModSecurity and the binding cost alone), and
  ``verify_cookie`` and the challenge site's whole ``SiteGuard.check`` for a request with a valid cookie.

Needs the project venv (the rules and the cookie code come from tlsedge itself) and the tools of
``edge_vs_nginx.py`` plus the nginx ModSecurity module; everything is checked first.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib.util
import json
import math
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
import timeit
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package: import its helpers by path
from balancing import check_edge_conf, others_cpu_seconds, process_ticks
from edge_vs_nginx import (
    CLK_TCK,
    LOOPBACK,
    REPO,
    RESULTS_DIR,
    WRK_LUA,
    BenchRun,
    CpuSampler,
    Service,
    Window,
    check_tools,
    default_edge_cmd,
    environment,
    find_py_spy,
    free_port,
    make_docroot,
    nginx_binary,
    run_checked,
    summarize_speedscope,
    tree_cpu_seconds,
    wait_port,
    write_origin_conf,
    write_proxy_conf,
)

if TYPE_CHECKING:
    from tlsedge.guard.waf import WafSettings

DOMAIN = "bench.example"
SITES = ("plain", "waf", "challenge", "probe")
SCENARIOS = ("plain", "challenge", "waf")  # wrk loads; plain and challenge are adjacent in a run (compared)
NGINX_SCENARIOS = ("plain", "waf")
SERVERS = ("tlsedge", "nginx")
TRANSPORTS = ("http", "https")
LAG_CONDITIONS = ("idle", "plain", "waf")
CPU_TARGET = 1.1  # issue 6: edge CPU per request with the WAF on <= 1.1x nginx + ModSecurity's, same run
LAG_TARGET_MS = 5.0  # issue 6: event-loop lag p99 while the WAF is busy
VERIFY_TARGET_US = 5.0  # issue 6: CPU of a challenge-cookie verification
RATIO_METRICS = ("req_per_s", "cpu_us_per_req", "server_core_pct", "p99_ms")
MODSEC_MODULE = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")
CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
POW_SOLVER = REPO / "tests" / "guard" / "pow_solver.py"
PATH = "/1k?id=42&sort=price"  # a page with arguments, so the CRS has ARGS to look at
ATTACK_PATH = "/1k?id=1%27%20OR%201%3D1--%20"  # ' OR 1=1 -- : the CRS's SQL injection rules must block it
PROBE_PATH = "/probe"
# A current Chrome's navigation request (Host and Cookie are added per request).
BROWSER_HEADERS = (
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", f"https://www.{DOMAIN}/catalogue/shoes?page=2"),
    ("Upgrade-Insecure-Requests", "1"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-User", "?1"),
)
OTHER_COOKIES = "session=6f1c2e9a7b3d4c58a0e1f2b3c4d5e6f7; theme=dark; consent=analytics%3D0%26ads%3D0"


def host(site: str) -> str:
    return f"{site}.{DOMAIN}"


# --------------------------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------------------------


def guard_problems(servers: Sequence[str]) -> list[str]:
    """What this benchmark needs beyond edge_vs_nginx.py's tools: tlsedge importable, the CRS, the nginx module."""
    problems = []
    if importlib.util.find_spec("tlsedge") is None:
        problems.append("tlsedge is not importable: run this script with the project venv (.venv/bin/python)")
    if not sorted(CRS_RULES.glob("*.conf")):
        problems.append(f"no OWASP CRS rules in {CRS_RULES}: apt-get install modsecurity-crs")
    if "nginx" in servers and not MODSEC_MODULE.exists():
        problems.append(f"missing {MODSEC_MODULE}: apt-get install libnginx-mod-http-modsecurity")
    if not POW_SOLVER.exists():
        problems.append(f"missing {POW_SOLVER} (the challenge solver of the tests)")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def make_certificates(d: Path) -> dict[str, Path]:
    """edge_vs_nginx.py's throwaway CA and ECDSA P-256 leaf, with every site's name in it (for --transports https)."""
    ca_key, ca_pem = d / "ca.key", d / "ca.pem"
    leaf_key, leaf_csr, leaf_pem, ext = d / "leaf.key", d / "leaf.csr", d / "leaf.pem", d / "leaf.ext"
    names = ",".join(f"DNS:{host(s)}" for s in SITES)
    ext.write_text(
        f"subjectAltName={names}\nbasicConstraints=critical,CA:FALSE\n"
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
    run_checked(["openssl", "req", "-new", "-key", str(leaf_key), "-subj", f"/CN={host('plain')}", "-out",
                 str(leaf_csr)])  # fmt: skip
    run_checked(
        ["openssl", "x509", "-req", "-in", str(leaf_csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(leaf_pem)]
    )  # fmt: skip
    leaf_key.chmod(0o600)
    return {"ca": ca_pem, "cert": leaf_pem, "key": leaf_key}


def write_edge_conf(d: Path, http_port: int, https_port: int, origin_port: int, certs: dict[str, Path]) -> Path:
    """One worker with one WAF thread, access log off; four sites on one origin. Only ``waf`` has a WAF, only
    ``challenge`` a challenge; ``probe`` keeps ``redirect_http`` (its 308 is answered by the worker itself)."""
    d.mkdir()
    certificate = f'{{ cert = "{certs["cert"]}", key = "{certs["key"]}" }}'
    sites = {
        "plain": "redirect_http = false\n",
        "waf": 'redirect_http = false\n\n[site.waf]\nmode = "block"\nparanoia = 1\n',
        "challenge": 'redirect_http = false\n\n[site.challenge]\nmode = "always"\ncookie_ttl = "6h"\n',
        "probe": "",
    }
    text = textwrap.dedent(
        f"""\
        [server]
        state_dir = "{d / "state"}"
        workers = 1
        http = ["{LOOPBACK}:{http_port}"]
        https = ["{LOOPBACK}:{https_port}"]
        access_log = "off"

        [guard]
        waf_threads = 1
        """
    )
    for name, extra in sites.items():
        text += (
            f'\n[[site]]\nname = "{name}"\nhosts = ["{host(name)}"]\ncertificate = {certificate}\n'
            f'origin_tls = "flexible"\norigins = ["http://{LOOPBACK}:{origin_port}"]\n{extra}'
        )
    cfg = d / "tlsedge.toml"
    cfg.write_text(text)
    return cfg


def edge_waf_settings(cfg: Path, site: str = "waf") -> WafSettings:
    """The ``WafSettings`` the edge builds for ``site``: its config read by tlsedge's own loader."""
    from tlsedge.config.load import load_config
    from tlsedge.guard.runtime import waf_settings

    config = load_config(cfg)
    waf = next(s.guard.waf for s in config.sites if s.name == site)
    assert waf is not None
    return waf_settings(waf)


def modsecurity_rules(cfg: Path, site: str = "waf") -> str:
    """The directives the edge loads for ``site``, as one ModSecurity file: what ``build_site_waf`` loads (its base
    directives, the CRS files in its order, the operator's files, its epilogue)."""
    from tlsedge.guard import waf_rules

    settings = edge_waf_settings(cfg, site)
    files = sorted(settings.crs_path.glob("*.conf")) + list(settings.extra_rules)
    return (
        f"# written by bench/guard_vs_nginx.py from tlsedge's rules for site {site!r}\n"
        + waf_rules.before_crs(settings)
        + "".join(f"Include {path}\n" for path in files)
        + waf_rules.after_crs(settings)
    )


def _server_block(conf: Path) -> tuple[str, str, str]:
    """edge_vs_nginx.py's reference proxy split around its one server block: (before, block, after)."""
    text = conf.read_text()
    start = text.find("    server {\n")
    end = text.rfind("}")  # the end of the http block
    if start < 0 or end < start or text.count("    server {\n") != 1:
        raise RuntimeError(f"edge_vs_nginx.py changed the shape of {conf}: expected one server block")
    return text[:start], text[start:end], text[end:]


def write_nginx_conf(
    prefix: Path, http_port: int, https_port: int, origin_port: int, certs: dict[str, Path], core: int, rules: Path
) -> Path:
    """edge_vs_nginx.py's reference proxy (1 worker on the server core, upstream keep-alive, access log off) with the
    ModSecurity module loaded and one server block per site: ``waf`` has ``modsecurity on`` with the edge's rules,
    ``plain`` has none, ``probe`` answers a 308 itself, as the edge's probe site does."""
    conf = write_proxy_conf(prefix, https_port, origin_port, certs, core)
    before, block, after = _server_block(conf)
    listen = f"listen {LOOPBACK}:{https_port} ssl backlog=4096;"
    server_name = f"server_name {DOMAIN};"
    if block.count(listen) != 1 or block.count(server_name) != 1:
        raise RuntimeError(f"edge_vs_nginx.py changed the shape of {conf}: listen/server_name not found")
    blocks = []
    for i, site in enumerate(("plain", "waf", "probe")):
        # listen options (backlog) may be given once per address
        listens = (
            f"{listen}\n        listen {LOOPBACK}:{http_port} backlog=4096;"
            if i == 0
            else (f"listen {LOOPBACK}:{https_port} ssl;\n        listen {LOOPBACK}:{http_port};")
        )
        b = block.replace(listen, listens).replace(server_name, f"server_name {host(site)};")
        if site == "waf":
            b = b.replace(
                f"server_name {host(site)};",
                f"server_name {host(site)};\n        modsecurity on;\n        modsecurity_rules_file {rules};\n"
                '        modsecurity_transaction_id "$request_id";',  # the edge gives its request id too
            )
        if site == "probe":
            loc = b.index("        location / {")
            b = b[:loc] + "        location / { return 308 https://$host$request_uri; }\n    }\n"
        blocks.append(b)
    conf.write_text(f"load_module {MODSEC_MODULE};\n" + before + "\n".join(blocks) + after)
    return conf


# --------------------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One response as the checks need it."""

    status: int
    headers: dict[str, str]  # lower-case names, last value wins
    body: bytes


def request(port: int, site: str, path: str, cookie: str = "", tls: Path | None = None) -> Reply:
    """One GET with the browser headers (Connection: close, read to EOF); ``tls``: the CA file, HTTPS."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host(site)}", *(f"{k}: {v}" for k, v in BROWSER_HEADERS)]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
        sock: socket.socket = raw
        if tls is not None:
            sock = ssl.create_default_context(cafile=str(tls)).wrap_socket(raw, server_hostname=host(site))
        with sock:
            sock.sendall(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    text = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in text[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(text[0].split(" ", 2)[1]), headers, body)


def wait_answers(svc: Service, port: int, want: bytes, timeout: float = 60.0) -> None:
    """Wait until the server answers the plain site (the edge loads the CRS in two processes first)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; log:\n{svc.log_tail()}")
        try:
            r = request(port, "plain", PATH)
            if r.status == 200 and r.body == want:
                return
            last = f"status {r.status}, {len(r.body)} bytes"
        except (OSError, ValueError, IndexError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise RuntimeError(f"{svc.name} not ready on port {port} after {timeout:.0f}s ({last}); log:\n{svc.log_tail()}")


def solve_challenge(port: int) -> tuple[str, float]:
    """A valid ``tlsedge_pass`` cookie, earned as a browser earns it: the challenge page, a nonce from the tests'
    solver, the verify URL, the 303's Set-Cookie. Returns the cookie (``name=value``) and the seconds solving took."""
    spec = importlib.util.spec_from_file_location("pow_solver", POW_SOLVER)
    assert spec is not None and spec.loader is not None
    solver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solver)
    page = request(port, "challenge", PATH)
    m = re.search(rb'data-token="([^"]+)" data-difficulty="(\d+)" data-url="([^"]+)"', page.body)
    if page.status != 403 or m is None:
        raise RuntimeError(f"the challenge site answered {page.status} without a challenge page")
    token = html.unescape(m.group(1).decode())
    started = time.monotonic()
    nonce = solver.solve(token, int(m.group(2)))
    took = time.monotonic() - started
    verify = request(port, "challenge", html.unescape(m.group(3).decode()) + nonce)
    cookie = verify.headers.get("set-cookie", "").split(";", 1)[0]
    if verify.status != 303 or not cookie.startswith("tlsedge_pass="):
        raise RuntimeError(f"the solved challenge was refused: {verify.status} {verify.headers}")
    return cookie, took


def waf_log_lines(server: str, svc: Service, prefix: Path) -> int:
    """Rule matches logged so far: the edge's ``WAF site`` lines, nginx's ``ModSecurity:`` error-log lines."""
    path = svc.log if server == "tlsedge" else prefix / "error.log"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return text.count("WAF site ") if server == "tlsedge" else text.count("ModSecurity: ")


# --------------------------------------------------------------------------------------------------------------------
# Load and the loop-lag probe
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A running server under test (every site of it on the same ports)."""

    name: str
    http_port: int
    https_port: int
    service: Service
    prefix: Path  # its config directory (nginx: its error log)

    def port(self, transport: str) -> int:
        return self.https_port if transport == "https" else self.http_port

    def url(self, transport: str, site: str, path: str = PATH) -> str:
        return f"{transport}://{host(site)}:{self.port(transport)}{path}"


def wrk_cmd(lua: Path, url: str, seconds: int, connections: int, core: int, cookie: str) -> list[str]:
    """wrk pinned to the load core with the browser headers and the Cookie header (same bytes for every server)."""
    headers = [*BROWSER_HEADERS, ("Host", urlsplit(url).hostname or ""), ("Cookie", cookie)]
    cmd = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "--timeout=5s", "-s", str(lua)]  # fmt: skip
    for name, value in headers:
        cmd += ["-H", f"{name}: {value}"]
    return [*cmd, url]


def wrk_result(r: subprocess.CompletedProcess[str] | tuple[str, str, int]) -> dict[str, Any]:
    out, err, code = (r.stdout, r.stderr, r.returncode) if isinstance(r, subprocess.CompletedProcess) else r
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line[len("WRKJSON ") :]))
    raise RuntimeError(f"wrk gave no result (exit {code}):\n{out}\n{err}")


def run_wrk(lua: Path, url: str, seconds: int, args: argparse.Namespace, cookie: str) -> dict[str, Any]:
    cmd = wrk_cmd(lua, url, seconds, args.connections, args.load_core, cookie)
    return wrk_result(subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30))


@dataclass
class Probe:
    """Latencies of sequential GETs on one keep-alive connection (reconnecting when the server closes it)."""

    policy: str  # how the probe was scheduled: SCHED_FIFO, or normal when that was refused
    latencies_ms: list[float]
    errors: list[str]

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        if not lat:
            return {"n": 0}
        return {"n": len(lat), "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                "max_ms": lat[-1]}  # fmt: skip


def pct(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _read_response(sock: socket.socket, buf: bytearray) -> bool:
    """Read one response with a Content-Length; True when the server will close the connection after it."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buf += chunk
    length = 0
    closing = False
    for line in bytes(buf[:end]).lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closing = value.strip() == b"close"
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        buf += chunk
    del buf[:total]
    return closing


def probe(port: int, site: str, seconds: float, interval: float) -> Probe:
    """Sequential GETs of ``PROBE_PATH`` for ``seconds``, ``interval`` apart, each timed from send to last byte.

    Runs in this (the script's) thread with SCHED_FIFO while it probes, so a wrk busy on the same core does not
    delay the probe's own wake-ups: what is left is the server's answer time. The policy is restored after.
    """
    policy = "SCHED_FIFO"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (PermissionError, OSError):
        policy = "normal (SCHED_FIFO refused: the probe's own scheduling is in the figures)"
    req = f"GET {PROBE_PATH} HTTP/1.1\r\nHost: {host(site)}\r\nUser-Agent: tlsedge-bench-probe\r\n\r\n".encode()
    latencies: list[float] = []
    errors: list[str] = []
    sock: socket.socket | None = None
    buf = bytearray()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(errors) < 20:
            try:
                if sock is None:
                    sock = socket.create_connection((LOOPBACK, port), timeout=5)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf.clear()
                t0 = time.perf_counter()
                sock.sendall(req)
                closing = _read_response(sock, buf)
                latencies.append(1000.0 * (time.perf_counter() - t0))
            except (OSError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                closing = True
            if closing and sock is not None:
                sock.close()
                sock = None
            time.sleep(interval)
    finally:
        if sock is not None:
            sock.close()
        with contextlib.suppress(PermissionError, OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return Probe(policy, latencies, errors)


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def thread_ticks(root: int) -> dict[str, int]:
    """CPU ticks so far of the server tree's threads, split into the processes' main threads (the edge worker's
    event loop, the control process, nginx's processes) and their other threads (the edge's WAF threads)."""
    _, pids = tree_cpu_seconds(root)
    out = {"main": 0, "other": 0}
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    raw = Path(task.path, "stat").read_text()
                    rest = raw[raw.rindex(")") + 2 :].split()  # field N is rest[N - 3]
                    out["main" if task.name == str(pid) else "other"] += int(rest[11]) + int(rest[12])
    return out


@dataclass
class Sample:
    """One measured wrk window."""

    server: str
    scenario: str
    transport: str
    run: int
    requests: int
    seconds: float
    window: Window
    wrk: dict[str, Any]
    others_pct: float  # CPU of processes outside the test, % of a core
    thread_ticks: dict[str, int]  # growth of thread_ticks() over the window

    @property
    def key(self) -> str:
        return f"{self.transport}_{self.scenario}"

    def metrics(self) -> dict[str, float]:
        n = self.requests
        per_req = 1e6 / CLK_TCK / n if n else math.inf
        return {
            "req_per_s": n / self.seconds if self.seconds > 0 else 0.0,
            "cpu_us_per_req": 1e6 * self.window.server_cpu_s / n if n else math.inf,
            "main_us_per_req": self.thread_ticks["main"] * per_req,
            "other_us_per_req": self.thread_ticks["other"] * per_req,
            "server_core_pct": 100.0 * self.window.server_cpu_s / self.window.seconds if self.window.seconds else 0.0,
            "p50_ms": self.wrk["lat_p50_us"] / 1000.0,
            "p99_ms": self.wrk["lat_p99_us"] / 1000.0,
        }


def measure(
    server: Server,
    scenario: str,
    transport: str,
    run: int,
    args: argparse.Namespace,
    lua: Path,
    cookie: str,
    origin: Service,
) -> Sample:
    """Warm-up load, then one wrk window with the server tree's CPU and other processes' CPU around it."""
    url = server.url(transport, scenario)
    if args.warmup > 0:
        run_wrk(lua, url, max(1, round(args.warmup)), args, cookie)
    sampler = CpuSampler(server.service.pid, [args.server_core, args.load_core])
    test = [server.service.pid, origin.pid, os.getpid()]  # wrk, our child, is born and reaped inside the window
    procs0 = process_ticks()
    threads0 = thread_ticks(server.service.pid)
    sampler.start()
    res = run_wrk(lua, url, args.duration, args, cookie)
    w = sampler.stop()
    threads1 = thread_ticks(server.service.pid)
    others = others_cpu_seconds(procs0, process_ticks(), test)
    return Sample(server.name, scenario, transport, run, int(res["requests"]), res["duration_us"] / 1e6, w, res,
                  100.0 * others / w.seconds, {k: threads1[k] - threads0[k] for k in threads0})  # fmt: skip


def sample_flags(s: Sample, noise_limit: float) -> list[str]:
    flags = [f"wrk errors {k[4:]}={v}" for k, v in s.wrk.items() if k.startswith("err_") and v]
    if s.requests == 0:
        flags.append("no completed requests")
    if s.others_pct > noise_limit:
        flags.append(f"other processes used {s.others_pct:.0f}% of a core")
    return flags


def progress_line(s: Sample, args: argparse.Namespace) -> str:
    m = s.metrics()
    flags = sample_flags(s, args.noise_limit)
    return (
        f"  run {s.run} {s.key:15} {s.server:8} {m['req_per_s']:>9,.0f} req/s {m['cpu_us_per_req']:>8.1f} µs CPU/req "
        f"({m['main_us_per_req']:.0f} main + {m['other_us_per_req']:.0f} other threads)  "
        f"core {m['server_core_pct']:3.0f}%  p99 {m['p99_ms']:6.2f} ms  other processes {s.others_pct:3.0f}%"
        + (f"  !! {'; '.join(flags)}" if flags else "")
    )


def measure_quiet(
    server: Server,
    scenario: str,
    transport: str,
    run: int,
    args: argparse.Namespace,
    discarded: list[Sample],
    **kw: Any,
) -> Sample:
    """balancing.py's rule: measure again (up to ``--retries``) while other processes disturbed the window, and keep
    the least disturbed attempt (the others go to the results file)."""
    attempts = [measure(server, scenario, transport, run, args, **kw)]
    print(progress_line(attempts[-1], args), flush=True)
    while attempts[-1].others_pct > args.noise_limit and len(attempts) <= args.retries:
        attempts.append(measure(server, scenario, transport, run, args, **kw))
        print(f"{progress_line(attempts[-1], args)}  (attempt {len(attempts)})", flush=True)
    best = min(attempts, key=lambda s: s.others_pct)
    discarded.extend(s for s in attempts if s is not best)
    return best


@dataclass
class LagSample:
    """The probe's latencies on one server in one condition: idle, or while wrk loads the plain or the waf site."""

    server: str
    condition: str
    run: int
    probe: dict[str, Any]  # Probe.summary() plus policy and errors
    load_req_per_s: float  # wrk's rate meanwhile (0 when idle)
    load_errors: int
    others_pct: float


def measure_lag(
    server: Server, condition: str, run: int, args: argparse.Namespace, lua: Path, cookie: str, origin: Service
) -> LagSample:
    """The probe alone, or during a wrk run on ``condition``'s site: wrk gets ``--warmup`` seconds first, and the
    probe stops a moment before wrk does."""
    test = [server.service.pid, origin.pid, os.getpid()]
    procs0 = process_ticks()
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    if condition == "idle":
        p = probe(server.http_port, "probe", args.lag_seconds, args.probe_interval / 1000)
    else:
        seconds = math.ceil(args.warmup) + math.ceil(args.lag_seconds) + 1
        cmd = wrk_cmd(lua, server.url("http", condition), seconds, args.connections, args.load_core, cookie)
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(math.ceil(args.warmup))
            p = probe(server.http_port, "probe", args.lag_seconds, args.probe_interval / 1000)
            out, err = wrk.communicate(timeout=seconds + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        res = wrk_result((out, err, wrk.returncode))
    others = others_cpu_seconds(procs0, process_ticks(), test)
    summary = {**p.summary(), "policy": p.policy, "errors": p.errors[:5], "error_count": len(p.errors)}
    rate = res["requests"] / (res["duration_us"] / 1e6) if res else 0.0
    load_errors = sum(v for k, v in res.items() if k.startswith("err_"))
    return LagSample(server.name, condition, run, summary, rate, load_errors,
                     100.0 * others / (time.monotonic() - t0))  # fmt: skip


def measure_lag_quiet(
    server: Server, condition: str, run: int, args: argparse.Namespace, discarded: list[LagSample], **kw: Any
) -> LagSample:
    """measure_quiet's rule for the probe windows: a third party busy on the server core delays the loop too."""
    attempts = [measure_lag(server, condition, run, args, **kw)]
    print(lag_line(attempts[-1], args.noise_limit), flush=True)
    while attempts[-1].others_pct > args.noise_limit and len(attempts) <= args.retries:
        attempts.append(measure_lag(server, condition, run, args, **kw))
        print(f"{lag_line(attempts[-1], args.noise_limit)}  (attempt {len(attempts)})", flush=True)
    best = min(attempts, key=lambda s: s.others_pct)
    discarded.extend(s for s in attempts if s is not best)
    return best


def lag_flags(s: LagSample, noise_limit: float) -> list[str]:
    p = s.probe
    flags = [f"{p['error_count']} probe errors, e.g. {p['errors'][0]}"] if p.get("error_count") else []
    if not p.get("n"):
        flags.append("no probe answered")
    if s.load_errors:
        flags.append(f"{s.load_errors} wrk errors")
    if s.others_pct > noise_limit:
        flags.append(f"other processes used {s.others_pct:.0f}% of a core")
    return flags


def lag_line(s: LagSample, noise_limit: float) -> str:
    p = s.probe
    flags = lag_flags(s, noise_limit)
    tail = f"other processes {s.others_pct:3.0f}%" + (f"  !! {'; '.join(flags)}" if flags else "")
    if not p.get("n"):
        return f"  run {s.run} lag {s.condition:5} {s.server:8} {tail}"
    load = f"wrk {s.load_req_per_s:>8,.0f} req/s" if s.condition != "idle" else " " * 18
    return (
        f"  run {s.run} lag {s.condition:5} {s.server:8} probe p50 {p['p50_ms']:6.3f} p99 {p['p99_ms']:7.3f} "
        f"max {p['max_ms']:7.2f} ms ({p['n']:,} GETs)  {load}  {tail}"
    )


def verify_cost_us(cfg: Path, state_dir: Path, number: int) -> dict[str, float]:
    """CPU µs of the challenge site's check of a request with a valid cookie, in this process (best of five rounds
    of ``number``): ``verify_cookie`` alone, and the whole chain of the edge's ``challenge`` site as the data plane
    runs it per request (``GuardRequest`` and ``SiteGuard.check``: address rules, bans, the cookie parse, the
    verification), built from the edge's config with tlsedge's own classes and a key of its own."""
    from tlsedge.config.load import load_config
    from tlsedge.guard.bans import Bans
    from tlsedge.guard.chain import GuardRequest, GuardServices, SiteGuard
    from tlsedge.guard.challenge import cookies
    from tlsedge.guard.shared import SharedTable
    from tlsedge.guard.signing import SigningKeys
    from tlsedge.store import open_store

    config = load_config(cfg)
    site = next(s for s in config.sites if s.name == "challenge")
    keys = SigningKeys.generate()
    table = SharedTable(config.guard.table_slots)
    guard = SiteGuard(site.name, site.guard, GuardServices(config.guard, table, Bans(open_store(state_dir), table),
                                                           keys, None), None)  # fmt: skip
    now = time.time()
    value = cookies.issue_cookie(keys, site.name, cookies.CHALLENGE_PURPOSE, LOOPBACK, 3600, now)
    headers = [(b"Host", host("challenge").encode()), *((k.encode(), v.encode()) for k, v in BROWSER_HEADERS),
               (b"Cookie", f"{cookies.CHALLENGE_COOKIE}={value}; {OTHER_COOKIES}".encode())]  # fmt: skip
    target = PATH.encode()

    def verify() -> None:
        cookies.verify_cookie(keys, site.name, cookies.CHALLENGE_PURPOSE, LOOPBACK, value, now)

    def chain() -> None:
        guard.check(GuardRequest(LOOPBACK, b"GET", target, headers, False))

    try:
        if guard.check(GuardRequest(LOOPBACK, b"GET", target, headers, False)) is not None:
            raise RuntimeError("the in-process challenge guard refused a valid cookie")

        def best(fn: Callable[[], None]) -> float:
            return 1e6 * min(timeit.repeat(fn, timer=time.process_time, number=number, repeat=5)) / number

        return {"verify_cookie_us": best(verify), "guard_check_us": best(chain)}
    finally:
        table.close()


def origin_head(port: int) -> list[tuple[bytes, bytes]]:
    """The response header fields the origin sends for the page, in order (what the WAF's phase 3 sees)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    lines = bytes(data).partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    return [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]


def waf_floor_us(cfg: Path, cookie: str, response: list[tuple[bytes, bytes]], number: int) -> float:
    """CPU µs of one WAF check in this process, one thread, no I/O and no event loop: the same rules as the edge's
    waf site, the same request (headers as wrk sends them) and the origin's response head, through tlsedge's own
    binding (``SiteWaf.check_request``, ``check_response``, ``close``). Best of three rounds of ``number``."""
    from tlsedge.guard.waf import build_site_waf

    waf = build_site_waf(edge_waf_settings(cfg))
    headers = [(b"Host", host("waf").encode()), *((k.encode(), v.encode()) for k, v in BROWSER_HEADERS),
               (b"Cookie", cookie.encode())]  # fmt: skip

    def one(i: int) -> None:
        check = waf.check_request(f"bench{i}", LOOPBACK, 40000, 80, b"GET", PATH.encode(), b"1.1", headers, None)
        try:
            if check.blocked or check.matches:
                raise RuntimeError(f"the WAF matched the benchmark's request: {check.matches}")
            check.check_response(200, response)
        finally:
            check.close()

    try:
        for i in range(max(50, number // 10)):
            one(i)
        best = math.inf
        for _ in range(3):
            t0 = time.process_time()
            for i in range(number):
                one(i)
            best = min(best, time.process_time() - t0)
    finally:
        waf.close()
    return 1e6 * best / number


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
        med["cpu_spread"] = (max(cpu) - min(cpu)) / med["cpu_us_per_req"] if len(cpu) > 1 else 0.0
        out.setdefault(key, {})[server] = med
    return out


def lag_medians(lags: Sequence[LagSample]) -> dict[str, dict[str, dict[str, float]]]:
    """{server: {condition: {p50_ms, p99_ms, max_ms: median over runs}}}."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in lags:
        if s.probe.get("n"):
            groups.setdefault((s.server, s.condition), []).append(s.probe)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (server, condition), rows in groups.items():
        out.setdefault(server, {})[condition] = {
            k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "max_ms")
        }
    return out


def _table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> list[str]:
    """Aligned columns; a blank line before each row that starts a group (a non-empty first cell)."""
    widths = [max(len(r[i]) for r in [*rows, cols]) for i in range(len(cols))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    return out


def _get(med: dict[str, dict[str, dict[str, float]]], key: str, server: str, metric: str) -> float | None:
    return med.get(key, {}).get(server, {}).get(metric)


def paired_ratios(samples: Sequence[Sample], key: str) -> list[float]:
    """tlsedge's CPU/request over nginx's for ``key``, one ratio per run (both servers measured in that run)."""
    by_run: dict[int, dict[str, float]] = {}
    for s in samples:
        if s.key == key:
            by_run.setdefault(s.run, {})[s.server] = s.metrics()["cpu_us_per_req"]
    return [r["tlsedge"] / r["nginx"] for _, r in sorted(by_run.items()) if r.get("nginx") and "tlsedge" in r]


def render_waf(
    med: dict[str, dict[str, dict[str, float]]],
    transports: Sequence[str],
    floor: float | None,
    paired: dict[str, list[float]],
) -> list[str]:
    """Each figure for tlsedge, nginx and the ratio; the CPU target beside the WAF-on row, judged on the median of
    the per-run ratios (the WAF windows drift together from run to run); below, the in-process floor (ModSecurity
    through tlsedge's binding alone)."""
    specs: list[tuple[str, str, str, Callable[[float], str]]] = [
        ("plain", "req_per_s", "WAF off: requests/s", lambda v: f"{v:,.0f}"),
        ("plain", "cpu_us_per_req", "WAF off: server CPU µs/request", lambda v: f"{v:.1f}"),
        ("plain", "p99_ms", "WAF off: p99 latency ms", lambda v: f"{v:.2f}"),
        ("waf", "req_per_s", "WAF on: requests/s", lambda v: f"{v:,.0f}"),
        ("waf", "cpu_us_per_req", "WAF on: server CPU µs/request", lambda v: f"{v:.1f}"),
        ("waf", "cpu_spread", "  run-to-run spread", lambda v: f"{100 * v:.0f}%"),
        ("waf", "main_us_per_req", "  of which main threads (event loop)", lambda v: f"{v:.1f}"),
        ("waf", "other_us_per_req", "  of which other threads (WAF)", lambda v: f"{v:.1f}"),
        ("waf", "server_core_pct", "WAF on: server CPU, % of a core", lambda v: f"{v:.0f}"),
        ("waf", "p99_ms", "WAF on: p99 latency ms", lambda v: f"{v:.2f}"),
        ("cost", "cpu_us_per_req", "WAF cost: CPU µs/request (on - off)", lambda v: f"{v:.1f}"),
    ]
    rows: list[tuple[str, ...]] = []
    for transport in transports:
        title = f"{transport.upper()} keep-alive, 1 KiB"
        for i, (scenario, metric, label, fmt) in enumerate(specs):
            values = []
            for server in SERVERS:
                if scenario == "cost":
                    on, off = (_get(med, f"{transport}_{s}", server, metric) for s in ("waf", "plain"))
                    values.append(on - off if on is not None and off is not None else None)
                else:
                    values.append(_get(med, f"{transport}_{scenario}", server, metric))
            e, n = values
            ratio = f"{e / n:.2f}x" if e is not None and n and metric in RATIO_METRICS else "-"
            rows.append((title if i == 0 else "", label, *(fmt(v) if v is not None else "-" for v in values),
                         ratio, ""))  # fmt: skip
            ratios = paired.get(f"{transport}_waf", [])
            if scenario == "waf" and metric == "cpu_us_per_req" and ratios:
                mid = statistics.median(ratios)
                runs = ", ".join(f"{r:.2f}" for r in ratios)
                rows.append(("", f"  per-run ratios ({runs}), median", "", "", f"{mid:.2f}x",
                             f"<= {CPU_TARGET:.1f}x {'ok' if mid <= CPU_TARGET else 'MISS'}"))  # fmt: skip
    if floor is not None:
        rows.append(("in-process", "WAF check, 1 thread, no I/O: CPU µs", f"{floor:.1f}", "-", "-", ""))
    return _table(("scenario", "figure", "tlsedge", "nginx+modsec", "tlsedge/nginx", "target"), rows, {0, 1, 5})


def render_lag(lag: dict[str, dict[str, dict[str, float]]], interval_ms: float, policy: str) -> list[str]:
    """Probe latency per condition, and the lag under WAF load (p99 minus the idle p99) against the target."""
    labels = {"idle": "idle server", "plain": "wrk on the plain site", "waf": "wrk on the waf site"}
    rows: list[tuple[str, ...]] = []
    for condition in LAG_CONDITIONS:
        cells = []
        for server in SERVERS:
            v = lag.get(server, {}).get(condition)
            cells.append(f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f} / {v['max_ms']:.2f}" if v else "-")
        rows.append(("", labels[condition], *cells, ""))
    for what in ("p50_ms", "p99_ms"):
        cells = []
        verdict = ""
        for server in SERVERS:
            by = lag.get(server, {})
            if "waf" in by and "idle" in by:
                d = by["waf"][what] - by["idle"][what]
                cells.append(f"{d:+.3f}")
                if server == "tlsedge" and what == "p99_ms":
                    verdict = f"< {LAG_TARGET_MS:g} ms {'ok' if d < LAG_TARGET_MS else 'MISS'}"
            else:
                cells.append("-")
        rows.append(("", f"lag under WAF load, {what[:3]} (waf - idle) ms", *cells, verdict))
    head = (
        f"event-loop lag: sequential GETs every {interval_ms:g} ms on the probe site (a 308 the worker answers itself) "
        f"while wrk loads another site of the same worker; probe scheduled {policy}"
    )
    return [head, *_table(("", "condition", "tlsedge p50/p99/max ms", "nginx p50/p99/max ms", "target"), rows,
                          {0, 1, 4})]  # fmt: skip


def render_challenge(
    med: dict[str, dict[str, dict[str, float]]], transports: Sequence[str], verify: dict[str, float]
) -> list[str]:
    """The challenge site with a valid cookie against the plain site, tlsedge only, and the in-process floor."""
    rows: list[tuple[str, ...]] = []
    for transport in transports:
        plain = med.get(f"{transport}_plain", {}).get("tlsedge")
        chal = med.get(f"{transport}_challenge", {}).get("tlsedge")
        if not plain or not chal:
            continue
        title = f"{transport.upper()} keep-alive, 1 KiB"
        d_cpu = chal["cpu_us_per_req"] - plain["cpu_us_per_req"]
        d_rate = chal["req_per_s"] / plain["req_per_s"] - 1 if plain["req_per_s"] else 0.0
        rows.append((title, "requests/s", f"{plain['req_per_s']:,.0f}", f"{chal['req_per_s']:,.0f}",
                     f"{100 * d_rate:+.1f}%", ""))  # fmt: skip
        verdict = "ok" if d_cpu < VERIFY_TARGET_US else "MISS"
        rows.append(("", "server CPU µs/request", f"{plain['cpu_us_per_req']:.1f}", f"{chal['cpu_us_per_req']:.1f}",
                     f"{d_cpu:+.1f} µs", f"< {VERIFY_TARGET_US:g} µs {verdict}"))  # fmt: skip
        rows.append(("", "  run-to-run spread", f"{100 * plain['cpu_spread']:.0f}%", f"{100 * chal['cpu_spread']:.0f}%",
                     "", ""))  # fmt: skip
    if verify:
        rows.append(("in-process", "verify_cookie alone: CPU µs", "", f"{verify['verify_cookie_us']:.2f}", "", ""))
        rows.append(
            (
                "",
                "SiteGuard.check, valid cookie: CPU µs",
                "",
                f"{verify['guard_check_us']:.2f}",
                "",
                f"< {VERIFY_TARGET_US:g} µs {'ok' if verify['guard_check_us'] < VERIFY_TARGET_US else 'MISS'}",
            )
        )
    if not rows:
        return []
    head = "challenge: tlsedge's 'always' site with a valid tlsedge_pass cookie vs the same site without a challenge"
    return [head, *_table(("", "figure", "no challenge", "challenge+cookie", "difference", "target"), rows,
                          {0, 1, 5})]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------------------------------


def profile_edge(server: Server, args: argparse.Namespace, lua: Path, cookie: str, stamp: str) -> Path:
    """py-spy on the edge's tree while wrk loads the waf site (separate from the measured windows: sampling slows
    the edge). With --profile-native the WAF thread's libmodsecurity frames are visible too."""
    py_spy = find_py_spy()
    assert py_spy is not None
    ext = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "folded.txt"}[args.profile_format]
    out = RESULTS_DIR / f"guard-profile-{stamp}.{ext}"
    cmd = [
        "taskset", "-c", str(args.load_core), py_spy, "record", "--pid", str(server.service.pid), "--subprocesses",
        "--threads", "--rate", str(args.profile_rate), "--duration", str(args.duration), "--format",
        args.profile_format, "--output", str(out), "--function",
        "--native" if args.profile_native else "--nonblocking",
    ]  # fmt: skip
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        run_wrk(lua, server.url(args.transports[0], args.profile_site), args.duration, args, cookie)
        spy_out, _ = spy.communicate(timeout=args.duration + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}):\n{spy_out[-2000:]}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure tlsedge's WAF, loop lag and challenge cookies against nginx + ModSecurity.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true",
        help="smoke run (< 1 min): --runs 1 --duration 2 --prewarm 1 --retries 0 --lag-seconds 2 unless given",
    )  # fmt: skip
    p.add_argument("--runs", type=int, default=None, help="repeats of every window; the table shows medians (3)")
    p.add_argument("--duration", type=int, default=None, help="seconds per measured window (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window (wrk: whole seconds)")
    p.add_argument("--prewarm", type=int, default=None, help="seconds of load on each site once, before run 1 (3)")
    p.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections")
    p.add_argument("--server-core", type=int, default=0, help="core for the server under test")
    p.add_argument("--load-core", type=int, default=1, help="core for wrk, the probe, the origin and this script")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma list from tlsedge,nginx")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="sites loaded by wrk, from plain,challenge,waf")
    p.add_argument("--transports", default="http", help="comma list from http,https")
    p.add_argument("--lag-seconds", type=float, default=None, help="seconds the probe runs per condition (4)")
    p.add_argument("--probe-interval", type=float, default=1.0, help="ms between the probe's sequential GETs")
    p.add_argument("--no-lag", action="store_true", help="skip the event-loop lag windows")
    p.add_argument("--edge-cmd", default=None, help="command that runs tlsedge (default: .venv/bin/tlsedge)")
    p.add_argument("--profile", action="store_true", help="after measuring, py-spy the edge under load")
    p.add_argument("--profile-site", default="waf", choices=("plain", "waf", "challenge"), help="site --profile loads")
    p.add_argument(
        "--profile-format", choices=("speedscope", "flamegraph", "raw"), default="speedscope",
        help="speedscope also prints a top-frames summary; flamegraph writes an SVG",
    )  # fmt: skip
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: include C frames (libmodsecurity)")
    p.add_argument(
        "--noise-limit", type=float, default=10.0,
        help="%% of a core used by processes outside the test above which a window is measured again",
    )  # fmt: skip
    p.add_argument("--retries", type=int, default=None, help="extra attempts for a disturbed window (1; --quick: 0)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.prewarm = (1 if args.quick else 3) if args.prewarm is None else args.prewarm
    args.retries = (0 if args.quick else 1) if args.retries is None else args.retries
    args.lag_seconds = args.lag_seconds or (2.0 if args.quick else 4.0)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s for s in SCENARIOS if s in {x.strip() for x in args.scenarios.split(",")}]
    args.transports = [s.strip() for s in args.transports.split(",") if s.strip()]
    bad = [s for s in args.servers if s not in SERVERS] + [s for s in args.transports if s not in TRANSPORTS]
    if bad or not args.servers or not args.transports:
        p.error(f"unknown server/transport: {bad}")
    if args.runs < 1 or args.duration < 1 or args.prewarm < 0 or args.lag_seconds <= 0 or args.probe_interval < 0:
        p.error("--runs, --duration, --lag-seconds must be >= 1 (> 0), --prewarm and --probe-interval >= 0")
    if args.server_core == args.load_core:
        p.error("--server-core and --load-core must differ")
    if args.profile and "tlsedge" not in args.servers:
        p.error("--profile needs tlsedge in --servers")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_servers(
    tmp: Path,
    origin_port: int,
    certs: dict[str, Path],
    args: argparse.Namespace,
    edge_cmd: list[str],
    services: list[Service],
) -> dict[str, Server]:
    """The edge and nginx, pinned to the server core; each is in ``services`` as soon as it runs."""
    pin = ["taskset", "-c", str(args.server_core)]
    servers: dict[str, Server] = {}
    # nginx's rules come from the edge's config, so it is written (and checked) even when nginx runs alone
    edge_ports = free_port(), free_port()
    edge_cfg = write_edge_conf(tmp / "tlsedge", *edge_ports, origin_port, certs)
    check_edge_conf(edge_cmd, edge_cfg)
    for name in args.servers:
        if name == "tlsedge":
            http_port, https_port = edge_ports
            cmd = [*pin, *edge_cmd, "serve", "-c", str(edge_cfg)]
            prefix = edge_cfg.parent
        else:
            http_port, https_port = free_port(), free_port()
            rules = tmp / "modsecurity.conf"
            rules.write_text(modsecurity_rules(edge_cfg))
            conf = write_nginx_conf(tmp / "nginx", http_port, https_port, origin_port, certs, args.server_core, rules)
            cmd = [*pin, nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]
            prefix = conf.parent
        svc = Service(name, cmd, tmp / f"{name}.log", tmp)
        services.append(svc)
        servers[name] = Server(name, http_port, https_port, svc, prefix)
    return servers


def check_servers(
    servers: dict[str, Server], want: bytes, cookie: str, args: argparse.Namespace, certs: dict[str, Path]
) -> dict[str, int]:
    """Each site does what the benchmark assumes, over every transport measured: plain and waf serve the page,
    the waf site blocks an SQL injection and the plain site does not, the probe answers 308, the challenge site
    serves the page with the cookie. Returns each server's WAF log lines after the checks (the baseline)."""
    problems = []
    for s in servers.values():
        for transport in args.transports:
            port, tls = s.port(transport), certs["ca"] if transport == "https" else None
            expect = [("plain", PATH, 200), ("waf", PATH, 200), ("waf", ATTACK_PATH, 403), ("plain", ATTACK_PATH, 200)]
            if s.name == "tlsedge":
                expect.append(("challenge", PATH, 200))
            for site, path, status in expect:
                r = request(port, site, path, cookie, tls)
                if r.status != status or (status == 200 and r.body != want):
                    problems.append(f"{s.name} {transport} {site} {path}: {r.status}, {len(r.body)} bytes "
                                    f"(want {status})")  # fmt: skip
        r = request(s.http_port, "probe", PROBE_PATH)
        if r.status != 308:
            problems.append(f"{s.name} probe site: {r.status} (want 308)")
    if problems:
        raise RuntimeError("a site does not behave as the benchmark assumes:\n  " + "\n  ".join(problems))
    time.sleep(0.3)  # log lines are written off the request path
    return {s.name: waf_log_lines(s.name, s.service, s.prefix) for s in servers.values()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    edge_cmd = args.edge_cmd.split() if args.edge_cmd else default_edge_cmd()
    problems = check_tools(True, edge_cmd, args.profile) + guard_problems(args.servers)
    usable = os.sched_getaffinity(0)
    problems += [f"core {c} is not usable here (allowed: {sorted(usable)})" for c in (args.server_core, args.load_core)
                 if c not in usable]  # fmt: skip
    if problems:
        print("cannot run the benchmark:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2

    os.sched_setaffinity(0, {args.load_core})  # this script sleeps, reads /proc and runs the probe
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="tlsedge-guard-bench-"))
    tmp.chmod(0o755)  # nginx workers must read files in here
    services: list[Service] = []
    samples: list[Sample] = []
    discarded: list[Sample] = []
    lags: list[LagSample] = []
    discarded_lags: list[LagSample] = []
    profile_path: Path | None = None
    started = time.monotonic()
    with BenchRun(services, tmp, args.keep_tmp) as run:
        certs = make_certificates(tmp)
        docroot = make_docroot(tmp)
        want = (docroot / "1k").read_bytes()
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
        servers = start_servers(tmp, origin_port, certs, args, edge_cmd, services)
        for s in servers.values():
            wait_answers(s.service, s.http_port, want)
        cookie, solve_s = OTHER_COOKIES, 0.0
        if "tlsedge" in servers:
            pass_cookie, solve_s = solve_challenge(servers["tlsedge"].http_port)
            cookie = f"{pass_cookie}; {OTHER_COOKIES}"
        waf_lines = check_servers(servers, want, cookie, args, certs)
        for s in servers.values():
            print(f"{s.name:8} ready on {LOOPBACK}:{s.http_port} (http) / {s.https_port} (https), tree "
                  f"{tree_cpu_seconds(s.service.pid)[1]} on core {args.server_core}; the waf site blocks "
                  f"{ATTACK_PATH}, the plain site serves it")  # fmt: skip
        print(f"origin   nginx on {LOOPBACK}:{origin_port}, core {args.load_core}; temp dir {tmp}")
        if "tlsedge" in servers:
            print(f"challenge solved with tests/guard/pow_solver.py in {solve_s:.2f} s; every request carries "
                  f"Cookie: {cookie[:40]}...")  # fmt: skip

        keys = [(t, sc) for t in args.transports for sc in args.scenarios]
        order = [s for s in SERVERS if s in servers]
        n = sum(1 for _, sc in keys for s in order if s == "tlsedge" or sc in NGINX_SCENARIOS) * args.runs
        lag_n = 0 if args.no_lag else args.runs * len(order) * len(LAG_CONDITIONS)
        minutes = (n * (args.duration + math.ceil(args.warmup) + 0.8)
                   + lag_n * (args.lag_seconds + math.ceil(args.warmup) + 1.5)
                   + len(order) * len(args.scenarios) * args.prewarm) / 60  # fmt: skip
        print(f"{n} wrk windows of {args.duration}s (+{args.warmup:g}s warm-up), {lag_n} probe windows of "
              f"{args.lag_seconds:g}s: ~{minutes:.1f} min")  # fmt: skip
        for s in order:
            for sc in args.scenarios if args.prewarm > 0 else ():
                if s == "tlsedge" or sc in NGINX_SCENARIOS:
                    run_wrk(lua, servers[s].url(args.transports[0], sc), args.prewarm, args, cookie)
        for run in range(1, args.runs + 1):
            run_order = order if run % 2 else order[::-1]  # alternate so drift favours no server
            for transport, scenario in keys:
                for name in run_order:
                    if name == "nginx" and scenario not in NGINX_SCENARIOS:
                        continue
                    s = servers[name]
                    if not s.service.alive():
                        raise RuntimeError(f"{name} died; log tail:\n{s.service.log_tail()}")
                    samples.append(measure_quiet(s, scenario, transport, run, args, discarded, lua=lua,
                                                 cookie=cookie, origin=origin))  # fmt: skip
            for name in [] if args.no_lag else run_order:
                for condition in LAG_CONDITIONS:
                    lags.append(measure_lag_quiet(servers[name], condition, run, args, discarded_lags, lua=lua,
                                                  cookie=cookie, origin=origin))  # fmt: skip
        after = {s.name: waf_log_lines(s.name, s.service, s.prefix) for s in servers.values()}
        # In-process floors, with nothing else of the test running: the guard's and the WAF's own cost.
        edge_cfg = tmp / "tlsedge" / "tlsedge.toml"
        verify: dict[str, float] = {}
        if "challenge" in args.scenarios:
            verify = verify_cost_us(edge_cfg, tmp / "inproc-state", 2000 if args.quick else 20000)
        floor = None
        if "waf" in args.scenarios:
            floor = waf_floor_us(edge_cfg, cookie, origin_head(origin_port), 300 if args.quick else 1500)
        if args.profile:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_path = profile_edge(servers["tlsedge"], args, lua, cookie, stamp)

        med = medians(samples)
        lag_med = lag_medians(lags)
        policy = lags[0].probe["policy"] if lags else ""
        print()
        paired = {f"{t}_waf": paired_ratios(samples, f"{t}_waf") for t in args.transports}
        print("\n".join(render_waf(med, args.transports, floor, paired)))
        steal = max(max(s.window.core_steal_pct.values()) for s in samples) if samples else 0.0
        if samples:
            print(
                f"\nmedians of {args.runs} run(s); servers on core {args.server_core}, wrk + origin on core "
                f"{args.load_core}; other processes, median {statistics.median(s.others_pct for s in samples):.0f}% "
                f"of a core; max steal {steal:.1f}%; WAF log lines during the windows (benign traffic must match no "
                "rule): " + ", ".join(f"{k} {after[k] - waf_lines[k]}" for k in after)
            )
        if lag_med:
            print()
            print("\n".join(render_lag(lag_med, args.probe_interval, policy)))
        chal = render_challenge(med, args.transports, verify)
        if chal:
            print()
            print("\n".join(chal))
        if discarded or discarded_lags:
            print(f"{len(discarded) + len(discarded_lags)} disturbed window(s) were measured again; the least "
                  "disturbed attempt is kept")  # fmt: skip
        flags = [f"run {s.run} {s.key} {s.server}: {'; '.join(f)}" for s in samples
                 if (f := sample_flags(s, args.noise_limit))]  # fmt: skip
        flags += [f"{k}: {after[k] - waf_lines[k]} WAF log lines during the windows (benign requests matched rules)"
                  for k in after if after[k] != waf_lines[k]]  # fmt: skip
        flags += [f"lag run {s.run} {s.condition} {s.server}: {'; '.join(f)}" for s in lags
                  if (f := lag_flags(s, args.noise_limit))]  # fmt: skip
        for f in flags:
            print(f"WARNING {f}")

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"guard_vs_nginx-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "started": stamp,
                    "elapsed_s": time.monotonic() - started,
                    "args": vars(args),
                    "edge_cmd": edge_cmd,
                    "environment": environment(),
                    "targets": {
                        "waf_cpu_ratio": CPU_TARGET,
                        "lag_p99_ms": LAG_TARGET_MS,
                        "verify_us": VERIFY_TARGET_US,
                    },
                    "request": {"path": PATH, "headers": BROWSER_HEADERS, "cookie": cookie},
                    "medians": med,
                    "waf_cpu_ratios_per_run": paired,
                    "lag_medians": lag_med,
                    "verify_in_process": verify,
                    "waf_floor_us": floor,
                    "samples": [{**asdict(s), "metrics": s.metrics()} for s in samples],
                    "discarded_noisy_samples": [{**asdict(s), "metrics": s.metrics()} for s in discarded],
                    "lag_samples": [asdict(s) for s in lags],
                    "discarded_noisy_lag_samples": [asdict(s) for s in discarded_lags],
                    "waf_log_lines": {"before": waf_lines, "after": after},
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
