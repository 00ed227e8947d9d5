"""Temporary certificates: what a site serves until its first real certificate arrives (ACME or an import).

Why: a site waiting for ACME must still complete handshakes, or the operator sees only resets and cannot tell a slow
CA from a broken edge. A certificate from tlsedge's own, untrusted "temporary" CA makes the site reachable for anyone
who trusts that CA (``tlsedge certs`` says so) and makes browsers say plainly that the certificate is not trusted
yet. The CA lives in the store (key sealed like every other key), separate from the origin CA so trusting one
never means trusting the other. Temporary certificates are short-lived and re-issued before they expire.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tlsedge.pki.local_ca import LocalCA, private_key_pem
from tlsedge.pki.site_certs import StoredCertificate, load_certificate, save_certificate
from tlsedge.store.base import Store
from tlsedge.store.secrets import seal, unseal

LIFETIME = timedelta(days=2)
_CA_KEY = "temporary-ca"
_CA_NAME = "tlsedge temporary (untrusted: awaiting the real certificate)"


def temporary_ca(store: Store) -> LocalCA:
    """The store's temporary CA, created on first use (two processes racing agree on the first one written)."""
    for _ in range(2):
        entry = store.get(_CA_KEY)
        if entry is not None:
            record = json.loads(entry.value)
            cert = x509.load_pem_x509_certificate(record["cert"].encode("ascii"))
            key = serialization.load_pem_private_key(unseal(_CA_KEY, base64.b64decode(record["key"])), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError("the temporary CA key in the store is not an EC key")
            return LocalCA(cert, key)
        ca = LocalCA.create(common_name=_CA_NAME, days=3650)
        key_pem = private_key_pem(ca.key)
        record = {"cert": ca.cert_pem.decode("ascii"), "key": base64.b64encode(seal(_CA_KEY, key_pem)).decode()}
        store.put_if_version(_CA_KEY, json.dumps(record).encode(), 0)
    raise RuntimeError("the temporary CA could not be stored")


def needs_temporary(stored: StoredCertificate | None, now: datetime | None = None) -> bool:
    """No certificate at all, or a temporary one past half its life: (re)issue a temporary certificate."""
    if stored is None:
        return True
    if stored.source != "temporary":
        return False
    now = now or datetime.now(UTC)
    return now >= stored.not_before + (stored.not_after - stored.not_before) / 2


def ensure_temporary(store: Store, site: str, hosts: Sequence[str]) -> StoredCertificate:
    """The site's stored certificate, issuing a temporary one when it has none (or its temporary one ages)."""
    stored = load_certificate(store, site)
    if stored is not None and not needs_temporary(stored):
        return stored
    issued = temporary_ca(store).issue(list(hosts), days=LIFETIME.days)
    return save_certificate(store, site, "temporary", issued.cert_pem, issued.key_pem)
