"""The keyless engine against Python's ssl client (real OpenSSL) over memory BIOs: handshakes, data, tickets,
KeyUpdate, alerts and broken input, without sockets."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.tls import (
    AlertDescription,
    CipherSuite,
    pull_certificate_verify,
    pull_encrypted_extensions,
    pull_new_session_ticket,
)
from keyless_engine_support import (
    NAME,
    LocalSigner,
    MemoryPair,
    Site,
    client_context,
    make_site,
    new_key,
    of_type,
)

from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless import engine as engine_module
from tlsedge.tls.keyless.engine import (
    MAX_KEY_UPDATES_IN_A_ROW,
    ApplicationData,
    CloseNotify,
    HandshakeComplete,
    KeylessServerConnection,
    ProtocolError,
    SignatureNeeded,
)
from tlsedge.tls.keyless.messages import (
    encode_certificate_verify,
    encode_encrypted_extensions,
    encode_new_session_ticket,
)
from tlsedge.tls.keyless.records import APPLICATION_DATA, HANDSHAKE, RecordReader, RecordWriter, TrafficKeys
from tlsedge.tls.keyless.tickets import TicketKeys


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("keyless engine test CA")


@pytest.fixture(scope="module")
def sites(ca: LocalCA) -> dict[str, Site]:
    return {kind: make_site(ca, kind) for kind in ("p256", "p384", "rsa", "ed25519")}


@pytest.fixture
def site(sites: dict[str, Site]) -> Site:
    return sites["p256"]


def alert_record(alert: int) -> bytes:
    return b"\x15\x03\x03\x00\x02\x02" + bytes((alert,))


def key_log(path: Path) -> dict[str, str]:
    """Secrets by label from an NSS key log (``LABEL client_random secret`` lines)."""
    return {line.split()[0]: line.split()[2] for line in path.read_text().splitlines() if not line.startswith("#")}


def only_error(events: list) -> ProtocolError:
    errors = of_type(events, ProtocolError)
    assert len(errors) == 1, events
    return errors[0]


@pytest.mark.parametrize(
    ("kind", "algorithm"), [("p256", 0x0403), ("p384", 0x0503), ("rsa", 0x0804), ("ed25519", 0x0807)]
)
def test_full_handshake_signs_once_and_carries_data(sites: dict[str, Site], ca: LocalCA, kind: str,
                                                    algorithm: int) -> None:
    site = sites[kind]
    pair = MemoryPair(site, ca, tickets=TicketKeys.generate())
    events = pair.handshake()
    [need] = of_type(events, SignatureNeeded)
    assert need.algorithm == algorithm
    assert need.payload[:98] == b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"
    assert len(need.payload) == 98 + 32  # the SHA-256 transcript hash of TLS_AES_128_GCM_SHA256, not a digest alone
    [done] = of_type(events, HandshakeComplete)
    assert done == HandshakeComplete(alpn="http/1.1", resumed=False, cipher_suite="TLS_AES_128_GCM_SHA256",
                                     group="x25519", server_name=NAME)
    assert pair.client.version() == "TLSv1.3" and pair.client.selected_alpn_protocol() == "http/1.1"
    assert dict(x[0] for x in pair.client.getpeercert()["subject"])["commonName"] == NAME
    assert pair.engine.handshake_complete and not pair.engine.closed
    assert pair.client_send(b"ping") == [ApplicationData(b"ping")]
    assert pair.server_send(b"pong" * 10000) == b"pong" * 10000


def test_alpn_is_chosen_by_server_preference(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca, context=client_context(ca, ["http/1.1", "h2"]), alpn_protocols=("h2", "http/1.1"))
    assert of_type(pair.handshake(), HandshakeComplete)[0].alpn == "h2"
    pair = MemoryPair(site, ca, context=client_context(ca))
    assert of_type(pair.handshake(), HandshakeComplete)[0].alpn is None
    assert pair.client.selected_alpn_protocol() is None


def test_alpn_without_a_common_protocol_is_no_application_protocol(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca, context=client_context(ca, ["h2"]))
    with pytest.raises(ssl.SSLError, match=r"(?i)no.application.protocol"):
        pair.handshake()
        pair.client.do_handshake()
    assert only_error(pair.events).alert == AlertDescription.no_application_protocol
    assert pair.engine.closed


def test_byte_by_byte_in_both_phases(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca, tickets=TicketKeys.generate())
    hello = pair.client_bytes()
    for i in range(len(hello) - 1):
        assert pair.to_engine(hello[i : i + 1]) == []
    events = pair.to_engine(hello[-1:])
    assert [type(e) for e in events] == [SignatureNeeded]
    pair.to_client()
    finished = pair.client_bytes()
    assert finished
    for i in range(len(finished) - 1):
        assert pair.to_engine(finished[i : i + 1]) == []
    assert [type(e) for e in pair.to_engine(finished[-1:])] == [HandshakeComplete]
    pair.to_client()
    pair.client.write(b"split data")
    data = pair.outgoing.read()
    received = [e for i in range(len(data)) for e in pair.to_engine(data[i : i + 1])]
    assert received == [ApplicationData(b"split data")]


def test_client_hello_spread_over_many_records(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    record = pair.client_bytes()
    message = record[5:]
    pieces = [message[i : i + 40] for i in range(0, len(message), 40)]
    assert len(pieces) > 3
    events = pair.to_engine(b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in pieces))
    assert [type(e) for e in events] == [SignatureNeeded]


def test_garbage_gets_an_alert_not_a_traceback(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    error = only_error(pair.to_engine(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert error.alert == AlertDescription.unexpected_message and not error.sent_by_peer
    assert pair.engine.data_to_send() == alert_record(AlertDescription.unexpected_message)
    assert pair.engine.closed and pair.engine.receive(b"more") == []


def test_tls12_only_client_gets_protocol_version(site: Site, ca: LocalCA) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    pair = MemoryPair(site, ca, context=context)
    error = only_error(pair.to_engine(pair.client_bytes()))
    assert error.alert == AlertDescription.protocol_version and "TLS 1.3" in error.reason
    assert pair.to_client() == alert_record(AlertDescription.protocol_version)
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version"):
        pair.client.do_handshake()


def test_flipped_byte_is_bad_record_mac_and_the_alert_is_protected(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.handshake()
    pair.client.write(b"tamper with me")
    record = bytearray(pair.outgoing.read())
    record[8] ^= 0x01
    assert only_error(pair.to_engine(bytes(record))).alert == AlertDescription.bad_record_mac
    alert = pair.engine.data_to_send()
    assert alert[0] == APPLICATION_DATA and len(alert) == 5 + 3 + 16  # alert (2) + type (1) + tag, encrypted
    pair.incoming.write(alert)
    with pytest.raises(ssl.SSLError, match=r"(?i)bad.record.mac"):
        pair.client.read(10)


def test_oversized_protected_record_is_record_overflow(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.handshake()
    events = pair.to_engine(b"\x17\x03\x03\x41\x01")  # 16641 bytes: more than 2^14 + 256
    assert only_error(events).alert == AlertDescription.record_overflow


def test_send_coalesces_into_full_records(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.handshake()
    pair.engine.send(memoryview(bytes(100_000)))
    wire = pair.engine.data_to_send()
    lengths, pos = [], 0
    while pos < len(wire):
        lengths.append(int.from_bytes(wire[pos + 3 : pos + 5], "big"))
        pos += 5 + lengths[-1]
    assert lengths == [16384 + 17] * 6 + [100_000 - 6 * 16384 + 17]
    pair.incoming.write(wire)
    assert len(pair.client.read(200_000)) == 16384  # one record at a time, as OpenSSL reads


def test_resumption_needs_no_signature(site: Site, ca: LocalCA) -> None:
    material = [(b"worker-shared", os.urandom(32))]
    tickets = TicketKeys(material)
    context = client_context(ca, ["http/1.1"])
    first = MemoryPair(site, ca, context=context, tickets=tickets)
    first.handshake()
    first.client_send(b"x")
    assert first.server_send(b"y") == b"y"
    session = first.client.session
    assert session is not None and session.has_ticket and session.ticket_lifetime_hint == 86400
    calls = site.signer.calls
    # Another worker process: the same key material, a TicketKeys of its own.
    second = MemoryPair(site, ca, context=context, tickets=TicketKeys(material), session=session)
    events = second.handshake()
    assert of_type(events, SignatureNeeded) == [] and site.signer.calls == calls
    assert of_type(events, HandshakeComplete)[0].resumed and second.engine.resumed
    assert second.client.session_reused
    assert second.server_send(b"resumed data") == b"resumed data"


@pytest.mark.parametrize("case", ["unknown key", "expired", "other certificate", "other name", "no tickets"])
def test_unusable_ticket_falls_back_to_a_full_handshake(sites: dict[str, Site], ca: LocalCA, case: str) -> None:
    tickets = TicketKeys.generate()
    context = client_context(ca, ["http/1.1"])
    first = MemoryPair(sites["p256"], ca, context=context, tickets=tickets)
    first.handshake()
    first.server_send(b"ticket please")
    session = first.client.session
    site, options = sites["p256"], {"tickets": tickets}
    if case == "unknown key":
        options["tickets"] = TicketKeys.generate()
    elif case == "expired":
        options["clock"] = lambda: time.time() + 86401
    elif case == "other certificate":
        site = make_site(ca, "p256")
    elif case == "other name":
        options["server_hostname"] = "other.example"
    else:
        options["tickets"] = None
    context.check_hostname = case != "other name"
    second = MemoryPair(site, ca, context=context, session=session, **options)
    events = second.handshake()
    assert len(of_type(events, SignatureNeeded)) == 1
    assert not of_type(events, HandshakeComplete)[0].resumed and not second.client.session_reused


def test_no_ticket_keys_means_no_ticket(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca, tickets=None)
    pair.handshake()
    assert pair.server_send(b"data") == b"data"
    assert not pair.client.session.has_ticket


def test_client_that_never_finishes_leaves_the_engine_waiting(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    assert of_type(pair.to_engine(pair.client_bytes()), SignatureNeeded)
    pair.to_client()
    pair.client_bytes()  # the client's Finished, never delivered
    assert pair.engine.receive(b"") == []
    assert not pair.engine.handshake_complete and not pair.engine.closed and not pair.engine.awaiting_signature
    with pytest.raises(RuntimeError, match="HandshakeComplete"):
        pair.engine.send(b"too early")


def test_while_signing_ccs_is_dropped_and_a_client_alert_closes(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    [need] = pair.engine.receive(pair.client_bytes())
    assert isinstance(need, SignatureNeeded) and pair.engine.awaiting_signature
    assert pair.engine.receive(b"\x14\x03\x03\x00\x01\x01") == []  # compatibility change_cipher_spec
    error = only_error(pair.engine.receive(alert_record(AlertDescription.user_canceled)))
    assert error.sent_by_peer and error.alert == AlertDescription.user_canceled
    assert pair.engine.data_to_send()  # our flight so far, but no alert in answer to the client's
    assert pair.engine.provide_signature(site.signer.sign(need)) == []
    assert pair.engine.data_to_send() == b""


def test_signature_failure_is_handshake_failure(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.engine.receive(pair.client_bytes())
    pair.engine.signature_failed("all key servers timed out")
    assert pair.engine.closed
    pair.to_client()
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake.failure"):
        pair.client.do_handshake()


@pytest.mark.parametrize("kind", ["p256", "rsa", "ed25519"])
def test_signature_from_the_wrong_key_fails_here_when_verified(sites: dict[str, Site], ca: LocalCA,
                                                                kind: str) -> None:
    pair = MemoryPair(sites[kind], ca, verify_signatures=True)
    [need] = pair.engine.receive(pair.client_bytes())
    wrong = LocalSigner(new_key(kind)).sign(need)
    error = only_error(pair.engine.provide_signature(wrong))
    assert error.alert == AlertDescription.handshake_failure and "key server" in error.reason
    right = MemoryPair(sites[kind], ca, verify_signatures=True)
    assert of_type(right.handshake(), HandshakeComplete)


def test_unverified_wrong_signature_is_refused_by_the_client(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    [need] = pair.engine.receive(pair.client_bytes())
    assert pair.engine.provide_signature(LocalSigner(new_key("p256")).sign(need)) == []
    pair.to_client()
    with pytest.raises(ssl.SSLError, match=r"(?i)bad.signature"):
        pair.client.do_handshake()
    error = only_error(pair.engine.receive(pair.outgoing.read()))
    assert error.sent_by_peer and error.alert == AlertDescription.decrypt_error


def test_server_key_updates_with_and_without_request(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.handshake()
    for request in (False, True, False):
        pair.engine.update_keys(request_peer=request)
        assert pair.server_send(b"after update") == b"after update"
        assert pair.client_send(b"client after update") == [ApplicationData(b"client after update")]


def test_client_key_update_is_answered(site: Site, ca: LocalCA, tmp_path: Path) -> None:
    """With the client's secrets (from its key log), we speak for it: a KeyUpdate asking for ours."""
    context = client_context(ca, ["http/1.1"])
    context.keylog_filename = str(tmp_path / "keys.log")
    pair = MemoryPair(site, ca, context=context, tickets=TicketKeys.generate())
    pair.handshake()
    secrets = key_log(tmp_path / "keys.log")
    suite = CipherSuite.AES_128_GCM_SHA256
    client = RecordWriter()
    client.key = TrafficKeys(suite, bytes.fromhex(secrets["CLIENT_TRAFFIC_SECRET_0"]))
    server = RecordReader()
    server.key = TrafficKeys(suite, bytes.fromhex(secrets["SERVER_TRAFFIC_SECRET_0"]))
    server.key.seq = 1  # the NewSessionTicket went out under this key already

    client.write(HANDSHAKE, b"\x18\x00\x00\x01\x01")  # KeyUpdate, update_requested
    client.key = client.key.updated()
    client.write(APPLICATION_DATA, b"under the new key")
    assert pair.engine.receive(client.take()) == [ApplicationData(b"under the new key")]
    pair.engine.send(b"ours too")
    server.feed(pair.engine.data_to_send())
    assert server.next_record() == (HANDSHAKE, b"\x18\x00\x00\x01\x00")  # our answer: update_not_requested
    server.key = server.key.updated()
    assert server.next_record() == (APPLICATION_DATA, b"ours too")

    client.write(HANDSHAKE, b"\x18\x00\x00\x01\x00" + b"\x18\x00\x00\x01\x00")  # a key change inside a record
    assert only_error(pair.engine.receive(client.take())).alert == AlertDescription.unexpected_message


