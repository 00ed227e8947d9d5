"""Stateless session tickets for keyless TLS 1.3: the session state travels in the ticket, sealed with our key.

Why stateless: a resumed handshake needs no key server (the PSK authenticates it), so it keeps working while the
key servers are down, but only if any worker process, on any edge, can open a ticket another one issued. Sealing
the state with a key every worker shares (``TicketKeys``) needs no shared session cache. Keys rotate: the first key
seals, the others still open tickets sealed before the rotation.

Ticket: version (1) | key id length (1) | key id | nonce (12) | AES-256-GCM(state), the first three parts as the
associated data. The state (``TicketState``) is a compact binary record, see its ``encode``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_TICKET_VERSION = 1
_STATE_VERSION = 1
_NONCE_LENGTH = 12
_MAX_TICKET = 1024  # our tickets are ~150-600 bytes; anything longer is not ours
_BINDING_LENGTH = 8
_STATE_FIXED = struct.Struct("!HQII")  # cipher suite, issued (ms since the epoch), age_add, lifetime (s)


class TicketKeys:
    """AEAD keys for stateless tickets; the first is current, the others still open older tickets (rotation)."""

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: Sequence[tuple[bytes, bytes]]) -> None:
        """``keys``: (key id of 4..16 bytes, 32-byte AES key) pairs, the sealing key first; ids must be unique."""
        if not keys:
            raise ValueError("session ticket keys: at least one (key_id, key) pair is needed")
        table: dict[bytes, AESGCM] = {}
        for key_id, key in keys:
            if not 4 <= len(key_id) <= 16:
                raise ValueError(f"session ticket key id {key_id.hex()} must be 4 to 16 bytes, not {len(key_id)}")
            if len(key) != 32:
                raise ValueError(f"session ticket key {key_id.hex()} must be 32 bytes, not {len(key)}")
            if key_id in table:
                raise ValueError(f"session ticket key id {key_id.hex()} appears twice: ids must be unique")
            table[key_id] = AESGCM(key)
        current_id = keys[0][0]
        self._keys = table
        self._current = (bytes((_TICKET_VERSION, len(current_id))) + current_id, table[current_id])

    @classmethod
    def generate(cls) -> TicketKeys:
        """One random key: for tests and single-process use (workers must share keys to share tickets)."""
        return cls([(os.urandom(8), os.urandom(32))])

    def seal(self, state: bytes) -> bytes:
        prefix, aead = self._current
        header = prefix + os.urandom(_NONCE_LENGTH)
        return header + aead.encrypt(header[-_NONCE_LENGTH:], state, header)

    def open(self, ticket: bytes) -> bytes | None:
        """The sealed state, or None: unknown key, tampered, malformed (never raises)."""
        if not 2 <= len(ticket) <= _MAX_TICKET or ticket[0] != _TICKET_VERSION:
            return None
        end = 2 + ticket[1]
        aead = self._keys.get(ticket[2:end])
        if aead is None or len(ticket) < end + _NONCE_LENGTH + 16:
            return None
        header = ticket[: end + _NONCE_LENGTH]
        try:
            return aead.decrypt(header[end:], ticket[len(header) :], header)
        except InvalidTag:
            return None


@dataclass(frozen=True, slots=True)
class TicketState:
    """What a ticket carries: enough to resume (PSK, suite) and to decide whether to (age, name, identity).

    ``identity`` binds the ticket to the certificate it was issued under (the first bytes of the key id), so a ticket
    never resumes a session on another keyless site that happens to share the ticket keys.
    """

    psk: bytes
    cipher_suite: int
    issued_ms: int
    age_add: int
    lifetime: int
    identity: bytes
    alpn: str | None
    server_name: str | None

    def encode(self) -> bytes:
        """version (1) | psk length (1) | psk | suite (2) | issued ms (8) | age_add (4) | lifetime (4) |
        identity (8) | alpn length (1) | alpn | server name length (2) | server name; absent strings are empty."""
        alpn = (self.alpn or "").encode("ascii")
        name = (self.server_name or "").encode("ascii")
        return b"".join((
            bytes((_STATE_VERSION, len(self.psk))),
            self.psk,
            _STATE_FIXED.pack(self.cipher_suite, self.issued_ms, self.age_add, self.lifetime),
            self.identity[:_BINDING_LENGTH],
            bytes((len(alpn),)),
            alpn,
            len(name).to_bytes(2, "big"),
            name,
        ))

    @classmethod
    def decode(cls, data: bytes) -> TicketState | None:
        """The state, or None when ``data`` is not a state of this version (a ticket from an older release)."""
        try:
            if data[0] != _STATE_VERSION:
                return None
            end = 2 + data[1]
            psk = data[2:end]
            suite, issued_ms, age_add, lifetime = _STATE_FIXED.unpack_from(data, end)
            pos = end + _STATE_FIXED.size
            identity = data[pos : pos + _BINDING_LENGTH]
            pos += _BINDING_LENGTH
            alpn_end = pos + 1 + data[pos]
            alpn = data[pos + 1 : alpn_end].decode("ascii")
            name_end = alpn_end + 2 + int.from_bytes(data[alpn_end : alpn_end + 2], "big")
            name = data[alpn_end + 2 : name_end].decode("ascii")
        except (IndexError, struct.error, UnicodeDecodeError):
            return None
        if name_end != len(data) or len(psk) != data[1] or len(identity) != _BINDING_LENGTH:
            return None
        return cls(psk, suite, issued_ms, age_add, lifetime, identity, alpn or None, name or None)
