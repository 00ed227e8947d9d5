"""Helpers for the end-to-end tests of the guard (issue 6): an edge with the edge-wide guard tables, an origin that
keeps request bodies, clients that choose their source address on loopback, and readers of the guard's log lines.

Loopback owns the whole of 127/8, so a test plays several clients (and several /24s) by binding its sockets to
127.0.0.x and 127.0.1.x; the edge sees each as a different client address.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from cache_support import Answer, ScriptedOrigin, Seen
from e2e_support import Edge, RawConn, Response, wait_for

PASSWORD = "correct horse battery"


# --- the edge -------------------------------------------------------------------------------------------------------


class GuardEdge(Edge):
    """An Edge whose config also has top-level tables (``[guard]``, ``[ip_rules]``, ``[bans]``), from ``top``."""

    def __init__(self, tmp: Path, sites: list[dict[str, Any]], ca_pem: Path, top: dict[str, dict[str, Any]] | None,
                 **server: Any) -> None:
        self.top = top or {}
        super().__init__(tmp, sites, ca_pem, **server)

    def config_text(self) -> str:
        lines = [super().config_text()]
        for name, table in self.top.items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
            lines.append("")
        return "\n".join(lines)

    def ask(self, host: str, path: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", source: str | None = None) -> Response:
        """One request on a fresh connection: over TLS when the edge has an https listener (its sites then have
        certificates, and plain HTTP would only redirect), else plain HTTP."""
        if self.server["https"]:
            return call(self.https_port, host, path, method, headers, body, source, tls=True, ca_pem=self.ca_pem)
        return call(self.http_port, host, path, method, headers, body, source)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """``tlsedge <args> -c <config>`` with this edge's config."""
        return tlsedge(*args, "-c", str(self.config_path), stdin=stdin)

    def access_entry(self, request_id: str, timeout: float = 3.0) -> dict[str, Any]:
        """The access-log record of one request (the log is flushed by the worker's sweep, so it is waited for)."""
        return wait_for(lambda: next((e for e in self.access_entries() if e.get("request_id") == request_id), None),
                        timeout, what=f"access log record of {request_id}")

    def access_for(self, site: str, path: str, timeout: float = 3.0) -> dict[str, Any]:
        """The access-log record of the last request to ``path`` (with its query) on ``site``."""
        def last() -> dict[str, Any] | None:
            found = [e for e in self.access_entries() if e.get("site") == site and e.get("path") == path]
            return found[-1] if found else None
        return wait_for(last, timeout, what=f"access log record of {site} {path}")

    def error_lines(self, needle: str, timeout: float = 3.0) -> list[str]:
        """The error-log lines holding ``needle`` (waited for until there is at least one)."""
        return wait_for(lambda: [line for line in self.error_text().splitlines() if needle in line], timeout,
                        what=f"error log lines with {needle!r}")


class EdgeFactory:
    """Makes GuardEdges under ``tmp`` and stops every one at `close` (a test module's fixture uses one)."""

    def __init__(self, tmp: Path, ca_pem: Path) -> None:
        self.tmp = tmp
        self.ca_pem = ca_pem
        self.edges: list[GuardEdge] = []

    def __call__(self, sites: list[dict[str, Any]], top: dict[str, dict[str, Any]] | None = None,
                 start: bool = True, https: bool = False, **server: Any) -> GuardEdge:
        """An edge with plain HTTP only, or also an https listener (``https``: give the sites certificates)."""
        edge = GuardEdge(self.tmp / f"edge{len(self.edges)}", sites, self.ca_pem, top, https=[], **server)
        if https:
            edge.server["https"] = [f"127.0.0.1:{edge.https_port}"]
            edge.write_config()
        self.edges.append(edge)
        if start:
            edge.start()
        return edge

    def close(self) -> None:
        for edge in self.edges:
            edge.stop()


def tlsedge(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlsedge", *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout)


def password_hash(password: str = PASSWORD) -> str:
    done = tlsedge("password-hash", "--stdin", stdin=password + "\n")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def plain_site(origin: ScriptedOrigin, name: str, **guard: Any) -> dict[str, Any]:
    """A plain-HTTP site ``<name>.example`` in front of ``origin`` with the given guard tables."""
    return {"name": name, "hosts": [f"{name}.example"], "origins": [origin.url], **guard}


# --- the origin -----------------------------------------------------------------------------------------------------


class BodyOrigin(ScriptedOrigin):
    """A ScriptedOrigin whose unscripted paths answer 200 ``origin saw <method> <target>``, so a client can tell
    which request the answer belongs to; ``received`` gives what reached it, bodies byte for byte (de-chunked)."""

    def received(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.target.split("?")[0] == path.split("?")[0]]

    def unscripted(self, seen: Seen) -> Answer:
        return Answer(200, [("Content-Type", "text/plain")], f"origin saw {seen.method} {seen.target}".encode())


# --- clients --------------------------------------------------------------------------------------------------------


def call(port: int, host: str, path: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None,
         body: bytes = b"", source: str | None = None, tls: bool = False, ca_pem: Path | None = None) -> Response:
    """One request on a fresh connection from ``source`` (a loopback address); the edge's response."""
    with RawConn(port, sni=host, tls=tls, ca_pem=ca_pem, source=source, timeout=10) as conn:
        return conn.request(method, path, host, [*(headers or []), ("Connection", "close")], body)


def refused_at_accept(port: int, source: str, host: str, tls: bool = True, timeout: float = 3.0) -> bool:
    """Whether a connection from ``source`` is closed by the edge before it answers anything: no TLS byte (no
    ServerHello to our ClientHello for ``host``) or, on plain HTTP, no byte to a complete request. False when the
    edge answers as it should (a TLS handshake record, an HTTP response); anything else fails the test."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls_obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=host)
            with contextlib.suppress(ssl.SSLWantReadError):
                tls_obj.do_handshake()
            hello = outgoing.read()
        else:
            hello = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        try:
            sock.sendall(hello)
            first = sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            raise AssertionError(f"the edge neither answered nor closed the connection from {source}") from None
        if not first:
            return True
        assert first == (b"\x16" if tls else b"H"), f"the edge answered {first!r}, not a ServerHello or a response"
        return False
    finally:
        sock.close()


def with_certificate(site: dict[str, Any], pki: Any) -> dict[str, Any]:
    """The site with a certificate for its hosts from the test CA (served on the edge's https listener)."""
    pair = pki.good(*site["hosts"])
    return {**site, "certificate": {"cert": str(pair.cert), "key": str(pair.key)}}
