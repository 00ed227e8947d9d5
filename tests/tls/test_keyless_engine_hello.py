"""ClientHellos built by hand: HelloRetryRequest and the second ClientHello's rules, negotiation failures with the
right alerts, and PSK offers (tampered tickets, binders, key exchange modes)."""

from __future__ import annotations

import time

import pytest
from aioquic.buffer import Buffer
from aioquic.tls import AlertDescription, CipherSuite, KeySchedule, ServerHello, pull_server_hello
from keyless_engine_support import (
    NAME,
    Site,
    client_hello,
    default_extensions,
    ext_alpn,
    ext_early_data,
    ext_key_share,
    ext_pre_shared_key,
    ext_psk_modes,
    ext_server_name,
    ext_signature_algorithms,
    ext_supported_groups,
    ext_supported_versions,
    extension,
    make_site,
    of_type,
    p256_share,
    plaintext_records,
    x25519_share,
)

from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless.engine import (
    HELLO_RETRY_RANDOM,
    KeylessServerConnection,
    ProtocolError,
    SignatureNeeded,
)
from tlsedge.tls.keyless.tickets import TicketKeys, TicketState

X448 = 0x001E
X448_SHARE = (X448, bytes(range(56)))
SESSION_ID = b"\x42" * 32


@pytest.fixture(scope="module")
def site() -> Site:
    return make_site(LocalCA.create("keyless hello test CA"), "p256")


def engine(site: Site, **options) -> KeylessServerConnection:
    return KeylessServerConnection(site.identity, tickets=options.pop("tickets", None), **options)


def server_hello(wire: bytes) -> ServerHello:
    assert wire[0] == 22
    return pull_server_hello(Buffer(data=wire[5 : 5 + int.from_bytes(wire[3:5], "big")]))


