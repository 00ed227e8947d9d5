"""Private keys in the store: sealed with AES-256-GCM when ``TLSEDGE_STORE_KEY`` is set, plain PEM otherwise.

Why: the store file is mode 0600, which protects keys on a machine only root and tlsedge can read. An operator who
copies the store around (backups, a shared Redis later) can set a 32-byte key (base64) in the environment of every
tlsedge process; keys written after that are encrypted at rest and useless without it. The key name is bound into
the ciphertext (associated data), so a sealed value cannot be moved to another key unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlsedge.store.base import Store, StoreError

ENV_KEY = "TLSEDGE_STORE_KEY"
_MAGIC = b"tlsedge-sealed-v1:"
_NONCE = 12


def _master_key() -> bytes | None:
    text = os.environ.get(ENV_KEY)
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StoreError(f"{ENV_KEY} must be 32 random bytes in base64 (make one with: openssl rand -base64 32)")
    return key


def seal(name: str, data: bytes) -> bytes:
    """``data`` encrypted for the store key ``name`` (unchanged when no master key is configured)."""
    key = _master_key()
    if key is None:
        return data
    nonce = os.urandom(_NONCE)
    return _MAGIC + nonce + AESGCM(key).encrypt(nonce, data, name.encode())


def unseal(name: str, stored: bytes) -> bytes:
    """The plaintext of a value written by :func:`seal`."""
    if not stored.startswith(_MAGIC):
        return stored
    key = _master_key()
    if key is None:
        raise StoreError(f"the store value {name!r} is encrypted; set {ENV_KEY} to the key it was written with")
    body = stored[len(_MAGIC):]
    try:
        return AESGCM(key).decrypt(body[:_NONCE], body[_NONCE:], name.encode())
    except InvalidTag:
        raise StoreError(
            f"cannot decrypt the store value {name!r}: {ENV_KEY} is not the key it was written with, or the value "
            "was copied from another record"
        ) from None


def put_secret(store: Store, name: str, data: bytes) -> int:
    """Write a private key (sealed when a master key is set)."""
    return store.put(name, seal(name, data))


def get_secret(store: Store, name: str) -> bytes | None:
    """Read a private key written by :func:`put_secret`."""
    entry = store.get(name)
    return None if entry is None else unseal(name, entry.value)
