"""``tlsedge demo``: a local CA, two sites, two origins and an edge, with curl lines that work.

Why: the fastest way to understand an edge proxy is to watch one terminate TLS for a couple of names. This module
builds everything under ``STATE_DIR/demo/`` (reusing the CA between runs, so a browser that trusts it keeps trusting
it), starts the pieces as child processes and prints commands the user can paste:

- ``blog.example`` and ``*.blog.example``: HTTPS at the edge, plain HTTP to an origin (``origin_tls = "flexible"``),
  http→https redirect and HSTS;
- ``shop.example``: HTTPS at the edge and verified HTTPS to an origin whose certificate names ``origin.shop.example``
  (``origin_tls = "strict"`` with ``origin_ca``).

With ``smoke=True`` it runs those commands itself, checks the answers and stops: the same path a user takes, as a test.

Children run in their own sessions so a terminal Ctrl-C reaches only this process, which then stops them in order (edge
first, so it can drain, then the origins) within bounded time. On Linux they also get SIGTERM if this process dies.
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from tlsedge.pki.local_ca import LocalCA

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for origins and edge to accept connections
CURL_TIMEOUT = 10  # seconds per smoke request (curl --max-time)
STOP_TIMEOUT = 15.0  # seconds for all children to exit after SIGTERM, then SIGKILL
LOG_TAIL_LINES = 40  # lines of each child's log shown when something fails
# Children and smoke curls never go through a proxy from the environment: everything here is on 127.0.0.1.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

DEFAULT_HTTPS_PORT = 8443
DEFAULT_HTTP_PORT = 8080
DEFAULT_BLOG_ORIGIN_PORT = 9000
DEFAULT_SHOP_ORIGIN_PORT = 9443


@dataclass(frozen=True)
class DemoPorts:
    """Every port the demo listens on (all on 127.0.0.1)."""

    https: int = DEFAULT_HTTPS_PORT
    http: int = DEFAULT_HTTP_PORT
    blog_origin: int = DEFAULT_BLOG_ORIGIN_PORT
    shop_origin: int = DEFAULT_SHOP_ORIGIN_PORT

    def named(self) -> dict[str, int]:
        return {
            "--https-port": self.https,
            "--http-port": self.http,
            "--blog-origin-port": self.blog_origin,
            "--shop-origin-port": self.shop_origin,
        }


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo keeps its files; relative names inside the config keep it movable."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "tlsedge.toml"

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.certs / f"{name}.pem", self.certs / f"{name}.key"


@dataclass(frozen=True)
class CurlCheck:
    """One printed curl line and what it must produce when the demo works."""

    what: str
    argv: tuple[str, ...]
    status: int
    origin: str | None = None  # the demo origin that must have answered (200s)
    location: str | None = None  # the expected Location header (redirects)

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


# -- certificates and configuration ------------------------------------------------------------------------------------


def prepare_pki(files: DemoFiles, say: Callable[[str], None]) -> None:
    """Reuse the demo CA when it is usable (a user may have trusted it), then issue fresh leaves for this run."""
    ca: LocalCA | None = None
    if files.ca_cert.exists() and files.ca_key.exists():
        try:
            ca = LocalCA.load(files.ca_cert, files.ca_key)
        except (ValueError, OSError) as exc:
            say(f"the demo CA in {files.root} cannot be read ({exc}); making a new one")
        else:
            if ca.cert.not_valid_after_utc < datetime.now(UTC) + timedelta(days=1):
                say("the demo CA has expired; making a new one")
                ca = None
    if ca is None:
        ca = LocalCA.create(common_name="tlsedge demo CA")
        ca.save(files.ca_cert, files.ca_key)
    # Leaves are cheap (ECDSA) and short-lived; issuing them each run means they never expire under a long-lived CA.
    ca.issue(["blog.example", "*.blog.example"]).write(*files.cert("blog"))
    ca.issue(["shop.example"]).write(*files.cert("shop"))
    ca.issue(["origin.shop.example"]).write(*files.cert("origin-shop"))


def config_text(ports: DemoPorts) -> str:
    """The edge configuration, paths relative to the config file (which lives in the demo directory)."""

    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    return f"""\
# Written by `tlsedge demo`; rewritten on every run. See docs/configuration.md for every field.
[server]
state_dir = "."
workers = 2
https = [{q(f"{HOST}:{ports.https}")}]
http = [{q(f"{HOST}:{ports.http}")}]

