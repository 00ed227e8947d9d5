"""Audit of issues 2 and 3: "a TOML config ... documented field by field in docs/configuration.md", "limits with
documented defaults", and the same for origin pools, health checks, outlier detection, sticky sessions, routes, the
cache (issue 5), the protection tables (issue 6) and the trust-minimising modes (issue 7).
Every key the loader accepts has a row in the section of the documentation that describes its table, every row there
is a key the loader accepts, and every documented default, read through the loader's own reader (or written into a
file and loaded, for tables read by functions rather than reader dicts), is the default the code really uses."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from tlsedge.config import cache as cache_config
from tlsedge.config import load_config
from tlsedge.config.guard import (
    BAN_KEYS,
    BYPASS_KEYS,
    CHALLENGE_KEYS,
    GUARD_KEYS,
    IP_RULES_KEYS,
    PASSWORD_KEYS,
    RATE_LIMIT_KEYS,
    WAF_EXCLUSION_KEYS,
    WAF_KEYS,
    BanConfig,
    ChallengeConfig,
    GuardSettings,
    IpRulesConfig,
    PasswordPath,
    RateLimitConfig,
    WafConfig,
)
from tlsedge.config.load import (
    _ACME_KEYS,
    _CERTIFICATE_KEYS,
    _HEADER_EDIT_KEYS,
    _HEALTH,
    _LIMITS,
    _ORIGIN,
    _OUTLIER,
    _POOL,
    _POOL_KEYS,
    _POOL_SERVER,
    _POOL_SERVER_KEYS,
    _ROOT_KEYS,
    _ROUTE_KEYS,
    _SERVER_KEYS,
    _SITE_ACME_KEYS,
    _SITE_KEYS,
    _STICKY,
    _STICKY_KEYS,
    _Report,
    _Table,
)
from tlsedge.config.modes import (
    KEYLESS_KEYS,
    PASSTHROUGH_KEYS,
    PASSTHROUGH_REFUSES,
    SITE_MODES,
    KeylessConfig,
    PassthroughConfig,
)
from tlsedge.config.schema import (
    AcmeSettings,
    HealthCheck,
    Limits,
    OriginTimeouts,
    OutlierDetection,
    PoolConfig,
    PoolServer,
    SiteConfig,
    StickySessions,
)
from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless.client import format_pin, parse_pin, pin_for_certificate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TRUST_MODES = DOCS.parent / "trust-modes.md"

# Keys whose value is a table documented in a section of its own, by the section's heading code.
TABLE_SECTIONS = {
    "limits": "[server.limits]",
    "origin": "[site.origin]",
    "pool": "[[site.pool]]",
    "route": "[[site.route]]",
    "health": "[site.pool.health]",
    "outlier": "[site.pool.outlier]",
    "cache": "[site.cache]",
    "rule": "[[site.cache.rule]]",
    "waf": "[site.waf]",
    "exclusion": "[[site.waf.exclusion]]",
    "rate_limit": "[[site.rate_limit]]",
    "ip_rules": "[site.ip_rules]",
    "bans": "[site.bans]",
    "challenge": "[site.challenge]",
    "bypass": "[[site.challenge.bypass]]",
    "password": "[[site.password]]",
    "passthrough": "[site.passthrough]",
    "keyless": "[site.keyless]",
}
# The tables of the file's top level, by the heading code of their section.
ROOT_SECTIONS = {"server": "[server]", "acme": "[acme]", "cache": "[cache]", "guard": "[guard]",
                 "ip_rules": "[ip_rules]", "bans": "[bans]", "site": "[[site]]"}
# Each table the loader reads, by the heading code of its section, with the keys it accepts.
SECTIONS: dict[str, Collection[str]] = {
    "[server]": _SERVER_KEYS,
    "[server.limits]": _LIMITS,
    "[[site]]": _SITE_KEYS,
    "certificate": _CERTIFICATE_KEYS,
    "certificate = { acme = true }": _SITE_ACME_KEYS,
    "certificate = { imported = true }": ("imported",),
    "[acme]": _ACME_KEYS,
    "[site.origin]": _ORIGIN,
    "[[site.pool]]": _POOL_KEYS,
    "servers": _POOL_SERVER_KEYS,
    "sticky": _STICKY_KEYS,
    "[site.pool.health]": _HEALTH,
    "[site.pool.outlier]": _OUTLIER,
    "[[site.route]]": _ROUTE_KEYS,
    "request_headers": _HEADER_EDIT_KEYS,
    "[cache]": cache_config.STORAGE_KEYS,
    "[site.cache]": cache_config.SITE_KEYS,
    "[[site.cache.rule]]": cache_config.RULE_KEYS,
    "[guard]": GUARD_KEYS,
    "[ip_rules]": IP_RULES_KEYS,
    "[bans]": BAN_KEYS,
    "[site.waf]": WAF_KEYS,
    "[[site.waf.exclusion]]": WAF_EXCLUSION_KEYS,
    "[[site.rate_limit]]": RATE_LIMIT_KEYS,
    "[site.ip_rules]": IP_RULES_KEYS,
    "[site.bans]": BAN_KEYS,
    "[site.challenge]": CHALLENGE_KEYS,
    "[[site.challenge.bypass]]": BYPASS_KEYS,
    "[[site.password]]": PASSWORD_KEYS,
    "[site.passthrough]": PASSTHROUGH_KEYS,
    "[site.keyless]": KEYLESS_KEYS,
}
# Defaults to check: (section, schema class, the loader's readers of that table).
DEFAULTS: list[tuple[str, type, dict[str, Callable[[_Table, str], Any]]]] = [
    ("[server.limits]", Limits, _LIMITS),
    ("[site.origin]", OriginTimeouts, _ORIGIN),
    ("[[site.pool]]", PoolConfig, _POOL),
    ("servers", PoolServer, _POOL_SERVER),
    ("sticky", StickySessions, _STICKY),
    ("[site.pool.health]", HealthCheck, _HEALTH),
    ("[site.pool.outlier]", OutlierDetection, _OUTLIER),
]
# Defaults that mean "off" and have no value a file could give (a rate of 0 is refused): documented in words.
UNWRITTEN_DEFAULTS = {("[server.limits]", "connection_rate_per_ip")}


def _sections() -> dict[str, dict[str, list[str]]]:
    """Table rows by their first cell, per section; a section is named by the first code span of its heading."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    fenced = False
    for line in DOCS.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("#"):
            code = re.search(r"`([^`]+)`", line)
            current = sections.setdefault(code.group(1) if code else line.lstrip("# "), {})
            continue
        m = re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            current.setdefault(m.group(1), [cell.strip() for cell in m.group(2).split("|")])
    return sections


