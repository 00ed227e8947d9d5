"""Mutual TLS between edges and the key server: who may connect, and the edge's pin on the key server."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import pytest
from keyserver_support import (
    KsPki,
    cv_payload,
    edge_context,
    make_pool,
    oplog_lines,
    run,
    running_keyserver,
    shared_pki,
    write_config,
)

from tlsedge.tls.keyless.client import KeylessError, KeyserverEndpoint, KeyserverPool, parse_pin
from tlsedge.tls.keyless.wire import FrameReader, encode_ping


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    return shared_pki(tmp_path_factory)


async def sign_with(pool: KeyserverPool, pki: KsPki) -> bytes:
    try:
        return await pool.sign(key_id=pki.sites["p256"].key_id, algorithm=0x0403, payload=cv_payload(),
                               server_name="shop.example", client_ip="192.0.2.1")
    finally:
        await pool.close()


def handshake_lines(directory: Path) -> list[dict]:
    return [line for line in oplog_lines(directory / "ops.log") if line["op"] == "handshake"]


def test_edge_with_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, ks_pki: KsPki, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, ks_pki, edges=("*",), kinds=("p256",))

    async def main() -> KeylessError:
        async with running_keyserver(config) as (_, port):
            with pytest.raises(KeylessError) as caught:
                await sign_with(make_pool(ks_pki, [port], edge="rogue"), ks_pki)
            return caught.value

    with caplog.at_level(logging.WARNING, logger="tlsedge.keyserver"):
        error = run(main())
    assert error.code == "unavailable" and "no key server could sign" in str(error)
    [line] = handshake_lines(tmp_path)
    assert line["result"] == "refused" and "client certificate not accepted" in line["reason"]
    assert "unable to get local issuer certificate" in line["reason"]
    assert line["peer"].startswith("127.0.0.1:")
    assert "refused at the TLS handshake" in caplog.text and "unable to get local issuer" in caplog.text
    assert not [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "sign"]


def test_edge_without_a_client_certificate_is_refused(tmp_path: Path, ks_pki: KsPki) -> None:
    """TLS 1.3: the client's handshake may complete before the server checks its certificate, so either the
    handshake or the first read fails; the key server never answers."""
    config = write_config(tmp_path, ks_pki, edges=("*",), kinds=("p256",))

    async def main() -> str:
        async with running_keyserver(config) as (_, port):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=edge_context(ks_pki, None))
                writer.write(encode_ping(1, b"hello"))
                data = await reader.read(1024)
                writer.close()
            except (ssl.SSLError, ConnectionError) as exc:
                return f"failed: {exc}"
            assert not FrameReader().feed(data), "the key server answered an edge without a certificate"
            return "closed"

    outcome = run(main())
    assert outcome == "closed" or outcome.startswith("failed"), outcome
    [line] = handshake_lines(tmp_path)
    assert line["result"] == "refused" and "peer did not return a certificate" in line["reason"]


def test_tls12_only_edges_are_refused(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, edges=("*",), kinds=("p256",))
    context = edge_context(ks_pki)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main() -> None:
        async with running_keyserver(config) as (_, port):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=context)

    run(main())
    [line] = handshake_lines(tmp_path)
    assert "protocol" in line["reason"] or "version" in line["reason"], line


def test_wrong_pin_is_refused_by_the_edge(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, kinds=("p256",))
    wrong = bytes(32)

    async def main() -> tuple[KeylessError, list[dict]]:
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [port], pin=wrong)
            with pytest.raises(KeylessError) as caught:
                await sign_with(pool, ks_pki)
            return caught.value, pool.status()

    error, status = run(main())
    assert error.code == "unavailable"
    assert "is not a pinned key server" in str(error) and "sha256/" in str(error)
    assert status[0]["state"] == "down" and "not a pinned key server" in status[0]["last_error"]
    ops = [line["op"] for line in oplog_lines(tmp_path / "ops.log")]
    assert "sign" not in ops  # the edge hung up before sending anything


def test_any_matching_pin_is_accepted(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main() -> bytes:
        async with running_keyserver(config) as (_, port):
            pool = KeyserverPool([KeyserverEndpoint("127.0.0.1", port)], pins=[bytes(32), ks_pki.pin],
                                 client_cert=ks_pki.edges["edge-1"].cert, client_key=ks_pki.edges["edge-1"].key)
            return await sign_with(pool, ks_pki)

    assert len(run(main())) > 60


def test_edge_client_key_readable_by_others_is_refused(tmp_path: Path, ks_pki: KsPki) -> None:
    key = tmp_path / "edge.key"
    key.write_bytes(ks_pki.edges["edge-1"].key.read_bytes())
    os.chmod(key, 0o644)
    with pytest.raises(ValueError, match=rf"mode 0644: other users could read or replace .*chmod 600 {key}"):
        KeyserverPool([KeyserverEndpoint("127.0.0.1", 1)], pins=[ks_pki.pin], client_cert=ks_pki.edges["edge-1"].cert,
                      client_key=key)
    os.chmod(key, 0o600)
    with pytest.raises(ValueError, match="cannot use the key server client certificate"):
        KeyserverPool([KeyserverEndpoint("127.0.0.1", 1)], pins=[ks_pki.pin], client_cert=ks_pki.edges["edge-2"].cert,
                      client_key=key)


def test_pool_arguments_are_checked(ks_pki: KsPki) -> None:
    edge = ks_pki.edges["edge-1"]
    with pytest.raises(ValueError, match="at least one key server"):
        KeyserverPool([], pins=[ks_pki.pin], client_cert=edge.cert, client_key=edge.key)
    with pytest.raises(ValueError, match="pin"):
        KeyserverPool([KeyserverEndpoint("h", 1)], pins=[b"short"], client_cert=edge.cert, client_key=edge.key)


def test_pins_are_written_and_read_as_sha256_base64(ks_pki: KsPki) -> None:
    from tlsedge.tls.keyless.client import format_pin

    text = format_pin(ks_pki.pin)
    assert text.startswith("sha256/") and len(text) == 7 + 44
    assert parse_pin(text) == ks_pki.pin
    for bad, message in (
        ("sha1/AAAA", "must start with 'sha256/'"),
        ("sha256/not base64!", "is not base64"),
        ("sha256/AAAA", "holds 3 bytes"),
    ):
        with pytest.raises(ValueError, match=message) as caught:
            parse_pin(bad)
        assert "openssl" in str(caught.value)  # says how to get the right one
    with pytest.raises(ValueError):
        format_pin(b"123")
