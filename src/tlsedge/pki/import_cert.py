"""Checking an owner's certificate and key before tlsedge stores and serves them (``tlsedge cert import``).

Why check at import: a broken pair found here is one clear message to the operator; the same pair found at handshake
time is a site that is down for every visitor. Each failure has its own exception class and a message that says what is
wrong and what to do. The work is sans-IO (bytes in, an :class:`ImportResult` out) so every case is tested without
files or sockets; the one thing read from the machine is its trust store, once, to tell a complete chain from one that
lacks an intermediate.

What is served is the leaf followed by its intermediates in issuing order, whatever the order in the file. A self-signed
root at the end of the file is left out: clients must already hold it, and sending it only costs bytes.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from warnings import catch_warnings, simplefilter

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from tlsedge.config.certs import dns_names, key_type, key_unfit_reason, same_public_key
from tlsedge.config.values import name_covers
from tlsedge.pki.local_ca import private_key_pem

WARN_BEFORE = timedelta(days=30)  # an imported certificate is never renewed by tlsedge: warn the operator early

_USAGE_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}
_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"


class CertImportError(ValueError):
    """A certificate or key that cannot be imported; the message says what is wrong and what to do."""


class GarbageInputError(CertImportError):
    """A file holds no usable PEM certificate or key (empty, DER, swapped files, corrupt base64)."""


class EncryptedKeyError(CertImportError):
    """The key is encrypted and no passphrase was given."""


class WrongPassphraseError(CertImportError):
    """The passphrase does not decrypt the key."""


class UnsupportedKeyError(CertImportError):
    """A key type or size that TLS clients or OpenSSL refuse."""


class KeyMismatchError(CertImportError):
    """The key belongs to none of the certificates."""


class ChainOrderError(CertImportError):
    """The certificates do not form one chain from the key's certificate (several leaves, unrelated certificates)."""


class BadSignatureError(CertImportError):
    """A certificate of the chain was not signed by the certificate named as its issuer."""


class CaConstraintError(CertImportError):
    """An issuer on the path is not a CA, or has more CAs below it than its path length allows."""


class MissingIntermediateError(CertImportError):
    """The chain stops before a certificate that a trusted root issued."""


class NameMismatchError(CertImportError):
    """The certificate's names do not cover every host of the site."""


class ValidityError(CertImportError):
    """A certificate of the chain is expired or not valid yet."""


class ServerUsageError(CertImportError):
    """The certificate's extended key usage does not allow TLS servers."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What to store: the chain to serve (leaf first), the key as unencrypted PKCS#8 PEM, and what to tell the operator.

    The key is unencrypted because workers load it unattended; the store seals it when ``TLSEDGE_STORE_KEY`` is set.
    """

    chain: tuple[x509.Certificate, ...]
    chain_pem: bytes
    key_pem: bytes
    warnings: tuple[str, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def prepare_import(
    chain_pem: bytes,
    key_pem: bytes,
    hosts: Sequence[str],
    *,
    passphrase: bytes | None = None,
    trusted_roots: Sequence[x509.Certificate] = (),
    now: datetime | None = None,
    cert_file: str = "the certificate file",
    key_file: str = "the key file",
) -> ImportResult:
    """Check a certificate chain and its key for a site answering ``hosts``; raise :class:`CertImportError` if unfit.

    ``trusted_roots`` are roots trusted besides the system's (a private CA); ``cert_file`` and ``key_file`` name the
    inputs in messages (e.g. the paths given on the command line).
    """
    warnings: list[str] = []
    certs = _read_certificates(chain_pem, cert_file)
    key = _read_key(key_pem, passphrase, key_file, warnings)
    _check_key_type(key, key_file, warnings)
    leaf = _find_leaf(certs, key, cert_file, key_file)
    chain = _order_chain(leaf, certs, cert_file)
    served = chain[:-1] if len(chain) > 1 and _self_signed(chain[-1]) else chain
    _check_dates(served, now or datetime.now(UTC), warnings)
    _check_names(leaf, hosts)
    _check_server_usage(leaf)
    path = _trusted_path(chain, [*trusted_roots, *system_roots()]) or _untrusted_path(chain, cert_file, warnings)
    _check_issuers(path)
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in served)
    return ImportResult(tuple(served), pem, private_key_pem(key), tuple(warnings))