SECTION_ROWS = _sections()


@pytest.mark.parametrize(("section", "key"), [(section, key) for section, keys in SECTIONS.items() for key in keys])
def test_every_accepted_key_has_a_row_in_its_section(section, key):
    assert section in SECTION_ROWS, f"docs/configuration.md has no section headed `{section}`"
    if key in TABLE_SECTIONS and key not in SECTION_ROWS[section]:
        assert TABLE_SECTIONS[key] in SECTION_ROWS, f"`{key}` is a table but has no section `{TABLE_SECTIONS[key]}`"
        return
    assert key in SECTION_ROWS[section], f"`{key}` is accepted in `{section}` but has no row in its section"


@pytest.mark.parametrize("section", SECTIONS)
def test_every_documented_row_is_an_accepted_key(section):
    stale = set(SECTION_ROWS.get(section, {})) - set(SECTIONS[section])
    assert not stale, f"rows of `{section}` that the loader does not accept: {sorted(stale)}"


def _documented_default(section: str, key: str) -> Any:
    """The Default cell of a key's row, as the TOML value it is written as."""
    cell = SECTION_ROWS[section][key][1]
    return tomllib.loads(f"v = {cell.strip('`')}")["v"]


def _read(reader: Callable[[_Table, str], Any], key: str, value: Any) -> Any:
    """``value`` read the way the loader reads ``key`` in a file; it must be a valid value for that key."""
    report = _Report(file=DOCS, base=DOCS.parent)
    result = reader(_Table(report, {key: value}, "", None, (key,)), key)
    assert not report.problems, [str(p) for p in report.problems]
    return result


@pytest.mark.parametrize(
    ("section", "cls", "key", "reader"),
    [
        (section, cls, field.name, readers[field.name])
        for section, cls, readers in DEFAULTS
        for field in dataclasses.fields(cls)
        if field.name in readers and field.default is not None and (section, field.name) not in UNWRITTEN_DEFAULTS
    ],
)
def test_documented_defaults_are_the_real_defaults(section, cls, key, reader):
    real = {f.name: f.default for f in dataclasses.fields(cls)}[key]
    documented = _read(reader, key, _documented_default(section, key))
    assert documented == real, (cls.__name__, key, documented, real)


