"""tlsedge's origin CA: certificates for origin servers that only the edge needs to trust (Cloudflare's Origin CA).

Why a CA of our own: an origin behind the edge needs a certificate the edge can verify in ``strict`` mode, but no
public CA will issue one for a private address or a name that resolves only inside the network, and public
certificates expire every few months. This CA lives in the edge's store, so every edge of a deployment trusts it
without configuration, and its certificates may last from a week to 15 years (Cloudflare's choices).

Layout in the store (every write of the CA, a revocation or a client certificate publishes topic ``origin-ca``):

- ``origin-ca/root``: the root certificate (ECDSA P-384, CA:true, pathlen 0), PEM.
- ``origin-ca/key``: its private key through :func:`~tlsedge.store.secrets.put_secret` (sealed when
  ``TLSEDGE_STORE_KEY`` is set), and PEM-encrypted besides when ``TLSEDGE_CA_PASSPHRASE`` was set at init: then only
  commands run with the passphrase can issue, revoke or renew, and a copy of the store alone issues nothing.
- ``origin-ca/crl``: the CRL signed by the root, the one source of truth for revocations (the edge reads its serials;
  origins that check the edge's client certificate load it, e.g. nginx ``ssl_crl``).
- ``origin-ca/issued/<serial hex>``: one record per certificate issued (names, expiry, kind, revocation).
- ``origin-ca/client/<site>``: the edge's client certificate for a site and its sealed key, in one value so a reader
  never pairs a new certificate with an old key.

Host names of a CSR: the ``hosts`` given win over the CSR's own names (as at Cloudflare, where the request's names
are chosen by the operator, not read from the CSR); with no hosts given, the CSR's subjectAltName names are used, or
its CN when it has none. Either way they pass the same checks.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsedge.config.values import is_ip_address, normalize_hostname
from tlsedge.pki.local_ca import key_usage, private_key_pem
from tlsedge.store.base import Store, StoreError
from tlsedge.store.secrets import get_secret, put_secret, seal, unseal

TOPIC = "origin-ca"
PASSPHRASE_ENV = "TLSEDGE_CA_PASSPHRASE"
VALIDITY_DAYS = (7, 30, 90, 365, 730, 1095, 5475)  # Cloudflare's choices: a week ... 15 years
CLIENT_DAYS = 365  # the edge's client certificates; renewed when a third of that is left
KEY_TYPES = ("ecdsa", "rsa")
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
CLIENT_URI_PREFIX = "urn:tlsedge:site:"
Kind = Literal["server", "client"]

_ROOT = "origin-ca/root"
_KEY = "origin-ca/key"
_CRL = "origin-ca/crl"
_ISSUED = "origin-ca/issued/"
_CLIENT = "origin-ca/client/"
_LOCK = "origin-ca/lock"
_ROOT_DAYS = 9131  # 25 years: outlives a 15-year certificate issued in the CA's first ten years
_CRL_DAYS = 365  # long: an origin holding an expired CRL (nginx ssl_crl) refuses every client certificate
_CLOCK_SKEW = timedelta(minutes=5)
_MAX_HOSTS = 100
_LOCK_WAIT = 10.0
_HASH = hashes.SHA384()  # matches the P-384 root


class OriginCAError(Exception):
    """Something the operator must fix; the message says what and how."""


@dataclass(frozen=True)
class OriginCA:
    """The root certificate and its (decrypted) private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedRecord:
    """What the store remembers of one certificate the CA issued."""

    serial: int
    kind: Kind
    hosts: tuple[str, ...]  # DNS names and IPs (server); the URI SAN (client)
    site: str | None  # client certificates: the site whose edge presents it
    not_before: datetime
    not_after: datetime
    key_source: Literal["csr", "generated"]
    revoked_at: datetime | None = None
    reason: str | None = None

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    def status(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.not_after <= (now or datetime.now(UTC)) else "valid"

    def to_json(self) -> dict:
        return {
            "serial": self.serial_hex,
            "kind": self.kind,
            "hosts": list(self.hosts),
            "site": self.site,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "key_source": self.key_source,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict) -> IssuedRecord:
        return cls(
            serial=int(data["serial"], 16),
            kind=data["kind"],
            hosts=tuple(data["hosts"]),
            site=data.get("site"),
            not_before=datetime.fromisoformat(data["not_before"]),
            not_after=datetime.fromisoformat(data["not_after"]),
            key_source=data["key_source"],
            revoked_at=datetime.fromisoformat(data["revoked_at"]) if data.get("revoked_at") else None,
            reason=data.get("reason"),
        )


# --- the CA ----------------------------------------------------------------------------------------------------


def _passphrase() -> bytes | None:
    text = os.environ.get(PASSPHRASE_ENV)
    return text.encode() if text else None


def init_ca(store: Store, *, common_name: str = "tlsedge origin CA", force: bool = False) -> OriginCA:
    """Create the CA (an existing one is kept unless ``force``, which also forgets what the old one issued).

    The key is PEM-encrypted with ``TLSEDGE_CA_PASSPHRASE`` when that variable is set now.
    """
    with _locked(store):
        existing = store.get(_ROOT)
        if existing is not None and not force:
            old = x509.load_pem_x509_certificate(existing.value)
            raise OriginCAError(
                f"an origin CA already exists ({old.subject.rfc4514_string()}, created "
                f"{old.not_valid_before_utc:%Y-%m-%d}); origins trust the certificates it issued. To replace it (every "
                "certificate it issued stops being trusted), run: tlsedge ca init --force"
            )
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = datetime.now(UTC) - _CLOCK_SKEW
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=_ROOT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _HASH)
        )
        passphrase = _passphrase()
        encryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        ca = OriginCA(cert, key)
        if force:
            for prefix in (_ISSUED, _CLIENT):
                for old_key in store.scan(prefix):
                    store.delete(old_key)
        put_secret(store, _KEY, key_pem)
        store.put(_ROOT, ca.cert_pem)
        _resign_crl(store, ca)
        return ca


