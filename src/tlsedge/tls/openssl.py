"""Two OpenSSL calls that Python 3.11's ``ssl`` module does not expose, made through ctypes.

Why ctypes: Mozilla's "intermediate" profile wants the key-exchange groups X25519, P-256 and P-384 (``ssl`` only has
``set_ecdh_curve``, which sets a single curve), and sharing session tickets between worker processes needs the ticket
encryption keys set explicitly (``ssl`` has no API for them at all). Both are one ``SSL_CTX_ctrl`` call each.

The calls must go to the very libssl that ``_ssl`` is linked against (a second copy of OpenSSL in the process, e.g. one
bundled by a wheel, has a different ``SSL_CTX`` layout). ``dlopen`` of the ``_ssl`` extension module returns the handle
of the already loaded module, and ``dlsym`` on that handle searches the module and then its own dependencies in load
order, so the symbol found is the one ``_ssl`` itself uses.

The ``SSL_CTX*`` sits right after the object header of a ``PySSLContext`` (``PyObject_HEAD; SSL_CTX *ctx; ...``), i.e.
at ``id(ctx) + object.__basicsize__``.
"""

from __future__ import annotations

import _ssl
import ctypes
import ctypes.util
import ssl

# From openssl/ssl.h (stable across 1.1.1 and 3.x).
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_SET_GROUPS_LIST = 92

TICKET_KEYS_LENGTH = 80  # 16 bytes key name + 32 bytes HMAC secret + 32 bytes AES key (OpenSSL >= 1.1.0)


class OpenSSLError(RuntimeError):
    """An OpenSSL call made through ctypes failed."""


def _load_libssl() -> ctypes.CDLL:
    path = getattr(_ssl, "__file__", None)
    if path:  # _ssl is a shared module: resolve through its own dependency tree
        lib = ctypes.CDLL(path)
        if hasattr(lib, "SSL_CTX_ctrl"):
            return lib
    name = ctypes.util.find_library("ssl") or "libssl.so.3"
    return ctypes.CDLL(name)


_libssl = _load_libssl()
_SSL_CTX_ctrl = _libssl.SSL_CTX_ctrl
_SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
_SSL_CTX_ctrl.restype = ctypes.c_long
_ERR_clear_error = _libssl.ERR_clear_error  # libcrypto, found through the same dependency tree
_ERR_clear_error.argtypes = []
_ERR_clear_error.restype = None


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX*`` inside a Python ``SSLContext``."""
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected ssl.SSLContext, got {type(ctx).__name__}")
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise OpenSSLError("SSLContext has no SSL_CTX")
    return ptr


def _ctrl(ctx: ssl.SSLContext, cmd: int, larg: int, parg: bytes | None, what: str) -> None:
    buf = ctypes.create_string_buffer(parg, len(parg)) if parg is not None else None
    if _SSL_CTX_ctrl(ssl_ctx_pointer(ctx), cmd, larg, buf) != 1:
        _ERR_clear_error()  # leave no stale error behind for the next ssl call to misreport
        raise OpenSSLError(f"OpenSSL refused {what} ({ssl.OPENSSL_VERSION})")


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Set the key-exchange groups, e.g. ``"X25519:P-256:P-384"`` (``SSL_CTX_set1_groups_list``)."""
    _ctrl(ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii") + b"\0", f"groups {groups!r}")


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> None:
    """Set the session-ticket encryption keys (``SSL_CTX_set_tlsext_ticket_keys``): 80 bytes."""
    if len(keys) != TICKET_KEYS_LENGTH:
        raise ValueError(f"ticket keys must be {TICKET_KEYS_LENGTH} bytes, got {len(keys)}")
    _ctrl(ctx, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), keys, "session ticket keys")
