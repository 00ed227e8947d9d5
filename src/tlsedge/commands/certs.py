"""``tlsedge certs``: every site's public certificate, where it comes from, when it expires and is renewed, and the
last error of its renewal.

It reads the configuration and the store only, so it works whether or not the edge is running. Sites with files give
the facts of the file's leaf; sites whose certificate lives in the store (ACME, imports) give the stored record and
the certificate manager's status.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography import x509

from tlsedge.acme.schedule import scheduled_renewal
from tlsedge.commands import config_or_report
from tlsedge.config.schema import Config, SiteConfig
from tlsedge.pki.site_certs import leaf_facts, load_certificate, load_status
from tlsedge.store import StoreError, open_store

_COLUMNS = ("SITE", "SOURCE", "NAMES", "ISSUER", "NOT AFTER", "RENEWAL", "LAST ERROR")


def register(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="list every site's certificate: names, issuer, expiry, renewal, errors")
    certs.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    certs.add_argument("--json", action="store_true", help="print the rows as JSON")
    certs.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = config_or_report(args.config)
    if config is None:
        return 1
    try:
        rows = certificate_rows(config)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_rows(rows, sys.stdout, args.json)
    return 0


def certificate_rows(config: Config, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per site served over https."""
    now = now or datetime.now(UTC)
    store = open_store(config.server.state_dir) if any(s.managed_certificate for s in config.sites) else None
    rows = []
    for site in config.sites:
        if not site.serves_https:
            continue
        if site.managed_certificate is None or store is None:
            rows.extend(_file_rows(site))
            continue
        rows.append(_stored_row(site, store, now))
    return rows


def _file_rows(site: SiteConfig) -> list[dict[str, Any]]:
    rows = []
    for files in site.certificates:
        row: dict[str, Any] = {"site": site.name, "source": "file", "file": str(files.cert), "renewal": "by you"}
        try:
            names, issuer, serial, _, not_after = leaf_facts(Path(files.cert).read_bytes())
        except (OSError, ValueError) as exc:
            row["last_error"] = f"cannot read {files.cert}: {exc}"
        else:
            row.update(names=list(names), issuer=_short(issuer), serial=f"{serial:x}", not_after=not_after.isoformat())
        rows.append(row)
    return rows


def _stored_row(site: SiteConfig, store: Any, now: datetime) -> dict[str, Any]:
    managed = site.managed_certificate
    assert managed is not None
    stored = load_certificate(store, site.name)
    status = load_status(store, site.name)
    row: dict[str, Any] = {"site": site.name, "source": managed.source}
    if stored is None:
        row["renewal"] = "waiting for the edge to start" if managed.source == "acme" else "waiting for an import"
    else:
        row.update(
            source=stored.source if stored.source != managed.source else managed.source,
            names=list(stored.names),
            issuer=_short(stored.issuer),
            serial=f"{stored.serial:x}",
            not_after=stored.not_after.isoformat(),
        )
        row["renewal"] = _renewal(site, stored, status, now)
    if status.last_success_at:
        row["last_success"] = datetime.fromtimestamp(status.last_success_at, UTC).isoformat(timespec="seconds")
    if status.last_error:
        when = datetime.fromtimestamp(status.last_error_at or 0, UTC).isoformat(timespec="seconds")
        row["last_error"] = f"{when}: {status.last_error}"
        if status.failures:
            row["failures"] = status.failures
    return row


def _renewal(site: SiteConfig, stored: Any, status: Any, now: datetime) -> str:
    managed = site.managed_certificate
    if stored.source == "temporary":
        return "temporary: " + ("ordering" if managed.source == "acme" else "import one with tlsedge cert import")
    if stored.source == "import":
        return "by you (import a new one)"
    settings = managed.acme
    due = stored.renew_at or scheduled_renewal(stored, settings)
    if status.ari_renew_at is not None:
        due = datetime.fromtimestamp(status.ari_renew_at, UTC)
    text = due.isoformat(timespec="seconds") + (" (ARI)" if status.ari_renew_at is not None else "")
    if status.next_attempt is not None:
        text += f"; next try {datetime.fromtimestamp(status.next_attempt, UTC).isoformat(timespec='seconds')}"
    return text


def _short(issuer: str) -> str:
    """The issuer's common name (or the whole DN when it has none): what an operator recognises."""
    try:
        name = x509.Name.from_rfc4514_string(issuer)
        common = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(common[0].value) if common else issuer
    except ValueError:
        return issuer


def print_rows(rows: list[dict[str, Any]], out: IO[str], as_json: bool) -> None:
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    keys = ("site", "source", "names", "issuer", "not_after", "renewal", "last_error")
    table = [list(_COLUMNS)]
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "-")
            cells.append(", ".join(value) if isinstance(value, list) else str(value))
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    for line in table:
        out.write("  ".join([*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]]) + "\n")
