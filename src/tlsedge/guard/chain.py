"""A site's protection chain, built once per worker from its configuration, and what it decides per request.

The checks run in the order an operator expects from Cloudflare's or nginx's: the client's address first (allow and
deny lists, bans), then the edge's own pages (challenge answers, password form), password-protected paths, rate
limits, the proof-of-work challenge, and last the WAF, the only costly one (it runs in a thread, see
`edge.guard_phase`). Each check is a small method; the chain keeps only those the site's configuration needs, so a
request on a site without rate limits never looks at rate-limit rules.

An address on an allow list skips the deny list, bans, rate limits and the challenge (operators' own networks must
never lock themselves out); the WAF still inspects its requests, since an attack from inside is still an attack.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tlsedge.config.guard import BanConfig, GuardSettings, PasswordPath, SiteGuardConfig
from tlsedge.guard.bans import Ban, BanPolicy, Bans
from tlsedge.guard.challenge import cookies, page, pow
from tlsedge.guard.iprules import IpRules
from tlsedge.guard.password import (
    issue_password_cookie,
    password_cookie_name,
    read_password_form,
    verify_password_cookie,
)
from tlsedge.guard.ratelimit import RateLimiter, RateRule, request_path
from tlsedge.guard.shared import SharedTable
from tlsedge.guard.signing import SigningKeys
from tlsedge.guard.waf import SiteWaf, WafRunner

log = logging.getLogger("tlsedge.guard")

OWN_PREFIX = b"/.tlsedge/"
CHALLENGE_VERIFY = "/.tlsedge/challenge/verify"
CHALLENGE_NOSCRIPT = "/.tlsedge/challenge/noscript"
CHALLENGE_WAIT = "/.tlsedge/challenge/wait"
PASSWORD_SUBMIT = "/.tlsedge/password"
ACME_PREFIX = b"/.well-known/acme-challenge/"
CHALLENGE_TTL = 300.0  # how long a challenge page's token may be solved
PASSED_CACHE = 4096  # verified challenge cookies remembered per site and worker
# Password guesses per client address and site: 10 at once, then one every 6 seconds (each costs ~60 ms of scrypt).
PASSWORD_INTERVAL = 6.0
PASSWORD_BURST = 10


@dataclass(frozen=True, slots=True)
class PasswordAttempt:
    """A posted password to check against ``entry``; ``back`` is where the visitor returns after."""

    entry: PasswordPath
    password: str
    back: str


@dataclass(slots=True)
class Outcome:
    """An answer the guard gives instead of the origin; ``decision`` goes to the access log."""

    status: int
    decision: str
    reason: str  # for the error log and the access log; never shown to the client
    body: bytes | None = None  # a page of ours (challenge, password); None: the standard error page
    headers: bytes = b""  # extra header lines (Set-Cookie, Location, Retry-After)


class GuardServices:
    """What every site of a worker shares: the table shared by the workers, bans, signing keys, WAF threads."""

    def __init__(self, settings: GuardSettings, table: SharedTable, bans: Bans, keys: SigningKeys | None,
                 waf: WafRunner | None) -> None:
        self.settings = settings
        self.table = table
        self.bans = bans
        self.keys = keys  # None: the store could not be read; pages that need a signature fail closed
        self.store_ok = keys is not None  # the last look at the store for new keys worked
        self.waf = waf
        self.global_rules = IpRules(settings.ip_rules.allow, settings.ip_rules.deny)
        self.global_policy = ban_policy(settings.bans) if settings.bans is not None else None


def ban_policy(config: BanConfig) -> BanPolicy:
    return BanPolicy(config.threshold, config.window, config.duration, config.factor, config.max_duration,
                     config.scope)


class GuardRequest:
    """The parts of a request the checks read; the Cookie header is parsed only when a check needs it."""

    __slots__ = ("body", "headers", "ip", "method", "path", "query", "secure", "target", "wall")

    def __init__(self, ip: str, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], secure: bool) -> None:
        self.ip = ip
        self.method = method
        self.target = target
        self.path = guard_path(target)
        self.query = target.partition(b"?")[2]
        self.headers = headers
        self.secure = secure
        self.wall = time.time()  # one clock for the shared table, bans and signed expiries
        self.body: bytes | None = None

    def cookie(self, name: str) -> str | None:
        """One cookie's value (the raw header is searched for that name; nothing else is parsed)."""
        return cookies.find_cookie(self.headers, name)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def params(self) -> dict[str, str]:
        """The query parameters (first value of each, a bounded number of them)."""
        return page.parse_query(self.query)


