"""The validated, typed shape of a tlsedge configuration.

Everything here is immutable and already checked: the data plane reads these objects on the hot path and never
re-validates them. `tlsedge.config.load` turns a TOML file into these objects or into a list of problems.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

OriginTls = Literal["flexible", "full", "strict"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the edge listens on, e.g. ``127.0.0.1:8443`` or ``[::1]:8443``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Client-side limits; every one is explicit so nothing waits or grows forever."""

    max_header_bytes: int = 32 * 1024  # request line + headers; over it -> 431
    max_header_count: int = 100  # over it -> 431
    max_uri_bytes: int = 8 * 1024  # over it -> 414
    header_timeout: float = 10.0  # from connection/keep-alive start to end of headers; -> 408
    body_idle_timeout: float = 30.0  # max silence while receiving a request body; -> 408
    keepalive_timeout: float = 60.0  # idle keep-alive connection is closed after this
    send_timeout: float = 60.0  # max time a client may leave a response unread (its window full); then closed
    handshake_timeout: float = 10.0  # TLS handshake must finish within this
    max_connections: int = 10_000  # per worker; further connections are closed at accept


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` table: process model, listeners and global limits."""

    state_dir: Path
    workers: int
    https: tuple[Listener, ...]
    http: tuple[Listener, ...]
    default_site: str | None = None  # site for unknown/absent SNI and unknown Host; None -> unrecognized_name / 421
    trusted_proxies: tuple[IpNetwork, ...] = ()  # peers whose X-Forwarded-* headers are kept
    drain_timeout: float = 30.0  # SIGTERM / reload: how long in-flight requests may take to finish
    access_log: str = "-"  # "-" stdout, "off", or a file path
    error_log: str = "-"  # "-" stderr, or a file path
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A certificate chain (leaf first, PEM) and its private key (PEM, mode 0600 advised)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Origin:
    """One origin server: ``https://127.0.0.1:9443`` -> scheme https, host 127.0.0.1, port 9443."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OriginTimeouts:
    """Timeouts and pool settings towards the origins of one site."""

    connect_timeout: float = 5.0  # TCP + TLS connect; -> 502 when refused, 504 when it times out
    response_timeout: float = 60.0  # from request sent to response headers; -> 504
    read_timeout: float = 60.0  # max silence while reading a response body; connection closed
    idle_timeout: float = 30.0  # idle pooled connection to an origin is closed after this
    max_idle: int = 64  # idle keep-alive connections kept per origin server
    max_connections: int = 0  # per origin server and worker; 0 = unlimited; over it -> 503


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One ``[[site]]``: the names it answers for, its certificates and its origins."""

    name: str
    hosts: tuple[str, ...]  # lower-case; exact names or "*.example.com" (one label)
    certificates: tuple[CertificateFiles, ...]  # empty: plain-HTTP-only site
    origins: tuple[Origin, ...]
    origin_tls: OriginTls
    origin_ca: Path | None = None  # strict: extra trust anchors (PEM bundle) besides the system roots
    origin_server_name: str | None = None  # SNI and verified name towards origins; default: origin host
    redirect_http: bool = True  # http listener answers 308 to https (only for sites with certificates)
    hsts: str | None = None  # value of Strict-Transport-Security added to https responses
    max_body_size: int = 100 * 1024 * 1024  # request body limit; over it -> 413; 0 = unlimited
    origin: OriginTimeouts = field(default_factory=OriginTimeouts)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated configuration, with the file it came from (relative paths are already resolved)."""

    path: Path
    server: ServerConfig
    sites: tuple[SiteConfig, ...]
    warnings: tuple[str, ...] = ()  # things that work but deserve the operator's attention (logged at start)

    def site(self, name: str) -> SiteConfig:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)
