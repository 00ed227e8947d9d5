"""The ModSecurity directives tlsedge writes around the OWASP Core Rule Set for one site.

We write the base configuration ourselves instead of including /etc/modsecurity/crs/crs-setup.conf: that file is
the host's, its content changes between package versions, and a site's settings (engine mode, paranoia level,
thresholds, exclusions) must be exactly what its configuration says. Load order, as the CRS documents it:

1. `before_crs`: engine and body settings, the CRS setup variables (what crs-setup.conf would set), the body
   processors for JSON and XML, the body-parse checks, and the path exclusions (``ctl:ruleRemoveById`` has to run
   in phase 1 before the rules it removes);
2. the CRS rule files, then the operator's extra rules files;
3. `after_crs`: ``SecRuleRemoveById`` for rules excluded everywhere, and the outbound anomaly evaluation for the
   response headers (the CRS evaluates outbound scores in phase 4, the response body, which the edge does not
   inspect; this runs the same sum and threshold in phase 3).

Our own rules use ids 1,700,000 to 1,700,999, a range the ModSecurity rule-id registry lists as unreserved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlsedge.guard.waf import WafSettings

FIRST_ID = 1_700_000
LAST_ID = 1_700_999
SETUP_ID = 1_700_001
BODY_PARSE_ERROR_ID = 1_700_020
MULTIPART_STRICT_ID = 1_700_021
MULTIPART_BOUNDARY_ID = 1_700_022
TOO_MANY_ARGS_ID = 1_700_023
PATH_EXCLUSION_FIRST_ID = 1_700_100
PATH_EXCLUSION_LAST_ID = 1_700_299
OUTBOUND_SUM_ID = 1_700_300
OUTBOUND_BLOCK_ID = 1_700_310
BODY_OVER_LIMIT_ID = 1_700_900  # reported by tlsedge itself, no ModSecurity rule

BODY_PARSE_IDS = frozenset({BODY_PARSE_ERROR_ID, MULTIPART_STRICT_ID, MULTIPART_BOUNDARY_ID})
"""Rules that only log: whether a body that failed to parse is refused depends on whether it was cut at the
inspection limit (a cut JSON or multipart body never parses), which tlsedge knows and the rules cannot."""

# PUT, PATCH and DELETE are everyday verbs of JSON APIs behind a proxy; the CRS default (GET HEAD POST OPTIONS)
# would flag every one of them (rule 911100).
ALLOWED_METHODS = "GET HEAD POST OPTIONS PUT PATCH DELETE"
CRS_SETUP_VERSION = 334
_UNSAFE_IN_PREFIX = frozenset('"\\\'%{}')


def before_crs(settings: WafSettings) -> str:
    """Engine, body and CRS setup directives, body-parse checks and path exclusions."""
    engine = "On" if settings.mode == "block" else "DetectionOnly"
    limit = settings.body_limit
    lines = [
        f"SecRuleEngine {engine}",
        "SecRequestBodyAccess On",
        f"SecRequestBodyLimit {limit}",
        f"SecRequestBodyNoFilesLimit {limit}",
        "SecRequestBodyLimitAction ProcessPartial",
        "SecRequestBodyJsonDepthLimit 512",
        "SecArgumentsLimit 1000",
        "SecResponseBodyAccess Off",
        "SecAuditEngine Off",
        "SecArgumentSeparator &",
        "SecCookieFormat 0",
        'SecDefaultAction "phase:1,log,auditlog,pass"',
        'SecDefaultAction "phase:2,log,auditlog,pass"',
        f'SecAction "id:{SETUP_ID},phase:1,pass,t:none,nolog,'
        f"setvar:tx.crs_setup_version={CRS_SETUP_VERSION},"
        f"setvar:tx.paranoia_level={settings.paranoia},"
        f"setvar:tx.executing_paranoia_level={settings.paranoia},"
        f"setvar:tx.inbound_anomaly_score_threshold={settings.inbound_threshold},"
        f"setvar:tx.outbound_anomaly_score_threshold={settings.outbound_threshold},"
        f"setvar:'tx.allowed_methods={ALLOWED_METHODS}'\"",
        'SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\\+|/)|text/)xml" '
        f'"id:{FIRST_ID + 10},phase:1,pass,t:none,t:lowercase,nolog,ctl:requestBodyProcessor=XML"',
        'SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:.+\\+)?json" '
        f'"id:{FIRST_ID + 11},phase:1,pass,t:none,t:lowercase,nolog,ctl:requestBodyProcessor=JSON"',
        f'SecRule REQBODY_ERROR "!@eq 0" "id:{BODY_PARSE_ERROR_ID},phase:2,pass,t:none,log,'
        "msg:'Request body could not be parsed',logdata:'%{reqbody_error_msg}',severity:2\"",
        f'SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:{MULTIPART_STRICT_ID},phase:2,pass,t:none,log,'
        "msg:'Multipart request body failed strict validation',severity:2\"",
        f'SecRule MULTIPART_UNMATCHED_BOUNDARY "@eq 1" "id:{MULTIPART_BOUNDARY_ID},phase:2,pass,t:none,log,'
        "msg:'Multipart parser detected a possible unmatched boundary',severity:2\"",
        f'SecRule &ARGS "@ge 1000" "id:{TOO_MANY_ARGS_ID},phase:2,deny,status:400,t:none,log,'
        "msg:'Too many arguments to inspect',severity:2\"",
    ]
    lines.extend(path_exclusions(settings))
    return "\n".join(lines) + "\n"


def path_exclusions(settings: WafSettings) -> list[str]:
    """One phase-1 rule per path prefix; raises ValueError for a prefix that cannot be written into a rule."""
    rules = []
    for index, (prefix, ids) in enumerate(settings.exclude_paths):
        rule_id = PATH_EXCLUSION_FIRST_ID + index
        if rule_id > PATH_EXCLUSION_LAST_ID:
            most = PATH_EXCLUSION_LAST_ID - PATH_EXCLUSION_FIRST_ID + 1
            raise ValueError(f"too many path exclusions (at most {most})")
        if not prefix.startswith("/") or any(c in _UNSAFE_IN_PREFIX or c <= " " or c == "\x7f" for c in prefix):
            raise ValueError(
                f"path prefix {prefix!r} must start with / and hold no spaces, quotes, backslashes, % or braces"
                " (write it decoded, as the path looks after percent-decoding)"
            )
        _check_ids(ids)
        if not ids:
            continue
        removals = ",".join(f"ctl:ruleRemoveById={i}" for i in ids)
        rules.append(
            f'SecRule REQUEST_FILENAME "@beginsWith {prefix}" '
            f'"id:{rule_id},phase:1,pass,t:none,t:normalisePath,nolog,{removals}"'
        )
    return rules


def after_crs(settings: WafSettings) -> str:
    """Exclusions by id and the phase-3 outbound anomaly evaluation."""
    lines = []
    if settings.exclude_rules:
        _check_ids(settings.exclude_rules)
        lines.append("SecRuleRemoveById " + " ".join(str(i) for i in settings.exclude_rules))
    sums = ["setvar:'tx.tlsedge_outbound_score=%{tx.outbound_anomaly_score_pl1}'"]
    sums += [f"setvar:'tx.tlsedge_outbound_score=+%{{tx.outbound_anomaly_score_pl{pl}}}'"
             for pl in range(2, settings.paranoia + 1)]
    lines.append(f'SecAction "id:{OUTBOUND_SUM_ID},phase:3,pass,t:none,nolog,{",".join(sums)}"')
    lines.append(
        f'SecRule TX:TLSEDGE_OUTBOUND_SCORE "@ge %{{tx.outbound_anomaly_score_threshold}}" '
        f'"id:{OUTBOUND_BLOCK_ID},phase:3,deny,status:403,t:none,log,'
        "msg:'Outbound Anomaly Score Exceeded in response headers (Total Score: %{tx.tlsedge_outbound_score})',"
        'severity:2"'
    )
    return "\n".join(lines) + "\n"


def _check_ids(ids: tuple[int, ...]) -> None:
    for rule_id in ids:
        if isinstance(rule_id, bool) or not isinstance(rule_id, int) or not 1 <= rule_id <= 9_999_999:
            raise ValueError(f"{rule_id!r} is not a ModSecurity rule id (1 to 9999999)")
