"""Turning a TOML file into a validated `Config`, or into every problem it has at once.

The operator fixes a configuration in one round when they see all of its problems, so nothing here stops at the
first one: each reader records a `Problem` (file, site, field, what is wrong and what to do) and returns ``None`` for
an unusable value, and the walk goes on with the schema's default in its place. Only at the end is `ConfigError`
raised, so a Config built from placeholders never escapes. Things that work but deserve attention become
`Config.warnings`.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tlsedge.guard.iprules import parse_network
from tlsedge.guard.ratelimit import parse_rate

from . import certs
from .cache import load_site_cache, load_storage
from .errors import ConfigError, Problem
from .guard import SITE_GUARD_KEYS, load_guard_settings, load_site_guard
from .modes import PASSTHROUGH_POOL_REFUSES, load_keyless, load_passthrough, site_mode
from .schema import (
    LETS_ENCRYPT,
    ORIGIN_CA_CLIENT,
    AcmeChallenge,
    AcmeKeyType,
    AcmeSettings,
    Balance,
    CertificateFiles,
    Config,
    ExternalAccountBinding,
    HashMethod,
    HeaderEdits,
    HealthCheck,
    IpNetwork,
    Limits,
    Listener,
    ManagedCertificate,
    Origin,
    OriginTimeouts,
    OriginTls,
    OutlierDetection,
    PoolConfig,
    PoolServer,
    RouteConfig,
    ServerConfig,
    SiteConfig,
    StickySessions,
)
from .values import (
    OriginAddress,
    describe,
    is_ip_address,
    listeners_clash,
    name_covers,
    normalize_hostname,
    parse_cookie_name,
    parse_duration,
    parse_hash_on,
    parse_header_name,
    parse_header_value,
    parse_host_header,
    parse_listener,
    parse_method,
    parse_origin,
    parse_request_path,
    parse_size,
    parse_status_range,
    suggest,
)

T = TypeVar("T")

_ROOT_KEYS = ("server", "acme", "cache", "guard", "ip_rules", "bans", "site")
_SERVER_KEYS = (
    "state_dir",
    "workers",
    "https",
    "http",
    "default_site",
    "trusted_proxies",
    "drain_timeout",
    "access_log",
    "error_log",
    "limits",
)
_SITE_KEYS = (
    "name",
    "hosts",
    "certificate",
    "origins",
    "origin_tls",
    "origin_ca",
    "origin_server_name",
    "origin_client_certificate",
    "redirect_http",
    "hsts",
    "max_body_size",
    "origin",
    "pool",
    "route",
    "cache",
    "mode",
    "passthrough",
    "keyless",
    *SITE_GUARD_KEYS,
)
_CERTIFICATE_KEYS = ("cert", "key")
_ACME_KEYS = (
    "directory",
    "contact",
    "key_type",
    "challenges",
    "profile",
    "eab",
    "directory_ca",
    "renew_remaining",
    "retry_min",
    "retry_max",
    "check_interval",
)
# What a site's certificate = { acme = true, ... } may override; the rest is edge-wide ([acme]).
_SITE_ACME_KEYS = ("acme", "directory", "contact", "key_type", "challenges", "profile", "eab", "directory_ca")
_EAB_KEYS = ("kid", "hmac_key_env")
_ACME_KEY_TYPES: tuple[str, ...] = get_args(AcmeKeyType)
_ACME_CHALLENGES: tuple[str, ...] = get_args(AcmeChallenge)
_EMAIL_RE = re.compile(r"^[^@\s:/]+@[^@\s:/]+\.[^@\s:/]+$")
_STICKY_KEYS = ("cookie", "max_age")
_ROUTE_KEYS = (
    "path",
    "path_prefix",
    "path_regex",
    "methods",
    "headers",
    "pool",
    "host",
    "prefix_rewrite",
    "request_headers",
    "response_headers",
)
_HEADER_EDIT_KEYS = ("remove", "set", "add")
_ORIGIN_TLS_MODES: tuple[str, ...] = get_args(OriginTls)
_BALANCES: tuple[str, ...] = get_args(Balance)
_HASH_METHODS: tuple[str, ...] = get_args(HashMethod)
_MAX_WORKERS = 256
_MAX_RETRIES = 10
_DEFAULT_HSTS = "max-age=31536000"
_SHORTHAND_POOL = "default"  # the pool `origins` makes
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # site and pool names
_HSTS_RE = re.compile(r'^max-age="?\d+"?(\s*;\s*(includesubdomains|preload))*\s*;?$', re.IGNORECASE)


def load_config(path: Path) -> Config:
    """Read and validate a configuration file; raise `ConfigError` listing every problem found.

    Relative paths in the file are resolved against the file's directory, so the result does not depend on the
    directory the edge was started from.
    """
    path = Path(path)
    report = _Report(file=path, base=path.absolute().parent)
    data = _read_toml(report)
    root = _Table(report, data, "", None, _ROOT_KEYS)
    server = _server(root)
    acme = _acme_defaults(root)
    cache = load_storage(root)
    guard = load_guard_settings(root)
    sites = _sites(root, acme)
    _check_server_against_sites(root, server, sites)
    if report.problems:
        raise ConfigError(report.problems)
    return Config(path=path.absolute(), server=server, sites=sites, cache=cache, guard=guard,
                  warnings=tuple(report.warnings))


@dataclass
class _Report:
    """What one load found: problems (the file cannot be used) and warnings (it can, but look at this)."""

    file: Path
    base: Path  # directory against which relative paths resolve
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, where: str, reason: str, site: str | None = None) -> None:
        self.problems.append(Problem(file=self.file, field=where, reason=reason, site=site))

    def warn(self, where: str, reason: str, site: str | None = None) -> None:
        """Record a warning once: a site-level setting inherited by several pools is warned about at one place."""
        text = str(Problem(file=self.file, field=where, reason=reason, site=site))
        if text not in self.warnings:
            self.warnings.append(text)

    def resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base / path


def _read_toml(report: _Report) -> dict[str, Any]:
    """Parse the file; a file that cannot be read or parsed has nothing else worth checking, so raise at once."""
    try:
        text = report.file.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = f"cannot read the configuration file: {exc.strerror or exc}; check the path given with -c"
        raise ConfigError([Problem(report.file, "(file)", reason)]) from None
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise ConfigError([Problem(report.file, "(file)", reason)]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = f"TOML syntax error: {exc}; fix the syntax there (see https://toml.io)"
        raise ConfigError([Problem(report.file, "(toml)", reason)]) from None


class _Table:
    """One TOML table being read: typed getters that record a problem and return None for a missing or bad value.

    Unknown keys are reported when the table is opened, so typos are never silently ignored.
    """

    def __init__(
        self, report: _Report, data: dict[str, Any], prefix: str, site: str | None, allowed: Collection[str]
    ) -> None:
        self.report, self.data, self.prefix, self.site = report, data, prefix, site
        for key in data:
            if key not in allowed:
                self.problem(key, f"unknown key {key!r}{suggest(key, allowed)}; fix its name or remove it")

    def child(self, data: dict[str, Any], prefix: str, allowed: Collection[str]) -> _Table:
        return _Table(self.report, data, prefix, self.site, allowed)

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def problem(self, key: str, reason: str) -> None:
        self.report.problem(self.field(key), reason, self.site)

    def warn(self, key: str, reason: str) -> None:
        self.report.warn(self.field(key), reason, self.site)

    def at(self, where: str, reason: str, *, warning: bool = False) -> None:
        """Report at a full field name (an array element such as ``site[blog].origins[1]``)."""
        (self.report.warn if warning else self.report.problem)(where, reason, self.site)

    def require(self, key: str, hint: str) -> bool:
        if key in self.data:
            return True
        self.problem(key, f"missing; {hint}")
        return False

    def attempt(self, where: str, parse: Callable[[], T]) -> T | None:
        """Run a parser whose ValueError message is an operator-facing reason; report it at ``where``."""
        try:
            return parse()
        except ValueError as exc:
            self.at(where, str(exc))
            return None

    def _typed(self, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            self.problem(key, f"must be {expected}, not {describe(value)}")
            return None
        return value

    def string(self, key: str, *, allow_empty: bool = False) -> str | None:
        value = self._typed(key, str, "a string")
        if value == "" and not allow_empty:
            self.problem(key, "is empty; give a value or remove the key")
            return None
        return value

    def parsed(self, key: str, parse: Callable[[str], T]) -> T | None:
        """A string read through a value parser (from `values`) whose ValueError message is the reason."""
        text = self.string(key)
        return None if text is None else self.attempt(self.field(key), lambda: parse(text))

    def boolean(self, key: str) -> bool | None:
        return self._typed(key, bool, "true or false")

    def table(self, key: str) -> dict[str, Any] | None:
        return self._typed(key, dict, f"a table ([{self.field(key)}] or {{ ... }})")

    def integer(self, key: str, low: int, high: int | None = None) -> int | None:
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        value = self._typed(key, int, f"an integer {span}")
        if value is not None and not (low <= value and (high is None or value <= high)):
            self.problem(key, f"must be {span}, not {value}")
            return None
        return value

    def duration(self, key: str, *, allow_zero: bool = False) -> float | None:
        if key not in self.data:
            return None
        return self.attempt(self.field(key), lambda: parse_duration(self.data[key], allow_zero=allow_zero))

    def fraction(self, key: str) -> float | None:
        """A number from 0 to 1; integers (0, 1) are accepted since TOML writes them without a decimal point."""
        value = self._typed(key, (int, float), "a number from 0 to 1")
        if value is not None and not 0 <= value <= 1:
            self.problem(key, f"must be from 0 to 1, not {value}")
            return None
        return None if value is None else float(value)

    def size(self, key: str, minimum: int = 0) -> int | None:
        return self.attempt(self.field(key), lambda: parse_size(self.data[key], minimum)) if key in self.data else None

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(key)
        if value is not None and value not in choices:
            options = ", ".join(repr(c) for c in choices)
            self.problem(key, f"{value!r} is not one of {options}{suggest(value, choices)}")
            return None
        return value

    def strings(self, key: str) -> list[tuple[str, str]] | None:
        """An array of strings as (field, value) pairs, so each element's problems point at its index."""
        values = self._typed(key, list, "an array of strings")
        if values is None:
            return None
        items = []
        for index, value in enumerate(values):
            where = f"{self.field(key)}[{index}]"
            if isinstance(value, str):
                items.append((where, value))
            else:
                self.at(where, f"must be a string, not {describe(value)}")
        return items

    def path(self, key: str) -> Path | None:
        text = self.string(key)
        return self.report.resolve(text) if text is not None else None

    def tables(self, key: str, written: str) -> list[tuple[int, dict[str, Any]]]:
        """An array of tables (``[[site.pool]]``) as (index, table) pairs; any other shape is reported."""
        raw = self.data.get(key)
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(key, f"must be an array of tables (write {written} with double brackets), not {describe(raw)}")
            return []
        items = []
        for index, item in enumerate(raw):
            if isinstance(item, dict):
                items.append((index, item))
            else:
                self.at(f"{self.field(key)}[{index}]", f"must be a table (write {written}), not {describe(item)}")
        return items


