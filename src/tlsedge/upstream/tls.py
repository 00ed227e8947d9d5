"""TLS towards origins: client contexts for the modes flexible / full / strict, client certificates, session reuse,
and readable failures.

Why contexts are built at config time (one per distinct pool TLS settings): a context holds the loaded trust store
(parsing the system roots costs tens of milliseconds) and the sessions that let reconnects to the same origin resume;
building one per connection would pay both every time.

Names: the edge passes :func:`origin_server_name` as ``server_hostname`` to ``loop.create_connection`` (asyncio and
uvloop alike). For a DNS name Python sends it as SNI and checks it against the certificate. For an IP literal Python
sends *no* SNI (RFC 6066 forbids IPs there) and checks the certificate's IP address SANs instead; so an IP is returned
as is, never ``None`` (with ``None`` asyncio would fall back to the connect host, which is the same thing implicitly).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tlsedge.config.errors import Problem
from tlsedge.config.schema import Config, Origin, PoolConfig
from tlsedge.tls.server import TlsSetupError

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

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):  # type: ignore[override]
        if session is None and server_hostname is not None:
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, server_hostname: str, session: ssl.SSLSession) -> None:
        """Keep the newest resumable session for a server name (bounded: names come from the configuration)."""
        if len(self.sessions) < _SESSION_LIMIT or server_hostname in self.sessions:
            self.sessions[server_hostname] = session


def origin_ssl_context(
    pool: PoolConfig, config_path: Path | None = None, where: str = "", site: str | None = None
) -> OriginSslContext | None:
    """The client context for a pool's HTTPS origins; None for ``flexible`` (plain HTTP).

    ``full`` encrypts but does not authenticate the origin (any certificate is accepted); ``strict`` verifies the
    chain against the system roots plus ``origin_ca`` and the name from :func:`origin_server_name`. With a
    ``client_certificate`` the edge proves itself to the origin (authenticated origin pulls).
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
    if pool.client_certificate is not None:
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
    if problems:
        raise TlsSetupError(problems)
    return ctx


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
    shared context shares its resumable sessions).
    """
    contexts: dict[tuple[str, str], OriginSslContext | None] = {}
    by_settings: dict[tuple, OriginSslContext | None] = {}
    problems: list[Problem] = []
    for site in config.sites:
        for pool in site.pools:
            settings = (pool.origin_tls, pool.origin_ca, pool.client_certificate)
            if settings not in by_settings:
                try:
                    where = pool_where(site.name, pool)
                    by_settings[settings] = origin_ssl_context(pool, config.path, where, site.name)
                except TlsSetupError as exc:
                    problems.extend(exc.problems)
                    by_settings[settings] = None
            contexts[(site.name, pool.name)] = by_settings[settings]
    if problems:
        raise TlsSetupError(problems)
    return contexts


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
