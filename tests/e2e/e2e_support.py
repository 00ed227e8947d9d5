"""Helpers for the end-to-end tests: free ports, TOML writing, the edge process, the origins, raw and curl clients."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

TESTS_DIR = Path(__file__).resolve().parent.parent
LIVE_EDGES: list[Edge] = []
BLOG_HOSTS = ["blog.example", "*.blog.example"]


# ---------------------------------------------------------------------------------------------------------- misc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound then released; good enough for a refused connect)."""
    return free_port()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # keep polling; report the last failure
            last_exc = e
        if time.monotonic() > deadline:
            detail = f": {last_exc!r}" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class RssSampler:
    """Samples the RSS of some processes in a thread; ``growth_kib`` is max during minus baseline (per process)."""

    def __init__(self, pids: Iterable[int], interval: float = 0.05) -> None:
        self.pids = list(pids)
        self.baseline = {p: rss_kib(p) for p in self.pids}
        self.peak = dict(self.baseline)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.pids:
                with contextlib.suppress(OSError):
                    self.peak[p] = max(self.peak[p], rss_kib(p))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_kib(self) -> int:
        return max((self.peak[p] - self.baseline[p] for p in self.pids), default=0)


# ---------------------------------------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(header: str, table: dict[str, Any], out: list[str], inline_keys: frozenset[str]) -> None:
    out.append(header)
    subtables = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict) and key not in inline_keys:
            subtables.append((key, value))
        else:
            out.append(f"{key} = {_toml_value(value)}")
    out.append("")
    name = header.strip("[]")
    for key, value in subtables:
        _toml_table(f"[{name}.{key}]", value, out, inline_keys)


def to_toml(server: dict[str, Any], sites: list[dict[str, Any]]) -> str:
    out: list[str] = []
    inline = frozenset({"certificate"})
    _toml_table("[server]", server, out, inline)
    for site in sites:
        _toml_table("[[site]]", site, out, inline)
    # [[site]] subtables are written as [site.origin] right after their [[site]], which TOML binds to the last site
    return "\n".join(out)


