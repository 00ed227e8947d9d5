"""keyserver.toml: its typed form and loading, with every problem named by file, field and reason.

Only the file's structure is checked here; `tlsedge.keyserver.keys` opens the key and certificate files it names.
Relative paths are relative to the configuration file's directory, so the server runs the same from any directory.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsedge.config.errors import ConfigError, Problem
from tlsedge.config.schema import Listener
from tlsedge.config.values import describe, normalize_hostname, parse_listener, suggest
from tlsedge.guard.ratelimit import parse_rate
from tlsedge.keyserver.policy import ANY_EDGE

TOP_KEYS = ("listen", "certificate", "certificate_key", "client_ca", "log", "rate", "burst", "threads", "key")
KEY_KEYS = ("file", "names", "edges")
DEFAULT_RATE = "200/s"
DEFAULT_LOG = "keyserver-ops.log"
_MAX_IDENTITY = 255
# `key = ...` next to `[[key]]` tables is a TOML error ("Cannot overwrite a value"): say which name to use instead.
_TOP_LEVEL_KEY = re.compile(r"^\s*key\s*=", re.MULTILINE)
_KEY_HINT = (
    "the key server's own TLS key is set with certificate_key = \"...\"; `key` names the [[key]] tables of signing keys"
)


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One ``[[key]]``: a private key file, the SNI names it signs for and the edges allowed to use it."""

    field: str  # "key[0]", for messages
    file: Path
    names: frozenset[str]  # lower case, "*.example.com" covers one label
    edges: frozenset[str]  # case-folded certificate identities, or {"*"}


@dataclass(frozen=True, slots=True)
class KeyserverConfig:
    path: Path
    listen: tuple[Listener, ...]
    certificate: Path
    certificate_key: Path
    client_ca: Path
    log: Path
    rate: float  # signatures per second per edge identity
    burst: int
    threads: int
    keys: tuple[KeyConfig, ...]


class _Reader:
    """Typed getters over one TOML table that record a problem and return None for a missing or bad value."""

    def __init__(self, file: Path, data: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        self.file, self.data, self.prefix = file, data, prefix
        self.problems: list[Problem] = []
        for key in data:
            if key not in allowed:
                self.problem(key, f"unknown key {key!r}{suggest(key, allowed)}; fix its name or remove it")

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(Problem(self.file, self.field(key), reason))

    def string(self, key: str, *, required: str | None = None) -> str | None:
        if key not in self.data:
            if required is not None:
                self.problem(key, f"missing; {required}")
            return None
        value = self.data[key]
        if not isinstance(value, str) or not value:
            self.problem(key, f"must be a non-empty string, not {describe(value)}")
            return None
        return value

    def path(self, key: str, *, required: str | None = None, default: str | None = None) -> Path | None:
        text = self.string(key, required=required) if key in self.data or default is None else default
        if text is None:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.file.parent / path

    def strings(self, key: str, *, required: str) -> list[tuple[str, str]] | None:
        """A non-empty array of strings as (field, value) pairs, so a bad element is named by its index."""
        if key not in self.data:
            self.problem(key, f"missing; {required}")
            return None
        value = self.data[key]
        if not isinstance(value, list) or not value:
            self.problem(key, f"must be a non-empty array of strings, not {describe(value)}; {required}")
            return None
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str) and item:
                items.append((f"{self.field(key)}[{index}]", item))
            else:
                self.problems.append(Problem(self.file, f"{self.field(key)}[{index}]", f"must be a non-empty string, "
                                             f"not {describe(item)}"))
        return items

    def integer(self, key: str, low: int, high: int) -> int | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(key, f"must be an integer from {low} to {high}, not {describe(value)}")
            return None
        return value


