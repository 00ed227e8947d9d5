"""Origin TLS modes against nginx TLS origins with a good, a wrong-name, an expired and a self-signed certificate."""

from __future__ import annotations

import re
import time

import pytest
from e2e_support import Edge, NginxOrigin, site, wait_for

FLAVOURS = ["good", "wrong_name", "expired", "self_signed"]
REASONS = {
    "wrong_name": r"mismatch|not valid for|hostname|doesn't match|does not match",
    "expired": r"expired",
    "self_signed": r"self[- ]signed",
}


def _name(mode: str, flavour: str) -> str:
    return f"{mode}-{flavour.replace('_', '-')}"


@pytest.fixture(scope="module")
def tls_edge(tmp_path_factory, pki, nginx_origin: NginxOrigin):
    names = [f"{_name(m, f)}.test" for m in ("strict", "full") for f in FLAVOURS] + ["flexible.test"]
    cert = pki.good(*names)
    sites = []
    for flavour in FLAVOURS:
        port = nginx_origin.tls_ports[flavour]
        sites.append(site(_name("strict", flavour), [f"{_name('strict', flavour)}.test"],
                          [f"https://127.0.0.1:{port}"], cert, origin_tls="strict", origin_ca=str(pki.ca_pem),
                          origin_server_name="origin.test", origin={"connect_timeout": "3s"}))
        sites.append(site(_name("full", flavour), [f"{_name('full', flavour)}.test"],
                          [f"https://127.0.0.1:{port}"], cert, origin_tls="full", origin_server_name="origin.test"))
    sites.append(site("flexible", ["flexible.test"], [f"http://127.0.0.1:{nginx_origin.plain_port}"], cert,
                      origin_tls="flexible"))
    edge = Edge(tmp_path_factory.mktemp("tls-edge"), sites, pki.ca_pem)
    edge.start()
    yield edge
    edge.stop()


def test_strict_with_good_certificate(tls_edge):
    r = tls_edge.curl("strict-good.test", "/index.html")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body == NginxOrigin.INDEX


@pytest.mark.parametrize("flavour", ["wrong_name", "expired", "self_signed"])
def test_strict_with_bad_certificate_gives_502_and_logs_reason(tls_edge, flavour):
    offset = tls_edge.error_log_size()
    host = f"{_name('strict', flavour)}.test"
    r = tls_edge.curl(host, "/index.html")
    assert r.status == 502, (r.status, r.body[:200])
    assert NginxOrigin.INDEX not in r.body
    text = wait_for(lambda: tls_edge.error_text_since(offset) if re.search(REASONS[flavour],
                    tls_edge.error_text_since(offset), re.I) else None, 5, what=f"reason for {flavour} in error log")
    assert re.search(REASONS[flavour], text, re.I)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_full_accepts_any_certificate(tls_edge, flavour):
    r = tls_edge.curl(f"{_name('full', flavour)}.test", "/index.html")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body == NginxOrigin.INDEX


def test_full_mode_warned_at_start(tls_edge):
    time.sleep(0.2)
    lines = tls_edge.error_text().splitlines()
    warned = [line for line in lines if "full" in line.lower() and ("full-" in line or "verif" in line.lower())]
    assert warned, "no warning about origin_tls = full in the error log"


def test_flexible_plain_http_origin(tls_edge):
    r = tls_edge.curl("flexible.test", "/index.html")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.body == NginxOrigin.INDEX


def test_strict_origin_keepalive(tls_edge):
    # several requests to the strict good origin on one client connection: all succeed (pooled TLS connections)
    with tls_edge.conn(sni="strict-good.test") as c:
        for _ in range(5):
            resp = c.request(host="strict-good.test", target="/index.html")
            assert resp.status == 200
            assert resp.body == NginxOrigin.INDEX
