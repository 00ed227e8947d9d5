"""Sticky sessions: a cookie set by the edge pins a client to one server of a pool.

The cookie value is ``<token>.<mac>``, both base64url without padding:

* ``token`` names the server without revealing it: a keyed HMAC of (site, pool, server key), truncated. A client
  cannot map it back to an address, nor compute the token of a server it was never sent to.
* ``mac`` is a truncated HMAC-SHA256 over (site, pool, token) with a separate derived key, checked in constant time.
  A value copied from another site or pool, made with another key, or edited in any byte names no server.

The key lives in ``state_dir/sticky.key``, shared by every worker and kept across restarts and reloads, so a cookie
stays valid as long as the server it names is in the pool. Deleting the file makes a new key: every client then
loses its pin once and is balanced afresh, which is harmless.

Everything per server (its token, its MAC, the whole ``Set-Cookie`` line) is computed when the pool is built; a
request that carries no cookie of ours costs one ``bytes.find``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

KEY_LENGTH = 32
_TOKEN_BYTES = 6  # 48 bits: only has to tell a pool's servers apart (collisions are refused at construction)
_MAC_BYTES = 12  # 96 bits: forging needs that many guesses, each one a request
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 cookie-name: an RFC 7230 token
_OWS = b" \t"
_DQUOTE, _SEMICOLON = b'";'


class StickyKeyError(OSError):
    """The sticky-session key file exists but cannot be used; the message names the file and what to do."""


def sticky_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / "sticky.key"


def load_or_create_sticky_key(state_dir: Path) -> bytes:
    """Return the 32-byte sticky-session key from the state dir, creating it (mode 0600) on first start.

    Creation is atomic and race-free without a lock: the key is written to a private temporary file which is then
    hard-linked to its final name; ``link`` fails when another process got there first, and that process's key is
    used instead, so workers starting together agree on one key and nobody ever reads a partial file.

    Unlike the TLS ticket key, an existing file is never replaced: a bad one is reported (`StickyKeyError`), since
    silently making a new key would unpin every client on every start.
    """
    path = sticky_key_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return _read_key(path)
    except FileNotFoundError:
        return _create_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StickyKeyError(f"{path}: the sticky-session key is not a regular file")
        if info.st_mode & 0o077:
            raise StickyKeyError(
                f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users read the sticky-session key; "
                f"run `chmod 600 {path}`"
            )
        if info.st_size != KEY_LENGTH:
            raise StickyKeyError(
                f"{path}: holds {info.st_size} bytes, a sticky-session key has {KEY_LENGTH}; delete the file to "
                "make a new key (clients then lose their pinned server once)"
            )
        data = os.read(fd, KEY_LENGTH)
    finally:
        os.close(fd)
    if len(data) != KEY_LENGTH:
        raise StickyKeyError(f"{path}: the sticky-session key could not be read whole")
    return data


def _create_key(path: Path) -> bytes:
    key = os.urandom(KEY_LENGTH)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        return _read_key(path)  # another worker created it first: use its key
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return key


class StickyCookie:
    """The sticky cookie of one pool: reads the server a request is pinned to, writes the pin of a response."""

    __slots__ = ("_lines", "_macs", "_name", "_servers")

    def __init__(
        self,
        key: bytes,
        site: str,
        pool: str,
        cookie_name: str,
        max_age: float | None,
        server_keys: Sequence[str],
    ) -> None:
        if len(key) < 16:
            raise ValueError("a sticky-session key needs at least 16 bytes")
        if not _COOKIE_NAME.fullmatch(cookie_name):
            raise ValueError(f"invalid cookie name {cookie_name!r}: use letters, digits and !#$%&'*+-.^_`|~")
        self._name = cookie_name.encode("ascii")
        token_key = hmac.digest(key, b"tlsedge sticky token", hashlib.sha256)
        mac_key = hmac.digest(key, b"tlsedge sticky mac", hashlib.sha256)
        scope = _frame(site.encode()) + _frame(pool.encode())
        attributes = b"; Path=/; HttpOnly; SameSite=Lax"
        age = b"" if max_age is None else b"; Max-Age=%d" % max(1, math.ceil(max_age))
        self._servers: dict[bytes, str] = {}
        self._macs: dict[bytes, bytes] = {}
        self._lines: dict[str, tuple[bytes, bytes]] = {}
        for server in server_keys:
            token = _b64(hmac.digest(token_key, scope + _frame(server.encode()), hashlib.sha256)[:_TOKEN_BYTES])
            if self._servers.setdefault(token, server) != server:
                raise ValueError(f"servers {server!r} and {self._servers[token]!r} got the same sticky token")
            mac = _b64(hmac.digest(mac_key, scope + _frame(token), hashlib.sha256)[:_MAC_BYTES])
            self._macs[token] = mac
            line = b"Set-Cookie: %s=%s.%s%s" % (self._name, token, mac, attributes)
            self._lines[server] = (line + age + b"\r\n", line + b"; Secure" + age + b"\r\n")

    @property
    def name(self) -> bytes:
        return self._name

    def server_of(self, cookie_headers: list[bytes]) -> str | None:
        """The server key a valid cookie of ours pins the request to, or None (absent, forged, stale or foreign)."""
        name = self._name  # searched without "=": RFC 6265 parsing allows spaces around it
        for header in cookie_headers:
            if header.find(name) < 0:
                continue
            for value in _values(header, name):
                token, dot, mac = value.partition(b".")
                expected = self._macs.get(token)
                if expected is not None and dot and hmac.compare_digest(mac, expected):
                    return self._servers[token]
        return None

    def set_cookie_line(self, server_key: str, secure: bool) -> bytes:
        """The prepared ``Set-Cookie`` header line (with CRLF) pinning a client to `server_key`."""
        insecure_line, secure_line = self._lines[server_key]
        return secure_line if secure else insecure_line

    def strip(self, cookie_value: bytes) -> bytes | None:
        """A Cookie header value without our cookie, other pairs in order; None when nothing else is left.

        The origin never sees the pin: it is the edge's business, and an application echoing cookies would leak it.
        """
        name = self._name
        if cookie_value.find(name) < 0:
            return cookie_value
        kept = []
        for pair in cookie_value.split(b";"):
            pair = pair.strip(_OWS)
            if pair and pair.partition(b"=")[0].strip(_OWS) != name:
                kept.append(pair)
        return b"; ".join(kept) or None


def cookie_value(cookie_headers: list[bytes], name: bytes) -> bytes | None:
    """The value of the first cookie called `name` in the Cookie header value(s), or None (e.g. for hash balancing)."""
    for header in cookie_headers:
        if header.find(name) >= 0:
            for value in _values(header, name):
                return value
    return None


def _values(header: bytes, name: bytes) -> Iterator[bytes]:
    """Values of the cookies called `name` in one Cookie header value (RFC 6265 section 5.4, leniently).

    Only the occurrences of the name are looked at, not every pair: browsers send long Cookie headers (analytics
    cookies), and splitting them all costs microseconds. An occurrence counts when it starts a pair (after the start
    or a ";", spaces allowed) and is followed by "=" (spaces allowed); the value runs to the next ";", is trimmed,
    and loses surrounding double quotes. Empty pairs and other cookies, whatever their value, are never parsed.
    """
    size = len(name)
    start = header.find(name)
    while start >= 0:
        end = start + size
        if _starts_pair(header, start):
            equals = _skip_ows(header, end)
            if header[equals : equals + 1] == b"=":
                stop = header.find(b";", equals)
                value = header[equals + 1 : stop if stop >= 0 else len(header)].strip(_OWS)
                if len(value) >= 2 and value[0] == _DQUOTE and value[-1] == _DQUOTE:
                    value = value[1:-1]
                yield value
        start = header.find(name, end)


def _starts_pair(header: bytes, index: int) -> bool:
    index -= 1
    while index >= 0 and header[index] in _OWS:
        index -= 1
    return index < 0 or header[index] == _SEMICOLON


def _skip_ows(header: bytes, index: int) -> int:
    size = len(header)
    while index < size and header[index] in _OWS:
        index += 1
    return index


def _frame(part: bytes) -> bytes:
    """A length-prefixed field, so (site, pool, server) tuples cannot collide by shifting bytes between fields."""
    return len(part).to_bytes(4, "big") + part


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")