def load_config(path: Path) -> KeyserverConfig:
    """Read and check ``path``; raises `ConfigError` listing every problem found."""
    path = Path(path)
    data = _read_toml(path)
    top = _Reader(path, data, "", TOP_KEYS)
    listen = _listeners(top)
    certificate = top.path("certificate", required='the key server\'s own certificate, e.g. "keyserver.pem"')
    certificate_key = top.path(
        "certificate_key", required='the key of that certificate (mode 0600), e.g. "keyserver.key"'
    )
    client_ca = top.path(
        "client_ca", required='the CA that issues the edges\' client certificates, e.g. "edges-ca.pem"'
    )
    log = top.path("log", default=DEFAULT_LOG)
    rate = _rate(top)
    burst = top.integer("burst", 1, 1_000_000)
    threads = top.integer("threads", 1, 1024)
    keys = _keys(top)
    problems = top.problems
    if problems:
        raise ConfigError(problems)
    assert listen is not None and certificate is not None and certificate_key is not None and client_ca is not None
    assert log is not None and rate is not None and keys is not None
    return KeyserverConfig(
        path=path,
        listen=listen,
        certificate=certificate,
        certificate_key=certificate_key,
        client_ca=client_ca,
        log=log,
        rate=rate,
        burst=burst if burst is not None else max(1, math.ceil(rate)),
        threads=threads if threads is not None else (os.cpu_count() or 1),
        keys=keys,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = f"cannot read the configuration file: {exc.strerror or exc}; check the path given with -c"
        raise ConfigError([Problem(path, "(file)", reason)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(path, "(file)", f"not UTF-8 text (byte {exc.start}); save it as UTF-8")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        hint = _KEY_HINT if _TOP_LEVEL_KEY.search(text) else "fix the syntax there"
        raise ConfigError([Problem(path, "(toml)", f"TOML syntax error: {exc}; {hint}")]) from None


def _listeners(top: _Reader) -> tuple[Listener, ...] | None:
    items = top.strings("listen", required='where edges connect, e.g. listen = ["127.0.0.1:9443"]')
    if items is None:
        return None
    listeners = []
    for where, text in items:
        try:
            listeners.append(parse_listener(text))
        except ValueError as exc:
            top.problems.append(Problem(top.file, where, str(exc)))
    return tuple(listeners)


def _rate(top: _Reader) -> float | None:
    text = top.string("rate") if "rate" in top.data else DEFAULT_RATE
    if text is None:
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        top.problem("rate", str(exc))
        return None


def _keys(top: _Reader) -> tuple[KeyConfig, ...] | None:
    tables = top.data.get("key")
    if tables is None:
        top.problem("key", "missing; add at least one [[key]] table with file, names and edges")
        return None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        hint = f"; {_KEY_HINT}" if isinstance(tables, str) else ""
        top.problem("key", f"must be [[key]] tables, not {describe(tables)}{hint}")
        return None
    keys = []
    for index, table in enumerate(tables):
        reader = _Reader(top.file, table, f"key[{index}]", KEY_KEYS)
        file = reader.path("file", required='the private key file (mode 0600), e.g. file = "shop.key"')
        names = _names(reader)
        edges = _edges(reader)
        top.problems.extend(reader.problems)
        if file is not None and names is not None and edges is not None:
            keys.append(KeyConfig(reader.prefix, file, names, edges))
    return tuple(keys)


def _names(reader: _Reader) -> frozenset[str] | None:
    items = reader.strings("names", required='the SNI names it signs for, e.g. names = ["shop.example"]')
    if items is None:
        return None
    names = set()
    for where, text in items:
        try:
            names.add(normalize_hostname(text, allow_wildcard=True))
        except ValueError as exc:
            reader.problems.append(Problem(reader.file, where, str(exc)))
    return frozenset(names)


def _edges(reader: _Reader) -> frozenset[str] | None:
    items = reader.strings(
        "edges", required='the edge identities (client certificate DNS/URI name or CN) allowed, or ["*"] for any edge'
    )
    if items is None:
        return None
    edges = set()
    for where, text in items:
        if len(text) > _MAX_IDENTITY or not text.isprintable():
            reader.problems.append(Problem(reader.file, where, f"{text[:40]!r} is not an edge identity; write the "
                                           "DNS name, URI or common name of the edge's client certificate"))
            continue
        edges.add(text if text == ANY_EDGE else text.casefold())
    return frozenset(edges)
