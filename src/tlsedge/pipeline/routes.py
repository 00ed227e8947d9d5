"""Routing rules of a site, compiled once from its configuration: which pool serves a request, with which edits.

Everything a rule needs is prepared when the table is built: byte patterns, compiled regular expressions, the
header lines to add and the names to drop. A request then costs a few comparisons per rule it walks past, and a
site without rules costs nothing.

How the path is matched, and why
--------------------------------
The path is the request target up to ``?``, compared as raw bytes like nginx ``location`` does, after two steps:

* Percent-encoded *unreserved* characters (letters, digits, ``-._~``) are decoded and the remaining escapes upper-
  cased (RFC 3986 section 6.2.2). Every origin treats ``/%61pi/`` as ``/api/``; matching on the encoded spelling
  would let a client walk past the ``/api/`` rule (and its pool and header edits) while the origin still serves
  ``/api/``. Other escapes (``%2F``, ``%3F``, ``%25``...) stay encoded: they are different paths per RFC 3986 and
  decoding them would make ``/a%2Fb`` look like ``/a/b``. Config paths go through the same step.
* Dot-segments are *rejected*, not resolved: a path with a ``.`` or ``..`` segment raises `AmbiguousPath` (the data
  plane answers 400). Resolving them would mean matching one path and forwarding another, or rewriting what the
  origin receives; matching them raw would let ``/api/../admin`` take the ``/api/`` rule and reach the api pool
  with a path the origin resolves to ``/admin``. Browsers and HTTP libraries resolve dot-segments before sending,
  so only hand-made requests carry them. Segments are also split at ``\\``, ``%2F`` and ``%5C`` (origins that decode
  them or treat backslash as a separator) and cut at ``;`` (``..;`` is ``..`` to Java servlet containers), since a
  client could otherwise spell ``..`` in a way only the origin resolves.

The origin receives the request target unchanged except for the route's ``prefix_rewrite``, so what it resolves is
what was matched. Double-encoded dots (``%252e``) are left alone: they only matter to an origin that decodes twice.
Adjacent slashes are not merged: ``//admin`` does not match ``/admin``; routes choose a pool, they are not an access
list, and such a request simply goes to the pool an unknown path would go to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from tlsedge.config.schema import HeaderEdits, RouteConfig

P = TypeVar("P")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FORBIDDEN_IN_FIELDS = (b"\r", b"\n", b"\0")
# Single bytes are tested as ints: ``37 in path`` is several times faster than ``b"%" in path`` in CPython.
_PERCENT, _DOT, _BACKSLASH, _QUESTION = b"%.\\?"


class AmbiguousPath(ValueError):
    """A request path an origin could resolve differently from how it was routed; answer it with 400."""


def normalise_escapes(path: bytes) -> bytes:
    """Decode percent-encoded unreserved characters and upper-case the other escapes (RFC 3986 section 6.2.2)."""
    if _PERCENT not in path:
        return path
    parts = path.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            code = int(part[:2], 16)
            out.append(bytes((code,)) + part[2:] if code in _UNRESERVED else b"%" + part[:2].upper() + part[2:])
        else:
            out.append(b"%" + part)  # a stray "%": left for the origin to refuse
    return b"".join(out)


def has_dot_segment(path: bytes) -> bool:
    """Whether a (normalised) path holds a segment some origin would resolve as ``.`` or ``..``."""
    if _DOT not in path:
        return False
    if path.find(b"/.") < 0 and _BACKSLASH not in path and _PERCENT not in path:
        return False  # no segment starts with a dot
    unified = path.replace(b"\\", b"/").replace(b"%2F", b"/").replace(b"%5C", b"/")
    return any(segment.split(b";", 1)[0] in (b".", b"..") for segment in unified.split(b"/"))


def apply_edits(block: list[bytes], drop: frozenset[bytes], lines: bytes) -> list[bytes]:
    """Remove the fields named in `drop` (lower-case) from a header block, then append the prepared `lines`.

    A header block is what the data plane ``b"".join``s into a message head: a sequence of items, each either one
    field as four fragments (name, ``b": "``, value, ``b"\\r\\n"``) or one fragment of complete prepared lines
    ending in CRLF. The two are told apart by the first fragment: a field name never ends in CRLF (the parser
    refuses CR and LF in names). The result keeps that shape, so it joins into whole header lines and can be edited
    again; prepared-lines fragments are the edge's own and pass through untouched.

    The list passed in may be extended in place and returned: use the returned list.
    """
    if drop:
        out: list[bytes] = []
        extend = out.extend
        index, size = 0, len(block)
        while index < size:
            first = block[index]
            if first[-2:] == b"\r\n":
                out.append(first)
                index += 1
            else:
                if first.lower() not in drop:
                    extend(block[index : index + 4])
                index += 4
        block = out
    if lines:
        block.append(lines)
    return block


class Route(Generic[P]):
    """What a matched rule decides for a request, prepared so the data plane only reads attributes."""

    __slots__ = (
        "_prefix",
        "_replacement",
        "has_request_edits",
        "has_response_edits",
        "host",
        "name",
        "pool",
        "request_drop",
        "request_lines",
        "response_drop",
        "response_lines",
    )

    def __init__(
        self,
        name: str,
        pool: P,
        host: bytes | None = None,
        prefix: bytes | None = None,
        replacement: bytes | None = None,
        request_edits: HeaderEdits | None = None,
        response_edits: HeaderEdits | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.host = host
        self._prefix = prefix if replacement is not None else None
        self._replacement = replacement
        self.request_drop, self.request_lines = _prepare_edits(request_edits)
        self.response_drop, self.response_lines = _prepare_edits(response_edits)
        self.has_request_edits = bool(self.request_drop or self.request_lines)
        self.has_response_edits = bool(self.response_drop or self.response_lines)

    def rewrite(self, target: bytes) -> bytes:
        """The target sent to the origin: the matched prefix replaced, the query string kept, never an empty path.

        A target that does not start with the prefix (even once escapes are normalised) is returned unchanged.
        """
        prefix = self._prefix
        if prefix is None:
            return target
        if not target.startswith(prefix):
            if _PERCENT not in target:
                return target
            path, mark, query = target.partition(b"?")
            normalised = normalise_escapes(path)
            if not normalised.startswith(prefix):
                return target
            target = normalised + mark + query
        rewritten = self._replacement + target[len(prefix) :]
        return rewritten if rewritten[:1] == b"/" else b"/" + rewritten

    def __repr__(self) -> str:
        return f"<Route {self.name}>"


class _Rule(Generic[P]):
    """One compiled matching rule; the conditions left as None are not tested."""

    __slots__ = ("exact", "headers", "methods", "prefix", "prefix_length", "route", "search")

    def __init__(self, index: int, config: RouteConfig, pool: P) -> None:
        self.methods = frozenset(m.upper().encode("ascii") for m in config.methods) or None
        self.exact = _config_path(config.path)
        self.prefix = _config_path(config.path_prefix)
        self.prefix_length = len(self.prefix) if self.prefix is not None else 0
        self.search = _compile(index, config.path_regex)
        self.headers = tuple(
            (name.lower().encode("ascii"), None if value is None else value.encode()) for name, value in config.headers
        )
        if config.prefix_rewrite is not None and self.prefix is None:
            raise ValueError(f"route[{index}]: prefix_rewrite needs path_prefix")
        self.route = Route(
            _describe(index, config),
            pool,
            host=_field_value(config.host) if config.host is not None else None,
            prefix=self.prefix,
            replacement=_config_path(config.prefix_rewrite),
            request_edits=config.request_headers,
            response_edits=config.response_headers,
        )

    @property
    def needs_path(self) -> bool:
        return self.exact is not None or self.prefix is not None or self.search is not None


class RouteTable(Generic[P]):
    """The routing rules of a site, in order: the first rule whose every condition holds picks the route."""

    __slots__ = ("_header_names", "_needs_path", "_rules", "default")

    def __init__(self, routes: Sequence[RouteConfig], pools: Mapping[str, P], default: P) -> None:
        rules: list[_Rule[P]] = []
        for index, config in enumerate(routes):
            if config.pool not in pools:
                raise ValueError(f"route[{index}]: unknown pool {config.pool!r}")
            rules.append(_Rule(index, config, pools[config.pool]))
        self._rules = tuple(rules)
        self._needs_path = any(rule.needs_path for rule in rules)
        self._header_names = frozenset(name for rule in rules for name, _ in rule.headers)
        self.default: Route[P] = Route("default", default)

    def match(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Route[P]:
        """The route of a request (`target` in origin-form); raises `AmbiguousPath` for dot-segment paths.

        Paths are only looked at when some rule has a path condition, headers only when a rule that got that far
        has header conditions; a table without rules returns the default at once.
        """
        rules = self._rules
        if not rules:
            return self.default
        path = b""
        if self._needs_path:
            path = normalise_escapes(target[: target.find(b"?")] if _QUESTION in target else target)
            if has_dot_segment(path):
                raise AmbiguousPath("dot-segment in the request path")
        seen: dict[bytes, list[bytes]] | None = None
        for rule in rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            if rule.exact is not None and path != rule.exact:
                continue
            if rule.prefix is not None and path[: rule.prefix_length] != rule.prefix:  # twice as fast as startswith
                continue
            if rule.search is not None and rule.search(path) is None:
                continue
            if rule.headers:
                if seen is None:
                    seen = self._collect(headers)
                if not _headers_hold(rule.headers, seen):
                    continue
            return rule.route
        return self.default

    def _collect(self, headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
        """Values of the header names some rule tests, lower-cased names as keys; one pass over the headers."""
        wanted = self._header_names
        seen: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lname = name.lower()
            if lname in wanted:
                seen.setdefault(lname, []).append(value)
        return seen

    @property
    def routes(self) -> tuple[Route[P], ...]:
        """Every rule's route, in order (for logs, metrics and tests)."""
        return tuple(rule.route for rule in self._rules)