def _given(**values: Any) -> dict[str, Any]:
    """Keep only the values that were given and valid, so the schema's own defaults apply to the rest."""
    return {key: value for key, value in values.items() if value is not None}


# --- [server] ---------------------------------------------------------------------------------------------------------


def _server(root: _Table) -> ServerConfig:
    t = root.child(root.table("server") or {}, "server", _SERVER_KEYS)
    https = _listeners(t, "https")
    http = _listeners(t, "http")
    if not t.data.get("https") and not t.data.get("http"):
        root.problem(
            "server", 'no listener; add https = ["127.0.0.1:8443"] and/or http = ["127.0.0.1:8080"] to [server]'
        )
    _check_listener_clashes(t, https + http)
    limits = t.table("limits")
    return ServerConfig(
        state_dir=_state_dir(t),
        workers=t.integer("workers", 1, _MAX_WORKERS) or min(os.cpu_count() or 1, _MAX_WORKERS),
        https=tuple(listener for _, listener in https),
        http=tuple(listener for _, listener in http),
        **_given(
            default_site=t.string("default_site"),  # checked against the sites later
            trusted_proxies=_trusted_proxies(t),
            drain_timeout=t.duration("drain_timeout"),
            access_log=_log_target(t, "access_log", allow_off=True),
            error_log=_log_target(t, "error_log", allow_off=False),
            limits=_limits(t.child(limits, "server.limits", _LIMITS)) if limits is not None else None,
        ),
    )


def _listeners(t: _Table, key: str) -> list[tuple[str, Listener]]:
    items = t.strings(key) or []
    parsed = [(where, t.attempt(where, lambda text=text: parse_listener(text))) for where, text in items]
    return [(where, listener) for where, listener in parsed if listener is not None]


def _check_listener_clashes(t: _Table, listeners: list[tuple[str, Listener]]) -> None:
    """Two listeners that cannot both be bound (https and http included) would fail at start: report the later one."""
    for index, (where, listener) in enumerate(listeners):
        for earlier_where, earlier in listeners[:index]:
            if listeners_clash(earlier, listener):
                t.at(
                    where,
                    f"'{listener}' clashes with {earlier_where} ('{earlier}'): an address and port can be listened "
                    "on once ('*' and '0.0.0.0' cover every IPv4 address, '[::]' every IPv6 one); remove one or "
                    "change its port",
                )
                break


def _state_dir(t: _Table) -> Path:
    path = t.path("state_dir") or t.report.resolve("state")
    if path.exists() and not path.is_dir():
        t.problem("state_dir", f"{str(path)!r} exists and is not a directory; point state_dir at a directory")
    return path


def _log_target(t: _Table, key: str, *, allow_off: bool) -> str | None:
    """Where a log goes: "-" (standard stream), "off" (access log only) or a file path whose directory must exist."""
    value = t.string(key)
    if value is None or value == "-" or (value == "off" and allow_off):
        return value
    if value == "off":
        t.problem(key, "the error log cannot be turned off; use '-' for stderr or a file path")
        return None
    path = t.report.resolve(value)
    if path.is_dir():
        t.problem(key, f"{str(path)!r} is a directory; give a file path, e.g. '{path}/{key.replace('_', '.')}'")
    elif not path.parent.is_dir():
        t.problem(key, f"directory {str(path.parent)!r} does not exist; create it or choose another path")
    return str(path)


def _trusted_proxies(t: _Table) -> tuple[IpNetwork, ...] | None:
    items = t.strings("trusted_proxies")
    if items is None:
        return None
    return tuple(net for where, text in items if (net := t.attempt(where, lambda text=text: parse_network(text))))


_LIMITS: dict[str, Callable[[_Table, str], Any]] = {
    "max_header_bytes": lambda t, k: t.size(k, minimum=1),
    "max_header_count": lambda t, k: t.integer(k, 1),
    "max_uri_bytes": lambda t, k: t.size(k, minimum=1),
    "header_timeout": _Table.duration,
    "body_idle_timeout": _Table.duration,
    "keepalive_timeout": _Table.duration,
    "send_timeout": _Table.duration,
    "handshake_timeout": _Table.duration,
    "max_connections": lambda t, k: t.integer(k, 1),
    "max_connections_per_ip": lambda t, k: t.integer(k, 0),
    "connection_rate_per_ip": lambda t, k: t.parsed(k, parse_rate),
    "connection_burst_per_ip": lambda t, k: t.integer(k, 0),
}


def _limits(t: _Table) -> Limits:
    return Limits(**_given(**{key: read(t, key) for key, read in _LIMITS.items()}))


# --- [[site]] ---------------------------------------------------------------------------------------------------------


def _sites(root: _Table, acme: AcmeSettings) -> tuple[SiteConfig, ...]:
    if root.data.get("site") in (None, []):
        root.problem("site", "no site configured; add a [[site]] table with name, hosts and origins")
    names: dict[str, str] = {}
    host_owners: dict[str, str] = {}
    sites = []
    for index, item in root.tables("site", "[[site]]"):
        where = f"site[{index}]"
        name = _entry_name(root, item, where, names, "site", "blog")
        sites.append(_site(root.report, item, f"site[{name}]" if name else where, name, host_owners, acme))
    return tuple(sites)