def site(
    name: str,
    hosts: list[str],
    origins: list[str],
    cert: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``[[site]]`` table; ``cert`` is a CertPair, a list of them, or None (plain-HTTP site)."""
    table: dict[str, Any] = {"name": name, "hosts": hosts}
    if cert is not None:
        pairs = cert if isinstance(cert, list) else [cert]
        certs = [{"cert": str(p.cert), "key": str(p.key)} for p in pairs]
        table["certificate"] = certs[0] if len(certs) == 1 else certs
    table["origins"] = origins
    table.update(extra)
    return table


# ---------------------------------------------------------------------------------------------------------- edge


class Edge:
    """One ``tlsedge serve`` process with its config, ports and logs under ``tmp``."""

    def __init__(self, tmp: Path, sites: list[dict[str, Any]], ca_pem: Path, **server: Any) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.ca_pem = ca_pem
        self.https_port = free_port()
        self.http_port = free_port()
        self.config_path = tmp / "tlsedge.toml"
        self.access_log = tmp / "access.log"
        self.error_log = tmp / "error.log"
        self.stdout_path = tmp / "stdout.txt"
        self.stderr_path = tmp / "stderr.txt"
        limits = server.pop("limits", {})
        self.server: dict[str, Any] = {
            "state_dir": str(tmp / "state"),
            "workers": 1,
            "https": [f"127.0.0.1:{self.https_port}"],
            "http": [f"127.0.0.1:{self.http_port}"],
            "drain_timeout": "10s",
            "access_log": str(self.access_log),
            "error_log": str(self.error_log),
            **server,
        }
        self.server["limits"] = {"header_timeout": "5s", **limits}
        self.sites = sites
        self.proc: subprocess.Popen | None = None
        self.write_config()

    # -- config
    def config_text(self) -> str:
        return to_toml(self.server, self.sites)

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else self.config_text())

    def reload(self, sites: list[dict[str, Any]] | None = None, text: str | None = None, **server: Any) -> None:
        """Rewrite the config (new sites, server fields, or raw text) and send SIGHUP."""
        if sites is not None:
            self.sites = sites
        if "limits" in server:
            self.server["limits"] = {**self.server["limits"], **server.pop("limits")}
        self.server.update(server)
        self.write_config(text)
        self.signal(signal.SIGHUP)

    # -- process
    def start(self, timeout: float = 10.0) -> Edge:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tlsedge", "serve", "-c", str(self.config_path)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
                env=env,
            )
        LIVE_EDGES.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited with {self.proc.returncode} at start\n{self.diagnostics()}")
            https_up = not self.server["https"] or port_accepts(self.https_port)
            if https_up and port_accepts(self.http_port) and self._answers():
                want = int(self.server.get("workers", 1))
                while len(self.worker_pids()) < want and time.monotonic() < deadline:
                    time.sleep(0.05)
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"edge did not accept on its ports within {timeout}s\n{self.diagnostics()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """A worker answers on the http port (the listeners may be open before any worker runs). The probe is a
        malformed request line, so it never reaches an origin."""
        try:
            with RawConn(self.http_port, tls=False, timeout=1.0) as c:
                c.send(b"READY?\r\n\r\n")
                c._fill()
                return c.buf.startswith(b"HTTP/1.")
        except (OSError, AssertionError):
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in children(self.proc.pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(5)
        if self in LIVE_EDGES:
            LIVE_EDGES.remove(self)
        return self.proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    # -- logs
    def error_text(self) -> str:
        parts = []
        for p in (self.error_log, self.stderr_path):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def error_log_size(self) -> int:
        return self.error_log.stat().st_size if self.error_log.exists() else 0

    def error_text_since(self, offset: int) -> str:
        if not self.error_log.exists():
            return ""
        with open(self.error_log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def access_lines(self) -> list[str]:
        if not self.access_log.exists():
            return []
        return [line for line in self.access_log.read_text(errors="replace").splitlines() if line.strip()]

    def access_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.access_lines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def diagnostics(self) -> str:
        out = []
        for label, p in (("error log", self.error_log), ("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            if p.exists():
                text = p.read_text(errors="replace")
                out.append(f"--- edge {label} ({p}) ---\n{text[-6000:]}")
        return "\n".join(out)

    # -- clients
    def conn(self, sni: str | None = "blog.example", **kw: Any) -> RawConn:
        return RawConn(self.https_port, sni=sni, ca_pem=self.ca_pem, **kw)

    def plain_conn(self, **kw: Any) -> RawConn:
        return RawConn(self.http_port, tls=False, **kw)

    def curl(self, host: str, path: str = "/", *args: str, scheme: str = "https", timeout: float = 30) -> CurlResult:
        port = self.https_port if scheme == "https" else self.http_port
        return curl(f"{scheme}://{host}:{port}{path}", *args, resolve=f"{host}:{port}:127.0.0.1",
                    ca_pem=self.ca_pem, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------- origins


class PythonOrigin:
    """tests/origins.py in a subprocess."""

    def __init__(self, log_path: Path | None = None) -> None:
        # stderr goes to a file: a pipe nobody reads would block the origin once full
        self.log_path = log_path or Path(os.devnull)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTS_DIR / "origins.py"), "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise AssertionError(f"origin did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return json.loads(self._get("/_stats"))

    def reset(self) -> None:
        self._get("/_reset")

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server process with `sig`, killing it if it is still there after 5 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


NGINX_FRAME = """\
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/error.log {level};
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{http}
}}
"""


def write_nginx_conf(prefix: Path, http: str, level: str = "warn") -> Path:
    """``prefix/nginx.conf``: a foreground, single-process nginx with everything under `prefix`, serving `http`
    (the inside of its http block)."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_FRAME.format(prefix=prefix, level=level, http=http))
    return conf


