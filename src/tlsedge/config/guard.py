"""Protection settings: the edge-wide ``[guard]``, ``[ip_rules]`` and ``[bans]`` tables and each site's ``waf``,
``rate_limit``, ``ip_rules``, ``bans``, ``challenge`` and ``password`` tables.

Everything is off unless the operator writes its table: an edge put in front of an application should not start
refusing its users because of a default. Once a table is written, its defaults are the ones an operator of nginx +
ModSecurity + CRS or Cloudflare would expect (CRS paranoia 1 and thresholds 5/4, a challenge cookie valid for an
hour, and so on); docs/configuration.md lists them all.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tlsedge.guard.iprules import parse_network
from tlsedge.guard.password import parse_password_hash
from tlsedge.guard.ratelimit import parse_rate

if TYPE_CHECKING:
    from tlsedge.config.load import _Table

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
WafMode = Literal["off", "detect", "block"]
WAF_MODES: tuple[str, ...] = ("off", "detect", "block")
OVER_LIMIT: tuple[str, ...] = ("pass", "reject")
RATE_ACTIONS: tuple[str, ...] = ("reject", "challenge", "ban")
CHALLENGE_MODES: tuple[str, ...] = ("off", "suspicious", "always")
BAN_SCOPES: tuple[str, ...] = ("site", "global")
RATE_KEYS = ("ip", "ip_prefix", "path")  # plus "header:<Name>" and "cookie:<name>"

GUARD_KEYS = ("table_slots", "waf_threads")
IP_RULES_KEYS = ("allow", "deny", "challenge", "deny_ja4")
BAN_KEYS = ("threshold", "window", "duration", "factor", "max_duration", "scope")
WAF_KEYS = (
    "mode",
    "paranoia",
    "inbound_threshold",
    "outbound_threshold",
    "exclude_rules",
    "exclusion",
    "rules_files",
    "body_limit",
    "over_limit",
    "response_headers",
)
WAF_EXCLUSION_KEYS = ("path_prefix", "rules")
RATE_LIMIT_KEYS = ("name", "key", "rate", "burst", "path_prefix", "methods", "action")
CHALLENGE_KEYS = ("mode", "difficulty", "cookie_ttl", "exempt_paths", "noscript_delay", "bypass")
BYPASS_KEYS = ("header", "token_env")
PASSWORD_KEYS = ("path_prefix", "password_hash", "cookie_ttl")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_FIELD_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_COOKIE_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")
# JA4 "a" part (transport, version, SNI, counts, ALPN characters) and two truncated SHA-256 hex hashes.
_JA4_RE = re.compile(r"[tqd][0-9s][0-9a-z][di][0-9]{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class IpRulesConfig:
    """Allow and deny lists of networks; an allow wins (operators' own networks are never locked out)."""

    allow: tuple[IpNetwork, ...] = ()
    deny: tuple[IpNetwork, ...] = ()
    challenge: tuple[IpNetwork, ...] = ()  # clients a "suspicious" challenge treats as suspicious
    deny_ja4: tuple[str, ...] = ()  # TLS client fingerprints refused right after the ClientHello


@dataclass(frozen=True, slots=True)
class BanConfig:
    """fail2ban-like bans: ``threshold`` offenses within ``window`` ban for ``duration``, growing by ``factor``."""

    threshold: int = 10
    window: float = 60.0
    duration: float = 600.0
    factor: float = 2.0
    max_duration: float = 86400.0
    scope: Literal["site", "global"] = "site"


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """``[guard]``, ``[ip_rules]`` and ``[bans]``: what every site shares."""

    table_slots: int = 1 << 16  # entries of the table of counters shared by the workers
    waf_threads: int = 1  # ModSecurity threads per worker (the event loop never runs it)
    ip_rules: IpRulesConfig = field(default_factory=IpRulesConfig)  # checked at accept, before any TLS work
    bans: BanConfig | None = None  # None: offenses never ban, unless a site has its own [site.bans]


@dataclass(frozen=True, slots=True)
class WafExclusion:
    """Rules removed for requests whose path starts with ``path_prefix``."""

    path_prefix: str
    rules: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WafConfig:
    """``[site.waf]``: ModSecurity with the OWASP Core Rule Set."""

    mode: WafMode = "block"
    paranoia: int = 1
    inbound_threshold: int = 5
    outbound_threshold: int = 4
    exclude_rules: tuple[int, ...] = ()
    exclusions: tuple[WafExclusion, ...] = ()
    rules_files: tuple[Path, ...] = ()
    body_limit: int = 128 * 1024  # bytes of a request body inspected
    over_limit: Literal["pass", "reject"] = "pass"  # pass: the first body_limit bytes are inspected, the rest passes
    response_headers: bool = True


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """One ``[[site.rate_limit]]``: requests under ``path_prefix`` counted per key, GCRA with ``burst``."""

    name: str
    key: str  # "ip", "ip_prefix", "path", "header:<Name>" or "cookie:<name>"
    rate: float  # requests per second
    burst: int
    path_prefix: str = "/"
    methods: frozenset[bytes] | None = None
    action: Literal["reject", "challenge", "ban"] = "reject"


@dataclass(frozen=True, slots=True)
class ChallengeBypass:
    """API clients that send ``header: <token>`` skip the challenge (the token comes from the environment)."""

    header: str  # lower-case
    token: bytes


@dataclass(frozen=True, slots=True)
class ChallengeConfig:
    """``[site.challenge]``: the proof-of-work page."""

    mode: Literal["off", "suspicious", "always"] = "off"
    difficulty: int = 16  # leading zero bits of SHA-256(challenge || nonce)
    cookie_ttl: float = 3600.0
    exempt_paths: tuple[str, ...] = ()  # prefixes; /.well-known/acme-challenge/ is always exempt
    noscript_delay: float = 15.0  # how long a browser without JavaScript waits instead
    bypass: tuple[ChallengeBypass, ...] = ()


@dataclass(frozen=True, slots=True)
class PasswordPath:
    """``[[site.password]]``: paths behind a password page."""

    path_prefix: str
    password_hash: str
    cookie_ttl: float = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class SiteGuardConfig:
    """A site's protection; ``active`` tells whether the request path needs the guard at all."""

    waf: WafConfig | None = None
    rate_limits: tuple[RateLimitConfig, ...] = ()
    ip_rules: IpRulesConfig = field(default_factory=IpRulesConfig)
    bans: BanConfig | None = None  # None: the edge-wide [bans], if any
    challenge: ChallengeConfig = field(default_factory=ChallengeConfig)
    passwords: tuple[PasswordPath, ...] = ()

    @property
    def active(self) -> bool:
        return bool(
            (self.waf is not None and self.waf.mode != "off")
            or self.rate_limits
            or self.ip_rules.allow
            or self.ip_rules.deny
            or self.challenge.mode != "off"
            or self.passwords
        )


# --- edge-wide tables ---------------------------------------------------------------------------------------------


def load_guard_settings(root: _Table) -> GuardSettings:
    """``[guard]``, ``[ip_rules]`` and ``[bans]`` at the top of the file."""
    values: dict[str, Any] = {}
    raw = root.table("guard")
    if raw is not None:
        t = root.child(raw, "guard", GUARD_KEYS)
        slots = t.integer("table_slots", 1024, 1 << 24)
        if slots is not None and slots & (slots - 1):
            t.problem("table_slots", f"must be a power of two (e.g. {1 << slots.bit_length()}), not {slots}")
            slots = None
        values["table_slots"] = slots
        values["waf_threads"] = t.integer("waf_threads", 1, 64)
    values["ip_rules"] = load_ip_rules(root, "ip_rules")
    values["bans"] = load_bans(root, "bans", default_scope="global")
    return GuardSettings(**{key: value for key, value in values.items() if value is not None})


def load_ip_rules(t: _Table, key: str) -> IpRulesConfig | None:
    raw = t.table(key)
    if raw is None:
        return None
    r = t.child(raw, t.field(key), IP_RULES_KEYS)
    return IpRulesConfig(
        allow=_networks(r, "allow"), deny=_networks(r, "deny"), challenge=_networks(r, "challenge"),
        deny_ja4=_fingerprints(r, "deny_ja4"),
    )


def _fingerprints(t: _Table, key: str) -> tuple[str, ...]:
    """JA4 fingerprints as the access log shows them, e.g. ``t13d1516h2_8daaf6152771_b186095e22b6``."""
    found = []
    for where, text in t.strings(key) or []:
        if _JA4_RE.fullmatch(text) is None:
            t.at(where, f"{text!r} is not a JA4 fingerprint; copy the \"ja4\" value of an access log line, e.g. "
                 "'t13d1516h2_8daaf6152771_b186095e22b6'")
        else:
            found.append(text)
    return tuple(found)


def load_bans(t: _Table, key: str, *, default_scope: Literal["site", "global"]) -> BanConfig | None:
    raw = t.table(key)
    if raw is None:
        return None
    b = t.child(raw, t.field(key), BAN_KEYS)
    factor = b._typed("factor", (int, float), "a number of 1 or more")
    if factor is not None and factor < 1:
        b.problem("factor", f"must be 1 or more (each repeat ban lasts factor times the last), not {factor}")
        factor = None
    values: dict[str, Any] = {
        "threshold": b.integer("threshold", 1, 1_000_000),
        "window": b.duration("window"),
        "duration": b.duration("duration"),
        "factor": None if factor is None else float(factor),
        "max_duration": b.duration("max_duration"),
        "scope": b.choice("scope", BAN_SCOPES) or default_scope,
    }
    config = BanConfig(**{k: v for k, v in values.items() if v is not None})
    if config.max_duration < config.duration:
        b.problem("max_duration", f"is shorter than duration ({config.duration:g} s); a ban cannot shrink")
    return config


def _networks(t: _Table, key: str) -> tuple[IpNetwork, ...]:
    items = t.strings(key) or []
    return tuple(net for where, text in items if (net := t.attempt(where, lambda text=text: parse_network(text))))


# --- a site's tables ----------------------------------------------------------------------------------------------

SITE_GUARD_KEYS = ("waf", "rate_limit", "ip_rules", "bans", "challenge", "password")


def load_site_guard(t: _Table) -> SiteGuardConfig | None:
    """The site's protection tables (None when it has none of them)."""
    if not any(key in t.data for key in SITE_GUARD_KEYS):
        return None
    values: dict[str, Any] = {
        "waf": _waf(t),
        "rate_limits": _rate_limits(t),
        "ip_rules": load_ip_rules(t, "ip_rules"),
        "bans": load_bans(t, "bans", default_scope="site"),
        "challenge": _challenge(t),
        "passwords": _passwords(t),
    }
    return SiteGuardConfig(**{key: value for key, value in values.items() if value is not None})


def _waf(t: _Table) -> WafConfig | None:
    raw = t.table("waf")
    if raw is None:
        return None
    w = t.child(raw, t.field("waf"), WAF_KEYS)
    values: dict[str, Any] = {
        "mode": w.choice("mode", WAF_MODES),
        "paranoia": w.integer("paranoia", 1, 4),
        "inbound_threshold": w.integer("inbound_threshold", 1, 10_000),
        "outbound_threshold": w.integer("outbound_threshold", 1, 10_000),
        "exclude_rules": _rule_ids(w, "exclude_rules"),
        "exclusions": _waf_exclusions(w),
        "rules_files": _rules_files(w),
        "body_limit": w.size("body_limit", minimum=1),
        "over_limit": w.choice("over_limit", OVER_LIMIT),
        "response_headers": w.boolean("response_headers"),
    }
    return WafConfig(**{key: value for key, value in values.items() if value is not None})


def _rule_ids(t: _Table, key: str) -> tuple[int, ...] | None:
    if key not in t.data:
        return None
    raw = t.data[key]
    if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        t.problem(key, "must be an array of rule ids (integers), e.g. [942100, 941160]")
        return None
    bad = [v for v in raw if not 1 <= v <= 9_999_999]
    if bad:
        t.problem(key, f"{bad[0]} is not a ModSecurity rule id (1 to 9999999)")
        return None
    return tuple(raw)


def _waf_exclusions(w: _Table) -> tuple[WafExclusion, ...]:
    exclusions = []
    for index, item in w.tables("exclusion", "[[site.waf.exclusion]]"):
        e = w.child(item, f"{w.field('exclusion')}[{index}]", WAF_EXCLUSION_KEYS)
        prefix = _path_prefix(e)
        if not e.require("rules", "list the rule ids to remove under path_prefix, e.g. rules = [942100]"):
            continue
        rules = _rule_ids(e, "rules")
        if prefix is not None and rules:
            exclusions.append(WafExclusion(prefix, rules))
    return tuple(exclusions)


def _rules_files(w: _Table) -> tuple[Path, ...] | None:
    items = w.strings("rules_files")
    if items is None:
        return None
    files = []
    for where, text in items:
        path = w.report.resolve(text)
        if not path.is_file():
            w.at(where, f"{str(path)!r} is not a readable file of ModSecurity rules; fix the path")
            continue
        files.append(path)
    return tuple(files)


def _path_prefix(t: _Table, key: str = "path_prefix") -> str | None:
    if not t.require(key, 'say which paths it covers, e.g. path_prefix = "/admin/"'):
        return None
    prefix = t.string(key)
    if prefix is not None and not prefix.startswith("/"):
        t.problem(key, f"{prefix!r} must start with '/'")
        return None
    return prefix


def _rate_limits(t: _Table) -> tuple[RateLimitConfig, ...]:
    rules = []
    names: set[str] = set()
    for index, item in t.tables("rate_limit", "[[site.rate_limit]]"):
        where = f"{t.field('rate_limit')}[{index}]"
        r = t.child(item, where, RATE_LIMIT_KEYS)
        name = r.string("name") or f"rule{index}"
        if not _NAME_RE.match(name):
            r.problem("name", f"{name!r}: use up to 64 letters, digits, '.', '_' or '-'")
            continue
        if name in names:
            r.problem("name", f"{name!r} is the name of another rate_limit of this site; names must be unique")
            continue
        names.add(name)
        if not r.require("rate", 'give a rate, e.g. rate = "10/s" or "600/m"'):
            continue
        rate = r.parsed("rate", parse_rate)
        key = _rate_key(r)
        burst = r.integer("burst", 1, 1_000_000)
        methods = _methods(r)
        prefix = r.string("path_prefix") or "/"
        if not prefix.startswith("/"):
            r.problem("path_prefix", f"{prefix!r} must start with '/'")
            continue
        action = r.choice("action", RATE_ACTIONS) or "reject"
        if rate is None or key is None:
            continue
        rules.append(
            RateLimitConfig(
                name=name,
                key=key,
                rate=rate,
                burst=burst if burst is not None else max(1, round(rate)),
                path_prefix=prefix,
                methods=methods,
                action=action,  # type: ignore[arg-type]
            )
        )
    return tuple(rules)


def _rate_key(r: _Table) -> str | None:
    key = r.string("key") or "ip"
    kind, _, name = key.partition(":")
    if key in RATE_KEYS:
        return key
    if kind == "header" and _FIELD_RE.match(name):
        return f"header:{name.lower()}"
    if kind == "cookie" and _COOKIE_RE.match(name):
        return key
    r.problem("key", f"{key!r} is not a rate-limit key; use 'ip', 'ip_prefix', 'path', 'header:<Name>' or "
              "'cookie:<name>'")
    return None


def _methods(r: _Table) -> frozenset[bytes] | None:
    items = r.strings("methods")
    if items is None:
        return None
    methods = set()
    for where, text in items:
        if not _METHOD_RE.match(text):
            r.at(where, f"{text!r} is not an HTTP method in capitals, e.g. 'POST'")
            continue
        methods.add(text.encode())
    return frozenset(methods)


def _challenge(t: _Table) -> ChallengeConfig | None:
    raw = t.table("challenge")
    if raw is None:
        return None
    c = t.child(raw, t.field("challenge"), CHALLENGE_KEYS)
    exempt = c.strings("exempt_paths")
    for where, text in exempt or []:
        if not text.startswith("/"):
            c.at(where, f"{text!r} must be a path prefix starting with '/'")
    values: dict[str, Any] = {
        "mode": c.choice("mode", CHALLENGE_MODES),
        "difficulty": c.integer("difficulty", 1, 32),
        "cookie_ttl": _bounded(c, "cookie_ttl", 366 * 86400.0, "366 days"),
        "exempt_paths": None if exempt is None else tuple(text for _, text in exempt if text.startswith("/")),
        "noscript_delay": _bounded(c, "noscript_delay", 3600.0, "an hour"),
        "bypass": _bypasses(c),
    }
    return ChallengeConfig(**{key: value for key, value in values.items() if value is not None})


def _bounded(t: _Table, key: str, limit: float, words: str) -> float | None:
    value = t.duration(key)
    if value is not None and value > limit:
        t.problem(key, f"must be at most {words}")
        return None
    return value


def _bypasses(c: _Table) -> tuple[ChallengeBypass, ...]:
    bypasses = []
    for index, item in c.tables("bypass", "[[site.challenge.bypass]]"):
        b = c.child(item, f"{c.field('bypass')}[{index}]", BYPASS_KEYS)
        if not (b.require("header", 'name the header API clients send, e.g. header = "X-Api-Key"')
                and b.require("token_env", 'name the environment variable holding the token, e.g. "BLOG_API_TOKEN"')):
            continue
        header, variable = b.string("header"), b.string("token_env")
        if header is None or variable is None:
            continue
        if not _FIELD_RE.match(header):
            b.problem("header", f"{header!r} is not a header field name")
            continue
        token = os.environ.get(variable, "")
        if len(token) < 16:
            reason = "is not set" if not token else "holds fewer than 16 characters, too easy to guess"
            b.problem("token_env", f"environment variable {variable!r} {reason}; set it to a long random token")
            continue
        bypasses.append(ChallengeBypass(header.lower(), token.encode()))
    return tuple(bypasses)


def _passwords(t: _Table) -> tuple[PasswordPath, ...]:
    paths = []
    seen: set[str] = set()
    for index, item in t.tables("password", "[[site.password]]"):
        p = t.child(item, f"{t.field('password')}[{index}]", PASSWORD_KEYS)
        prefix = _path_prefix(p)
        if not p.require("password_hash", "create one with `tlsedge password-hash` and paste it here"):
            continue
        stored = p.parsed("password_hash", parse_password_hash)
        ttl = _bounded(p, "cookie_ttl", 366 * 86400.0, "366 days")
        if prefix is None or stored is None:
            continue
        if prefix in seen:
            p.problem("path_prefix", f"{prefix!r} has another password entry; keep one")
            continue
        seen.add(prefix)
        paths.append(PasswordPath(prefix, stored, **({"cookie_ttl": ttl} if ttl is not None else {})))
    return tuple(paths)
