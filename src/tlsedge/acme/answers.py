"""Challenge answers, written to the store by the certificate manager and served by every worker.

Why the store: the manager orders, but the CA's validation request reaches whichever worker accepts it (HTTP-01 on the
http listener, TLS-ALPN-01 on the https one). Answers live a few minutes (``ANSWER_TTL``), past any validation.

TLS-ALPN-01 (RFC 8737): the worker completes a handshake that negotiated ALPN ``acme-tls/1`` with a self-signed
certificate for the name in SNI carrying the critical ``id-pe-acmeIdentifier`` extension, whose value is the DER
OCTET STRING of SHA-256(key authorization); then it closes the connection (no HTTP follows).
"""

from __future__ import annotations

import hashlib
import json
import ssl
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from tlsedge.pki.local_ca import private_key_pem
from tlsedge.store.base import Store
from tlsedge.tls.memory import load_pem_chain

ANSWER_TTL = 600.0
HTTP01_PREFIX = b"/.well-known/acme-challenge/"
ACME_TLS_ALPN = "acme-tls/1"
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

_HTTP01 = "acme-http-01/"
_TLSALPN01 = "acme-tls-alpn-01/"
_MAX_TOKEN = 256  # RFC 8555 tokens are 43 base64url characters; anything much longer is not one of ours


def put_http01(store: Store, token: str, key_authorization: str) -> None:
    store.put(_HTTP01 + token, key_authorization.encode("ascii"), ttl=ANSWER_TTL)


def http01_answer(store: Store, token: bytes) -> bytes | None:
    """The key authorization for a token from a request path, or None when we are not expecting it."""
    if not token or len(token) > _MAX_TOKEN or not token.replace(b"-", b"").replace(b"_", b"").isalnum():
        return None
    entry = store.get(_HTTP01 + token.decode("ascii"))
    return entry.value if entry is not None else None


def put_tls_alpn01(store: Store, name: str, key_authorization: str) -> None:
    """Make and store the validation certificate for ``name``."""
    cert_pem, key_pem = validation_certificate(name, key_authorization)
    record = {"cert": cert_pem.decode("ascii"), "key": key_pem.decode("ascii")}
    store.put(_TLSALPN01 + name.lower(), json.dumps(record).encode(), ttl=ANSWER_TTL)


def remove_answers(store: Store, tokens: list[str], names: list[str]) -> None:
    for token in tokens:
        store.delete(_HTTP01 + token)
    for name in names:
        store.delete(_TLSALPN01 + name.lower())


def validation_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """A self-signed certificate answering TLS-ALPN-01 for ``name`` (PEM certificate, PEM key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def tls_alpn01_context(store: Store, name: str | None) -> ssl.SSLContext | None:
    """A server context answering TLS-ALPN-01 for ``name``, or None when no validation is pending for it."""
    if not name:
        return None
    entry = store.get(_TLSALPN01 + name.lower().rstrip("."))
    if entry is None:
        return None
    record = json.loads(entry.value)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    load_pem_chain(ctx, record["cert"].encode("ascii"), record["key"].encode("ascii"))
    return ctx
