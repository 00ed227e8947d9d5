"""The keys that sign challenge cookies, challenge tokens and password cookies: HMAC-SHA256, kept in the store.

Why the store: every worker (and, with Redis, every edge) must accept a cookie another one issued, so the keys are
shared state, written once by whichever process comes first (``put_if_version``: racing workers agree on one set).
Why key ids: a cookie names the key that signed it, so :func:`rotate` can introduce a new current key while the
previous ones keep verifying the cookies already handed out; a key is only forgotten when a later rotation drops it
(``keep``), which is also how an operator invalidates every cookie at once (``keep=1``).

The record (``guard/signing-keys``) is JSON ``{"current": kid, "keys": {kid: {"secret": b64, "created": t}}}``,
sealed as a whole with :func:`tlsedge.store.secrets.seal` (encrypted when ``TLSEDGE_STORE_KEY`` is set). A rotation
publishes the ``guard-keys`` topic; workers call :meth:`SigningKeys.refresh` from their periodic sweep, which costs
one topic read unless something changed.

MACs are HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5 allows truncation to at least half the output): short
cookies, and still far beyond what an attacker can guess. The inner and outer hash states are computed once per
key, so a MAC costs two hash-object copies instead of HMAC's key setup; that keeps cookie checks in the low
microseconds on the request path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time

from tlsedge.store.base import Entry, Store, StoreError
from tlsedge.store.secrets import seal, unseal

KEYS_KEY = "guard/signing-keys"
KEYS_TOPIC = "guard-keys"
MAC_BYTES = 16
SECRET_BYTES = 32
_BLOCK = 64  # SHA-256 block size: HMAC pads the key to it
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_ATTEMPTS = 8  # compare-and-swap retries before giving up on a store that keeps changing under us
_Sha256 = type(hashlib.sha256())


class StoreUnavailable(StoreError):
    """The signing keys cannot be read or written: callers fail closed (challenge again, refuse protected paths)."""


class SigningKeys:
    """The keys of the edge: sign with the current one, verify with any one still kept.

    :meth:`refresh` swaps the whole set in one attribute assignment, so a request (or a thread) never sees a
    current key id without its key.
    """

    __slots__ = ("_state",)

    def __init__(self, current: str, secrets: dict[str, bytes], *, topic: int = 0) -> None:
        if current not in secrets:
            raise ValueError(f"the current key {current!r} is not among the keys")
        states = {kid: _hmac_states(secret) for kid, secret in secrets.items()}
        self._state: tuple[str, dict[str, tuple[_Sha256, _Sha256]], int] = (current, states, topic)

    @classmethod
    def generate(cls) -> SigningKeys:
        """One fresh key kept only in memory (for tests and for tools that need no sharing)."""
        current, secrets = _one_key()
        return cls(current, secrets)

    @property
    def current(self) -> str:
        """The id of the key that signs."""
        return self._state[0]

    @property
    def snapshot(self) -> object:
        """An opaque token that changes whenever the keys do: caches of verified values compare it."""
        return self._state

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id that still verifies."""
        return tuple(self._state[1])

    def knows(self, kid: str) -> bool:
        """Whether ``kid`` is a key we still verify with."""
        return kid in self._state[1]

    def mac(self, kid: str, payload: bytes) -> bytes | None:
        """The truncated HMAC of ``payload`` under ``kid``, or None for an unknown key id."""
        states = self._state[1].get(kid)
        return None if states is None else _mac(states, payload)

    def sign(self, payload: bytes) -> tuple[str, bytes]:
        """``(kid, mac)`` of ``payload`` with the current key."""
        kid, states, _ = self._state
        return kid, _mac(states[kid], payload)

    def verify(self, kid: str, payload: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is ``payload``'s MAC under ``kid`` (constant time; an unknown kid is simply False)."""
        expected = self.mac(kid, payload)
        return expected is not None and len(mac) == MAC_BYTES and hmac.compare_digest(expected, mac)

    def refresh(self, store: Store) -> bool:
        """Re-read the keys when a rotation was published; True when they changed.

        Raises :class:`StoreUnavailable` when the store cannot be read: the keys already held stay in use, since
        they are still the best knowledge of which cookies are genuine.
        """
        if _topic_version(store) == self._state[2]:
            return False
        self._state = load_or_create(store)._state
        return True


def load_or_create(store: Store) -> SigningKeys:
    """The edge's signing keys, creating the first one if the store has none (safe when workers race)."""
    for _ in range(_ATTEMPTS):
        topic = _topic_version(store)
        entry = _get(store)
        if entry is not None:
            return _decode(entry.value, topic)
        current, secrets = _one_key()
        document = _encode(current, {current: (secrets[current], time.time())})
        if _put_if_version(store, document, 0):
            return SigningKeys(current, secrets, topic=topic)
    raise StoreUnavailable(f"the store keeps changing {KEYS_KEY!r} while it is being created; try again")


def rotate(store: Store, *, keep: int = 2) -> SigningKeys:
    """Make a new current key, keep the ``keep`` newest keys (the new one included) and announce the change.

    ``keep=2`` (the default) lets every cookie signed before the rotation live out its lifetime if rotations are
    further apart than the cookie lifetime; ``keep=1`` invalidates every cookie and challenge now.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1 (the new current key)")
    for _ in range(_ATTEMPTS):
        entry = _get(store)
        kept: dict[str, tuple[bytes, float]] = {} if entry is None else _records(entry.value)
        kid = _new_kid(set(kept))
        kept[kid] = (os.urandom(SECRET_BYTES), time.time())
        newest = sorted(kept.items(), key=lambda item: item[1][1], reverse=True)[:keep]
        kept = dict(newest)
        if _put_if_version(store, _encode(kid, kept), 0 if entry is None else entry.version):
            try:
                topic = store.publish(KEYS_TOPIC)
            except StoreError as exc:
                raise StoreUnavailable(str(exc)) from None
            return SigningKeys(kid, {name: secret for name, (secret, _) in kept.items()}, topic=topic)
    raise StoreUnavailable(f"the store keeps changing {KEYS_KEY!r} during the rotation; try again")


def _hmac_states(secret: bytes) -> tuple[_Sha256, _Sha256]:
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def _mac(states: tuple[_Sha256, _Sha256], payload: bytes) -> bytes:
    inner = states[0].copy()
    inner.update(payload)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()[:MAC_BYTES]


def _new_kid(taken: set[str]) -> str:
    """A short random id (6 URL-safe characters, never a dot, so it fits the dotted cookie format)."""
    while True:
        kid = base64.urlsafe_b64encode(os.urandom(4)).decode()[:6]
        if kid not in taken:
            return kid


def _one_key() -> tuple[str, dict[str, bytes]]:
    kid = _new_kid(set())
    return kid, {kid: os.urandom(SECRET_BYTES)}


def _encode(current: str, records: dict[str, tuple[bytes, float]]) -> bytes:
    keys = {kid: {"secret": base64.b64encode(secret).decode(), "created": created}
            for kid, (secret, created) in records.items()}
    return seal(KEYS_KEY, json.dumps({"current": current, "keys": keys}, sort_keys=True).encode())


def _records(stored: bytes) -> dict[str, tuple[bytes, float]]:
    return _parse(stored)[1]


def _decode(stored: bytes, topic: int) -> SigningKeys:
    current, records = _parse(stored)
    return SigningKeys(current, {kid: secret for kid, (secret, _) in records.items()}, topic=topic)


def _parse(stored: bytes) -> tuple[str, dict[str, tuple[bytes, float]]]:
    try:
        document = json.loads(unseal(KEYS_KEY, stored))
        current = document["current"]
        records = {
            kid: (base64.b64decode(record["secret"], validate=True), float(record["created"]))
            for kid, record in document["keys"].items()
        }
        if not isinstance(current, str) or current not in records:
            raise ValueError("the current key is missing")
        if any(not secret for secret, _ in records.values()):
            raise ValueError("a key has an empty secret")
        if any("." in kid or not kid for kid in records):
            raise ValueError("a key id is empty or contains a dot")
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise StoreUnavailable(
            f"the store value {KEYS_KEY!r} is damaged ({exc}); delete it to make new keys "
            "(visitors will be challenged again)"
        ) from None
    return current, records


def _topic_version(store: Store) -> int:
    try:
        return store.topic_version(KEYS_TOPIC)
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None


def _get(store: Store) -> Entry | None:
    try:
        return store.get(KEYS_KEY)
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None


def _put_if_version(store: Store, value: bytes, version: int) -> bool:
    try:
        return store.put_if_version(KEYS_KEY, value, version)
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None
