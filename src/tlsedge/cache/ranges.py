"""Range requests answered from a stored full response (RFC 9110 section 14).

parse_range decides what a Range header asks for, if_range_allows whether it still applies, and range_reply lays
out the 206 or 416: its fields, and the slices of the stored body to write with the bytes that go before each, so
the caller streams the stored body without assembling the answer in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MAX_RANGES = 16
"""More ranges than this in one request and the Range header is ignored (a full 200): many small or overlapping
ranges cost the edge far more than the client (RFC 9110 section 14.2 on denial of service)."""

# A position with more digits is past any stored body; int() would refuse huge digit strings with an error anyway.
_MAX_DIGITS = 18
_BEYOND = 10**18
_BOUNDARY_CHARS = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_range(value: bytes, size: int) -> list[tuple[int, int]] | Literal["unsatisfiable"] | None:
    """The byte ranges a Range field asks of a ``size``-byte representation, as [(start, end_inclusive), ...].

    RFC 9110 sections 14.1.2 and 14.2: None means ignore the field and send the whole representation (a unit other
    than ``bytes``, invalid syntax anywhere, a range whose last position precedes its first, more than MAX_RANGES
    ranges); "unsatisfiable" means 416 (no range starts inside the representation, zero-length suffixes, any range
    of an empty representation). Ends are clamped to size - 1; several ranges are sorted and overlapping or adjacent
    ones coalesced (section 14.6 allows it), so no byte is sent twice.
    """
    unit, equals, specs = value.strip().partition(b"=")
    if not equals or unit.lower() != b"bytes":
        return None
    ranges = []
    count = 0
    for spec in specs.split(b","):
        spec = spec.strip(b" \t")
        if not spec:
            continue  # empty list elements are allowed (RFC 9110 section 5.6.1)
        count += 1
        if count > MAX_RANGES:
            return None
        first, dash, last = spec.partition(b"-")
        if not dash:
            return None
        if first:
            if not first.isdigit() or (last and not last.isdigit()):
                return None
            start = _position(first)
            end = _position(last) if last else _BEYOND
            if end < start:
                return None
            if start < size:
                ranges.append((start, min(end, size - 1)))
        else:
            if not last.isdigit():
                return None
            suffix = _position(last)
            if suffix and size:
                ranges.append((max(0, size - suffix), size - 1))
    if not count:
        return None
    if not ranges:
        return "unsatisfiable"
    if len(ranges) == 1:
        return ranges
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        previous_start, previous_end = merged[-1]
        if start <= previous_end + 1:
            merged[-1] = (previous_start, max(previous_end, end))
        else:
            merged.append((start, end))
    return merged


def if_range_allows(value: bytes, etag: bytes | None, last_modified: bytes | None) -> bool:
    """Whether an If-Range condition holds, so the Range applies (RFC 9110 section 13.1.5); False means send 200.

    An entity-tag must match by strong comparison: neither side weak, the same bytes. A date must exactly match the
    stored Last-Modified; the edge takes the client's echo of that value as the strong validator it must be.
    """
    value = value.strip()
    if not value:
        return False
    if value.startswith(b'"'):
        return etag is not None and not etag.startswith(b"W/") and value == etag.strip()
    if value.startswith(b"W/"):
        return False
    return last_modified is not None and value == last_modified.strip()


@dataclass(slots=True)
class RangeReply:
    """The status, fields and body layout of a range answer; ``length`` is the Content-Length to send."""

    status: int  # 206 or 416
    fields: list[tuple[bytes, bytes]]  # Content-Range (single) or Content-Type multipart/byteranges; boundary
    parts: list[tuple[bytes, int, int]]  # (prefix bytes to write before the slice, start, end_exclusive)
    epilogue: bytes  # multipart closing delimiter (b"" for single)
    length: int  # total body length


def range_reply(
    ranges: list[tuple[int, int]] | Literal["unsatisfiable"], size: int, content_type: bytes | None, boundary: bytes
) -> RangeReply:
    """The 206 or 416 for ranges from parse_range over a ``size``-byte stored body.

    One range: Content-Range and the bare slice (the stored Content-Type still applies). Several: a
    multipart/byteranges body (RFC 9110 section 14.6) whose parts carry the stored Content-Type, when known, and
    their Content-Range; the CRLF before each delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
    Unsatisfiable: 416 with ``Content-Range: bytes */size`` and no body. ``boundary`` must be 1 to 70 RFC 2046
    boundary characters not ending in a space; the caller draws it at random so no stored body contains it.
    """
    if ranges == "unsatisfiable":
        return RangeReply(416, [(b"Content-Range", b"bytes */%d" % size)], [], b"", 0)
    if not ranges:
        raise ValueError("range_reply needs at least one range: parse_range returns None or 'unsatisfiable' instead")
    if len(ranges) == 1:
        start, end = ranges[0]
        return RangeReply(
            206,
            [(b"Content-Range", b"bytes %d-%d/%d" % (start, end, size))],
            [(b"", start, end + 1)],
            b"",
            end + 1 - start,
        )
    if not 0 < len(boundary) <= 70 or boundary.endswith(b" ") or boundary.translate(None, _BOUNDARY_CHARS):
        raise ValueError(f"multipart boundary {boundary!r} is not 1-70 RFC 2046 boundary characters")
    type_line = b"Content-Type: " + content_type + b"\r\n" if content_type else b""
    delimiter = b"--" + boundary + b"\r\n"
    parts = []
    length = 0
    for start, end in ranges:
        prefix = b"%s%s%sContent-Range: bytes %d-%d/%d\r\n\r\n" % (
            b"\r\n" if parts else b"",
            delimiter,
            type_line,
            start,
            end,
            size,
        )
        parts.append((prefix, start, end + 1))
        length += len(prefix) + end + 1 - start
    epilogue = b"\r\n--" + boundary + b"--\r\n"
    parameter = boundary if not boundary.translate(None, _TOKEN_CHARS) else b'"' + boundary + b'"'
    fields = [(b"Content-Type", b"multipart/byteranges; boundary=" + parameter)]
    return RangeReply(206, fields, parts, epilogue, length + len(epilogue))


def _position(digits: bytes) -> int:
    """A byte position; one too long to be inside any stored body counts as beyond it."""
    return _BEYOND if len(digits) > _MAX_DIGITS else int(digits)
