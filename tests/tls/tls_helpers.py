"""Helpers shared by the TLS tests: configs built directly from the schema, servers in subprocesses, s_client."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tlsedge.config.schema import CertificateFiles, Config, Origin, PoolConfig, PoolServer, ServerConfig, SiteConfig

SERVE = Path(__file__).with_name("serve_tls.py")


@dataclass
class Certs:
    ca_pem: Path
    blog_ecdsa: CertificateFiles
    blog_rsa: CertificateFiles
    api: CertificateFiles


def make_config(state_dir: Path, certs: Certs, default_site: str | None) -> Config:
    """Sites: blog (ECDSA + RSA, exact + wildcard), api (ECDSA), plain (no certificate)."""
    origin = (PoolConfig("default", (PoolServer(Origin("http", "127.0.0.1", 9)),), "flexible"),)
    sites = (
        SiteConfig(
            "blog", ("blog.example", "*.blog.example"), (certs.blog_ecdsa, certs.blog_rsa), (origin,), "flexible"
        ),
        SiteConfig("api", ("api.example",), (certs.api,), (origin,), "flexible"),
        SiteConfig("plain", ("plain.example",), (), (origin,), "flexible"),
    )
    server = ServerConfig(state_dir=state_dir, workers=1, https=(), http=(), default_site=default_site)
    return Config(path=state_dir / "tlsedge.toml", server=server, sites=sites)


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[str]


def start_server(config: Config, state_dir: Path, work: Path, scramble: str = "") -> Server:
    """Start ``serve_tls.py`` (its ticket key comes from ``state_dir``); returns once it listens."""
    pickled = work / f"config-{id(config)}-{scramble}.pickle"
    pickled.write_bytes(pickle.dumps(config))
    args = [sys.executable, str(SERVE), str(pickled), str(state_dir)] + ([scramble] if scramble else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"test server did not start (exit {proc.wait()})")
    return Server(int(line), proc)


def s_client(port: int, *args: str, servername: str | None = "blog.example", stdin: str = "bye\n") -> str:
    """Run ``openssl s_client`` against 127.0.0.1:port; return stdout+stderr (the handshake report and the data).

    ``-ign_eof`` keeps it reading until the server closes (our server closes on "bye"), so TLS 1.3 tickets, sent
    after the handshake, are always received before it exits.
    """
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof"]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    result = subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True, timeout=10)
    return result.stdout + result.stderr
