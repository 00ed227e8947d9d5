"""Helpers for the end-to-end tests of TLS pass-through (issue 7): origins holding certificates the edge has never
seen, a TLS client whose bytes the test cuts into TCP segments itself, and readers of the tunnels' log lines.

The origins' certificates come from a CA made at test time that the edge does not know (``OriginPki``): a client
that verifies against that CA and succeeds has talked TLS with the origin, not with the edge. Two kinds of origin:
a real nginx (``NginxTlsOrigin``: a plain TLS listener, a ``proxy_protocol`` one, files to download) and small
threaded Python servers (``NameServer``) that answer with their name and count every TCP connection, so a test can
tell which server a tunnel reached, and that a refused client never reached any.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from e2e_support import Edge, free_port, openssl_s_client, start_nginx, stop_process, wait_for, write_nginx_conf

from tlsedge.pki.local_ca import LocalCA

ORIGIN_NAMES = ["vault.example", "pp.example", "direct.example", "nopp.example", "*.tunnel.example"]
JA4_RE = re.compile(r"t13d\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
_MAX_HEAD = 16 * 1024


def passthrough_site(name: str, hosts: list[str], origins: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A ``mode = "passthrough"`` ``[[site]]`` (no certificate: the edge has none for it); without ``origins``, give
    it a ``pool``."""
    table: dict[str, Any] = {"name": name, "hosts": hosts, "mode": "passthrough"}
    if origins:
        table["origins"] = origins
    return {**table, **extra}


def address(port: int) -> str:
    """A pass-through origin as written in ``origins``: host:port, no scheme."""
    return f"127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------------------- PKI


class OriginPki:
    """The site owner's CA (made now, never given to the edge) and one certificate for every origin name."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = LocalCA.create("passthrough origin CA")
        self.ca_pem = directory / "origin-ca.pem"
        self.ca_pem.write_bytes(self.ca.cert_pem)
        self.cert = directory / "origin.pem"
        self.key = directory / "origin.key"
        self.ca.issue(ORIGIN_NAMES).write(self.cert, self.key)  # the key file is mode 0600

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


# ---------------------------------------------------------------------------------------------------------- nginx


NGINX_PASSTHROUGH_HTTP = """\
    log_format tunnel '$remote_addr:$remote_port pp=$proxy_protocol_addr sni=$ssl_server_name $request';
    access_log {prefix}/access.log tunnel;
    keepalive_timeout 60s;
    default_type text/plain;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen 127.0.0.1:{tls} ssl;
        root {prefix}/www;
        location = / {{ return 200 "nginx vault origin\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{pp} ssl proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{direct} ssl;
        location / {{ return 200 "$remote_addr:$remote_port\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status};
        location = /status {{ stub_status; }}
    }}"""


class NginxTlsOrigin:
    """A real nginx with the owner's certificate: ``tls`` (files under www/), ``pp`` (``listen ... ssl
    proxy_protocol``, answers ``$proxy_protocol_addr:$proxy_protocol_port``) and ``direct`` (a plain ssl listener,
    answers ``$remote_addr:$remote_port``); ``accepted`` counts the TCP connections it took on them."""

    INDEX = b"nginx vault origin\n"

    def __init__(self, prefix: Path, pki: OriginPki) -> None:
        self.prefix = prefix
        self.www = prefix / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        self.tls, self.pp, self.direct, self.status = free_port(), free_port(), free_port(), free_port()
        config = NGINX_PASSTHROUGH_HTTP.format(prefix=prefix, cert=pki.cert, key=pki.key, tls=self.tls, pp=self.pp,
                                               direct=self.direct, status=self.status)
        self.proc = start_nginx(prefix, write_nginx_conf(prefix, config),
                                [self.tls, self.pp, self.direct, self.status])
        self._not_counted = self._stub_status()  # start_nginx's probes and this read

    def accepted(self) -> int:
        """TCP connections nginx accepted since it started, without start_nginx's probes and the status reads."""
        value = self._stub_status()
        self._not_counted += 1
        return value - self._not_counted

    def _stub_status(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.status, timeout=5)
        try:
            conn.request("GET", "/status")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return int(text.split("requests")[1].split()[0])  # "accepts handled requests\n A H R"

    def add_file(self, name: str, size: int) -> str:
        """A file of random bytes under www/; its SHA-256 (hex)."""
        data = os.urandom(size)
        (self.www / name).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def access_lines(self) -> list[str]:
        log = self.prefix / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def error_text(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


# ---------------------------------------------------------------------------------------------------------- Python


class NameServer:
    """A threaded TLS origin that answers every request with its name (then closes) and counts TCP connections,
    handshake or not: ``connections`` stays 0 while the edge never contacts it."""

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        self.name = name
        self.context = context
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.address = address(self.port)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                body = self.name.encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))
                conn.settimeout(1)
                conn.unwrap()  # close_notify, so clients (openssl s_client) see a clean end
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


