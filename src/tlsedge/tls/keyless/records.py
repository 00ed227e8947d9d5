"""The TLS 1.3 record layer of the keyless engine (RFC 8446 section 5): framing, AEAD protection and limits.

Why our own: aioquic's TLS engine was written for QUIC, which carries handshake messages in its own frames, so it has
no record layer. This one is small and sans-IO: ``RecordReader`` takes raw bytes from the TCP stream and yields
(content type, plaintext) one record at a time, so the engine can switch the read key exactly between two records;
``RecordWriter`` turns plaintext into records and queues them for the wire.

Every length and count a peer controls is bounded here: record sizes (RFC 8446 5.1, 5.2), runs of empty records,
the bytes of rejected early data that may be skipped (4.2.10), and the record sequence number (5.3).
"""

from __future__ import annotations

import struct

from aioquic.tls import AlertDescription, CipherSuite, cipher_suite_hash, hkdf_expand_label
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

MAX_PLAINTEXT = 1 << 14  # a record's content (RFC 8446 5.1)
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256  # a protected record's payload (RFC 8446 5.2)
MAX_EMPTY_RECORDS = 16  # consecutive empty application-data records: legal, but a flood of them is a CPU attack
SEQUENCE_LIMIT = (1 << 64) - 1  # sequence numbers must never wrap (RFC 8446 5.3)

_TAG_LENGTH = 16
_IV_LENGTH = 12
_HEADER = struct.Struct("!BHH")
_INNER_TYPES = frozenset((ALERT, HANDSHAKE, APPLICATION_DATA))
_OUTER_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA))
_TYPE_BYTES = {t: bytes((t,)) for t in _INNER_TYPES}

# AEAD class and key length of each TLS 1.3 cipher suite (RFC 8446 B.4).
_AEADS: dict[int, tuple[type[AESGCM] | type[ChaCha20Poly1305], int]] = {
    CipherSuite.AES_128_GCM_SHA256: (AESGCM, 16),
    CipherSuite.AES_256_GCM_SHA384: (AESGCM, 32),
    CipherSuite.CHACHA20_POLY1305_SHA256: (ChaCha20Poly1305, 32),
}