def start_nginx(prefix: Path, conf: Path, ports: Iterable[int]) -> subprocess.Popen:
    """Run nginx on `conf` until every port accepts; if it does not, stop it and fail with its error log."""
    proc = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    ports = list(ports)
    try:
        wait_for(lambda: all(port_accepts(p) for p in ports), 10, what=f"nginx on ports {ports}")
    except AssertionError:
        stop_process(proc)
        log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
        raise AssertionError(f"nginx did not start:\n{log}") from None
    return proc


NGINX_ORIGIN_HTTP = """\
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{plain};
        root {prefix}/www;
    }}
{tls_servers}"""

NGINX_TLS_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {prefix}/www;
    }}
"""


class NginxOrigin:
    """A real nginx: a plain listener and one TLS listener per certificate flavour (good, wrong_name, expired, self)."""

    INDEX = b"nginx origin ok\n"
    BIG_SIZE = 1 << 30

    def __init__(self, prefix: Path, certs: dict[str, Any]) -> None:
        self.prefix = prefix
        www = prefix / "www"
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_bytes(self.INDEX)
        subprocess.run(["truncate", "-s", str(self.BIG_SIZE), str(www / "big.bin")], check=True)
        self.big_path = www / "big.bin"
        self.plain_port = free_port()
        self.tls_ports = {name: free_port() for name in certs}
        tls_servers = "".join(
            NGINX_TLS_SERVER.format(port=self.tls_ports[name], cert=pair.cert, key=pair.key, prefix=prefix)
            for name, pair in certs.items()
        )
        http = NGINX_ORIGIN_HTTP.format(prefix=prefix, plain=self.plain_port, tls_servers=tls_servers)
        conf = write_nginx_conf(prefix, http)
        self.proc = start_nginx(prefix, conf, [self.plain_port, *self.tls_ports.values()])

    def stop(self) -> None:
        stop_process(self.proc)


# ---------------------------------------------------------------------------------------------------------- clients


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "close", "none"
    complete: bool  # False when the connection ended before the framing said the body ended
    raw_head: bytes = b""
    interim: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class ConnClosed(Exception):
    pass


class RawConn:
    """A byte-exact client over TLS (or plain TCP) with a strict response reader."""

    def __init__(
        self,
        port: int,
        sni: str | None = "blog.example",
        tls: bool = True,
        ca_pem: Path | None = None,
        timeout: float = 10.0,
        source: str | None = None,
        alpn: list[str] | None = None,
        verify: bool = True,
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.create_default_context(cafile=str(ca_pem) if ca_pem else None)
            if sni is None or not verify:
                ctx.check_hostname = False
            if not verify:
                ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols(alpn)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=sni)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            data = b""
        except ssl.SSLError as e:  # e.g. an alert on close; treat as end of stream
            if "timed out" in str(e):
                raise
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes:
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            if not self._fill():
                raise ConnClosed(f"connection closed before {marker!r}; got {bytes(self.buf[:200])!r}")

    def read_exact(self, n: int) -> tuple[bytes, bool]:
        while len(self.buf) < n:
            if not self._fill():
                out = bytes(self.buf)
                self.buf.clear()
                return out, False
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out, True

    def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the peer closes; AssertionError if it is still open after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {bytes(self.buf[:300])!r}")
            self.sock.settimeout(left)
            try:
                self._fill()
            except TimeoutError:
                continue
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_response(self, method: str = "GET", keep_interim: bool = False) -> Response:
        interim = []
        while True:
            head = self.read_until(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, code, *reason = status_line.split(" ", 2)
            assert version == "HTTP/1.1", f"bad status line {status_line!r}"
            status = int(code)
            if 100 <= status < 200 and status != 101:
                interim.append(head)
                continue
            break
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            assert name and name == name.strip(), f"bad header line {line!r}"
            headers.append((name, value.strip()))
        resp = Response(status, reason[0] if reason else "", headers, b"", "none", True, head, interim)
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or status in (204, 304):
            return resp
        if te is not None:
            assert te.lower() == "chunked", f"unexpected transfer-encoding {te!r}"
            assert cl is None, "response with both Content-Length and Transfer-Encoding"
            resp.framing = "chunked"
            body = bytearray()
            while True:
                try:
                    size_line = self.read_until(b"\r\n")
                except ConnClosed:
                    resp.complete = False
                    break
                size = int(size_line[:-2].split(b";")[0], 16)
                if size == 0:
                    try:
                        while self.read_until(b"\r\n") != b"\r\n":
                            pass
                    except ConnClosed:
                        resp.complete = False
                    break
                data, ok = self.read_exact(size + 2)
                if not ok:
                    body += data[:size]
                    resp.complete = False
                    break
                assert data[-2:] == b"\r\n", "chunk data not followed by CRLF"
                body += data[:-2]
            resp.body = bytes(body)
        elif cl is not None:
            resp.framing = "length"
            resp.body, resp.complete = self.read_exact(int(cl))
        else:
            resp.framing = "close"
            resp.body = self.read_to_eof()
        return resp

    def request(self, method: str = "GET", target: str = "/", host: str | None = "blog.example",
                headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Response:
        self.send(build_request(method, target, host, headers, body))
        return self.read_response(method)

    @property
    def peer_cert(self) -> x509.Certificate:
        """The server's leaf certificate (also when not verified)."""
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        assert der, "no peer certificate"
        return x509.load_der_x509_certificate(der)

    @property
    def peer_names(self) -> set[str]:
        san = self.peer_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return set(san.get_values_for_type(x509.DNSName))