def _entry_name(
    parent: _Table, item: dict[str, Any], where: str, taken: dict[str, str], kind: str, example: str
) -> str | None:
    """A site's or pool's name, or None when it is missing, malformed or taken (its fields then say ``[<index>]``).

    ``taken`` maps the names seen so far to where they were given, and gets this one.
    """
    # Only "name" is read here; unknown keys are reported once, by the entry's own table.
    t = parent.child({"name": item["name"]} if "name" in item else {}, where, ("name",))
    if not t.require("name", f'give the {kind} a name, e.g. name = "{example}"'):
        return None
    name = t.string("name")
    if name is None:
        return None
    if not _NAME_RE.match(name):
        t.problem(
            "name",
            f"{name!r} is not a valid {kind} name; use lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit",
        )
        return None
    if name in taken:
        unique = "site names must be unique" if kind == "site" else "pool names must be unique in a site: rename one"
        t.problem("name", f"{name!r} is already the name of {taken[name]}; {unique}")
        return None
    taken[name] = where
    return name


def _site(
    report: _Report,
    item: dict[str, Any],
    prefix: str,
    name: str | None,
    host_owners: dict[str, str],
    acme: AcmeSettings,
) -> SiteConfig:
    t = _Table(report, item, prefix, name, _SITE_KEYS)
    hosts = _hosts(t, host_owners)
    mode = site_mode(t)
    special = mode != "terminate"
    managed = None if special else _managed_certificate(t, hosts, acme)
    certificates = () if managed is not None or special else _certificates(t, hosts)
    keyless = load_keyless(t, hosts, _client_certificate_files) if mode == "keyless" else None
    defaults = _tls_defaults(t)
    pools, pool_names = _pools(t, defaults, passthrough=mode == "passthrough")
    _check_site_tls_used(t, defaults, pools)
    routes = _routes(t, [pool.config.name for pool in pools], pool_names)
    _check_routes_reach_pools(t, pools, routes)
    origin = t.table("origin")
    has_certificates = bool(certificates or item.get("certificate")) or special
    redirect_http, hsts = _https_policy(t, has_certificates=has_certificates)
    return SiteConfig(
        name=name or "",
        hosts=tuple(host for _, host in hosts),
        certificates=certificates,
        pools=tuple(pool.config for pool in pools),
        origin_tls=defaults.mode or (pools[0].config.origin_tls if pools else "strict"),
        routes=tuple(route for _, route in routes),
        redirect_http=redirect_http,
        hsts=hsts,
        **_given(
            origin_ca=defaults.ca,
            origin_server_name=defaults.server_name,
            origin_client_certificate=defaults.client_certificate,
            managed_certificate=managed,
            max_body_size=t.size("max_body_size"),
            cache=load_site_cache(t),
            guard=load_site_guard(t),
            origin=_origin_timeouts(t.child(origin, f"{prefix}.origin", _ORIGIN)) if origin is not None else None,
            mode=mode,
            passthrough=load_passthrough(t) if mode == "passthrough" else None,
            keyless=keyless,
        ),
    )


def _hosts(t: _Table, owners: dict[str, str]) -> list[tuple[str, str]]:
    """The site's host names, normalized; a host may belong to one site only, or routing would be ambiguous."""
    if not t.require("hosts", 'list the names this site answers for, e.g. hosts = ["example.com", "*.example.com"]'):
        return []
    items = t.strings("hosts")
    if items == [] and t.data["hosts"] == []:
        t.problem("hosts", 'is empty; list the names this site answers for, e.g. hosts = ["example.com"]')
    hosts: list[tuple[str, str]] = []
    for where, text in items or []:
        host = t.attempt(where, lambda text=text: normalize_hostname(text, allow_wildcard=True))
        if host is None:
            continue
        if host in owners:
            other = owners[host]
            reason = "listed twice in this site; remove one" if other == t.prefix else f"already served by {other}"
            t.at(where, f"host {host!r} is {reason}; a host belongs to one site only: remove it from one of them")
            continue
        owners[host] = t.prefix
        hosts.append((where, host))
    return hosts


# --- certificates -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LoadedCertificate:
    files: CertificateFiles
    leaf: x509.Certificate | None  # None when the pair has problems (then coverage is not checked)
    key_type: str | None


def _certificates(t: _Table, hosts: list[tuple[str, str]]) -> tuple[CertificateFiles, ...]:
    """The site's certificate/key pairs: one table, or an array (at most one per key type: EC and RSA)."""
    raw = t.data.get("certificate")
    if raw is None:
        return ()
    if isinstance(raw, dict):
        entries = [(t.field("certificate"), raw)]
    elif isinstance(raw, list):
        entries = [(f"{t.field('certificate')}[{i}]", entry) for i, entry in enumerate(raw)]
    else:
        t.problem(
            "certificate", f'must be a table {{ cert = "...", key = "..." }} or an array of them, not {describe(raw)}'
        )
        return ()
    loaded: list[_LoadedCertificate] = []
    seen_types: dict[str, str] = {}
    for where, entry in entries:
        if not isinstance(entry, dict):
            t.at(where, f'must be a table {{ cert = "...", key = "..." }}, not {describe(entry)}')
            continue
        one = _certificate(t.child(entry, where, _CERTIFICATE_KEYS))
        if one is None:
            continue
        if one.key_type is not None and one.key_type in seen_types:
            t.at(
                where,
                f"a second {one.key_type} certificate (the first is {seen_types[one.key_type]}); a site may hold "
                "one certificate per key type (e.g. one EC and one RSA) and clients get the one they support: "
                "remove one",
            )
        elif one.key_type is not None:
            seen_types[one.key_type] = where
        loaded.append(one)
    if loaded and all(one.leaf is not None for one in loaded):
        _check_coverage(t, hosts, [one.leaf for one in loaded if one.leaf is not None])
    return tuple(one.files for one in loaded)


def _certificate(t: _Table) -> _LoadedCertificate | None:
    pair = _read_pair(
        t,
        'give the PEM certificate chain (leaf first), e.g. cert = "certs/site.pem"',
        'give the PEM private key of the certificate, e.g. key = "certs/site.key"',
    )
    if pair is None:
        return None
    files, chain, key = pair
    if key is not None and certs.key_type(key) in ("Ed25519", "Ed448"):
        t.warn(
            "key",
            f"most browsers do not accept {certs.key_type(key)} certificates; serve an EC P-256 "
            "certificate too (certificate = [{...}, {...}])",
        )
    if chain is None or key is None:
        return _LoadedCertificate(files, None, certs.key_type(key) if key is not None else None)
    matched = _check_key_matches(t, chain, key, files.cert)
    _check_dates(t, chain[0], "clients")
    if certs.dns_names(chain[0]) is None:
        t.warn(
            "cert",
            "the certificate has no subjectAltName; clients ignore the Common Name: reissue it with "
            "the site's host names as subjectAltName",
        )
    return _LoadedCertificate(files, chain[0] if matched else None, certs.key_type(key))


def _read_pair(
    t: _Table, cert_hint: str, key_hint: str
) -> tuple[CertificateFiles, list[x509.Certificate] | None, PrivateKeyTypes | None] | None:
    """A ``{ cert, key }`` table's files, parsed: the chain and the key are None when unusable (already reported)."""
    has_cert = t.require("cert", cert_hint)
    has_key = t.require("key", key_hint)
    cert_path, key_path = t.path("cert"), t.path("key")
    if not (has_cert and has_key) or cert_path is None or key_path is None:
        return None
    chain = t.attempt(t.field("cert"), lambda: certs.read_certificates(cert_path))
    key = t.attempt(t.field("key"), lambda: certs.read_private_key(key_path))
    if key is not None:
        _check_key_file_mode(t, key_path)
        unfit = certs.key_unfit_reason(key)
        if unfit:
            t.problem("key", unfit)
            key = None
    return CertificateFiles(cert=cert_path, key=key_path), chain, key


def _check_key_matches(t: _Table, chain: list[x509.Certificate], key: PrivateKeyTypes, cert_path: Path) -> bool:
    public = key.public_key()
    if certs.same_public_key(chain[0].public_key(), public):
        return True
    position = next((i for i, c in enumerate(chain) if certs.same_public_key(c.public_key(), public)), None)
    if position is not None:
        t.problem(
            "cert",
            f"the leaf certificate must come first: the key matches certificate #{position + 1} in "
            f"{str(cert_path)!r}; put the leaf first, then its intermediates",
        )
    else:
        subject = chain[0].subject.rfc4514_string() or "(empty subject)"
        t.problem(
            "key",
            f"the private key does not match the certificate ({subject}) in {str(cert_path)!r}; "
            "give the key the certificate was issued for",
        )
    return False


