"""A sans-IO TLS 1.3 server whose CertificateVerify signature is made elsewhere (keyless TLS).

Bytes from the TCP stream go in through ``receive``; events come out; records for the wire collect in
``data_to_send``. A full handshake stops at the one step that needs the private key and emits ``SignatureNeeded``
with the complete CertificateVerify input (RFC 8446 4.4.3: 64 spaces, the context string, a zero byte and the
transcript hash), never a bare digest, so the key server can check what it signs. The adapter obtains the signature
without blocking the event loop and hands it back with ``provide_signature``.

Why not aioquic's ``Context``: its server makes the whole flight in one call and signs in the middle of it, has no
HelloRetryRequest, accepts 0-RTT whenever a PSK is used and keeps tickets in a server-side store. So this module runs
the server state machine itself and reuses aioquic's pieces: the ClientHello parser, ``KeySchedule`` (transcript,
secrets, Finished), ``negotiate``, ``hkdf_expand_label`` and the alert codes; our four message kinds are assembled
directly (see the encoders). The record layer is ``records``; tickets are ``tickets``.

Negotiation (all in the server's order of preference): cipher suites AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305;
groups X25519, P-256, P-384 (a HelloRetryRequest asks for one of them when the client sent no usable key share);
ALPN: the first of *our* ``alpn_protocols`` the client offers, so the operator decides (e.g. h2 over http/1.1).
Resumption uses psk_dhe_ke only and never accepts 0-RTT.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from aioquic.buffer import Buffer, BufferReadError
from aioquic.tls import (
    SERVER_CONTEXT_STRING,
    TLS_VERSION_1_3,
    Alert,
    AlertDescription,
    CipherSuite,
    ClientHello,
    ExtensionType,
    Group,
    HandshakeType,
    KeySchedule,
    PskKeyExchangeMode,
    cipher_suite_hash,
    hkdf_expand_label,
    negotiate,
    pull_client_hello,
    signature_algorithm_params,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from tlsedge.tls.keyless.identity import KeylessIdentity
from tlsedge.tls.keyless.messages import (
    GROUP_NAMES,
    encode_certificate_verify,
    encode_encrypted_extensions,
    encode_new_session_ticket,
    encode_server_hello,
    extension,
    extension_types,
    handshake_message,
    key_exchange,
)
from tlsedge.tls.keyless.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    FatalAlert,
    RecordReader,
    RecordWriter,
    TrafficKeys,
)
from tlsedge.tls.keyless.tickets import TicketKeys, TicketState

CIPHER_SUITES = (
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256,
)
GROUPS = (Group.X25519, Group.SECP256R1, Group.SECP384R1)

SUITE_NAMES = {
    CipherSuite.AES_128_GCM_SHA256: "TLS_AES_128_GCM_SHA256",
    CipherSuite.AES_256_GCM_SHA384: "TLS_AES_256_GCM_SHA384",
    CipherSuite.CHACHA20_POLY1305_SHA256: "TLS_CHACHA20_POLY1305_SHA256",
}


# The special ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 4.1.3).
HELLO_RETRY_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()

MAX_CLIENT_HELLO = 1 << 16  # bytes of one ClientHello message (real ones are < 2 KiB; post-quantum ones < 4 KiB)
MAX_POST_HELLO_MESSAGE = 1024  # Finished and KeyUpdate are tiny; nothing else may come from a client
MAX_CHANGE_CIPHER_SPECS = 4  # compatibility-mode CCS records we drop (clients send one)
MAX_KEY_UPDATES_IN_A_ROW = 32  # KeyUpdates without application data in between: more is a CPU attack
MAX_PSK_IDENTITIES = 8  # identities we try to open; further ones are ignored
EARLY_DATA_SKIP = 1 << 16  # bytes of rejected 0-RTT records we discard (RFC 8446 4.2.10) before giving up
KEY_UPDATE_AFTER = 1 << 23  # records under one write key before we rekey (AES-GCM allows 2^24.5, RFC 8446 5.5)
TICKET_AGE_TOLERANCE_MS = 60_000  # the client's idea of the ticket's age vs ours (clock skew between edges, RTT)
MAX_TICKET_LIFETIME = 604_800  # seven days (RFC 8446 4.6.1)




@dataclass(frozen=True, slots=True)
class SignatureNeeded:
    """Sign ``payload`` (the full CertificateVerify input) with ``algorithm``, then call ``provide_signature``."""

    algorithm: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The client's Finished verified; ``hello_retry``: we had to ask for another key share (an extra round trip)."""

    alpn: str | None
    resumed: bool
    cipher_suite: str
    group: str | None
    server_name: str | None
    hello_retry: bool = False


