"""``tlsedge cert import``: put a site owner's own certificate and key into the store, where running edges pick it up.

Why a command and not files in the configuration: the store is what every worker (and, later, every edge of a cluster)
reads, and a write to it publishes the ``certs`` topic, so the new certificate is swapped in live, without a reload.
Everything is checked first (:mod:`tlsedge.pki.import_cert`): a refused import leaves the served certificate untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography import x509

from tlsedge.commands import config_or_report
from tlsedge.config import Config, SiteConfig
from tlsedge.pki.import_cert import CertImportError, ImportResult, prepare_import
from tlsedge.pki.site_certs import StoredCertificate, save_certificate
from tlsedge.store import StoreError, open_store


class CertCommandError(Exception):
    """An operator error: printed as ``error: ...`` and exit status 1."""


def register(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the ``cert`` group to the CLI's sub-parser set; return the group's own sub-parser set for more actions."""
    group = commands.add_parser("cert", help="the sites' own certificates (imported by their owners)")
    actions = group.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import",
        help="check a site's certificate chain and key, store them, and swap them into running edges",
        description="Check a certificate chain and its key for a site (key match, chain order and completeness, "
        "names, dates), then store them; running edges serve the new certificate within seconds.",
    )
    imp.add_argument("--site", required=True, help="the site's name, as in its [[site]] table")
    imp.add_argument("--cert", required=True, type=Path, help="PEM certificate chain (leaf and intermediates)")
    imp.add_argument("--key", required=True, type=Path, help="PEM private key of the certificate")
    imp.add_argument("--key-passphrase-env", metavar="VAR", help="environment variable holding the key's passphrase")
    imp.add_argument("--trust", action="append", type=Path, default=[], metavar="ROOT.pem",
                     help="a private root CA to trust besides the system's (repeatable)")
    imp.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    imp.set_defaults(func=_import)
    return actions


def _import(args: argparse.Namespace) -> int:
    config = config_or_report(args.config)
    if config is None:
        return 1
    try:
        site = importing_site(config, args.site)
        result = prepare_import(
            _read(args.cert),
            _read(args.key),
            site.hosts,
            passphrase=_passphrase(args.key_passphrase_env),
            trusted_roots=[root for path in args.trust for root in _read_roots(path)],
            cert_file=str(args.cert),
            key_file=str(args.key),
        )
        stored = _store(config, site, result, args.cert)
    except (CertCommandError, CertImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report(stored, result)
    return 0


def importing_site(config: Config, name: str) -> SiteConfig:
    """The site ``name``, which must be configured to serve an imported certificate."""
    try:
        site = config.site(name)
    except KeyError:
        known = ", ".join(s.name for s in config.sites) or "none"
        raise CertCommandError(
            f"no site named {name!r} in {config.path} (its sites: {known}); give one of them"
        ) from None
    managed = site.managed_certificate
    if managed is not None and managed.source == "import":
        return site
    if managed is not None:
        now = "gets its certificate over ACME (certificate = { acme = true })"
    elif site.certificates:
        now = f"serves the certificate files {', '.join(str(c.cert) for c in site.certificates)}"
    else:
        now = "has no certificate (plain HTTP only)"
    raise CertCommandError(
        f"site {name!r} {now}; to serve an imported certificate, write certificate = {{ imported = true }} in its "
        f"[[site]] table of {config.path} instead, then run this command again (and reload running edges: "
        "tlsedge serve takes SIGHUP)"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertCommandError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}; check the path (relative to the current directory) "
            "and that this user may read it"
        ) from None


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise CertCommandError(f"--key-passphrase-env {variable}: the environment variable {variable} is not set; "
                       f"set it to the key's passphrase (e.g. read -rs {variable} && export {variable})")
    return value.encode()


def _read_roots(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertCommandError(
            f"--trust {path}: no PEM certificate could be read from it; give the root CA certificate in PEM "
            "('-----BEGIN CERTIFICATE-----')"
        ) from None
    return roots


def _store(config: Config, site: SiteConfig, result: ImportResult, cert_path: Path) -> StoredCertificate:
    store = open_store(config.server.state_dir)
    try:
        return save_certificate(store, site.name, "import", result.chain_pem, result.key_pem,
                                details={"file": str(cert_path.resolve())})
    except StoreError as exc:
        raise CertCommandError(
            f"{exc}; run this command as the user tlsedge runs as, with the same configuration"
        ) from None
    finally:
        store.close()


def _report(stored: StoredCertificate, result: ImportResult) -> None:
    intermediates = len(result.chain) - 1
    print(f"imported the certificate of site {stored.site!r}")
    print(f"  names:     {', '.join(stored.names) or '(none)'}")
    print(f"  issuer:    {stored.issuer}")
    print(f"  not after: {stored.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"  serial:    {stored.serial:X}")
    print(f"  chain:     leaf + {intermediates} intermediate{'s' if intermediates != 1 else ''}")
    print("running edges serve it within seconds; tlsedge does not renew imported certificates: import the next one")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
