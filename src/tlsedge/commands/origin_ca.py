"""``tlsedge ca ...`` and ``tlsedge origin-cert ...``: the origin CA from the command line.

Every command finds the store through the configuration's ``[server].state_dir``, so it acts on the CA the edge
uses. A failure prints ``error: <what and what to do>`` on stderr and exits 1; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from tlsedge.commands import config_or_report
from tlsedge.config import Config
from tlsedge.config.certs import read_bytes
from tlsedge.pki import origin_ca
from tlsedge.pki.local_ca import write_private
from tlsedge.store import Store, StoreError, open_store

Action = Callable[[argparse.Namespace, Store, Config], int]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``ca`` and ``origin-cert`` to the CLI's sub-commands."""
    ca = commands.add_parser("ca", help="the origin CA: create it, print its root certificate or its CRL")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)

    init = _leaf(ca_commands, "init", "create the origin CA (ECDSA P-384) in the store", _ca_init)
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA: every certificate it issued stops being trusted")
    _leaf(ca_commands, "show", "print the root certificate (PEM), for origins that check the edge's client "
          "certificate", _ca_show)
    _leaf(ca_commands, "crl", "print the certificate revocation list (PEM), e.g. for nginx ssl_crl", _ca_crl)

    certs = commands.add_parser("origin-cert", help="certificates of the origin CA: issue, list, revoke")
    cert_commands = certs.add_subparsers(dest="origin_cert_command", required=True)

    issue = _leaf(cert_commands, "issue", "issue a server certificate for an origin", _issue)
    issue.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="a name of the certificate: DNS name, *.one.level wildcard or IP (repeatable); with "
                       "--csr, replaces the CSR's names (default: the CSR's names)")
    source = issue.add_mutually_exclusive_group(required=True)
    source.add_argument("--csr", metavar="FILE",
                        help="the origin's certificate signing request (PEM; '-' reads stdin): its key stays there")
    source.add_argument("--new-key", choices=origin_ca.KEY_TYPES,
                        help="generate the key here (ECDSA P-256 or RSA 2048) and print it with the certificate")
    issue.add_argument("--days", type=int, required=True,
                       help="validity: " + ", ".join(str(d) for d in origin_ca.VALIDITY_DAYS))
    issue.add_argument("--out", metavar="PREFIX", help="write PREFIX.pem (and PREFIX.key, mode 0600) instead")

    listing = _leaf(cert_commands, "list", "list the certificates the CA issued", _list)
    listing.add_argument("--json", action="store_true", help="print the records as JSON")

    revoke = _leaf(cert_commands, "revoke", "revoke a certificate: edges refuse it within seconds", _revoke)
    revoke.add_argument("serial", help="the serial number in hex, as `tlsedge origin-cert list` shows it")
    revoke.add_argument("--reason", choices=list(origin_ca.REASONS), default="unspecified")

    client = _leaf(cert_commands, "client", "the edge's client certificate of a site (authenticated origin pulls)",
                   _client)
    client.add_argument("--site", required=True, help="the site's name in the configuration")
    client.add_argument("--out", metavar="PREFIX", help="write PREFIX.pem and PREFIX.key (mode 0600)")


def _leaf(commands: argparse._SubParsersAction, name: str, help_text: str, action: Action) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    parser.set_defaults(func=lambda args: _run(action, args))
    return parser