@pytest.mark.parametrize("key", ["hash_on", "hash_method"])
def test_documented_hash_defaults(key):
    """Read outside `_POOL` (they depend on `balance`), and written exactly as the schema's default."""
    real = {f.name: f.default for f in dataclasses.fields(PoolConfig)}[key]
    assert _documented_default("[[site.pool]]", key) == real


def test_defaults_that_are_absent_are_documented_as_such():
    """Settings whose default is "not set" must not show a value the loader would read as something else."""
    for section, cls, readers in DEFAULTS:
        for field in dataclasses.fields(cls):
            if field.name in readers and (field.default is None or (section, field.name) in UNWRITTEN_DEFAULTS):
                cell = SECTION_ROWS[section][field.name][1]
                assert not cell.startswith("`"), (section, field.name, cell)
    assert not Limits().connection_rate_per_ip, "connection_rate_per_ip is documented as off by default"


def test_root_tables_have_their_sections():
    """Every table the loader accepts at the top of the file has a section of its own."""
    assert set(ROOT_SECTIONS) == set(_ROOT_KEYS)
    for section in ROOT_SECTIONS.values():
        assert section in SECTION_ROWS, f"docs/configuration.md has no section headed `{section}`"


def test_documented_acme_defaults_are_the_real_defaults(tmp_path):
    """Every [acme] default written in the docs, loaded as a configuration, gives AcmeSettings' own defaults."""
    rows = SECTION_ROWS["[acme]"]
    lines = ["[acme]"]
    for key, cells in rows.items():
        if cells[1] != "none":
            lines.append(f"{key} = {cells[1].strip('`')}")
    lines += ['[server]', 'https = ["127.0.0.1:8443"]', 'http = ["127.0.0.1:8080"]', "[[site]]", 'name = "a"',
              'hosts = ["a.example"]', 'origins = ["http://127.0.0.1:9000"]', "certificate = { acme = true }"]
    path = tmp_path / "acme.toml"
    path.write_text("\n".join(lines) + "\n")
    loaded = load_config(path).site("a").managed_certificate.acme
    for field in dataclasses.fields(AcmeSettings):
        if field.name in rows and rows[field.name][1] != "none":
            real = pytest.approx(field.default, rel=1e-2) if isinstance(field.default, float) else field.default
            assert getattr(loaded, field.name) == real, field.name


@pytest.mark.parametrize("section", ["[cache]", "[site.cache]", "[[site.cache.rule]]"])
def test_documented_cache_defaults(section, tmp_path):
    """Every default the cache tables document, written into a file and loaded, is the default the code uses."""
    values = {}
    for key in SECTION_ROWS[section]:
        try:
            values[key] = _documented_default(section, key)
        except tomllib.TOMLDecodeError:
            continue  # "none", "required": no value to write
    values.pop("path", None)  # "<state_dir>/cache" is a description, checked below
    storage = values if section == "[cache]" else {}
    site_cache = {"enabled": True, **values} if section == "[site.cache]" else {"enabled": True}
    rule = {**values, "path_prefix": "/r/"} if section == "[[site.cache.rule]]" else None
    text = [f'[server]\nstate_dir = "{tmp_path}"\nhttp = ["127.0.0.1:8080"]\n[cache]']
    text += [f"{key} = {_toml(value)}" for key, value in storage.items()]
    text.append('[[site]]\nname = "s"\nhosts = ["s.example"]\norigins = ["http://127.0.0.1:9"]\n[site.cache]')
    text += [f"{key} = {_toml(value)}" for key, value in site_cache.items()]
    if rule is not None:
        text.append("[[site.cache.rule]]")
        text += [f"{key} = {_toml(value)}" for key, value in rule.items()]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(text) + "\n")
    config = load_config(path)
    if section == "[cache]":
        assert config.cache == cache_config.CacheStorage()
        assert SECTION_ROWS[section]["path"][1] == '`"<state_dir>/cache"`'
    elif section == "[site.cache]":
        assert config.sites[0].cache == cache_config.SiteCache()
    else:
        assert config.sites[0].cache.rules == (cache_config.CacheRule(path_prefix="/r/"),)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# --- the protection tables (issue 6): read by loader functions, so their defaults are checked by loading a file ----

