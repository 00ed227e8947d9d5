"""A real key server on 127.0.0.1 and the edge's pool over mutual TLS: signatures, refusals, rate, order, oplog."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
from keyserver_support import (
    SCHEMES,
    KsPki,
    cv_payload,
    edge_context,
    file_mode,
    keyserver_in_thread,
    make_pool,
    oplog_lines,
    run,
    running_keyserver,
    shared_pki,
    verify,
    write_config,
)

from tlsedge.tls.keyless.client import KeylessError
from tlsedge.tls.keyless.wire import (
    ErrorReply,
    FrameReader,
    decode_response,
    encode_frame,
    encode_ping,
    encode_sign,
)


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    return shared_pki(tmp_path_factory)

SNI = {"p256": "www.shop.example", "p384": "p384.example", "rsa": "rsa.example", "ed25519": "ed.example"}


def test_every_key_type_signs_and_the_signature_verifies(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki)
    cases = [(kind, SCHEMES[kind], 32) for kind in SCHEMES] + [
        ("rsa", 0x0805, 48), ("rsa", 0x0806, 32), ("p256", 0x0403, 48), ("ed25519", 0x0807, 48)]

    async def main() -> list[bytes]:
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [port])
            try:
                return [
                    await pool.sign(key_id=ks_pki.sites[kind].key_id, algorithm=algorithm,
                                    payload=cv_payload(size), server_name=SNI[kind], client_ip="198.51.100.7")
                    for kind, algorithm, size in cases
                ]
            finally:
                await pool.close()

    signatures = run(main())
    for (kind, algorithm, size), signature in zip(cases, signatures, strict=True):
        verify(ks_pki.sites[kind].cert_pem, algorithm, cv_payload(size), signature)
    lines = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "sign"]
    assert [line["result"] for line in lines] == ["ok"] * len(cases)
    first = lines[0]
    assert first["edge"] == "edge-1.example" and first["peer"].startswith("127.0.0.1:")
    assert first["sni"] == "www.shop.example" and first["client_ip"] == "198.51.100.7"
    assert first["key"] == ks_pki.sites["p256"].key_id[:8].hex() and first["alg"] == "ecdsa_secp256r1_sha256"
    assert first["payload_sha256"] == hashlib.sha256(cv_payload(32)).hexdigest()[:16]
    assert first["time"].endswith("Z") and "T" in first["time"] and isinstance(first["ms"], float)


REFUSALS = [
    ("bare digest", dict(payload=hashlib.sha256(b"x").digest()), "payload_refused"),
    ("wrong prefix", dict(payload=b"\x20" * 64 + b"TLS 1.3, server Certificate" + b"\x00" * 38), "payload_refused"),
    ("TLS 1.2 style", dict(payload=b"\x01" * 64 + b"\x03\x00\x1d\x20" + b"\x02" * 32), "payload_refused"),
    ("client context", dict(payload=b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + b"\x03" * 32),
     "payload_refused"),
    ("hash length", dict(payload=cv_payload(20)), "payload_refused"),
    ("PKCS#1 v1.5 with an RSA key", dict(kind="rsa", algorithm=0x0401), "algorithm_refused"),
    ("SHA-1", dict(kind="rsa", algorithm=0x0201), "algorithm_refused"),
    ("P-384 scheme with a P-256 key", dict(algorithm=0x0503), "algorithm_refused"),
    ("ECDSA scheme with an Ed25519 key", dict(kind="ed25519", algorithm=0x0403), "algorithm_refused"),
    ("SNI not allowed", dict(server_name="evil.example"), "name_refused"),
    ("SNI two labels under the wildcard", dict(server_name="a.b.shop.example"), "name_refused"),
    ("no SNI", dict(server_name=None), "name_refused"),
    ("unknown key", dict(key_id=bytes(32)), "key_not_found"),
]


def test_non_handshake_and_mismatched_requests_are_refused(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki)

    async def attempt(pool, kind="p256", **overrides):
        request = dict(key_id=ks_pki.sites[kind].key_id, algorithm=SCHEMES[kind], payload=cv_payload(32),
                       server_name=SNI[kind], client_ip="192.0.2.9") | overrides
        try:
            await pool.sign(**request)
        except KeylessError as exc:
            return exc
        raise AssertionError(f"signed {overrides}")

    async def main() -> list[KeylessError]:
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [port])
            try:
                errors = [await attempt(pool, **overrides) for _, overrides, _ in REFUSALS]
                assert pool.status()[0]["state"] == "up"  # a refusal is an answer: the server stays up
                return errors
            finally:
                await pool.close()

    errors = run(main())
    for (what, _, reason), error in zip(REFUSALS, errors, strict=True):
        assert (error.code, error.reason) == ("refused", reason), what
        assert reason in str(error) and "keyless site 'shop'" in str(error)
    lines = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "sign"]
    assert [line["result"] for line in lines] == [f"refused: {reason}" for _, _, reason in REFUSALS]
    assert all(line["reason"] for line in lines)


def test_edge_identity_not_allowed_for_the_key(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, edges=("edge-1.example", "spiffe://edges/paris-1"), kinds=("p256",))

    async def sign_as(edge: str, port: int) -> bytes | KeylessError:
        pool = make_pool(ks_pki, [port], edge=edge)
        try:
            return await pool.sign(key_id=ks_pki.sites["p256"].key_id, algorithm=0x0403, payload=cv_payload(),
                                   server_name="shop.example", client_ip="192.0.2.1")
        except KeylessError as exc:
            return exc
        finally:
            await pool.close()

    async def main() -> dict[str, bytes | KeylessError]:
        async with running_keyserver(config) as (_, port):
            return {edge: await sign_as(edge, port) for edge in ("edge-1", "edge-2", "spiffe")}

    results = run(main())
    assert isinstance(results["edge-1"], bytes) and isinstance(results["spiffe"], bytes)
    refused = results["edge-2"]
    assert isinstance(refused, KeylessError) and refused.reason == "edge_refused"
    lines = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "sign"]
    assert [(line["edge"], line["result"]) for line in lines] == [
        ("edge-1.example", "ok"), ("edge-2.example", "refused: edge_refused"), ("spiffe://edges/paris-1", "ok")]


def test_rate_limit_per_edge(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, edges=("*",), kinds=("ed25519",), rate="2/s", burst=3)

    async def burst(pool, count: int) -> list[str]:
        outcomes = []
        for _ in range(count):
            try:
                await pool.sign(key_id=ks_pki.sites["ed25519"].key_id, algorithm=0x0807, payload=cv_payload(),
                                server_name="ed.example", client_ip="192.0.2.1")
                outcomes.append("ok")
            except KeylessError as exc:
                outcomes.append(exc.reason or exc.code)
        return outcomes

    async def main() -> tuple[list[str], list[str], list[str]]:
        async with running_keyserver(config) as (_, port):
            one, two = make_pool(ks_pki, [port], edge="edge-1"), make_pool(ks_pki, [port], edge="edge-2")
            try:
                first = await burst(one, 5)
                other = await burst(two, 3)  # another edge has its own allowance
                await asyncio.sleep(0.55)  # one interval (0.5 s) later: one more for edge-1
                return first, other, await burst(one, 2)
            finally:
                await one.close()
                await two.close()

    first, other, later = run(main())
    assert first == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    assert other == ["ok", "ok", "ok"]
    assert later == ["ok", "rate_limited"]
    results = [line["result"] for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "sign"]
    assert results.count("refused: rate_limited") == 3


def test_concurrent_requests_on_one_connection_are_matched_by_id(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki)
    kinds = ["rsa", "ed25519", "p256", "p384"] * 50

    async def main() -> tuple[list[bytes], list[dict]]:
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [port])
            try:
                signatures = await asyncio.gather(*(
                    pool.sign(key_id=ks_pki.sites[kind].key_id, algorithm=SCHEMES[kind],
                              payload=cv_payload(32, fill=index % 256), server_name=SNI[kind], client_ip="192.0.2.1")
                    for index, kind in enumerate(kinds)
                ))
                return list(signatures), pool.status()
            finally:
                await pool.close()

    signatures, status = run(main())
    for index, (kind, signature) in enumerate(zip(kinds, signatures, strict=True)):
        verify(ks_pki.sites[kind].cert_pem, SCHEMES[kind], cv_payload(32, fill=index % 256), signature)
    assert status[0]["in_flight"] == 0 and status[0]["connected"]
    connects = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "connect"]
    assert len(connects) == 1  # all 200 on one connection


def test_answers_come_back_out_of_order_on_the_wire(tmp_path: Path, ks_pki: KsPki) -> None:
    """A refusal is answered at once while a signature waits for the thread pool: id 2 is answered before id 1."""
    config = write_config(tmp_path, ks_pki)
    rsa = ks_pki.sites["rsa"]

    async def main() -> list[tuple[int, bytes | ErrorReply]]:
        async with running_keyserver(config) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=edge_context(ks_pki))
            common = dict(key_id=rsa.key_id, server_name="rsa.example", client_ip="192.0.2.1")
            writer.write(encode_sign(1, algorithm=0x0804, payload=cv_payload(), **common)
                         + encode_sign(2, algorithm=0x0804, payload=b"bare digest".ljust(32), **common)
                         + encode_ping(3, b"p") + encode_frame(0x42, 4))
            frames = FrameReader()
            answers: list[tuple[int, bytes | ErrorReply]] = []
            while len(answers) < 4:
                data = await reader.read(65536)
                assert data, f"connection closed after {answers}"
                answers += [(f.request_id, decode_response(f)) for f in frames.feed(data)]
            writer.close()
            return answers

    answers = run(main())
    assert [request_id for request_id, _ in answers][-1] == 1, answers
    by_id = dict(answers)
    verify(rsa.cert_pem, 0x0804, cv_payload(), by_id[1])  # type: ignore[arg-type]
    assert isinstance(by_id[2], ErrorReply) and by_id[2].name == "payload_refused"
    assert by_id[3] == b"p"
    assert isinstance(by_id[4], ErrorReply) and by_id[4].name == "unknown_opcode"


def test_oplog_holds_no_key_material_and_is_private(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki)

    async def main() -> bytes:
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [port])
            try:
                return await pool.sign(key_id=ks_pki.sites["ed25519"].key_id, algorithm=0x0807,
                                       payload=cv_payload(), server_name="ed.example", client_ip="192.0.2.1")
            finally:
                await pool.close()

    signature = run(main())
    log = (tmp_path / "ops.log").read_bytes()
    assert file_mode(tmp_path / "ops.log") == 0o600
    ops = [line["op"] for line in oplog_lines(tmp_path / "ops.log")]
    assert ops == ["start", "connect", "sign", "disconnect", "stop"]
    assert signature.hex().encode() not in log and cv_payload().hex().encode() not in log
    for site in ks_pki.sites.values():
        pem = site.key_file.read_bytes()
        body = b"".join(pem.splitlines()[1:-1])
        for start in range(0, len(body) - 24, 24):
            assert body[start : start + 24] not in log


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_pool_works_on_both_event_loops(tmp_path: Path, ks_pki: KsPki, loop: str) -> None:
    """The workers run on uvloop: the pool (TLS, pin check, frames) must behave the same there. The key server
    runs on asyncio's loop in a thread (it refuses uvloop, whose accepted connections race start_tls)."""
    import uvloop

    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main(port: int) -> bytes:
        pool = make_pool(ks_pki, [port])
        try:
            async with asyncio.timeout(10):
                return await pool.sign(key_id=ks_pki.sites["p256"].key_id, algorithm=0x0403,
                                       payload=cv_payload(), server_name="shop.example", client_ip="::1")
        finally:
            await pool.close()

    with keyserver_in_thread(config) as port:
        signature = uvloop.run(main(port)) if loop == "uvloop" else asyncio.run(main(port))
    verify(ks_pki.sites["p256"].cert_pem, 0x0403, cv_payload(), signature)


