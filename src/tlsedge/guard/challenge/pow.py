"""Proof-of-work challenges and no-JavaScript wait tickets: stateless signed tokens, each accepted once.

A token is ``<kid>.<body>`` where ``body`` is URL-safe base64 (no padding) of 44 bytes::

    kind (1: b"p" challenge, b"w" wait ticket) | id (16 random bytes)
    | t1 (u32: issue time, or not-before for a ticket) | t2 (u32: expiry) | difficulty (u8) | net (2: network tag)
    | mac (16: HMAC-SHA256/128)

The MAC (key ``kid``, see :mod:`tlsedge.guard.signing`) covers a domain string, the key id, the site, the client's
IP prefix and the first 28 bytes, so a token is only good for the site and network it was issued to. Nothing is
stored when a token is issued: a flood of challenge page views costs the edge no memory. Only a token that passes
every other check is recorded, through ``first_use(id, expires_at)`` (backed by a table shared by the workers), so a
solved challenge yields one cookie, not one per replay.

The work: find a nonce such that ``SHA-256(token ‖ nonce)`` starts with ``difficulty`` zero bits, where ``token`` is
the ASCII text of the token exactly as issued (``<kid>.<body>``) and ``nonce`` is the ASCII text the client submits
(1 to 64 characters from ``A-Z a-z 0-9 - _``; the page's script counts in decimal). Bits are counted from the most
significant bit of the first digest byte. The page's script (:mod:`tlsedge.guard.challenge.page`) and
tests/guard/pow_solver.py hash exactly these bytes.

Without JavaScript there is no work to do, so the price is time instead: a wait ticket is valid only from
``not_before = now + delay`` (and until ``expires``), and is single-use too. A person reads the explanation page
that refreshes itself after the delay (or follows its link); a crawler holding thousands of connections pays the
delay on each, and every ticket is bound to its network and counted once. This keeps the site usable with screen
readers and text browsers without any CAPTCHA image.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tlsedge.guard.challenge.cookies import V4_PREFIX, V6_PREFIX, b64, ip_prefix, net_tag
from tlsedge.guard.signing import MAC_BYTES, SigningKeys

MAX_DIFFICULTY = 32  # 2^32 hashes: hours in a browser; anything above is a configuration mistake
MAX_TOKEN_CHARS = 96  # a genuine token is 66 characters
MAX_NONCE_CHARS = 64
MAX_TTL = 86400
_KIND_CHALLENGE = b"p"
_KIND_WAIT = b"w"
_FIELDS = struct.Struct(">c16sIIB2s")
_BODY_BYTES = _FIELDS.size + MAC_BYTES
_DOMAIN = b"tlsedge-token-v1\n"
_FROM_URLSAFE = str.maketrans("-_", "+/")
_NONCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

FirstUse = Callable[[bytes, float], bool]


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge to put in the page: the token, the number of leading zero bits wanted, and its expiry."""

    token: str
    difficulty: int
    expires: int


@dataclass(frozen=True, slots=True)
class WaitTicket:
    """A no-JavaScript ticket: redeemable from ``not_before`` until ``expires`` (Unix seconds)."""

    token: str
    not_before: int
    expires: int


@dataclass(frozen=True, slots=True)
class SolutionCheck:
    """The verdict on a submitted solution or ticket: ``ok``, or why not (for logs and failed-challenge counts).

    "other network" versus "bad mac" is a hint only (see :mod:`tlsedge.guard.challenge.cookies`): once the MAC
    fails, nothing in the token is authenticated.
    """

    ok: bool
    reason: str  # "ok", "malformed", "unknown key", "bad mac", "other network", "expired", "too early",
    #              "insufficient work", "replayed"


OK = SolutionCheck(True, "ok")
MALFORMED = SolutionCheck(False, "malformed")
UNKNOWN_KEY = SolutionCheck(False, "unknown key")
BAD_MAC = SolutionCheck(False, "bad mac")
OTHER_NETWORK = SolutionCheck(False, "other network")
EXPIRED = SolutionCheck(False, "expired")
TOO_EARLY = SolutionCheck(False, "too early")
INSUFFICIENT_WORK = SolutionCheck(False, "insufficient work")
REPLAYED = SolutionCheck(False, "replayed")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: bytes
    id: bytes
    t1: int
    t2: int
    difficulty: int


def issue_challenge(keys: SigningKeys, site: str, client_ip: str, difficulty: int, ttl: float, now: float, *,
                    v4_bits: int = V4_PREFIX, v6_bits: int = V6_PREFIX) -> Challenge:
    """A fresh challenge for ``client_ip``'s network on ``site``, to be solved within ``ttl`` seconds."""
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"a challenge difficulty is a number of bits from 0 to {MAX_DIFFICULTY}, not {difficulty}")
    issued = int(now)
    expires = _expiry(issued, ttl)
    token = _issue(keys, site, ip_prefix(client_ip, v4_bits, v6_bits), _KIND_CHALLENGE, issued, expires, difficulty)
    return Challenge(token, difficulty, expires)