def _check_dates(t: _Table, leaf: x509.Certificate, peers: str) -> None:
    """Out-of-date certificates still load (renewal may be on its way), but ``peers`` will refuse them: warn."""
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        t.warn(
            "cert",
            f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {peers} will "
            "refuse it: renew it",
        )
    elif leaf.not_valid_before_utc > now:
        t.warn(
            "cert",
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; {peers} "
            "will refuse it until then: check the certificate and the system clock",
        )


def _check_key_file_mode(t: _Table, path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o044:
        t.warn(
            "key",
            f"the private key file is readable by group or others (mode {mode:04o}); restrict it: chmod 600 {path}",
        )


def _check_coverage(t: _Table, hosts: list[tuple[str, str]], leaves: list[x509.Certificate]) -> None:
    names = [name for leaf in leaves for name in certs.dns_names(leaf) or []]
    shown = ", ".join(names) or "none"
    for where, host in hosts:
        if not any(name_covers(name, host) for name in names):
            t.at(
                where,
                f"host {host!r} is not covered by the site's certificates (they name: {shown}); clients "
                "will refuse the connection: add it to the certificate or remove it",
                warning=True,
            )


# --- certificates from the store: ACME and imports -------------------------------------------------------------------


def _acme_defaults(root: _Table) -> AcmeSettings:
    """The edge-wide ``[acme]`` table: defaults for every site whose certificate comes from ACME."""
    raw = root.table("acme")
    if raw is None:
        return AcmeSettings()
    t = root.child(raw, "acme", _ACME_KEYS)
    base = AcmeSettings()
    retry_min = t.duration("retry_min")
    retry_max = t.duration("retry_max")
    if retry_min is not None and retry_max is not None and retry_min > retry_max:
        t.problem("retry_max", f"is shorter than retry_min ({retry_max:g} s < {retry_min:g} s); raise it")
    renew = t.fraction("renew_remaining")
    if renew is not None and not 0 < renew < 1:
        t.problem("renew_remaining", f"must be between 0 and 1 (exclusive), e.g. 0.33, not {renew:g}")
        renew = None
    return replace(
        _acme_overrides(t, base),
        **_given(
            renew_remaining=renew,
            retry_min=retry_min,
            retry_max=retry_max,
            check_interval=t.duration("check_interval"),
        ),
    )


def _acme_overrides(t: _Table, base: AcmeSettings) -> AcmeSettings:
    """The settings a site may override (and ``[acme]`` sets edge-wide), applied on top of ``base``."""
    directory = t.string("directory")
    if directory is not None and not directory.startswith("https://"):
        t.problem("directory", f"{directory!r} is not an https:// URL; give the directory URL, e.g. {LETS_ENCRYPT!r}")
        directory = None
    contact = t.string("contact")
    if contact is not None:
        contact = contact.removeprefix("mailto:")
        if not _EMAIL_RE.match(contact):
            t.problem("contact", f"{contact!r} is not an e-mail address; write e.g. 'ops@example.com'")
            contact = None
    challenges = None
    items = t.strings("challenges")
    if items is not None:
        chosen = [text for where, text in items if t.attempt(where, lambda text=text: _challenge(text))]
        if not items:
            t.problem("challenges", f"is empty; list one or both of {', '.join(map(repr, _ACME_CHALLENGES))}")
        challenges = tuple(dict.fromkeys(chosen)) or None
    directory_ca = t.path("directory_ca")
    if directory_ca is not None:
        t.attempt(t.field("directory_ca"), lambda: certs.read_certificates(directory_ca))
    return replace(
        base,
        **_given(
            directory=directory,
            contact=contact,
            key_type=t.choice("key_type", _ACME_KEY_TYPES),
            challenges=challenges,
            profile=t.string("profile"),
            eab=_eab(t),
            directory_ca=directory_ca,
        ),
    )


def _challenge(text: str) -> str:
    if text not in _ACME_CHALLENGES:
        raise ValueError(
            f"{text!r} is not a challenge tlsedge answers; use {' or '.join(map(repr, _ACME_CHALLENGES))}"
            f"{suggest(text, _ACME_CHALLENGES)}"
        )
    return text


def _eab(t: _Table) -> ExternalAccountBinding | None:
    raw = t.table("eab")
    if raw is None:
        return None
    e = t.child(raw, t.field("eab"), _EAB_KEYS)
    has_kid = e.require("kid", 'give the key identifier your CA gave you, e.g. kid = "kid-1"')
    has_env = e.require(
        "hmac_key_env", 'name the environment variable holding the HMAC key, e.g. hmac_key_env = "TLSEDGE_EAB_KEY"'
    )
    kid, env = e.string("kid"), e.string("hmac_key_env")
    if not (has_kid and has_env) or kid is None or env is None:
        return None
    if not os.environ.get(env):
        e.problem(
            "hmac_key_env",
            f"the environment variable {env} is not set; export the base64url HMAC key your CA gave you in it "
            "(the key is a secret, so it is not written in the configuration)",
        )
    return ExternalAccountBinding(kid=kid, hmac_key_env=env)


def _managed_certificate(t: _Table, hosts: list[tuple[str, str]], acme: AcmeSettings) -> ManagedCertificate | None:
    """``certificate = { acme = true, ... }`` or ``{ imported = true }``: a certificate kept in the store."""
    raw = t.data.get("certificate")
    if not isinstance(raw, dict) or not ("acme" in raw or "imported" in raw):
        return None
    where = t.field("certificate")
    if "imported" in raw:
        c = t.child(raw, where, ("imported",))
        if c.boolean("imported") is not True:
            c.problem("imported", "must be true (the certificate comes from `tlsedge cert import`), or remove it")
        return ManagedCertificate(source="import")
    c = t.child(raw, where, _SITE_ACME_KEYS)
    if c.boolean("acme") is not True:
        c.problem("acme", "must be true to order the certificate over ACME; for files write { cert = ..., key = ... }")
    settings = _acme_overrides(c, acme)
    for host_where, host in hosts:
        if host.startswith("*."):
            t.at(
                host_where,
                f"{host!r} is a wildcard: ACME issues wildcards only over the dns-01 challenge, which tlsedge does "
                "not answer; list the names, or import a wildcard certificate (certificate = { imported = true })",
            )
    return ManagedCertificate(source="acme", acme=settings)


# --- origin TLS: the site's defaults and each pool's own settings -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TlsDefaults:
    """The origin TLS settings a site gives its pools (None: not given or unusable); a pool may override each one."""

    mode_field: str | None  # where the site's origin_tls is written; None when the site leaves it to inference
    mode: OriginTls | None
    ca: Path | None
    server_name: str | None
    client_certificate: CertificateFiles | Literal["origin-ca"] | None


# Site-level key -> the pool key (and PoolConfig field) that overrides it, and the modes in which it means something.
_INHERITED_TLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "origin_ca": ("origin_ca", ("strict",)),
    "origin_server_name": ("origin_server_name", ("full", "strict")),
    "origin_client_certificate": ("client_certificate", ("full", "strict")),
}


def _tls_defaults(t: _Table) -> _TlsDefaults:
    mode = t.choice("origin_tls", _ORIGIN_TLS_MODES)
    return _TlsDefaults(
        mode_field=t.field("origin_tls") if "origin_tls" in t.data else None,
        mode=cast(OriginTls | None, mode),
        ca=t.path("origin_ca"),
        server_name=_server_name(t, "origin_server_name"),
        client_certificate=_client_certificate(t, "origin_client_certificate"),
    )


def _server_name(t: _Table, key: str) -> str | None:
    return t.parsed(key, lambda text: normalize_hostname(text, allow_wildcard=False))


