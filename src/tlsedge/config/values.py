"""Pure parsers for the value syntaxes of the configuration file: durations, sizes, addresses, host names, origins,
header fields, paths and the pool settings written as strings.

They take one value and return the parsed form or raise ``ValueError`` whose message is a complete reason for the
operator (what is wrong and what to write instead). The loader adds the file, the site and the field. Keeping them
free of I/O and of the TOML structure lets other parts (admin API, CLI flags) reuse the same syntax and messages.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .schema import HashSource, Listener

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_DURATION_HELP = "write a number of seconds (30, 0.25) or a string with a unit: '250ms', '30s', '5m', '1h', '1d'"

_KIB = 1024
_SIZE_UNITS = {"b": 1, "k": _KIB, "kib": _KIB, "m": _KIB**2, "mib": _KIB**2, "g": _KIB**3, "gib": _KIB**3}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_SIZE_HELP = "write a number of bytes (32768) or a string with a unit: '512B', '32KiB', '100MiB', '1GiB' (or k, m, g)"

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)

# RFC 9110 section 5.6.2: a token (header names, methods; RFC 6265 cookie names are tokens too).
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Controls other than HTAB: CR and LF would start a new header line, NUL truncates in some origins.
_FIELD_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# What may appear in a request path and query as clients send them (RFC 3986 pchar, "/" and "?", escapes as %XX).
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/%"
_PATH_RE = re.compile(rf"^/[{_PCHARS}]*$")
_QUERY_RE = re.compile(rf"^[{_PCHARS}?]*$")
_STATUS_RANGE_RE = re.compile(r"^(\d{3})\s*(?:-\s*(\d{3}))?$")
_HASH_SOURCES = ("client_ip", "uri", "header:<name>", "cookie:<name>")


def describe(value: object) -> str:
    """Name a TOML value's type the way the operator wrote it, for 'must be X, not Y' messages."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for a likely typo, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """A positive duration in seconds, from a number of seconds or a string such as "250ms", "30s", "5m", "1h".

    ``allow_zero`` admits 0 for settings where zero means "off" (slow start), and only there: elsewhere a zero timeout
    would fail every request at once, which is never what the operator meant.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a duration, not {describe(value)}; {_DURATION_HELP}")
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip().lower())
        if match and not match[2]:
            raise ValueError(
                f"{value!r} has no unit; write it as a number ({match[1]}) or add a unit; {_DURATION_HELP}"
            )
        if not match or match[2] not in _DURATION_UNITS:
            raise ValueError(f"{value!r} is not a duration; {_DURATION_HELP}")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        seconds = float(value)
    if allow_zero and seconds == 0:
        return 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        floor = "zero or more (0 turns it off)" if allow_zero else "greater than zero"
        raise ValueError(f"must be {floor}, not {value!r}; {_DURATION_HELP}")
    return seconds


def parse_size(value: object, minimum: int = 0) -> int:
    """A size in bytes, from an integer or a string with a 1024-based unit (B, KiB/MiB/GiB or nginx's k/m/g)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a size, not {describe(value)}; {_SIZE_HELP}")
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip().lower())
        if match and not match[2]:
            raise ValueError(f"{value!r} has no unit; write it as a number ({match[1]}) or add a unit; {_SIZE_HELP}")
        if not match or match[2] not in _SIZE_UNITS:
            hint = " (units are 1024-based: use KiB, MiB, GiB)" if match and match[2] in ("kb", "mb", "gb") else ""
            raise ValueError(f"{value!r} is not a size{hint}; {_SIZE_HELP}")
        size = round(float(match[1]) * _SIZE_UNITS[match[2]])
    else:
        size = value
    if size < minimum:
        floor = "zero or more" if minimum == 0 else f"at least {minimum} bytes"
        raise ValueError(f"must be {floor}, not {value!r}; {_SIZE_HELP}")
    return size


def parse_port(text: str) -> int:
    """A TCP port 1..65535 written as decimal digits."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not valid; use a number from 1 to 65535")
    return int(text)