@functools.cache
def system_roots() -> tuple[x509.Certificate, ...]:
    """The roots this machine trusts (OpenSSL's default CA file), read once per process."""
    roots = []
    with catch_warnings():
        simplefilter("ignore", CryptographyDeprecationWarning)  # old roots with a non-positive serial number
        for der in ssl.create_default_context().get_ca_certs(binary_form=True):
            try:
                roots.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue  # a root cryptography cannot parse cannot anchor a chain we check either
    return tuple(roots)


def describe(cert: x509.Certificate) -> str:
    """A certificate as operators recognize it: its subject, e.g. ``CN=blog.example``."""
    return cert.subject.rfc4514_string() or "(empty subject)"


# --- reading ----------------------------------------------------------------------------------------------------------


def _read_certificates(data: bytes, cert_file: str) -> list[x509.Certificate]:
    if _CERT_BEGIN not in data:
        raise GarbageInputError(f"{cert_file} holds no certificate: {_not_pem_reason(data, key_expected=False)}")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise GarbageInputError(
            f"{cert_file} holds a damaged certificate ({exc}); copy the PEM blocks again from what your CA sent, "
            "including the BEGIN and END lines"
        ) from None
    unique: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        unique.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)  # a certificate pasted twice is harmless
    return list(unique.values())


def _not_pem_reason(data: bytes, *, key_expected: bool) -> str:
    """Why a file without the expected PEM block is not what it should be, with the way out."""
    wanted = "the private key in PEM" if key_expected else "the chain in PEM ('-----BEGIN CERTIFICATE-----')"
    if not data.strip():
        return f"the file is empty; give {wanted}"
    if key_expected and _CERT_BEGIN in data:
        return "it holds a certificate, not a private key: are the certificate and key files swapped?"
    if not key_expected and _KEY_MARK in data:
        return "it holds a private key, not a certificate: are the certificate and key files swapped?"
    if not key_expected and _is_der_certificate(data):
        return "it is a binary (DER) certificate; convert it to PEM: openssl x509 -inform der -in FILE -out FILE.pem"
    return (
        f"it is not PEM; give {wanted}. A PKCS#12 bundle (.pfx/.p12) holds both: extract them with "
        "openssl pkcs12 -in FILE.pfx -nokeys -out chain.pem and openssl pkcs12 -in FILE.pfx -nocerts -out key.pem"
    )


def _is_der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def _read_key(data: bytes, passphrase: bytes | None, key_file: str, warnings: list[str]) -> PrivateKeyTypes:
    if _KEY_MARK not in data:
        raise GarbageInputError(f"{key_file} holds no private key: {_not_pem_reason(data, key_expected=True)}")
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise EncryptedKeyError(
                f"the key in {key_file} is encrypted: put its passphrase in an environment variable and pass "
                "--key-passphrase-env VAR (the key is stored decrypted, sealed when TLSEDGE_STORE_KEY is set)"
            ) from None
        # a passphrase was given for a key that is not encrypted: load it without one, below
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise WrongPassphraseError(
                f"the passphrase does not decrypt the key in {key_file}; check the variable given with "
                "--key-passphrase-env (no trailing newline) and that this is the key it was set for"
            ) from None
        raise _damaged_key(key_file, exc) from None
    except UnsupportedAlgorithm as exc:
        raise UnsupportedKeyError(f"the key in {key_file} is of a kind tlsedge cannot use ({exc}); "
                                  "use an ECDSA P-256 or RSA 2048+ key") from None
    warnings.append(f"the key in {key_file} is not encrypted: the passphrase given was not needed")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _damaged_key(key_file, exc) from None


def _damaged_key(key_file: str, exc: Exception) -> GarbageInputError:
    return GarbageInputError(f"{key_file} holds a damaged private key ({exc}); export the key again as PEM")