@dataclass(frozen=True, slots=True)
class ApplicationData:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseNotify:
    """The client closed its side (close_notify); nothing more will come from it."""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The connection failed. Our alert (if we sent one) is already queued in ``data_to_send``.

    ``sent_by_peer``: the client sent this fatal alert (its complaint, not ours).
    """

    alert: int
    reason: str
    sent_by_peer: bool = False


Event = SignatureNeeded | HandshakeComplete | ApplicationData | CloseNotify | ProtocolError


class _State(Enum):
    EXPECT_CLIENT_HELLO = "expecting ClientHello"
    EXPECT_SECOND_CLIENT_HELLO = "expecting the ClientHello after our HelloRetryRequest"
    AWAIT_SIGNATURE = "waiting for the signature"
    EXPECT_FINISHED = "expecting the client's Finished"
    CONNECTED = "connected"
    CLOSED = "closed"


# The only handshake message a client may send in each state (none while we wait for the signature).
_EXPECTED_MESSAGE = {
    _State.EXPECT_CLIENT_HELLO: HandshakeType.CLIENT_HELLO,
    _State.EXPECT_SECOND_CLIENT_HELLO: HandshakeType.CLIENT_HELLO,
    _State.EXPECT_FINISHED: HandshakeType.FINISHED,
    _State.CONNECTED: HandshakeType.KEY_UPDATE,
}


@dataclass(slots=True)
class _Offer:
    """What one ClientHello lets us choose: suite, group (and the client's share, None: a HelloRetryRequest)."""

    suite: CipherSuite
    group: Group
    share: bytes | None
    alpn: str | None
    server_name: str | None


class KeylessServerConnection:
    """One TLS 1.3 server connection; sans-IO (see the module docstring for the flow and the choices).

    ``server_name`` is the name to use when the client sends no SNI (for ``HandshakeComplete`` and ticket binding).
    ``verify_signatures`` checks the remote signature against the certificate before sending it, so a key server
    that signs with the wrong key fails the handshake here with a clear reason instead of at the client (which then
    sends decrypt_error). It costs an ECDSA verify (~0.1 ms, 15% of the engine's handshake CPU), so it is off by
    default: check a key server once (on connect, in its health ping) rather than on every handshake.
    ``clock`` (seconds since the epoch) dates tickets; every process that shares the ticket keys must agree on it.
    """

    def __init__(
        self,
        identity: KeylessIdentity,
        *,
        tickets: TicketKeys | None,
        alpn_protocols: Sequence[str] = ("http/1.1",),
        ticket_lifetime: int = 86400,
        server_name: str | None = None,
        verify_signatures: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= ticket_lifetime <= MAX_TICKET_LIFETIME:
            raise ValueError(f"ticket_lifetime {ticket_lifetime} must be 1..{MAX_TICKET_LIFETIME} seconds")
        for protocol in alpn_protocols:
            if not 1 <= len(protocol.encode("ascii")) <= 255:
                raise ValueError(f"ALPN protocol {protocol!r} must be 1..255 ASCII characters")
        self._identity = identity
        self._tickets = tickets
        self._alpn_protocols = list(alpn_protocols)
        self._ticket_lifetime = ticket_lifetime
        self._default_server_name = server_name
        self._verify_signatures = verify_signatures
        self._clock = clock

        self._state = _State.EXPECT_CLIENT_HELLO
        self._reader = RecordReader()
        self._writer = RecordWriter()
        self._handshake_buf = bytearray()
        self._local_closed = False
        self._peer_closed = False
        self._handshake_done = False
        self._change_cipher_specs = 0
        self._key_updates_in_a_row = 0
        self._ccs_sent = False
        self._hello_retried = False

        self._transcript_prefix = b""  # message_hash(ClientHello1) + HelloRetryRequest, after a retry
        self._first_hello: ClientHello | None = None
        self._offer: _Offer | None = None
        self._key_schedule: KeySchedule | None = None
        self._signature_algorithm: int | None = None
        self._client_handshake_secret: bytes | None = None
        self._server_handshake_secret: bytes | None = None
        self._client_application_secret: bytes | None = None
        self._expected_finished: bytes | None = None
        self._resumed = False
        self._ticket_wanted = False

    # -- properties ------------------------------------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done

    @property
    def closed(self) -> bool:
        """True once we will send nothing more: after a fatal alert (either way) or our close_notify."""
        return self._state is _State.CLOSED or self._local_closed

    @property
    def awaiting_signature(self) -> bool:
        return self._state is _State.AWAIT_SIGNATURE

    @property
    def cipher_suite(self) -> str | None:
        return SUITE_NAMES[self._offer.suite] if self._offer is not None else None

    @property
    def alpn(self) -> str | None:
        return self._offer.alpn if self._offer is not None else None

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def server_name(self) -> str | None:
        return self._offer.server_name if self._offer is not None else self._default_server_name

    # -- the API ---------------------------------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Raw bytes from the TCP stream, in any fragmentation. Never raises: errors become ``ProtocolError``.

        While a signature is outstanding, what arrives is processed at once: the client may send only a
        change_cipher_spec or an alert then; anything else is a protocol error now as it would be later.
        """
        events: list[Event] = []
        if self._state is _State.CLOSED or self._peer_closed:
            return events
        try:
            self._reader.feed(data)
            self._process_records(events)
        except FatalAlert as exc:
            self._fail(exc.alert, exc.reason, events)
        except Exception as exc:  # a bug must not take the worker down; the reason names it
            self._fail(AlertDescription.internal_error, f"internal error: {type(exc).__name__}: {exc}", events)
        return events

    def provide_signature(self, signature: bytes) -> list[Event]:
        """The answer to ``SignatureNeeded``: completes our flight. Ignored (no events) once the connection closed."""
        events: list[Event] = []
        if self._state is not _State.AWAIT_SIGNATURE:
            if self._state is _State.CLOSED:
                return events
            raise RuntimeError(f"provide_signature while {self._state.value}: no signature was requested")
        try:
            self._send_certificate_verify(signature)
            self._process_records(events)
        except FatalAlert as exc:
            self._fail(exc.alert, exc.reason, events)
        except Exception as exc:  # see receive()
            self._fail(AlertDescription.internal_error, f"internal error: {type(exc).__name__}: {exc}", events)
        return events

    def signature_failed(self, reason: str) -> None:
        """No signature can be had (key servers down, refused): queue a handshake_failure alert and close."""
        if self._state is _State.AWAIT_SIGNATURE:
            self._fail(AlertDescription.handshake_failure, f"no signature: {reason}", [])

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data as records of up to 16384 bytes. A no-op once closed (it can reach no one)."""
        if self.closed:
            return
        if self._state is not _State.CONNECTED:
            raise RuntimeError(f"send() while {self._state.value}: wait for HandshakeComplete")
        writer = self._writer
        assert writer.key is not None
        if writer.key.seq >= KEY_UPDATE_AFTER:
            self._send_key_update(request_peer=False)
        writer.write(APPLICATION_DATA, data)

    def update_keys(self, request_peer: bool = False) -> None:
        """Send a KeyUpdate and switch our write key; ``request_peer`` asks the client to update its key too."""
        if self.closed:
            return
        if self._state is not _State.CONNECTED:
            raise RuntimeError(f"update_keys() while {self._state.value}: wait for HandshakeComplete")
        self._send_key_update(request_peer)

    def close(self) -> None:
        """Queue close_notify; we send nothing after it (the client's remaining data is still read)."""
        if self.closed:
            return
        self._local_closed = True
        self._writer.write(ALERT, bytes((1, AlertDescription.close_notify)))
        if not self._handshake_done:
            self._state = _State.CLOSED
            self._wipe()

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call."""
        return self._writer.take()

    # -- records ---------------------------------------------------------------------------------------------------

    def _process_records(self, events: list[Event]) -> None:
        reader = self._reader
        plain: list[bytes] = []
        try:
            while self._state is not _State.CLOSED and not self._peer_closed:
                record = reader.next_record()
                if record is None:
                    break
                content_type, payload = record
                if content_type == APPLICATION_DATA:
                    if self._state is not _State.CONNECTED:
                        raise FatalAlert(AlertDescription.unexpected_message, "application data during the handshake")
                    if payload:
                        self._key_updates_in_a_row = 0
                        plain.append(payload)
                    continue
                if plain:
                    events.append(ApplicationData(plain[0] if len(plain) == 1 else b"".join(plain)))
                    plain = []
                if content_type == HANDSHAKE:
                    self._handshake_record(payload, events)
                elif content_type == ALERT:
                    self._alert(payload, events)
                else:
                    self._change_cipher_spec(payload)
        finally:
            if plain:
                events.append(ApplicationData(plain[0] if len(plain) == 1 else b"".join(plain)))

    def _change_cipher_spec(self, payload: bytes) -> None:
        """Compatibility-mode CCS (RFC 8446 5, D.4): dropped between the first ClientHello and the client Finished."""
        if payload != b"\x01":
            raise FatalAlert(AlertDescription.unexpected_message, "change_cipher_spec is not the single byte 0x01")
        if self._state not in (_State.EXPECT_SECOND_CLIENT_HELLO, _State.AWAIT_SIGNATURE, _State.EXPECT_FINISHED):
            raise FatalAlert(AlertDescription.unexpected_message, f"change_cipher_spec while {self._state.value}")
        if self._handshake_buf:
            raise FatalAlert(AlertDescription.unexpected_message, "change_cipher_spec inside a handshake message")
        self._change_cipher_specs += 1
        if self._change_cipher_specs > MAX_CHANGE_CIPHER_SPECS:
            raise FatalAlert(AlertDescription.unexpected_message, "too many change_cipher_spec records")

    def _alert(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 2:
            raise FatalAlert(AlertDescription.decode_error, f"alert record of {len(payload)} bytes")
        description = payload[1]
        if description == AlertDescription.close_notify:
            self._peer_closed = True
            events.append(CloseNotify())
            return
        # Every other alert ends the connection in TLS 1.3, whatever its level (RFC 8446 6); we answer none.
        try:
            name = AlertDescription(description).name
        except ValueError:
            name = "unknown"
        self._state = _State.CLOSED
        self._wipe()
        events.append(ProtocolError(description, f"the client sent alert {name} ({description})", sent_by_peer=True))

    def _handshake_record(self, payload: bytes, events: list[Event]) -> None:
        """Reassemble handshake messages (they may span records, bounded by state) and handle each."""
        buf = self._handshake_buf
        buf += payload
        while buf:
            message_type = buf[0]
            self._check_message_type(message_type)
            if len(buf) < 4:
                return
            length = int.from_bytes(buf[1:4], "big")
            limit = (
                MAX_CLIENT_HELLO
                if self._state in (_State.EXPECT_CLIENT_HELLO, _State.EXPECT_SECOND_CLIENT_HELLO)
                else MAX_POST_HELLO_MESSAGE
            )
            if length > limit:
                raise FatalAlert(
                    AlertDescription.illegal_parameter, f"handshake message {message_type} of {length} bytes"
                )
            if len(buf) < 4 + length:
                return
            message = bytes(buf[: 4 + length])
            del buf[: 4 + length]
            self.handshake_message(message_type, message, events)
            if self._state is _State.CLOSED:
                return

    def _check_message_type(self, message_type: int) -> None:
        if message_type != _EXPECTED_MESSAGE.get(self._state):
            raise FatalAlert(
                AlertDescription.unexpected_message, f"handshake message type {message_type} while {self._state.value}"
            )

    def handshake_message(self, message_type: int, message: bytes, events: list[Event]) -> None:
        if message_type == HandshakeType.CLIENT_HELLO:
            self._client_hello(message, events)
        elif message_type == HandshakeType.FINISHED:
            self._client_finished(message, events)
        else:
            self._key_update(message)

    def _key_changed(self) -> None:
        """Handshake messages must not span a key change (RFC 8446 5.1)."""
        if self._handshake_buf:
            raise FatalAlert(AlertDescription.unexpected_message, "a handshake message spans a key change")

    # -- ClientHello -----------------------------------------------------------------------------------------------

    def _client_hello(self, raw: bytes, events: list[Event]) -> None:
        hello = self._parse_client_hello(raw)
        offer = self._negotiate(hello)
        if self._state is _State.EXPECT_SECOND_CLIENT_HELLO:
            self._check_second_hello(hello, offer)
        elif offer.share is None:
            self._hello_retry_request(hello, raw, offer)
            return
        assert offer.share is not None
        self._offer = offer
        resumption = self._resumption(hello, raw, offer)
        if resumption is None:
            self._signature_algorithm = self._choose_signature_algorithm(hello)
            key_schedule = KeySchedule(offer.suite)
            key_schedule.extract(None)
            key_schedule.update_hash(self._transcript_prefix + raw)
            psk_index = None
        else:
            psk_index, key_schedule = resumption
            self._resumed = True
        self._key_schedule = key_schedule
        # A ticket only for clients that could use it: psk_dhe_ke offered (RFC 8446 4.2.9).
        modes = hello.psk_key_exchange_modes
        self._ticket_wanted = modes is not None and PskKeyExchangeMode.PSK_DHE_KE in modes
        self._first_hello = None
        self._transcript_prefix = b""
        # Rejected 0-RTT data may follow this ClientHello, never a second one (RFC 8446 4.2.10).
        self._reader.skip_early_data(EARLY_DATA_SKIP if hello.early_data else 0)
        self._send_server_hello(hello, offer, offer.share, psk_index)
        self._key_changed()
        acknowledge_sni = hello.server_name is not None and not self._resumed
        flight = [self._encrypted_extensions(offer, acknowledge_sni)]
        if self._resumed:
            self._finish_flight(flight)
            return
        flight.append(self._identity.certificate_message)
        for message in flight[1:]:
            key_schedule.update_hash(message)
        self._writer.write(HANDSHAKE, b"".join(flight))
        self._state = _State.AWAIT_SIGNATURE
        assert self._signature_algorithm is not None
        events.append(
            SignatureNeeded(self._signature_algorithm, key_schedule.certificate_verify_data(SERVER_CONTEXT_STRING))
        )

    def _parse_client_hello(self, raw: bytes) -> ClientHello:
        if len(raw) < 6 or int.from_bytes(raw[4:6], "big") < 0x0303:
            raise FatalAlert(AlertDescription.protocol_version, "the client speaks TLS 1.1 or older only")
        try:
            hello = pull_client_hello(Buffer(data=raw))
        except Alert as exc:
            raise FatalAlert(exc.description, f"malformed ClientHello: {str(exc) or type(exc).__name__}") from exc
        except (BufferReadError, UnicodeDecodeError) as exc:  # aioquic < 1.7 lets a non-ASCII SNI through as the latter
            raise FatalAlert(AlertDescription.decode_error, f"malformed ClientHello: {type(exc).__name__}") from exc
        if hello.supported_versions is None or TLS_VERSION_1_3 not in hello.supported_versions:
            raise FatalAlert(AlertDescription.protocol_version, "the client does not offer TLS 1.3 (TLS 1.2 or older)")
        types = extension_types(raw)
        if len(types) != len(set(types)):
            raise FatalAlert(AlertDescription.illegal_parameter, "the ClientHello repeats an extension")
        if len(hello.legacy_session_id) > 32:
            raise FatalAlert(AlertDescription.illegal_parameter, "legacy_session_id longer than 32 bytes")
        if hello.legacy_compression_methods != [0]:
            raise FatalAlert(AlertDescription.illegal_parameter, "TLS 1.3 needs exactly the null compression method")
        if hello.alpn_protocols is not None and "" in hello.alpn_protocols:
            raise FatalAlert(AlertDescription.decode_error, "an empty ALPN protocol name")
        return hello

    def _negotiate(self, hello: ClientHello) -> _Offer:
        suite = negotiate(list(CIPHER_SUITES), hello.cipher_suites)
        if suite is None:
            raise FatalAlert(AlertDescription.handshake_failure, "no TLS 1.3 cipher suite in common")
        shares, groups = hello.key_share, hello.supported_groups
        if shares is None or groups is None:
            missing = "key_share" if shares is None else "supported_groups"
            raise FatalAlert(AlertDescription.missing_extension, f"the ClientHello has no {missing} (we need ECDHE)")
        share_groups = [group for group, _ in shares]
        if len(share_groups) != len(set(share_groups)) or not set(share_groups) <= set(groups):
            raise FatalAlert(AlertDescription.illegal_parameter, "key shares repeat a group or name an unoffered one")
        offered = dict(shares)
        group = next((g for g in GROUPS if g in offered), None)
        share = offered.get(group) if group is not None else None
        if group is None:
            group = next((g for g in GROUPS if g in groups), None)
            if group is None:
                raise FatalAlert(AlertDescription.handshake_failure, "no key exchange group in common")
        alpn = None
        if self._alpn_protocols and hello.alpn_protocols is not None:
            alpn = negotiate(self._alpn_protocols, hello.alpn_protocols)
            if alpn is None:
                raise FatalAlert(
                    AlertDescription.no_application_protocol,
                    f"the client offers ALPN {hello.alpn_protocols}, we speak {self._alpn_protocols}",
                )
        server_name = hello.server_name if hello.server_name is not None else self._default_server_name
        return _Offer(CipherSuite(suite), Group(group), share, alpn, server_name)

    def _hello_retry_request(self, hello: ClientHello, raw: bytes, offer: _Offer) -> None:
        """Ask for a key share of ``offer.group``; the transcript restarts with message_hash(CH1) (RFC 8446 4.4.1)."""
        digest = hashes.Hash(cipher_suite_hash(offer.suite))
        digest.update(raw)
        client_hello_hash = digest.finalize()
        selected_group = extension(ExtensionType.KEY_SHARE, offer.group.to_bytes(2, "big"))
        message = encode_server_hello(HELLO_RETRY_RANDOM, hello.legacy_session_id, offer.suite, selected_group)
        self._transcript_prefix = handshake_message(HandshakeType.MESSAGE_HASH, client_hello_hash) + message
        self._writer.write(HANDSHAKE, message)
        self._send_compatibility_ccs(hello)
        self._first_hello = hello
        self._offer = offer
        self._hello_retried = True
        self._state = _State.EXPECT_SECOND_CLIENT_HELLO
        if hello.early_data:
            self._reader.skip_early_data(EARLY_DATA_SKIP)

    def _check_second_hello(self, hello: ClientHello, offer: _Offer) -> None:
        """The ClientHello after a HelloRetryRequest must be the first one with the key share we asked for."""
        first, asked = self._first_hello, self._offer
        assert first is not None and asked is not None
        if offer.share is None or hello.key_share is None or len(hello.key_share) != 1 or offer.group != asked.group:
            raise FatalAlert(
                AlertDescription.illegal_parameter,
                f"the second ClientHello has no single key share for {GROUP_NAMES[asked.group]}",
            )
        if hello.early_data:
            raise FatalAlert(AlertDescription.illegal_parameter, "early_data in the second ClientHello")
        if (
            hello.random != first.random
            or hello.legacy_session_id != first.legacy_session_id
            or hello.cipher_suites != first.cipher_suites
            or offer.suite != asked.suite
        ):
            raise FatalAlert(AlertDescription.illegal_parameter, "the second ClientHello changed more than allowed")

    def _choose_signature_algorithm(self, hello: ClientHello) -> int:
        if hello.signature_algorithms is None:
            raise FatalAlert(AlertDescription.missing_extension, "the ClientHello has no signature_algorithms")
        algorithm = negotiate(list(self._identity.signature_algorithms), hello.signature_algorithms)
        if algorithm is None:
            raise FatalAlert(
                AlertDescription.handshake_failure,
                f"the client accepts none of {[hex(a) for a in self._identity.signature_algorithms]} for this key",
            )
        return int(algorithm)

    # -- resumption ------------------------------------------------------------------------------------------------

    def _resumption(self, hello: ClientHello, raw: bytes, offer: _Offer) -> tuple[int, KeySchedule] | None:
        """The first offered ticket we can open and accept, with its binder checked (RFC 8446 4.2.11), or None."""
        offered = hello.pre_shared_key
        if offered is None:
            return None
        if hello.psk_key_exchange_modes is None:
            raise FatalAlert(AlertDescription.missing_extension, "pre_shared_key without psk_key_exchange_modes")
        if not offered.identities or len(offered.identities) != len(offered.binders):
            raise FatalAlert(AlertDescription.illegal_parameter, "PSK identities and binders do not pair up")
        if self._tickets is None or PskKeyExchangeMode.PSK_DHE_KE not in hello.psk_key_exchange_modes:
            return None
        now_ms = int(self._clock() * 1000)
        for index, (ticket, obfuscated_age) in enumerate(offered.identities[:MAX_PSK_IDENTITIES]):
            sealed = self._tickets.open(ticket)
            state = TicketState.decode(sealed) if sealed is not None else None
            if state is None or not self._ticket_acceptable(state, obfuscated_age, now_ms, offer):
                continue
            key_schedule = KeySchedule(offer.suite)
            key_schedule.extract(state.psk)
            binder_key = key_schedule.derive_secret(b"res binder")
            binders_length = 2 + sum(1 + len(binder) for binder in offered.binders)
            key_schedule.update_hash(self._transcript_prefix + raw[: len(raw) - binders_length])
            expected = key_schedule.finished_verify_data(binder_key)
            if not hmac.compare_digest(expected, offered.binders[index]):
                raise FatalAlert(AlertDescription.decrypt_error, "the PSK binder does not verify")
            key_schedule.update_hash(raw[len(raw) - binders_length :])
            return index, key_schedule
        return None

    def _ticket_acceptable(self, state: TicketState, obfuscated_age: int, now_ms: int, offer: _Offer) -> bool:
        """Same certificate and name, not expired, the client's age plausible, and a suite with the same hash."""
        if state.identity != self._identity.key_id[: len(state.identity)] or state.server_name != offer.server_name:
            return False
        if state.cipher_suite not in SUITE_NAMES:
            return False
        if cipher_suite_hash(CipherSuite(state.cipher_suite)).name != cipher_suite_hash(offer.suite).name:
            return False
        age_ms = now_ms - state.issued_ms
        if not -TICKET_AGE_TOLERANCE_MS <= age_ms <= min(state.lifetime, self._ticket_lifetime) * 1000:
            return False
        client_age_ms = (obfuscated_age - state.age_add) % (1 << 32)
        return abs(client_age_ms - age_ms) <= TICKET_AGE_TOLERANCE_MS

    # -- our flight ------------------------------------------------------------------------------------------------

    def _send_compatibility_ccs(self, hello: ClientHello) -> None:
        """A dummy change_cipher_spec after our first handshake message, in middlebox compatibility mode (D.4)."""
        if hello.legacy_session_id and not self._ccs_sent:
            self._ccs_sent = True
            self._writer.write(CHANGE_CIPHER_SPEC, b"\x01")

    def _send_server_hello(self, hello: ClientHello, offer: _Offer, share: bytes, psk_index: int | None) -> None:
        key_schedule = self._key_schedule
        assert key_schedule is not None
        our_share, shared_secret = key_exchange(offer.group, share)
        key_share = offer.group.to_bytes(2, "big") + len(our_share).to_bytes(2, "big") + our_share
        extensions = extension(ExtensionType.KEY_SHARE, key_share)
        if psk_index is not None:
            extensions += extension(ExtensionType.PRE_SHARED_KEY, psk_index.to_bytes(2, "big"))
        message = encode_server_hello(os.urandom(32), hello.legacy_session_id, offer.suite, extensions)
        key_schedule.update_hash(message)
        self._writer.write(HANDSHAKE, message)
        self._send_compatibility_ccs(hello)
        key_schedule.extract(shared_secret)
        self._client_handshake_secret = key_schedule.derive_secret(b"c hs traffic")
        self._server_handshake_secret = key_schedule.derive_secret(b"s hs traffic")
        self._writer.key = TrafficKeys(offer.suite, self._server_handshake_secret)
        self._reader.key = TrafficKeys(offer.suite, self._client_handshake_secret)

    def _encrypted_extensions(self, offer: _Offer, acknowledge_sni: bool) -> bytes:
        assert self._key_schedule is not None
        message = encode_encrypted_extensions(offer.alpn, acknowledge_sni)
        self._key_schedule.update_hash(message)
        return message

    def _send_certificate_verify(self, signature: bytes) -> None:
        key_schedule, algorithm = self._key_schedule, self._signature_algorithm
        assert key_schedule is not None and algorithm is not None
        if self._verify_signatures:
            payload = key_schedule.certificate_verify_data(SERVER_CONTEXT_STRING)
            try:
                self._identity.public_key.verify(  # type: ignore[union-attr]
                    signature, payload, *signature_algorithm_params(algorithm)
                )
            except InvalidSignature as exc:
                raise FatalAlert(
                    AlertDescription.handshake_failure,
                    f"the signature (algorithm 0x{algorithm:04x}) does not verify with the certificate's key: "
                    "does the key server hold the key of this certificate?",
                ) from exc
        message = encode_certificate_verify(algorithm, signature)
        key_schedule.update_hash(message)
        self._finish_flight([message])

    def _finish_flight(self, messages: list[bytes]) -> None:
        """Our Finished ends the flight; then the application secrets (RFC 8446 7.1) and our write key change."""
        key_schedule, offer = self._key_schedule, self._offer
        assert key_schedule is not None and offer is not None and self._server_handshake_secret is not None
        finished = handshake_message(
            HandshakeType.FINISHED, key_schedule.finished_verify_data(self._server_handshake_secret)
        )
        key_schedule.update_hash(finished)
        messages.append(finished)
        self._writer.write(HANDSHAKE, b"".join(messages))
        assert self._client_handshake_secret is not None
        self._expected_finished = key_schedule.finished_verify_data(self._client_handshake_secret)
        key_schedule.extract(None)
        self._client_application_secret = key_schedule.derive_secret(b"c ap traffic")
        self._writer.key = TrafficKeys(offer.suite, key_schedule.derive_secret(b"s ap traffic"))
        self._server_handshake_secret = None
        self._state = _State.EXPECT_FINISHED

    def _client_finished(self, message: bytes, events: list[Event]) -> None:
        key_schedule, offer = self._key_schedule, self._offer
        assert key_schedule is not None and offer is not None and self._expected_finished is not None
        if not hmac.compare_digest(message[4:], self._expected_finished):
            raise FatalAlert(AlertDescription.decrypt_error, "the client's Finished does not verify")
        key_schedule.update_hash(message)
        assert self._client_application_secret is not None
        self._reader.key = TrafficKeys(offer.suite, self._client_application_secret)
        self._reader.plaintext_alerts = False
        self._key_changed()
        self._state = _State.CONNECTED
        self._handshake_done = True
        self._send_ticket(key_schedule.derive_secret(b"res master"), offer)
        self._wipe()
        events.append(
            HandshakeComplete(
                alpn=offer.alpn,
                resumed=self._resumed,
                cipher_suite=SUITE_NAMES[offer.suite],
                group=GROUP_NAMES[offer.group],
                server_name=offer.server_name,
                hello_retry=self._hello_retried,
            )
        )

    def _send_ticket(self, resumption_master_secret: bytes, offer: _Offer) -> None:
        """One NewSessionTicket, sealed state inside (RFC 8446 4.6.1); no early_data extension: 0-RTT never."""
        if self._tickets is None or not self._ticket_wanted:
            return
        algorithm = cipher_suite_hash(offer.suite)
        nonce = b""
        psk = hkdf_expand_label(algorithm, resumption_master_secret, b"resumption", nonce, algorithm.digest_size)
        age_add = struct.unpack("!I", os.urandom(4))[0]
        state = TicketState(
            psk=psk,
            cipher_suite=offer.suite,
            issued_ms=int(self._clock() * 1000),
            age_add=age_add,
            lifetime=self._ticket_lifetime,
            identity=self._identity.key_id,
            alpn=offer.alpn,
            server_name=offer.server_name,
        )
        ticket = self._tickets.seal(state.encode())
        self._writer.write(HANDSHAKE, encode_new_session_ticket(self._ticket_lifetime, age_add, nonce, ticket))

    # -- after the handshake ---------------------------------------------------------------------------------------

    def _key_update(self, message: bytes) -> None:
        """The client's KeyUpdate (RFC 8446 4.6.3): its next records use the next key; answer a request with ours."""
        if len(message) != 5:
            raise FatalAlert(AlertDescription.decode_error, "KeyUpdate body is not one byte")
        request = message[4]
        if request not in (0, 1):
            raise FatalAlert(AlertDescription.illegal_parameter, f"KeyUpdate request_update {request}")
        self._key_changed()
        self._key_updates_in_a_row += 1
        if self._key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW:
            raise FatalAlert(AlertDescription.unexpected_message, "too many KeyUpdates without data in between")
        assert self._reader.key is not None
        self._reader.key = self._reader.key.updated()
        if request == 1 and not self._local_closed:
            self._send_key_update(request_peer=False)

    def _send_key_update(self, request_peer: bool) -> None:
        writer = self._writer
        assert writer.key is not None
        writer.write(HANDSHAKE, handshake_message(HandshakeType.KEY_UPDATE, bytes((int(request_peer),))))
        writer.key = writer.key.updated()

    # -- failure ---------------------------------------------------------------------------------------------------

    def _fail(self, alert: int, reason: str, events: list[Event]) -> None:
        if self._state is _State.CLOSED:
            return
        if not self._local_closed:
            self._writer.write(ALERT, bytes((2, alert)))
        self._state = _State.CLOSED
        self._wipe()
        events.append(ProtocolError(int(alert), reason))

    def _wipe(self) -> None:
        """Drop handshake secrets and state we no longer need (they must not outlive their use in memory dumps)."""
        self._key_schedule = None
        self._client_handshake_secret = None
        self._server_handshake_secret = None
        self._client_application_secret = None
        self._expected_finished = None
        self._first_hello = None
        self._transcript_prefix = b""
