"""What the key server agrees to sign, rule by rule, without sockets."""

from __future__ import annotations

import hashlib

import pytest

from tlsedge.keyserver.policy import (
    RateLimiter,
    check_algorithm,
    check_edge,
    check_payload,
    check_server_name,
    edge_identities,
)
from tlsedge.tls.keyless.wire import ErrorCode

SPACES = b" " * 64
SERVER = SPACES + b"TLS 1.3, server CertificateVerify\x00"


@pytest.mark.parametrize("size", [32, 48])
def test_tls13_server_certificate_verify_inputs_pass(size: int) -> None:
    assert check_payload(SERVER + b"\x01" * size) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (hashlib.sha256(b"anything").digest(), "not a TLS 1.3 server CertificateVerify input"),  # bare digest
        (hashlib.sha384(b"anything").digest(), "not a TLS 1.3"),
        (b"", "not a TLS 1.3"),
        (SPACES + b"TLS 1.3, client CertificateVerify\x00" + b"\x01" * 32, "client CertificateVerify"),
        # TLS 1.2 ServerKeyExchange: client_random + server_random + ECDH params, no context string at all
        (b"\x11" * 32 + b"\x22" * 32 + b"\x03\x00\x17\x41\x04" + b"\x33" * 64, "not a TLS 1.3"),
        (b" " * 63 + b"TLS 1.3, server CertificateVerify\x00" + b"\x01" * 32, "not a TLS 1.3"),  # 63 spaces
        (SPACES + b"TLS 1.3, server CertificateVerify" + b"\x01" * 33, "not a TLS 1.3"),  # no zero separator
        (SPACES + b"tls 1.3, server CertificateVerify\x00" + b"\x01" * 32, "not a TLS 1.3"),
        (SERVER + b"\x01" * 20, "transcript hash of 20 bytes"),  # SHA-1 sized
        (SERVER + b"\x01" * 64, "transcript hash of 64 bytes"),  # SHA-512 sized: no TLS 1.3 suite uses it
        (SERVER + b"\x01" * 33, "transcript hash of 33 bytes"),
        (SERVER, "transcript hash of 0 bytes"),
        (SERVER + b"\x01" * 32 + b"extra data to sign" * 4, "transcript hash of"),
    ],
)
def test_anything_else_is_refused(payload: bytes, reason: str) -> None:
    refusal = check_payload(payload)
    assert refusal is not None and refusal.code == ErrorCode.PAYLOAD_REFUSED
    assert reason in refusal.reason


@pytest.mark.parametrize(
    ("kind", "allowed"),
    [
        ("p256", {0x0403}),
        ("p384", {0x0503}),
        ("rsa", {0x0804, 0x0805, 0x0806}),
        ("ed25519", {0x0807}),
    ],
)
def test_algorithm_must_fit_the_key(kind: str, allowed: set[int]) -> None:
    every = {0x0401, 0x0501, 0x0601, 0x0201, 0x0203, 0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0807,
             0x0808, 0x0809, 0x080A, 0x080B}
    for algorithm in every:
        refusal = check_algorithm(kind, algorithm)
        if algorithm in allowed:
            assert refusal is None, hex(algorithm)
        else:
            assert refusal is not None and refusal.code == ErrorCode.ALGORITHM_REFUSED, hex(algorithm)
            assert f"0x{algorithm:04x}" in refusal.reason and kind in refusal.reason


NAMES = frozenset({"shop.example", "*.shop.example"})


@pytest.mark.parametrize("name", ["shop.example", "SHOP.Example", "shop.example.", "www.shop.example"])
def test_server_names_of_the_key_pass(name: str) -> None:
    assert check_server_name(NAMES, name) is None


@pytest.mark.parametrize(
    "name", [None, "", "a.b.shop.example", "evil.example", "shopexample", "*.shop.example", "x*.shop.example",
             ".shop.example", "example"],
)
def test_other_server_names_are_refused(name: str | None) -> None:
    refusal = check_server_name(NAMES, name)
    assert refusal is not None and refusal.code == ErrorCode.NAME_REFUSED


def test_wildcard_covers_exactly_one_label_and_not_the_apex() -> None:
    wild_only = frozenset({"*.shop.example"})
    assert check_server_name(wild_only, "a.shop.example") is None
    assert check_server_name(wild_only, "shop.example") is not None
    assert check_server_name(wild_only, "a.b.shop.example") is not None


def test_edges() -> None:
    allowed = frozenset({"edge-1.example", "spiffe://edges/paris-1"})
    assert check_edge(allowed, ("EDGE-1.example",)) is None
    assert check_edge(allowed, ("other.example", "spiffe://edges/paris-1")) is None
    refusal = check_edge(allowed, ("edge-2.example",))
    assert refusal is not None and refusal.code == ErrorCode.EDGE_REFUSED
    assert check_edge(allowed, ()) is not None
    assert check_edge(frozenset({"*"}), ()) is None


def test_identities_come_from_sans_then_common_name() -> None:
    peercert = {
        "subject": ((("countryName", "FR"),), (("commonName", "edge one"),)),
        "subjectAltName": (("DNS", "edge-1.example"), ("IP Address", "192.0.2.1"), ("URI", "spiffe://e/1")),
    }
    assert edge_identities(peercert) == ("edge-1.example", "spiffe://e/1", "edge one")
    assert edge_identities({}) == ()


def test_rate_limiter_allows_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=5)
    now = 1000.0
    assert [limiter.allow("edge-1", now) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("edge-2", now)  # per edge
    assert not limiter.allow("edge-1", now + 0.05)
    assert limiter.allow("edge-1", now + 0.1)  # one interval later: one more
    assert not limiter.allow("edge-1", now + 0.1)
    assert [limiter.allow("edge-1", now + 10) for _ in range(6)] == [True] * 5 + [False]  # rested: a full burst


def test_rate_limiter_forgets_idle_edges() -> None:
    limiter = RateLimiter(rate=1000.0, burst=1)
    for index in range(RateLimiter._PRUNE_AT):
        assert limiter.allow(f"edge-{index}", 0.0)
    assert limiter.allow("late", 10.0)
    assert len(limiter._tat) == 1
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
