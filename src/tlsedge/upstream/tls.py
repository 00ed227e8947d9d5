"""TLS towards origins: client contexts for the modes flexible / full / strict, client certificates, session reuse,
and readable failures.

Why contexts are built at config time (one per distinct pool TLS settings): a context holds the loaded trust store
(parsing the system roots costs tens of milliseconds) and the sessions that let reconnects to the same origin resume;
building one per connection would pay both every time.

Names: the edge passes :func:`origin_server_name` as ``server_hostname`` to ``loop.create_connection`` (asyncio and
uvloop alike). For a DNS name Python sends it as SNI and checks it against the certificate. For an IP literal Python
sends *no* SNI (RFC 6066 forbids IPs there) and checks the certificate's IP address SANs instead; so an IP is returned
as is, never ``None`` (with ``None`` asyncio would fall back to the connect host, which is the same thing implicitly).

The origin CA (:mod:`tlsedge.pki.origin_ca`): ``strict`` contexts trust its root besides the system roots and
``origin_ca``, with no configuration, and refuse the certificates it revoked. OpenSSL's own CRL checking cannot do
the latter here: with ``VERIFY_CRL_CHECK_LEAF`` every origin would need a CRL from its issuer, so public-CA origins in
the same context would fail. Instead the TLS object of a strict context checks the peer's certificate against the
revoked serials when its handshake completes, and fails the handshake like a verification failure: the connection
attempt, its retries, the error log and the health checks see an ordinary ``SSLCertVerificationError``.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from tlsedge.config.errors import Problem
from tlsedge.config.schema import ORIGIN_CA_CLIENT, Config, Origin, PoolConfig
from tlsedge.pki import origin_ca
from tlsedge.store import Store, StoreError, open_store
from tlsedge.store.sqlite import FILE_NAME as STORE_FILE
from tlsedge.tls.memory import load_pem_chain
from tlsedge.tls.server import TlsSetupError

log = logging.getLogger("tlsedge.upstream")

ALPN = ["http/1.1"]
_SESSION_LIMIT = 1024


class OriginSslContext(ssl.SSLContext):
    """A client context that resumes TLS sessions with the origins it connected to before.

    Python's asyncio (and uvloop) give no way to pass a session to ``create_connection``, but both create the TLS
    object through ``context.wrap_bio(..., server_hostname=...)``; overriding it offers the last session seen for that
    name. Sessions are therefore kept per server name: origins sharing one ``origin_server_name`` share a slot, which
    costs at worst a full handshake when they do not share ticket keys.
    """

    sessions: dict[str, ssl.SSLSession]
    watch: OriginCaWatch | None = None  # set when the origin CA exists (strict contexts check its revocations)

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):  # type: ignore[override]
        if session is None and server_hostname is not None:
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, server_hostname: str, session: ssl.SSLSession) -> None:
        """Keep the newest resumable session for a server name (bounded: names come from the configuration)."""
        if len(self.sessions) < _SESSION_LIMIT or server_hostname in self.sessions:
            self.sessions[server_hostname] = session


class _RevocationCheckedObject(ssl.SSLObject):
    """The TLS object of a strict context: a completed handshake with a revoked certificate fails like a bad one.

    asyncio and uvloop call ``do_handshake`` until it returns; raising here is what they see when OpenSSL itself
    refuses a certificate, so nothing downstream needs to know about revocation.
    """

    def do_handshake(self) -> None:
        super().do_handshake()
        watch = self.context.watch  # type: ignore[attr-defined]
        reason = watch.check(self) if watch is not None else None
        if reason is not None:
            exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {reason}")
            exc.reason = "CERTIFICATE_VERIFY_FAILED"
            exc.verify_code = 23  # X509_V_ERR_CERT_REVOKED
            exc.verify_message = reason
            raise exc


class OriginCaWatch:
    """What a worker follows of the origin CA: the revoked serials, and renewed client certificates of its sites.

    One instance serves every context made by one :func:`origin_ssl_contexts` call. ``refresh`` re-reads the store
    only when topic ``origin-ca`` moved (a counter read otherwise), so it fits a worker's periodic sweep.
    """

    __slots__ = ("clients", "failed", "issuer", "serials", "version")

    def __init__(self) -> None:
        self.version = -1
        self.failed = -1  # `version` when a read last failed: failures are logged once until a read succeeds
        self.issuer = b""  # DER of the root's subject: the issuer of every certificate it revoked
        self.serials: frozenset[int] = frozenset()
        self.clients: list[tuple[OriginSslContext, str, bytes]] = []  # (context, site, certificate PEM loaded)

    def refresh(self, store: Store) -> bool:
        """Take the store's revocations and client certificates when they changed; True when something was read.

        Never raises: when the store cannot be read, the last state stays in force and the error is logged once.
        """
        try:
            version = store.topic_version(origin_ca.TOPIC)
            if version == self.version:
                return False
            root = origin_ca.root_pem(store)
            issuer = x509.load_pem_x509_certificate(root).subject.public_bytes() if root else b""
            serials = origin_ca.revoked_serials(store) if root else frozenset()
            clients = [origin_ca.stored_client_certificate(store, site) for _, site, _ in self.clients]
        except (StoreError, ValueError) as exc:
            if self.failed != self.version:
                self.failed = self.version
                log.error("cannot read the origin CA's revocations from the store (%s); the last ones read stay in "
                          "force", exc)
            return False
        self.issuer, self.serials = issuer, serials
        for index, stored in enumerate(clients):
            ctx, site, loaded = self.clients[index]
            if stored is None or stored[0] == loaded:
                continue
            try:
                load_pem_chain(ctx, *stored)
            except ssl.SSLError as exc:
                log.error("site %s: cannot use the renewed origin-CA client certificate (%s); keeping the old one",
                          site, exc)
                continue
            self.clients[index] = (ctx, site, stored[0])
            log.info("site %s: presenting the renewed origin-CA client certificate to its origins", site)
        self.version = version
        return True

    def check(self, ssl_object: ssl.SSLObject) -> str | None:
        """None when the peer's certificate is not revoked by the origin CA; else why it is refused.

        The certificate is parsed only while something is revoked: most edges never pay for this check.
        """
        if not self.serials:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            return None
        cert = x509.load_der_x509_certificate(der)
        if cert.serial_number in self.serials and cert.issuer.public_bytes() == self.issuer:
            return (
                f"it was revoked by the tlsedge origin CA (serial {cert.serial_number:x}); give the origin a new "
                "certificate: tlsedge origin-cert issue"
            )
        return None


def origin_ca_watch(contexts: dict[tuple[str, str], OriginSslContext | None]) -> OriginCaWatch | None:
    """The watch shared by the contexts of :func:`origin_ssl_contexts` (None: no origin CA, nothing to follow)."""
    for ctx in contexts.values():
        if ctx is not None and ctx.watch is not None:
            return ctx.watch
    return None


def origin_ssl_context(
    pool: PoolConfig,
    config_path: Path | None = None,
    where: str = "",
    site: str | None = None,
    *,
    origin_ca_root: bytes | None = None,
    origin_ca_client: tuple[bytes, bytes] | None = None,
    watch: OriginCaWatch | None = None,
) -> OriginSslContext | None:
    """The client context for a pool's HTTPS origins; None for ``flexible`` (plain HTTP).

    ``full`` encrypts but does not authenticate the origin (any certificate is accepted); ``strict`` verifies the
    chain against the system roots plus ``origin_ca``, plus ``origin_ca_root`` (the origin CA's root PEM), and the
    name from :func:`origin_server_name`, and refuses what ``watch`` says is revoked. With a ``client_certificate``
    the edge proves itself to the origin (authenticated origin pulls); for ``"origin-ca"`` the certificate and key
    are ``origin_ca_client`` (PEM).
    Raises TlsSetupError when ``origin_ca`` or the client certificate cannot be used (``config_path`` and ``where``,
    e.g. ``site[blog].pool[api]``, only label that problem).
    """
    if pool.origin_tls == "flexible":
        return None
    ctx = OriginSslContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sessions = {}
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    problems: list[Problem] = []
    if pool.client_certificate == ORIGIN_CA_CLIENT:
        problem = _origin_ca_client(ctx, origin_ca_client, config_path, where, site)
        if problem is not None:
            problems.append(problem)
    elif pool.client_certificate is not None:
        files = pool.client_certificate
        try:
            ctx.load_cert_chain(str(files.cert), str(files.key))
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                _file_problem(exc, config_path or Path(files.cert), where, "client_certificate", site,
                              f"cannot load the client certificate {files.cert} with key {files.key}")
            )
    if pool.origin_tls == "full":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if pool.origin_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(pool.origin_ca))
            except (OSError, ssl.SSLError) as exc:
                problems.append(
                    _file_problem(exc, config_path or Path(pool.origin_ca), where, "origin_ca", site,
                                  f"cannot load CA certificates from {pool.origin_ca}")
                )
        if origin_ca_root is not None:
            ctx.load_verify_locations(cadata=origin_ca_root.decode("ascii"))
        if watch is not None:
            ctx.sslobject_class = _RevocationCheckedObject
    ctx.watch = watch
    if problems:
        raise TlsSetupError(problems)
    return ctx


def _origin_ca_client(ctx: OriginSslContext, pems: tuple[bytes, bytes] | None, config_path: Path | None, where: str,
                      site: str | None) -> Problem | None:
    """Load the origin CA's client certificate of the site; a Problem when there is none or it cannot be used."""
    field = f"{where}.client_certificate" if where else "client_certificate"
    if pems is None:
        return Problem(file=config_path or Path("tlsedge.toml"), field=field, site=site,
                       reason="'origin-ca' needs the origin CA, which does not exist yet: run tlsedge ca init")
    try:
        load_pem_chain(ctx, *pems)
    except (OSError, ssl.SSLError) as exc:
        return Problem(file=config_path or Path("tlsedge.toml"), field=field, site=site,
                       reason=f"cannot use the origin CA's client certificate: {exc}")
    return None


def _file_problem(exc: OSError | ssl.SSLError, file: Path, where: str, key: str, site: str | None,
                  what: str) -> Problem:
    """A file the context could not load, as the operator should read it."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return Problem(file=file, field=f"{where}.{key}" if where else key, reason=f"{what}: {reason}", site=site)


def pool_where(site_name: str, pool: PoolConfig) -> str:
    return f"site[{site_name}].pool[{pool.name}]"


def origin_ssl_contexts(config: Config) -> dict[tuple[str, str], OriginSslContext | None]:
    """Contexts for every pool, by (site, pool) name; every unusable file is reported in one TlsSetupError.

    Pools with the same TLS settings share one context (loading the system roots costs tens of milliseconds, and a
    shared context shares its resumable sessions); an origin-CA client certificate is per site, so it is part of the
    settings. The store under ``server.state_dir`` is read once here: the origin CA's root, its revocations, and the
    client certificates of sites with ``client_certificate = "origin-ca"`` (issued now when due). All strict contexts
    share one :class:`OriginCaWatch` (see :func:`origin_ca_watch`).
    """
    store = _existing_store(config)
    try:
        return _contexts(config, store)
    finally:
        if store is not None:
            store.close()


def _contexts(config: Config, store: Store | None) -> dict[tuple[str, str], OriginSslContext | None]:
    contexts: dict[tuple[str, str], OriginSslContext | None] = {}
    by_settings: dict[tuple, OriginSslContext | None] = {}
    problems: list[Problem] = []
    try:
        root = origin_ca.root_pem(store) if store is not None else None
        watch = OriginCaWatch() if root is not None else None
        if watch is not None and store is not None:
            watch.refresh(store)
    except (StoreError, ValueError) as exc:
        raise TlsSetupError([_store_problem(config, f"cannot read the origin CA from the store: {exc}")]) from None
    for site in config.sites:
        for pool in site.pools:
            origin_client = pool.client_certificate == ORIGIN_CA_CLIENT and pool.origin_tls != "flexible"
            settings = (pool.origin_tls, pool.origin_ca, pool.client_certificate, site.name if origin_client else None)
            if settings not in by_settings:
                where = pool_where(site.name, pool)
                try:
                    client = _site_client_certificate(config, store, site.name, where) if origin_client else None
                    ctx = origin_ssl_context(pool, config.path, where, site.name, origin_ca_root=root,
                                             origin_ca_client=client, watch=watch)
                    if ctx is not None and client is not None and watch is not None:
                        watch.clients.append((ctx, site.name, client[0]))
                    by_settings[settings] = ctx
                except TlsSetupError as exc:
                    problems.extend(exc.problems)
                    by_settings[settings] = None
            contexts[(site.name, pool.name)] = by_settings[settings]
    if problems:
        raise TlsSetupError(problems)
    return contexts


def _existing_store(config: Config) -> Store | None:
    """The edge's store, when there is one: a configuration that never used the store does not create it here."""
    state_dir = config.server.state_dir
    return open_store(state_dir) if (Path(state_dir) / STORE_FILE).exists() else None


def _store_problem(config: Config, reason: str, site: str | None = None, field: str = "server.state_dir") -> Problem:
    return Problem(file=config.path, field=field, reason=reason, site=site)


def _site_client_certificate(config: Config, store: Store | None, site: str, where: str) -> tuple[bytes, bytes] | None:
    """The site's origin-CA client certificate (issued or renewed now when due); None without an origin CA."""
    if store is None:
        return None
    try:
        return origin_ca.client_certificate_for_site(store, site)
    except origin_ca.OriginCAError as exc:
        if origin_ca.root_pem(store) is None:
            return None  # reported by origin_ssl_context with the fix
        reason = f"cannot get the origin CA's client certificate: {exc}"
    except StoreError as exc:
        reason = f"cannot read the origin CA's client certificate from the store: {exc}"
    raise TlsSetupError([_store_problem(config, reason, site, f"{where}.client_certificate")])


def origin_server_name(pool: PoolConfig, origin: Origin) -> str | None:
    """``server_hostname`` for connecting to ``origin``: the configured name, else the origin host (IPs included).

    None when the connection is plain HTTP (not an https origin, or flexible mode).
    """
    if not origin.tls or pool.origin_tls == "flexible":
        return None
    return pool.origin_server_name or origin.host.strip("[]")


_REASONS = {
    # OpenSSL reason codes of non-verification handshake failures, as an operator would want them explained.
    "WRONG_VERSION_NUMBER": "the origin does not speak TLS on this port (plain HTTP?)",
    "UNSUPPORTED_PROTOCOL": "the origin offers only TLS versions older than 1.2",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the origin refused TLS 1.2 and 1.3",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "the origin refused the handshake (it may require a client certificate, see client_certificate; or it shares "
        "no cipher or TLS version with the edge)"
    ),
    "TLSV1_UNRECOGNIZED_NAME": "the origin does not serve the requested server name (origin_server_name?)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the origin requires a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the origin rejected our client certificate",
    "UNEXPECTED_EOF_WHILE_READING": "the origin closed the connection during the TLS handshake",
}


def describe_tls_failure(exc: BaseException) -> str:
    """A short operator-facing reason for a failed TLS connection to an origin, for the error log."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or exc.reason or "verification failed").rstrip(".")
        return f"origin certificate rejected: {message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _REASONS:
            return f"TLS handshake with origin failed: {_REASONS[reason]}"
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            alert = reason.split("_ALERT_", 1)[1].lower().replace("_", " ")
            return f"TLS handshake with origin failed: the origin sent alert {alert!r}"
        return f"TLS handshake with origin failed: {(reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake with origin timed out"
    if isinstance(exc, ConnectionError):
        return f"origin connection failed during TLS handshake: {exc.strerror or type(exc).__name__}"
    return f"TLS connection to origin failed: {exc}"
