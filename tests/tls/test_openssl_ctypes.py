"""The two ctypes calls into libssl: they act on the right SSL_CTX and fail loudly."""

from __future__ import annotations

import ssl

import pytest

from tlsedge.tls import openssl


def test_calls_succeed_on_server_context() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    openssl.set_groups(ctx, "X25519:P-256:P-384")
    openssl.set_ticket_keys(ctx, bytes(80))


def test_bad_groups_raise_and_leave_no_openssl_error_behind() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(openssl.OpenSSLError, match="groups 'nonsense'"):
        openssl.set_groups(ctx, "nonsense")
    ctx.set_ciphers("ECDHE+AESGCM")  # a later ssl call does not trip over a stale error


def test_ticket_keys_must_be_80_bytes() -> None:
    with pytest.raises(ValueError, match="80 bytes"):
        openssl.set_ticket_keys(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), bytes(48))


def test_only_ssl_contexts() -> None:
    with pytest.raises(TypeError):
        openssl.ssl_ctx_pointer(object())  # type: ignore[arg-type]
