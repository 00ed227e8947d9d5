"""The origin side of TLS through a real edge: authenticated origin pulls (the edge's client certificate, checked by a
real nginx with ``ssl_verify_client on``, per site and per pool, bad files refused at start), TLS session reuse
towards origins, and the flexible-mode redirect loop."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Edge, free_port, site, start_nginx, stop_process, wait_for, write_nginx_conf

from tlsedge.pki.local_ca import LocalCA

# The nginx side of authenticated origin pulls, exactly as docs/origins.md shows it.
PULL_SNIPPET = """\
        ssl_verify_client on;
        ssl_client_certificate {edge_ca};
"""

NGINX_HTTP = """\
    log_format reuse '$server_port reused=$ssl_session_reused client="$ssl_client_s_dn" $request_uri';
    access_log {prefix}/access.log reuse;
    default_type text/plain;
    server {{  # authenticated origin pulls: only clients with a certificate of the edge CA get in
        listen 127.0.0.1:{pull} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
{pull_snippet}
        location / {{
            add_header X-Reused $ssl_session_reused always;
            return 200 "client=$ssl_client_s_dn\\n";
        }}
    }}
    server {{  # TLS session reuse: tickets (TLS 1.3 and 1.2) and a session cache (TLS 1.2)
        listen 127.0.0.1:{reuse} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:origin:1m;
        ssl_session_tickets on;
        location / {{
            return 200 "reused=$ssl_session_reused\\n";
        }}
    }}
    server {{  # an origin that insists on https, reached over plain HTTP
        listen 127.0.0.1:{plain};
        location / {{
            return 301 https://$host$request_uri;
        }}
        location /moved/ {{
            return 302 https://$host/new-place;
        }}
        location /elsewhere/ {{
            return 301 https://other.example$request_uri;
        }}
    }}"""


class PullNginx:
    """A real nginx with the three servers of NGINX_HTTP."""

    def __init__(self, prefix: Path, cert: Any, edge_ca: Path) -> None:
        self.prefix = prefix
        self.access_log = prefix / "access.log"
        self.ports = {"pull": free_port(), "reuse": free_port(), "plain": free_port()}
        http = NGINX_HTTP.format(prefix=prefix, cert=cert.cert, key=cert.key,
                                 pull_snippet=PULL_SNIPPET.format(edge_ca=edge_ca), **self.ports)
        conf = write_nginx_conf(prefix, http, level="info")
        self.proc = start_nginx(prefix, conf, self.ports.values())

    def url(self, name: str) -> str:
        return f"{'http' if name == 'plain' else 'https'}://127.0.0.1:{self.ports[name]}"

    def access_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        stop_process(self.proc)


class StrictTlsOrigin:
    """A Python TLS origin that *requires* a client certificate of `ca` in the handshake (OpenSSL's
    ``SSL_VERIFY_FAIL_IF_NO_PEER_CERT``, unlike nginx, which finishes the handshake and answers 400), limited to
    `version`. Answers ``200 ok`` to one request per connection."""

    def __init__(self, cert: Any, ca: Path, version: ssl.TLSVersion) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert.cert), str(cert.key))
        self.ctx.load_verify_locations(cafile=str(ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.maximum_version = version
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), self.ctx.wrap_socket(conn, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                data = tls.recv(65536)
                if not data:
                    return
                head += data
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")

    def close(self) -> None:
        self.sock.close()


def _client_cert(ca: LocalCA, directory: Path, name: str) -> dict[str, str]:
    """A client certificate (extendedKeyUsage clientAuth) for `name`, as an edge configuration table."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    ca.issue([name], server=False, client=True).write(cert, key)
    return {"cert": str(cert), "key": str(key)}


@pytest.fixture(scope="module")
def client_certs(tmp_path_factory, pki) -> dict[str, dict[str, str]]:
    directory = tmp_path_factory.mktemp("client-certs")
    return {
        "one": _client_cert(pki.ca, directory, "edge-one"),
        "two": _client_cert(pki.ca, directory, "edge-two"),
        "other_ca": _client_cert(LocalCA.create("another CA"), directory, "edge-other"),
    }


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, pki) -> Iterator[PullNginx]:
    origin = PullNginx(tmp_path_factory.mktemp("pull-nginx"), pki.good("origin.test"), pki.ca_pem)
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def strict_origins(pki) -> Iterator[dict[str, StrictTlsOrigin]]:
    cert = pki.good("origin.test")
    origins = {
        "tls13": StrictTlsOrigin(cert, pki.ca_pem, ssl.TLSVersion.TLSv1_3),
        "tls12": StrictTlsOrigin(cert, pki.ca_pem, ssl.TLSVersion.TLSv1_2),
    }
    yield origins
    for origin in origins.values():
        origin.close()