[[site]]
name = "blog"
hosts = ["blog.example", "*.blog.example"]
certificate = {{ cert = "certs/blog.pem", key = "certs/blog.key" }}
origins = [{q(f"http://{HOST}:{ports.blog_origin}")}]
origin_tls = "flexible"
redirect_http = true
hsts = "max-age=31536000"

[site.cache]
enabled = true

[site.waf]
mode = "block"

[[site]]
name = "shop"
hosts = ["shop.example"]
certificate = {{ cert = "certs/shop.pem", key = "certs/shop.key" }}
origins = [{q(f"https://{HOST}:{ports.shop_origin}")}]
origin_tls = "strict"
origin_ca = "ca.pem"
origin_server_name = "origin.shop.example"
"""


def display_path(path: Path) -> str:
    """A path as the user should type it: relative when under the current directory (shorter lines), else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def curl_checks(files: DemoFiles, ports: DemoPorts) -> list[CurlCheck]:
    """The commands printed for the user; in smoke mode the same commands are run and checked."""
    ca = display_path(files.ca_cert)
    # A proxy from the environment would swallow --resolve; only then is the extra option worth its noise.
    noproxy = ("--noproxy", "*") if any(os.environ.get(v) for v in _PROXY_VARS) else ()

    def https(name: str, path: str = "/") -> tuple[str, ...]:
        return (
            "curl",
            *noproxy,
            "--cacert",
            ca,
            "--resolve",
            f"{name}:{ports.https}:{HOST}",
            f"https://{name}:{ports.https}{path}",
        )

    redirect_path = "/hello?from=http"
    return [
        CurlCheck("blog.example: HTTPS at the edge, plain HTTP to its origin", https("blog.example"), 200, "blog"),
        CurlCheck("*.blog.example: the wildcard certificate and site", https("www.blog.example"), 200, "blog"),
        CurlCheck(
            "blog.example/static/: cached by the edge for 60 s (see the Cache-Status and Age headers with -i)",
            https("blog.example", "/static/demo"),
            200,
            "blog",
        ),
        CurlCheck(
            "blog.example: an SQL injection is stopped by the WAF (ModSecurity + OWASP CRS) before the origin",
            https("blog.example", "/search?q=1%27%20OR%201=1--"),
            403,
        ),
        CurlCheck(
            "shop.example: HTTPS at the edge and verified HTTPS to origin.shop.example",
            https("shop.example"),
            200,
            "shop",
        ),
        CurlCheck(
            "plain HTTP is redirected to HTTPS (308)",
            (
                "curl",
                *noproxy,
                "-i",
                "--resolve",
                f"blog.example:{ports.http}:{HOST}",
                f"http://blog.example:{ports.http}{redirect_path}",
            ),
            308,
            location=f"https://blog.example:{ports.https}{redirect_path}",
        ),
    ]


# -- child processes ---------------------------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when we die (even by SIGKILL), so no demo outlives its runner."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None  # None: output goes to our terminal


@dataclass
class Children:
    """The processes the demo started, stopped in reverse order with bounded waits."""

    started: list[Child] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path | None) -> Child:
        out: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("wb")
            self._logs.append(out)
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us only; we stop children in order
            preexec_fn=_die_with_parent(),  # only prctl(): safe between fork and exec
        )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def stop(self) -> list[str]:
        """SIGTERM each child (last started first), wait up to STOP_TIMEOUT in all, SIGKILL what remains.

        Returns complaints (a child that had to be killed); the process groups are swept so no worker of the edge is
        left behind even if its parent exited first.
        """
        complaints: list[str] = []
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in reversed(self.started):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    complaints.append(f"{child.name} did not stop within {STOP_TIMEOUT:.0f}s after SIGTERM; killed")
            with suppress(ProcessLookupError, PermissionError):  # the group may be gone already
                os.killpg(child.proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):  # unkillable (stuck in the kernel): nothing more we can do
                child.proc.wait(timeout=5)
        for out in self._logs:
            out.close()
        self._logs.clear()
        return complaints

    def exited(self) -> Child | None:
        return next((c for c in self.started if c.proc.poll() is not None), None)


