"""The demo is the README's first command: it must really work, end to end, on free ports.

``test_demo_smoke`` runs ``tlsedge demo --smoke`` exactly as a user would (a subprocess with its own state
directory): a local CA, two demo origins, the edge, the printed curl lines run by curl itself, then a clean stop. The
smaller tests pin the pieces (echo origin, CA reuse, generated config) so a failure of the big one is easier to place.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from cryptography import x509

from tlsedge.demo.run import DemoFiles, DemoPorts, config_text, curl_checks, port_in_use, prepare_pki
from tlsedge.pki.local_ca import LocalCA

NO_PROXY_ENV = {
    k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all bound at once, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def demo_command(state_dir: str, https: int, http: int, blog: int, shop: int) -> list[str]:
    """``tlsedge demo --smoke`` as a user runs it, on the given ports."""
    ports = {"--https-port": https, "--http-port": http, "--blog-origin-port": blog, "--shop-origin-port": shop}
    argv = [sys.executable, "-m", "tlsedge", "demo", "--smoke", "--state-dir", state_dir]
    return argv + [str(x) for option in ports.items() for x in option]


@pytest.mark.timeout(240)
def test_demo_smoke(tmp_path: Path) -> None:
    https, http, blog, shop = free_ports(4)
    argv = demo_command("state", https, http, blog, shop)
    run = subprocess.run(
        argv, cwd=tmp_path, env=NO_PROXY_ENV, capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL
    )
    out = run.stdout
    assert run.returncode == 0, f"demo --smoke failed (exit {run.returncode})\nstdout:\n{out}\nstderr:\n{run.stderr}"

    # The lines a user pastes, with the CA path relative to where they ran the demo.
    ca = "--cacert state/demo/ca.pem"
    for line in (
        f"curl {ca} --resolve blog.example:{https}:127.0.0.1 https://blog.example:{https}/",
        f"curl {ca} --resolve www.blog.example:{https}:127.0.0.1 https://www.blog.example:{https}/",
        f"curl {ca} --resolve shop.example:{https}:127.0.0.1 https://shop.example:{https}/",
        f"curl -i --resolve blog.example:{http}:127.0.0.1 'http://blog.example:{http}/hello?from=http'",
    ):
        assert line in out, f"missing printed line {line!r} in:\n{out}"
    results = [line.split()[:2] for line in out.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert results == [["ok", "200"], ["ok", "200"], ["ok", "200"], ["ok", "403"], ["ok", "200"], ["ok", "308"]], out

    # Everything was stopped: no child still holds a port.
    for port in (https, http, blog, shop):
        assert not port_in_use(port), f"port {port} still in use after the demo ended"
    assert (tmp_path / "state/demo/tlsedge.toml").is_file()


def test_demo_refuses_busy_port(tmp_path: Path) -> None:
    https, http, blog, shop = free_ports(4)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", https))
        busy.listen()
        run = subprocess.run(
            demo_command(str(tmp_path), https, http, blog, shop),
            env=NO_PROXY_ENV,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert run.returncode == 1
    assert f"--https-port {https}" in run.stderr


def test_pki_reuses_ca_and_issues_verifiable_leaves(tmp_path: Path) -> None:
    files = DemoFiles(tmp_path / "demo")
    messages: list[str] = []
    prepare_pki(files, messages.append)
    first_ca = files.ca_cert.read_bytes()
    prepare_pki(files, messages.append)
    assert files.ca_cert.read_bytes() == first_ca, "the CA must survive reruns (users may have trusted it)"
    assert messages == []
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    ca = LocalCA.load(files.ca_cert, files.ca_key)
    assert ca.cert_pem == first_ca
    for name in ("blog", "shop", "origin-shop"):
        cert, key = files.cert(name)
        x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(ca.cert)
        assert key.stat().st_mode & 0o777 == 0o600


def test_config_is_valid_toml_with_the_demo_sites() -> None:
    ports = DemoPorts(1443, 1080, 1900, 1944)
    doc = tomllib.loads(config_text(ports))
    assert doc["server"]["https"] == ["127.0.0.1:1443"]
    assert doc["server"]["http"] == ["127.0.0.1:1080"]
    blog, shop = doc["site"]
    assert blog["hosts"] == ["blog.example", "*.blog.example"]
    assert blog["origins"] == ["http://127.0.0.1:1900"]
    assert blog["origin_tls"] == "flexible"
    assert shop["origins"] == ["https://127.0.0.1:1944"]
    assert (shop["origin_tls"], shop["origin_ca"], shop["origin_server_name"]) == (
        "strict",
        "ca.pem",
        "origin.shop.example",
    )


def test_curl_lines_expectations(tmp_path: Path) -> None:
    checks = curl_checks(DemoFiles(tmp_path / "demo"), DemoPorts(1443, 1080, 1900, 1944))
    assert [c.status for c in checks] == [200, 200, 200, 403, 200, 308]
    assert [c.origin for c in checks] == ["blog", "blog", "blog", None, "shop", None]
    assert checks[5].location == "https://blog.example:1443/hello?from=http"


# -- the echo origin ---------------------------------------------------------------------------------------------------


@pytest.fixture
def origin_factory(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        assert proc.returncode == 0, "the demo origin must exit cleanly on SIGTERM"


def start_origin(procs: list[subprocess.Popen[bytes]], port: int, *extra: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsedge.demo.origin", "--listen", f"127.0.0.1:{port}", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "demo origin exited while starting"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("demo origin did not start listening within 15s")


def exchange(sock: socket.socket, request: bytes) -> tuple[bytes, dict[str, object]]:
    """Send one request, read one Content-Length-framed response: (head, parsed JSON body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "origin closed before answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.partition(b":")[::2] for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, json.loads(body)


def test_origin_echoes_forwarding_headers_with_keep_alive(origin_factory: list[subprocess.Popen[bytes]]) -> None:
    (port,) = free_ports(1)
    start_origin(origin_factory, port, "--name", "blog")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head, seen = exchange(
            sock,
            b"POST /p?q=1 HTTP/1.1\r\nHost: blog.example\r\nX-Forwarded-For: 192.0.2.7\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: blog.example\r\nVia: 1.1 tlsedge\r\n"
            b"Content-Length: 5\r\n\r\nhello",
        )
        assert head.startswith(b"HTTP/1.1 200 ")
        expected = {
            "origin": "blog",
            "method": "POST",
            "path": "/p?q=1",
            "host": "blog.example",
            "x-forwarded-for": "192.0.2.7",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "blog.example",
            "via": "1.1 tlsedge",
            "received_over": "plain TCP",
            "body_bytes": 5,
        }
        assert {k: seen.get(k) for k in expected} == expected
        _, again = exchange(sock, b"GET /second HTTP/1.1\r\nHost: blog.example\r\n\r\n")  # same connection
        assert again["path"] == "/second"
        assert again["x-forwarded-for"] is None


def test_origin_over_tls_verifies_as_origin_shop_example(
    tmp_path: Path, origin_factory: list[subprocess.Popen[bytes]]
) -> None:
    files = DemoFiles(tmp_path / "demo")
    prepare_pki(files, print)
    cert, key = files.cert("origin-shop")
    (port,) = free_ports(1)
    start_origin(origin_factory, port, "--name", "shop", "--tls-cert", str(cert), "--tls-key", str(key))
    ctx = ssl.create_default_context(cafile=files.ca_cert)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="origin.shop.example") as sock,
    ):
        _, seen = exchange(sock, b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert seen["origin"] == "shop"
    assert str(seen["received_over"]).startswith("TLSv1.")
