"""Audit of issue 2: "a TOML config ... documented field by field in docs/configuration.md" and "limits with documented
defaults". Every key the loader accepts has a row in the documentation, and every documented default of a limit or an
origin setting is the default the code really uses."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from tlsedge.config.load import _CERTIFICATE_KEYS, _LIMITS, _ORIGIN, _SERVER_KEYS, _SITE_KEYS
from tlsedge.config.schema import Limits, OriginTimeouts
from tlsedge.config.values import parse_duration, parse_size

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _rows(section: str | None = None) -> dict[str, list[str]]:
    """Table rows of the documentation (or of the section whose heading contains ``section``) by their first cell."""
    rows: dict[str, list[str]] = {}
    inside = section is None
    for line in DOCS.read_text().splitlines():
        if section is not None and line.startswith("#"):
            inside = section in line
        if not inside:
            continue
        m = re.match(r"^\|\s*`([a-z_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows.setdefault(m.group(1), [cell.strip() for cell in m.group(2).split("|")])
    return rows


@pytest.mark.parametrize("key", sorted({*_SERVER_KEYS, *_SITE_KEYS, *_LIMITS, *_ORIGIN, *_CERTIFICATE_KEYS}))
def test_every_accepted_key_has_a_documentation_row(key):
    if key in ("limits", "origin"):  # documented as their own sections
        assert f"[server.{key}]" in DOCS.read_text() or f"[site.{key}]" in DOCS.read_text()
        return
    assert key in _rows(), f"`{key}` is accepted by the loader but has no row in docs/configuration.md"


def _doc_default(section: str, key: str) -> object:
    cells = _rows(section)[key]
    default = cells[1].strip("`")
    return tomllib.loads(f"v = {default}")["v"]


@pytest.mark.parametrize(("cls", "key"), [*((Limits, k) for k in _LIMITS), *((OriginTimeouts, k) for k in _ORIGIN)])
def test_documented_defaults_are_the_real_defaults(cls, key):
    real = {f.name: f.default for f in dataclasses.fields(cls)}[key]
    documented = _doc_default("[server.limits]" if cls is Limits else "[site.origin]", key)
    if isinstance(real, float):
        assert parse_duration(documented) == real, (key, documented, real)
    elif key.endswith("_bytes"):
        assert parse_size(documented) == real, (key, documented, real)
    else:
        assert documented == real, (key, documented, real)
