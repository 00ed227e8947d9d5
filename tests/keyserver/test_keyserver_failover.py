"""Several key servers behind one pool: failover mid-traffic, nothing up, silent servers, health pings."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from keyserver_support import (
    KsPki,
    cv_payload,
    make_pool,
    oplog_lines,
    run,
    running_keyserver,
    shared_pki,
    verify,
    write_config,
)

from tlsedge.tls.keyless.client import KeylessError, KeyserverPool


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    return shared_pki(tmp_path_factory)


async def sign(pool: KeyserverPool, pki: KsPki, fill: int = 1) -> bytes:
    return await pool.sign(key_id=pki.sites["p256"].key_id, algorithm=0x0403, payload=cv_payload(fill=fill),
                           server_name="shop.example", client_ip="192.0.2.1")


def two_configs(tmp_path: Path, pki: KsPki) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return (write_config(tmp_path / "a", pki, kinds=("p256",)), write_config(tmp_path / "b", pki, kinds=("p256",)))


def signed_by(directory: Path) -> int:
    return sum(1 for line in oplog_lines(directory / "ops.log") if line["op"] == "sign" and line["result"] == "ok")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kill_one_key_server_mid_traffic(tmp_path: Path, ks_pki: KsPki) -> None:
    config_a, config_b = two_configs(tmp_path, ks_pki)

    async def main() -> tuple[list[tuple[int, bytes | KeylessError]], list[dict]]:
        async with running_keyserver(config_a) as (server_a, port_a), running_keyserver(config_b) as (_, port_b):
            pool = make_pool(ks_pki, [port_a, port_b], ping_interval=0.2)
            pool.start()
            results: list[tuple[int, bytes | KeylessError]] = []
            stop = time.monotonic() + 1.2

            async def traffic(worker: int) -> None:
                index = 0
                while time.monotonic() < stop:
                    index += 1
                    fill = (worker * 31 + index) % 256
                    try:
                        results.append((fill, await sign(pool, ks_pki, fill=fill)))
                    except KeylessError as exc:
                        results.append((fill, exc))

            workers = [asyncio.create_task(traffic(n)) for n in range(16)]
            await asyncio.sleep(0.4)
            await server_a.close()  # mid-traffic: answers what it is signing, refuses new work, hangs up
            await asyncio.gather(*workers)
            status = pool.status()
            await pool.close()
            return results, status

    results, status = run(main())
    failures = [r for _, r in results if not isinstance(r, bytes)]
    assert not failures, failures[:3]
    assert len(results) > 100
    for fill, signature in results:
        verify(ks_pki.sites["p256"].cert_pem, 0x0403, cv_payload(fill=fill), signature)  # type: ignore[arg-type]
    before = signed_by(tmp_path / "a")
    assert before > 10 and signed_by(tmp_path / "b") > 10  # both served while both were up
    assert [s["state"] for s in status] == ["down", "up"]
    assert status[1]["rtt_ms"] is not None and status[0]["last_error"]


def test_nothing_up_fails_quickly_as_unavailable(ks_pki: KsPki) -> None:
    ports = [free_port(), free_port()]

    async def main() -> tuple[float, float, KeylessError]:
        pool = make_pool(ks_pki, ports, timeout=2.0)
        started = time.monotonic()
        with contextlib.suppress(KeylessError):
            await sign(pool, ks_pki)
        first = time.monotonic() - started
        started = time.monotonic()
        try:
            await sign(pool, ks_pki)
            raise AssertionError("signed with nothing up")
        except KeylessError as exc:
            error = exc
        await pool.close()
        return first, time.monotonic() - started, error

    first, second, error = run(main())
    assert first < 1.0 and second < 0.1  # refused connections fail at once; then both are backing off
    assert error.code == "unavailable"
    assert all(f"127.0.0.1:{port}: down" in str(error) for port in ports), str(error)


def test_a_silent_server_costs_only_its_share_of_the_timeout(tmp_path: Path, ks_pki: KsPki) -> None:
    """A key server that accepts but never answers: the request moves on in time; alone, it times out."""
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def main() -> tuple[float, float, KeylessError]:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        silent_port = silent.sockets[0].getsockname()[1]
        async with running_keyserver(config) as (_, port):
            pool = make_pool(ks_pki, [silent_port, port], timeout=1.0)
            pool._turn = len(pool._endpoints) - 1  # the silent one is tried first
            started = time.monotonic()
            signature = await sign(pool, ks_pki)
            mixed = time.monotonic() - started
            assert len(signature) > 60
            await pool.close()
        alone = make_pool(ks_pki, [silent_port], timeout=0.5)
        started = time.monotonic()
        try:
            await sign(alone, ks_pki)
            raise AssertionError("a silent server signed")
        except KeylessError as exc:
            error = exc
        timed = time.monotonic() - started
        await alone.close()
        silent.close()
        return mixed, timed, error

    mixed, timed, error = run(main())
    assert 0.4 <= mixed < 1.0  # half of the 1 s budget on the silent one, then the good one
    assert 0.45 <= timed < 0.8 and error.code == "timeout"
    assert "timed out" in str(error) or "no answer" in str(error)


def test_pings_mark_servers_down_and_up_again(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki, kinds=("p256",))

    async def wait_for_state(pool: KeyserverPool, state: str) -> dict:
        for _ in range(100):
            if pool.status()[0]["state"] == state:
                return pool.status()[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"never {state}: {pool.status()}")

    async def main() -> tuple[dict, dict, dict, bytes]:
        port = free_port()
        pool = make_pool(ks_pki, [port], ping_interval=0.05, timeout=0.5)
        assert pool.status()[0]["state"] == "unknown"
        async with running_keyserver(config, port) as (server, _):
            pool.start()
            up = await wait_for_state(pool, "up")
            await server.close()
            down = await wait_for_state(pool, "down")
        async with running_keyserver(config, port):
            again = await wait_for_state(pool, "up")  # reconnected by a ping, no request needed
            signature = await sign(pool, ks_pki)
        await pool.close()
        return up, down, again, signature

    up, down, again, signature = run(main())
    assert up["rtt_ms"] is not None and up["rtt_ms"] < 500 and up["connected"]
    assert down["last_error"] and not down["connected"]
    assert again["connected"] and len(signature) > 60
    pings = [line for line in oplog_lines(tmp_path / "ops.log") if line["op"] == "connect"]
    assert len(pings) >= 2  # one connection to each incarnation of the key server


def test_requests_in_flight_when_a_connection_dies_go_to_the_other_server(tmp_path: Path, ks_pki: KsPki) -> None:
    """Requests already written to a server whose connection breaks are retried on the other, not failed."""
    config_a, config_b = two_configs(tmp_path, ks_pki)

    async def main() -> tuple[list[bytes], str]:
        async with running_keyserver(config_a) as (server_a, port_a), running_keyserver(config_b) as (_, port_b):
            pool = make_pool(ks_pki, [port_a, port_b])
            await sign(pool, ks_pki)  # both connections exist after two requests (round robin)
            await sign(pool, ks_pki)
            requests = [asyncio.create_task(sign(pool, ks_pki, fill=n)) for n in range(50)]
            await asyncio.sleep(0)  # written, not answered yet
            for connection in list(server_a.connections):
                connection.transport.abort()  # type: ignore[union-attr]
            signatures = await asyncio.gather(*requests)
            lost = pool.status()[0]["last_error"]
            await pool.close()
            return list(signatures), lost

    signatures, lost = run(main())
    assert lost and "connection" in lost  # the first server's connection did break under the requests
    for n, signature in enumerate(signatures):
        verify(ks_pki.sites["p256"].cert_pem, 0x0403, cv_payload(fill=n), signature)