def _run(action: Action, args: argparse.Namespace) -> int:
    """Load the configuration, open its store, run the command; every failure becomes one line on stderr."""
    config = config_or_report(args.config)
    if config is None:
        return 1
    store = open_store(config.server.state_dir)
    try:
        return action(args, store, config)
    except (origin_ca.OriginCAError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _ca_init(args: argparse.Namespace, store: Store, config: Config) -> int:
    ca = origin_ca.init_ca(store, force=args.force)
    encrypted = origin_ca.PASSPHRASE_ENV + " is set: its key is encrypted with it; issuing and revoking need it"
    plain = f"its key is not encrypted (set {origin_ca.PASSPHRASE_ENV} when running ca init to encrypt it)"
    print(f"origin CA created: {ca.cert.subject.rfc4514_string()}, ECDSA P-384, valid until "
          f"{ca.cert.not_valid_after_utc:%Y-%m-%d}")
    print(encrypted if origin_ca.key_encrypted(store) else plain)
    print("sites with origin_tls = 'strict' trust it after the edge's next start or reload (SIGHUP)")
    print(f"issue an origin certificate: tlsedge origin-cert issue -c {args.config} --host origin.example "
          "--csr origin.csr --days 5475")
    return 0


def _ca_show(args: argparse.Namespace, store: Store, config: Config) -> int:
    pem = origin_ca.root_pem(store)
    if pem is None:
        raise origin_ca.OriginCAError(f"the origin CA does not exist yet: run tlsedge ca init -c {args.config}")
    sys.stdout.write(pem.decode("ascii"))
    return 0


def _ca_crl(args: argparse.Namespace, store: Store, config: Config) -> int:
    pem = origin_ca.crl_pem(store)
    crl = x509.load_pem_x509_crl(pem)
    if crl.next_update_utc - datetime.now(UTC) < (crl.next_update_utc - crl.last_update_utc) / 3:
        print(f"warning: this CRL expires on {crl.next_update_utc:%Y-%m-%d} (origins then refuse every client "
              f"certificate); set {origin_ca.PASSPHRASE_ENV} and run this again to re-sign it", file=sys.stderr)
    sys.stdout.write(pem.decode("ascii"))
    return 0


def _read_csr(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return read_bytes(Path(name))
    except ValueError as exc:
        raise origin_ca.OriginCAError(f"--csr: {exc}") from None


def _issue(args: argparse.Namespace, store: Store, config: Config) -> int:
    if args.csr is not None:
        cert_pem, key_pem = origin_ca.issue_from_csr(store, _read_csr(args.csr), args.host, args.days), None
    else:
        cert_pem, key_pem = origin_ca.issue_with_new_key(store, args.host, args.new_key, args.days)
    cert = x509.load_pem_x509_certificate(cert_pem)
    if args.out is None:
        sys.stdout.write(cert_pem.decode("ascii"))
        if key_pem is not None:
            sys.stdout.write(key_pem.decode("ascii"))
    else:
        _write_pair(args.out, cert_pem, key_pem)
    print(f"issued serial {cert.serial_number:x} for {', '.join(_names(cert))}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}", file=sys.stderr)
    return 0


def _write_pair(prefix: str, cert_pem: bytes, key_pem: bytes | None) -> None:
    cert_path, key_path = Path(prefix + ".pem"), Path(prefix + ".key")
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert_pem)
        if key_pem is not None:
            write_private(key_path, key_pem)
    except OSError as exc:
        raise origin_ca.OriginCAError(f"--out: cannot write {exc.filename}: {exc.strerror}") from None
    print(f"wrote {cert_path}" + (f" and {key_path} (mode 0600)" if key_pem is not None else ""))


def _names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(getattr(name, "value", name)) for name in san]


def _list(args: argparse.Namespace, store: Store, config: Config) -> int:
    records = origin_ca.list_issued(store)
    if args.json:
        print(json.dumps([{**r.to_json(), "status": r.status()} for r in records], indent=2))
        return 0
    if not records:
        print("no certificates issued yet: tlsedge origin-cert issue --help")
        return 0
    rows = [("SERIAL", "KIND", "STATUS", "NOT AFTER", "NAMES")]
    for r in records:
        status = r.status() + (f" ({r.reason})" if r.reason and r.reason != "unspecified" else "")
        names = f"site {r.site}" if r.kind == "client" else ", ".join(r.hosts)
        rows.append((r.serial_hex, r.kind, status, f"{r.not_after:%Y-%m-%d}", names))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def _revoke(args: argparse.Namespace, store: Store, config: Config) -> int:
    record, revoked_now = origin_ca.revoke(store, origin_ca.parse_serial(args.serial), args.reason)
    if not revoked_now:
        print(f"serial {record.serial_hex} was already revoked on {record.revoked_at:%Y-%m-%d %H:%M} UTC",
              file=sys.stderr)
        return 0
    print(f"revoked serial {record.serial_hex}; running edges refuse it within seconds")
    current = origin_ca.stored_client_certificate(store, record.site) if record.site else None
    if current is not None and x509.load_pem_x509_certificate(current[0]).serial_number == record.serial:
        # The site's edge presents this one: replace it now, while the CA key is at hand (workers load it live).
        cert_pem, _ = origin_ca.client_certificate_for_site(store, record.site)
        serial = x509.load_pem_x509_certificate(cert_pem).serial_number
        print(f"site {record.site} now presents a new client certificate (serial {serial:x})")
    print(f"origins that check client certificates against the CRL need the new one: tlsedge ca crl -c {args.config}")
    return 0


def _client(args: argparse.Namespace, store: Store, config: Config) -> int:
    sites = [site.name for site in config.sites]
    if args.site not in sites:
        raise origin_ca.OriginCAError(f"no site named {args.site!r} in {args.config}; its sites: {', '.join(sites)}")
    cert_pem, key_pem = origin_ca.client_certificate_for_site(store, args.site)
    if args.out is None:
        sys.stdout.write(cert_pem.decode("ascii"))
        print("the key stays in the store; --out PREFIX writes the certificate and its key to files", file=sys.stderr)
    else:
        _write_pair(args.out, cert_pem, key_pem)
    return 0
