"""Turning a TOML file into a validated `Config`, or into every problem it has at once.

The operator fixes a configuration in one round when they see all of its problems, so nothing here stops at the
first one: each reader records a `Problem` (file, site, field, what is wrong and what to do) and returns ``None`` for
an unusable value, and the walk goes on with the schema's default in its place. Only at the end is `ConfigError`
raised, so a Config built from placeholders never escapes. Things that work but deserve attention become
`Config.warnings`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from . import certs
from .errors import ConfigError, Problem
from .schema import (
    CertificateFiles,
    Config,
    IpNetwork,
    Limits,
    Listener,
    Origin,
    OriginTimeouts,
    OriginTls,
    ServerConfig,
    SiteConfig,
)
from .values import (
    OriginAddress,
    describe,
    is_ip_address,
    listeners_clash,
    name_covers,
    normalize_hostname,
    parse_duration,
    parse_listener,
    parse_origin,
    parse_size,
    suggest,
)

T = TypeVar("T")

_ROOT_KEYS = ("server", "site")
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
    "redirect_http",
    "hsts",
    "max_body_size",
    "origin",
)
_CERTIFICATE_KEYS = ("cert", "key")
_ORIGIN_TLS_MODES: tuple[str, ...] = get_args(OriginTls)
_MAX_WORKERS = 256
_DEFAULT_HSTS = "max-age=31536000"
_SITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
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
    sites = _sites(root)
    _check_server_against_sites(root, server, sites)
    if report.problems:
        raise ConfigError(report.problems)
    return Config(path=path.absolute(), server=server, sites=sites, warnings=tuple(report.warnings))


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
        self.warnings.append(str(Problem(file=self.file, field=where, reason=reason, site=site)))

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

    def string(self, key: str) -> str | None:
        value = self._typed(key, str, "a string")
        if value == "":
            self.problem(key, "is empty; give a value or remove the key")
            return None
        return value

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

    def duration(self, key: str) -> float | None:
        return self.attempt(self.field(key), lambda: parse_duration(self.data[key])) if key in self.data else None

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
    return tuple(net for where, text in items if (net := t.attempt(where, lambda text=text: _network(text))))


def _network(text: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network; write e.g. '10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'"
        ) from None
    raise ValueError(f"{text!r} has bits set after the prefix length; write the network as {str(loose)!r}")


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
}


def _limits(t: _Table) -> Limits:
    return Limits(**_given(**{key: read(t, key) for key, read in _LIMITS.items()}))


# --- [[site]] ---------------------------------------------------------------------------------------------------------


def _sites(root: _Table) -> tuple[SiteConfig, ...]:
    raw = root.data.get("site")
    if raw is None:
        root.problem("site", "no site configured; add a [[site]] table with name, hosts and origins")
        return ()
    if not isinstance(raw, list):
        root.problem("site", f"must be an array of tables (write [[site]] with double brackets), not {describe(raw)}")
        return ()
    if not raw:
        root.problem("site", "no site configured; add a [[site]] table with name, hosts and origins")
    names: dict[str, int] = {}
    host_owners: dict[str, str] = {}
    sites = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            root.problem(f"site[{index}]", f"must be a table (write [[site]]), not {describe(item)}")
            continue
        name = _site_name(root, item, index, names)
        prefix = f"site[{name}]" if name else f"site[{index}]"
        sites.append(_site(root.report, item, prefix, name, host_owners))
    return tuple(sites)


def _site_name(root: _Table, item: dict[str, Any], index: int, names: dict[str, int]) -> str | None:
    """The site's name, or None when it is missing, malformed or taken (fields then say ``site[<index>]``)."""
    # Only "name" is read here; unknown keys are reported once, by the site's own table.
    t = root.child({"name": item["name"]} if "name" in item else {}, f"site[{index}]", ("name",))
    if not t.require("name", 'give the site a name, e.g. name = "blog"'):
        return None
    name = t.string("name")
    if name is None:
        return None
    if not _SITE_NAME_RE.match(name):
        t.problem(
            "name",
            f"{name!r} is not a valid site name; use lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit",
        )
        return None
    if name in names:
        t.problem("name", f"{name!r} is already the name of site[{names[name]}]; site names must be unique")
        return None
    names[name] = index
    return name


