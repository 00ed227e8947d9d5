"""``tlsedge cert revoke --site NAME``: revoke a site's ACME certificate at its CA and order a replacement now.

For a key that leaked or a certificate that must not be used any more. The running edge keeps serving the revoked
certificate only until the certificate manager's replacement arrives (seconds): the command asks for a renewal
through the store, which the manager polls.
"""

from __future__ import annotations

import argparse
import sys

from tlsedge.acme import client as acme
from tlsedge.commands import config_or_report
from tlsedge.pki.site_certs import RENEW_TOPIC, load_certificate, load_status, save_status
from tlsedge.store import StoreError, open_store

# RFC 5280 CRLReason codes an operator may give (the CA may refuse some, e.g. keyCompromise without proof).
REASONS = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3, "superseded": 4, "cessationOfOperation": 5}


def register(cert_actions: argparse._SubParsersAction) -> None:
    revoke = cert_actions.add_parser("revoke", help="revoke a site's ACME certificate at the CA and order a new one")
    revoke.add_argument("--site", required=True, help="the site whose certificate to revoke")
    revoke.add_argument("--reason", choices=sorted(REASONS), default="unspecified", help="RFC 5280 reason")
    revoke.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    revoke.set_defaults(func=_revoke)


def _revoke(args: argparse.Namespace) -> int:
    config = config_or_report(args.config)
    if config is None:
        return 1
    sites = {site.name: site for site in config.sites}
    site = sites.get(args.site)
    if site is None:
        print(f"error: no site is named {args.site!r}; sites are: {', '.join(sites) or 'none'}", file=sys.stderr)
        return 1
    managed = site.managed_certificate
    if managed is None or managed.acme is None:
        print(f"error: site {args.site!r} does not take its certificate from ACME; only ACME certificates are "
              "revoked by tlsedge (ask the CA that issued yours)", file=sys.stderr)
        return 1
    try:
        store = open_store(config.server.state_dir)
        stored = load_certificate(store, site.name)
        if stored is None or stored.source != "acme":
            print(f"error: site {args.site!r} has no ACME certificate yet (see tlsedge certs)", file=sys.stderr)
            return 1
        acme.revoke(acme.open_session(store, managed.acme), stored.leaf, REASONS[args.reason])
        status = load_status(store, site.name)
        status.renew_requested = True
        status.next_attempt = None
        save_status(store, site.name, status)
        store.publish(RENEW_TOPIC)
    except acme.AcmeFailure as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked certificate {stored.serial:x} of site {site.name} ({args.reason}); a running edge orders a new "
          "one now")
    return 0
