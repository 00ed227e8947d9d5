"""What a key server agrees to sign: pure checks, no I/O, so each rule is tested on its own.

The point of these checks is that a key server must not be a *signing oracle*. A server that signs any digest it is
sent (gokeyless does) lets whoever controls an edge sign anything with the site's key: TLS 1.2 ServerKeyExchange
parameters for a handshake the owner never sees, a client-side CertificateVerify, or arbitrary data. Here the edge
sends the whole TLS 1.3 CertificateVerify input (RFC 8446 section 4.4.3), and only that shape is signed: 64 spaces,
the *server* context string, a zero byte and a transcript hash of SHA-256 or SHA-384 size. Such a signature is only
useful in a TLS 1.3 handshake as a server, which is what the owner delegated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tlsedge.tls.keyless.wire import ErrorCode, SignatureScheme

SERVER_CONTEXT_PREFIX = b" " * 64 + b"TLS 1.3, server CertificateVerify" + b"\x00"
TRANSCRIPT_HASH_SIZES = (32, 48)  # SHA-256 and SHA-384: the hashes of the TLS 1.3 cipher suites

ANY_EDGE = "*"

# Key kinds and the only schemes each may sign with: never PKCS#1 v1.5 (not allowed in TLS 1.3 CertificateVerify)
# nor SHA-1; RSA signs with PSS (RSAE: an rsaEncryption key), its salt as long as the hash (RFC 8446 section 4.2.3).
ALGORITHMS: dict[str, frozenset[int]] = {
    "p256": frozenset({SignatureScheme.ECDSA_SECP256R1_SHA256}),
    "p384": frozenset({SignatureScheme.ECDSA_SECP384R1_SHA384}),
    "rsa": frozenset(
        {SignatureScheme.RSA_PSS_RSAE_SHA256, SignatureScheme.RSA_PSS_RSAE_SHA384, SignatureScheme.RSA_PSS_RSAE_SHA512}
    ),
    "ed25519": frozenset({SignatureScheme.ED25519}),
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not signed: the wire error code and a short reason for the edge and the operation log."""

    code: ErrorCode
    reason: str


def check_payload(payload: bytes) -> Refusal | None:
    """None for a TLS 1.3 server CertificateVerify input; a refusal naming what is wrong otherwise."""
    prefix = SERVER_CONTEXT_PREFIX
    if payload.startswith(prefix):
        size = len(payload) - len(prefix)
        if size in TRANSCRIPT_HASH_SIZES:
            return None
        return Refusal(ErrorCode.PAYLOAD_REFUSED, f"transcript hash of {size} bytes (must be 32 or 48)")
    if payload.startswith(b" " * 64 + b"TLS 1.3, client CertificateVerify"):
        return Refusal(ErrorCode.PAYLOAD_REFUSED, "client CertificateVerify context (only server signatures)")
    return Refusal(ErrorCode.PAYLOAD_REFUSED, "not a TLS 1.3 server CertificateVerify input")


def check_algorithm(kind: str, algorithm: int) -> Refusal | None:
    """None when ``algorithm`` is one the key kind may sign with."""
    if algorithm in ALGORITHMS[kind]:
        return None
    allowed = ", ".join(f"0x{a:04x}" for a in sorted(ALGORITHMS[kind]))
    return Refusal(ErrorCode.ALGORITHM_REFUSED, f"algorithm 0x{algorithm:04x} does not fit a {kind} key ({allowed})")


def check_server_name(names: frozenset[str], server_name: str | None) -> Refusal | None:
    """None when the SNI is one of the key's names, exactly or under a ``*.`` wildcard of exactly one label.

    A request without SNI is refused: without a name the key server cannot tell which site the handshake is for.
    ``names`` are lower case without a trailing dot (as the configuration loader stores them).
    """
    if not server_name:
        return Refusal(ErrorCode.NAME_REFUSED, "no server name (SNI) in the request")
    name = server_name.lower().removesuffix(".")
    if "*" not in name and name in names:
        return None
    first, dot, parent = name.partition(".")
    if first and dot and "*" not in name and f"*.{parent}" in names:
        return None
    return Refusal(ErrorCode.NAME_REFUSED, f"server name {server_name[:64]!r} is not one of the key's names")


def check_edge(edges: frozenset[str], identities: Iterable[str]) -> Refusal | None:
    """None when one of the edge's certificate identities (or ``*``) is allowed. ``edges`` are case-folded."""
    if ANY_EDGE in edges:
        return None
    for identity in identities:
        if identity.casefold() in edges:
            return None
    return Refusal(ErrorCode.EDGE_REFUSED, "this edge may not use this key")


def edge_identities(peercert: dict) -> tuple[str, ...]:
    """An edge's identities from its *verified* client certificate (``SSLObject.getpeercert()``): DNS and URI
    subject alternative names, then the common name. The first one names the edge in logs and rate limits.

    They come from the certificate the TLS handshake verified against the owner's CA, never from the request, so an
    edge cannot claim to be another.
    """
    identities = [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    for rdn in peercert.get("subject", ()):
        identities.extend(value for attribute, value in rdn if attribute == "commonName")
    return tuple(identities)


RATE_REFUSAL = Refusal(ErrorCode.RATE_LIMITED, "edge over its rate")


class RateLimiter:
    """GCRA per edge identity: ``rate`` signatures per second with bursts of ``burst``, memory O(active edges).

    Each key keeps its theoretical arrival time (TAT); a request is allowed when it would not push the TAT more than
    ``burst`` intervals ahead of now. Time is passed in, so tests need no clock.
    """

    __slots__ = ("_burst_span", "_interval", "_tat")
    _PRUNE_AT = 4096

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be above zero and burst at least 1")
        self._interval = 1.0 / rate
        self._burst_span = burst * self._interval + 1e-9  # sums of intervals drift by an ulp or so
        self._tat: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        tat = max(self._tat.get(key, now), now) + self._interval
        if tat - now > self._burst_span:
            return False
        if len(self._tat) >= self._PRUNE_AT and key not in self._tat:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        self._tat[key] = tat
        return True
