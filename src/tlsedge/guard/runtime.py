"""Putting the guard together: checked in the control process before forking, built in each worker before serving.

ModSecurity's rule loading is not thread-safe and takes a fraction of a second per site, so each worker loads its
sites' rules once at start (before it serves, on the loop's thread, before its WAF threads exist). The control
process builds them once too, before forking, only to find a broken rule file while the old configuration still
runs: a bad reload then keeps serving with the old rules, like nginx's ``-t``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tlsedge.config.errors import Problem
from tlsedge.config.guard import WafConfig
from tlsedge.guard.bans import Bans
from tlsedge.guard.chain import GuardServices, SiteGuard
from tlsedge.guard.shared import SharedTable
from tlsedge.guard.signing import SigningKeys, load_or_create
from tlsedge.guard.waf import SiteWaf, WafConfigError, WafRunner, WafSettings, build_site_waf
from tlsedge.store import Store, StoreError

if TYPE_CHECKING:
    from tlsedge.config.schema import Config

log = logging.getLogger("tlsedge.guard")

_WAF_FIELDS = {"extra_rules": "rules_files", "exclude_paths": "exclusion", "crs_path": "mode"}


def waf_settings(config: WafConfig) -> WafSettings:
    return WafSettings(
        mode=config.mode,
        paranoia=config.paranoia,
        inbound_threshold=config.inbound_threshold,
        outbound_threshold=config.outbound_threshold,
        exclude_rules=config.exclude_rules,
        exclude_paths=tuple((e.path_prefix, e.rules) for e in config.exclusions),
        extra_rules=config.rules_files,
        body_limit=config.body_limit,
        over_limit=config.over_limit,
        response_headers=config.response_headers,
    )


def needs_guard(config: Config) -> bool:
    """Whether any part of the guard is on: a site's protection, edge-wide IP rules, bans or connection limits."""
    limits = config.server.limits
    settings = config.guard
    return bool(
        any(site.guard.active for site in config.sites)
        or settings.ip_rules.allow
        or settings.ip_rules.deny
        or settings.bans is not None
        or limits.max_connections_per_ip
        or limits.connection_rate_per_ip
    )


def needs_admission(config: Config) -> bool:
    """Whether connections are checked at accept: an edge-wide deny list, bans on every site, per-address limits."""
    limits = config.server.limits
    policies = [config.guard.bans, *(site.guard.bans for site in config.sites)]
    return bool(
        config.guard.ip_rules.deny
        or any(policy is not None and policy.scope == "global" for policy in policies)
        or limits.max_connections_per_ip
        or limits.connection_rate_per_ip
    )


def waf_problems(config: Config) -> list[Problem]:
    """Load every site's rules once, to report a broken rule file or a missing library before forking."""
    problems = []
    for site in config.sites:
        waf = site.guard.waf
        if waf is None or waf.mode == "off":
            continue
        try:
            built = build_site_waf(waf_settings(waf))
        except WafConfigError as exc:
            field = _WAF_FIELDS.get(exc.field, exc.field)
            problems.append(Problem(config.path, f"site[{site.name}].waf.{field}", str(exc), site.name))
            continue
        built.close()
    return problems


def shared_table(config: Config, previous: SharedTable | None) -> SharedTable | None:
    """The counters the workers share (rate limits, connections, offenses, used challenges); kept across reloads
    when the size did not change, so a reload does not hand every client a fresh burst."""
    if not needs_guard(config):
        return None
    slots = config.guard.table_slots
    if previous is not None and previous.slots == slots:
        return previous
    return SharedTable(slots)


def build_guards(config: Config, store: Store, table: SharedTable, sites: dict) -> GuardServices:
    """The worker's guard: shared services, then each protected site's chain (its WAF rules loaded here)."""
    keys: SigningKeys | None
    try:
        keys = load_or_create(store)
    except StoreError as exc:
        log.error("cannot read the signing keys from the store: %s; challenge and password pages fail closed", exc)
        keys = None
    bans = Bans(store, table)
    bans.refresh(time.time())
    built: dict[WafSettings, SiteWaf] = {}  # sites with the same settings share one rule set (~15 MB each)
    wafs = {}
    for site in config.sites:
        if site.guard.waf is not None and site.guard.waf.mode != "off":
            settings = waf_settings(site.guard.waf)
            if settings not in built:
                built[settings] = build_site_waf(settings)
            wafs[site.name] = built[settings]
    runner = WafRunner(config.guard.waf_threads) if wafs else None
    services = GuardServices(config.guard, table, bans, keys, runner)
    for site in config.sites:  # every site: bans (also `tlsedge bans add --site`) apply to sites without protection
        sites[site.name].guard = SiteGuard(site.name, site.guard, services, wafs.get(site.name))
    return services