def _strict(pki, **extra: Any) -> dict[str, Any]:
    return {"origin_tls": "strict", "origin_ca": str(pki.ca_pem), "origin_server_name": "origin.test", **extra}


@pytest.fixture(scope="module")
def pull_edge(tmp_path_factory, pki, nginx, strict_origins, client_certs) -> Iterator[Edge]:
    names = ["one", "two", "none", "other-ca", "pools", "py13", "py12", "py13-cert", "reuse", "reuse-pull", "loop"]
    cert = pki.good(*(f"{n}.test" for n in names))
    pull = nginx.url("pull")
    no_idle = {"max_idle": 0}  # every request opens a new origin connection
    sites = [
        site("one", ["one.test"], [pull], cert, **_strict(pki, origin_client_certificate=client_certs["one"])),
        site("two", ["two.test"], [pull], cert, **_strict(pki, origin_client_certificate=client_certs["two"])),
        site("none", ["none.test"], [pull], cert, **_strict(pki)),
        site("other-ca", ["other-ca.test"], [pull], cert,
             **_strict(pki, origin_client_certificate=client_certs["other_ca"])),
        site("pools", ["pools.test"], [pull], cert,
             pool=[{"name": "override", "servers": [pull], "client_certificate": client_certs["two"]}],
             route=[{"path_prefix": "/override/", "pool": "override"}],
             **_strict(pki, origin_client_certificate=client_certs["one"])),
        site("py13", ["py13.test"], [strict_origins["tls13"].url], cert, **_strict(pki)),
        site("py12", ["py12.test"], [strict_origins["tls12"].url], cert, **_strict(pki)),
        site("py13-cert", ["py13-cert.test"], [strict_origins["tls13"].url], cert,
             **_strict(pki, origin_client_certificate=client_certs["one"])),
        site("reuse", ["reuse.test"], [nginx.url("reuse")], cert, origin=no_idle, **_strict(pki)),
        site("reuse-pull", ["reuse-pull.test"], [pull], cert, origin=no_idle,
             **_strict(pki, origin_client_certificate=client_certs["one"])),
        site("loop", ["loop.test"], [nginx.url("plain")], cert, origin_tls="flexible", redirect_http=False),
    ]
    edge = Edge(tmp_path_factory.mktemp("pull-edge"), sites, pki.ca_pem)
    edge.start()
    yield edge
    edge.stop()


def _get(edge: Edge, host: str, path: str = "/", scheme: str = "https"):
    with (edge.conn(sni=host) if scheme == "https" else edge.plain_conn()) as c:
        return c.request(target=path, host=host)


def _error_since(edge: Edge, offset: int, pattern: str) -> str:
    return wait_for(lambda: edge.error_text_since(offset) if re.search(pattern, edge.error_text_since(offset), re.I)
                    else None, 5, what=f"{pattern!r} in the error log")


# --- authenticated origin pulls ----------------------------------------------------------------------------------


def test_client_certificate_lets_the_edge_in(pull_edge):
    resp = _get(pull_edge, "one.test")
    assert resp.status == 200
    assert resp.body == b"client=CN=edge-one\n"


def test_each_site_presents_its_own_client_certificate(pull_edge):
    assert _get(pull_edge, "two.test").body == b"client=CN=edge-two\n"
    assert _get(pull_edge, "one.test").body == b"client=CN=edge-one\n"


def test_pool_client_certificate_overrides_the_sites(pull_edge):
    assert _get(pull_edge, "pools.test", "/").body == b"client=CN=edge-one\n"
    assert _get(pull_edge, "pools.test", "/override/x").body == b"client=CN=edge-two\n"


def test_nginx_refuses_an_edge_without_client_certificate(pull_edge, nginx):
    """nginx completes the handshake and answers 400 itself; the edge passes that answer on (it is the origin's)."""
    resp = _get(pull_edge, "none.test")
    assert resp.status == 400
    assert b"No required SSL certificate was sent" in resp.body


def test_nginx_refuses_a_client_certificate_of_another_ca(pull_edge):
    resp = _get(pull_edge, "other-ca.test")
    assert resp.status == 400
    assert b"SSL certificate error" in resp.body
    assert b"edge-other" not in resp.body


@pytest.mark.parametrize("version", ["py13", "py12"])
def test_origin_requiring_a_certificate_in_the_handshake_gives_502_and_the_log_says_why(pull_edge, version):
    """TLS 1.3 origins refuse after the edge's side of the handshake ended (the alert comes with the first read);
    TLS 1.2 ones with a handshake_failure alert. Either way the operator is told about the client certificate."""
    offset = pull_edge.error_log_size()
    resp = _get(pull_edge, f"{version}.test")
    assert resp.status == 502
    assert b"ok" not in resp.body
    text = _error_since(pull_edge, offset, f"site {version}: ")
    line = next(line for line in text.splitlines() if f"site {version}: " in line)
    assert "client certificate" in line, line