def key_encrypted(store: Store) -> bool:
    """Whether the CA key is PEM-encrypted (commands that sign need ``TLSEDGE_CA_PASSPHRASE``)."""
    key_pem = get_secret(store, _KEY)
    return key_pem is not None and b"ENCRYPTED" in key_pem


def root_pem(store: Store) -> bytes | None:
    """The root certificate (what origins and edges trust), or None before ``tlsedge ca init``. Needs no key."""
    entry = store.get(_ROOT)
    return None if entry is None else entry.value


def _root(store: Store) -> x509.Certificate:
    pem = root_pem(store)
    if pem is None:
        raise OriginCAError("the origin CA does not exist yet: run tlsedge ca init")
    return x509.load_pem_x509_certificate(pem)


def load_ca(store: Store) -> OriginCA:
    """The CA with its private key, decrypted with ``TLSEDGE_CA_PASSPHRASE`` when it was encrypted at init."""
    cert = _root(store)
    key_pem = get_secret(store, _KEY)
    if key_pem is None:
        raise OriginCAError("the origin CA's private key is missing from the store; recreate the CA: "
                            "tlsedge ca init --force")
    passphrase = _passphrase()
    encrypted = b"ENCRYPTED" in key_pem
    if encrypted and passphrase is None:
        raise OriginCAError(
            f"the origin CA's key is encrypted with a passphrase: set {PASSPHRASE_ENV} to the passphrase that was "
            "set when running tlsedge ca init"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise OriginCAError(f"{PASSPHRASE_ENV} is not the passphrase of the origin CA's key (the one set when "
                                "running tlsedge ca init)") from None
        key = None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise OriginCAError("the origin CA's key in the store is unreadable or not the key of its root; recreate "
                            "the CA: tlsedge ca init --force")
    return OriginCA(cert, key)


@contextmanager
def _locked(store: Store) -> Iterator[None]:
    """Serialize changes of the CA, its CRL and client certificates between processes (and edges)."""
    owner = f"{os.getpid()}-{os.urandom(4).hex()}"
    deadline = time.monotonic() + _LOCK_WAIT
    while not store.acquire(_LOCK, owner, ttl=30.0):
        if time.monotonic() > deadline:
            raise OriginCAError("another tlsedge command is changing the origin CA right now; try again")
        time.sleep(0.05)
    try:
        yield
    finally:
        store.release(_LOCK, owner)


# --- checks of what is asked ---------------------------------------------------------------------------------------


def check_days(days: int) -> None:
    if days not in VALIDITY_DAYS:
        choices = ", ".join(str(d) for d in VALIDITY_DAYS[:-1]) + f" or {VALIDITY_DAYS[-1]}"
        raise OriginCAError(f"a validity of {days} days is not offered: choose {choices} days (a week to 15 years)")


def _wildcard_problem(name: str) -> str | None:
    """Why a name with a '*' is not a one-level wildcard ('*' as the whole leftmost label), or None."""
    if "*" not in name:
        return None
    labels = name.split(".")
    if name == "*":
        return "a bare '*' would match every name; write the domain it covers, e.g. '*.blog.example'"
    if name.count("*") > 1:
        return "a wildcard covers one level only: '*' may appear once, as the leftmost label, e.g. '*.blog.example'"
    if "*" in labels[0] and labels[0] != "*":
        return "'*' must be the whole leftmost label, not part of one, e.g. '*.blog.example'"
    if labels[0] != "*":
        return "'*' is allowed only as the leftmost label, e.g. '*.blog.example'"
    if len(labels) < 3:
        return (f"a wildcard needs at least two labels after '*.' ({name!r} would cover a whole top-level domain), "
                "e.g. '*.blog.example'")
    return None


def normalize_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """The names of a server certificate: DNS names (one-level wildcards allowed) and IP addresses, deduplicated.

    Raises OriginCAError naming every rejected name and why.
    """
    names: list[str] = []
    problems: list[str] = []
    for raw in hosts:
        text = raw.strip()
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        if is_ip_address(bare):
            names.append(str(ipaddress.ip_address(bare)))
            continue
        reason = _wildcard_problem(text)
        if reason is None:
            try:
                names.append(normalize_hostname(text, allow_wildcard=True))
                continue
            except ValueError as exc:
                reason = str(exc).removeprefix(f"{text!r}: ")
        problems.append(f"{raw!r}: {reason}")
    if problems:
        raise OriginCAError("invalid host name" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise OriginCAError("a certificate needs at least one host name: give --host (e.g. --host origin.blog.example)")
    if len(unique) > _MAX_HOSTS:
        raise OriginCAError(f"{len(unique)} host names is too many for one certificate (at most {_MAX_HOSTS})")
    return unique


def _public_key_problem(key: object) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"its RSA key has {key.key_size} bits; use 2048 bits or more"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ("secp256r1", "secp384r1", "secp521r1"):
            return None
        return f"its EC key uses curve {key.curve.name}; use P-256 (prime256v1) or P-384"
    return f"its key is a {type(key).__name__.removeprefix('_')}; use ECDSA P-256/P-384 or RSA 2048+"


_CSR_HINT = ("make one on the origin with: openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout origin.key -out origin.csr -subj /CN=origin.example")


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A PEM CSR whose signature verifies (it was made by the holder of its key) with a key TLS clients accept."""
    if b"CERTIFICATE REQUEST-----" not in csr_pem:
        if b"PRIVATE KEY-----" in csr_pem:
            raise OriginCAError("that file holds a private key, not a CSR: give the certificate signing request "
                                "(the key stays on the origin)")
        raise OriginCAError(f"no PEM certificate signing request ('-----BEGIN CERTIFICATE REQUEST-----') found; "
                            f"{_CSR_HINT}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OriginCAError(f"cannot parse the certificate signing request ({exc}); {_CSR_HINT}") from None
    if not valid:
        raise OriginCAError("the CSR's signature does not verify: it was altered or not signed with its own key; "
                            f"make a new one. {_CSR_HINT}")
    problem = _public_key_problem(csr.public_key())
    if problem:
        raise OriginCAError(f"the CSR cannot be used: {problem}")
    return csr


def _csr_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


# --- issuing -------------------------------------------------------------------------------------------------------


def _san(name: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(name)) if is_ip_address(name) else x509.DNSName(name)


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _sign_leaf(
    ca: OriginCA,
    public_key: PublicKey,
    *,
    subject: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> x509.Certificate:
    start = datetime.now(UTC) - _CLOCK_SKEW
    end = start + _CLOCK_SKEW + timedelta(days=days)
    if end > ca.cert.not_valid_after_utc:
        raise OriginCAError(
            f"a {days}-day certificate would outlive the origin CA (valid until "
            f"{ca.cert.not_valid_after_utc:%Y-%m-%d}); choose a shorter validity"
        )
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # A CN holds at most 64 characters (RFC 5280); clients read the names from the subjectAltName anyway.
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, subject)] if len(subject) <= 64 else []
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(digital_signature=True, key_encipherment=isinstance(public_key, rsa.RSAPublicKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca.key, _HASH)
    )


def _record(store: Store, cert: x509.Certificate, kind: Kind, hosts: Sequence[str], site: str | None,
            key_source: Literal["csr", "generated"]) -> None:
    _put_record(store, IssuedRecord(cert.serial_number, kind, tuple(hosts), site, cert.not_valid_before_utc,
                                    cert.not_valid_after_utc, key_source))


def _put_record(store: Store, record: IssuedRecord) -> None:
    store.put(_ISSUED + record.serial_hex, json.dumps(record.to_json()).encode())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue_server(store: Store, public_key: PublicKey, hosts: tuple[str, ...], days: int,
                  key_source: Literal["csr", "generated"]) -> x509.Certificate:
    ca = load_ca(store)
    cert = _sign_leaf(ca, public_key, subject=hosts[0], sans=[_san(h) for h in hosts],
                      usage=ExtendedKeyUsageOID.SERVER_AUTH, days=days)
    _record(store, cert, "server", hosts, None, key_source)
    return cert


def issue_from_csr(store: Store, csr_pem: bytes, hosts: Sequence[str], days: int) -> bytes:
    """A server certificate (PEM, leaf only) for the CSR's public key: the origin's private key never leaves it.

    ``hosts`` are the certificate's names; when empty, the CSR's own names (subjectAltName, else CN) are used.
    """
    check_days(days)
    csr = load_csr(csr_pem)
    names = normalize_hosts(hosts or _csr_names(csr))
    public_key = cast(PublicKey, csr.public_key())  # load_csr accepts only EC and RSA keys
    return _pem(_issue_server(store, public_key, names, days, "csr"))


def issue_with_new_key(store: Store, hosts: Sequence[str], key_type: str = "ecdsa", days: int = 5475
                       ) -> tuple[bytes, bytes]:
    """A server certificate and a new private key (ECDSA P-256 or RSA 2048), both PEM; the key is not stored."""
    check_days(days)
    names = normalize_hosts(hosts)
    key = _new_key(key_type)
    cert = _issue_server(store, key.public_key(), names, days, "generated")
    return _pem(cert), private_key_pem(key)


def _new_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise OriginCAError(f"unknown key type {key_type!r}: choose 'ecdsa' (P-256) or 'rsa' (2048 bits)")


def list_issued(store: Store) -> list[IssuedRecord]:
    """Every certificate the CA issued, oldest first."""
    records = [_read_record(key, entry.value) for key, entry in store.scan(_ISSUED).items()]
    return sorted(records, key=lambda r: (r.not_before, r.serial))


def _read_record(key: str, value: bytes) -> IssuedRecord:
    try:
        return IssuedRecord.from_json(json.loads(value))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"the store record {key!r} is unreadable ({exc})") from None


def parse_serial(text: str) -> int:
    """A serial as printed by ``tlsedge origin-cert list`` or ``openssl x509 -serial`` (hex, ':' allowed)."""
    cleaned = text.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise OriginCAError(
            f"{text!r} is not a serial number: give it in hex as `tlsedge origin-cert list` shows it"
        ) from None


# --- revocation ----------------------------------------------------------------------------------------------------


def _sign_crl(ca: OriginCA, revoked: Sequence[IssuedRecord], *, number: int) -> bytes:
    now = datetime.now(UTC)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(now + timedelta(days=_CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for record in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(record.serial).revocation_date(record.revoked_at)
        flag = REASONS.get(record.reason or "unspecified", x509.ReasonFlags.unspecified)
        if flag is not x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: leave the reason out rather than unspecified
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, _HASH).public_bytes(serialization.Encoding.PEM)


def _stored_crl(store: Store) -> x509.CertificateRevocationList | None:
    entry = store.get(_CRL)
    if entry is None:
        return None
    try:
        return x509.load_pem_x509_crl(entry.value)
    except ValueError as exc:
        raise StoreError(f"the origin CA's CRL in the store is unreadable ({exc}); re-sign it with tlsedge ca crl "
                         "(with the CA key's passphrase when it has one)") from None


def _resign_crl(store: Store, ca: OriginCA) -> bytes:
    """Sign a new CRL from the revoked records and publish the change (call with the lock held).

    The CRL number (which must grow with every CRL) is the version the store gives the CRL's key on this write.
    """
    entry = store.get(_CRL)
    revoked = [r for r in list_issued(store) if r.revoked_at is not None]
    pem = _sign_crl(ca, revoked, number=(entry.version if entry else 0) + 1)
    store.put(_CRL, pem)
    store.publish(TOPIC)
    return pem


def revoke(store: Store, serial: int, reason: str = "unspecified") -> tuple[IssuedRecord, bool]:
    """Revoke a certificate the CA issued: record it, re-sign the CRL, tell the edges (topic ``origin-ca``).

    Returns the record and whether it was revoked now (False: it already was; nothing changes).
    """
    if reason not in REASONS:
        raise OriginCAError(f"unknown revocation reason {reason!r}: choose one of {', '.join(REASONS)}")
    with _locked(store):
        key = _ISSUED + f"{serial:x}"
        entry = store.get(key)
        if entry is None:
            raise OriginCAError(
                f"no certificate with serial {serial:x} was issued by this origin CA; see tlsedge origin-cert list"
            )
        record = _read_record(key, entry.value)
        if record.revoked_at is not None:
            return record, False
        ca = load_ca(store)  # before any write: without the key, nothing changes
        record = replace(record, revoked_at=datetime.now(UTC).replace(microsecond=0), reason=reason)
        _put_record(store, record)
        _resign_crl(store, ca)
        return record, True


def crl_pem(store: Store) -> bytes:
    """The CRL (PEM) for origins; re-signed first when less than a third of its validity is left and the CA key can
    be used (without the passphrase of an encrypted key, the stored one is returned: check its next update)."""
    _root(store)
    try:
        crl = _stored_crl(store)
    except StoreError:
        crl = None  # re-signed below
    if crl is not None:
        left = crl.next_update_utc - datetime.now(UTC)
        if left > (crl.next_update_utc - crl.last_update_utc) / 3:
            return crl.public_bytes(serialization.Encoding.PEM)
    try:
        ca = load_ca(store)
    except OriginCAError:
        if crl is None:
            raise
        return crl.public_bytes(serialization.Encoding.PEM)
    with _locked(store):
        return _resign_crl(store, ca)


def revoked_serials(store: Store) -> frozenset[int]:
    """Serials on the CA's CRL (empty without a CA)."""
    crl = _stored_crl(store)
    return frozenset() if crl is None else frozenset(entry.serial_number for entry in crl)


# --- client certificates for authenticated origin pulls ------------------------------------------------------------


def client_subject(site: str) -> str:
    return f"tlsedge edge for site {site}"


def stored_client_certificate(store: Store, site: str) -> tuple[bytes, bytes] | None:
    """The site's current client certificate and key (PEM), as stored; never issues (workers call this)."""
    name = _CLIENT + site
    entry = store.get(name)
    if entry is None:
        return None
    try:
        record = json.loads(entry.value)
        return record["cert_pem"].encode("ascii"), unseal(name, base64.b64decode(record["key"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"the stored client certificate of site {site!r} is unreadable ({exc})") from None


def _reusable(stored: tuple[bytes, bytes] | None, root: x509.Certificate, revoked: frozenset[int]
              ) -> tuple[bool, bool]:
    """Whether a stored client certificate can still be presented (issued by this root, not revoked, not expired),
    and whether it is also fresh (more than a third of its lifetime left)."""
    if stored is None:
        return False, False
    cert = x509.load_pem_x509_certificate(stored[0])
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False, False
    now = datetime.now(UTC)
    left = cert.not_valid_after_utc - now
    usable = cert.serial_number not in revoked and left > timedelta(0)
    return usable, usable and left > (cert.not_valid_after_utc - cert.not_valid_before_utc) / 3


def client_certificate_for_site(store: Store, site: str) -> tuple[bytes, bytes]:
    """The edge's client certificate for ``site`` and its key (PEM): the stored one, or a new one issued and stored.

    A new one is issued when there is none, when the stored one was revoked, comes from a replaced CA, or has less
    than a third of its :data:`CLIENT_DAYS` left. When renewal needs an encrypted CA key and no passphrase is set, a
    still valid stored certificate is returned as is.
    """
    root = _root(store)
    stored = stored_client_certificate(store, site)
    usable, fresh = _reusable(stored, root, revoked_serials(store))
    if fresh and stored is not None:
        return stored
    try:
        ca = load_ca(store)
    except OriginCAError:
        if usable and stored is not None:
            return stored
        raise
    with _locked(store):
        stored = stored_client_certificate(store, site)  # another process may have renewed it meanwhile
        if stored is not None and _reusable(stored, root, revoked_serials(store))[1]:
            return stored
        key = ec.generate_private_key(ec.SECP256R1())
        uri = CLIENT_URI_PREFIX + site
        cert = _sign_leaf(ca, key.public_key(), subject=client_subject(site),
                          sans=[x509.UniformResourceIdentifier(uri)], usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                          days=CLIENT_DAYS)
        _record(store, cert, "client", (uri,), site, "generated")
        cert_pem, key_pem = _pem(cert), private_key_pem(key)
        name = _CLIENT + site
        record = {"cert_pem": cert_pem.decode("ascii"), "key": base64.b64encode(seal(name, key_pem)).decode("ascii")}
        store.put(name, json.dumps(record).encode())
        store.publish(TOPIC)
    return cert_pem, key_pem
