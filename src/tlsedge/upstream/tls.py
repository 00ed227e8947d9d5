"""TLS towards origins: one client context per site for the modes flexible / full / strict, and readable failures.

Why one context per site, built at config time: a context holds the loaded trust store (parsing the system roots costs
milliseconds) and the session cache that lets reconnects to the same origin resume; building one per connection would
pay both every time.

Names: the edge passes :func:`origin_server_name` as ``server_hostname`` to ``loop.create_connection`` (asyncio and
uvloop alike). For a DNS name Python sends it as SNI and checks it against the certificate. For an IP literal Python
sends *no* SNI (RFC 6066 forbids IPs there) and checks the certificate's IP address SANs instead; so an IP is returned
as is, never ``None`` (with ``None`` asyncio would fall back to the connect host, which is the same thing implicitly).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tlsedge.config.errors import Problem
from tlsedge.config.schema import Config, Origin, SiteConfig
from tlsedge.tls.server import TlsSetupError

ALPN = ["http/1.1"]


def origin_ssl_context(site: SiteConfig, config_path: Path | None = None) -> ssl.SSLContext | None:
    """The client context for ``site``'s HTTPS origins; None for ``flexible`` (plain HTTP).

    ``full`` encrypts but does not authenticate the origin (any certificate is accepted); ``strict`` verifies the
    chain against the system roots plus ``site.origin_ca`` and the name from :func:`origin_server_name`.
    Raises TlsSetupError when ``origin_ca`` cannot be used (``config_path`` only labels that problem).
    """
    if site.origin_tls == "flexible":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    if site.origin_tls == "full":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if site.origin_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(site.origin_ca))
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problem = Problem(
                file=config_path or Path(site.origin_ca),
                field=f"site[{site.name}].origin_ca",
                reason=f"cannot load CA certificates from {site.origin_ca}: {reason}",
                site=site.name,
            )
            raise TlsSetupError([problem]) from exc
    return ctx


def origin_ssl_contexts(config: Config) -> dict[str, ssl.SSLContext | None]:
    """Contexts for every site, by site name; every unusable ``origin_ca`` is reported in one TlsSetupError."""
    contexts: dict[str, ssl.SSLContext | None] = {}
    problems: list[Problem] = []
    for site in config.sites:
        try:
            contexts[site.name] = origin_ssl_context(site, config.path)
        except TlsSetupError as exc:
            problems.extend(exc.problems)
    if problems:
        raise TlsSetupError(problems)
    return contexts


def origin_server_name(site: SiteConfig, origin: Origin) -> str | None:
    """``server_hostname`` for connecting to ``origin``: the configured name, else the origin host (IPs included).

    None when the connection is plain HTTP (not an https origin, or flexible mode).
    """
    if not origin.tls or site.origin_tls == "flexible":
        return None
    return site.origin_server_name or origin.host.strip("[]")


_REASONS = {
    # OpenSSL reason codes of non-verification handshake failures, as an operator would want them explained.
    "WRONG_VERSION_NUMBER": "the origin does not speak TLS on this port (plain HTTP?)",
    "UNSUPPORTED_PROTOCOL": "the origin offers only TLS versions older than 1.2",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the origin refused TLS 1.2 and 1.3",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the origin refused the handshake (no common cipher or version?)",
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
