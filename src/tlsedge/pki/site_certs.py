"""The public certificates of sites kept in the store: ACME-issued, imported by their owners, or temporary.

One record per site (``site-cert/<site>``) holds the chain, the sealed private key and what ``tlsedge certs`` shows;
writing chain and key in one value means a worker can never load a new chain with an old key. Every write publishes
the ``certs`` topic: workers poll it from their sweep and swap the site's TLS context without a restart. What went
wrong last time (``site-cert-status/<site>``) is a separate record, so recording a failure never touches a working
certificate.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

from cryptography import x509

from tlsedge.store.base import Store, StoreError
from tlsedge.store.secrets import seal, unseal

CERTS_TOPIC = "certs"
RENEW_TOPIC = "certs-renew"  # published by `tlsedge cert revoke` and the like: the manager looks at every site now
Source = Literal["acme", "import", "temporary"]

_CERT_PREFIX = "site-cert/"
_STATUS_PREFIX = "site-cert-status/"


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """A site's certificate as stored: the chain (leaf first), its key, and facts read from the leaf."""

    site: str
    source: Source
    chain_pem: bytes
    key_pem: bytes
    names: tuple[str, ...]
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    renew_at: datetime | None = None  # when a renewal is due (None: never renewed by tlsedge, e.g. imported)
    details: dict[str, str] = field(default_factory=dict)  # e.g. ACME order URL, directory, profile

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


@dataclass(slots=True)
class CertificateStatus:
    """The manager's bookkeeping for one site: failures, backoff and the last error (kept until a success)."""

    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0
    next_attempt: float | None = None  # wall-clock seconds; None: as soon as due
    last_success_at: float | None = None
    ari_renew_at: float | None = None  # the time chosen in the CA's ARI window, when it offers ARI
    ari_next_check: float | None = None
    renew_requested: bool = False  # e.g. after a revocation: order a new certificate now, whatever its dates


def leaf_facts(chain_pem: bytes) -> tuple[tuple[str, ...], str, int, datetime, datetime]:
    """Names (DNS and IP SANs), issuer, serial and validity of the first certificate of a PEM chain."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        names = ()
    return names, leaf.issuer.rfc4514_string(), leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc


def save_certificate(
    store: Store,
    site: str,
    source: Source,
    chain_pem: bytes,
    key_pem: bytes,
    *,
    renew_at: datetime | None = None,
    details: dict[str, str] | None = None,
) -> StoredCertificate:
    """Store a site's certificate and key in one write, then tell the workers (topic ``certs``)."""
    names, issuer, serial, not_before, not_after = leaf_facts(chain_pem)
    stored = StoredCertificate(site, source, chain_pem, key_pem, names, issuer, serial, not_before, not_after,
                               renew_at, dict(details or {}))
    name = _CERT_PREFIX + site
    record = {
        "source": source,
        "chain_pem": chain_pem.decode("ascii"),
        "key": base64.b64encode(seal(name, key_pem)).decode("ascii"),
        "renew_at": renew_at.isoformat() if renew_at else None,
        "details": stored.details,
    }
    store.put(name, json.dumps(record).encode())
    store.publish(CERTS_TOPIC)
    return stored


def load_certificate(store: Store, site: str) -> StoredCertificate | None:
    """A site's stored certificate, or None when it has none yet."""
    name = _CERT_PREFIX + site
    entry = store.get(name)
    if entry is None:
        return None
    try:
        record = json.loads(entry.value)
        chain_pem = record["chain_pem"].encode("ascii")
        key_pem = unseal(name, base64.b64decode(record["key"]))
        names, issuer, serial, not_before, not_after = leaf_facts(chain_pem)
        renew_at = datetime.fromisoformat(record["renew_at"]) if record.get("renew_at") else None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"the stored certificate of site {site!r} is unreadable ({exc}); re-import or re-order it"
        ) from None
    return StoredCertificate(site, record["source"], chain_pem, key_pem, names, issuer, serial, not_before,
                             not_after, renew_at, dict(record.get("details") or {}))


def load_status(store: Store, site: str) -> CertificateStatus:
    entry = store.get(_STATUS_PREFIX + site)
    if entry is None:
        return CertificateStatus()
    try:
        return CertificateStatus(**json.loads(entry.value))
    except (ValueError, TypeError):
        return CertificateStatus()


def save_status(store: Store, site: str, status: CertificateStatus) -> None:
    store.put(_STATUS_PREFIX + site, json.dumps(asdict(status)).encode())
