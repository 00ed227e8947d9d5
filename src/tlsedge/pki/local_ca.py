"""A small local certificate authority and self-signed certificates.

Why: the demo, the tests and operators without a public CA need working HTTPS on day one. A local root (ECDSA P-256)
issues short-lived leaf certificates for DNS names and IP addresses; clients trust it with ``curl --cacert``. Tests also
use it to make deliberately broken certificates (expired, wrong name) through ``not_before``/``not_after``.

Private keys are written unencrypted as PKCS#8 PEM with mode 0600 from the moment the file is created (``os.open`` with
a mode), so there is no window where another user could read them.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Backdate validity a little: clocks of clients and servers are rarely exactly in step.
_CLOCK_SKEW = timedelta(minutes=5)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600 from creation on); parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode under O_CREAT; force it
        os.write(fd, data)
    finally:
        os.close(fd)


def private_file_problem(path: Path) -> str | None:
    """Why a private key file may not be used (not a regular file, readable or writable by others), or None."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return (f"{path} has mode {mode:04o}: other users could read or replace the private key; "
                f"restrict it with: chmod 600 {path}")
    return None


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: use 'ecdsa' or 'rsa'")


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key: what key files and the store (which seals it) hold."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    """An IP address SAN for IP literals (``127.0.0.1``, ``::1``, ``[::1]``), a DNS SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _validity(days: int, not_before: datetime | None, not_after: datetime | None) -> tuple[datetime, datetime]:
    start = not_before if not_before is not None else datetime.now(UTC) - _CLOCK_SKEW
    end = not_after if not_after is not None else start + _CLOCK_SKEW + timedelta(days=days)
    return start, end


def _leaf(
    names: Sequence[str],
    key: PrivateKeyTypes,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    start: datetime,
    end: datetime,
    server: bool,
    client: bool,
    aki: x509.AuthorityKeyIdentifier | None,
) -> x509.Certificate:
    if not names:
        raise ValueError("a certificate needs at least one name")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0].strip("[]"))])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # keyEncipherment: RSA key exchange is never used by our TLS settings, but old clients check for it.
            key_usage(digital_signature=True, key_encipherment=is_rsa),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if aki is not None:
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def key_usage(**granted: bool) -> x509.KeyUsage:
    """A KeyUsage extension with only the named usages set (the constructor wants all nine spelled out)."""
    usages = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )
    usages.update(granted)
    return x509.KeyUsage(**usages)


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate and its key. For CA-issued certs ``cert_pem`` holds only the leaf (the CA is the root)."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate and the key (mode 0600); parent directories are created."""
        _write_public(cert_path, self.cert_pem)
        write_private(key_path, self.key_pem)

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


class LocalCA:
    """A root CA kept in two files; issues leaf certificates for servers and clients."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str = "tlsedge local CA", days: int = 3650) -> LocalCA:
        """A new self-signed ECDSA P-256 root (CA:true, keyCertSign, cRLSign)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start, end = _validity(days, None, None)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> LocalCA:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{key_path}: unsupported CA key type {type(key).__name__}")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Write the root certificate and its key (mode 0600)."""
        _write_public(Path(cert_path), self.cert_pem)
        write_private(Path(key_path), private_key_pem(self.key))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: Sequence[str],
        *,
        key_type: str = "ecdsa",
        days: int = 90,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        server: bool = True,
        client: bool = False,
    ) -> IssuedCert:
        """A leaf for ``names`` (DNS names or IP literals; CN = first name), signed by this CA."""
        key = _new_key(key_type)
        cert_pem = self.issue_for_key(
            names, key, days=days, not_before=not_before, not_after=not_after, server=server, client=client
        )
        return IssuedCert(cert_pem, private_key_pem(key))

    def issue_for_key(
        self,
        names: Sequence[str],
        key: PrivateKeyTypes,
        *,
        days: int = 90,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        server: bool = True,
        client: bool = False,
    ) -> bytes:
        """The PEM leaf for an existing key of any type (P-384 and Ed25519 too, which ``issue`` does not make)."""
        start, end = _validity(days, not_before, not_after)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = _leaf(
            names,
            key,
            self.cert.subject,
            self.key,
            start=start,
            end=end,
            server=server,
            client=client,
            aki=x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def self_signed(names: Sequence[str], *, key_type: str = "ecdsa", days: int = 90) -> IssuedCert:
    """A self-signed leaf for ``names`` (issuer = subject, CA:false): for ``origin_tls = "full"`` and tests."""
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0].strip("[]"))]) if names else None
    if subject is None:
        raise ValueError("a certificate needs at least one name")
    start, end = _validity(days, None, None)
    cert = _leaf(names, key, subject, key, start=start, end=end, server=True, client=False, aki=None)
    return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key))