def _check_key_type(key: PrivateKeyTypes, key_file: str, warnings: list[str]) -> None:
    unfit = key_unfit_reason(key)
    if unfit is None and not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
    ):
        unfit = f"a {key_type(key)} key cannot sign TLS handshakes; use ECDSA P-256 or RSA 2048+"
    if unfit is not None:
        raise UnsupportedKeyError(f"the key in {key_file}: {unfit}")
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        warnings.append(f"most browsers do not accept {key_type(key)} certificates; prefer ECDSA P-256")


# --- the chain --------------------------------------------------------------------------------------------------------


def _find_leaf(
    certs: list[x509.Certificate], key: PrivateKeyTypes, cert_file: str, key_file: str
) -> x509.Certificate:
    """The certificate of the key: the one to serve first, whatever its place in the file."""
    public = key.public_key()
    matching = [cert for cert in certs if same_public_key(cert.public_key(), public)]
    if not matching:
        first = certs[0]
        names = ", ".join(dns_names(first) or []) or "no DNS names"
        raise KeyMismatchError(
            f"the private key in {key_file} does not match any certificate in {cert_file} (the first is "
            f"{describe(first)}, for {names}); give the key this certificate was issued for. To compare: "
            "openssl x509 -noout -pubkey -in CERT and openssl pkey -pubout -in KEY print the same key for a pair"
        )
    if len(matching) > 1:
        raise ChainOrderError(
            f"{len(matching)} certificates in {cert_file} are for this key "
            f"({'; '.join(describe(c) for c in matching)}); keep only the one to serve and its intermediates"
        )
    return matching[0]


def _order_chain(leaf: x509.Certificate, certs: list[x509.Certificate], cert_file: str) -> list[x509.Certificate]:
    """Leaf, then each certificate's issuer from the file, checking every signature on the way."""
    remaining = [cert for cert in certs if cert is not leaf]
    chain = [leaf]
    while not _self_signed(chain[-1]):
        current = chain[-1]
        named = [cert for cert in remaining if cert.subject == current.issuer]
        if not named:
            break
        signer = next((cert for cert in named if _signed_by(current, cert)), None)
        if signer is None:
            raise BadSignatureError(
                f"{describe(current)} names {current.issuer.rfc4514_string()} as its issuer, but the certificate "
                f"of that name in {cert_file} did not sign it (the signature does not verify); the file mixes "
                "certificates of different CAs or renewals: use the chain your CA issued with this certificate"
            )
        chain.append(signer)
        remaining.remove(signer)
    if remaining:
        raise _unrelated(leaf, remaining, cert_file)
    return chain


def _unrelated(leaf: x509.Certificate, extra: list[x509.Certificate], cert_file: str) -> ChainOrderError:
    shown = "; ".join(describe(cert) for cert in extra)
    if any(not _is_ca(cert) for cert in extra):
        return ChainOrderError(
            f"{cert_file} holds several leaf certificates: {describe(leaf)} (the key's) and {shown}; a chain has "
            "one leaf: keep the certificate of this key and its intermediates only"
        )
    return ChainOrderError(
        f"{cert_file} holds certificates that are not in the chain of {describe(leaf)}: {shown}; they issued "
        "neither it nor its intermediates: remove them, or get the matching chain from your CA"
    )


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and _signed_by(cert, cert)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _trusted_path(chain: list[x509.Certificate], roots: Sequence[x509.Certificate]) -> list[x509.Certificate] | None:
    """The path from the leaf to a trusted root, or None when no certificate of the chain reaches one.

    Any link may be the anchor, not only the last one: a chain that goes on past a trusted root (a cross-signed root
    whose own issuer has retired) is still complete.
    """
    for position, cert in enumerate(chain):
        for root in roots:
            if root.subject == cert.subject and same_public_key(root.public_key(), cert.public_key()):
                return [*chain[:position], root]
            if root.subject == cert.issuer and _signed_by(cert, root):
                return [*chain[: position + 1], root]
    return None


