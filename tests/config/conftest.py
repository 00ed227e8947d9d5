"""Real certificates and keys on disk for configuration tests (a tiny CA, independent of tlsedge.pki), and helpers that
write configuration files and pick out the problems and warnings the loader reports."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from tlsedge.config import ConfigError, Problem, load_config


def new_key(kind: str = "ec") -> CertificateIssuerPrivateKeyTypes:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


@dataclass
class Pki:
    """Writes certificate chains and keys under ``root`` (mode 0600 keys unless asked otherwise)."""

    root: Path
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.ca_cert = self._build("Test CA", [], self.ca_key, self.ca_key, None, ca=True)

    def _build(
        self,
        cn: str,
        sans: list[str],
        key: CertificateIssuerPrivateKeyTypes,
        signer: CertificateIssuerPrivateKeyTypes,
        issuer: x509.Certificate | None,
        *,
        ca: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        usages: list[x509.ObjectIdentifier] | None = None,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
        return builder.sign(signer, hashes.SHA256())

    def leaf(
        self,
        stem: str,
        sans: list[str],
        kind: str = "ec",
        *,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        chain: bool = True,
        key_mode: int = 0o600,
        usages: list[x509.ObjectIdentifier] | None = None,
    ) -> tuple[Path, Path]:
        """Issue a leaf from the test CA and write ``certs/<stem>.pem`` (leaf + CA) and ``certs/<stem>.key``."""
        key = key or new_key(kind)
        cert = self._build(
            sans[0] if sans else stem,
            sans,
            key,
            self.ca_key,
            self.ca_cert,
            not_before=not_before,
            not_after=not_after,
            usages=usages,
        )
        certs = [cert, self.ca_cert] if chain else [cert]
        return self.write(stem, certs, key, key_mode=key_mode)

    def write(
        self, stem: str, certs: list[x509.Certificate], key: CertificateIssuerPrivateKeyTypes, *, key_mode: int = 0o600
    ) -> tuple[Path, Path]:
        directory = self.root / "certs"
        directory.mkdir(exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        key_path.write_bytes(pem_key(key))
        key_path.chmod(key_mode)
        return cert_path, key_path

    def ca_bundle(self, stem: str = "origin-ca") -> Path:
        path = self.root / "certs" / f"{stem}.pem"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        return path


def pem_key(key: CertificateIssuerPrivateKeyTypes, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a tlsedge.toml (dedented) in tmp_path and return its path."""

    def write(text: str, name: str = "tlsedge.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


# --- building configuration files -------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """Just enough of a TOML writer for tests: scalars, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key (header names with spaces, for instance)."""
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else json.dumps(key)


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; a change to None removes the key."""
    merged = {**base, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def server(**changes: Any) -> dict[str, Any]:
    return changed({"https": ["127.0.0.1:8443"], "http": ["127.0.0.1:8080"]}, changes)


def blog(**changes: Any) -> dict[str, Any]:
    """A valid site with an EC certificate (written by the autouse fixture) and a strict TLS origin."""
    base = {
        "name": "blog",
        "hosts": ["blog.example", "*.blog.example"],
        "certificate": {"cert": "certs/blog.pem", "key": "certs/blog.key"},
        "origins": ["https://127.0.0.1:9443"],
        "origin_server_name": "origin.blog.example",
    }
    return changed(base, changes)


def plain(**changes: Any) -> dict[str, Any]:
    """A valid plain-HTTP site."""
    return changed({"name": "plain", "hosts": ["plain.example"], "origins": ["http://127.0.0.1:9000"]}, changes)


def render(server_table: dict[str, Any] | None, sites: list[dict[str, Any]]) -> str:
    lines = []
    if server_table is not None:
        lines.append("[server]")
        lines += [f"{k} = {toml_value(v)}" for k, v in server_table.items()]
    for site in sites:
        lines.append("\n[[site]]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in site.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def config_file(write_config):
    """Write a config from a server table and site tables; defaults to one valid https site."""

    def write(server_table: dict[str, Any] | None = None, sites: list[dict[str, Any]] | None = None) -> Path:
        return write_config(
            render(server() if server_table is None else server_table, [blog()] if sites is None else sites)
        )

    return write


@pytest.fixture(autouse=True)
def blog_certificate(pki: Pki) -> tuple[Path, Path]:
    return pki.leaf("blog", ["blog.example", "*.blog.example"])


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def problem_at(path: Path, field: str) -> Problem:
    """The one problem reported at ``field`` (failing with the full list when there is none)."""
    problems = problems_of(path)
    found = [p for p in problems if p.field == field]
    assert len(found) == 1, "\n".join(str(p) for p in problems)
    return found[0]


def warnings_of(path: Path) -> list[str]:
    return list(load_config(path).warnings)


def warning_at(path: Path, field: str) -> str:
    warnings = warnings_of(path)
    found = [w for w in warnings if f" {field}: " in w]
    assert len(found) == 1, warnings
    return found[0]
