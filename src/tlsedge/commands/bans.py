"""``tlsedge bans list|add|remove`` and ``tlsedge password-hash``: the operator's hands on the guard's state.

Bans live in the store, so they are listed and changed there; running workers pick a change up within a second
(they follow the store's "bans" topic), and a ban outlives restarts until it expires.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from dataclasses import asdict

from tlsedge.commands import config_or_report
from tlsedge.config.values import parse_duration
from tlsedge.guard.bans import GLOBAL_SCOPE, add_ban, list_bans, parse_ban_address, remove_ban
from tlsedge.guard.password import hash_password
from tlsedge.store import Store, StoreError, open_store


def register(commands: argparse._SubParsersAction) -> None:
    bans = commands.add_parser("bans", help="list, add or lift bans of client addresses")
    actions = bans.add_subparsers(dest="action", required=True, metavar="list|add|remove")
    listing = actions.add_parser("list", help="every ban in force")
    listing.add_argument("--json", action="store_true", help="print the bans as JSON")
    add = actions.add_parser("add", help="ban an address by hand")
    add.add_argument("ip", help="one IPv4 or IPv6 address (networks belong in [ip_rules] deny)")
    add.add_argument("--duration", default="1h", help="how long, e.g. 30m, 12h, 7d (default 1h)")
    add.add_argument("--reason", default="by hand", help="shown by `tlsedge bans list`")
    remove = actions.add_parser("remove", help="lift a ban (and forget its repeat count)")
    remove.add_argument("ip")
    for action in (add, remove):
        scope = action.add_mutually_exclusive_group(required=True)
        scope.add_argument("--site", help="the ban's site")
        scope.add_argument("--global", dest="everywhere", action="store_true", help="a ban on every site")
    for action in (listing, add, remove):
        action.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
        action.set_defaults(func=_bans)

    password = commands.add_parser("password-hash", help="hash a password for a [[site.password]] entry")
    password.add_argument("--stdin", action="store_true", help="read the password from standard input")
    password.set_defaults(func=_password_hash)


def _bans(args: argparse.Namespace) -> int:
    config = config_or_report(args.config)
    if config is None:
        return 1
    scope = None
    if args.action != "list":
        scope = GLOBAL_SCOPE if args.everywhere else args.site
        if scope != GLOBAL_SCOPE and scope not in {site.name for site in config.sites}:
            print(f"error: --site {scope!r} is not a site of {config.path}", file=sys.stderr)
            return 1
    try:
        store = open_store(config.server.state_dir)
        if args.action == "list":
            return _list(store, args.json)
        ip = parse_ban_address(args.ip)
        if args.action == "add":
            ban = add_ban(store, scope, ip, parse_duration(args.duration), args.reason)
            print(f"banned {ban.ip} on {_scope(ban.scope)} until {_when(ban.expires)}")
            return 0
        if remove_ban(store, scope, ip):
            print(f"lifted the ban of {ip} on {_scope(scope)}")
            return 0
        print(f"{ip} is not banned on {_scope(scope)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"error: cannot use the store under {config.server.state_dir}: {exc}", file=sys.stderr)
        return 1


def _list(store: Store, as_json: bool) -> int:
    bans = list_bans(store)
    if as_json:
        print(json.dumps([asdict(ban) for ban in bans], indent=2))
        return 0
    if not bans:
        print("no bans in force")
        return 0
    print(f"{'ADDRESS':<40} {'SCOPE':<16} {'UNTIL (UTC)':<20} {'COUNT':>5}  REASON")
    for ban in bans:
        print(f"{ban.ip:<40} {_scope(ban.scope):<16} {_when(ban.expires):<20} {ban.count:>5}  {ban.reason}")
    return 0


def _scope(scope: str) -> str:
    return "every site" if scope == GLOBAL_SCOPE else f"site {scope}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _password_hash(args: argparse.Namespace) -> int:
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 1
    if len(password) < 8:
        print("error: use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0
