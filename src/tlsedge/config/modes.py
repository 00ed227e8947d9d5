"""How a site's TLS is handled: terminated (the default), passed through by SNI, or keyless.

Why a mode per site: a site owner chooses how much to trust the edge. *terminate* gives the edge the certificate's
key and the plaintext (cache, WAF, challenge). *passthrough* gives it neither: the edge routes the client's TLS bytes
by SNI to the origin and only sees addresses, timings and the ClientHello. *keyless* gives it the plaintext but not
the key: the edge runs TLS 1.3 itself and asks the owner's key server for the one signature of each full handshake.

The loaders here read ``mode``, ``[site.passthrough]`` and ``[site.keyless]`` and reject settings a mode cannot honour
(a cache on a pass-through site would silently do nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tlsedge.config import certs
from tlsedge.config.values import name_covers, parse_origin
from tlsedge.tls.keyless.client import KeyserverEndpoint, parse_pin

if TYPE_CHECKING:
    from tlsedge.config.load import _Table
    from tlsedge.config.schema import CertificateFiles

SiteMode = Literal["terminate", "passthrough", "keyless"]
SITE_MODES: tuple[str, ...] = ("terminate", "passthrough", "keyless")
PASSTHROUGH_KEYS = ("proxy_protocol", "idle_timeout", "max_duration")
KEYLESS_KEYS = ("certificate", "servers", "pins", "client_certificate", "timeout", "ping_interval")
# What needs the plaintext or the edge's own TLS: a pass-through site cannot have any of it.
PASSTHROUGH_REFUSES = (
    "certificate", "keyless", "cache", "waf", "rate_limit", "challenge", "password", "route", "hsts",
    "max_body_size", "origin_tls", "origin_ca", "origin_server_name", "origin_client_certificate", "redirect_http",
)  # fmt: skip
# Pool settings that only mean something for HTTP requests: a tunnel has no cookie and no retry budget.
PASSTHROUGH_POOL_REFUSES = ("sticky", "retry_budget", "retry_timeout", "queue_timeout")
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class PassthroughConfig:
    """``[site.passthrough]``: what the edge does with a connection it never decrypts."""

    proxy_protocol: bool = False  # send a PROXY protocol v2 header so the origin learns the client's address
    idle_timeout: float = 300.0  # no byte either way for this long: both sides are closed
    max_duration: float = 86400.0  # a tunnel is closed after this long, busy or not: nothing lasts forever


@dataclass(frozen=True, slots=True)
class KeylessConfig:
    """``[site.keyless]``: the public chain the edge serves and the key servers that sign for it."""

    certificate: Path  # PEM chain, leaf first; no private key anywhere on the edge
    servers: tuple[KeyserverEndpoint, ...]
    pins: tuple[bytes, ...]  # SHA-256 of the SubjectPublicKeyInfo of the key servers' certificates
    client_certificate: CertificateFiles  # the edge's identity towards the key servers (mutual TLS)
    timeout: float = 2.0  # one signature, failover included; then the handshake fails
    ping_interval: float = 5.0  # health pings to each key server


def site_mode(t: _Table) -> SiteMode:
    """The site's mode; the tables of the other modes, and what the mode cannot honour, are problems."""
    mode = t.choice("mode", SITE_MODES) or "terminate"
    if mode != "passthrough" and "passthrough" in t.data:
        t.problem("passthrough", f'only applies to mode = "passthrough" (this site is {mode!r}); remove it')
    if mode != "keyless" and "keyless" in t.data:
        t.problem("keyless", f'only applies to mode = "keyless" (this site is {mode!r}); remove it')
    if mode == "passthrough":
        for key in PASSTHROUGH_REFUSES:
            if key in t.data:
                t.problem(key, "does not apply to a pass-through site: the edge never decrypts its traffic "
                          "(only hosts, origins or pools, origin, ip_rules, bans and passthrough do); remove it")
    if mode == "keyless" and "certificate" in t.data:
        t.problem("certificate", "a keyless site names its public chain in [site.keyless] certificate and keeps "
                  "its key on the key server; remove certificate")
    return mode  # type: ignore[return-value]


