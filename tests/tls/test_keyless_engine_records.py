"""The keyless record layer on its own: key derivation (RFC 8448 vectors), nonces, framing, padding, limits."""

from __future__ import annotations

import pytest
from aioquic.tls import AlertDescription, CipherSuite
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlsedge.tls.keyless.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    MAX_EMPTY_RECORDS,
    MAX_PLAINTEXT,
    FatalAlert,
    RecordReader,
    RecordWriter,
    TrafficKeys,
)

# RFC 8448 section 3: the server handshake traffic secret and the key and IV derived from it.
SECRET = bytes.fromhex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
KEY = bytes.fromhex("3fce516009c21727d0f2e4e86ee403bc")
IV = bytes.fromhex("5d313eb2671276ee13000b30")


def protected(keys: TrafficKeys, content_type: int, content: bytes, padding: int = 0) -> bytes:
    """A protected record built by hand, with ``padding`` zero bytes after the content type."""
    inner = content + bytes((content_type,)) + bytes(padding)
    header = bytes((APPLICATION_DATA, 3, 3)) + (len(inner) + 16).to_bytes(2, "big")
    return header + keys.seal(inner, header)


def pair(suite: int = CipherSuite.AES_128_GCM_SHA256) -> tuple[RecordWriter, RecordReader]:
    writer, reader = RecordWriter(), RecordReader()
    writer.key = TrafficKeys(suite, SECRET if suite != CipherSuite.AES_256_GCM_SHA384 else SECRET + bytes(16))
    reader.key = TrafficKeys(suite, writer.key.secret)
    return writer, reader


def read_all(reader: RecordReader) -> list[tuple[int, bytes]]:
    records = []
    while (record := reader.next_record()) is not None:
        records.append(record)
    return records


def expect_alert(alert: int, reader: RecordReader, data: bytes) -> FatalAlert:
    reader.feed(data)
    with pytest.raises(FatalAlert) as caught:
        read_all(reader)
    assert caught.value.alert == alert, caught.value.reason
    return caught.value


def test_keys_follow_rfc_8448_and_nonces_are_iv_xor_sequence() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    reference = AESGCM(KEY)
    header = b"\x17\x03\x03\x00\x16"
    for seq in range(3):
        nonce = (int.from_bytes(IV, "big") ^ seq).to_bytes(12, "big")
        assert keys.seal(b"hello\x17", header) == reference.encrypt(nonce, b"hello\x17", header)
    assert keys.seq == 3


def test_key_update_secret_is_traffic_upd_label() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    updated = keys.updated()
    assert updated.secret != keys.secret and len(updated.secret) == 32 and updated.seq == 0
    assert updated.updated().secret != updated.secret
    writer, reader = RecordWriter(), RecordReader()
    writer.key, reader.key = keys.updated(), TrafficKeys(keys.cipher_suite, keys.secret).updated()
    writer.write(APPLICATION_DATA, b"after update")
    reader.feed(writer.take())
    assert read_all(reader) == [(APPLICATION_DATA, b"after update")]


@pytest.mark.parametrize("suite", [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384,
                                   CipherSuite.CHACHA20_POLY1305_SHA256])
def test_round_trip_splits_into_full_records(suite: int) -> None:
    writer, reader = pair(suite)
    data = bytes(range(256)) * 200  # 51200 bytes: 3 full records and a partial one
    writer.write(APPLICATION_DATA, memoryview(data))
    wire = writer.take()
    assert len(wire) == len(data) + 4 * (5 + 1 + 16)
    reader.feed(wire)
    records = read_all(reader)
    assert [len(r[1]) for r in records] == [MAX_PLAINTEXT] * 3 + [len(data) - 3 * MAX_PLAINTEXT]
    assert b"".join(r[1] for r in records) == data


def test_any_fragmentation_of_the_stream() -> None:
    writer, reader = pair()
    writer.write(HANDSHAKE, b"\x14\x00\x00\x01x")
    writer.write(APPLICATION_DATA, b"payload")
    wire = writer.take()
    got = []
    for i in range(len(wire)):
        reader.feed(wire[i : i + 1])
        got += read_all(reader)
    assert got == [(HANDSHAKE, b"\x14\x00\x00\x01x"), (APPLICATION_DATA, b"payload")]
    assert reader.buffered == 0


def test_padding_is_removed_and_all_padding_is_refused() -> None:
    _, reader = pair()
    sender = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    reader.feed(protected(sender, APPLICATION_DATA, b"data", padding=100))
    assert read_all(reader) == [(APPLICATION_DATA, b"data")]
    header = b"\x17\x03\x03\x00\x20"
    expect_alert(AlertDescription.unexpected_message, reader, header + sender.seal(bytes(16), header))