def retry_fields(wire: bytes) -> tuple[bytes, bytes, int, list[tuple[int, bytes]]]:
    """random, legacy_session_id, cipher suite and extensions of a HelloRetryRequest (aioquic's client-side parser
    reads its key_share as a full share, so this reads it by hand)."""
    body = wire[9 : 5 + int.from_bytes(wire[3:5], "big")]
    random, pos = body[2:34], 35 + body[34]
    session_id, suite = body[35:pos], int.from_bytes(body[pos : pos + 2], "big")
    pos += 5
    extensions = []
    while pos < len(body):
        length = int.from_bytes(body[pos + 2 : pos + 4], "big")
        extensions.append((int.from_bytes(body[pos : pos + 2], "big"), body[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return random, session_id, suite, extensions


def error_of(events: list) -> int:
    [error] = of_type(events, ProtocolError)
    return error.alert


def retry_extensions(share: tuple[int, bytes], *, groups: tuple[int, ...] = (X448, 0x001D, 0x0017)) -> list[bytes]:
    return [
        ext_server_name(NAME),
        ext_supported_versions(0x0304),
        ext_supported_groups(*groups),
        ext_key_share(share),
        ext_signature_algorithms(0x0403),
    ]


def test_hello_retry_request_then_full_handshake(site: Site) -> None:
    conn = engine(site)
    assert conn.receive(plaintext_records(client_hello(retry_extensions(X448_SHARE), session_id=SESSION_ID))) == []
    wire = conn.data_to_send()
    random, session_id, suite, extensions = retry_fields(wire)
    assert random == HELLO_RETRY_RANDOM and session_id == SESSION_ID and suite == CipherSuite.AES_128_GCM_SHA256
    assert extensions == [(43, b"\x03\x04"), (51, b"\x00\x1d")]  # selected_group: X25519, our first choice
    assert wire.endswith(b"\x14\x03\x03\x00\x01\x01")  # the compatibility CCS follows our first message
    events = conn.receive(
        b"\x14\x03\x03\x00\x01\x01"
        + plaintext_records(client_hello(retry_extensions(x25519_share()), session_id=SESSION_ID))
    )
    [need] = of_type(events, SignatureNeeded)
    assert need.algorithm == 0x0403
    hello = server_hello(conn.data_to_send())
    assert hello.random != HELLO_RETRY_RANDOM and hello.key_share[0] == 0x001D
    assert conn.server_name == NAME and conn.cipher_suite == "TLS_AES_128_GCM_SHA256"


def test_retry_asks_for_our_preferred_group_among_the_clients(site: Site) -> None:
    conn = engine(site)
    conn.receive(plaintext_records(client_hello(retry_extensions(X448_SHARE, groups=(X448, 0x0018, 0x0017)))))
    assert retry_fields(conn.data_to_send())[3][1] == (51, b"\x00\x17")  # P-256 before P-384


def test_no_ccs_without_a_session_id(site: Site) -> None:
    conn = engine(site)
    conn.receive(plaintext_records(client_hello(retry_extensions(X448_SHARE))))
    wire = conn.data_to_send()
    assert len(wire) == 5 + int.from_bytes(wire[3:5], "big")


@pytest.mark.parametrize(
    ("second", "changes"),
    [
        ("p256 share", {}),  # we asked for X25519
        ("two shares", {}),
        ("still no share", {}),  # a second HelloRetryRequest is never sent
        ("x25519", {"suites": (0x1302, 0x1301)}),
        ("x25519", {"random": b"\x22" * 32}),
        ("x25519", {"session_id": b""}),
        ("early data", {}),
    ],
)
def test_second_client_hello_must_follow_the_retry(site: Site, second: str, changes: dict) -> None:
    conn = engine(site)
    conn.receive(plaintext_records(client_hello(retry_extensions(X448_SHARE), session_id=SESSION_ID)))
    share_ext = {
        "p256 share": ext_key_share(p256_share()),
        "two shares": ext_key_share(x25519_share(), p256_share()),
        "still no share": ext_key_share(X448_SHARE),
    }.get(second, ext_key_share(x25519_share()))
    extensions = retry_extensions(x25519_share())
    extensions[3] = share_ext
    if second == "early data":
        extensions.append(ext_early_data())
    options = {"session_id": SESSION_ID, **changes}
    events = conn.receive(plaintext_records(client_hello(extensions, **options)))
    assert error_of(events) == AlertDescription.illegal_parameter


def test_early_data_before_the_second_hello_is_skipped(site: Site) -> None:
    conn = engine(site)
    first = [*retry_extensions(X448_SHARE), ext_early_data()]
    conn.receive(plaintext_records(client_hello(first, session_id=SESSION_ID)))
    early = b"\x17\x03\x03\x01\x00" + bytes(256)
    events = conn.receive(early + plaintext_records(client_hello(retry_extensions(x25519_share()),
                                                                 session_id=SESSION_ID)))
    assert [type(e) for e in events] == [SignatureNeeded]


def test_unbounded_early_data_is_refused(site: Site) -> None:
    conn = engine(site)
    conn.receive(plaintext_records(client_hello([*retry_extensions(X448_SHARE), ext_early_data()])))
    events = conn.receive((b"\x17\x03\x03\x40\x00" + bytes(16384)) * 5)
    assert error_of(events) == AlertDescription.unexpected_message


def replace(extensions: list[bytes], index: int, new: bytes | None) -> list[bytes]:
    changed = list(extensions)
    if new is None:
        del changed[index]
    else:
        changed[index] = new
    return changed


BASE = default_extensions()


def truncated_inside(hello: bytes) -> bytes:
    """The last byte cut off but the message length adjusted: the inner vectors no longer add up."""
    return hello[:1] + (len(hello) - 5).to_bytes(3, "big") + hello[4:-1]


@pytest.mark.parametrize(
    ("hello", "alert"),
    [
        (client_hello(replace(BASE, 1, ext_supported_versions(0x0303))), AlertDescription.protocol_version),
        (client_hello(replace(BASE, 1, None)), AlertDescription.protocol_version),
        (client_hello(version=0x0301), AlertDescription.protocol_version),
        (client_hello(suites=(0xC02F, 0x009C)), AlertDescription.handshake_failure),
        (client_hello(compression=b"\x01\x00"), AlertDescription.illegal_parameter),
        (client_hello(session_id=bytes(33)), AlertDescription.illegal_parameter),
        (client_hello([*BASE, ext_server_name("again.example")]), AlertDescription.illegal_parameter),
        (client_hello(replace(BASE, 3, None)), AlertDescription.missing_extension),
        (client_hello(replace(BASE, 2, None)), AlertDescription.missing_extension),
        (client_hello(replace(BASE, 4, None)), AlertDescription.missing_extension),
        (client_hello(replace(BASE, 4, ext_signature_algorithms(0x0401, 0x0804))), AlertDescription.handshake_failure),
        (client_hello(replace(BASE, 2, ext_supported_groups(X448))), AlertDescription.illegal_parameter),
        (client_hello(replace(replace(BASE, 2, ext_supported_groups(X448)), 3, ext_key_share(X448_SHARE))),
         AlertDescription.handshake_failure),
        (client_hello(replace(BASE, 3, ext_key_share((0x001D, bytes(31))))), AlertDescription.illegal_parameter),
        (client_hello(replace(BASE, 3, ext_key_share((0x001D, bytes(32))))), AlertDescription.illegal_parameter),
        (client_hello(replace(BASE, 3, ext_key_share((0x0017, b"\x02" + bytes(32))))),
         AlertDescription.illegal_parameter),
        (client_hello(replace(BASE, 3, ext_key_share(x25519_share(), x25519_share()))),
         AlertDescription.illegal_parameter),
        (client_hello([*BASE, ext_alpn("h2")]), AlertDescription.no_application_protocol),
        (client_hello([*BASE, ext_alpn()]), AlertDescription.no_application_protocol),
        (client_hello([*BASE, ext_alpn("http/1.1", "")]), AlertDescription.decode_error),
        (client_hello([*BASE, ext_pre_shared_key([(b"ticket", 0)], [bytes(32)])]), AlertDescription.missing_extension),
        (client_hello([*BASE, ext_psk_modes(1), ext_pre_shared_key([(b"t", 0)], [])]),
         AlertDescription.illegal_parameter),
        (client_hello([ext_pre_shared_key([(b"t", 0)], [bytes(32)]), *BASE]), AlertDescription.illegal_parameter),
        (truncated_inside(client_hello(BASE)), AlertDescription.decode_error),
        (client_hello(replace(BASE, 0, extension(0, b"\x00\x05\x00\x00\x02\xc3\xa9"))), AlertDescription.decode_error),
    ],
)
def test_client_hello_failures_have_the_right_alert(site: Site, hello: bytes, alert: int) -> None:
    conn = engine(site)
    assert error_of(conn.receive(plaintext_records(hello))) == alert
    assert conn.data_to_send() == b"\x15\x03\x03\x00\x02\x02" + bytes((alert,))


def resumption_hello(psk: bytes, ticket: bytes, *, age_ms: int = 1000, age_add: int = 7, modes: tuple = (1,),
                     binder: bytes | None = None, extra: tuple[bytes, ...] = ()) -> bytes:
    """A ClientHello offering ``ticket``, its binder computed as a client would (RFC 8446 4.2.11.2)."""
    psk_ext = ext_pre_shared_key([(ticket, (age_ms + age_add) % (1 << 32))], [bytes(32)])
    hello = client_hello([*BASE, *extra, ext_psk_modes(*modes), psk_ext])
    schedule = KeySchedule(CipherSuite.AES_128_GCM_SHA256)
    schedule.extract(psk)
    binder_key = schedule.derive_secret(b"res binder")
    schedule.update_hash(hello[: len(hello) - 35])
    return hello[: len(hello) - 32] + (binder if binder is not None else schedule.finished_verify_data(binder_key))


def sealed_ticket(site: Site, tickets: TicketKeys, psk: bytes, **changes) -> bytes:
    fields = {
        "psk": psk, "cipher_suite": CipherSuite.AES_128_GCM_SHA256, "issued_ms": int(time.time() * 1000) - 1000,
        "age_add": 7, "lifetime": 86400, "identity": site.identity.key_id, "alpn": None, "server_name": NAME,
    }
    fields.update(changes)
    return tickets.seal(TicketState(**fields).encode())


def test_valid_psk_resumes_without_a_signature(site: Site) -> None:
    tickets, psk = TicketKeys.generate(), bytes(range(32))
    conn = engine(site, tickets=tickets)
    events = conn.receive(plaintext_records(resumption_hello(psk, sealed_ticket(site, tickets, psk))))
    assert events == [] and conn.resumed
    hello = server_hello(conn.data_to_send())
    assert hello.pre_shared_key == 0 and hello.key_share[0] == 0x001D


def test_valid_psk_with_early_data_resumes_but_never_accepts_0rtt(site: Site) -> None:
    tickets, psk = TicketKeys.generate(), bytes(range(32))
    conn = engine(site, tickets=tickets)
    hello = resumption_hello(psk, sealed_ticket(site, tickets, psk), extra=(ext_early_data(),))
    early = b"\x17\x03\x03\x00\x40" + bytes(64)  # 0-RTT data under a key we never derive: skipped
    assert conn.receive(plaintext_records(hello) + early) == [] and conn.resumed
    assert not conn.closed


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("tampered", "full"),
        ("other identity", "full"),
        ("other name", "full"),
        ("expired", "full"),
        ("from the future", "full"),
        ("implausible age", "full"),
        ("sha384 suite", "full"),
        ("psk_ke only", "full"),
        ("wrong binder", AlertDescription.decrypt_error),
    ],
)
def test_psk_offers_that_do_not_resume(site: Site, case: str, expect: object) -> None:
    tickets, psk = TicketKeys.generate(), bytes(range(32))
    now = int(time.time() * 1000)
    changes = {
        "other identity": {"identity": bytes(32)},
        "other name": {"server_name": "other.example"},
        "expired": {"issued_ms": now - 86_401_000},
        "from the future": {"issued_ms": now + 3_600_000},
        "sha384 suite": {"cipher_suite": CipherSuite.AES_256_GCM_SHA384},
    }.get(case, {})
    ticket = sealed_ticket(site, tickets, psk, **changes)
    if case == "tampered":
        ticket = ticket[:-1] + bytes((ticket[-1] ^ 1,))
    options = {
        "implausible age": {"age_ms": 3_600_000},
        "psk_ke only": {"modes": (0,)},
        "wrong binder": {"binder": bytes(32)},
    }.get(case, {})
    conn = engine(site, tickets=tickets)
    events = conn.receive(plaintext_records(resumption_hello(psk, ticket, **options)))
    if expect == "full":
        assert [type(e) for e in events] == [SignatureNeeded] and not conn.resumed
        assert server_hello(conn.data_to_send()).pre_shared_key is None
    else:
        assert error_of(events) == expect