def _site(
    report: _Report, item: dict[str, Any], prefix: str, name: str | None, host_owners: dict[str, str]
) -> SiteConfig:
    t = _Table(report, item, prefix, name, _SITE_KEYS)
    hosts = _hosts(t, host_owners)
    certificates = _certificates(t, hosts)
    origins, origin_tls = _origins(t)
    origin = t.table("origin")
    redirect_http, hsts = _https_policy(t, has_certificates=bool(certificates or item.get("certificate")))
    return SiteConfig(
        name=name or "",
        hosts=tuple(host for _, host in hosts),
        certificates=certificates,
        origins=origins,
        origin_tls=origin_tls,
        redirect_http=redirect_http,
        hsts=hsts,
        **_given(
            origin_ca=_origin_ca(t, origin_tls),
            origin_server_name=_origin_server_name(t, origin_tls),
            max_body_size=t.size("max_body_size"),
            origin=_origin_timeouts(t.child(origin, f"{prefix}.origin", _ORIGIN)) if origin is not None else None,
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
    has_cert = t.require("cert", 'give the PEM certificate chain (leaf first), e.g. cert = "certs/site.pem"')
    has_key = t.require("key", 'give the PEM private key of the certificate, e.g. key = "certs/site.key"')
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
        elif certs.key_type(key) in ("Ed25519", "Ed448"):
            t.warn(
                "key",
                f"most browsers do not accept {certs.key_type(key)} certificates; serve an EC P-256 "
                "certificate too (certificate = [{...}, {...}])",
            )
    files = CertificateFiles(cert=cert_path, key=key_path)
    if chain is None or key is None:
        return _LoadedCertificate(files, None, certs.key_type(key) if key is not None else None)
    matched = _check_key_matches(t, chain, key, cert_path)
    _check_validity(t, chain[0])
    return _LoadedCertificate(files, chain[0] if matched else None, certs.key_type(key))


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


def _check_validity(t: _Table, leaf: x509.Certificate) -> None:
    """Out-of-date certificates still load (renewal may be on its way), but clients will refuse them: warn."""
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        t.warn(
            "cert",
            f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; clients will "
            "refuse it: renew it",
        )
    elif leaf.not_valid_before_utc > now:
        t.warn(
            "cert",
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; clients "
            "will refuse it until then: check the certificate and the system clock",
        )
    if certs.dns_names(leaf) is None:
        t.warn(
            "cert",
            "the certificate has no subjectAltName; clients ignore the Common Name: reissue it with "
            "the site's host names as subjectAltName",
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


# --- origins ----------------------------------------------------------------------------------------------------------


def _origins(t: _Table) -> tuple[tuple[Origin, ...], OriginTls]:
    """The origin servers and how to speak to them: explicit schemes must agree with origin_tls (or decide it)."""
    addresses: list[tuple[str, OriginAddress]] = []
    if t.require("origins", 'list the servers to proxy to, e.g. origins = ["http://127.0.0.1:9000"]'):
        items = t.strings("origins")
        if items == [] and t.data["origins"] == []:
            t.problem("origins", 'is empty; list at least one server, e.g. origins = ["http://127.0.0.1:9000"]')
        for where, text in items or []:
            address = t.attempt(where, lambda text=text: parse_origin(text))
            if address is not None:
                addresses.append((where, address))
    mode = _origin_tls(t, addresses)
    default_scheme: Literal["http", "https"] = "http" if mode == "flexible" else "https"
    origins: list[Origin] = []
    for where, address in addresses:
        scheme = address.scheme or default_scheme
        port = address.port or (443 if scheme == "https" else 80)
        origin = Origin(scheme=scheme, host=address.host, port=port)
        if origin in origins:
            t.at(where, f"'{origin}' is listed twice; remove one")
            continue
        origins.append(origin)
    _warn_unverifiable_ip_origins(t, mode, origins)
    return tuple(origins), mode


def _origin_tls(t: _Table, addresses: list[tuple[str, OriginAddress]]) -> OriginTls:
    schemes = {address.scheme for _, address in addresses if address.scheme}
    if "origin_tls" not in t.data:
        if schemes == {"http", "https"}:
            t.problem(
                "origins",
                "mixes http:// and https:// origins; use one scheme for all of them, or set origin_tls "
                "('flexible' for http, 'strict' or 'full' for https)",
            )
        return "flexible" if schemes == {"http"} else "strict"
    mode = t.choice("origin_tls", _ORIGIN_TLS_MODES)
    if mode is None:
        return "strict"
    for where, address in addresses:
        if mode == "flexible" and address.scheme == "https":
            t.at(
                where,
                "is https:// but origin_tls = 'flexible' speaks plain HTTP to origins; use http:// "
                "or origin_tls = 'strict'",
            )
        elif mode != "flexible" and address.scheme == "http":
            t.at(
                where,
                f"is http:// but origin_tls = '{mode}' means TLS to the origin: this would send plaintext; "
                "use https:// or origin_tls = 'flexible'",
            )
    if mode == "full":
        t.warn(
            "origin_tls",
            "'full' does not verify origin certificates: anyone on the path to the origin can "
            "impersonate it; use 'strict' (with origin_ca for a private CA)",
        )
    return cast(OriginTls, mode)


def _warn_unverifiable_ip_origins(t: _Table, mode: OriginTls, origins: list[Origin]) -> None:
    """Strict verification of an origin named by IP needs an IP in its certificate, which is rare: say so early."""
    if mode != "strict" or "origin_server_name" in t.data:
        return
    for origin in origins:
        if is_ip_address(origin.host):
            t.warn(
                "origin_server_name",
                f"not set while origin '{origin}' is an IP address: its certificate must "
                "name that IP; set origin_server_name to the name on the origin's certificate",
            )
            return


def _origin_ca(t: _Table, mode: OriginTls) -> Path | None:
    path = t.path("origin_ca")
    if path is None:
        return None
    if mode != "strict":
        t.problem(
            "origin_ca",
            f"only applies with origin_tls = 'strict' (this site uses {mode!r}); "
            "remove it or set origin_tls = 'strict'",
        )
    else:
        t.attempt(t.field("origin_ca"), lambda: certs.read_certificates(path))
    return path


def _origin_server_name(t: _Table, mode: OriginTls) -> str | None:
    text = t.string("origin_server_name")
    if text is None:
        return None
    if mode == "flexible":
        t.problem(
            "origin_server_name",
            "only applies to TLS origins and origin_tls = 'flexible' is plain HTTP; remove it or use https:// origins",
        )
    return t.attempt(t.field("origin_server_name"), lambda: normalize_hostname(text, allow_wildcard=False))


_ORIGIN: dict[str, Callable[[_Table, str], Any]] = {
    "connect_timeout": _Table.duration,
    "response_timeout": _Table.duration,
    "read_timeout": _Table.duration,
    "idle_timeout": _Table.duration,
    "max_idle": lambda t, k: t.integer(k, 0),
    "max_connections": lambda t, k: t.integer(k, 0),
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
    if server.https and sites and not any(site.certificates for site in sites):
        report.problem(
            "server.https",
            "https listeners are configured but no site has a certificate; add "
            'certificate = { cert = "...", key = "..." } to a site, or remove the https listeners',
        )
    for site in sites:
        prefix = f"site[{site.name}]" if site.name else "site"
        site_name = site.name or None
        if site.certificates and not server.https:
            report.warn(
                f"{prefix}.certificate",
                'the site has a certificate but [server] has no https listener; add one, e.g. https = ["0.0.0.0:443"]',
                site_name,
            )
        if not site.certificates and not server.http:
            report.warn(
                prefix,
                "the site has no certificate and [server] has no http listener, so it cannot be "
                'reached; add a certificate, or an http listener (http = ["0.0.0.0:80"])',
                site_name,
            )