def verify_solution(keys: SigningKeys, site: str, client_ip: str, token: str, nonce: str, now: float,
                    first_use: FirstUse, *, min_difficulty: int = 0, v4_bits: int = V4_PREFIX,
                    v6_bits: int = V6_PREFIX) -> SolutionCheck:
    """Whether ``nonce`` solves ``token`` for this client; the challenge is spent on success.

    ``min_difficulty`` refuses tokens issued before the site's difficulty was raised.
    """
    parsed = _check(keys, site, ip_prefix(client_ip, v4_bits, v6_bits), token, _KIND_CHALLENGE)
    if isinstance(parsed, SolutionCheck):
        return parsed
    if not 0 < len(nonce) <= MAX_NONCE_CHARS or not _NONCE_CHARS.issuperset(nonce):
        return MALFORMED
    if parsed.t2 <= now:
        return EXPIRED
    if parsed.difficulty < min_difficulty or leading_zero_bits(work_digest(token, nonce)) < parsed.difficulty:
        return INSUFFICIENT_WORK
    return OK if first_use(parsed.id, float(parsed.t2)) else REPLAYED


def issue_wait_ticket(keys: SigningKeys, site: str, client_ip: str, delay: float, now: float, *, ttl: float = 600,
                      v4_bits: int = V4_PREFIX, v6_bits: int = V6_PREFIX) -> WaitTicket:
    """A ticket for a client without JavaScript: redeemable ``delay`` seconds from now, for ``ttl`` seconds more.

    Its not-before is a whole second rounded down, so a page that refreshes after exactly ``delay`` seconds always
    finds it good (a person waits at most ``delay``, a robot at least ``delay - 1``)."""
    if not 0 <= delay <= MAX_TTL:
        raise ValueError(f"a wait ticket's delay must be between 0 and {MAX_TTL} seconds, not {delay}")
    not_before = int(now + delay)
    expires = _expiry(not_before, ttl)
    token = _issue(keys, site, ip_prefix(client_ip, v4_bits, v6_bits), _KIND_WAIT, not_before, expires, 0)
    return WaitTicket(token, not_before, expires)


def verify_wait_ticket(keys: SigningKeys, site: str, client_ip: str, ticket: str, now: float,
                       first_use: FirstUse, *, v4_bits: int = V4_PREFIX, v6_bits: int = V6_PREFIX) -> SolutionCheck:
    """Whether ``ticket`` is redeemable now by this client; it is spent on success (not when it is too early)."""
    parsed = _check(keys, site, ip_prefix(client_ip, v4_bits, v6_bits), ticket, _KIND_WAIT)
    if isinstance(parsed, SolutionCheck):
        return parsed
    if parsed.t2 <= now:
        return EXPIRED
    if now < parsed.t1:
        return TOO_EARLY
    return OK if first_use(parsed.id, float(parsed.t2)) else REPLAYED


def ticket_not_before(ticket: str) -> int | None:
    """The not-before time written in a ticket (unverified: only for telling a visitor how long to wait)."""
    parsed = _unpack(ticket)
    return None if parsed is None or parsed[1].kind != _KIND_WAIT else parsed[1].t1


def work_digest(token: str, nonce: str) -> bytes:
    """SHA-256 over the ASCII bytes of the token followed by those of the nonce."""
    return hashlib.sha256((token + nonce).encode("ascii")).digest()


def leading_zero_bits(digest: bytes) -> int:
    """How many of the digest's leading bits (most significant first) are zero."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def _expiry(start: int, ttl: float) -> int:
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"a token lifetime must be between 1 and {MAX_TTL} seconds, not {ttl}")
    return start + int(ttl)


def _issue(keys: SigningKeys, site: str, prefix: str, kind: bytes, t1: int, t2: int, difficulty: int) -> str:
    if "\n" in site:
        raise ValueError("site names cannot contain line breaks")
    kid = keys.current
    tag = net_tag(keys, kid, prefix)
    assert tag is not None
    fields = _FIELDS.pack(kind, os.urandom(16), t1, t2, difficulty, tag)
    mac = keys.mac(kid, _signed(kid, site, prefix, fields))
    assert mac is not None
    return f"{kid}.{b64(fields + mac)}"


def _signed(kid: str, site: str, prefix: str, fields: bytes) -> bytes:
    return b"".join((_DOMAIN, kid.encode(), b"\n", site.encode(), b"\n", prefix.encode(), b"\n", fields))


def _unpack(token: str) -> tuple[str, _Token, bytes, bytes] | None:
    """``(kid, fields, raw fields, mac)`` of a well-formed token, or None."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    kid, dot, body = token.partition(".")
    if not dot or not kid or len(kid) > 16:
        return None
    try:
        raw = binascii.a2b_base64(body.translate(_FROM_URLSAFE) + "==", strict_mode=False)
    except binascii.Error:
        return None
    if len(raw) != _BODY_BYTES or b64(raw) != body:
        return None
    fields = raw[:_FIELDS.size]
    kind, token_id, t1, t2, difficulty, _tag = _FIELDS.unpack(fields)
    return kid, _Token(kind, token_id, t1, t2, difficulty), fields, raw[_FIELDS.size:]


def _check(keys: SigningKeys, site: str, prefix: str, token: str, kind: bytes) -> _Token | SolutionCheck:
    unpacked = _unpack(token)
    if unpacked is None:
        return MALFORMED
    kid, parsed, fields, mac = unpacked
    expected = keys.mac(kid, _signed(kid, site, prefix, fields))
    if expected is None:
        return UNKNOWN_KEY
    if not hmac.compare_digest(expected, mac):
        tag = net_tag(keys, kid, prefix)
        return OTHER_NETWORK if tag is not None and tag != fields[-2:] else BAD_MAC
    if parsed.kind != kind or parsed.difficulty > MAX_DIFFICULTY:
        return MALFORMED
    return parsed

