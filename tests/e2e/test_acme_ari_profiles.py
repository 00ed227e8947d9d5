"""ACME Renewal Information (RFC 9773) and profiles, which pebble 2.4 lacks, against MiniAcme (tests/e2e/mini_acme.py).

Site ``short`` orders with the "shortlived" profile; the test moves the CA's suggested renewal window into the past
and expects a renewal whose newOrder names the old certificate in ``replaces``. Site ``odd`` asks for a profile the
CA does not offer and must show the CA's refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from acme_edges import acme_edge, acme_site, certs_rows, served_certificate, wait_for_issuer
from e2e_support import wait_for
from mini_acme import MiniAcme, cert_id

ISSUER = "MiniAcme test intermediate"


def test_profile_ari_window_and_replaces(tmp_path, pki, py_origin) -> None:
    mini = MiniAcme(tmp_path / "mini").start()
    mini.retry_after = 1  # renewalInfo's Retry-After: the manager asks again a second later
    origin = f"http://127.0.0.1:{py_origin.port}"
    sites = [
        acme_site("short", ["short.test"], origin, profile="shortlived"),
        acme_site("odd", ["odd.test"], origin, profile="no-such-profile"),
    ]
    edge = acme_edge(tmp_path / "edge", sites, pki.ca_pem, acme={
        "directory": mini.directory_url, "directory_ca": str(mini.ca_path), "challenges": ["http-01"],
        "check_interval": "1s", "retry_min": "1s", "retry_max": "3s",
    })
    try:
        edge.start()
        first = wait_for_issuer(edge.https_port, "short.test", ISSUER, 20)
        assert first.not_valid_after_utc - first.not_valid_before_utc == timedelta(days=6)  # the profile's lifetime
        assert next(o.profile for o in mini.orders if o.identifiers == ["short.test"]) == "shortlived"
        assert mini.orders[0].replaces is None

        old_id = cert_id(first)
        wait_for(lambda: old_id in mini.ari_requests, 10, what="the manager to ask for renewal info")
        row = wait_for(lambda: (r := certs_rows(edge)["short"]) and "(ARI)" in r["renewal"] and r, 10,
                       what="the ARI window in tlsedge certs")
        assert row["source"] == "acme"

        now = datetime.now(UTC)
        mini.set_renewal_window(now - timedelta(hours=2), now - timedelta(hours=1), cert=old_id)
        renewed = wait_for(
            lambda: (leaf := served_certificate(edge.https_port, "short.test")).serial_number != first.serial_number
            and leaf,
            15, what="the certificate renewed inside the ARI window",
        )
        replacing = [o for o in mini.orders if o.replaces is not None]
        assert [o.replaces for o in replacing] == [old_id]
        assert replacing[0].profile == "shortlived" and replacing[0].problem is None
        assert cert_id(renewed) in mini.issued

        odd = wait_for(lambda: certs_rows(edge)["odd"].get("last_error"), 10, what="the refused profile")
        assert "invalidProfile" in odd and "no-such-profile" in odd, odd
    finally:
        edge.stop()
        mini.stop()
