"""Header rules for a proxy hop, as pure functions over raw ``(name, value)`` byte pairs.

Headers stay bytes on the hot path: only the few names the proxy acts on are compared, lower-cased once.
"""

from __future__ import annotations

from http import HTTPStatus

# RFC 9110 section 7.6.1: hop-by-hop fields never cross a proxy; Transfer-Encoding is re-framed by us.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Client-sent forwarding fields are only kept from trusted proxies.
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})

VIA_TOKEN = b"1.1 tlsedge"

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    """The response status line; unknown codes keep their number with a neutral phrase."""
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Status\r\n" % status
    return line


# Fields a Connection header may not make hop-by-hop: dropping them would change the message's framing or target.
_NEVER_DROPPED = frozenset({b"close", b"keep-alive", b"content-length", b"host", b"transfer-encoding"})


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names a Connection header declares hop-by-hop (RFC 9110 section 7.6.1), minus those we keep.

    ``Connection: content-length`` or ``Connection: host`` would otherwise let a client or an origin remove the
    framing or the routing of the message on the next hop: a request smuggling shape.
    """
    return {token.strip().lower() for token in value.split(b",") if token.strip()} - _NEVER_DROPPED


def split_host_port(host: bytes) -> bytes:
    """The host part of a Host header, lower-cased, without port or brackets' port; b"" when malformed."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return b""
        return host[: end + 1]
    colon = host.rfind(b":")
    if colon >= 0:
        port = host[colon + 1 :]
        if port and not port.isdigit():
            return b""
        host = host[:colon]
    return host.rstrip(b".")


def is_valid_host(host: bytes) -> bool:
    """Reject Host values that could confuse routing or logs: only DNS characters or a bracketed IPv6 literal."""
    if not host or len(host) > 253:
        return False
    if host.startswith(b"["):
        return host.endswith(b"]") and all(c in b"0123456789abcdef:." for c in host[1:-1])
    return all(c in _HOST_CHARS for c in host)


_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")
