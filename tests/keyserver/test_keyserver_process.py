"""`tlsedge keyserver` as the owner runs it: a process, `--check`/`--pin`, SIGHUP reloads, SIGTERM stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from keyserver_support import (
    KsPki,
    cv_payload,
    make_pool,
    oplog_lines,
    shared_pki,
    verify,
    write_config,
)

from tlsedge.tls.keyless.client import KeylessError, format_pin


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    return shared_pki(tmp_path_factory)

KEYSERVER = [sys.executable, "-m", "tlsedge.cli", "keyserver"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate(timeout=5)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the key server did not start listening")


def sign_once(pki: KsPki, port: int) -> bytes | KeylessError:
    async def main() -> bytes | KeylessError:
        pool = make_pool(pki, [port])
        try:
            async with asyncio.timeout(10):
                return await pool.sign(key_id=pki.sites["rsa"].key_id, algorithm=0x0806, payload=cv_payload(48),
                                       server_name="rsa.example", client_ip="203.0.113.5")
        except KeylessError as exc:
            return exc
        finally:
            await pool.close()

    return asyncio.run(main())


def test_run_reload_and_stop(tmp_path: Path, ks_pki: KsPki) -> None:
    port = free_port()
    config = write_config(tmp_path, ks_pki, kinds=("rsa", "p256"), listen=f"127.0.0.1:{port}")
    good = config.read_text()
    proc = subprocess.Popen([*KEYSERVER, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_listening(port, proc)
        signature = sign_once(ks_pki, port)
        assert isinstance(signature, bytes), signature
        verify(ks_pki.sites["rsa"].cert_pem, 0x0806, cv_payload(48), signature)

        config.write_text(good.replace("[[key]]", "[[key]]\nsurprise = 1", 1))  # a bad reload
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None
        assert isinstance(sign_once(ks_pki, port), bytes)  # the old configuration stays in force

        config.write_text(good.replace('edges = ["edge-1.example"]', 'edges = ["edge-2.example"]'))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        refused = sign_once(ks_pki, port)
        while isinstance(refused, bytes) and time.monotonic() < deadline:
            time.sleep(0.05)
            refused = sign_once(ks_pki, port)
        assert isinstance(refused, KeylessError) and refused.reason == "edge_refused"

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    assert f"key server listening on 127.0.0.1:{port} with 2 key(s)" in stderr
    assert "reload: " in stderr and "key[0].surprise: unknown key 'surprise'" in stderr
    assert "reload refused; the previous configuration stays in force" in stderr
    assert "reloaded" in stderr and "stopping" in stderr
    lines = oplog_lines(tmp_path / "ops.log")
    ops = [line["op"] for line in lines]
    assert ops[0] == "start" and ops[-1] == "stop"
    assert [line["result"] for line in lines if line["op"] == "reload"] == ["refused", "ok"]
    signs = [line for line in lines if line["op"] == "sign"]
    assert signs[0]["result"] == "ok" and signs[0]["alg"] == "rsa_pss_rsae_sha512"
    assert signs[0]["client_ip"] == "203.0.113.5" and signs[-1]["result"] == "refused: edge_refused"
    assert os.stat(tmp_path / "ops.log").st_mode & 0o777 == 0o600


def test_check_and_pin(tmp_path: Path, ks_pki: KsPki) -> None:
    config = write_config(tmp_path, ks_pki)
    done = subprocess.run([*KEYSERVER, "-c", str(config), "--check"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert format_pin(ks_pki.pin) in done.stdout and "key[3]: ed25519 key" in done.stdout
    done = subprocess.run([*KEYSERVER, "-c", str(config), "--pin"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == format_pin(ks_pki.pin) + "\n"


def test_check_refuses_a_key_readable_by_others(tmp_path: Path, ks_pki: KsPki) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(ks_pki.sites["p256"].key_file.read_bytes())
    os.chmod(loose, 0o644)
    config = write_config(tmp_path, ks_pki, kinds=("p256",))
    config.write_text(config.read_text().replace(str(ks_pki.sites["p256"].key_file), str(loose)))
    for extra in (["--check"], []):
        done = subprocess.run([*KEYSERVER, "-c", str(config), *extra], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert f"key[0].file: {loose} has mode 0644" in done.stderr and f"chmod 600 {loose}" in done.stderr