def port_in_use(port: int) -> bool:
    """True when 127.0.0.1:port cannot be bound: an earlier demo or another program holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def accepts(port: int, tls: ssl.SSLContext | None = None, server_name: str | None = None) -> bool:
    """True when 127.0.0.1:port accepts a TCP connection.

    With ``tls`` a handshake is completed too (its outcome does not matter): a bare connect-and-close would show up
    as a failed handshake in the edge's error log, which is noise in a demo.
    """
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            if tls is not None:
                sock.settimeout(2.0)
                with suppress(OSError), tls.wrap_socket(sock, server_hostname=server_name) as tls_sock:
                    tls_sock.unwrap()  # close_notify: a polite goodbye rather than a reset
            return True
    except OSError:
        return False


def tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in text)


# -- the demo ----------------------------------------------------------------------------------------------------------


def run_demo(
    state_dir: Path,
    https_port: int = DEFAULT_HTTPS_PORT,
    http_port: int = DEFAULT_HTTP_PORT,
    smoke: bool = False,
    *,
    blog_origin_port: int = DEFAULT_BLOG_ORIGIN_PORT,
    shop_origin_port: int = DEFAULT_SHOP_ORIGIN_PORT,
) -> int:
    """Set up and run the demo; returns the process exit code (0 ok, 1 failure; 0 after Ctrl-C when interactive)."""
    ports = DemoPorts(https_port, http_port, blog_origin_port, shop_origin_port)
    files = DemoFiles(Path(state_dir) / "demo")

    def say(msg: str) -> None:
        print(msg, flush=True)

    def fail(msg: str) -> int:
        print(f"tlsedge demo: {msg}", file=sys.stderr, flush=True)
        return 1

    numbers = list(ports.named().values())
    if len(set(numbers)) != len(numbers):
        return fail(f"the demo needs four different ports, got {ports.named()}")
    busy = [f"{opt} {port}" for opt, port in ports.named().items() if port_in_use(port)]
    if busy:
        return fail(
            f"port(s) already in use on {HOST}: {', '.join(busy)} (an earlier demo still running?); "
            "stop it or choose others with those options"
        )
    if smoke and shutil.which("curl") is None:
        return fail("curl is not installed; the smoke run uses the same curl lines a user would (./run installs it)")

    try:
        files.root.mkdir(parents=True, exist_ok=True)
        prepare_pki(files, say)
        files.config.write_text(config_text(ports))
    except OSError as exc:
        return fail(f"cannot write the demo files under {files.root}: {exc}")

    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    children = Children()
    try:
        return _run(files, ports, smoke, children, stop, say, fail)
    finally:
        for complaint in children.stop():
            print(f"tlsedge demo: {complaint}", file=sys.stderr, flush=True)
        restore()


def _run(
    files: DemoFiles,
    ports: DemoPorts,
    smoke: bool,
    children: Children,
    stop: threading.Event,
    say: Callable[[str], None],
    fail: Callable[[str], int],
) -> int:
    py = sys.executable
    origin_shop_cert, origin_shop_key = files.cert("origin-shop")
    children.start(
        "blog origin",
        [py, "-m", "tlsedge.demo.origin", "--listen", f"{HOST}:{ports.blog_origin}", "--name", "blog"],
        files.logs / "origin-blog.log",
    )
    children.start(
        "shop origin",
        [
            py,
            "-m",
            "tlsedge.demo.origin",
            "--listen",
            f"{HOST}:{ports.shop_origin}",
            "--name",
            "shop",
            "--tls-cert",
            str(origin_shop_cert),
            "--tls-key",
            str(origin_shop_key),
        ],
        files.logs / "origin-shop.log",
    )
    # Interactive: the edge's access log goes to the terminal, so each pasted curl shows up as a JSON line.
    edge_log = files.logs / "edge.log" if smoke else None
    children.start("edge", [py, "-m", "tlsedge", "serve", "-c", str(files.config)], edge_log)

    demo_ca = ssl.create_default_context(cafile=files.ca_cert)
    probes = {ports.https: (demo_ca, "blog.example"), ports.shop_origin: (demo_ca, "origin.shop.example")}
    deadline = time.monotonic() + START_TIMEOUT
    waiting = [ports.blog_origin, ports.shop_origin, ports.https, ports.http]
    while waiting:
        if stop.is_set():
            return 0
        dead = children.exited()
        if dead is not None:
            where = (
                f"; its log ({display_path(dead.log)}):\n{tail(dead.log)}" if dead.log else " (see its output above)"
            )
            return fail(f"{dead.name} exited with code {dead.proc.returncode} while starting{where}")
        if time.monotonic() > deadline:
            logs = "".join(f"\n  {c.name}:\n{tail(c.log)}" for c in children.started if c.log)
            return fail(f"ports {waiting} on {HOST} did not accept within {START_TIMEOUT:.0f}s{logs}")
        waiting = [p for p in waiting if not accepts(p, *probes.get(p, (None, None)))]
        if waiting:
            stop.wait(0.1)

    checks = curl_checks(files, ports)
    edge_pid = children.started[-1].proc.pid
    say(
        f"\ntlsedge demo is running: edge (pid {edge_pid}) on https://{HOST}:{ports.https} and "
        f"http://{HOST}:{ports.http}, files in {display_path(files.root)}/\n"
    )
    for check in checks:
        say(f"  # {check.what}")
        say(f"  {check.line}\n")
    if smoke:
        return 0 if _smoke(checks, say) else fail(f"smoke run failed; logs in {display_path(files.logs)}/")

    say(f"To use a browser: trust {display_path(files.ca_cert)} and map the names to {HOST} in /etc/hosts.")
    say("The edge's log follows below. Press Ctrl-C to stop.\n")
    while not stop.wait(0.5):
        dead = children.exited()
        if dead is not None:
            where = f"; its log:\n{tail(dead.log)}" if dead.log else ""
            return fail(f"{dead.name} exited unexpectedly with code {dead.proc.returncode}{where}")
    say("\nstopping the demo...")
    return 0


def _smoke(checks: list[CurlCheck], say: Callable[[str], None]) -> bool:
    """Run each printed line with output captured; True when every status, origin and Location is as expected."""
    ok = True
    with tempfile.TemporaryDirectory(prefix="tlsedge-demo-") as tmp:
        for i, check in enumerate(checks):
            out = Path(tmp) / f"{i}.out"
            argv = [
                *check.argv,
                "--noproxy",
                "*",
                "-sS",
                "--max-time",
                str(CURL_TIMEOUT),
                "-D",
                str(out) + ".head",
                "-o",
                str(out),
                "-w",
                "%{http_code}",
            ]
            try:
                run = subprocess.run(argv, capture_output=True, text=True, timeout=CURL_TIMEOUT + 5, check=False)
            except subprocess.TimeoutExpired:
                say(f"FAIL {check.line}\n     curl did not finish within {CURL_TIMEOUT + 5}s")
                ok = False
                continue
            problems = _judge(check, run, out)
            say(f"{'ok  ' if not problems else 'FAIL'} {run.stdout.strip() or '---'}  {check.line}")
            for problem in problems:
                say(f"     {problem}")
            ok = ok and not problems
    return ok


def _judge(check: CurlCheck, run: subprocess.CompletedProcess[str], out: Path) -> list[str]:
    if run.returncode != 0:
        return [f"curl exit {run.returncode}: {run.stderr.strip()}"]
    problems = []
    status = int(run.stdout.strip() or 0)
    if status != check.status:
        problems.append(f"expected status {check.status}, got {status}")
    body = out.read_text(errors="replace") if out.exists() else ""
    if check.origin is not None and f'"origin": "{check.origin}"' not in body:
        problems.append(f"expected the answer of the {check.origin!r} demo origin, got: {body[:300]!r}")
    if check.location is not None:
        head = Path(str(out) + ".head").read_text(errors="replace") if Path(str(out) + ".head").exists() else ""
        found = [line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("location:")]
        if found != [check.location]:
            problems.append(f"expected Location: {check.location}, got {found or 'none'}")
    return problems


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop`` instead of raising mid-setup, so cleanup always runs; returns an undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


# -- command line ------------------------------------------------------------------------------------------------------


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tlsedge demo``; cli.py adds them to its ``demo`` sub-command."""
    parser.add_argument("--state-dir", type=Path, default=Path("state"), help="demo files go to STATE_DIR/demo (state)")
    parser.add_argument("--https-port", type=int, default=DEFAULT_HTTPS_PORT, help="edge HTTPS port (%(default)s)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="edge HTTP port (%(default)s)")
    parser.add_argument(
        "--blog-origin-port",
        type=int,
        default=DEFAULT_BLOG_ORIGIN_PORT,
        help="plain HTTP demo origin of blog.example (%(default)s)",
    )
    parser.add_argument(
        "--shop-origin-port",
        type=int,
        default=DEFAULT_SHOP_ORIGIN_PORT,
        help="HTTPS demo origin of shop.example (%(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="run the printed curl lines, check them, stop; exit 0/1")


def demo_main(args: argparse.Namespace) -> int:
    """Run the demo from parsed ``add_demo_arguments`` options."""
    return run_demo(
        args.state_dir,
        args.https_port,
        args.http_port,
        args.smoke,
        blog_origin_port=args.blog_origin_port,
        shop_origin_port=args.shop_origin_port,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlsedge demo", description="Run the tlsedge demo on 127.0.0.1.")
    add_demo_arguments(parser)
    return demo_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