def _split_host_port(text: str, example: str) -> tuple[str, str | None, bool]:
    """Split "host:port" / "[v6]:port" / "host" into (host, port text or None, bracketed)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has '[' without ']'; write IPv6 addresses as {example}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'; write it as {example}")
        return host, (rest[1:] if rest else None), True
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None, False
    if ":" in host:
        raise ValueError(f"{text!r}: IPv6 addresses must be in brackets, e.g. {example}")
    return host, port, False


def parse_listener(text: str) -> Listener:
    """A listen address "host:port": an IP literal ("[::1]" for IPv6), "localhost", or "*" (same as 0.0.0.0)."""
    example = "'[::1]:8443'"
    host, port, bracketed = _split_host_port(text, example)
    if port is None:
        raise ValueError(f"{text!r} has no port; write 'host:port', e.g. '127.0.0.1:8443', {example} or '*:443'")
    if bracketed:
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address; use brackets only for IPv6") from None
    elif host.lower() in ("*", "localhost"):
        host = host.lower()
    else:
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(
                f"cannot listen on {host!r}: use an IP address ('127.0.0.1', {example}), 'localhost', "
                "or '*' / '0.0.0.0' for every IPv4 address and '[::]' for every IPv6 address"
            ) from None
    return Listener(host=host, port=parse_port(port))


def bind_address(listener: Listener) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a listener binds: "*" is 0.0.0.0 (every IPv4 address; "[::]" is IPv6's), "localhost" 127.0.0.1.

    This mirrors how `tlsedge.control.listeners` opens sockets, so clashes found here are the binds that would fail.
    """
    if listener.host == "*":
        return ipaddress.IPv4Address("0.0.0.0")
    if listener.host == "localhost":
        return ipaddress.IPv4Address("127.0.0.1")
    return ipaddress.ip_address(listener.host)


def listeners_clash(a: Listener, b: Listener) -> bool:
    """True when both cannot be bound together: same address and port, or a wildcard covering the other's address."""
    if a.port != b.port:
        return False
    address_a, address_b = bind_address(a), bind_address(b)
    if address_a.version != address_b.version:
        return False  # IPv6 sockets are opened IPV6_V6ONLY, so [::] does not cover IPv4
    return address_a == address_b or address_a.is_unspecified or address_b.is_unspecified


def normalize_hostname(text: str, *, allow_wildcard: bool) -> str:
    """A DNS name in lower case without a trailing dot; "*.example.com" only when ``allow_wildcard``.

    Names are compared with SNI and Host values, which are ASCII: Unicode names must be given as IDNA A-labels.
    """
    name = text.lower().removesuffix(".")
    if not name:
        raise ValueError("host name is empty; write a DNS name such as 'www.example.com'")
    if not name.isascii():
        raise ValueError(f"{text!r} is not ASCII; write internationalized names as IDNA A-labels{_idna_hint(name)}")
    if is_ip_address(name):
        raise ValueError(f"{text!r} is an IP address, not a host name; use a DNS name (or default_site for IP access)")
    if len(name) > 253:
        raise ValueError(f"{text[:40]!r}... is longer than 253 characters; DNS names cannot be that long")
    labels = name.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            raise ValueError(f"{text!r}: a wildcard is not allowed here; write a single DNS name")
        if len(labels) < 2:
            raise ValueError(f"{text!r}: a wildcard needs a domain after it, e.g. '*.example.com'")
        labels = labels[1:]
    for label in labels:
        if "*" in label:
            where = "'*' is allowed only as the whole leftmost label, e.g. '*.example.com'"
            raise ValueError(f"{text!r}: {where}" if allow_wildcard else f"{text!r}: wildcards are not allowed here")
        if not _LABEL_RE.match(label):
            raise ValueError(
                f"{text!r}: label {label!r} is not valid; use letters, digits and '-' (not first or last), "
                "1 to 63 characters per label"
            )
    if labels[-1].isdigit():
        raise ValueError(f"{text!r}: the last label cannot be all digits; write a DNS name such as 'www.example.com'")
    return name