def test_the_key_server_refuses_uvloop(tmp_path: Path, ks_pki: KsPki) -> None:
    import uvloop

    async def main() -> None:
        async with running_keyserver(write_config(tmp_path, ks_pki, kinds=("p256",))):
            raise AssertionError("started on uvloop")

    with pytest.raises(RuntimeError, match="asyncio's own event loop"):
        uvloop.run(main())


def test_a_broken_stream_is_answered_then_closed_and_a_bad_message_is_not(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main() -> tuple[list[tuple[int, bytes | ErrorReply]], bytes]:
        async with running_keyserver(config) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=edge_context(ks_pki))
            writer.write(b"\x01\x00\x01\x00\x00\x00\x00\x05\x00\x01" + b"\x01")  # SIGN with a truncated field
            writer.write(encode_ping(6, b"still here"))
            writer.write(b"\x01\x00\x01\x00\x00\x00\x00\x07\xff\xff")  # body longer than any frame may be
            frames = FrameReader()
            answers: list[tuple[int, bytes | ErrorReply]] = []
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                answers += [(f.request_id, decode_response(f)) for f in frames.feed(data)]
            writer.close()
            return answers, data

    answers, end = run(main())
    assert end == b""  # closed after the framing error
    assert [request_id for request_id, _ in answers] == [5, 6, 7]
    assert isinstance(answers[0][1], ErrorReply) and answers[0][1].name == "bad_request"
    assert answers[1][1] == b"still here"
    assert isinstance(answers[2][1], ErrorReply) and "limit" in answers[2][1].text
    [gone] = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "disconnect"]
    assert gone["reason"].startswith("protocol error")


def test_idle_connections_are_closed(tmp_path: Path, ks_pki: KsPki, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsedge.keyserver import server as server_module

    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main() -> float:
        async with running_keyserver(config) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=edge_context(ks_pki))
            started = time.monotonic()
            assert await reader.read(100) == b""
            writer.close()
            return time.monotonic() - started

    assert 0.15 < run(main()) < 2.0
    [gone] = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "disconnect"]
    assert gone["reason"] == "idle"


def test_plain_tcp_garbage_is_refused_at_the_handshake(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main() -> bytes:
        async with running_keyserver(config) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await reader.read(100)
            writer.close()
            return data

    assert b"HTTP" not in run(main())
    [line] = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "handshake"]
    assert line["result"] == "refused" and line["reason"]
