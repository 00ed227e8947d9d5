"""ACME accounts against pebble: a CA that rejects half of our nonces, and one that requires External Account Binding.

Each test runs its own pebble (they start in a fraction of a second) in front of its own edge.
"""

from __future__ import annotations

import base64
import os

from acme_edges import acme_edge, acme_site, certs_rows, wait_for_issuer
from acme_support import Pebble
from e2e_support import wait_for

EAB_KID = "kid-tlsedge"
EAB_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _start(tmp_path, pki, py_origin, *, pebble_options: dict, acme: dict | None = None):
    origin = f"http://127.0.0.1:{py_origin.port}"
    edge = acme_edge(tmp_path / "edge", [acme_site("one", ["one.test"], origin)], pki.ca_pem, acme={})
    pebble = Pebble(tmp_path / "pebble", http_port=edge.http_port, tls_port=edge.https_port, **pebble_options).start()
    edge.acme = {  # type: ignore[attr-defined]
        "directory": pebble.directory_url, "directory_ca": str(pebble.api_ca_path), "retry_min": "1s",
        "retry_max": "5s", **(acme or {}),
    }
    edge.write_config()
    return edge.start(), pebble


def test_orders_succeed_when_the_ca_rejects_half_of_the_nonces(tmp_path, pki, py_origin) -> None:
    edge, pebble = _start(tmp_path, pki, py_origin, pebble_options={"nonce_reject": 50})
    try:
        wait_for_issuer(edge.https_port, "one.test", "Pebble", 40)
        assert "badNonce" not in (certs_rows(edge)["one"].get("last_error") or "")
        assert "reject 50% of good nonces" in pebble.logs()
    finally:
        edge.stop()
        pebble.stop()


def test_external_account_binding_is_required_then_used(tmp_path, pki, py_origin, monkeypatch) -> None:
    edge, pebble = _start(tmp_path, pki, py_origin, pebble_options={"eab": {EAB_KID: EAB_KEY}})
    try:
        row = wait_for(lambda: certs_rows(edge)["one"].get("last_error"), 20, what="the refused registration")
        assert "external account binding" in row, row
        monkeypatch.setenv("TLSEDGE_TEST_EAB", EAB_KEY)
        edge.stop()
        edge.acme["eab"] = {"kid": EAB_KID, "hmac_key_env": "TLSEDGE_TEST_EAB"}  # type: ignore[attr-defined]
        edge.write_config()
        edge.start()
        wait_for_issuer(edge.https_port, "one.test", "Pebble", 30)
    finally:
        edge.stop()
        pebble.stop()


def test_wrong_eab_credentials_surface_in_certs(tmp_path, pki, py_origin, monkeypatch) -> None:
    monkeypatch.setenv("TLSEDGE_TEST_EAB", EAB_KEY)
    edge, pebble = _start(tmp_path, pki, py_origin, pebble_options={"eab": {EAB_KID: EAB_KEY}},
                          acme={"eab": {"kid": "unknown-kid", "hmac_key_env": "TLSEDGE_TEST_EAB"}})
    try:
        error = wait_for(lambda: certs_rows(edge)["one"].get("last_error"), 20, what="the refused registration")
        assert "cannot register an ACME account" in error, error
    finally:
        edge.stop()
        pebble.stop()
