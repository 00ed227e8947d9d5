"""Password-protected paths: scrypt hashes in configuration (and clear errors for bad ones), the bounded form,
and cookies that open one prefix only."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from tlsedge.guard.challenge.cookies import CHALLENGE_PURPOSE, verify_cookie
from tlsedge.guard.password import (
    MAX_FORM_BYTES,
    check_password,
    hash_password,
    issue_password_cookie,
    parse_password_hash,
    password_cookie_name,
    read_password_form,
    verify_password_cookie,
)
from tlsedge.guard.signing import SigningKeys

FAST = {"n": 1 << 10, "r": 8, "p": 1}  # cheap parameters keep the tests fast; the format is the same
NOW = 1_800_000_000.0
KEYS = SigningKeys.generate()


def test_default_hash_round_trip() -> None:
    stored = hash_password("correct horse battery staple")
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}", stored)
    assert check_password(stored, "correct horse battery staple")
    assert not check_password(stored, "correct horse battery stapler")
    assert parse_password_hash(f"  {stored}\n") == stored


def test_hash_is_scrypt_of_the_salt() -> None:
    stored = hash_password("pässwörd", **FAST)
    _, n, r, p, salt, digest = stored.split("$")
    raw_salt = base64.urlsafe_b64decode(salt + "==")
    expected = hashlib.scrypt("pässwörd".encode(), salt=raw_salt, n=int(n), r=int(r), p=int(p), dklen=32)
    assert base64.urlsafe_b64decode(digest + "=") == expected
    assert check_password(stored, "pässwörd") and not check_password(stored, "passwort")
    assert hash_password("pässwörd", **FAST) != stored  # a new salt each time


def test_malformed_configured_hashes_say_what_is_wrong() -> None:
    good = hash_password("x", **FAST)
    scheme, n, r, p, salt, digest = good.split("$")
    cases = {
        "plain text password": "looks like scrypt",
        good.replace("scrypt", "bcrypt"): "looks like scrypt",
        "$".join((scheme, "abc", r, p, salt, digest)): "whole numbers",
        "$".join((scheme, "1000", r, p, salt, digest)): "power of two",
        "$".join((scheme, str(1 << 20), "16", p, salt, digest)): "MiB",
        "$".join((scheme, n, "0", p, salt, digest)): "r must be",
        "$".join((scheme, n, r, p, "!!!", digest)): "base64",
        "$".join((scheme, n, r, p, "AAAA", digest)): "at least 8 bytes",
        "$".join((scheme, n, r, p, salt, "AAAA")): "16 to 64 bytes",
        good + "$extra": "looks like scrypt",
    }
    for text, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            parse_password_hash(text)
        assert not check_password(text, "x")


def test_bad_cost_parameters_are_refused_when_hashing() -> None:
    with pytest.raises(ValueError, match="power of two"):
        hash_password("x", n=1000)
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_overlong_candidates_are_refused_without_hashing() -> None:
    stored = hash_password("x" * 1024, **FAST)
    assert check_password(stored, "x" * 1024)
    assert not check_password(stored, "x" * 1025)


def test_read_password_form() -> None:
    form = b"password=s%C3%A9cret+word&return=%2Fadmin%2Fx%3Fy%3D1"
    assert read_password_form(form) == ("sécret word", "/admin/x?y=1")
    assert read_password_form(b"return=/a&password=p&password=q") == ("p", "/a")
    assert read_password_form(b"password=p") == ("p", "/")
    assert read_password_form(b"password=p&return=%2F%2Fevil.example") == ("p", "/")
    assert read_password_form(b"password=p&return=https://evil.example/") == ("p", "/")
    for bad in (b"", b"return=/a", b"password=", b"password=%ff", b"password=\xc3\xa9",
                b"password=" + b"x" * MAX_FORM_BYTES, b"&".join(b"f%d=1" % i for i in range(20)) + b"&password=p",
                b"password=" + b"x" * 1025):
        assert read_password_form(bad) is None, bad[:40]


def test_password_cookies_open_one_prefix_only() -> None:
    cookie = issue_password_cookie(KEYS, "blog", "/admin", "192.0.2.8", 600, NOW)
    assert verify_password_cookie(KEYS, "blog", "/admin", "192.0.2.99", cookie, NOW + 1).ok
    assert verify_password_cookie(KEYS, "blog", "/private", "192.0.2.8", cookie, NOW + 1).reason == "bad mac"
    assert verify_password_cookie(KEYS, "shop", "/admin", "192.0.2.8", cookie, NOW + 1).reason == "bad mac"
    assert verify_password_cookie(KEYS, "blog", "/admin", "192.0.3.8", cookie, NOW + 1).reason == "other network"
    assert verify_password_cookie(KEYS, "blog", "/admin", "192.0.2.8", cookie, NOW + 600).reason == "expired"
    assert verify_cookie(KEYS, "blog", CHALLENGE_PURPOSE, "192.0.2.8", cookie, NOW + 1).reason == "bad mac"


def test_cookie_names_differ_per_prefix_and_are_cookie_safe() -> None:
    names = {password_cookie_name(prefix) for prefix in ("/admin", "/admin/", "/private", "/")}
    assert len(names) == 4
    assert all(re.fullmatch(r"tlsedge_pw_[a-z2-7]{8}", name) for name in names)
    assert password_cookie_name("/admin") == password_cookie_name("/admin")
