"""``tlsedge purge url|prefix|tag|site|all``: remove cached objects from the disk tier and every worker's memory.

The command removes matching objects from the disk tier itself, then publishes the purge through the store and waits
(up to ``--wait`` seconds) until every running worker says how many objects it removed from its memory tier.
"""

from __future__ import annotations

import argparse
import sys
import time

from tlsedge.cache import purge as purges
from tlsedge.cache.disk import DiskTier
from tlsedge.cache.key import KeyPolicy
from tlsedge.commands import config_or_report
from tlsedge.config.schema import Config
from tlsedge.control.status import live_worker_pids
from tlsedge.store import StoreError, open_store


def register(commands: argparse._SubParsersAction) -> None:
    purge = commands.add_parser("purge", help="remove cached objects (by URL, prefix, tag, site, or all)")
    kinds = purge.add_subparsers(dest="kind", required=True, metavar="url|prefix|tag|site|all")
    for kind, help_text, value in (
        ("url", "one URL (every variant of it)", "URL"),
        ("prefix", "every URL starting with a prefix, e.g. https://example.com/blog/", "PREFIX"),
        ("tag", "every object whose response carried the tag in Cache-Tag", "TAG"),
        ("site", "everything cached for one site", "SITE"),
        ("all", "everything", None),
    ):
        action = kinds.add_parser(kind, help=help_text)
        if value is not None:
            action.add_argument("value", metavar=value)
        if kind in ("tag", "prefix", "url"):
            action.add_argument("--site", help="only objects of this site")
        action.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
        action.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the workers' answers")
        action.set_defaults(func=_purge)


def _purge(args: argparse.Namespace) -> int:
    config = config_or_report(args.config)
    if config is None:
        return 1
    purge = _build(args, config)
    if purge is None:
        return 1
    root = config.cache.path if config.cache.path is not None else config.server.state_dir / "cache"
    try:
        disk = DiskTier(root, config.cache.disk_size)
        removed = _purge_disk(disk, purge)
    except OSError as exc:
        print(f"error: cannot purge the disk tier under {root}: {exc}", file=sys.stderr)
        return 1
    print(f"disk ({root}): {removed} removed")
    workers = live_worker_pids(config.server.state_dir)
    try:
        store = open_store(config.server.state_dir)
        purges.publish(store, purge)
        if not workers:
            print("memory: no running edge (nothing else to purge)")
            return 0
        deadline = time.monotonic() + args.wait
        answers = purges.answers(store, purge)
        while set(workers) - set(answers) and time.monotonic() < deadline:
            time.sleep(0.05)
            answers = purges.answers(store, purge)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # A fill that started before the purge may have reached the disk before its worker read the purge: the workers
    # refuse such fills from now on, so one more pass over the disk removes what slipped through.
    removed_late = _purge_disk(disk, purge)
    if removed_late:
        print(f"disk: {removed_late} more removed (stored while the purge spread)")
    missing = 0
    for pid in workers:
        if pid in answers:
            print(f"worker {pid}: {answers[pid]} removed from memory")
        else:
            missing += 1
            print(f"worker {pid}: no answer within {args.wait:g}s (it applies the purge at its next sweep)")
    return 1 if missing else 0


def _purge_disk(disk: DiskTier, purge: purges.Purge) -> int:
    if purge.kind == "site":
        return disk.purge_site(purge.value.decode())
    return disk.purge(purge.matches, site=purge.site)


def _site_key(config: Config, url: bytes, site_name: str | None) -> bytes:
    """A URL as the cache keys it, through the key options (ignored query parameters, rules) of the site serving
    its host, so purging the URL a client used removes the object that answered it."""
    scheme, _, rest = url.partition(b"://")
    host, slash, path = rest.partition(b"/")
    name = host.decode("latin-1")
    for site in config.sites:
        if not site.cache.enabled or (site_name is not None and site.name != site_name):
            continue
        if any(pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:]) and
                                   name.count(".") == pattern.count(".")) for pattern in site.hosts):
            keys = KeyPolicy(site.cache)
            target = slash + path
            return keys.base(scheme, host, target, keys.rule_for(target))
    return b"%s://%s%s%s" % (scheme, host, slash, path)


def _build(args: argparse.Namespace, config: Config) -> purges.Purge | None:
    """The purge the arguments describe, or None after saying what is wrong with them."""
    cached = {site.name for site in config.sites if site.cache.enabled}
    site = getattr(args, "site", None)
    kind = args.kind
    if kind == "site":
        site = args.value
    if site is not None and site not in cached:
        names = ", ".join(sorted(cached)) or "none"
        print(f"error: no site named {site!r} has the cache on; cached sites: {names}", file=sys.stderr)
        return None
    value = b""
    if kind in ("url", "prefix"):
        try:
            value = purges.normalise_url(args.value)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        if kind == "url":
            value = _site_key(config, value, site)
    elif kind == "tag":
        value = args.value.strip().lower().encode()
    elif kind == "site":
        value = site.encode()
        site = None
    return purges.Purge(purges.new_id(), kind, value, site)
