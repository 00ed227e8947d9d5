"""Loading a certificate chain and key held in memory (from the store) into an SSLContext.

Why: ``SSLContext.load_cert_chain`` takes only file names, and writing a private key to a file just to read it back
leaves copies on disk. An anonymous ``memfd`` (RAM only, private to this process, gone when closed) gives OpenSSL a
path, ``/proc/self/fd/N``, without that.
"""

from __future__ import annotations

import os
import ssl


def load_pem_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` for PEM bytes; raises ssl.SSLError when they do not load (or do not match)."""
    cert_fd = os.memfd_create("tlsedge-chain", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("tlsedge-key", os.MFD_CLOEXEC)
    try:
        _write_all(cert_fd, chain_pem)
        _write_all(key_fd, key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}", password=_no_password)
    finally:
        os.close(cert_fd)
        os.close(key_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _no_password() -> bytes:
    """Never let OpenSSL prompt on a terminal: keys in the store are unencrypted PEM (sealed by the store)."""
    raise ValueError("encrypted private keys are not supported here")
