"""Server-side TLS: one hardened SSLContext per site, chosen by SNI on a listener context.

Why this shape: certificates are loaded once per configuration, not per connection; the per-handshake work is one
dict lookup in the SNI callback. The listener context carries no certificate: the callback always switches the
connection to a site's context (or refuses it with ``unrecognized_name``), so a client can never get a certificate
of a site it did not ask for unless that site is the configured default.

Every context gets the same Mozilla "intermediate" (v5.7) settings. That matters because OpenSSL takes some settings
from the context the connection was created with (protocol versions, options, groups, session-ticket keys) and others
from the context switched to in the SNI callback (certificates, ciphers, ALPN): configuring both identically makes
the split invisible. Session tickets in particular are encrypted and decrypted with the keys of the *listener*
context (OpenSSL's ``session_ctx``), even after an SNI switch.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tlsedge.config.errors import Problem
from tlsedge.config.schema import CertificateFiles, Config, SiteConfig
from tlsedge.pki.site_certs import CERTS_TOPIC, StoredCertificate, load_certificate
from tlsedge.store.base import Store, StoreError
from tlsedge.tls import openssl
from tlsedge.tls.memory import load_pem_chain

# Mozilla intermediate v5.7 TLS 1.2 suites without the DHE ones (we configure no DH parameters). TLS 1.3 suites are
# OpenSSL's defaults (AES-GCM and CHACHA20-POLY1305), which is what the profile asks for.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
GROUPS = "X25519:P-256:P-384"
ALPN = ["http/1.1"]

if TYPE_CHECKING:
    from tlsedge.tls.keyless.identity import KeylessIdentity

log = logging.getLogger("tlsedge.tls")

# Attribute set on the SSLObject/SSLSocket by the SNI callback; read by TlsTable.site_of.
_SITE_ATTR = "tlsedge_site"


class TlsSetupError(Exception):
    """Certificates or keys that cannot be used; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def harden(ctx: ssl.SSLContext, ticket_keys: bytes) -> None:
    """Apply Mozilla "intermediate" settings, ALPN and the shared ticket keys to a server context."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # all suites are strong: let the client pick (e.g. ChaCha on ARM)
    ctx.options &= ~ssl.OP_NO_TICKET
    openssl.set_groups(ctx, GROUPS)
    openssl.set_ticket_keys(ctx, ticket_keys)
    ctx.set_alpn_protocols(ALPN)


def host_matches(pattern: str, name: str) -> bool:
    """One-label wildcard match as browsers do it: ``*.b.example`` matches ``a.b.example`` only."""
    if pattern.startswith("*."):
        label, dot, rest = name.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == name


class TlsTable:
    """The listener context plus the SNI → site lookup built from one configuration."""

    def __init__(
        self,
        site_contexts: dict[str, ssl.SSLContext],
        exact: dict[str, str],
        wildcards: dict[str, str],
        default_site: str | None,
        ticket_keys: bytes,
        managed: dict[str, int] | None = None,
        store: Store | None = None,
        modes: dict[str, str] | None = None,
    ) -> None:
        self._contexts = site_contexts
        # Sites the acceptor handles before OpenSSL sees the connection: "passthrough" or "keyless".
        self.modes: dict[str, str] = modes or {}
        self.keyless_identities: dict[str, KeylessIdentity] = {}  # by site: public chains checked before forking
        self._ticket_keys = ticket_keys
        self._managed = managed or {}  # site -> serial of the stored certificate its context holds
        self._store = store
        self._certs_version = store.topic_version(CERTS_TOPIC) if store is not None and self._managed else 0
        self._exact = exact  # host -> site name
        self._wildcards = wildcards  # "b.example" (for "*.b.example") -> site name
        self._default = default_site if default_site in site_contexts or default_site in self.modes else None
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        harden(self.context, ticket_keys)
        self.context.sni_callback = self._sni_callback

    def site_for_name(self, server_name: str | None) -> str | None:
        """The site whose certificate a client asking for ``server_name`` gets; None: refuse the handshake."""
        if server_name:
            name = server_name.lower().rstrip(".")
            site = self._exact.get(name)
            if site is not None:
                return site
            _, dot, parent = name.partition(".")
            if dot:
                site = self._wildcards.get(parent)
                if site is not None:
                    return site
        return self._default

    def _sni_callback(self, ssl_object: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        site = self.site_for_name(server_name)
        context = self._contexts.get(site) if site is not None else None
        if context is None:  # unknown, or a pass-through/keyless site, which OpenSSL never serves
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = context
        setattr(ssl_object, _SITE_ATTR, site)
        return None

    def site_of(self, ssl_object: Any) -> str | None:
        """Name of the site whose certificate this connection negotiated (None before/without a handshake)."""
        return getattr(ssl_object, _SITE_ATTR, None)

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites served over TLS by this table."""
        return tuple(self._contexts)

    @property
    def ticket_keys(self) -> bytes:
        """The edge's session-ticket key material (the same in every worker; keyless tickets derive theirs)."""
        return self._ticket_keys

    @property
    def store(self) -> Store | None:
        """The store managed certificates come from (None when every certificate is a file)."""
        return self._store

    def refresh(self) -> None:
        """Swap in certificates renewed or imported since the last look.

        Cheap when nothing changed (one read of the ``certs`` topic). A new context only affects handshakes that
        start after the swap: connections already open keep theirs, so nothing is dropped. A certificate that does
        not load is logged and the current one kept.
        """
        if self._store is None or not self._managed:
            return
        version = self._store.topic_version(CERTS_TOPIC)
        if version == self._certs_version:
            return
        self._certs_version = version
        for site, serial in list(self._managed.items()):
            stored = load_certificate(self._store, site)
            if stored is None or stored.serial == serial:
                continue
            try:
                self._contexts[site] = stored_context(stored, self._ticket_keys)
            except (ssl.SSLError, ValueError) as exc:
                log.error("site %s: the new certificate (serial %x) does not load, keeping the current one: %s",
                          site, stored.serial, exc)
                continue
            self._managed[site] = stored.serial
            log.info("site %s: now serving the %s certificate with serial %x, valid until %s", site, stored.source,
                     stored.serial, stored.not_after.isoformat())