def test_long_connections_rekey_before_the_aead_limit(site: Site, ca: LocalCA, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "KEY_UPDATE_AFTER", 3)  # instead of 2^23 records
    pair = MemoryPair(site, ca)
    pair.handshake()
    first_key = pair.engine._writer.key.secret
    data = bytes(range(256)) * 300  # 5 records, all under the first key: the limit is checked per send()
    assert pair.server_send(data) == data and pair.engine._writer.key.secret == first_key
    assert pair.server_send(b"after the limit") == b"after the limit"  # the client followed our KeyUpdate
    assert pair.engine._writer.key.secret != first_key


@pytest.mark.parametrize(
    ("messages", "alert"),
    [
        ([b"\x18\x00\x00\x01\x02"], AlertDescription.illegal_parameter),
        ([b"\x18\x00\x00\x02\x00\x00"], AlertDescription.decode_error),
        ([b"\x04\x00\x00\x01\x00"], AlertDescription.unexpected_message),  # a NewSessionTicket from a client
        ([b"\x18\x00\x00\x01\x00"] * (MAX_KEY_UPDATES_IN_A_ROW + 1), AlertDescription.unexpected_message),
    ],
)
def test_bad_post_handshake_messages(site: Site, ca: LocalCA, tmp_path: Path, messages: list[bytes],
                                     alert: int) -> None:
    context = client_context(ca)
    context.keylog_filename = str(tmp_path / "keys.log")
    pair = MemoryPair(site, ca, context=context)
    pair.handshake()
    secrets = key_log(tmp_path / "keys.log")
    client = RecordWriter()
    client.key = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, bytes.fromhex(secrets["CLIENT_TRAFFIC_SECRET_0"]))
    events = []
    for message in messages:
        client.write(HANDSHAKE, message)
        if message[0] == 0x18 and message[4] in (0, 1):
            client.key = client.key.updated()
        events += pair.engine.receive(client.take())
    assert only_error(events).alert == alert