def _client_certificate(t: _Table, key: str) -> CertificateFiles | Literal["origin-ca"] | None:
    """The certificate the edge presents to origins that ask for one (authenticated origin pulls)."""
    if t.data.get(key) == ORIGIN_CA_CLIENT:
        return ORIGIN_CA_CLIENT
    if isinstance(t.data.get(key), str):
        t.problem(
            key,
            f'must be "{ORIGIN_CA_CLIENT}" (a client certificate from tlsedge\'s origin CA) or a table '
            f'{{ cert = "...", key = "..." }}, not {t.data[key]!r}',
        )
        return None
    raw = t.table(key)
    if raw is None:
        return None
    c = t.child(raw, t.field(key), _CERTIFICATE_KEYS)
    pair = _read_pair(
        c,
        'give the PEM certificate chain the edge presents to origins (leaf first), e.g. cert = "certs/edge-client.pem"',
        'give the PEM private key of that certificate, e.g. key = "certs/edge-client.key"',
    )
    if pair is None:
        return None
    files, chain, private_key = pair
    if chain is not None and private_key is not None and _check_key_matches(c, chain, private_key, files.cert):
        _check_dates(c, chain[0], "origins")
        if not certs.allows_client_auth(chain[0]):
            c.warn(
                "cert",
                "the certificate's extended key usage does not include clientAuth, so origins that check it "
                "(nginx, OpenSSL) refuse it as a client certificate: issue one with extendedKeyUsage = clientAuth",
            )
    return files


def _tls_only_reason(key: str, modes: list[str], who: str) -> str:
    """Why a CA, server name or client certificate does not apply to the modes in use."""
    if key == "origin_ca":
        uses = f"this {who} uses {modes[0]!r}" if len(modes) == 1 else "its pools use " + " and ".join(map(repr, modes))
        return f"only applies with origin_tls = 'strict' ({uses}); remove it or set origin_tls = 'strict'"
    what = "" if key == "origin_server_name" else " (the edge presents it in the TLS handshake)"
    reason = f"only applies to TLS origins{what} and origin_tls = 'flexible' is plain HTTP"
    return f"{reason}; remove it or use https:// origins"


def _pool_tls(p: _Table, mode: OriginTls, defaults: _TlsDefaults, *, declared: bool) -> tuple[dict[str, Any], set[str]]:
    """A pool's CA, server name and client certificate: its own (which must apply to its mode) or the site's.

    A site-level value reaches only the pools whose mode can use it, so a site may set origin_ca for its strict pools
    and still have a flexible one. Returns the values as PoolConfig fields, and the site keys the pool takes.
    """
    site_values = {
        "origin_ca": defaults.ca,
        "origin_server_name": defaults.server_name,
        "origin_client_certificate": defaults.client_certificate,
    }
    fields: dict[str, Any] = {}
    inherits: set[str] = set()
    for site_key, (key, modes) in _INHERITED_TLS.items():
        if not (declared and key in p.data):
            inherits.add(site_key)
            fields[key] = site_values[site_key] if mode in modes else None
            continue
        value = _own_tls_value(p, key)
        if mode not in modes:
            p.problem(key, _tls_only_reason(site_key, [mode], "pool"))
        elif key == "origin_ca" and value is not None:
            p.attempt(p.field(key), lambda value=value: certs.read_certificates(value))
        fields[key] = value
    return fields, inherits


def _own_tls_value(p: _Table, key: str) -> Any:
    if key == "origin_ca":
        return p.path(key)
    if key == "origin_server_name":
        return _server_name(p, key)
    return _client_certificate(p, key)


def _check_site_tls_used(t: _Table, defaults: _TlsDefaults, pools: list[_Pool]) -> None:
    """A site-level CA, server name or client certificate must be usable by a pool that takes it from the site."""
    for site_key, (_, modes) in _INHERITED_TLS.items():
        if site_key not in t.data or not pools:
            continue
        used_by = sorted({pool.config.origin_tls for pool in pools if site_key in pool.inherits})
        if not used_by:
            t.warn(site_key, "every pool of the site sets its own value, so this one is never used; remove it")
        elif not any(mode in modes for mode in used_by):
            t.problem(site_key, _tls_only_reason(site_key, used_by, "site"))
        elif site_key == "origin_ca" and defaults.ca is not None:
            t.attempt(t.field(site_key), lambda ca=defaults.ca: certs.read_certificates(ca))


def _pool_mode(
    p: _Table, servers_key: str, entries: list[_ServerEntry], own: bool, defaults: _TlsDefaults
) -> OriginTls:
    """The pool's origin_tls: its own, else the site's, else inferred from the schemes of its servers."""
    if own:
        mode, where = p.choice("origin_tls", _ORIGIN_TLS_MODES), p.field("origin_tls")
    elif defaults.mode_field is not None:
        mode, where = defaults.mode, defaults.mode_field
    else:
        return _inferred_mode(p, servers_key, entries)
    if mode is None:
        return "strict"  # the unusable value is already reported; strict is the placeholder that implies least
    for entry in entries:
        if mode == "flexible" and entry.address.scheme == "https":
            p.at(
                entry.where,
                "is https:// but origin_tls = 'flexible' speaks plain HTTP to origins; use http:// "
                "or origin_tls = 'strict'",
            )
        elif mode != "flexible" and entry.address.scheme == "http":
            p.at(
                entry.where,
                f"is http:// but origin_tls = '{mode}' means TLS to the origin: this would send plaintext; "
                "use https:// or origin_tls = 'flexible'",
            )
    if mode == "full":
        p.at(
            where,
            "'full' does not verify origin certificates: anyone on the path to the origin can "
            "impersonate it; use 'strict' (with origin_ca for a private CA)",
            warning=True,
        )
    return cast(OriginTls, mode)


def _inferred_mode(p: _Table, servers_key: str, entries: list[_ServerEntry]) -> OriginTls:
    schemes = {entry.address.scheme for entry in entries if entry.address.scheme}
    if schemes == {"http", "https"}:
        p.problem(
            servers_key,
            "mixes http:// and https:// origins; use one scheme for all of them, or set origin_tls "
            "('flexible' for http, 'strict' or 'full' for https)",
        )
    return "flexible" if schemes == {"http"} else "strict"


def _warn_unverifiable_ip_origins(
    p: _Table, mode: OriginTls, servers: tuple[PoolServer, ...], name: str | None
) -> None:
    """Strict verification of an origin named by IP needs an IP in its certificate, which is rare: say so early."""
    if mode != "strict" or name is not None:
        return
    for server in servers:
        if is_ip_address(server.origin.host):
            p.warn(
                "origin_server_name",
                f"not set while origin '{server.origin}' is an IP address: its certificate must "
                "name that IP; set origin_server_name to the name on the origin's certificate",
            )
            return


# --- pools ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerEntry:
    """A server as written, before origin_tls decides the scheme of a scheme-less address."""

    where: str  # the field of its address, for its problems
    address: OriginAddress
    settings: dict[str, Any]  # PoolServer fields given in a table entry


@dataclass(frozen=True, slots=True)
class _Pool:
    """A pool read from the file, with what the site-wide checks need to know about it."""

    where: str  # site[x].pool[name], or site[x].origins for the pool `origins` makes
    config: PoolConfig
    inherits: set[str]  # site-level TLS keys it takes from the site


_POOL_SERVER: dict[str, Callable[[_Table, str], Any]] = {
    "weight": lambda t, k: t.integer(k, 1, 1000),
    "max_connections": lambda t, k: t.integer(k, 0),
    "backup": _Table.boolean,
    "drain": _Table.boolean,
}
_POOL_SERVER_KEYS = ("address", *_POOL_SERVER)

# The pool settings read as plain values; the other pool keys need the rest of the pool to be checked.
_POOL: dict[str, Callable[[_Table, str], Any]] = {
    "balance": lambda t, k: t.choice(k, _BALANCES),
    "slow_start": lambda t, k: t.duration(k, allow_zero=True),
    "retries": lambda t, k: t.integer(k, 0, _MAX_RETRIES),
    "retry_budget": _Table.fraction,
    "retry_timeout": _Table.duration,
    "queue_timeout": _Table.duration,
}
_POOL_KEYS = (
    "name",
    "servers",
    "origin_tls",
    "origin_ca",
    "origin_server_name",
    "client_certificate",
    *_POOL,
    "hash_on",
    "hash_method",
    "sticky",
    "health",
    "outlier",
)


