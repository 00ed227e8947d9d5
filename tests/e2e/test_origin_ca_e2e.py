"""The origin CA through a real edge and a real nginx: certificates issued from CSRs made by ``openssl req`` on "the
origin", trusted by strict sites with no ``origin_ca``; revocation refused by the edge; authenticated origin pulls
with the CA's per-site client certificates, checked by nginx against ``tlsedge ca show`` and ``tlsedge ca crl``.

The CLI runs in-process through the commands' own parsers (the same code ``tlsedge ca|origin-cert`` runs)."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from e2e_support import Edge, free_port, site, start_nginx, stop_process, wait_for, write_nginx_conf

from tlsedge.commands.origin_ca import register

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            return 200 "{body}\\n";
        }}
    }}
"""

# Authenticated origin pulls exactly as docs/origin-ca.md shows them (files from `tlsedge ca show` / `ca crl`).
NGINX_PULL = """\
    map $ssl_client_s_dn $tlsedge_site {{
        default "";
        "CN=tlsedge edge for site pulls" pulls;
        "CN=tlsedge edge for site auto" auto;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_verify_client on;
        ssl_client_certificate {root};
        ssl_crl {crl};
        location / {{
            if ($tlsedge_site = "") {{
                return 403 "not an edge of an allowed site\\n";
            }}
            return 200 "client=$ssl_client_s_dn\\n";
        }}
    }}
"""

STRICT = {"origin_tls": "strict", "origin_server_name": "origin.test", "origin": {"max_idle": 0}}


def tlsedge(config: Path, *argv: str) -> str:
    """Run ``tlsedge <group> <command> -c config ...``; its stdout (it must succeed)."""
    parser = argparse.ArgumentParser(prog="tlsedge")
    register(parser.add_subparsers(dest="command", required=True))
    group, command, *rest = argv
    args = parser.parse_args([group, command, "-c", str(config), *rest])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = args.func(args)
    assert code == 0, err.getvalue()
    return out.getvalue()


def serial_of(pem_file: Path) -> str:
    return f"{x509.load_pem_x509_certificate(pem_file.read_bytes()).serial_number:x}"


@dataclass
class Setup:
    edge: Edge
    files: Path
    ports: dict[str, int]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pki) -> Iterator[Setup]:
    files = tmp_path_factory.mktemp("origin-ca-files")
    ports = {name: free_port() for name in ("trust", "rev-reload", "rev-live", "pull")}
    names = ["trust", "rev-reload", "rev-live", "pulls", "intruder", "gone", "nocert"]
    cert = pki.good(*(f"{n}.test" for n in names))

    def strict_site(name: str, port: str, **extra: Any) -> dict[str, Any]:
        return site(name, [f"{name}.test"], [f"https://127.0.0.1:{ports[port]}"], cert, **STRICT, **extra)

    # The CLI finds the store through the edge's configuration: start with sites that need no CA files.
    edge = Edge(tmp_path_factory.mktemp("origin-ca-edge"), [strict_site(n, "trust") for n in names], pki.ca_pem)
    config = edge.config_path
    tlsedge(config, "ca", "init")
    (files / "root.pem").write_text(tlsedge(config, "ca", "show"))
    for name in ("trust", "rev-reload", "rev-live"):
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(files / f"{name}.key"), "-out", str(files / f"{name}.csr"),
                        "-subj", "/CN=origin.test"], check=True, capture_output=True, timeout=30)
        tlsedge(config, "origin-cert", "issue", "--csr", str(files / f"{name}.csr"), "--host", "origin.test",
                "--days", "30", "--out", str(files / f"{name}-issued"))
    for name in ("pulls", "intruder", "gone"):
        tlsedge(config, "origin-cert", "client", "--site", name, "--out", str(files / f"client-{name}"))
    tlsedge(config, "origin-cert", "revoke", serial_of(files / "client-gone.pem"))  # the file keeps the revoked one
    (files / "crl.pem").write_text(tlsedge(config, "ca", "crl"))

    http = "".join(
        NGINX_SERVER.format(port=ports[name], cert=files / f"{name}-issued.pem", key=files / f"{name}.key",
                            body=f"{name} origin")
        for name in ("trust", "rev-reload", "rev-live")
    ) + NGINX_PULL.format(port=ports["pull"], cert=files / "trust-issued.pem", key=files / "trust.key",
                          root=files / "root.pem", crl=files / "crl.pem")
    prefix = tmp_path_factory.mktemp("origin-ca-nginx")
    nginx = start_nginx(prefix, write_nginx_conf(prefix, http), ports.values())

    def pull(name: str, client: str | None) -> dict[str, Any]:
        files_table = {"cert": str(files / f"client-{client}.pem"), "key": str(files / f"client-{client}.key")}
        return strict_site(name, "pull", **({"origin_client_certificate": files_table} if client else {}))

    edge.sites = [
        strict_site("trust", "trust"),
        strict_site("rev-reload", "rev-reload"),
        strict_site("rev-live", "rev-live"),
        pull("pulls", "pulls"),
        pull("intruder", "intruder"),
        pull("gone", "gone"),
        pull("nocert", None),
    ]
    edge.write_config()
    assert "origin_ca" not in edge.config_text()
    edge.start()
    yield Setup(edge, files, ports)
    edge.stop()
    stop_process(nginx)


