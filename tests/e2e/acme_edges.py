"""An edge whose sites take their certificates over ACME from a test CA (pebble or MiniAcme), and the client checks
the ACME tests share: what certificate a site serves, verified against the CA's root only."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from e2e_support import Edge, _toml_value, site


def acme_site(name: str, hosts: list[str], origin: str, **acme: Any) -> dict[str, Any]:
    return site(name, hosts, [origin], certificate={"acme": True, **acme})


def acme_edge(tmp: Path, sites: list[dict[str, Any]], ca_pem: Path, acme: dict[str, Any], **server: Any) -> Edge:
    """An Edge (not started) whose config has an ``[acme]`` table; its ports are known before the CA starts."""
    edge = Edge(tmp, sites, ca_pem, **server)
    edge.acme = acme  # type: ignore[attr-defined]
    edge.config_text = lambda: _with_acme(edge)  # type: ignore[method-assign]
    edge.write_config()
    return edge


def _with_acme(edge: Edge) -> str:
    from e2e_support import to_toml

    lines = ["[acme]", *(f"{k} = {_toml_value(v)}" for k, v in edge.acme.items()), ""]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n" + to_toml(edge.server, edge.sites)


def served_certificate(port: int, name: str, *, cadata: str | None = None, timeout: float = 5.0) -> x509.Certificate:
    """The leaf a client asking for ``name`` gets. With ``cadata`` the handshake must verify against it alone."""
    ctx = ssl.create_default_context(cadata=cadata) if cadata else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def issuer_cn(cert: x509.Certificate) -> str:
    attrs = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.issuer.rfc4514_string()


def wait_for_issuer(port: int, name: str, issuer_part: str, timeout: float) -> x509.Certificate:
    """Poll until ``name`` is served a certificate whose issuer CN contains ``issuer_part``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = served_certificate(port, name)
            if issuer_part in issuer_cn(last):
                return last
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.2)
    seen = issuer_cn(last) if last is not None else "no handshake"
    raise AssertionError(f"{name} was not served a certificate from {issuer_part!r} within {timeout}s (last: {seen})")


def tlsedge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlsedge", *args], capture_output=True, text=True, timeout=timeout)


def certs_rows(edge: Edge) -> dict[str, dict[str, Any]]:
    result = tlsedge("certs", "-c", str(edge.config_path), "--json")
    assert result.returncode == 0, result.stderr
    return {row["site"]: row for row in json.loads(result.stdout)}
