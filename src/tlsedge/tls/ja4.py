"""JA4 TLS client fingerprints, computed from a parsed :class:`~tlsedge.tls.clienthello.ClientHello`.

Why: in pass-through mode the edge never sees plaintext, so the ClientHello is the only thing it knows about a client
besides its address. JA4 (FoxIO, BSD-3-Clause; ``technical_details/JA4.md`` in github.com/FoxIO-LLC/ja4) condenses it
into a short, log-friendly string such as ``t13d1516h2_8daaf6152771_e5627efa2ab1`` that is stable across connections of
one client build, insensitive to GREASE and to extension-order randomisation, and already used by other tools, so
operators can compare, share and ban by it.

The three parts, as the specification defines them:

- ``a``: transport (``t`` TCP, ``q`` QUIC, ``d`` DTLS), version (highest of supported_versions, else the legacy
  version), ``d``/``i`` for whether the SNI extension is present, the cipher and extension counts without GREASE
  (capped at 99, extensions counted with SNI and ALPN), and two characters from the first ALPN value (``00`` without).
- ``b``: first 12 hex digits of SHA-256 over the sorted cipher list (``0a0b,1301,...``), GREASE removed.
- ``c``: the same over the sorted extension list without GREASE, SNI (0x0000) and ALPN (0x0010), then ``_`` and the
  signature algorithms in their original order (no ``_`` when there are none).

An empty list hashes to ``000000000000`` rather than to the hash of nothing, as the specification asks.

Two places where FoxIO's own tools differ from their specification, and this module follows the specification: the
ALPN characters of a non-alphanumeric value are taken from its hex form (the tools print ``99``), and a one-character
ALPN value gives that character twice (the Rust tool prints it then ``0``). Both only matter for unusual clients.

Per connection this costs a few list comprehensions, two sorts of at most a few dozen ints, two ``bytes.hex`` calls
(which write the ``xxxx,yyyy`` lists in C) and two SHA-256s: no regular expression, no per-value string formatting.
"""

from __future__ import annotations

import struct
from hashlib import sha256
from typing import Final

from tlsedge.tls.clienthello import ClientHello

__all__ = ["ja4", "ja4_raw"]

#: RFC 8701 GREASE values (0x0A0A, 0x1A1A, ... 0xFAFA): a set lookup is cheaper than calling ``is_grease``.
_GREASE: Final = frozenset(0x0A0A + 0x1010 * i for i in range(16))

_EXT_SERVER_NAME: Final = 0x0000
_EXT_ALPN: Final = 0x0010
_NOT_HASHED_EXTENSIONS: Final = frozenset((_EXT_SERVER_NAME, _EXT_ALPN))

#: Version codes from the specification; anything else is ``00``.
_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}

_TRANSPORTS: Final = frozenset("tqd")
#: Two-digit counts, capped at 99 by the caller.
_COUNTS: Final = tuple(f"{n:02d}" for n in range(100))
_EMPTY_HASH: Final = "000000000000"


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """The JA4 fingerprint of ``hello`` (``t13d1516h2_8daaf6152771_e5627efa2ab1``).

    ``transport`` is ``"t"`` for TLS over TCP (every hello the edge's listener parses), ``"q"`` for QUIC and ``"d"``
    for DTLS. Raises :class:`ValueError` only for another ``transport``, which is a programming error.
    """
    prefix, ciphers, extensions = _parts(hello, transport)
    return f"{prefix}_{_hash12(ciphers)}_{_hash12(extensions)}"


def ja4_raw(hello: ClientHello, transport: str = "t") -> str:
    """The ``ja4_r`` form: :func:`ja4` with the hashed lists written out, for logs and for debugging a fingerprint.

    ``t13d1516h2_002f,0035,...,cca9_0005,000a,...,ff01_0403,0804,...,0601``.
    """
    prefix, ciphers, extensions = _parts(hello, transport)
    return f"{prefix}_{ciphers}_{extensions}"


def _parts(hello: ClientHello, transport: str) -> tuple[str, str, str]:
    """The ``a`` part and the two lists ``b`` and ``c`` hash, as text."""
    if transport not in _TRANSPORTS:
        raise ValueError(f"JA4 transport must be 't', 'q' or 'd', not {transport!r}")
    ciphers = sorted(c for c in hello.cipher_suites if c not in _GREASE)
    extensions = [e for e in hello.extensions if e not in _GREASE]
    sig_algs = [s for s in hello.signature_algorithms if s not in _GREASE]

    # supported_versions is already free of GREASE; without it (or with nothing but GREASE) the legacy field counts.
    version = max(hello.supported_versions) if hello.supported_versions else hello.legacy_version
    prefix = (
        f"{transport}{_VERSIONS.get(version, '00')}{'d' if _EXT_SERVER_NAME in extensions else 'i'}"
        f"{_COUNTS[min(len(ciphers), 99)]}{_COUNTS[min(len(extensions), 99)]}"
        f"{_alpn_chars(hello.alpn[0]) if hello.alpn else '00'}"
    )
    hashed_extensions = _hex_list(sorted(e for e in extensions if e not in _NOT_HASHED_EXTENSIONS))
    if sig_algs:
        hashed_extensions = f"{hashed_extensions}_{_hex_list(sig_algs)}"
    return prefix, _hex_list(ciphers), hashed_extensions


def _hex_list(values: list[int]) -> str:
    """``[0x1301, 0xC02B]`` as ``"1301,c02b"``: packed big-endian, then hex-encoded with a separator, all in C."""
    if not values:
        return ""
    return struct.pack(f">{len(values)}H", *values).hex(",", 2)


def _hash12(text: str) -> str:
    return sha256(text.encode("ascii")).hexdigest()[:12] if text else _EMPTY_HASH


def _alpn_chars(name: str) -> str:
    """The first and last characters of the first ALPN value (``h2`` for "h2", ``h1`` for "http/1.1").

    When either is not an ASCII letter or digit, the first and last characters of the value's hex form are used
    instead (``0x30 0xAB`` gives ``3b``), so the fingerprint stays printable and unambiguous. ALPN names are opaque
    bytes, kept by the parser as latin-1 text, which maps each byte to one character.
    """
    if not name:
        return "00"
    first, last = name[0], name[-1]
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    hexed = name.encode("latin-1").hex()
    return hexed[0] + hexed[-1]
