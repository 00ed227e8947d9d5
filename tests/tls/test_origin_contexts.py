"""Origin TLS modes against real TLS servers holding good, wrong-name, expired and self-signed certificates.

Connections are made the way the edge makes them: uvloop ``create_connection(ssl=ctx, server_hostname=name)``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvloop

from tlsedge.config.schema import Config, Origin, PoolConfig, PoolServer, ServerConfig, SiteConfig
from tlsedge.pki.local_ca import IssuedCert, LocalCA, self_signed
from tlsedge.tls.server import TlsSetupError
from tlsedge.upstream.tls import describe_tls_failure, origin_server_name, origin_ssl_context, origin_ssl_contexts


@dataclass
class OriginServer:
    """A blocking TLS server in a thread: greets with b"ok", records the SNI and ALPN it saw."""

    port: int
    cert_path: Path | None
    seen_sni: list[str | None] = field(default_factory=list)
    seen_alpn: list[str | None] = field(default_factory=list)


def serve(cert: IssuedCert | None, tmp: Path, name: str) -> Iterator[OriginServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = OriginServer(listener.getsockname()[1], tmp / f"{name}.pem" if cert else None)
    ctx = None
    if cert is not None:
        cert.write(tmp / f"{name}.pem", tmp / f"{name}.key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}.key")
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = lambda _obj, sni, _ctx: server.seen_sni.append(sni)

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                if ctx is None:  # a plain HTTP server on the port where TLS is expected
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    conn.close()
                    continue
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    server.seen_alpn.append(tls.selected_alpn_protocol())
                    tls.sendall(b"ok")
                    tls.recv(10)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
    listener.close()
    thread.join(timeout=5)


NAMES = ["origin.example", "127.0.0.1"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalCA, Path]:
    d = tmp_path_factory.mktemp("origin-ca")
    ca = LocalCA.create("origin test CA")
    ca.save(d / "ca.pem", d / "ca.key")
    return ca, d / "ca.pem"


@pytest.fixture(scope="module")
def origins(ca: tuple[LocalCA, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OriginServer]]:
    tmp = tmp_path_factory.mktemp("origins")
    now = datetime.now(UTC)
    certs: dict[str, IssuedCert | None] = {
        "good": ca[0].issue(NAMES),
        "wrong-name": ca[0].issue(["other.example"]),
        "expired": ca[0].issue(NAMES, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
        "self-signed": self_signed(NAMES),
        "plain-http": None,
    }
    gens = {name: serve(cert, tmp, name) for name, cert in certs.items()}
    yield {name: next(gen) for name, gen in gens.items()}
    for gen in gens.values():
        next(gen, None)


def site(mode: str, ca_pem: Path | None = None, server_name: str | None = "origin.example") -> PoolConfig:
    """A pool with one origin server in the given mode (the TLS settings live on pools)."""
    return PoolConfig(
        "default",
        (PoolServer(Origin("https", "127.0.0.1", 1)),),
        mode,  # type: ignore[arg-type]
        origin_ca=ca_pem,
        origin_server_name=server_name,
    )


def connect(site_config: PoolConfig, port: int) -> str:
    """Connect as the edge does; return "ok" or the described failure."""
    origin = Origin("https", "127.0.0.1", port)
    ctx = origin_ssl_context(site_config)
    assert ctx is not None

    async def go() -> str:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    origin.host, origin.port, ssl=ctx, server_hostname=origin_server_name(site_config, origin)
                ),
                timeout=5,
            )
        except (ssl.SSLError, OSError) as exc:
            return describe_tls_failure(exc)
        data = await reader.read(2)
        writer.close()
        return data.decode()

    return uvloop.run(go())


EXPECTED = {
    "good": "ok",
    "wrong-name": "origin certificate rejected: Hostname mismatch, certificate is not valid for 'origin.example'",
    "expired": "origin certificate rejected: certificate has expired",
    "self-signed": "origin certificate rejected: self-signed certificate",
    "plain-http": "TLS handshake with origin failed: the origin does not speak TLS on this port (plain HTTP?)",
}


@pytest.mark.parametrize("cert", list(EXPECTED))
def test_strict_with_origin_ca(origins: dict[str, OriginServer], ca: tuple[LocalCA, Path], cert: str) -> None:
    assert connect(site("strict", ca[1]), origins[cert].port) == EXPECTED[cert]


def test_strict_can_pin_a_self_signed_origin(origins: dict[str, OriginServer]) -> None:
    pinned = origins["self-signed"].cert_path
    assert connect(site("strict", pinned), origins["self-signed"].port) == "ok"
    assert connect(site("strict", pinned), origins["good"].port).startswith("origin certificate rejected: ")


def test_strict_without_origin_ca_uses_system_roots_only(origins: dict[str, OriginServer]) -> None:
    assert connect(site("strict"), origins["good"].port) == (
        "origin certificate rejected: unable to get local issuer certificate"
    )


@pytest.mark.parametrize("cert", ["good", "wrong-name", "expired", "self-signed"])
def test_full_accepts_any_certificate(origins: dict[str, OriginServer], cert: str) -> None:
    assert connect(site("full"), origins[cert].port) == "ok"
    assert origins[cert].seen_sni[-1] == "origin.example"  # SNI is still sent
    assert origins[cert].seen_alpn[-1] == "http/1.1"


def test_full_to_plain_http_port(origins: dict[str, OriginServer]) -> None:
    assert connect(site("full"), origins["plain-http"].port) == EXPECTED["plain-http"]


def test_strict_ip_origin_verified_against_ip_san_without_sni(
    origins: dict[str, OriginServer], ca: tuple[LocalCA, Path]
) -> None:
    ip_site = site("strict", ca[1], server_name=None)
    assert origin_server_name(ip_site, Origin("https", "127.0.0.1", 1)) == "127.0.0.1"
    assert connect(ip_site, origins["good"].port) == "ok"
    assert origins["good"].seen_sni[-1] is None  # Python never sends an IP as SNI
    assert connect(ip_site, origins["wrong-name"].port) == (
        "origin certificate rejected: IP address mismatch, certificate is not valid for '127.0.0.1'"
    )


def test_flexible_and_plain_origins_have_no_tls() -> None:
    assert origin_ssl_context(site("flexible")) is None
    assert origin_server_name(site("flexible"), Origin("https", "a.example", 443)) is None
    assert origin_server_name(site("strict"), Origin("http", "a.example", 80)) is None
    assert origin_server_name(site("strict", server_name=None), Origin("https", "a.example", 443)) == "a.example"
    assert origin_server_name(site("full", server_name=None), Origin("https", "::1", 443)) == "::1"


def test_context_settings() -> None:
    full = origin_ssl_context(site("full"))
    strict = origin_ssl_context(site("strict"))
    assert full is not None and strict is not None
    assert full.verify_mode == ssl.CERT_NONE and not full.check_hostname
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    for ctx in (full, strict):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unusable_origin_ca(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    sites = tuple(
        SiteConfig(name, (f"{name}.example",), (), (pool,), pool.origin_tls)
        for name, pool in (
            ("a", site("strict", tmp_path / "missing.pem")),
            ("b", site("strict", tmp_path / "bad.pem")),
            ("c", site("full")),
        )
    )
    config = Config(tmp_path / "tlsedge.toml", ServerConfig(tmp_path, 1, (), ()), sites)
    with pytest.raises(TlsSetupError) as info:
        origin_ssl_contexts(config)
    problems = info.value.problems
    assert [(p.site, p.field, p.file) for p in problems] == [
        ("a", "site[a].pool[default].origin_ca", config.path),
        ("b", "site[b].pool[default].origin_ca", config.path),
    ]
    assert "missing.pem" in problems[0].reason and "No such file" in problems[0].reason
    assert "bad.pem" in problems[1].reason


def test_describe_other_failures() -> None:
    assert describe_tls_failure(TimeoutError()) == "TLS handshake with origin timed out"
    assert "Connection reset" in describe_tls_failure(ConnectionResetError(104, "Connection reset by peer"))
    err = ssl.SSLError(1, "[SSL: TLSV1_ALERT_INTERNAL_ERROR] tlsv1 alert internal error")
    err.reason = "TLSV1_ALERT_INTERNAL_ERROR"  # type: ignore[misc]
    assert describe_tls_failure(err) == "TLS handshake with origin failed: the origin sent alert 'internal error'"
