"""Stateless keyless session tickets: sealing, rotation, tampering, and the state codec."""

from __future__ import annotations

import os

import pytest

from tlsedge.tls.keyless.tickets import TicketKeys, TicketState

STATE = TicketState(
    psk=os.urandom(32),
    cipher_suite=0x1301,
    issued_ms=1_700_000_000_123,
    age_add=0xDEADBEEF,
    lifetime=86400,
    identity=os.urandom(32),
    alpn="http/1.1",
    server_name="site.example",
)


def test_seal_open_round_trip_and_fresh_nonces() -> None:
    keys = TicketKeys.generate()
    first, second = keys.seal(b"state"), keys.seal(b"state")
    assert first != second  # a random nonce per ticket
    assert keys.open(first) == keys.open(second) == b"state"


def test_another_process_with_the_same_keys_opens_it() -> None:
    material = [(b"key-2", os.urandom(32)), (b"key-1", os.urandom(32))]
    assert TicketKeys(material).open(TicketKeys(list(material)).seal(b"shared")) == b"shared"


def test_rotation_keeps_old_tickets_until_their_key_is_dropped() -> None:
    old, new = (b"old-key", os.urandom(32)), (b"new-key", os.urandom(32))
    ticket = TicketKeys([old]).seal(b"before rotation")
    rotated = TicketKeys([new, old])
    assert rotated.open(ticket) == b"before rotation"
    assert rotated.open(rotated.seal(b"after")) == b"after"
    assert TicketKeys([new]).open(ticket) is None


@pytest.mark.parametrize("position", [0, 1, 3, 20, -1])
def test_tampered_tickets_do_not_open(position: int) -> None:
    keys = TicketKeys([(b"abcd", os.urandom(32))])
    ticket = bytearray(keys.seal(b"state"))
    ticket[position] ^= 0x40
    assert keys.open(bytes(ticket)) is None


@pytest.mark.parametrize("ticket", [b"", b"\x01", b"\x01\x04abcd", os.urandom(64), b"\x01\x04abcd" + bytes(2000)])
def test_malformed_tickets_do_not_open(ticket: bytes) -> None:
    assert TicketKeys([(b"abcd", os.urandom(32))]).open(ticket) is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one"),
        ([(b"abc", bytes(32))], "4 to 16 bytes"),
        ([(b"abcd", bytes(16))], "32 bytes"),
        ([(b"abcd", bytes(32)), (b"abcd", bytes(32))], "twice"),
    ],
)
def test_bad_keys_are_refused_with_a_reason(keys: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TicketKeys(keys)


def test_state_codec_round_trip_is_compact() -> None:
    encoded = STATE.encode()
    assert len(encoded) < 100
    decoded = TicketState.decode(encoded)
    assert decoded is not None
    assert decoded.psk == STATE.psk and decoded.identity == STATE.identity[:8]
    assert (decoded.cipher_suite, decoded.issued_ms, decoded.age_add, decoded.lifetime) == (
        0x1301, 1_700_000_000_123, 0xDEADBEEF, 86400
    )
    assert (decoded.alpn, decoded.server_name) == ("http/1.1", "site.example")
    bare = TicketState(STATE.psk, 0x1303, 1, 2, 3, STATE.identity, None, None)
    assert TicketState.decode(bare.encode()) == TicketState(STATE.psk, 0x1303, 1, 2, 3, STATE.identity[:8], None, None)


def test_state_decode_rejects_truncation_and_other_versions() -> None:
    encoded = STATE.encode()
    for length in range(len(encoded)):
        assert TicketState.decode(encoded[:length]) is None
    assert TicketState.decode(encoded + b"x") is None
    assert TicketState.decode(b"\x02" + encoded[1:]) is None
