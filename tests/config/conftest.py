"""Real certificates and keys on disk for configuration tests (a tiny CA, independent of tlsedge.pki)."""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


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
    ) -> tuple[Path, Path]:
        """Issue a leaf from the test CA and write ``certs/<stem>.pem`` (leaf + CA) and ``certs/<stem>.key``."""
        key = key or new_key(kind)
        cert = self._build(
            sans[0] if sans else stem, sans, key, self.ca_key, self.ca_cert, not_before=not_before, not_after=not_after
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
