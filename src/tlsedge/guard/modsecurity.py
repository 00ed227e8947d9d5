"""A small ctypes binding over libmodsecurity3's C API (``msc_*``), as Debian ships it (3.0.x).

Why ctypes: the only Python binding on PyPI (pymodsecurity) no longer builds against libmodsecurity 3, and a C
extension would need the headers at install time. ``ctypes.CDLL`` releases the GIL for the length of every call, so
several threads can evaluate rules at once while the event loop keeps running.

Ownership, read from the library's sources (src/transaction.cc, src/rules_set.cc of v3.0.9):
- ``msc_intervention`` copies ``url`` and ``log`` with strdup when it reports a disruptive action; the caller frees
  both (3.0.9 exports no ``msc_intervention_cleanup``), which `Transaction.intervention` does with libc ``free``.
- ``msc_rules_add``/``msc_rules_add_file`` strdup their error message; `RulesSet` frees it after copying it.
- ``msc_new_transaction_with_id`` copies the id; the text handed to the log callback lives only during the call.
Objects must be freed in order: transactions before their rules set and engine.

Importing this module never fails: `available` says why the library cannot be used, so the configuration layer can
turn it into an operator error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LIBRARY_NAMES = ("libmodsecurity.so.3",)
_INSTALL_HINT = "install Debian's libmodsecurity3 package (apt-get install libmodsecurity3)"

LogCallback = Callable[[int | None, bytes | None], None]
"""Receives the transaction's user data (an integer key, None for 0) and the rule message text."""

_LOG_CB_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


class ModSecurityError(Exception):
    """The library refused something; the message is the library's own (for rules: file, line and reason)."""


class Intervention(ctypes.Structure):
    """``ModSecurityIntervention``; ``url`` and ``log`` are pointers so they can be freed after reading."""

    _fields_ = (
        ("status", ctypes.c_int),
        ("pause", ctypes.c_int),
        ("url", ctypes.c_void_p),
        ("log", ctypes.c_void_p),
        ("disruptive", ctypes.c_int),
    )


_P = ctypes.c_void_p
_S = ctypes.c_char_p
_I = ctypes.c_int
_N = ctypes.c_size_t
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "msc_init": (_P, []),
    "msc_who_am_i": (_S, [_P]),
    "msc_set_connector_info": (None, [_P, _S]),
    "msc_set_log_cb": (None, [_P, _LOG_CB_TYPE]),
    "msc_cleanup": (None, [_P]),
    "msc_create_rules_set": (_P, []),
    "msc_rules_add": (_I, [_P, _S, ctypes.POINTER(_P)]),
    "msc_rules_add_file": (_I, [_P, _S, ctypes.POINTER(_P)]),
    "msc_rules_cleanup": (_I, [_P]),
    "msc_new_transaction_with_id": (_P, [_P, _P, _S, _P]),
    "msc_process_connection": (_I, [_P, _S, _I, _S, _I]),
    "msc_process_uri": (_I, [_P, _S, _S, _S]),
    "msc_add_n_request_header": (_I, [_P, _S, _N, _S, _N]),
    "msc_process_request_headers": (_I, [_P]),
    "msc_append_request_body": (_I, [_P, _S, _N]),
    "msc_process_request_body": (_I, [_P]),
    "msc_add_n_response_header": (_I, [_P, _S, _N, _S, _N]),
    "msc_process_response_headers": (_I, [_P, _I, _S]),
    "msc_intervention": (_I, [_P, ctypes.POINTER(Intervention)]),
    "msc_process_logging": (_I, [_P]),
    "msc_transaction_cleanup": (None, [_P]),
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_free: Any = None
_load_error: str | None = None


def _load() -> None:
    global _lib, _free, _load_error
    with _lock:
        if _lib is not None or _load_error is not None:
            return
        lib = None
        errors = []
        for name in (*_LIBRARY_NAMES, None):
            path = name or ctypes.util.find_library("modsecurity")  # slow (runs ldconfig): only as a last resort
            if not path:
                continue
            try:
                lib = ctypes.CDLL(path)
                break
            except OSError as exc:
                errors.append(str(exc))
        if lib is None:
            reason = errors[0] if errors else "libmodsecurity.so.3 not found"
            _load_error = f"libmodsecurity3 cannot be loaded ({reason}); {_INSTALL_HINT}"
            return
        try:
            for symbol, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, symbol)
                fn.restype = restype
                fn.argtypes = argtypes
        except AttributeError as exc:
            _load_error = f"libmodsecurity3 lacks a function tlsedge needs ({exc}); {_INSTALL_HINT} (version 3.0)"
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.free.restype = None
        libc.free.argtypes = [ctypes.c_void_p]
        _free = libc.free
        _lib = lib


def available() -> str | None:
    """None when the library can be used, else why not (with what to install)."""
    _load()
    return _load_error