def _pools(t: _Table, defaults: _TlsDefaults, *, passthrough: bool = False) -> tuple[list[_Pool], set[str]]:
    """The site's pools, the one `origins` makes first; also every pool name written, valid or not.

    Routes are checked against the written names too, so a pool whose name is refused does not also make every
    route that names it a problem.
    """
    pools: list[_Pool] = []
    taken: dict[str, str] = {}
    written: set[str] = set()
    if "origins" in t.data:
        taken[_SHORTHAND_POOL] = "the pool that `origins` makes (origins is a shorthand for a pool named 'default')"
        pools.append(_pool(t, _SHORTHAND_POOL, defaults, shorthand=True, passthrough=passthrough))
    for index, item in t.tables("pool", "[[site.pool]]"):
        if isinstance(item.get("name"), str):
            written.add(item["name"])
        where = f"{t.prefix}.pool[{index}]"
        name = _entry_name(t, item, where, taken, "pool", "api")
        p = t.child(item, f"{t.prefix}.pool[{name}]" if name else where, _POOL_KEYS)
        pools.append(_pool(p, name or "", defaults, shorthand=False, passthrough=passthrough))
    if "origins" not in t.data and not t.data.get("pool"):
        t.problem(
            "origins",
            'missing; list the servers to proxy to, e.g. origins = ["http://127.0.0.1:9000"], '
            "or describe them in [[site.pool]] tables",
        )
    _check_sticky_cookie_names(t, pools)
    return pools, written


def _check_sticky_cookie_names(t: _Table, pools: list[_Pool]) -> None:
    """Two sticky pools of a site sharing a cookie name would overwrite each other's pin on every response."""
    owners: dict[str, str] = {}
    for pool in pools:
        sticky = pool.config.sticky
        if sticky is None:
            continue
        other = owners.setdefault(sticky.cookie, pool.config.name)
        if other != pool.config.name:
            t.at(
                f"{pool.where}.sticky",
                f"uses the cookie {sticky.cookie!r} like pool {other!r}: each would overwrite the other's pin; "
                f'give one its own name, e.g. sticky = {{ cookie = "srv_{pool.config.name}" }}',
            )


def _pool(p: _Table, name: str, defaults: _TlsDefaults, *, shorthand: bool, passthrough: bool = False) -> _Pool:
    """One pool; for the shorthand, ``p`` is the site's table and everything but the servers comes from the site."""
    servers_key = "origins" if shorthand else "servers"
    entries = _shorthand_entries(p) if shorthand else _server_entries(p)
    if passthrough:
        return _passthrough_pool(p, name, servers_key, entries, shorthand=shorthand)
    mode = _pool_mode(p, servers_key, entries, not shorthand and "origin_tls" in p.data, defaults)
    servers = _pool_servers(p, servers_key, entries, mode)
    tls, inherits = _pool_tls(p, mode, defaults, declared=not shorthand)
    _warn_unverifiable_ip_origins(p, mode, servers, tls["origin_server_name"])
    settings = {} if shorthand else _pool_settings(p, servers)
    config = PoolConfig(name=name, servers=servers, origin_tls=mode, **_given(**tls, **settings))
    return _Pool(p.field(servers_key) if shorthand else p.prefix, config, inherits)


def _passthrough_pool(
    p: _Table, name: str, servers_key: str, entries: list[_ServerEntry], *, shorthand: bool
) -> _Pool:
    """A pass-through pool: its servers get the client's own TLS bytes, so they must speak TLS; the edge adds none.

    Its origin_tls is "full" only so health checks (an https request) do not verify: the edge never terminates
    these connections, the client verifies the origin's certificate itself.
    """
    for key in ("origin_tls", "origin_ca", "origin_server_name", "client_certificate"):
        if not shorthand and key in p.data:
            p.problem(key, "does not apply to a pass-through site: the edge does not speak TLS to its origins, the "
                      "client does; remove it")
    for key in PASSTHROUGH_POOL_REFUSES:
        if not shorthand and key in p.data:
            p.problem(key, "does not apply to a pass-through site: it concerns HTTP requests, which the edge does "
                      "not see; remove it")
    if not shorthand and p.data.get("hash_on", "client_ip") != "client_ip":
        p.problem("hash_on", "a pass-through site can only hash on the client's address (client_ip): headers, "
                  "cookies and paths are encrypted")
    for entry in entries:
        if entry.address.scheme == "http":
            p.at(entry.where, "is http:// but a pass-through site forwards the client's TLS bytes, so the origin "
                 "must speak TLS; use https:// or host:port")
    servers = _pool_servers(p, servers_key, entries, "full")
    settings = {} if shorthand else _pool_settings(p, servers)
    config = PoolConfig(name=name, servers=servers, origin_tls="full", **_given(**settings))
    return _Pool(p.field(servers_key) if shorthand else p.prefix, config, set())


def _client_certificate_files(t: _Table, key: str) -> CertificateFiles | None:
    """A ``{ cert, key }`` client certificate (the keyless edge identity): "origin-ca" does not apply there."""
    value = _client_certificate(t, key)
    if value == ORIGIN_CA_CLIENT:
        t.problem(key, 'must be a table { cert = "...", key = "..." } issued by the CA the key servers trust')
        return None
    return value


def _shorthand_entries(t: _Table) -> list[_ServerEntry]:
    items = t.strings("origins")
    if items == [] and t.data["origins"] == []:
        t.problem("origins", 'is empty; list at least one server, e.g. origins = ["http://127.0.0.1:9000"]')
    entries = []
    for where, text in items or []:
        address = t.attempt(where, lambda text=text: parse_origin(text))
        if address is not None:
            entries.append(_ServerEntry(where, address, {}))
    return entries


def _server_entries(p: _Table) -> list[_ServerEntry]:
    """A pool's servers: origin strings, or tables with an address and balancing settings."""
    if not p.require("servers", 'list the pool\'s servers, e.g. servers = ["http://127.0.0.1:9001"]'):
        return []
    raw = p.data["servers"]
    if not isinstance(raw, list):
        p.problem(
            "servers", f'must be an array of origins or {{ address = "...", weight = 2 }} tables, not {describe(raw)}'
        )
        return []
    if not raw:
        p.problem("servers", 'is empty; list at least one server, e.g. servers = ["http://127.0.0.1:9001"]')
    entries = []
    for index, item in enumerate(raw):
        where = f"{p.field('servers')}[{index}]"
        settings: dict[str, Any] = {}
        if isinstance(item, str):
            text: str | None = item
        elif isinstance(item, dict):
            s = p.child(item, where, _POOL_SERVER_KEYS)
            s.require("address", 'give the server\'s origin, e.g. address = "http://127.0.0.1:9001"')
            text, where = s.string("address"), s.field("address")
            settings = _given(**{key: read(s, key) for key, read in _POOL_SERVER.items()})
        else:
            p.at(where, f'must be an origin string or a table {{ address = "...", weight = 2 }}, not {describe(item)}')
            continue
        address = p.attempt(where, lambda text=text: parse_origin(text)) if text is not None else None
        if address is not None:
            entries.append(_ServerEntry(where, address, settings))
    return entries


def _pool_servers(p: _Table, servers_key: str, entries: list[_ServerEntry], mode: OriginTls) -> tuple[PoolServer, ...]:
    """The servers with their scheme and port decided; a server listed twice in a pool is a problem."""
    default_scheme: Literal["http", "https"] = "http" if mode == "flexible" else "https"
    servers: list[PoolServer] = []
    for entry in entries:
        scheme = entry.address.scheme or default_scheme
        port = entry.address.port or (443 if scheme == "https" else 80)
        origin = Origin(scheme=scheme, host=entry.address.host, port=port)
        if any(server.origin == origin for server in servers):
            p.at(entry.where, f"'{origin}' is listed twice; remove one")
            continue
        servers.append(PoolServer(origin=origin, **entry.settings))
    primaries = [server for server in servers if not server.backup]
    if servers and not primaries:
        p.problem(
            servers_key,
            "every server is a backup, and backups only stand in when no primary server is up; "
            "make at least one server a primary (backup = false)",
        )
    elif primaries == servers and all(server.drain for server in servers):
        p.warn(
            servers_key,
            "every server drains (drain = true) and there is no backup, so only clients pinned by the sticky cookie "
            "are served and new clients get 503; set drain = false on at least one server",
        )
    return tuple(servers)