def _idna_hint(name: str) -> str:
    try:
        return f": {name.encode('idna').decode('ascii')!r}"
    except UnicodeError:
        return ""


def is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address literal (without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def name_covers(pattern: str, host: str) -> bool:
    """Whether a certificate name (possibly "*.example.com") covers a site host (possibly a wildcard itself).

    A certificate wildcard covers exactly one leftmost label; a wildcard host is covered only by the same wildcard.
    """
    pattern = pattern.lower().removesuffix(".")
    if pattern == host:
        return True
    if not pattern.startswith("*.") or host.startswith("*."):
        return False
    first, dot, rest = host.partition(".")
    return bool(first and dot) and rest == pattern[2:]


@dataclass(frozen=True, slots=True)
class OriginAddress:
    """An origin as written: the scheme is None when omitted (it then follows origin_tls), the port None for default."""

    scheme: Literal["http", "https"] | None
    host: str
    port: int | None


def parse_origin(text: str) -> OriginAddress:
    """Parse "http://host[:port]", "https://host[:port]" or "host:port"; origins carry no path, query or user info."""
    scheme: Literal["http", "https"] | None = None
    rest = text
    match = _SCHEME_RE.match(text)
    if match:
        rest = match[2]
        scheme = "https" if match[1].lower() == "https" else "http"
        if match[1].lower() not in ("http", "https"):
            raise ValueError(f"{text!r}: scheme {match[1]!r} is not supported; use http:// or https://")
    if "@" in rest:
        raise ValueError(f"{text!r} contains user info ('...@'); origins take no credentials: remove it")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if cut >= 0:
        if rest[cut:] != "/":
            raise ValueError(
                f"{text!r} has a path, query or fragment ({rest[cut:]!r}); give only scheme://host:port "
                "(request paths are passed through unchanged)"
            )
        rest = rest[:cut]
    example = "'http://[::1]:9000'"
    host, port_text, bracketed = _split_host_port(rest, example)
    if port_text is None and scheme is None:
        raise ValueError(f"{text!r} has neither scheme nor port; write 'http://{host}' or '{host}:PORT'")
    port = parse_port(port_text) if port_text is not None else None
    return OriginAddress(scheme=scheme, host=_origin_host(host, bracketed, text), port=port)


def _origin_host(host: str, bracketed: bool, text: str) -> str:
    """An origin host: an IP literal (IPv6 in brackets) or a DNS name, normalized."""
    if not host:
        raise ValueError(f"{text!r} has no host; write e.g. 'http://127.0.0.1:9000'")
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return normalize_hostname(host, allow_wildcard=False)
    except ValueError as exc:
        raise ValueError(f"{text!r}: origin host is not an IP address or a valid DNS name: {exc}") from None


def parse_host_header(text: str) -> str:
    """A Host header value sent to an origin: a DNS name or an IP address (IPv6 in brackets), optionally ":port"."""
    example = "'api.internal', 'api.internal:8080' or '[::1]:8080'"
    host, port, bracketed = _split_host_port(text, example)
    if port is not None:
        parse_port(port)
    if bracketed:
        try:
            host = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif not is_ip_address(host):
        try:
            host = normalize_hostname(host, allow_wildcard=False)
        except ValueError as exc:
            raise ValueError(f"not a host name or IP address ({exc}); write e.g. {example}") from None
    return host if port is None else f"{host}:{port}"


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token: the syntax of header names, methods and cookie names."""
    return bool(_TOKEN_RE.match(text))


def parse_header_name(text: str) -> str:
    """A header name (an RFC 9110 token), lower-cased: names are compared case-insensitively."""
    if not is_token(text):
        raise ValueError(
            f"{text!r} is not a header name; use letters, digits and !#$%&'*+-.^_`|~ (no spaces or colons)"
        )
    return text.lower()


def parse_header_value(text: str) -> str:
    """A header value as sent: any text without control characters (tab excepted) or surrounding spaces.

    CR and LF would let a value start a new header line (header injection); spaces around a value are dropped by
    every recipient (RFC 9110 section 5.5), so a value compared or sent with them would not be what it looks like.
    """
    if _FIELD_CONTROL_RE.search(text):
        raise ValueError(
            f"{text!r} contains a control character (CR, LF, NUL...); header values are one line of text: remove it"
        )
    if text != text.strip(" \t"):
        raise ValueError(f"{text!r} starts or ends with whitespace, which recipients drop; remove it")
    return text


def parse_cookie_name(text: str) -> str:
    """A cookie name (RFC 6265: a token), kept as written since cookie names are case-sensitive."""
    if not is_token(text):
        raise ValueError(
            f"{text!r} is not a cookie name; use letters, digits and !#$%&'*+-.^_`|~ (no spaces, '=', ';' or ',')"
        )
    return text


def parse_method(text: str) -> str:
    """An HTTP method (a token), upper-cased: clients send methods upper-case and they are compared exactly."""
    if not is_token(text):
        raise ValueError(f"{text!r} is not an HTTP method; write a method name such as 'GET' or 'POST'")
    return text.upper()


def parse_request_path(text: str, *, query: bool = False) -> str:
    """A path as clients send it: starting with "/", ASCII, non-ASCII and spaces percent-encoded.

    A configured path that a request can never carry would silently never match, so it is refused here: raw spaces
    or non-ASCII characters (clients percent-encode them), a query string where only the path is compared, and "."
    or ".." segments (requests holding them are refused before routing).
    """
    path, mark, rest = text.partition("?")
    if not path.startswith("/"):
        raise ValueError(f"{text!r} does not start with '/'; write a path such as '/api/'")
    if mark and not query:
        raise ValueError(f"{text!r} has a query string; only the path is compared: remove '?{rest}'")
    if not _PATH_RE.match(path) or not _QUERY_RE.match(rest):
        raise ValueError(
            f"{text!r} contains characters requests never carry raw (spaces, non-ASCII, quotes...); write them "
            "percent-encoded, e.g. '%20' for a space"
        )
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"{text!r} has a '.' or '..' segment; write the path without it")
    return text


def parse_status_range(value: object) -> tuple[int, int]:
    """An inclusive range of HTTP statuses: an integer (204) or a string "200-399"."""
    help_text = "write a status (204) or an inclusive range ('200-399'), statuses from 100 to 599"
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (match := _STATUS_RANGE_RE.match(value.strip())):
        low, high = int(match[1]), int(match[2] or match[1])
    else:
        shown = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"{shown} is not a status or a status range; {help_text}")
    if not (100 <= low <= 599 and 100 <= high <= 599):
        raise ValueError(f"{value!r} is out of range; {help_text}")
    if low > high:
        raise ValueError(f"{value!r} is empty: {low} is above {high}; write the lower status first ('{high}-{low}')")
    return low, high


def parse_hash_on(text: str) -> tuple[HashSource, str | None]:
    """What balance = "hash" hashes: "client_ip", "uri", "header:<name>" (lower-cased) or "cookie:<name>"."""
    if text == "client_ip":
        return "client_ip", None
    if text == "uri":
        return "uri", None
    kind, sep, name = text.partition(":")
    if sep and kind == "header":
        return "header", parse_header_name(name)
    if sep and kind == "cookie":
        return "cookie", parse_cookie_name(name)
    options = ", ".join(repr(s) for s in _HASH_SOURCES)
    hint = "" if sep else suggest(text, ("client_ip", "uri"))
    raise ValueError(f"{text!r} is not one of {options}{hint}; e.g. 'header:X-User' or 'cookie:session'")

