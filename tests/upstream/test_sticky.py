"""Signed sticky-session cookies and their key file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tlsedge.upstream.sticky import (
    KEY_LENGTH,
    StickyCookie,
    StickyKeyError,
    cookie_value,
    load_or_create_sticky_key,
    sticky_key_path,
)

KEY = bytes(range(32))
SERVERS = ("https://10.0.0.1:443", "https://10.0.0.2:443", "http://10.0.0.3:8080")


def sticky(key: bytes = KEY, site: str = "shop", pool: str = "default", **kwargs) -> StickyCookie:
    options = {"cookie_name": "tlsedge_srv", "max_age": None, "server_keys": SERVERS, **kwargs}
    return StickyCookie(key, site, pool, **options)


def value_of(line: bytes) -> bytes:
    """The cookie value of a Set-Cookie line."""
    assert line.startswith(b"Set-Cookie: tlsedge_srv=") and line.endswith(b"\r\n")
    return line[len(b"Set-Cookie: tlsedge_srv=") :].split(b";", 1)[0]


def cookie_for(cookie: StickyCookie, server: str) -> bytes:
    return b"tlsedge_srv=" + value_of(cookie.set_cookie_line(server, secure=True))


# --- the key file --------------------------------------------------------------------------------------------------


def test_key_created_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_sticky_key(state)
    path = sticky_key_path(state)
    assert path == state / "sticky.key"
    assert len(key) == KEY_LENGTH
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_sticky_key(state) == key
    assert [p.name for p in state.iterdir()] == ["sticky.key"]  # no temporary file left behind


def test_key_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        load_or_create_sticky_key(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(sticky_key_path(tmp_path).stat().st_mode) == 0o600


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_sticky_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(keys) == 8
    assert set(keys) == {sticky_key_path(tmp_path).read_bytes()}
    assert [p.name for p in tmp_path.iterdir()] == ["sticky.key"]


@pytest.mark.parametrize("size", [0, 16, 33])
def test_key_of_wrong_size_is_refused_not_replaced(tmp_path: Path, size: int) -> None:
    path = sticky_key_path(tmp_path)
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(StickyKeyError, match=f"{path}: holds {size} bytes") as info:
        load_or_create_sticky_key(tmp_path)
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == b"k" * size


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = sticky_key_path(tmp_path)
    path.write_bytes(os.urandom(KEY_LENGTH))
    path.chmod(mode)
    with pytest.raises(StickyKeyError, match=f"{path}: mode {mode:04o} .*chmod 600"):
        load_or_create_sticky_key(tmp_path)


def test_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    sticky_key_path(tmp_path).mkdir(mode=0o700)
    with pytest.raises(StickyKeyError, match="not a regular file"):
        load_or_create_sticky_key(tmp_path)


# --- the cookie ----------------------------------------------------------------------------------------------------


def test_round_trip_for_every_server() -> None:
    cookie = sticky()
    for server in SERVERS:
        assert cookie.server_of([cookie_for(cookie, server)]) == server
        assert cookie.server_of([b"a=1; " + cookie_for(cookie, server) + b"; b=2"]) == server


def test_value_reveals_nothing_of_the_address() -> None:
    cookie = sticky()
    values = {value_of(cookie.set_cookie_line(s, secure=False)) for s in SERVERS}
    assert len(values) == len(SERVERS)
    for value in values:
        token, mac = value.split(b".")
        assert len(token) == 8 and len(mac) == 16
        assert b"10.0.0" not in value and b"=" not in value
        assert all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in token + mac)


def test_missing_cookie() -> None:
    cookie = sticky()
    assert cookie.server_of([]) is None
    assert cookie.server_of([b"a=1; b=2"]) is None
    value = value_of(cookie.set_cookie_line(SERVERS[0], False))
    # the name inside another cookie's name or value is not our cookie
    for header in (b"xtlsedge_srv=", b"tlsedge_srvx=", b"a=tlsedge_srv=", b"a=b tlsedge_srv=", b"tlsedge_srv.x="):
        assert cookie.server_of([header + value]) is None, header
    assert cookie.server_of([b"a=tlsedge_srv; tlsedge_srv=" + value]) == SERVERS[0]


def _flip(data: bytes, index: int) -> bytes:
    char = data[index : index + 1]
    return data[:index] + (b"B" if char == b"A" else b"A") + data[index + 1 :]


def test_tampered_mac_and_token_are_refused() -> None:
    cookie = sticky()
    value = value_of(cookie.set_cookie_line(SERVERS[1], False))
    token, mac = value.split(b".")
    for index in range(len(mac)):
        assert cookie.server_of([b"tlsedge_srv=" + token + b"." + _flip(mac, index)]) is None
    for index in range(len(token)):
        assert cookie.server_of([b"tlsedge_srv=" + _flip(token, index) + b"." + mac]) is None
    # the token of one server with the MAC of another
    other_mac = value_of(cookie.set_cookie_line(SERVERS[0], False)).split(b".")[1]
    assert cookie.server_of([b"tlsedge_srv=" + token + b"." + other_mac]) is None
    assert cookie.server_of([b"tlsedge_srv=" + token]) is None
    assert cookie.server_of([b"tlsedge_srv=" + token + b"."]) is None


@pytest.mark.parametrize(
    "other",
    [
        {"pool": "api"},
        {"site": "blog"},
        {"key": bytes(reversed(range(32)))},
    ],
)
def test_cookie_from_another_pool_site_or_key_is_refused(other: dict) -> None:
    mine, theirs = sticky(), sticky(**other)
    for server in SERVERS:
        assert theirs.server_of([cookie_for(mine, server)]) is None
        assert mine.server_of([cookie_for(theirs, server)]) is None


def test_server_no_longer_in_the_pool_is_refused() -> None:
    before = sticky()
    after = sticky(server_keys=SERVERS[:2])
    assert after.server_of([cookie_for(before, SERVERS[2])]) is None
    assert after.server_of([cookie_for(before, SERVERS[1])]) == SERVERS[1]  # unchanged servers keep their pins


@pytest.mark.parametrize(
    "header",
    [
        b"tlsedge_srv=",
        b"tlsedge_srv",
        b"tlsedge_srv=.",
        b"tlsedge_srv=....",
        b"tlsedge_srv=\xff\xfe.\x00",
        b"tlsedge_srv=" + b"A" * 10000,
        b"; ; tlsedge_srv=; ;",
        b'tlsedge_srv="',
    ],
)
def test_garbage_values_are_refused(header: bytes) -> None:
    assert sticky().server_of([header]) is None


def test_lenient_parsing_of_cookie_headers() -> None:
    cookie = sticky()
    pair = cookie_for(cookie, SERVERS[2])
    name, value = pair.split(b"=", 1)
    odd = b'json={"a":1}; ;; empty=; =novalue; flag; sp = x ;'
    assert cookie.server_of([odd + b"  " + pair + b" ;"]) == SERVERS[2]
    assert cookie.server_of([name + b'="' + value + b'"']) == SERVERS[2]  # DQUOTEd value (RFC 6265 cookie-value)
    assert cookie.server_of([name + b" = " + value]) == SERVERS[2]
    # several Cookie headers (HTTP/2 splits them), and a forged copy before the genuine one
    assert cookie.server_of([b"a=1", b"tlsedge_srv=forged.value; " + pair]) == SERVERS[2]


def test_set_cookie_attributes() -> None:
    cookie = sticky(max_age=None)
    plain = cookie.set_cookie_line(SERVERS[0], secure=False)
    value = value_of(plain)
    assert plain == b"Set-Cookie: tlsedge_srv=" + value + b"; Path=/; HttpOnly; SameSite=Lax\r\n"
    secure = cookie.set_cookie_line(SERVERS[0], secure=True)
    assert secure == b"Set-Cookie: tlsedge_srv=" + value + b"; Path=/; HttpOnly; SameSite=Lax; Secure\r\n"
    aged = sticky(max_age=3600.0)
    assert aged.set_cookie_line(SERVERS[0], True).endswith(b"; SameSite=Lax; Secure; Max-Age=3600\r\n")
    assert aged.set_cookie_line(SERVERS[0], False).endswith(b"; SameSite=Lax; Max-Age=3600\r\n")
    assert sticky(max_age=0.2).set_cookie_line(SERVERS[0], False).endswith(b"; Max-Age=1\r\n")  # never 0 (deletion)
    assert value_of(aged.set_cookie_line(SERVERS[0], False)) == value  # attributes do not change the value


def test_custom_cookie_name_and_invalid_ones() -> None:
    cookie = sticky(cookie_name="srv")
    assert cookie.name == b"srv"
    line = cookie.set_cookie_line(SERVERS[0], False)
    assert line.startswith(b"Set-Cookie: srv=")
    assert cookie.server_of([line[len(b"Set-Cookie: ") :].split(b";")[0]]) == SERVERS[0]
    for bad in ("", "a b", "a;b", "a=b", "é"):
        with pytest.raises(ValueError, match="invalid cookie name"):
            sticky(cookie_name=bad)
    with pytest.raises(ValueError, match="16 bytes"):
        sticky(key=b"short")
    with pytest.raises(KeyError):
        cookie.set_cookie_line("https://10.9.9.9:443", False)


def test_strip_keeps_the_other_cookies_in_order() -> None:
    cookie = sticky()
    pair = cookie_for(cookie, SERVERS[0])
    assert cookie.strip(b"a=1; " + pair + b"; b=2;c=3") == b"a=1; b=2; c=3"
    assert cookie.strip(pair + b"; z=9; a=1") == b"z=9; a=1"
    assert cookie.strip(b"a=1; tlsedge_srv=forged; " + pair) == b"a=1"  # every copy, valid or not
    assert cookie.strip(pair) is None
    assert cookie.strip(b" ; " + pair + b" ;") is None
    assert cookie.strip(b"xtlsedge_srv=1; a=2") == b"xtlsedge_srv=1; a=2"
    unrelated = b"a=1;b=2"
    assert cookie.strip(unrelated) is unrelated  # nothing of ours: the very same bytes, no copy


def test_cookie_value_helper() -> None:
    headers = [b"a=1; session=abc", b'session=second; b="quoted"']
    assert cookie_value(headers, b"session") == b"abc"
    assert cookie_value(headers, b"b") == b"quoted"
    assert cookie_value(headers, b"a") == b"1"
    assert cookie_value(headers, b"missing") is None
    assert cookie_value([b"xsession=1"], b"session") is None
    assert cookie_value([b"a=session=1; session =  2 "], b"session") == b"2"
    assert cookie_value([b"session="], b"session") == b""
    assert cookie_value([], b"session") is None
