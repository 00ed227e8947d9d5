"""Fixtures for TLS tests: a local CA and per-run certificates, and TLS servers in subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tls_helpers import Certs, Server, start_server

from tlsedge.config.schema import CertificateFiles, Config
from tlsedge.pki.local_ca import LocalCA


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalCA, Path]:
    d = tmp_path_factory.mktemp("ca")
    ca = LocalCA.create()
    ca.save(d / "ca.pem", d / "ca.key")
    return ca, d / "ca.pem"


@pytest.fixture(scope="session")
def certs(local_ca: tuple[LocalCA, Path], tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca, ca_pem = local_ca
    d = tmp_path_factory.mktemp("certs")

    def issue(name: str, names: list[str], key_type: str) -> CertificateFiles:
        files = CertificateFiles(d / f"{name}.pem", d / f"{name}.key")
        ca.issue(names, key_type=key_type).write(files.cert, files.key)
        return files

    return Certs(
        ca_pem=ca_pem,
        blog_ecdsa=issue("blog-ec", ["blog.example", "*.blog.example"], "ecdsa"),
        blog_rsa=issue("blog-rsa", ["blog.example", "*.blog.example"], "rsa"),
        api=issue("api", ["api.example"], "ecdsa"),
    )


ServerFactory = Callable[..., Server]


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``start(config, state_dir, scramble="")``; every server started is stopped at module teardown."""
    servers: list[Server] = []
    work = tmp_path_factory.mktemp("servers")

    def start(config: Config, state_dir: Path, scramble: str = "") -> Server:
        server = start_server(config, state_dir, work, scramble)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.proc.terminate()
    for server in servers:
        server.proc.wait(timeout=5)