def library() -> ctypes.CDLL:
    """The loaded library with its signatures set; raises ModSecurityError when it is missing."""
    if _lib is not None:
        return _lib
    _load()
    if _lib is None:
        raise ModSecurityError(_load_error)
    return _lib


def _take_string(pointer: int | None) -> str:
    """Copy a malloc'ed C string and free it."""
    if not pointer:
        return ""
    try:
        return ctypes.string_at(pointer).decode("utf-8", "replace")
    finally:
        _free(pointer)


class ModSecurity:
    """One ``msc_init`` instance: owns the log callback and the in-memory collections (ip, global) of its rules."""

    def __init__(self, log_callback: LogCallback, connector: str = "tlsedge") -> None:
        lib = library()
        self._lib = lib
        # Kept on the instance: the C side holds only a raw pointer to this trampoline.
        self._callback = _LOG_CB_TYPE(log_callback)
        self.handle = lib.msc_init()
        lib.msc_set_connector_info(self.handle, connector.encode())
        lib.msc_set_log_cb(self.handle, self._callback)

    def who_am_i(self) -> str:
        return self._lib.msc_who_am_i(self.handle).decode()

    def close(self) -> None:
        if self.handle:
            self._lib.msc_cleanup(self.handle)
            self.handle = None


class RulesSet:
    """``msc_create_rules_set``; rules are appended with `add` (directive text) or `add_file`."""

    def __init__(self) -> None:
        self._lib = library()
        self.handle = self._lib.msc_create_rules_set()
        self._reported = 0  # the library appends each parser error to those of earlier calls


    def add(self, directives: str) -> int:
        """Load directive text; returns the number of rules added, raises ModSecurityError with the parser's message."""
        return self._checked(self._lib.msc_rules_add, directives.encode())

    def add_file(self, path: Path | str) -> int:
        """Load a rules file (relative paths inside it resolve against its directory)."""
        return self._checked(self._lib.msc_rules_add_file, str(path).encode())

    def _checked(self, fn: Any, argument: bytes) -> int:
        error = ctypes.c_void_p()
        count = fn(self.handle, argument, ctypes.byref(error))
        message = _take_string(error.value)
        if count < 0:
            new, self._reported = message[self._reported:], len(message)
            raise ModSecurityError(new.strip() or "rules rejected without a message")
        return count

    def close(self) -> None:
        if self.handle:
            self._lib.msc_rules_cleanup(self.handle)
            self.handle = None


class Transaction:
    """One request/response pair; every method maps to one ``msc_*`` call. `cleanup` must be called exactly once."""

    __slots__ = ("_lib", "handle")

    def __init__(self, engine: ModSecurity, rules: RulesSet, unique_id: bytes, user_data: int) -> None:
        self._lib = lib = library()
        self.handle = lib.msc_new_transaction_with_id(engine.handle, rules.handle, unique_id, user_data)

    def process_connection(self, client_ip: bytes, client_port: int, server_ip: bytes, server_port: int) -> None:
        self._lib.msc_process_connection(self.handle, client_ip, client_port, server_ip, server_port)

    def process_uri(self, uri: bytes, method: bytes, http_version: bytes) -> None:
        """``http_version`` without the ``HTTP/`` prefix ("1.1"): the library prepends it for REQUEST_PROTOCOL."""
        self._lib.msc_process_uri(self.handle, uri, method, http_version)

    def add_request_header(self, name: bytes, value: bytes) -> None:
        self._lib.msc_add_n_request_header(self.handle, name, len(name), value, len(value))

    def process_request_headers(self) -> None:
        self._lib.msc_process_request_headers(self.handle)

    def append_request_body(self, chunk: bytes) -> None:
        self._lib.msc_append_request_body(self.handle, chunk, len(chunk))

    def process_request_body(self) -> None:
        self._lib.msc_process_request_body(self.handle)

    def add_response_header(self, name: bytes, value: bytes) -> None:
        self._lib.msc_add_n_response_header(self.handle, name, len(name), value, len(value))

    def process_response_headers(self, status: int, protocol: bytes = b"HTTP 1.1") -> None:
        self._lib.msc_process_response_headers(self.handle, status, protocol)

    def intervention(self) -> tuple[int, str] | None:
        """A pending disruptive action as (status, log text), or None; the library forgets it once read.

        The log text is the disruptive rule's message: the library sends it only here, not to the log callback.
        """
        it = Intervention()
        disruptive = self._lib.msc_intervention(self.handle, ctypes.byref(it))
        if it.url:
            _free(it.url)
        log = _take_string(it.log)
        return (it.status or 403, log) if disruptive else None

    def process_logging(self) -> None:
        self._lib.msc_process_logging(self.handle)

    def cleanup(self) -> None:
        if self.handle:
            self._lib.msc_transaction_cleanup(self.handle)
            self.handle = None