def build_request(method: str = "GET", target: str = "/", host: str | None = "blog.example",
                  headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    hdrs = list(headers or [])
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
        hdrs.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class CurlResult:
    returncode: int
    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def parse_curl_output(out: bytes) -> tuple[int | None, list[tuple[str, str]], bytes, list[int]]:
    interim: list[int] = []
    while out.startswith(b"HTTP/"):
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            break
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        if 100 <= status < 200:
            interim.append(status)
            out = rest
            continue
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        return status, headers, rest, interim
    return None, [], out, interim


def curl(url: str, *args: str, resolve: str | None = None, ca_pem: Path | None = None,
         timeout: float = 30) -> CurlResult:
    cmd = ["curl", "-sS", "--http1.1", "-i", "--max-time", str(timeout)]
    if ca_pem:
        cmd += ["--cacert", str(ca_pem)]
    if resolve:
        cmd += ["--resolve", resolve]
    cmd += [*args, url]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
    status, headers, body, interim = parse_curl_output(proc.stdout)
    return CurlResult(proc.returncode, status, headers, body, proc.stderr.decode(errors="replace"), interim)


def openssl_s_client(port: int, servername: str | None, *args: str, request: bytes = b"",
                     timeout: float = 10) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof"]
    if servername:
        cmd += ["-servername", servername]
    cmd += list(args)
    return subprocess.run(cmd, input=request, capture_output=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------- configs


def main_sites(py_origin: PythonOrigin, site_certs: dict[str, Any]) -> list[dict[str, Any]]:
    """blog (HSTS, 1 MiB body limit, 2 s response timeout), shop, dead (origin refuses), plain (no certificate)."""
    timeouts = {"connect_timeout": "2s", "response_timeout": "2s", "read_timeout": "3s"}
    return [
        site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"], hsts="max-age=31536000",
             max_body_size="1MiB", origin=timeouts),
        site("shop", ["shop.example"], [py_origin.url], site_certs["shop"], origin=timeouts),
        site("dead", ["dead.example"], [f"http://127.0.0.1:{closed_port()}"], site_certs["dead"], origin=timeouts),
        site("plain", ["plain.example"], [py_origin.url], None, origin=timeouts),
    ]


MAIN_LIMITS = {
    "header_timeout": "2s",
    "body_idle_timeout": "2s",
    "max_header_bytes": 8192,
    "max_header_count": 50,
    "max_uri_bytes": 2048,
}