def _headers_hold(conditions: tuple[tuple[bytes, bytes | None], ...], seen: dict[bytes, list[bytes]]) -> bool:
    """Every condition holds: the header is present and, when a value is given, one of its occurrences equals it."""
    for name, value in conditions:
        values = seen.get(name)
        if values is None or (value is not None and value not in values):
            return False
    return True


def _config_path(path: str | None) -> bytes | None:
    return None if path is None else normalise_escapes(path.encode())


def _compile(index: int, pattern: str | None) -> Callable[[bytes], re.Match[bytes] | None] | None:
    """A bound ``search`` of the pattern compiled for bytes, so matching never decodes the path."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern.encode()).search
    except re.error as exc:
        raise ValueError(f"route[{index}]: path_regex {pattern!r} is not a valid bytes pattern: {exc}") from exc


def _describe(index: int, config: RouteConfig) -> str:
    """The route's name in logs, nginx-like: ``route[2] /api/ -> api``, ``= /login``, ``~ ^/u/\\d+``."""
    if config.path is not None:
        where = f"= {config.path}"
    elif config.path_prefix is not None:
        where = config.path_prefix
    elif config.path_regex is not None:
        where = f"~ {config.path_regex}"
    else:
        where = "*"
    methods = f" {','.join(config.methods)}" if config.methods else ""
    return f"route[{index}]{methods} {where} -> {config.pool}"


def _prepare_edits(edits: HeaderEdits | None) -> tuple[frozenset[bytes], bytes]:
    """(lower-case names to drop, header lines to append): set = drop then add, so it replaces every occurrence."""
    if not edits:
        return frozenset(), b""
    drop = frozenset(name.lower().encode("ascii") for name in (*edits.remove, *(name for name, _ in edits.set)))
    lines = b"".join(
        b"%s: %s\r\n" % (_field_name(name), _field_value(value)) for name, value in (*edits.set, *edits.add)
    )
    return drop, lines


def _field_name(name: str) -> bytes:
    raw = name.encode("ascii")
    if not raw or any(c in raw for c in (*_FORBIDDEN_IN_FIELDS, b":", b" ")):
        raise ValueError(f"invalid header name {name!r}")
    return raw


def _field_value(value: str) -> bytes:
    """A config value as sent: UTF-8, and never with CR, LF or NUL (which would inject header lines)."""
    raw = value.encode()
    if any(c in raw for c in _FORBIDDEN_IN_FIELDS):
        raise ValueError(f"invalid header value {value!r}")
    return raw