def get(edge: Edge, host: str):
    with edge.conn(sni=host) as c:
        return c.request(target="/", host=host)


def status_of(edge: Edge, host: str) -> int:
    return get(edge, host).status


def error_since(edge: Edge, offset: int, pattern: str) -> str:
    return wait_for(lambda: edge.error_text_since(offset) if re.search(pattern, edge.error_text_since(offset))
                    else None, 5, what=f"{pattern!r} in the error log")


# --- server certificates ------------------------------------------------------------------------------------------


def test_strict_site_trusts_the_origin_ca_without_configuration(setup: Setup) -> None:
    resp = get(setup.edge, "trust.test")
    assert resp.status == 200
    assert resp.body == b"trust origin\n"


def test_revoked_origin_certificate_is_refused_after_a_reload(setup: Setup) -> None:
    edge = setup.edge
    assert status_of(edge, "rev-reload.test") == 200
    offset = edge.error_log_size()
    tlsedge(edge.config_path, "origin-cert", "revoke", serial_of(setup.files / "rev-reload-issued.pem"))
    edge.reload()
    wait_for(lambda: status_of(edge, "rev-reload.test") == 502, 10, what="502 from the revoked origin")
    line = error_since(edge, offset, "revoked by the tlsedge origin CA")
    assert "site rev-reload" in line
    assert status_of(edge, "trust.test") == 200  # other origins of the same CA are unaffected


def test_revoked_origin_certificate_is_refused_within_seconds(setup: Setup) -> None:
    edge = setup.edge
    assert status_of(edge, "rev-live.test") == 200
    tlsedge(edge.config_path, "origin-cert", "revoke", serial_of(setup.files / "rev-live-issued.pem"))
    wait_for(lambda: status_of(edge, "rev-live.test") == 502, 3, what="502 without a reload")


# --- authenticated origin pulls -----------------------------------------------------------------------------------


def test_origin_lets_in_the_edge_of_an_allowed_site(setup: Setup) -> None:
    resp = get(setup.edge, "pulls.test")
    assert resp.status == 200
    assert resp.body == b"client=CN=tlsedge edge for site pulls\n"


def test_origin_refuses_the_client_certificate_of_another_site(setup: Setup) -> None:
    resp = get(setup.edge, "intruder.test")
    assert resp.status == 403
    assert resp.body == b"not an edge of an allowed site\n"


def test_origin_refuses_a_revoked_client_certificate_through_the_crl(setup: Setup) -> None:
    resp = get(setup.edge, "gone.test")
    assert resp.status == 400
    assert b"SSL certificate error" in resp.body


def test_origin_refuses_an_edge_without_client_certificate(setup: Setup) -> None:
    resp = get(setup.edge, "nocert.test")
    assert resp.status == 400
    assert b"No required SSL certificate was sent" in resp.body


def test_client_certificate_origin_ca_setting(setup: Setup, make_edge, pki) -> None:
    """``origin_client_certificate = "origin-ca"``: the edge gets its client certificate for the site from the CA
    (issued at start and kept in the store; here a second edge sharing the first one's store)."""
    pull = [f"https://127.0.0.1:{setup.ports['pull']}"]
    sites = [site("auto", ["auto.test"], pull, pki.good("auto.test"), **STRICT,
                  origin_client_certificate="origin-ca")]
    edge = make_edge(sites, state_dir=setup.edge.server["state_dir"])
    resp = get(edge, "auto.test")
    assert resp.status == 200
    assert resp.body == b"client=CN=tlsedge edge for site auto\n"
    issued = tlsedge(setup.edge.config_path, "origin-cert", "list")
    assert re.search(r"client\s+valid\s+\S+\s+site auto$", issued, re.M), issued
