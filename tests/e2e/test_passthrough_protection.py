"""Protection of pass-through sites (issue 7), which must work without the plaintext: per-address connection limits,
site IP rules, JA4 deny lists, idle and total timeouts, and backpressure on a tunnel whose client reads slowly.

A refused client gets its connection closed before any byte comes back (no ServerHello: the origin never saw it).
127.0.0.1 is on the edge-wide allow list, which skips the per-address limits (the harness probes the edge from it);
clients play other addresses of 127/8.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from e2e_support import ConnClosed, RawConn, RssSampler, wait_for
from guard_support import EdgeFactory, GuardEdge, plain_site, refused_at_accept, with_certificate
from passthrough_support import (
    NginxTlsOrigin,
    OriginPki,
    address,
    passthrough_site,
    s_client,
    small_window_client,
    wait_tunnels,
)

BIG = 20 * 1024 * 1024
WARM = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def origin_pki(tmp_path_factory) -> OriginPki:
    return OriginPki(tmp_path_factory.mktemp("origin-pki"))


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, origin_pki) -> Iterator[NginxTlsOrigin]:
    made = NginxTlsOrigin(tmp_path_factory.mktemp("pt-nginx"), origin_pki)
    yield made
    made.stop()


@pytest.fixture(scope="module")
def digests(nginx) -> dict[str, str]:
    return {"big.bin": nginx.add_file("big.bin", BIG), "warm.bin": nginx.add_file("warm.bin", WARM)}


def protected_sites(nginx: NginxTlsOrigin, py_origin, pki, deny_ja4: list[str] | None = None) -> list[dict]:
    tls = [address(nginx.tls)]
    fp_rules = {"ip_rules": {"deny_ja4": deny_ja4}} if deny_ja4 else {}
    return [
        with_certificate(plain_site(py_origin, "blog"), pki),
        passthrough_site("vault", ["vault.example"], tls, ip_rules={"deny": ["127.0.0.2/32"]}),
        passthrough_site("idle", ["idle.tunnel.example"], tls, passthrough={"idle_timeout": "1s"}),
        passthrough_site("brief", ["brief.tunnel.example"], tls,
                         passthrough={"idle_timeout": "1s", "max_duration": "2s"}),
        passthrough_site("fp", ["fp.tunnel.example"], tls, **fp_rules),
    ]


@pytest.fixture(scope="module")
def factory(tmp_path_factory, pki) -> Iterator[EdgeFactory]:
    made = EdgeFactory(tmp_path_factory.mktemp("pt-protect"), pki.ca_pem)
    yield made
    made.close()


@pytest.fixture(scope="module")
def edge(factory, nginx, py_origin, pki) -> GuardEdge:
    return factory(protected_sites(nginx, py_origin, pki), top={"ip_rules": {"allow": ["127.0.0.1"]}}, https=True,
                   workers=1, limits={"max_connections_per_ip": 2, "connection_rate_per_ip": "1/m",
                                      "connection_burst_per_ip": 6})


def tunnel(edge: GuardEdge, ca_pem, host: str = "vault.example", source: str | None = None) -> RawConn:
    """A TLS session with the origin through the edge (handshake done)."""
    return RawConn(edge.https_port, sni=host, ca_pem=ca_pem, source=source, timeout=5)


def refused(edge: GuardEdge, source: str, host: str = "vault.example") -> bool:
    return refused_at_accept(edge.https_port, source, host)


# --- per-address limits -----------------------------------------------------------------------------------------------


def test_max_connections_per_ip(edge, origin_pki, nginx) -> None:
    src = "127.0.0.5"
    held = [tunnel(edge, origin_pki.ca_pem, source=src) for _ in range(2)]
    try:
        for conn in held:
            assert conn.request("GET", "/", "vault.example").body == NginxTlsOrigin.INDEX
        accepted = nginx.accepted()
        assert refused(edge, src)
        assert nginx.accepted() == accepted, "a refused connection reached the origin"
        with tunnel(edge, origin_pki.ca_pem, source="127.0.0.6") as other:
            assert other.request("GET", "/", "vault.example").status == 200
        held.pop().close()  # the tunnel ends: its count is given back
        held.append(wait_for(lambda: tunnel(edge, origin_pki.ca_pem, source=src), 3, interval=0.2,
                             what="the closed tunnel's count to be given back"))
        assert held[-1].request("GET", "/", "vault.example").status == 200
    finally:
        for conn in held:
            conn.close()


def test_connection_rate_per_ip(edge) -> None:
    """Burst 6 at 1/min: six tunnels one after the other (each ended before the next, so the concurrency limit of 2
    is not what refuses), then the seventh is refused."""
    src = "127.0.0.9"
    for n in range(1, 7):
        assert not refused(edge, src), f"connection {n} refused"
        wait_tunnels(edge, "vault", n, client=src)
    assert refused(edge, src)
    assert not refused(edge, "127.0.0.10")


# --- site rules -------------------------------------------------------------------------------------------------------


def test_site_ip_rules_deny(edge, origin_pki, nginx) -> None:
    accepted = nginx.accepted()
    assert refused(edge, "127.0.0.2")
    assert nginx.accepted() == accepted
    with tunnel(edge, origin_pki.ca_pem, source="127.0.0.3") as allowed:
        assert allowed.request("GET", "/", "vault.example").body == NginxTlsOrigin.INDEX
    # A rule of the vault site: the same address still reaches the other sites of the listener.
    assert not refused(edge, "127.0.0.2", "idle.tunnel.example")
    with RawConn(edge.https_port, sni="blog.example", ca_pem=edge.ca_pem, source="127.0.0.2", timeout=5) as blog:
        assert blog.request("GET", "/", "blog.example").status == 200


def test_deny_ja4_from_the_access_log(edge, factory, nginx, py_origin, pki, origin_pki) -> None:
    """An operator copies the JA4 of a client from the access log into deny_ja4 and reloads: that client is refused
    right after its ClientHello, while openssl (another fingerprint) still gets through."""
    src = "127.0.0.20"
    assert not refused(edge, src, "fp.tunnel.example")
    assert s_client(edge.https_port, "fp.tunnel.example", origin_pki.ca_pem, "-verify_return_error",
                    host="fp.tunnel.example").returncode == 0
    python_line = wait_tunnels(edge, "fp", 1, client=src)[0]
    openssl_line = wait_tunnels(edge, "fp", 1, client="127.0.0.1")[0]
    assert python_line["ja4"] != openssl_line["ja4"]
    denied = python_line["ja4"]
    edge.reload(protected_sites(nginx, py_origin, pki, deny_ja4=[denied]))
    wait_for(lambda: "reloaded:" in edge.error_text(), 10, what="the reload")
    # Each probe from its own address: probes that reach a worker of the old generation must not use up the
    # connection rate of ``src``, which would refuse it for another reason.
    probes = (f"127.0.1.{n}" for n in range(1, 255))
    wait_for(lambda: refused(edge, next(probes), "fp.tunnel.example"), 10, what="the fingerprint to be refused")
    accepted = nginx.accepted()
    assert refused(edge, src, "fp.tunnel.example")
    assert nginx.accepted() == accepted, "a refused fingerprint reached the origin"
    assert not refused(edge, src, "vault.example"), "deny_ja4 of the fp site applied to another site"
    done = s_client(edge.https_port, "fp.tunnel.example", origin_pki.ca_pem, "-verify_return_error",
                    host="fp.tunnel.example")
    assert done.returncode == 0 and b"HTTP/1.1 200 OK" in done.stdout
    assert f"JA4 {denied} is on a deny list" in edge.error_text()


# --- timeouts ---------------------------------------------------------------------------------------------------------


def test_idle_timeout_closes_a_silent_tunnel(edge, origin_pki) -> None:
    with tunnel(edge, origin_pki.ca_pem, "idle.tunnel.example", source="127.0.0.30") as conn:
        assert conn.request("GET", "/", "idle.tunnel.example").status == 200
        start = time.monotonic()
        assert conn.read_to_eof(timeout=4) == b""
        took = time.monotonic() - start
    assert 0.9 <= took <= 2.5, took
    (line,) = wait_tunnels(edge, "idle", 1, client="127.0.0.30")
    assert line["end"] == "idle_timeout"


def test_max_duration_closes_a_busy_tunnel(edge, origin_pki) -> None:
    conn = tunnel(edge, origin_pki.ca_pem, "brief.tunnel.example", source="127.0.0.31")
    start = time.monotonic()
    answered = 0
    try:
        while time.monotonic() - start < 5:
            try:
                if conn.request("GET", "/", "brief.tunnel.example").status == 200:
                    answered += 1
            except (OSError, AssertionError, ConnClosed):
                break
            time.sleep(0.2)
    finally:
        conn.close()
    took = time.monotonic() - start
    assert answered >= 7 and 1.9 <= took <= 3.3, (answered, took)
    (line,) = wait_tunnels(edge, "brief", 1, client="127.0.0.31")
    assert line["end"] == "max_duration"


# --- backpressure -----------------------------------------------------------------------------------------------------


def download(edge: GuardEdge, origin_pki, name: str, size: int, slow_for: float = 0.0) -> tuple[str, int]:
    """GET /name through the vault tunnel with a 64 KiB receive window, reading 16 KiB every 10 ms for ``slow_for``
    seconds, then as fast as possible; the body's SHA-256 and length."""
    sock = small_window_client(edge.https_port, "vault.example", origin_pki.ca_pem, rcvbuf=64 * 1024)
    with sock:
        sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: vault.example\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(16384)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {size}".encode() in head, head
        digest = hashlib.sha256(body)
        got = len(body)
        slow_until = time.monotonic() + slow_for
        while got < size:
            chunk = sock.recv(16384 if time.monotonic() < slow_until else 1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
            if time.monotonic() < slow_until:
                time.sleep(0.01)
    return digest.hexdigest(), got


def test_slow_reader_backpressure(edge, origin_pki, digests) -> None:
    assert download(edge, origin_pki, "warm.bin", WARM) == (digests["warm.bin"], WARM)  # the worker's buffers exist
    workers = edge.worker_pids()
    assert workers
    with RssSampler(workers) as rss:
        result = download(edge, origin_pki, "big.bin", BIG, slow_for=2.0)
    assert result == (digests["big.bin"], BIG)
    assert rss.growth_kib < 4 * 1024, f"the worker grew by {rss.growth_kib} KiB while a client read slowly"