def _pool_settings(p: _Table, servers: tuple[PoolServer, ...]) -> dict[str, Any]:
    """Balancing, stickiness, health and retry settings of a declared pool, as PoolConfig fields."""
    settings = {key: read(p, key) for key, read in _POOL.items()}
    balance = settings["balance"] if "balance" in p.data else "round_robin"
    settings.update(_hashing(p, balance))
    settings.update(sticky=_sticky(p), health=_health(p), outlier=_outlier(p))
    if settings["sticky"] is not None and balance == "hash":
        p.warn(
            "sticky",
            "is redundant with balance = 'hash', which already keeps a key on one server; with both, the cookie "
            "overrides the hash for returning clients: remove sticky or choose another balance",
        )
    if settings["retries"] and len(servers) == 1:
        p.warn(
            "retries",
            "each retry goes to another server and this pool has only one, so no retry can happen; "
            "add servers or remove retries",
        )
    return settings


def _hashing(p: _Table, balance: str | None) -> dict[str, Any]:
    """hash_on and hash_method, which only mean something for balance = "hash"."""
    for key in ("hash_on", "hash_method"):
        if key in p.data and balance is not None and balance != "hash":
            reason = f"only applies with balance = 'hash' (this pool uses {balance!r})"
            p.problem(key, f"{reason}; remove it or set balance = 'hash'")
    source = p.parsed("hash_on", parse_hash_on)
    return _given(
        hash_on=source[0] if source else None,
        hash_key=source[1] if source else None,
        hash_method=p.choice("hash_method", _HASH_METHODS),
    )


_STICKY: dict[str, Callable[[_Table, str], Any]] = {
    "cookie": lambda t, k: t.parsed(k, parse_cookie_name),
    "max_age": _Table.duration,
}


def _sticky(p: _Table) -> StickySessions | None:
    value = p.data.get("sticky")
    if value is None or value is False:
        return None
    if value is True:
        return StickySessions()
    if not isinstance(value, dict):
        p.problem(
            "sticky", f'must be true, false or a table {{ cookie = "srv", max_age = "1h" }}, not {describe(value)}'
        )
        return None
    s = p.child(value, p.field("sticky"), _STICKY)
    return StickySessions(**_given(**{key: read(s, key) for key, read in _STICKY.items()}))


_HEALTH: dict[str, Callable[[_Table, str], Any]] = {
    "path": lambda t, k: t.parsed(k, lambda text: parse_request_path(text, query=True)),
    "interval": _Table.duration,
    "timeout": _Table.duration,
    "status": lambda t, k: t.attempt(t.field(k), lambda: parse_status_range(t.data[k])) if k in t.data else None,
    "body": _Table.string,
    "rise": lambda t, k: t.integer(k, 1, 100),
    "fall": lambda t, k: t.integer(k, 1, 100),
    "host": lambda t, k: t.parsed(k, parse_host_header),
}


def _health(p: _Table) -> HealthCheck | None:
    """Active checks; a timeout that is not shorter than the interval is a problem, since checks would overlap."""
    raw = p.table("health")
    if raw is None:
        return None
    h = p.child(raw, p.field("health"), _HEALTH)
    check = HealthCheck(**_given(**{key: read(h, key) for key, read in _HEALTH.items()}))
    if check.timeout >= check.interval:
        h.problem(
            "timeout" if "timeout" in h.data else "interval",
            f"timeout ({check.timeout:g}s) must be shorter than interval ({check.interval:g}s), so a check ends "
            "before the next one starts; lower timeout or raise interval",
        )
    return check


_OUTLIER: dict[str, Callable[[_Table, str], Any]] = {
    "consecutive_failures": lambda t, k: t.integer(k, 0),
    "base_ejection": _Table.duration,
    "max_ejection": _Table.duration,
}


def _outlier(p: _Table) -> OutlierDetection | None:
    raw = p.table("outlier")
    if raw is None:
        return None
    o = p.child(raw, p.field("outlier"), _OUTLIER)
    outlier = OutlierDetection(**_given(**{key: read(o, key) for key, read in _OUTLIER.items()}))
    if outlier.base_ejection > outlier.max_ejection:
        o.problem(
            "max_ejection" if "max_ejection" in o.data else "base_ejection",
            f"max_ejection ({outlier.max_ejection:g}s) is shorter than base_ejection ({outlier.base_ejection:g}s); "
            "ejections last from base_ejection up to max_ejection: raise max_ejection or lower base_ejection",
        )
    return outlier


# --- routes -----------------------------------------------------------------------------------------------------------