def guard_path(target: bytes) -> bytes:
    """The path as the guard compares it with its prefixes: every spelling an origin may read as the same path is
    one (escapes of unreserved characters, dot-segments, encoded or back slashes, repeated slashes, ";" parameters),
    so ``/%61dmin/``, ``//admin/`` or ``/admin;x/`` cannot walk past a password on ``/admin/``."""
    path = target.partition(b"?")[0]
    if b"%" not in path and b"\\" not in path and b";" not in path and b"//" not in path and b"/." not in path:
        return path  # the common case: already canonical
    path = request_path(target)
    if b"%" in path or b"\\" in path:
        path = path.replace(b"%2F", b"/").replace(b"%5C", b"/").replace(b"\\", b"/")
    if b";" in path:
        path = b"/".join(segment.split(b";", 1)[0] for segment in path.split(b"/"))
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


class SiteGuard:
    """The chain of checks of one site (per worker)."""

    def __init__(self, site: str, config: SiteGuardConfig, services: GuardServices, waf: SiteWaf | None) -> None:
        self.site = site
        self.config = config
        self.services = services
        self.waf = waf  # None: the WAF is off
        # A site without protection of its own only enforces bans (and the edge-wide lists): no request object.
        self.light = not config.active
        rules = config.ip_rules
        self.rules = IpRules.combine(services.global_rules, IpRules(rules.allow, rules.deny))
        suspicious = services.settings.ip_rules.challenge + rules.challenge
        self.suspicious = IpRules([], suspicious) if suspicious else None
        self.policy = ban_policy(config.bans) if config.bans is not None else services.global_policy
        self.ban_scope = "*" if self.policy is not None and self.policy.scope == "global" else site
        self.limiter = RateLimiter(
            services.table, site,
            [RateRule(r.name, r.key, r.rate, r.burst, r.path_prefix, r.methods, r.action) for r in config.rate_limits],
        ) if config.rate_limits else None
        challenge = config.challenge
        self.challenge_always = challenge.mode == "always"
        self.challenge_exempt = (ACME_PREFIX, *(p.encode() for p in challenge.exempt_paths))
        self.bypass = tuple((b.header.encode(), b.token) for b in challenge.bypass)
        self.passwords = sorted(config.passwords, key=lambda p: len(p.path_prefix), reverse=True)
        self.passed: dict[tuple[str, str], tuple[float, object]] = {}  # verified challenge cookies (see _solved)
        self.password_cookies = {p.path_prefix: password_cookie_name(p.path_prefix) for p in self.passwords}
        checks: list[Callable[[GuardRequest, bool], Outcome | None]] = [self._own_pages]
        if self.passwords:
            checks.append(self._password)
        if self.limiter is not None:
            checks.append(self._rate_limits)
        if challenge.mode != "off":
            checks.append(self._challenge)
        self.checks = tuple(checks)

    # --- the chain ------------------------------------------------------------------------------------------------

    def check(self, req: GuardRequest) -> Outcome | None:
        """The first check that answers the request, or None: on to the WAF (if any), the cache and the origin."""
        allowed = self.screen_address(req.ip, req.wall)
        if isinstance(allowed, Outcome):
            return allowed
        for check in self.checks:
            outcome = check(req, allowed)
            if outcome is not None:
                return outcome
        return None

    def screen_address(self, ip: str, now: float) -> bool | Outcome:
        """The client's address alone: True when allowed (skips the rest), an answer when denied or banned."""
        verdict = self.rules.decide(ip)
        if verdict == "allow":
            return True
        if verdict == "deny":
            return Outcome(403, "ip-deny", f"address {ip} is on a deny list")
        ban = self.services.bans.banned_any(self.site, ip, now)
        return _banned(ban, now) if ban is not None else False

    def offense(self, req_ip: str, reason: str) -> Ban | None:
        """Count a WAF block, rate-limit hit, failed challenge or wrong password; maybe ban the client."""
        if self.policy is None or self.rules.decide(req_ip) == "allow":
            return None
        try:
            ban = self.services.bans.offense(self.ban_scope, req_ip, reason, self.policy, time.time())
        except Exception as exc:  # the store may be unreachable: the request is answered anyway
            log.error("site %s: cannot record the offense of %s (%s): %s", self.site, req_ip, reason, exc)
            return None
        if ban is not None:
            log.warning("site %s: banned %s for %.0f s after %s (scope %s)", self.site, req_ip,
                        ban.expires - ban.created, reason, ban.scope)
        return ban

    # --- the edge's own pages ------------------------------------------------------------------------------------

    def _own_pages(self, req: GuardRequest, allowed: bool) -> Outcome | None:
        if not req.path.startswith(OWN_PREFIX):
            return None
        path = req.path.decode("latin-1")
        if path in (CHALLENGE_VERIFY, CHALLENGE_NOSCRIPT, CHALLENGE_WAIT):
            return self._challenge_pages(req, path)
        if path == PASSWORD_SUBMIT and self.passwords:
            if req.method == b"POST":
                return None  # the form, read once its body is here (edge.guard_phase)
            return Outcome(405, "password", "the password form is sent with POST", None, b"Allow: POST\r\n")
        return Outcome(404, "guard-page", f"no page of the edge at {path[:64]}")

    def _keys(self) -> SigningKeys | None:
        """The signing keys, or None while the store cannot be read: password and challenge pages fail closed
        then (a key rotated or dropped meanwhile would go unnoticed, and a revoked cookie would still open)."""
        services = self.services
        return services.keys if services.store_ok else None

    def _first_use(self, token_id: bytes, expires_at: float) -> bool:
        """Challenges and waiting tickets are single-use across the workers (namespace "c" of the shared table)."""
        return self.services.table.first_use(b"c\0" + token_id, expires_at)

    def _challenge_pages(self, req: GuardRequest, path: str) -> Outcome:
        """The answer to a challenge, the page for browsers without JavaScript, and its waiting ticket."""
        keys = self._keys()
        if keys is None:
            return _store_down()
        params = req.params()
        back = page.safe_return_path(params.get("return", "/"))
        if path == CHALLENGE_NOSCRIPT:
            delay = self.config.challenge.noscript_delay
            ticket = pow.issue_wait_ticket(keys, self.site, req.ip, delay, req.wall)
            body = page.wait_page(ticket, delay, CHALLENGE_WAIT, back)
            return Outcome(403, "challenge-wait", "waiting page for a browser without JavaScript", body)
        if path == CHALLENGE_VERIFY:
            what = "challenge answer"
            check = pow.verify_solution(keys, self.site, req.ip, params.get("token", ""), params.get("nonce", ""),
                                        req.wall, self._first_use)
        else:
            what = "waiting ticket"
            ticket = params.get("ticket", "")
            check = pow.verify_wait_ticket(keys, self.site, req.ip, ticket, req.wall, self._first_use)
            if check.reason == "too early":  # a person who clicked before the wait was over: the same page again
                left = (pow.ticket_not_before(ticket) or req.wall) - req.wall
                body = page.wait_page(ticket, max(1, int(left + 0.999)), CHALLENGE_WAIT, back)
                return Outcome(403, "challenge-wait", "waiting ticket used too early", body)
        if not check.ok:
            self.offense(req.ip, "challenge-failed")
            outcome = self._challenge_page(req, back)
            outcome.decision = "challenge-failed"
            outcome.reason = f"{what} rejected: {check.reason}"
            return outcome
        ttl = self.config.challenge.cookie_ttl
        value = cookies.issue_cookie(keys, self.site, cookies.CHALLENGE_PURPOSE, req.ip, ttl, req.wall)
        headers = b"Set-Cookie: %s\r\nLocation: %s\r\n" % (
            cookies.set_cookie_value(cookies.CHALLENGE_COOKIE, value, ttl, secure=req.secure), back.encode()
        )
        return Outcome(303, "challenge-passed", f"{what} accepted", b"", headers)

    # --- password-protected paths --------------------------------------------------------------------------------

    def _protecting(self, path: bytes) -> PasswordPath | None:
        text = path.decode("latin-1")
        for entry in self.passwords:
            if text.startswith(entry.path_prefix):
                return entry
        return None

    def _password(self, req: GuardRequest, allowed: bool) -> Outcome | None:
        if req.path.startswith(OWN_PREFIX):
            return None  # the password form itself, on a site protected from "/"
        entry = self._protecting(req.path)
        if entry is None:
            return None
        keys = self._keys()
        if keys is None:
            return _store_down()
        value = req.cookie(self.password_cookies[entry.path_prefix])
        if value is not None and verify_password_cookie(keys, self.site, entry.path_prefix, req.ip, value,
                                                        req.wall).ok:
            return None
        back = page.safe_return_path(req.target.decode("latin-1"))
        body = page.password_page(back, None, PASSWORD_SUBMIT)
        return Outcome(403, "password", f"password required for {entry.path_prefix}", body)

    def password_attempt(self, req: GuardRequest) -> Outcome | PasswordAttempt:
        """A posted password form: the attempt to check (off the loop: scrypt costs tens of ms), or an answer."""
        keys = self._keys()
        if keys is None:
            return _store_down()
        form = read_password_form(req.body or b"")
        if form is None:
            return Outcome(400, "password", "malformed password form")
        password, back = form
        back = page.safe_return_path(back)
        entry = self._protecting(guard_path(back.encode("latin-1", "replace")))
        if entry is None:
            return Outcome(400, "password", "the password form names no protected path")
        wait = self.services.table.gcra(b"pw\0%s\0%s" % (self.site.encode(), req.ip.encode()),
                                        PASSWORD_INTERVAL, PASSWORD_BURST, req.wall)
        if wait:
            return Outcome(429, "password-limit", "too many password attempts", None,
                           b"Retry-After: %d\r\n" % max(1, int(wait + 0.999)))
        return PasswordAttempt(entry, password, back)

    def password_outcome(self, req: GuardRequest, attempt: PasswordAttempt, right: bool) -> Outcome:
        entry, back = attempt.entry, attempt.back
        if not right:
            self.offense(req.ip, "password-failed")
            body = page.password_page(back, "That password is not right. Try again.", PASSWORD_SUBMIT)
            return Outcome(403, "password-failed", "wrong password", body)
        value = issue_password_cookie(self._keys(), self.site, entry.path_prefix, req.ip, entry.cookie_ttl, req.wall)
        line = cookies.set_cookie_value(self.password_cookies[entry.path_prefix], value, entry.cookie_ttl,
                                        path=entry.path_prefix, secure=req.secure)
        return Outcome(303, "password-passed", "password accepted", b"",
                       b"Set-Cookie: %s\r\nLocation: %s\r\n" % (line, back.encode("latin-1", "replace")))

    # --- rate limits and the challenge ---------------------------------------------------------------------------

    def _rate_limits(self, req: GuardRequest, allowed: bool) -> Outcome | None:
        if allowed:
            return None
        verdict = self.limiter.check(req.ip, req.method, req.target, req.headers, req.wall)
        if verdict is None:
            return None
        rule = verdict.rule
        if verdict.action == "challenge":
            if self._solved(req):
                return None
            outcome = self._challenge_page(req, page.safe_return_path(req.target.decode("latin-1")))
            outcome.reason = f"rate limit {rule.name} exceeded: challenge"
            return outcome
        if verdict.action == "ban" and self.policy is not None:
            ban = self.services.bans.ban_now(self.ban_scope, req.ip, f"rate limit {rule.name}", self.policy,
                                             req.wall)
            return _banned(ban, req.wall)
        self.offense(req.ip, f"rate-limit {rule.name}")
        return Outcome(429, "rate-limit", f"rate limit {rule.name} exceeded", None,
                       b"Retry-After: %d\r\n" % verdict.retry_after)

    def _solved(self, req: GuardRequest) -> bool:
        """A valid challenge cookie. A returning visitor's cookie is verified once, then found in a small cache
        (by value and address, valid until the cookie's expiry and while the signing keys stay the same)."""
        keys = self._keys()
        if keys is None:
            return False
        value = req.cookie(cookies.CHALLENGE_COOKIE)
        if value is None:
            return False
        key = (value, req.ip)
        known = self.passed.get(key)
        if known is not None and known[1] is keys.snapshot and known[0] > req.wall:
            return True
        if not cookies.verify_cookie(keys, self.site, cookies.CHALLENGE_PURPOSE, req.ip, value, req.wall).ok:
            return False
        if len(self.passed) >= PASSED_CACHE:
            self.passed.clear()
        self.passed[key] = (float(value.split(".")[2]), keys.snapshot)
        return True

    def _challenge(self, req: GuardRequest, allowed: bool) -> Outcome | None:
        if allowed or req.path.startswith(self.challenge_exempt):
            return None
        if not self.challenge_always and (self.suspicious is None or self.suspicious.decide(req.ip) != "deny"):
            return None
        for header, token in self.bypass:
            value = req.header(header)
            if value is not None and _same(value.strip(), token):
                return None
        if self._solved(req):
            return None
        return self._challenge_page(req, page.safe_return_path(req.target.decode("latin-1")))

    def _challenge_page(self, req: GuardRequest, back: str) -> Outcome:
        keys = self._keys()
        if keys is None:
            return _store_down()
        challenge = pow.issue_challenge(keys, self.site, req.ip, self.config.challenge.difficulty, CHALLENGE_TTL,
                                        req.wall)
        body = page.challenge_page(challenge, back, CHALLENGE_VERIFY, CHALLENGE_NOSCRIPT)
        return Outcome(403, "challenge", "challenge page", body)


def _banned(ban: Ban, now: float) -> Outcome:
    left = max(1, int(ban.expires - now + 0.999))
    return Outcome(403, "banned", f"banned until {time.strftime('%H:%M:%S', time.gmtime(ban.expires))} UTC "
                   f"({ban.reason})", None, b"Retry-After: %d\r\n" % left)


def _store_down() -> Outcome:
    return Outcome(503, "store-unavailable", "the store cannot be read: pages that need a signing key fail closed",
                   None, b"Retry-After: 10\r\n")


def _same(given: bytes, token: bytes) -> bool:
    return hmac.compare_digest(given, token)