class FatalAlert(Exception):
    """A fatal protocol error: the alert to send (RFC 8446 6.2) and a reason for the operator's log."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


class TrafficKeys:
    """One direction's record protection: the AEAD keyed from a traffic secret, the IV, and the sequence number.

    The AEAD object is made once per key (not per record); the nonce is the IV XOR the sequence number (5.3).
    """

    __slots__ = ("_aead", "_iv", "cipher_suite", "secret", "seq")

    def __init__(self, cipher_suite: int, secret: bytes) -> None:
        algorithm = cipher_suite_hash(CipherSuite(cipher_suite))
        aead_class, key_length = _AEADS[cipher_suite]
        self._aead = aead_class(hkdf_expand_label(algorithm, secret, b"key", b"", key_length))
        self._iv = int.from_bytes(hkdf_expand_label(algorithm, secret, b"iv", b"", _IV_LENGTH), "big")
        self.cipher_suite = cipher_suite
        self.secret = secret
        self.seq = 0

    def updated(self) -> TrafficKeys:
        """The next generation after a KeyUpdate: application_traffic_secret_N+1 (RFC 8446 7.2)."""
        algorithm = cipher_suite_hash(CipherSuite(self.cipher_suite))
        secret = hkdf_expand_label(algorithm, self.secret, b"traffic upd", b"", len(self.secret))
        return TrafficKeys(self.cipher_suite, secret)

    def _nonce(self) -> bytes:
        if self.seq >= SEQUENCE_LIMIT:
            raise FatalAlert(AlertDescription.internal_error, "record sequence number exhausted without a KeyUpdate")
        nonce = (self._iv ^ self.seq).to_bytes(_IV_LENGTH, "big")
        self.seq += 1
        return nonce

    def seal(self, inner: bytes, header: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(), inner, header)

    def open(self, payload: memoryview, header: bytes) -> bytes:
        """Decrypt one record; the sequence number advances only when it authenticates (so a trial can fail)."""
        nonce = (self._iv ^ self.seq).to_bytes(_IV_LENGTH, "big")
        inner = self._aead.decrypt(nonce, payload, header)  # raises InvalidTag
        if self.seq >= SEQUENCE_LIMIT:
            raise FatalAlert(AlertDescription.unexpected_message, "the peer exhausted its sequence numbers")
        self.seq += 1
        return inner


class RecordReader:
    """Splits the TCP stream into records and removes their protection, one record per ``next_record`` call.

    ``key`` is None while records are plaintext (the ClientHello); the engine sets it when the client's keys change.
    ``plaintext_alerts`` admits unprotected alerts after keys are set: a client that cannot process our ServerHello
    has no keys to protect its alert with.
    """

    __slots__ = ("_buf", "_empty_run", "_pos", "_skip_budget", "key", "plaintext_alerts")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the next record in _buf
        self._empty_run = 0
        self._skip_budget = 0
        self.key: TrafficKeys | None = None
        self.plaintext_alerts = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def skip_early_data(self, budget: int) -> None:
        """Discard up to ``budget`` bytes of records we cannot read: the client's rejected 0-RTT data (4.2.10).

        Skipping ends with the first record that authenticates under the current key.
        """
        self._skip_budget = budget

    def next_record(self) -> tuple[int, bytes] | None:
        """The next complete record as (content type, plaintext), or None until more bytes arrive."""
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 5:
                del buf[:pos]  # one move of the partial record per read, not one per record
                self._pos = 0
                return None
            outer_type, version, length = _HEADER.unpack_from(buf, pos)
            if outer_type not in _OUTER_TYPES:
                raise FatalAlert(AlertDescription.unexpected_message, f"unknown record content type {outer_type}")
            if version >> 8 != 3:
                raise FatalAlert(AlertDescription.decode_error, f"record version 0x{version:04x} is not TLS")
            protected = self.key is not None and outer_type == APPLICATION_DATA
            limit = MAX_CIPHERTEXT if outer_type == APPLICATION_DATA else MAX_PLAINTEXT
            if length > limit:
                raise FatalAlert(AlertDescription.record_overflow, f"record of {length} bytes exceeds {limit}")
            end = pos + 5 + length
            if len(buf) < end:
                del buf[:pos]
                self._pos = 0
                return None
            self._pos = end
            with memoryview(buf) as view, view[pos + 5 : end] as payload:
                if protected:
                    record = self._unprotect(version, bytes(view[pos : pos + 5]), payload)
                else:
                    record = self._plaintext(outer_type, payload)
            if record is not None:
                return self._checked(*record) if protected else record

    def _plaintext(self, outer_type: int, payload: memoryview) -> tuple[int, bytes] | None:
        if outer_type == APPLICATION_DATA:
            # Only reached while the client's records are unprotected: early data sent before a HelloRetryRequest.
            if len(payload) + 5 > self._skip_budget:
                raise FatalAlert(AlertDescription.unexpected_message, "application data before the handshake")
            self._skip_budget -= len(payload) + 5
            return None
        if self.key is not None and (outer_type == HANDSHAKE or (outer_type == ALERT and not self.plaintext_alerts)):
            raise FatalAlert(AlertDescription.unexpected_message, f"unprotected record of type {outer_type}")
        if not payload and outer_type != CHANGE_CIPHER_SPEC:
            raise FatalAlert(AlertDescription.unexpected_message, f"empty record of type {outer_type}")
        return outer_type, bytes(payload)

    def _unprotect(self, version: int, header: bytes, payload: memoryview) -> tuple[int, bytes] | None:
        assert self.key is not None
        if version != 0x0303:
            raise FatalAlert(AlertDescription.decode_error, f"protected record with version 0x{version:04x}")
        try:
            inner = self.key.open(payload, header)
        except InvalidTag:
            if len(payload) + 5 <= self._skip_budget:
                self._skip_budget -= len(payload) + 5
                return None
            raise FatalAlert(AlertDescription.bad_record_mac, "a record failed authentication") from None
        self._skip_budget = 0
        content = inner.rstrip(b"\x00")  # padding: zeros after the content type (5.4)
        if not content:
            raise FatalAlert(AlertDescription.unexpected_message, "a protected record has no content type")
        return content[-1], content[:-1]

    def _checked(self, content_type: int, content: bytes) -> tuple[int, bytes]:
        if content_type not in _INNER_TYPES:
            raise FatalAlert(AlertDescription.unexpected_message, f"protected record of content type {content_type}")
        if len(content) > MAX_PLAINTEXT:
            raise FatalAlert(AlertDescription.record_overflow, f"record content of {len(content)} bytes")
        if content:
            self._empty_run = 0
        elif content_type != APPLICATION_DATA:
            raise FatalAlert(AlertDescription.unexpected_message, f"empty protected record of type {content_type}")
        else:
            self._empty_run += 1
            if self._empty_run > MAX_EMPTY_RECORDS:
                raise FatalAlert(AlertDescription.unexpected_message, "too many empty records in a row")
        return content_type, content


class RecordWriter:
    """Turns plaintext into records of at most 16384 bytes, protected under ``key`` once it is set."""

    __slots__ = ("_out", "key")

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self.key: TrafficKeys | None = None

    def write(self, content_type: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` as records of ``content_type``; one AEAD call per record, no copy of the whole input."""
        key = self.key
        out = self._out
        if key is None or content_type == CHANGE_CIPHER_SPEC:
            for start in range(0, len(data), MAX_PLAINTEXT):
                chunk = data[start : start + MAX_PLAINTEXT]
                out.append(_HEADER.pack(content_type, 0x0303, len(chunk)))
                out.append(bytes(chunk))
            return
        type_byte = _TYPE_BYTES[content_type]
        view = memoryview(data)
        for start in range(0, len(view), MAX_PLAINTEXT):
            inner = b"".join((view[start : start + MAX_PLAINTEXT], type_byte))
            header = _HEADER.pack(APPLICATION_DATA, 0x0303, len(inner) + _TAG_LENGTH)
            out.append(header)
            out.append(key.seal(inner, header))

    def take(self) -> bytes:
        """Everything queued since the last call, as one buffer for one socket write."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)