def stored_context(stored: StoredCertificate, ticket_keys: bytes) -> ssl.SSLContext:
    """A hardened site context holding a certificate from the store (loaded from memory, never from a file)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx, ticket_keys)
    load_pem_chain(ctx, stored.chain_pem, stored.key_pem)
    return ctx


def build_tls_table(config: Config, ticket_keys: bytes, store: Store | None = None) -> TlsTable:
    """Load every site's certificates into hardened contexts; raise TlsSetupError listing every unusable file.

    Sites whose certificate lives in the store (ACME, imports) need ``store``; the supervisor has made sure each has
    at least a temporary certificate there.
    """
    problems: list[Problem] = []
    contexts: dict[str, ssl.SSLContext] = {}
    managed: dict[str, int] = {}
    exact: dict[str, str] = {}
    wildcards: dict[str, str] = {}
    modes: dict[str, str] = {}
    for site in config.sites:
        if not site.serves_https:
            continue
        if site.mode != "terminate":
            modes[site.name] = site.mode
            ctx = None
        elif site.managed_certificate is not None:
            ctx = _managed_context(config.path, site, ticket_keys, store, problems.append, managed)
        else:
            ctx = _site_context(config.path, site, ticket_keys, problems.append)
        if ctx is None and site.mode == "terminate":
            continue
        if ctx is not None:
            contexts[site.name] = ctx
        for host in site.hosts:
            host = host.lower().rstrip(".")
            table = wildcards if host.startswith("*.") else exact
            table.setdefault(host.removeprefix("*."), site.name)  # the loader reports duplicates; first one wins
    keyless: dict[str, KeylessIdentity] = {}
    if any(site.keyless is not None for site in config.sites):
        # Imported only when needed: the keyless engine pulls in aioquic, which terminated sites do not use.
        from tlsedge.tls.keyless.runtime import identities as keyless_identities

        keyless, keyless_problems = keyless_identities(config)
        problems += keyless_problems
    if problems:
        raise TlsSetupError(problems)
    table = TlsTable(contexts, exact, wildcards, config.server.default_site, ticket_keys, managed, store, modes)
    table.keyless_identities = keyless
    return table


def _managed_context(
    config_path: Path,
    site: SiteConfig,
    ticket_keys: bytes,
    store: Store | None,
    report: Callable[[Problem], None],
    managed: dict[str, int],
) -> ssl.SSLContext | None:
    field = f"site[{site.name}].certificate"
    try:
        stored = load_certificate(store, site.name) if store is not None else None
        if stored is None:
            report(Problem(config_path, field, "no certificate in the store yet (and no temporary one)", site.name))
            return None
        ctx = stored_context(stored, ticket_keys)
    except (StoreError, ssl.SSLError, ValueError) as exc:
        report(Problem(config_path, field, f"the stored certificate cannot be used: {exc}", site.name))
        return None
    managed[site.name] = stored.serial
    return ctx


def _site_context(
    config_path: Path, site: SiteConfig, ticket_keys: bytes, report: Callable[[Problem], None]
) -> ssl.SSLContext | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx, ticket_keys)
    key_types: dict[str, int] = {}
    ok = True
    for i, files in enumerate(site.certificates):
        field = f"site[{site.name}].certificates[{i}]"

        def problem(part: str, reason: str, field: str = field) -> None:
            report(Problem(file=config_path, field=f"{field}.{part}", reason=reason, site=site.name))

        key_type = _check_pair(files, problem)
        if key_type is None:
            ok = False
            continue
        if key_type in key_types:
            problem(
                "cert",
                f"{files.cert}: a second {key_type} certificate (certificates[{key_types[key_type]}] is "
                f"one already); a site may have one certificate per key type",
            )
            ok = False
            continue
        key_types[key_type] = i
        try:
            ctx.load_cert_chain(files.cert, files.key, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            problem("cert", f"{files.cert}: OpenSSL cannot load this certificate and key: {exc}")
            ok = False
    return ctx if ok else None


def _no_password() -> bytes:
    """Never let OpenSSL prompt on a terminal for a key passphrase (encrypted keys are reported before this)."""
    raise ValueError("encrypted private keys are not supported")


def _check_pair(files: CertificateFiles, problem: Callable[[str, str], None]) -> str | None:
    """Read and parse the certificate and key so errors name the right file and say why; return the key type."""
    try:
        cert_data = Path(files.cert).read_bytes()
    except OSError as exc:
        problem("cert", f"cannot read certificate {files.cert}: {exc.strerror or exc}")
        return None
    try:
        key_data = Path(files.key).read_bytes()
    except OSError as exc:
        problem("key", f"cannot read private key {files.key}: {exc.strerror or exc}")
        return None
    try:
        cert = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        problem("cert", f"{files.cert}: not a PEM certificate chain (expected '-----BEGIN CERTIFICATE-----')")
        return None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        problem("key", f"{files.key}: the private key is encrypted; store it unencrypted with mode 0600")
        return None
    except (ValueError, UnsupportedAlgorithm) as exc:
        problem("key", f"{files.key}: not a PEM private key ({exc})")
        return None
    if key.public_key() != cert.public_key():
        problem("key", f"{files.key}: this key does not belong to the certificate {files.cert}")
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    problem("key", f"{files.key}: unsupported key type {type(key).__name__}; use ECDSA or RSA")
    return None
