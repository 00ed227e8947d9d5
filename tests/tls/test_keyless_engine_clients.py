"""The keyless engine on a loopback socket with real clients: Python's ssl, ``openssl s_client`` and curl.

The server signs through ``SignatureNeeded`` only (a local signer in place of the key server), and counts it.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from keyless_engine_support import (
    NAME,
    TIMEOUT,
    EngineServer,
    Site,
    client_context,
    make_site,
    python_client,
    read_exactly,
    s_client,
    write_ca,
)

from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless.tickets import TicketKeys

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("keyless clients test CA")


@pytest.fixture(scope="module")
def ca_file(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ca(ca, tmp_path_factory.mktemp("keyless-ca"))


@pytest.fixture(scope="module")
def sites(ca: LocalCA) -> dict[str, Site]:
    return {kind: make_site(ca, kind) for kind in ("p256", "p384", "rsa", "ed25519")}


def echo_100k(tls: ssl.SSLSocket) -> bytes:
    payload = bytes(range(250)) * 400 + b"\n"
    tls.sendall(payload)
    return read_exactly(tls, len(payload))


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa", "ed25519"])
def test_python_ssl_full_handshake_then_resumption(sites: dict[str, Site], ca: LocalCA, kind: str) -> None:
    site = sites[kind]
    context = client_context(ca, ["h2", "http/1.1"])
    with EngineServer(site) as server:
        first = python_client(server.port, context, exchange=echo_100k)
        assert first.version == "TLSv1.3" and first.alpn == "http/1.1"
        assert first.received == bytes(range(250)) * 400 + b"\n"
        assert dict(x[0] for x in first.peer_cert["subject"])["commonName"] == NAME
        assert first.session is not None and first.session.has_ticket and not first.reused
        second = python_client(server.port, context, session=first.session, exchange=echo_100k)
        assert second.reused and second.received == first.received
        logs = server.wait()
    assert [log.signatures for log in logs] == [1, 0]
    assert [(log.complete.resumed, log.error) for log in logs] == [(False, None), (True, None)]


def test_python_ssl_key_updates_both_ways(sites: dict[str, Site], ca: LocalCA) -> None:
    def exchange(tls: ssl.SSLSocket) -> bytes:
        received = b""
        for line in (b"before\n", b"KEYUPDATE\n", b"after\n", b"KEYUPDATE\n", b"again\n"):
            tls.sendall(line)
            received += read_exactly(tls, len(line))
        return received

    with EngineServer(sites["p256"]) as server:
        result = python_client(server.port, client_context(ca), exchange=exchange)
        [log] = server.wait()
    assert result.received == b"before\nKEYUPDATE\nafter\nKEYUPDATE\nagain\n"
    assert log.error is None


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
def test_openssl_each_cipher_suite(sites: dict[str, Site], ca_file: Path, suite: str) -> None:
    with EngineServer(sites["p256"]) as server:
        out = s_client(server.port, "-tls1_3", "-ciphersuites", suite, "-CAfile", str(ca_file), "-alpn", "http/1.1")
        [log] = server.wait()
    assert f"New, TLSv1.3, Cipher is {suite}" in out and "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out and "\nhello\n" in out
    assert log.complete.cipher_suite == suite and log.error is None


@pytest.mark.parametrize(("groups", "group", "retried"), [
    ("X25519", "x25519", False),
    ("P-256", "secp256r1", False),
    ("P-384", "secp384r1", False),
    ("X448:P-256", "secp256r1", True),  # openssl sends a share for X448 only: we ask again for P-256
    ("ffdhe2048:X25519", "x25519", True),
])
def test_openssl_groups_and_hello_retry(sites: dict[str, Site], ca_file: Path, groups: str, group: str,
                                        retried: bool) -> None:
    with EngineServer(sites["p256"]) as server:
        out = s_client(server.port, "-tls1_3", "-groups", groups, "-CAfile", str(ca_file))
        [log] = server.wait()
    assert "Verify return code: 0 (ok)" in out and "\nhello\n" in out
    assert (log.complete.group, log.complete.hello_retry) == (group, retried)


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "p384"])
def test_openssl_key_types(sites: dict[str, Site], ca_file: Path, kind: str) -> None:
    with EngineServer(sites[kind]) as server:
        out = s_client(server.port, "-tls1_3", "-CAfile", str(ca_file))
        [log] = server.wait()
    assert "Verify return code: 0 (ok)" in out and "\nhello\n" in out
    assert log.signatures == 1 and log.complete is not None


def test_openssl_resumption_asks_for_no_signature(sites: dict[str, Site], ca_file: Path, tmp_path: Path) -> None:
    session = tmp_path / "session.pem"
    with EngineServer(sites["p256"]) as server:
        first = s_client(server.port, "-tls1_3", "-CAfile", str(ca_file), "-sess_out", str(session))
        second = s_client(server.port, "-tls1_3", "-CAfile", str(ca_file), "-sess_in", str(session))
        logs = server.wait()
    assert "New, TLSv1.3" in first and "Reused, TLSv1.3" in second and "\nhello\n" in second
    assert [log.signatures for log in logs] == [1, 0]
    assert logs[1].complete.resumed


def test_openssl_resumption_after_hello_retry(sites: dict[str, Site], ca_file: Path, tmp_path: Path) -> None:
    """The PSK binder of the second ClientHello covers message_hash(CH1) and our HelloRetryRequest."""
    session = tmp_path / "session.pem"
    with EngineServer(sites["p256"]) as server:
        s_client(server.port, "-tls1_3", "-CAfile", str(ca_file), "-sess_out", str(session))
        out = s_client(server.port, "-tls1_3", "-groups", "X448:X25519", "-CAfile", str(ca_file),
                       "-sess_in", str(session))
        logs = server.wait()
    assert "Reused, TLSv1.3" in out and "\nhello\n" in out
    assert (logs[1].signatures, logs[1].complete.resumed, logs[1].complete.hello_retry) == (0, True, True)


def test_openssl_resumption_across_worker_processes(sites: dict[str, Site], ca_file: Path, tmp_path: Path) -> None:
    """Two servers with TicketKeys built from the same material stand for two worker processes."""
    session, material = tmp_path / "session.pem", [(b"edge-key", bytes(range(32)))]
    with EngineServer(sites["p256"], tickets=TicketKeys(material)) as one:
        s_client(one.port, "-tls1_3", "-CAfile", str(ca_file), "-sess_out", str(session))
    with EngineServer(sites["p256"], tickets=TicketKeys(material)) as two:
        out = s_client(two.port, "-tls1_3", "-CAfile", str(ca_file), "-sess_in", str(session))
        [log] = two.wait()
    assert "Reused, TLSv1.3" in out and log.signatures == 0


def test_openssl_tls12_only_gets_protocol_version(sites: dict[str, Site], ca_file: Path) -> None:
    with EngineServer(sites["p256"]) as server:
        out = s_client(server.port, "-tls1_2", "-CAfile", str(ca_file))
        [log] = server.wait()
    assert "alert protocol version" in out
    assert log.error.alert == 70 and log.signatures == 0


def test_openssl_client_key_updates(sites: dict[str, Site], ca_file: Path) -> None:
    """s_client's ``k`` (update) and ``K`` (update and request ours) commands, typed between data lines."""
    cmd = ["openssl", "s_client", "-connect", None, "-servername", NAME, "-tls1_3", "-CAfile", str(ca_file)]
    with EngineServer(sites["p256"]) as server:
        cmd[3] = f"127.0.0.1:{server.port}"
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            assert proc.stdin is not None
            for line in ("first\n", "K\n", "second\n", "k\n", "third\n", "bye\n"):
                time.sleep(0.15)  # s_client takes a command only as a line of its own
                proc.stdin.write(line)
                proc.stdin.flush()
            out, _ = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
        [log] = server.wait()
    received = b"".join(e.data for e in log.events if type(e).__name__ == "ApplicationData")
    assert received == b"first\nsecond\nthird\nbye\n"  # each under the client's next key
    assert "\nsecond\n" in out and "\nthird\n" in out and log.error is None  # our answers read under ours


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("options", [[], ["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256", "--curves", "P-256"]])
def test_curl_http_get(sites: dict[str, Site], ca_file: Path, options: list[str]) -> None:
    body = b"keyless says hello\n" * 1000
    with EngineServer(sites["p256"], mode="http", body=body, alpn_protocols=("http/1.1",)) as server:
        result = subprocess.run(
            ["curl", "-sS", "--tlsv1.3", "--cacert", str(ca_file), "--resolve", f"{NAME}:{server.port}:127.0.0.1",
             "-w", "%{http_code} %{http_version}", *options, f"https://{NAME}:{server.port}/"],
            capture_output=True, timeout=TIMEOUT,
        )
        [log] = server.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout == body + b"200 1.1"
    assert log.complete.alpn == "http/1.1"
    if options:
        assert (log.complete.cipher_suite, log.complete.group) == ("TLS_CHACHA20_POLY1305_SHA256", "secp256r1")