def test_close_notify_both_ways(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.handshake()
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    assert pair.to_engine(pair.outgoing.read()) == [CloseNotify()]
    assert pair.engine.receive(b"ignored after close_notify") == []
    pair.engine.close()
    assert pair.engine.closed
    pair.engine.send(b"dropped")  # no-op once closed
    pair.to_client()
    pair.client.unwrap()


@pytest.mark.parametrize(
    ("data", "alert"),
    [
        (b"\x14\x03\x03\x00\x01\x01", AlertDescription.unexpected_message),  # CCS before any ClientHello
        (b"\x16\x03\x01\x00\x04\x14\x00\x00\x00", AlertDescription.unexpected_message),  # Finished first
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x01", AlertDescription.illegal_parameter),  # a 64 KiB+ ClientHello
    ],
)
def test_wrong_first_records(site: Site, ca: LocalCA, data: bytes, alert: int) -> None:
    pair = MemoryPair(site, ca)
    assert only_error(pair.engine.receive(data)).alert == alert


def test_change_cipher_spec_rules(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.to_engine(pair.client_bytes())
    assert only_error(pair.engine.receive(b"\x14\x03\x03\x00\x01\x02")).alert == AlertDescription.unexpected_message
    pair = MemoryPair(site, ca)
    pair.to_engine(pair.client_bytes())
    events = pair.engine.receive(b"\x14\x03\x03\x00\x01\x01" * 5)
    assert only_error(events).reason == "too many change_cipher_spec records"
    pair = MemoryPair(site, ca)
    pair.handshake()
    assert only_error(pair.engine.receive(b"\x14\x03\x03\x00\x01\x01")).alert == AlertDescription.unexpected_message


def test_fatal_alert_from_the_client(site: Site, ca: LocalCA) -> None:
    pair = MemoryPair(site, ca)
    pair.to_engine(pair.client_bytes())
    error = only_error(pair.engine.receive(alert_record(AlertDescription.bad_certificate)))
    assert error.sent_by_peer and "bad_certificate" in error.reason
    assert pair.engine.closed


def test_constructor_checks(site: Site) -> None:
    with pytest.raises(ValueError, match="ticket_lifetime"):
        KeylessServerConnection(site.identity, tickets=None, ticket_lifetime=700_000)
    with pytest.raises(ValueError, match="ALPN"):
        KeylessServerConnection(site.identity, tickets=None, alpn_protocols=("",))


@pytest.mark.parametrize(
    ("content_type", "message", "alert"),
    [
        (HANDSHAKE, b"\x14\x00\x00\x20" + bytes(32), AlertDescription.decrypt_error),  # a wrong Finished
        (HANDSHAKE, b"\x14\x00\x00\x10" + bytes(16), AlertDescription.decrypt_error),  # a short one
        (APPLICATION_DATA, b"before finished", AlertDescription.unexpected_message),
        (HANDSHAKE, b"\x0b\x00\x00\x04" + bytes(4), AlertDescription.unexpected_message),  # an unasked Certificate
    ],
)
def test_bad_client_flight(site: Site, ca: LocalCA, tmp_path: Path, content_type: int, message: bytes,
                           alert: int) -> None:
    """Records under the client's handshake key (from its key log) that are not its Finished."""
    context = client_context(ca)
    context.keylog_filename = str(tmp_path / "keys.log")
    pair = MemoryPair(site, ca, context=context)
    pair.to_engine(pair.client_bytes())
    pair.to_client()
    pair.client_bytes()  # the client derives its keys and logs them; its real Finished is dropped
    client = RecordWriter()
    secret = key_log(tmp_path / "keys.log")["CLIENT_HANDSHAKE_TRAFFIC_SECRET"]
    client.key = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, bytes.fromhex(secret))
    client.write(content_type, message)
    assert only_error(pair.engine.receive(client.take())).alert == alert


def test_our_messages_parse_with_aioquic(site: Site, ca: LocalCA) -> None:
    extensions = pull_encrypted_extensions(Buffer(data=encode_encrypted_extensions("h2", True)))
    assert extensions.alpn_protocol == "h2" and extensions.other_extensions == [(0, b"")]
    assert not extensions.early_data
    assert pull_encrypted_extensions(Buffer(data=encode_encrypted_extensions(None, False))).alpn_protocol is None
    ticket = pull_new_session_ticket(Buffer(data=encode_new_session_ticket(7200, 0xFFFFFFFF, b"n", b"t" * 300)))
    assert (ticket.ticket_lifetime, ticket.ticket_age_add, ticket.ticket_nonce, ticket.ticket) == (
        7200, 0xFFFFFFFF, b"n", b"t" * 300
    )
    assert ticket.max_early_data_size is None and ticket.other_extensions == []
    verify = pull_certificate_verify(Buffer(data=encode_certificate_verify(0x0804, b"s" * 256)))
    assert (verify.algorithm, verify.signature) == (0x0804, b"s" * 256)