_HASH = "scrypt$16384$8$1$ySviKqawKyiq1v97JEBkOQ$y44Yg6-UFuXNbKkstA1oCp7V-y74IPGIv01ehZDleuI"
# Per table: values it needs besides its defaults, keys whose default is described in words (no TOML value), where the
# loaded table is found in the configuration, and what it must equal.
GUARD_TABLES: dict[str, tuple[dict[str, Any], frozenset[str], Callable[[Any], Any], Any]] = {
    "[guard]": ({}, frozenset(), lambda c: c.guard, GuardSettings()),
    "[ip_rules]": ({}, frozenset(), lambda c: c.guard.ip_rules, IpRulesConfig()),
    "[bans]": ({}, frozenset(), lambda c: c.guard.bans, dataclasses.replace(BanConfig(), scope="global")),
    "[site.waf]": ({}, frozenset(), lambda c: c.sites[0].guard.waf, WafConfig()),
    "[[site.rate_limit]]": (
        {"rate": "10/s"},
        frozenset({"name", "burst", "methods"}),
        lambda c: c.sites[0].guard.rate_limits,
        (RateLimitConfig(name="rule0", key="ip", rate=10.0, burst=10),),
    ),
    "[site.ip_rules]": ({}, frozenset(), lambda c: c.sites[0].guard.ip_rules, IpRulesConfig()),
    "[site.bans]": ({}, frozenset(), lambda c: c.sites[0].guard.bans, BanConfig()),
    "[site.challenge]": ({}, frozenset(), lambda c: c.sites[0].guard.challenge, ChallengeConfig()),
    "[[site.password]]": (
        {"path_prefix": "/p/", "password_hash": _HASH},
        frozenset(),
        lambda c: c.sites[0].guard.passwords,
        (PasswordPath(path_prefix="/p/", password_hash=_HASH),),
    ),
}
# Tables whose every key is required: no default to check, and the docs must say so.
GUARD_REQUIRED_ONLY = ("[[site.waf.exclusion]]", "[[site.challenge.bypass]]")


def _load_guard_table(tmp_path: Path, section: str, values: dict[str, Any]) -> Any:
    """``values`` written as the table headed ``section`` (root or site level, as its heading says) and loaded."""
    table = [section, *(f"{key} = {_toml(value)}" for key, value in values.items())]
    site = section.strip("[]").startswith("site.")
    text = [f'[server]\nstate_dir = "{tmp_path}"\nhttp = ["127.0.0.1:8080"]']
    if not site:
        text += table
    text.append('[[site]]\nname = "s"\nhosts = ["s.example"]\norigins = ["http://127.0.0.1:9"]')
    if site:
        text += table
    path = tmp_path / "guard.toml"
    path.write_text("\n".join(text) + "\n")
    return load_config(path)


@pytest.mark.parametrize("section", GUARD_TABLES)
def test_documented_guard_defaults(section, tmp_path):
    """Every default a protection table documents, written into a file and loaded, is what the code uses: the same
    as the table written empty (with only what it requires), and the dataclass's own default."""
    required, in_words, part, expected = GUARD_TABLES[section]
    documented = {}
    for key in SECTION_ROWS[section]:
        try:
            documented[key] = _documented_default(section, key)
        except tomllib.TOMLDecodeError:
            continue  # "required", "none", or a default described in words
    inner = section.strip("[]") + "."
    tables = {key for key in SECTIONS[section] if TABLE_SECTIONS.get(key, "").strip("[]").startswith(inner)}
    assert set(documented) == set(SECTIONS[section]) - tables - in_words - set(required), (
        "keys whose documented default is not a value, or should not be one", section, sorted(documented))
    for key in required:
        assert SECTION_ROWS[section][key][1] == "required", (section, key)
    loaded = part(_load_guard_table(tmp_path, section, {**documented, **required}))
    assert loaded == part(_load_guard_table(tmp_path, section, required))
    assert loaded == expected


@pytest.mark.parametrize("section", GUARD_REQUIRED_ONLY)
def test_required_guard_keys_are_documented_as_required(section):
    assert {key: cells[1] for key, cells in SECTION_ROWS[section].items()} == dict.fromkeys(SECTIONS[section],
                                                                                            "required")


# --- the trust-minimising modes (issue 7): loaded from files, since a keyless table needs real certificates ---------

# The section listing the site keys a pass-through site refuses (a heading without a code span is named by its text).
PASSTHROUGH_REFUSALS = "Keys a pass-through site refuses"
# The documented way to compute a key server's pin, as written in both documents.
PIN_COMMAND = ("openssl x509 -in ks.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256"
               " -binary | base64")
KEYLESS_REQUIRED = ("certificate", "servers", "pins", "client_certificate")