def test_plaintext_records_before_keys() -> None:
    writer, reader = RecordWriter(), RecordReader()
    writer.write(HANDSHAKE, b"\x01" + bytes(20000))
    writer.write(CHANGE_CIPHER_SPEC, b"\x01")
    wire = writer.take()
    assert wire[:5] == b"\x16\x03\x03\x40\x00"  # a plaintext record holds at most 16384 bytes
    reader.feed(wire)
    records = read_all(reader)
    assert [t for t, _ in records] == [HANDSHAKE, HANDSHAKE, CHANGE_CIPHER_SPEC]
    assert b"".join(p for t, p in records if t == HANDSHAKE) == b"\x01" + bytes(20000)


@pytest.mark.parametrize(
    ("data", "alert"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", AlertDescription.unexpected_message),  # not TLS at all
        (b"\x16\x03\x03\x40\x01" + bytes(16385), AlertDescription.record_overflow),  # plaintext > 2^14
        (b"\x16\x05\x01\x00\x01\x01", AlertDescription.decode_error),  # not a TLS version
        (b"\x16\x03\x01\x00\x00", AlertDescription.unexpected_message),  # empty handshake record
        (b"\x15\x03\x03\x00\x00", AlertDescription.unexpected_message),  # empty alert record
        (b"\x17\x03\x03\x00\x05hello", AlertDescription.unexpected_message),  # application data before keys
        (b"\x18\x03\x03\x00\x01\x00", AlertDescription.unexpected_message),  # heartbeat
    ],
)
def test_bad_plaintext_records(data: bytes, alert: int) -> None:
    expect_alert(alert, RecordReader(), data)


def test_oversized_header_fails_before_the_body_arrives() -> None:
    _, reader = pair()
    expect_alert(AlertDescription.record_overflow, reader, b"\x17\x03\x03\x41\x01")


def test_flipped_byte_is_bad_record_mac() -> None:
    writer, reader = pair()
    writer.write(APPLICATION_DATA, b"secret data")
    wire = bytearray(writer.take())
    wire[10] ^= 1
    expect_alert(AlertDescription.bad_record_mac, reader, bytes(wire))


def test_protected_records_need_version_0303_and_no_plaintext_handshake() -> None:
    writer, reader = pair()
    writer.write(APPLICATION_DATA, b"x")
    wire = bytearray(writer.take())
    wire[2] = 1
    expect_alert(AlertDescription.decode_error, reader, bytes(wire))
    _, reader = pair()
    expect_alert(AlertDescription.unexpected_message, reader, b"\x16\x03\x03\x00\x01\x01")


def test_plaintext_alerts_only_while_allowed() -> None:
    _, reader = pair()
    reader.feed(b"\x15\x03\x03\x00\x02\x02\x28")
    assert read_all(reader) == [(ALERT, b"\x02\x28")]
    reader.plaintext_alerts = False
    expect_alert(AlertDescription.unexpected_message, reader, b"\x15\x03\x03\x00\x02\x02\x28")


def test_empty_records_are_bounded() -> None:
    _, reader = pair()
    sender = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    reader.feed(b"".join(protected(sender, APPLICATION_DATA, b"") for _ in range(MAX_EMPTY_RECORDS)))
    assert len(read_all(reader)) == MAX_EMPTY_RECORDS
    reader.feed(protected(sender, APPLICATION_DATA, b"x") + protected(sender, APPLICATION_DATA, b""))
    assert len(read_all(reader)) == 2  # data resets the run
    expect_alert(AlertDescription.unexpected_message, reader,
                 b"".join(protected(sender, APPLICATION_DATA, b"") for _ in range(MAX_EMPTY_RECORDS)))
    _, reader = pair()
    expect_alert(AlertDescription.unexpected_message, reader,
                 protected(TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET), HANDSHAKE, b""))


def test_protected_content_limits_and_types() -> None:
    _, reader = pair()
    sender = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    too_long = protected(sender, APPLICATION_DATA, bytes(MAX_PLAINTEXT + 1))
    expect_alert(AlertDescription.record_overflow, reader, too_long)
    _, reader = pair()
    sender = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    expect_alert(AlertDescription.unexpected_message, reader, protected(sender, CHANGE_CIPHER_SPEC, b"\x01"))


def test_early_data_is_skipped_within_the_budget_only() -> None:
    _, reader = pair()
    stranger = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, bytes(32))  # the client's early key: not ours
    sender = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    early = protected(stranger, APPLICATION_DATA, bytes(1000))
    reader.skip_early_data(2 * len(early))
    reader.feed(early + early + protected(sender, HANDSHAKE, b"finished"))
    assert read_all(reader) == [(HANDSHAKE, b"finished")]
    expect_alert(AlertDescription.bad_record_mac, reader, protected(stranger, APPLICATION_DATA, b"late"))
    _, reader = pair()
    reader.skip_early_data(len(early) - 1)
    expect_alert(AlertDescription.bad_record_mac, reader, early)


def test_sequence_numbers_never_wrap() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, SECRET)
    keys.seq = (1 << 64) - 1
    with pytest.raises(FatalAlert):
        keys.seal(b"x\x17", b"\x17\x03\x03\x00\x12")
