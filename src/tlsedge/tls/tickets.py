"""The session-ticket key shared by every worker process and every worker generation.

Why: OpenSSL makes random ticket keys per ``SSL_CTX``, so a ticket issued by one worker could not be decrypted by
another (or by the next generation after a reload) and every reconnect would pay for a full handshake. Workers
instead read one key from ``state_dir/tls/ticket.key``. The key is rotated by age (``max_age``, default a day) to
bound how much recorded traffic a stolen key could decrypt; tickets older than the rotation then fall back to a full
handshake, which is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from tlsedge.tls.openssl import TICKET_KEYS_LENGTH


def ticket_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / "tls" / "ticket.key"


def load_or_create_ticket_keys(state_dir: Path, max_age: float = 86400.0) -> bytes:
    """Return the 80-byte ticket key from the state dir, creating or replacing it when missing, invalid or stale.

    The directory is made 0700 and the file 0600. Check-and-create runs under an exclusive ``flock`` so workers that
    start together agree on one key; a new key is written to a temporary file and renamed over the old one, so a
    reader never sees a partial key.
    """
    path = ticket_key_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        key = _read_fresh(path, max_age)
        return key if key is not None else _write_new_key(path)
    finally:
        os.close(lock_fd)  # releases the lock


def _read_fresh(path: Path, max_age: float) -> bytes | None:
    try:
        if time.time() - path.stat().st_mtime >= max_age:
            return None
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) == TICKET_KEYS_LENGTH else None


def _write_new_key(path: Path) -> bytes:
    key = os.urandom(TICKET_KEYS_LENGTH)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return key