def _load_site(tmp_path: Path, site: list[str]) -> SiteConfig:
    """A configuration of one site (``site``: its lines after the name and hosts) loaded; the site."""
    text = [f'[server]\nstate_dir = "{tmp_path / "state"}"\nhttps = ["127.0.0.1:8443"]',
            '[[site]]\nname = "s"\nhosts = ["s.example"]', *site]
    path = tmp_path / "modes.toml"
    path.write_text("\n".join(text) + "\n")
    return load_config(path).sites[0]


def _keyless_files(tmp_path: Path) -> list[str]:
    """The required keys of [site.keyless], with a chain, a key-server pin and an edge certificate made now."""
    ca = LocalCA.create()
    chain = ca.issue(["s.example"])
    (tmp_path / "chain.pem").write_bytes(chain.cert_pem)  # the public chain only: the key is not needed
    keyserver = ca.issue(["keys.example"])
    ca.issue(["edge-1.example"], client=True, server=False).write(tmp_path / "edge.pem", tmp_path / "edge.key")
    pin = format_pin(pin_for_certificate(keyserver.cert_pem))
    return ['certificate = "chain.pem"', 'servers = ["127.0.0.1:9443"]', f'pins = ["{pin}"]',
            'client_certificate = { cert = "edge.pem", key = "edge.key" }']


def test_site_mode_is_documented():
    cells = SECTION_ROWS["[[site]]"]["mode"]
    assert all(f'`"{mode}"`' in cells[0] for mode in SITE_MODES), cells[0]
    real = {f.name: f.default for f in dataclasses.fields(SiteConfig)}["mode"]
    assert _documented_default("[[site]]", "mode") == real == "terminate"


def test_passthrough_refusals_are_documented():
    """The documented list of keys a pass-through site refuses is the loader's list, no more, no less."""
    assert set(SECTION_ROWS[PASSTHROUGH_REFUSALS]) == set(PASSTHROUGH_REFUSES)


def test_documented_passthrough_defaults(tmp_path):
    """[site.passthrough] written with its documented defaults loads as the table left out, and as the code's own."""
    documented = {key: _documented_default("[site.passthrough]", key) for key in PASSTHROUGH_KEYS}
    written = _load_site(tmp_path, ['mode = "passthrough"', 'origins = ["127.0.0.1:9443"]', "[site.passthrough]",
                                    *(f"{key} = {_toml(value)}" for key, value in documented.items())])
    absent = _load_site(tmp_path, ['mode = "passthrough"', 'origins = ["127.0.0.1:9443"]'])
    assert written.passthrough == absent.passthrough == PassthroughConfig()


def test_documented_keyless_defaults(tmp_path):
    """[site.keyless]: the required keys say so, and timeout and ping_interval written with their documented defaults
    load as left out, and as the code's own defaults."""
    rows = SECTION_ROWS["[site.keyless]"]
    assert {key for key, cells in rows.items() if cells[1].startswith("required")} == set(KEYLESS_REQUIRED)
    required = _keyless_files(tmp_path)
    optional = [key for key in KEYLESS_KEYS if key not in KEYLESS_REQUIRED]
    documented = [f"{key} = {_toml(_documented_default('[site.keyless]', key))}" for key in optional]
    site = ['mode = "keyless"', 'origins = ["http://127.0.0.1:9000"]', "[site.keyless]", *required]
    written = _load_site(tmp_path, site + documented).keyless
    absent = _load_site(tmp_path, site).keyless
    assert written is not None and written == absent
    real = {f.name: f.default for f in dataclasses.fields(KeylessConfig)}
    assert {key: getattr(written, key) for key in optional} == {key: real[key] for key in optional}


def test_documented_pin_command_gives_the_pin_the_edge_checks(tmp_path):
    """The openssl pipeline both documents give, run on a key server certificate, prints the base64 SHA-256 of its
    SubjectPublicKeyInfo: the pin the edge compares (written "sha256/" + output)."""
    assert PIN_COMMAND in TRUST_MODES.read_text()
    in_table = PIN_COMMAND.replace("|", "\\|")  # a pipe inside a table cell is escaped
    assert any(line.startswith("| `pins` |") and f"`{in_table}`" in line for line in DOCS.read_text().splitlines())
    keyserver = LocalCA.create().issue(["keys.example"], key_type="rsa")
    (tmp_path / "ks.pem").write_bytes(keyserver.cert_pem)
    run = subprocess.run(PIN_COMMAND, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert run.returncode == 0, run.stderr
    assert parse_pin("sha256/" + run.stdout.strip()) == pin_for_certificate(keyserver.cert_pem)