def load_passthrough(t: _Table) -> PassthroughConfig:
    raw = t.table("passthrough")
    if raw is None:
        return PassthroughConfig()
    p = t.child(raw, t.field("passthrough"), PASSTHROUGH_KEYS)
    values: dict[str, Any] = {
        "proxy_protocol": p.boolean("proxy_protocol"),
        "idle_timeout": p.duration("idle_timeout"),
        "max_duration": p.duration("max_duration"),
    }
    config = PassthroughConfig(**{k: v for k, v in values.items() if v is not None})
    if config.idle_timeout > config.max_duration:
        p.problem("idle_timeout", f"is longer than max_duration ({config.max_duration:g} s), which closes the "
                  "tunnel first; lower idle_timeout or raise max_duration")
    return config


def load_keyless(
    t: _Table, hosts: list[tuple[str, str]], read_client_certificate: Callable[[_Table, str], CertificateFiles | None]
) -> KeylessConfig | None:
    """``[site.keyless]``; ``read_client_certificate`` is the loader's ``{ cert, key }`` reader (checks included)."""
    if not t.require("keyless", 'a keyless site needs [site.keyless] with certificate, servers, pins and '
                     "client_certificate"):
        return None
    raw = t.table("keyless")
    if raw is None:
        return None
    k = t.child(raw, t.field("keyless"), KEYLESS_KEYS)
    k.require("certificate", 'give the site\'s public certificate chain (PEM, leaf first), e.g. certificate = '
              '"certs/shop.pem"')
    chain_path = k.path("certificate")
    if chain_path is not None:
        _check_chain(k, chain_path, hosts)
    servers = _servers(k)
    k.require("pins", 'pin the key servers\' certificates, e.g. pins = ["sha256/..."] (`tlsedge keyserver -c '
              'keyserver.toml --pin` prints it)')
    written = k.strings("pins") or []
    pins = tuple(pin for where, text in written if (pin := k.attempt(where, lambda s=text: parse_pin(s))))
    if "pins" in k.data and not pins and k.data["pins"] == []:
        k.problem("pins", "is empty; the edge only talks to key servers whose certificate it has pinned")
    k.require("client_certificate", 'give the edge\'s client certificate for the key servers, e.g. '
              'client_certificate = { cert = "certs/edge.pem", key = "certs/edge.key" }')
    client = read_client_certificate(k, "client_certificate") if "client_certificate" in k.data else None
    timeout, ping = k.duration("timeout"), k.duration("ping_interval")
    if chain_path is None or not servers or not pins or client is None:
        return None
    values = {"timeout": timeout, "ping_interval": ping}
    return KeylessConfig(chain_path, servers, pins, client, **{key: v for key, v in values.items() if v is not None})


def _servers(k: _Table) -> tuple[KeyserverEndpoint, ...]:
    if not k.require("servers", 'list the key servers, e.g. servers = ["keys.example.net:9443"]'):
        return ()
    servers: list[KeyserverEndpoint] = []
    for where, text in k.strings("servers") or []:
        address = k.attempt(where, lambda s=text: parse_origin(s))
        if address is None:
            continue
        if address.scheme is not None or address.port is None:
            k.at(where, f"{text!r}: write a key server as host:port, without a scheme (e.g. 'keys.example.net:9443')")
            continue
        server = KeyserverEndpoint(address.host, address.port)
        if server in servers:
            k.at(where, f"{text!r} is listed twice; remove one")
            continue
        servers.append(server)
    if "servers" in k.data and k.data["servers"] == []:
        k.problem("servers", "is empty; list at least one key server")
    return tuple(servers)


def _check_chain(k: _Table, path: Path, hosts: list[tuple[str, str]]) -> None:
    """The public chain must be usable for TLS 1.3 signatures, and should cover the site's hosts."""
    chain = k.attempt(k.field("certificate"), lambda: certs.read_certificates(path))
    if chain is None:
        return
    public = chain[0].public_key()
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < _MIN_RSA_BITS:
            k.problem("certificate", f"the RSA key has {public.key_size} bits; use 2048 or more")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            k.problem("certificate", f"EC curve {public.curve.name} cannot sign TLS 1.3 handshakes here; use P-256 "
                      "or P-384")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        k.problem("certificate", f"a {certs.key_type(public)} key cannot be used; use ECDSA P-256/P-384, RSA or "
                  "Ed25519")
    names = certs.dns_names(chain[0]) or []
    for where, host in hosts:
        if not any(name_covers(name, host) for name in names):
            k.at(where, f"host {host!r} is not covered by the keyless certificate (it names: "
                 f"{', '.join(names) or 'none'}); clients will refuse it", warning=True)