# ---------------------------------------------------------------------------------------------------------- clients


class BioClient:
    """A Python ``ssl`` client driven through MemoryBIOs over a plain socket.

    The test decides how the TLS bytes are cut into TCP segments (and records), and ``sent``/``received`` count every
    byte that crossed the socket, to compare with what the edge logs for the tunnel.
    """

    def __init__(self, port: int, sni: str | None, ca_pem: Path, source: str | None = None,
                 timeout: float = 10.0, alpn: list[str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if sni is None:
            ctx.check_hostname = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        self.sent = 0
        self.received = 0
        self.eof = False

    def __enter__(self) -> BioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def client_hello(self) -> bytes:
        """The ClientHello records, not sent yet (the caller sends them its own way with `send_raw`)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def send_raw(self, data: bytes, piece: int | None = None, pause: float = 0.0) -> None:
        """Send ``data`` as it is, in pieces of ``piece`` bytes (one TCP segment each: TCP_NODELAY) with pauses."""
        step = piece or len(data) or 1
        for i in range(0, len(data), step):
            self.sock.sendall(data[i : i + step])
            self.sent += len(data[i : i + step])
            if pause:
                time.sleep(pause)

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.send_raw(pending)

    def _pump(self) -> bool:
        """Read once from the socket into the TLS object; False at the end of the stream."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            self.incoming.write_eof()
            return False
        self.received += len(data)
        self.incoming.write(data)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._pump():
                    raise ConnectionError("connection closed during the TLS handshake") from None
                continue
            self._flush()
            return

    def request(self, host: str, path: str = "/") -> bytes:
        """One ``Connection: close`` request; the whole answer (head and body) up to the end of the stream."""
        self.tls.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        self._flush()
        answer = bytearray()
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            else:
                if not data:  # close_notify
                    break
                answer += data
                continue
            if not self._pump():
                break
        while not self.eof:  # after close_notify: read to the TCP end, so `received` counts every byte
            self._pump()
        return bytes(answer)


def small_window_client(port: int, sni: str, ca_pem: Path, rcvbuf: int, timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS client whose receive buffer is set to ``rcvbuf`` before it connects (so the kernel cannot soak up what
    a slow reader leaves unread: it has to wait in the edge, or the edge has to stop reading from the origin)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return ssl.create_default_context(cafile=str(ca_pem)).wrap_socket(sock, server_hostname=sni)


def hello_records(hello: bytes, cuts: list[int]) -> bytes:
    """The same ClientHello message carried by several handshake records, cut at ``cuts`` (offsets in the message)."""
    assert hello[0] == 22 and len(hello) == 5 + int.from_bytes(hello[3:5], "big"), "expected one handshake record"
    message = hello[5:]
    bounds = [0, *cuts, len(message)]
    return b"".join(hello[:3] + (b - a).to_bytes(2, "big") + message[a:b] for a, b in itertools.pairwise(bounds))


def closed_without_answer(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the peer sent until it closed (reset counts as closed), and how long that took; AssertionError if it
    is still open after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                break
            got += data
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout}s (got {got[:100]!r})") from None
    return got, time.monotonic() - start


def s_client(port: int, servername: str | None, ca_pem: Path, *args: str, host: str = "vault.example",
             timeout: float = 10) -> subprocess.CompletedProcess:
    """``openssl s_client`` verifying against ``ca_pem`` and sending one ``Connection: close`` request."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    extra = ["-noservername"] if servername is None else []
    return openssl_s_client(port, servername, "-CAfile", str(ca_pem), "-showcerts", *extra, *args, request=request,
                            timeout=timeout)


# ---------------------------------------------------------------------------------------------------------- logs


def tunnels(edge: Edge, site_name: str, client: str | None = None) -> list[dict[str, Any]]:
    """The access-log lines of the pass-through connections of one site (from one client address), oldest first."""
    return [e for e in edge.access_entries() if e.get("mode") == "passthrough" and e.get("site") == site_name
            and (client is None or e.get("client") == client)]


def wait_tunnels(edge: Edge, site_name: str, count: int, client: str | None = None,
                 timeout: float = 5.0) -> list[dict[str, Any]]:
    """The site's tunnel lines (from ``client``) once there are ``count`` (the worker writes the log at its sweep);
    AssertionError if there are more: each test plays its own client address."""
    found = wait_for(lambda: (lines := tunnels(edge, site_name, client)) and len(lines) >= count and lines, timeout,
                     what=f"{count} pass-through log lines of site {site_name}")
    assert len(found) == count, found
    return found
