"""Public certificates over ACME from a real CA: Let's Encrypt's pebble, validating the edge's own challenge answers.

One pebble and one edge serve the module: site ``alpha`` proves control over HTTP-01 (two names), ``beta`` over
TLS-ALPN-01, and ``gamma`` never can (its name resolves to 127.0.0.2, where a server of the test answers HTTP-01
with a wrong key authorization). Pebble issues 2-minute certificates, so renewal is exercised too.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from acme_edges import acme_edge, acme_site, certs_rows, issuer_cn, served_certificate, tlsedge, wait_for_issuer
from acme_support import Pebble
from cryptography import x509
from e2e_support import wait_for

from tlsedge.acme.client import open_session
from tlsedge.config import load_config
from tlsedge.pki.site_certs import load_certificate
from tlsedge.store import open_store

LIFETIME = 120  # seconds: pebble's certificateValidityPeriod
ISSUE_TIMEOUT = 30.0


class _WrongAnswer(http.server.BaseHTTPRequestHandler):
    """Answers every HTTP-01 validation with a key authorization that cannot be right."""

    def do_GET(self) -> None:
        body = b"not-the-key-authorization"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def acme_env(tmp_path_factory, pki, py_origin) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("acme-pebble")
    origin = f"http://127.0.0.1:{py_origin.port}"
    sites = [
        acme_site("alpha", ["a.test", "www.a.test"], origin, challenges=["http-01"]),
        acme_site("beta", ["b.test"], origin, challenges=["tls-alpn-01"]),
        acme_site("gamma", ["c.test"], origin, challenges=["http-01"]),
    ]
    edge = acme_edge(tmp / "edge", sites, pki.ca_pem, acme={}, workers=2)
    pebble = Pebble(tmp / "pebble", http_port=edge.http_port, tls_port=edge.https_port, validity_seconds=LIFETIME)
    pebble.start()
    wrong = http.server.ThreadingHTTPServer(("127.0.0.2", edge.http_port), _WrongAnswer)
    threading.Thread(target=wrong.serve_forever, daemon=True).start()
    request = urllib.request.Request(
        pebble.challtestsrv_url + "/add-a", data=json.dumps({"host": "c.test.", "addresses": ["127.0.0.2"]}).encode()
    )
    urllib.request.urlopen(request, timeout=5).close()
    edge.acme = {  # type: ignore[attr-defined]
        "directory": pebble.directory_url,
        "directory_ca": str(pebble.api_ca_path),
        "contact": "ops@a.test",
        "retry_min": "2s",
        "retry_max": "10s",
        "renew_remaining": 0.75,  # renew 30 s into a 2-minute life, so the test waits half a minute, not 80 s
        "check_interval": "5s",
    }
    edge.write_config()
    edge.start()
    try:
        yield edge, pebble
    finally:
        edge.stop()
        wrong.shutdown()
        pebble.stop()


def _roots(pebble: Pebble) -> str:
    return pebble.root_pem().decode()


def test_http01_and_tls_alpn01_orders_reach_valid_and_chains_verify_against_pebbles_root(acme_env) -> None:
    edge, pebble = acme_env
    wait_for_issuer(edge.https_port, "a.test", "Pebble", ISSUE_TIMEOUT)
    wait_for_issuer(edge.https_port, "b.test", "Pebble", ISSUE_TIMEOUT)
    roots = _roots(pebble)
    for name, expected in (("a.test", {"a.test", "www.a.test"}), ("www.a.test", {"a.test", "www.a.test"}),
                           ("b.test", {"b.test"})):
        leaf = served_certificate(edge.https_port, name, cadata=roots)  # verifies chain + name against the root only
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == expected
        assert pebble.cert_status(leaf.serial_number)["Status"] == "Valid"
    assert _order_status(edge, "alpha") == "valid"
    assert _order_status(edge, "beta") == "valid"


def _order_status(edge, site: str) -> str:
    """The status of the site's last order, asked from the CA with the edge's own account (POST-as-GET)."""
    config = load_config(edge.config_path)
    store = open_store(config.server.state_dir)
    stored = load_certificate(store, site)
    assert stored is not None and stored.details["order"], stored
    session = open_session(store, config.site(site).managed_certificate.acme)
    return session.net.post(stored.details["order"], None).json()["status"]


def test_a_client_trusting_only_pebbles_root_gets_http_through(acme_env, tmp_path) -> None:
    edge, pebble = acme_env
    wait_for_issuer(edge.https_port, "b.test", "Pebble", ISSUE_TIMEOUT)
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    port = edge.https_port
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(root),
         "--resolve", f"b.test:{port}:127.0.0.1", f"https://b.test:{port}/"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "200", result.stdout


def test_wrong_challenge_answer_is_reported_and_the_site_keeps_a_temporary_certificate(acme_env) -> None:
    edge, _ = acme_env
    rows = wait_for(lambda: (r := certs_rows(edge)) and r["gamma"].get("last_error") and r, ISSUE_TIMEOUT,
                    what="gamma's order to fail")
    error = rows["gamma"]["last_error"]
    assert "http-01 validation failed" in error and "c.test" in error, error
    assert rows["gamma"]["source"] == "temporary"
    leaf = served_certificate(edge.https_port, "c.test")
    assert "tlsedge temporary" in issuer_cn(leaf)
    assert "site gamma: certificate order failed" in edge.error_text()
    assert rows["alpha"].get("last_error") is None


def test_certs_lists_issuer_expiry_and_renewal(acme_env) -> None:
    edge, _ = acme_env
    wait_for_issuer(edge.https_port, "a.test", "Pebble", ISSUE_TIMEOUT)
    rows = wait_for(lambda: (r := certs_rows(edge)) and r["alpha"]["source"] == "acme" and r, 10, what="alpha row")
    alpha = rows["alpha"]
    assert set(alpha["names"]) == {"a.test", "www.a.test"}
    assert "Pebble" in alpha["issuer"]
    assert alpha["not_after"] and alpha["renewal"]
    table = tlsedge("certs", "-c", str(edge.config_path))
    assert table.returncode == 0 and "alpha" in table.stdout and "LAST ERROR" in table.stdout


def test_short_lived_certificate_is_renewed_and_swapped_with_no_failed_handshake(acme_env) -> None:
    edge, pebble = acme_env
    first = wait_for_issuer(edge.https_port, "b.test", "Pebble", ISSUE_TIMEOUT)
    roots = _roots(pebble)
    failures: list[str] = []
    serials = {first.serial_number}
    deadline = time.monotonic() + LIFETIME
    handshakes = 0
    while time.monotonic() < deadline and len(serials) < 2:
        try:
            serials.add(served_certificate(edge.https_port, "b.test", cadata=roots).serial_number)
            handshakes += 1
        except (OSError, ssl.SSLError) as exc:
            failures.append(repr(exc))
        time.sleep(0.1)
    assert len(serials) == 2, f"no renewal within {LIFETIME}s; {handshakes} handshakes\n{edge.error_text()[-3000:]}"
    assert failures == []
    assert handshakes > 20



def test_revoke_shows_in_pebbles_status_and_a_new_certificate_replaces_it(acme_env) -> None:
    edge, pebble = acme_env
    old = wait_for_issuer(edge.https_port, "a.test", "Pebble", ISSUE_TIMEOUT)
    result = tlsedge("cert", "revoke", "--site", "alpha", "--reason", "superseded", "-c", str(edge.config_path))
    revoked = [s for s in (old.serial_number,) if pebble.cert_status(s)["Status"] == "Revoked"]
    if not revoked:  # renewed between our handshake and the command: the command revoked the newer one
        stored = certs_rows(edge)["alpha"]
        revoked = [int(stored["serial"], 16)] if result.returncode == 0 else []
    assert result.returncode == 0, result.stderr
    assert "revoked certificate" in result.stdout
    assert revoked and pebble.cert_status(revoked[0])["Status"] == "Revoked"
    fresh = wait_for(
        lambda: (leaf := served_certificate(edge.https_port, "a.test")).serial_number not in revoked and leaf,
        ISSUE_TIMEOUT, what="a replacement certificate",
    )
    assert pebble.cert_status(fresh.serial_number)["Status"] == "Valid"


def test_revoke_refuses_a_site_without_acme_certificate_clearly(acme_env) -> None:
    edge, _ = acme_env
    result = tlsedge("cert", "revoke", "--site", "nope", "-c", str(edge.config_path))
    assert result.returncode == 1 and "no site is named 'nope'" in result.stderr
    result = tlsedge("cert", "revoke", "--site", "gamma", "-c", str(edge.config_path))
    assert result.returncode == 1 and "has no ACME certificate yet" in result.stderr
    assert "Traceback" not in result.stderr
