"""The validated, typed shape of a tlsedge configuration.

Everything here is immutable and already checked: the data plane reads these objects on the hot path and never
re-validates them. `tlsedge.config.load` turns a TOML file into these objects or into a list of problems.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tlsedge.config.cache import CacheStorage, SiteCache
from tlsedge.config.guard import GuardSettings, SiteGuardConfig

if TYPE_CHECKING:  # modes.py needs values.py, which needs this module
    from tlsedge.config.modes import KeylessConfig, PassthroughConfig, SiteMode

OriginTls = Literal["flexible", "full", "strict"]
Balance = Literal["round_robin", "least_requests", "power_of_two", "hash"]
HashMethod = Literal["ring", "maglev"]
HashSource = Literal["client_ip", "header", "cookie", "uri"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AcmeKeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa2048", "rsa3072"]
AcmeChallenge = Literal["http-01", "tls-alpn-01"]
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# ``client_certificate = "origin-ca"``: the edge's client certificate for the site, issued by tlsedge's origin CA.
ORIGIN_CA_CLIENT = "origin-ca"


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
    max_connections_per_ip: int = 0  # open connections per client address, all workers together; 0: no limit
    connection_rate_per_ip: float = 0.0  # new connections per second per client address (GCRA); 0: no limit
    connection_burst_per_ip: int = 0  # how many may come at once above the rate; 0: as many as the rate


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
class ExternalAccountBinding:
    """ACME External Account Binding (RFC 8555 7.3.4): a key id and the name of the variable holding the MAC key."""

    kid: str
    hmac_key_env: str  # environment variable with the base64url HMAC key (a secret: not in the config file)


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """How a site's public certificate is ordered and renewed over ACME (``[acme]`` defaults, per-site overrides)."""

    directory: str = LETS_ENCRYPT
    contact: str | None = None  # e-mail address for the account (expiry notices)
    key_type: AcmeKeyType = "ecdsa-p256"
    challenges: tuple[AcmeChallenge, ...] = ("http-01", "tls-alpn-01")  # tried in this order
    profile: str | None = None  # ACME profile (e.g. "shortlived") when the directory offers profiles
    eab: ExternalAccountBinding | None = None
    directory_ca: Path | None = None  # trust anchors for the directory's own HTTPS (test CAs); None: system roots
    renew_remaining: float = 1 / 3  # renew when this fraction of the lifetime is left (ARI's window wins)
    retry_min: float = 60.0  # first retry after a failed order; doubles per failure (with jitter)
    retry_max: float = 6 * 3600.0
    check_interval: float = 600.0  # the manager looks at every certificate at least this often


@dataclass(frozen=True, slots=True)
class ManagedCertificate:
    """A certificate tlsedge keeps in its store: ordered over ACME, or imported with ``tlsedge cert import``."""

    source: Literal["acme", "import"]
    acme: AcmeSettings | None = None  # for source "acme"


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
    max_connections: int = 0  # per origin server and worker; 0 = unlimited; over it -> queued, then 503
    tunnel_timeout: float = 300.0  # max silence in both directions of an upgraded (WebSocket) connection


@dataclass(frozen=True, slots=True)
class PoolServer:
    """One server of a pool, with its balancing settings."""

    origin: Origin
    weight: int = 1  # 1..1000: share of requests relative to the other servers of the pool
    max_connections: int | None = None  # per worker; None = the site's [origin].max_connections
    backup: bool = False  # used only when no primary server is up
    drain: bool = False  # no new clients: only requests pinned to it by the sticky cookie


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health check of every server of a pool (run once per edge by the control side)."""

    path: str = "/"  # request target, starts with "/"
    interval: float = 5.0
    timeout: float = 2.0  # connect + TLS + response head (+ body when `body` is set)
    status: tuple[int, int] = (200, 399)  # inclusive range of healthy statuses
    body: str | None = None  # substring the first 64 KiB of the body must contain
    rise: int = 2  # consecutive successes that mark a down server up
    fall: int = 3  # consecutive failures that mark an up server down
    host: str | None = None  # Host header of the check; None = the site's first exact host name


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health: servers that fail real requests are ejected for a growing period."""

    consecutive_failures: int = 5  # connect failures, resets, timeouts and 5xx in a row; 0 disables
    base_ejection: float = 10.0  # first ejection; the n-th lasts n times as long
    max_ejection: float = 300.0