def _untrusted_path(chain: list[x509.Certificate], cert_file: str, warnings: list[str]) -> list[x509.Certificate]:
    """A chain ending at a root nobody here trusts is served, with a warning; one ending at an intermediate is not."""
    last = chain[-1]
    if _self_signed(last):
        what = "the certificate is self-signed" if len(chain) == 1 else f"the chain ends at the root {describe(last)}"
        warnings.append(
            f"{what}, which is not a trusted root of this machine: only clients that trust it will connect "
            "(pass it with --trust if that is intended)"
        )
        return chain
    raise MissingIntermediateError(
        f"the chain is incomplete: {describe(last)} was issued by {last.issuer.rfc4514_string()}, which is neither "
        f"in {cert_file} nor a trusted root; append your CA's intermediate certificate(s) after the leaf (the "
        "'full chain' or 'CA bundle' your CA provides)" + _ca_issuers_hint(last)
        + ", or, for a private CA, pass its root with --trust root.pem"
    )


def _check_issuers(path: list[x509.Certificate]) -> None:
    """Every issuer on the path is a CA allowed to have that many CAs below it (basicConstraints), as clients check."""
    for below, issuer in enumerate(path[1:]):
        try:
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = x509.BasicConstraints(ca=False, path_length=None)
        if not constraints.ca:
            raise CaConstraintError(
                f"{describe(issuer)} issued {describe(path[below])} but is not a CA certificate (no basicConstraints "
                "CA:TRUE); clients refuse such a chain: use the intermediates your CA provides"
            )
        if constraints.path_length is not None and below > constraints.path_length:
            raise CaConstraintError(
                f"{describe(issuer)} allows {constraints.path_length} intermediate(s) below it (pathlen), but the "
                f"chain has {below}; clients refuse it: use a CA that may issue intermediates, or issue the "
                "certificate from the root directly"
            )


def _ca_issuers_hint(cert: x509.Certificate) -> str:
    """Where the CA publishes the missing issuer (Authority Information Access), when the certificate says."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ""
    urls = [d.access_location.value for d in access
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]
    if not urls:
        return ""
    return f"; the certificate says its issuer is at {urls[0]} (DER: convert it with openssl x509 -inform der)"


# --- the leaf ---------------------------------------------------------------------------------------------------------


def _check_dates(served: list[x509.Certificate], now: datetime, warnings: list[str]) -> None:
    for position, cert in enumerate(served):
        what = "the certificate" if position == 0 else f"the intermediate {describe(cert)}"
        if cert.not_valid_after_utc <= now:
            action = "download the current chain from your CA" if position else "renew it with your CA and import it"
            raise ValidityError(f"{what} expired on {_when(cert.not_valid_after_utc)}; clients refuse it: {action}")
        if cert.not_valid_before_utc > now:
            raise ValidityError(
                f"{what} is not valid before {_when(cert.not_valid_before_utc)} (now is {_when(now)}); clients "
                "refuse it until then: import it after that time, or check this machine's clock"
            )
    left = served[0].not_valid_after_utc - now
    if left <= WARN_BEFORE:
        span = f"{left.days} days" if left.days >= 1 else f"{max(1, int(left.total_seconds() // 3600))} hours"
        warnings.append(
            f"expires in {span} ({served[0].not_valid_after_utc:%Y-%m-%d}): renew it soon; tlsedge does not renew "
            "imported certificates, import the new one when you have it"
        )


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _check_names(leaf: x509.Certificate, hosts: Sequence[str]) -> None:
    names = dns_names(leaf)
    wanted = [host.lower().removesuffix(".") for host in hosts]
    uncovered = [host for host in wanted if not any(name_covers(name, host) for name in names or [])]
    if not uncovered:
        return
    if names is None:
        has = "it has no subjectAltName, and clients ignore the Common Name"
    else:
        has = f"its names: {', '.join(names) or 'none'}"
    raise NameMismatchError(
        f"the certificate does not cover the site's host(s) {', '.join(uncovered)} ({has}); get a certificate "
        "naming every host of the site (a wildcard covers one label), or remove those hosts from the site"
    )


def _check_server_usage(leaf: x509.Certificate) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return
    shown = ", ".join(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in usages) or "none"
    raise ServerUsageError(
        f"the certificate is not for TLS servers (its extended key usage allows: {shown}); clients refuse it on a "
        "server: ask your CA for a TLS server (serverAuth) certificate"
    )