# Fields that frame the message or belong to one hop: the edge sets them itself, and an edit could smuggle requests.
_UNEDITABLE_HEADERS = frozenset(
    {"connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_PATH_MATCHERS = ("path", "path_prefix", "path_regex")


def _routes(t: _Table, pool_names: list[str], written: set[str]) -> list[tuple[str, RouteConfig]]:
    """The site's routing rules as (field, rule), in order."""
    routes = []
    for index, item in t.tables("route", "[[site.route]]"):
        r = t.child(item, f"{t.prefix}.route[{index}]", _ROUTE_KEYS)
        routes.append((r.prefix, _route(r, pool_names, written)))
    return routes


def _route(r: _Table, pool_names: list[str], written: set[str]) -> RouteConfig:
    matchers = [key for key in _PATH_MATCHERS if key in r.data]
    if len(matchers) > 1:
        r.at(
            r.prefix,
            f"sets {' and '.join(matchers)}; a route matches the path in one way: keep one of them "
            "(or write one route for each)",
        )
    return RouteConfig(
        pool=_route_pool(r, pool_names, written) or "",
        **_given(
            path=r.parsed("path", parse_request_path),
            path_prefix=r.parsed("path_prefix", parse_request_path),
            path_regex=r.parsed("path_regex", _path_regex),
            methods=_methods(r),
            headers=_header_conditions(r),
            host=r.parsed("host", parse_host_header),
            prefix_rewrite=_prefix_rewrite(r),
            request_headers=_header_edits(r, "request_headers", request=True),
            response_headers=_header_edits(r, "response_headers", request=False),
        ),
    )


def _route_pool(r: _Table, pool_names: list[str], written: set[str]) -> str | None:
    if not r.require("pool", 'name the pool that serves the requests this route matches, e.g. pool = "api"'):
        return None
    name = r.string("pool")
    if name is None or name in pool_names or name in written:
        return name
    known = ", ".join(repr(n) for n in pool_names) or "none"
    r.problem("pool", f"no pool of this site is named {name!r}{suggest(name, pool_names)}; its pools are: {known}")
    return None


def _path_regex(text: str) -> str:
    """A regular expression searched in the raw request path, which the data plane matches as bytes."""
    try:
        re.compile(text.encode())
    except re.error as exc:
        raise ValueError(f"{text!r} is not a valid regular expression: {exc}; fix it (Python re syntax)") from None
    return text


def _methods(r: _Table) -> tuple[str, ...] | None:
    items = r.strings("methods")
    if items is None:
        return None
    if not items and r.data["methods"] == []:
        r.problem("methods", "is empty; list methods such as ['GET', 'HEAD'], or remove the key to match every method")
    methods = [r.attempt(where, lambda text=text: parse_method(text)) for where, text in items]
    return tuple(dict.fromkeys(method for method in methods if method is not None))


def _header_conditions(r: _Table) -> tuple[tuple[str, str | None], ...] | None:
    """``headers = { "X-Beta" = "1", "X-Debug" = true }``: exact values, or true for "present"."""
    raw = r.table("headers")
    if raw is None:
        return None
    conditions: dict[str, str | None] = {}
    for name, value in raw.items():
        where = f"{r.field('headers')}.{name}"
        lower = r.attempt(where, lambda name=name: parse_header_name(name))
        if value is True:
            expected = None
        elif isinstance(value, str):
            expected = r.attempt(where, lambda value=value: parse_header_value(value))
            if expected is None:
                continue
        else:
            r.at(where, f"must be a string (the exact value) or true (the header is present), not {describe(value)}")
            continue
        if lower is None:
            continue
        if lower in conditions:
            r.at(where, f"tests the header {lower!r} a second time (names are case-insensitive); keep one")
            continue
        conditions[lower] = expected
    return tuple(conditions.items())


def _prefix_rewrite(r: _Table) -> str | None:
    value = r.string("prefix_rewrite", allow_empty=True)
    if value is None:
        return None
    if "path_prefix" not in r.data:
        r.problem(
            "prefix_rewrite",
            "needs path_prefix: it replaces the matched prefix; add path_prefix or remove prefix_rewrite",
        )
    if value == "":
        return value
    if not value.startswith("/"):
        r.problem("prefix_rewrite", f"{value!r} does not start with '/'; write a path such as '/v2/', or '' to strip")
        return None
    return r.attempt(r.field("prefix_rewrite"), lambda: parse_request_path(value))


def _header_edits(r: _Table, key: str, *, request: bool) -> HeaderEdits | None:
    """Header changes applied to what is sent on: remove, then set (replacing), then add (appending)."""
    raw = r.table(key)
    if raw is None:
        return None
    e = r.child(raw, r.field(key), _HEADER_EDIT_KEYS)
    remove = [
        name
        for where, text in e.strings("remove") or []
        if (name := e.attempt(where, lambda text=text: parse_header_name(text))) and _editable(e, where, name, request)
    ]
    return HeaderEdits(
        **_given(
            remove=tuple(dict.fromkeys(remove)) if remove else None,
            set=_header_values(e, "set", request, unique=True),
            add=_header_values(e, "add", request, unique=False),
        )
    )


def _header_values(e: _Table, key: str, request: bool, *, unique: bool) -> tuple[tuple[str, str], ...] | None:
    raw = e.table(key)
    if raw is None:
        return None
    values: list[tuple[str, str]] = []
    for name, value in raw.items():
        where = f"{e.field(key)}.{name}"
        lower = e.attempt(where, lambda name=name: parse_header_name(name))
        if not isinstance(value, str):
            e.at(where, f"must be a string (the header's value), not {describe(value)}")
            continue
        text = e.attempt(where, lambda value=value: parse_header_value(value))
        if lower is None or text is None or not _editable(e, where, lower, request):
            continue
        if unique and any(lower == other for other, _ in values):
            e.at(where, f"sets the header {lower!r} a second time (names are case-insensitive); keep one")
            continue
        values.append((lower, text))
    return tuple(values)


def _editable(t: _Table, where: str, name: str, request: bool) -> bool:
    if name in _UNEDITABLE_HEADERS:
        t.at(where, f"{name!r} cannot be edited: the edge sets it itself (it frames the message or is hop-by-hop)")
        return False
    if request and name == "host":
        t.at(where, 'the Host sent to the origin is set with the route\'s host key (host = "api.internal"); use that')
        return False
    return True


def _matches_everything(route: RouteConfig) -> bool:
    paths_all = route.path is None and route.path_regex is None and route.path_prefix in (None, "/")
    return paths_all and not route.methods and not route.headers


def _check_routes_reach_pools(t: _Table, pools: list[_Pool], routes: list[tuple[str, RouteConfig]]) -> None:
    """Warn about routes that can never match (after a catch-all) and pools no request can reach."""
    if not pools or (not routes and len(pools) == 1):
        return
    catch_all: str | None = None
    used: set[str] = set()
    for where, route in routes:
        if catch_all is not None:
            t.at(
                where,
                f"never matches: {catch_all} before it matches every request; move it before {catch_all} or remove it",
                warning=True,
            )
            continue
        used.add(route.pool)
        if _matches_everything(route):
            catch_all = where
    first = pools[0].config.name
    if catch_all is None:
        used.add(first)  # requests no route matches go to the first pool
    for pool in pools:
        if pool.config.name and pool.config.name not in used:
            fallback = f"{catch_all} matches every request" if catch_all else f"unmatched requests go to {first!r}"
            t.at(
                pool.where,
                f"no request reaches this pool: no route sends requests to it and {fallback}; add a [[site.route]] "
                f"with pool = {pool.config.name!r}, or remove the pool",
                warning=True,
            )


# --- [site.origin] ----------------------------------------------------------------------------------------------------


_ORIGIN: dict[str, Callable[[_Table, str], Any]] = {
    "connect_timeout": _Table.duration,
    "response_timeout": _Table.duration,
    "read_timeout": _Table.duration,
    "idle_timeout": _Table.duration,
    "max_idle": lambda t, k: t.integer(k, 0),
    "max_connections": lambda t, k: t.integer(k, 0),
    "tunnel_timeout": _Table.duration,
}


def _origin_timeouts(t: _Table) -> OriginTimeouts:
    return OriginTimeouts(**_given(**{key: read(t, key) for key, read in _ORIGIN.items()}))


# --- https policy and cross-checks ------------------------------------------------------------------------------------


def _https_policy(t: _Table, *, has_certificates: bool) -> tuple[bool, str | None]:
    """redirect_http and hsts point clients at https, which only exists for a site with a certificate."""
    redirect = t.boolean("redirect_http")
    hsts = _hsts(t)
    if not has_certificates:
        if redirect:
            t.problem(
                "redirect_http",
                "is true but the site has no certificate, so there is no https to redirect to; "
                "add a certificate or remove redirect_http",
            )
        if hsts:
            t.problem(
                "hsts",
                "is set but the site has no certificate and HSTS is only sent over https; "
                "add a certificate or remove hsts",
            )
    return (has_certificates if redirect is None else redirect), hsts


def _hsts(t: _Table) -> str | None:
    value = t.data.get("hsts")
    if value is None or value is False:
        return None
    if value is True:
        return _DEFAULT_HSTS
    if not isinstance(value, str):
        t.problem("hsts", f'must be true, false or a header value such as "{_DEFAULT_HSTS}", not {describe(value)}')
        return None
    if not _HSTS_RE.match(value.strip()):
        t.problem(
            "hsts",
            f"{value!r} is not a Strict-Transport-Security value; write e.g. "
            f"'{_DEFAULT_HSTS}' or '{_DEFAULT_HSTS}; includeSubDomains; preload'",
        )
        return None
    return value.strip()


def _check_server_against_sites(root: _Table, server: ServerConfig, sites: tuple[SiteConfig, ...]) -> None:
    """Rules that need both [server] and the sites: the default site, and listeners each site can be reached on."""
    report = root.report
    names = [site.name for site in sites if site.name]
    if server.default_site is not None and server.default_site not in names:
        known = ", ".join(repr(n) for n in names) or "none"
        report.problem(
            "server.default_site",
            f"no site is named {server.default_site!r}{suggest(server.default_site, names)}; sites are: {known}",
        )
    if server.https and sites and not any(site.serves_https for site in sites):
        report.problem(
            "server.https",
            "https listeners are configured but no site has a certificate; add "
            'certificate = { cert = "...", key = "..." } to a site, or remove the https listeners',
        )
    for site in sites:
        prefix = f"site[{site.name}]" if site.name else "site"
        site_name = site.name or None
        if site.serves_https and not server.https:
            report.warn(
                f"{prefix}.certificate",
                'the site has a certificate but [server] has no https listener; add one, e.g. https = ["0.0.0.0:443"]',
                site_name,
            )
        if not site.serves_https and not server.http:
            report.warn(
                prefix,
                "the site has no certificate and [server] has no http listener, so it cannot be "
                'reached; add a certificate, or an http listener (http = ["0.0.0.0:80"])',
                site_name,
            )
        managed = site.managed_certificate
        if managed is not None and managed.acme is not None:
            _check_challenges_reachable(report, f"{prefix}.certificate.challenges", managed.acme, server, site_name)


def _check_challenges_reachable(
    report: _Report, where: str, acme: AcmeSettings, server: ServerConfig, site: str | None
) -> None:
    """HTTP-01 is answered on the http listener, TLS-ALPN-01 on the https one: a challenge needs its listener."""
    listener = {"http-01": bool(server.http), "tls-alpn-01": bool(server.https)}
    usable = [c for c in acme.challenges if listener[c]]
    missing = [c for c in acme.challenges if not listener[c]]
    if not missing:
        return
    needs = " and ".join(f"{c} needs an {'http' if c == 'http-01' else 'https'} listener" for c in missing)
    if usable:
        report.warn(where, f"{needs}, so only {', '.join(usable)} will be tried", site)
    else:
        report.problem(where, f"{needs}; add the listener to [server] or choose another challenge", site)
