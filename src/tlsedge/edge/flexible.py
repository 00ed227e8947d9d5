"""Detecting the flexible-mode redirect loop, as a pure function over the response head.

With ``origin_tls = "flexible"`` the edge speaks plain HTTP to the origin. An origin configured to force HTTPS answers
every such request with a redirect to the https URL, which is exactly the URL the client already asked for: the
browser follows it, the edge forwards it over HTTP again, and the loop ends only with the browser's "too many
redirects". Recognising it lets the edge answer once with a page that names the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlsedge.edge.headers import split_host_port

if TYPE_CHECKING:
    from tlsedge.edge.exchange import Exchange


def redirects_to_itself(headers: list[tuple[bytes, bytes]], ex: Exchange) -> bool:
    """Whether the response's Location is the request's own URL on https (any port, same host, same target)."""
    for name, value in headers:
        if name.lower() == b"location":
            return _same_https_url(value.strip(), ex.host, ex.target)
    return False


def _same_https_url(location: bytes, host: bytes, target: bytes) -> bool:
    if location[:8].lower() != b"https://":
        return False
    rest = location[8:]
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    return split_host_port(authority) == host and path == target
