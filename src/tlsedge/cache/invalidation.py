"""Invalidation by unsafe requests (RFC 9111 section 4.4).

A POST, PUT, DELETE, PATCH or any method the edge does not know may change the resource, so the stored copies of
its URL, and of the same-origin URLs its response points at (Location, Content-Location), must not be served again.
URLs on other origins are never touched: otherwise any site behind the edge could purge any other site's objects by
answering its own POSTs with a Location header pointing at them.
"""

from __future__ import annotations

SAFE_METHODS: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""The safe methods of RFC 9110 section 9.2.1. Method names are case-sensitive: ``get`` is an unknown method."""

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_SCHEME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."


class _AllMethodsExcept:
    """The set of every method but a few, which no frozenset can hold: ``method in UNSAFE_INVALIDATES``."""

    __slots__ = ("_excluded",)

    def __init__(self, excluded: frozenset[bytes]) -> None:
        self._excluded = excluded

    def __contains__(self, method: object) -> bool:
        return method not in self._excluded

    def __repr__(self) -> str:
        return f"every method except {b', '.join(sorted(self._excluded)).decode()}"


UNSAFE_INVALIDATES = _AllMethodsExcept(SAFE_METHODS)
"""The methods that invalidate: every method except GET, HEAD, OPTIONS and TRACE (RFC 9110 section 9.2.1), unknown
ones included, because RFC 9111 section 4.4 covers "methods whose safety is unknown"."""


def invalidation_targets(
    method: bytes,
    status: int,
    scheme: bytes,
    host: bytes,
    target: bytes,
    response_headers: list[tuple[bytes, bytes]],
) -> list[bytes]:
    """The URLs ``b"<scheme>://<host><path?query>"`` an unsafe request's response invalidates (RFC 9111 4.4).

    Only non-error responses (2xx, 3xx) invalidate: the target URI, then Location and Content-Location when they
    resolve (RFC 3986 section 5) to the same origin: same scheme, host and port, default ports made explicit for
    the comparison. Scheme and host are lower-cased; the request's path and query are kept byte for byte, and the
    URLs built from the headers reuse the request's ``host`` spelling so they match the keys its requests produce.
    An absolute-form target contributes its path and query; an authority-form or ``*`` target has no URL to
    invalidate.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    base = _path_query(target)
    if base is None:
        return []
    scheme = scheme.lower()
    host = host.lower()
    urls = [b"%s://%s%s" % (scheme, host, base)]
    origin = _host_port(host, scheme)
    if origin is None:
        return urls
    for name, value in response_headers:
        size = len(name)
        if (size == 8 or size == 16) and name.lower() in (b"location", b"content-location"):
            resolved = _resolve(value.strip(), scheme, origin, base)
            if resolved is not None:
                url = b"%s://%s%s" % (scheme, host, resolved)
                if url not in urls:
                    urls.append(url)
    return urls


def _path_query(target: bytes) -> bytes | None:
    """The path and query of a request target: origin-form as it is, absolute-form without its scheme and host."""
    if target.startswith(b"/"):
        return target
    scheme_end = target.find(b"://")
    if scheme_end <= 0 or not _is_scheme(target[:scheme_end]):
        return None
    rest = target[scheme_end + 3 :]
    cut = _authority_end(rest)
    path = rest[cut:]
    return path if path.startswith(b"/") else b"/" + path


def _resolve(reference: bytes, scheme: bytes, origin: tuple[bytes, int | None], base: bytes) -> bytes | None:
    """The path and query ``reference`` resolves to against ``base``, or None when it leaves the origin.

    RFC 3986 section 5.2.2 for the reference forms a Location can take; the fragment never reaches a cache key.
    """
    reference = reference.partition(b"#")[0]
    colon = reference.find(b":")
    if colon > 0 and _is_scheme(reference[:colon]):
        if reference[:colon].lower() != scheme or not reference.startswith(b"//", colon + 1):
            return None
        reference = reference[colon + 1 :]
    if reference.startswith(b"//"):
        rest = reference[2:]
        cut = _authority_end(rest)
        if _host_port(rest[:cut].lower(), scheme) != origin:
            return None
        path, question, query = rest[cut:].partition(b"?")
        return _remove_dot_segments(path or b"/") + question + query
    if not reference:
        return base
    base_path = base.partition(b"?")[0]
    if reference.startswith(b"?"):
        return base_path + reference
    path, question, query = reference.partition(b"?")
    if not path.startswith(b"/"):
        path = base_path[: base_path.rfind(b"/") + 1] + path
    return _remove_dot_segments(path) + question + query


def _authority_end(rest: bytes) -> int:
    """Where the authority that starts ``rest`` ends: at the first ``/`` or ``?``, or the end."""
    end = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    return end


def _host_port(authority: bytes, scheme: bytes) -> tuple[bytes, int | None] | None:
    """(host, port) of a lower-cased authority, the scheme's default port filled in; None when the port is bad."""
    host = authority.rpartition(b"@")[2]
    if host.startswith(b"["):
        close = host.find(b"]")
        if close < 0:
            return None
        host, port = host[: close + 1], host[close + 1 :]
        if port and not port.startswith(b":"):
            return None
        port = port[1:]
    else:
        host, _, port = host.partition(b":")
    if not port:
        return host, _DEFAULT_PORTS.get(scheme)
    if not port.isdigit() or len(port) > 5:
        return None
    return host, int(port)


def _is_scheme(candidate: bytes) -> bool:
    """RFC 3986 section 3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )."""
    return candidate[:1].isalpha() and not candidate.translate(None, _SCHEME_CHARS)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, so ``/a/../b`` and ``/b`` name the same stored object."""
    if b"." not in path:
        return path
    output: list[bytes] = []
    segments = path.split(b"/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b".":
            if last:
                output.append(b"")
        elif segment == b"..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append(b"")
        else:
            output.append(segment)
    result = b"/".join(output)
    return result if result.startswith(b"/") else b"/" + result
