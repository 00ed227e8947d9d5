"""Password-protected paths: the configured password hash, the form a visitor posts, and the cookie they get.

Configuration holds a hash, never the password: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (made by
:func:`hash_password`; self-describing, so the cost can be raised later without breaking existing values). scrypt
because it is in the standard library and memory-hard; the default cost (n=2^14, r=8: 16 MiB, tens of
milliseconds) is meant for a page a person submits now and then. That is too slow for the event loop: the lead runs
:func:`check_password` in a thread, behind the rate limit of the password page.

A visitor who knows the password gets a cookie from :mod:`tlsedge.guard.challenge.cookies` whose purpose is
``password:<path prefix>``: it opens that prefix only, on that site, from that network, until it expires. Cookies
are checked with keys from the store, so when the store cannot be read and no keys are loaded the path stays
closed (:class:`tlsedge.guard.signing.StoreUnavailable`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from urllib.parse import parse_qsl

from tlsedge.guard.challenge.cookies import (
    V4_PREFIX,
    V6_PREFIX,
    CookieCheck,
    issue_cookie,
    verify_cookie,
)
from tlsedge.guard.challenge.page import safe_return_path
from tlsedge.guard.signing import SigningKeys

SCHEME = "scrypt"
DEFAULT_N = 1 << 14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_MEMORY = 256 << 20  # the most one check may use: 128 * n * r bytes (times p)
MAX_FORM_BYTES = 4096
MAX_PASSWORD_CHARS = 1024
PASSWORD_FIELD = "password"
RETURN_FIELD = "return"
COOKIE_PREFIX = "tlsedge_pw_"


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new hash of ``password`` (random salt) to put in the configuration."""
    if not password:
        raise ValueError("the password is empty")
    salt = os.urandom(SALT_BYTES)
    _check_cost(n, r, p)
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def parse_password_hash(text: str) -> str:
    """The configured hash, checked; ``ValueError`` says what is wrong and how to make a good one."""
    _parse(text)
    return text.strip()


def check_password(stored: str, candidate: str) -> bool:
    """Whether ``candidate`` matches the stored hash (constant-time comparison; a malformed hash matches nothing)."""
    try:
        n, r, p, salt, expected = _parse(stored)
    except ValueError:
        return False
    if len(candidate) > MAX_PASSWORD_CHARS:
        return False
    return hmac.compare_digest(_scrypt(candidate, salt, n, r, p, len(expected)), expected)


def read_password_form(body: bytes) -> tuple[str, str] | None:
    """``(password, return path)`` from a urlencoded form body, or None if it is too big, malformed or empty."""
    if len(body) > MAX_FORM_BYTES:
        return None
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=8, errors="strict")
    except ValueError:
        return None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    password = fields.get(PASSWORD_FIELD, "")
    if not password or len(password) > MAX_PASSWORD_CHARS:
        return None
    return password, safe_return_path(fields.get(RETURN_FIELD, "/"))


def password_purpose(path_prefix: str) -> str:
    """The cookie purpose for a protected prefix (part of the cookie's MAC)."""
    return f"password:{path_prefix}"


def password_cookie_name(path_prefix: str) -> str:
    """A cookie name of its own for each protected prefix, so passing one does not overwrite another's cookie."""
    return COOKIE_PREFIX + base64.b32encode(hashlib.sha256(path_prefix.encode()).digest()[:5]).decode().lower()


def issue_password_cookie(keys: SigningKeys, site: str, path_prefix: str, client_ip: str, ttl: float, now: float, *,
                          v4_bits: int = V4_PREFIX, v6_bits: int = V6_PREFIX) -> str:
    """The cookie that opens ``path_prefix`` on ``site`` for the client's network for ``ttl`` seconds."""
    return issue_cookie(keys, site, password_purpose(path_prefix), client_ip, ttl, now, v4_bits=v4_bits,
                        v6_bits=v6_bits)


def verify_password_cookie(keys: SigningKeys, site: str, path_prefix: str, client_ip: str, value: str, now: float,
                           *, v4_bits: int = V4_PREFIX, v6_bits: int = V6_PREFIX) -> CookieCheck:
    """Whether ``value`` opens ``path_prefix`` on ``site`` for this client now."""
    return verify_cookie(keys, site, password_purpose(path_prefix), client_ip, value, now, v4_bits=v4_bits,
                         v6_bits=v6_bits)


def _parse(text: str) -> tuple[int, int, int, bytes, bytes]:
    how = "make one with `tlsedge password-hash` (or tlsedge.guard.password.hash_password)"
    parts = text.strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"a password hash looks like scrypt$<n>$<r>$<p>$<salt>$<hash>; {how}")
    if not all(part.isascii() and part.isdigit() and len(part) <= 8 for part in parts[1:4]):
        raise ValueError(f"the scrypt cost parameters n, r and p must be whole numbers; {how}")
    n, r, p = (int(part) for part in parts[1:4])
    _check_cost(n, r, p)
    try:
        salt, digest = (base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
                        for part in parts[4:6])
    except (binascii.Error, ValueError):
        raise ValueError(f"the salt and hash of a password hash must be URL-safe base64; {how}") from None
    if len(salt) < 8:
        raise ValueError(f"the salt of a password hash must be at least 8 bytes; {how}")
    if not 16 <= len(digest) <= 64:
        raise ValueError(f"the hash part of a password hash must be 16 to 64 bytes; {how}")
    return n, r, p, salt, digest


def _check_cost(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1):
        raise ValueError(f"scrypt's n must be a power of two of at least 2, not {n}")
    if not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError(f"scrypt's r must be 1 to 64 and p 1 to 16, not r={r}, p={p}")
    if 128 * n * r * p > MAX_MEMORY:
        raise ValueError(f"scrypt with n={n}, r={r}, p={p} needs more than {MAX_MEMORY >> 20} MiB per check")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * n * r * (p + 1) + (1 << 20))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