@dataclass(frozen=True, slots=True)
class StickySessions:
    """An edge-set, HMAC-signed cookie pins a client to a server while that server is up."""

    cookie: str = "tlsedge_srv"
    max_age: float | None = None  # None: a session cookie


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """A named group of origin servers of a site, with how to balance over them and how to talk to them."""

    name: str
    servers: tuple[PoolServer, ...]
    origin_tls: OriginTls
    origin_ca: Path | None = None  # strict: extra trust anchors (PEM bundle) besides the system roots
    origin_server_name: str | None = None  # SNI and verified name; default: each server's host
    # authenticated origin pulls: the edge's certificate, or ORIGIN_CA_CLIENT for one issued by the origin CA
    client_certificate: CertificateFiles | Literal["origin-ca"] | None = None
    balance: Balance = "round_robin"
    hash_on: HashSource = "client_ip"  # only for balance = "hash"
    hash_key: str | None = None  # header name (lower-case) or cookie name for hash_on header/cookie
    hash_method: HashMethod = "ring"
    sticky: StickySessions | None = None
    health: HealthCheck | None = None
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    slow_start: float = 10.0  # a server coming back ramps its weight up over this; 0 disables
    retries: int = 2  # extra attempts per request, each on another server
    retry_budget: float = 0.2  # retries may add at most this fraction of extra requests (plus a small burst)
    retry_timeout: float = 10.0  # no new attempt starts later than this after the first one
    queue_timeout: float = 5.0  # how long a request waits when every server is at max_connections; then 503

    @property
    def origins(self) -> tuple[Origin, ...]:
        return tuple(server.origin for server in self.servers)


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header changes on a request or a response: remove, then set (replace), then add (append)."""

    remove: tuple[str, ...] = ()  # lower-case names
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A routing rule of a site; the first rule that matches a request picks its pool and its rewrites."""

    pool: str
    path: str | None = None  # exact path (query string excluded)
    path_prefix: str | None = None
    path_regex: str | None = None  # Python regular expression searched in the path
    methods: tuple[str, ...] = ()  # upper-case; empty = any method
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-case name, exact value or None = present)
    host: str | None = None  # Host header sent to the origin instead of the client's
    prefix_rewrite: str | None = None  # replaces the matched path_prefix ("" strips it)
    request_headers: HeaderEdits = field(default_factory=HeaderEdits)
    response_headers: HeaderEdits = field(default_factory=HeaderEdits)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One ``[[site]]``: the names it answers for, its certificates, its origin pools and routes."""

    name: str
    hosts: tuple[str, ...]  # lower-case; exact names or "*.example.com" (one label)
    certificates: tuple[CertificateFiles, ...]  # empty: plain-HTTP-only site
    pools: tuple[PoolConfig, ...]  # the first one is the default pool (``origins`` makes one named "default")
    origin_tls: OriginTls  # the default of the site's pools
    routes: tuple[RouteConfig, ...] = ()
    origin_ca: Path | None = None  # default of the site's pools
    origin_server_name: str | None = None  # default of the site's pools
    origin_client_certificate: CertificateFiles | Literal["origin-ca"] | None = None  # default of the site's pools
    managed_certificate: ManagedCertificate | None = None  # certificate from the store (ACME or imported)
    redirect_http: bool = True  # http listener answers 308 to https (only for sites with certificates)
    hsts: str | None = None  # value of Strict-Transport-Security added to https responses
    max_body_size: int = 100 * 1024 * 1024  # request body limit; over it -> 413; 0 = unlimited
    origin: OriginTimeouts = field(default_factory=OriginTimeouts)
    cache: SiteCache = field(default_factory=SiteCache)
    guard: SiteGuardConfig = field(default_factory=SiteGuardConfig)
    mode: SiteMode = "terminate"
    passthrough: PassthroughConfig | None = None  # for mode "passthrough"
    keyless: KeylessConfig | None = None  # for mode "keyless"

    @property
    def serves_https(self) -> bool:
        """The site answers on https: a certificate from files, ACME or an import, or a pass-through/keyless mode."""
        return bool(self.certificates) or self.managed_certificate is not None or self.mode != "terminate"

    @property
    def origins(self) -> tuple[Origin, ...]:
        """Every origin server of the site, in pool order (a server in several pools appears once)."""
        return tuple(dict.fromkeys(o for pool in self.pools for o in pool.origins))

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated configuration, with the file it came from (relative paths are already resolved)."""

    path: Path
    server: ServerConfig
    sites: tuple[SiteConfig, ...]
    cache: CacheStorage = field(default_factory=CacheStorage)
    guard: GuardSettings = field(default_factory=GuardSettings)
    warnings: tuple[str, ...] = ()  # things that work but deserve the operator's attention (logged at start)

    def site(self, name: str) -> SiteConfig:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)