def test_strict_origin_accepts_the_edge_with_its_certificate(pull_edge):
    resp = _get(pull_edge, "py13-cert.test")
    assert resp.status == 200
    assert resp.body == b"ok\n"


def _check(edge: Edge) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlsedge", "check", "-c", str(edge.config_path)],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_bad_client_certificate_files_are_refused_with_file_field_and_reason(make_edge, pki, client_certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    mismatched = {"cert": client_certs["one"]["cert"], "key": client_certs["two"]["key"]}
    missing = {"cert": str(tmp_path / "missing.pem"), "key": client_certs["one"]["key"]}
    origin = "https://127.0.0.1:9443"
    sites = [
        site("mismatch", ["mismatch.test"], [origin], pki.good("mismatch.test"),
             **_strict(pki, origin_client_certificate=mismatched)),
        site("missing", ["missing.test"], [origin], pki.good("missing.test"),
             **_strict(pki, origin_client_certificate=missing)),
        site("pool", ["pool.test"], [origin], pki.good("pool.test"), **_strict(pki),
             pool=[{"name": "p", "servers": [origin],
                    "client_certificate": {"cert": str(garbage), "key": client_certs["one"]["key"]}}],
             route=[{"path_prefix": "/p/", "pool": "p"}]),
    ]
    edge = make_edge(sites, start=False)
    r = _check(edge)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    expected = {
        "site[mismatch].origin_client_certificate.key": r"does not match",
        "site[missing].origin_client_certificate.cert": r"missing\.pem",
        "site[pool].pool[p].client_certificate.cert": r"garbage\.pem|PEM|certificate",
    }
    for field, reason in expected.items():
        matching = [line for line in lines if f" {field}: " in line]
        assert matching, f"no problem at {field}:\n{r.stdout}"
        assert matching[0].startswith(f"{edge.config_path.name}: ") or str(edge.config_path) in matching[0]
        assert re.search(reason, matching[0]), matching[0]
    serve = subprocess.run([sys.executable, "-m", "tlsedge", "serve", "-c", str(edge.config_path)],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert serve.returncode == 1
    assert "site[mismatch].origin_client_certificate.key" in serve.stderr
    assert "Traceback" not in serve.stderr + r.stdout + r.stderr


# --- TLS session reuse towards origins --------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "server"), [("reuse.test", "reuse"), ("reuse-pull.test", "pull")])
def test_new_origin_connections_resume_the_tls_session(pull_edge, nginx, host, server):
    port = str(nginx.ports[server])
    for i in range(3):
        resp = _get(pull_edge, host, f"/reuse-{i}")
        assert resp.status == 200

    def logged() -> list[str]:
        return [line for line in nginx.access_lines() if line.startswith(port + " ") and " /reuse-" in line]

    # nginx writes its log line after the response went out: wait for the third one.
    wait_for(lambda: len(logged()) >= 3, 5, what="three nginx access log lines")
    lines = logged()
    assert len(lines) == 3, lines
    reused = [re.search(r"reused=(\S)", line).group(1) for line in lines]
    assert reused == [".", "r", "r"], lines  # the first connection is new, the next ones resume its session
    if server == "pull":
        assert all('client="CN=edge-one"' in line for line in lines), lines  # still authenticated when resumed


# --- flexible redirect loop ---------------------------------------------------------------------------------------


def test_flexible_origin_redirecting_to_itself_gets_a_502_that_names_the_fix(pull_edge):
    offset = pull_edge.error_log_size()
    resp = _get(pull_edge, "loop.test", "/account?tab=1")
    assert resp.status == 502
    body = resp.body.decode()
    assert "origin_tls" in body
    assert "full" in body and "strict" in body
    assert resp.header("location") is None
    text = _error_since(pull_edge, offset, r"site loop")
    line = next(line for line in text.splitlines() if "site loop" in line)
    assert "https://loop.test/account?tab=1" in line
    assert "origin_tls = 'full' or 'strict'" in line


@pytest.mark.parametrize(("path", "location"), [
    ("/moved/page", "https://loop.test/new-place"),
    ("/elsewhere/page", "https://other.example/elsewhere/page"),
])
def test_flexible_origin_redirect_to_another_url_passes(pull_edge, path, location):
    resp = _get(pull_edge, "loop.test", path)
    assert resp.status in (301, 302)
    assert resp.header("location") == location


def test_same_redirect_on_the_plain_listener_is_not_a_loop(pull_edge):
    resp = _get(pull_edge, "loop.test", "/account?tab=1", scheme="http")
    assert resp.status == 301
    assert resp.header("location") == "https://loop.test/account?tab=1"
