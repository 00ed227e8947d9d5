"""Keyless TLS 1.3 end to end: a real edge in front of the test origin, a real ``tlsedge keyserver`` holding the site
keys, and real clients (curl, openssl s_client, Python ssl) completing handshakes and HTTP requests.

One edge and one key server serve the whole module: four keyless sites, one per key type (P-256, P-384, RSA-PSS,
Ed25519), and one terminated site whose certificate and key are imported into the edge's store (so the store exists,
and the edge holds a key the leak search must find: its positive control).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Edge, build_request, openssl_s_client, site, wait_for
from keyless_support import (
    EDGE_IDENTITY,
    HRR_RANDOM_HEX,
    KEY_KINDS,
    KeylessPki,
    KeyserverProcess,
    SiteKey,
    Tls13Conn,
    files_containing,
    key_secrets,
    keyless_site,
    load_key,
    memory_containing,
    s_client_hex_after,
    tls13_context,
)

from tlsedge.tls.keyless.wire import key_id_for_certificate

TERMINATED_HOST = "term.keyless.test"
PEER_SIGNATURE = {"p256": "ECDSA", "p384": "ECDSA", "rsa": "RSA-PSS", "ed25519": "ed25519"}
SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


class Rig:
    """The module's edge, key server and keys."""

    def __init__(self, edge: Edge, keyserver: KeyserverProcess, kpki: KeylessPki, keys: dict[str, SiteKey],
                 terminated_key: Path) -> None:
        self.edge, self.keyserver, self.kpki, self.keys = edge, keyserver, kpki, keys
        self.terminated_key = terminated_key

    @property
    def port(self) -> int:
        return self.edge.https_port


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki, py_origin) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("keyless")
    kpki = KeylessPki(tmp / "pki", pki.ca)
    keys = {kind: kpki.site_key(kind, f"{kind}.keyless.test") for kind in KEY_KINDS}
    keyserver = KeyserverProcess(tmp / "keyserver", kpki, list(keys.values())).start()
    terminated = pki.good(TERMINATED_HOST)
    sites = [keyless_site(kind, keys[kind], py_origin.url, [keyserver], kpki.pin, kpki.edge) for kind in KEY_KINDS]
    sites.append(site("term", [TERMINATED_HOST], [py_origin.url], None, certificate={"imported": True}))
    edge = Edge(tmp / "edge", sites, pki.ca_pem)
    try:
        # the terminated site's certificate and key go into the edge's store, so the store exists and holds a key
        imported = subprocess.run(
            [sys.executable, "-m", "tlsedge", "cert", "import", "--site", "term", "--cert", str(terminated.cert),
             "--key", str(terminated.key), "--trust", str(pki.ca_pem), "-c", str(edge.config_path)],
            capture_output=True, text=True, timeout=30,
        )
        assert imported.returncode == 0, imported.stderr
        edge.start()
        yield Rig(edge, keyserver, kpki, keys, terminated.key)
    finally:
        edge.stop()
        keyserver.stop()


def s_client(rig: Rig, host: str, *args: str, path: str = "/", timeout: float = 10) -> str:
    """openssl s_client -tls1_3 against the edge, verifying the chain, sending one GET ``path``; all its output."""
    request = build_request("GET", path, host, [("Connection", "close")])
    done = openssl_s_client(rig.port, host, "-tls1_3", "-CAfile", str(rig.edge.ca_pem), "-verify_return_error",
                            *args, request=request, timeout=timeout)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def assert_echoed(output: str | bytes, path: str) -> None:
    """The response is the origin's 200 echo of ``path``."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    assert "HTTP/1.1 200 OK" in text, text[-3000:]
    echo, _ = json.JSONDecoder().raw_decode(text, text.index("{", text.index("HTTP/1.1 200 OK")))
    assert echo["target"] == path


# ---------------------------------------------------------------------------------------------------------- clients


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_curl_tls13_each_key_type(rig: Rig, kind: str) -> None:
    host = rig.keys[kind].host
    result = rig.edge.curl(host, f"/curl/{kind}", "--tlsv1.3", "-v", timeout=10)
    if kind == "ed25519" and result.returncode == 35 and "signature" in result.stderr.lower():
        pytest.skip(f"this curl/OpenSSL build does not take Ed25519 server certificates: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.status == 200
    assert json.loads(result.body)["target"] == f"/curl/{kind}"
    assert "SSL connection using TLSv1.3" in result.stderr


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_openssl_each_key_type(rig: Rig, kind: str) -> None:
    out = s_client(rig, rig.keys[kind].host, path=f"/openssl/{kind}")
    assert "Verify return code: 0 (ok)" in out, out[-3000:]
    assert f"Peer signature type: {PEER_SIGNATURE[kind]}" in out, out[-3000:]
    assert "New, TLSv1.3" in out
    assert_echoed(out, f"/openssl/{kind}")


@pytest.mark.parametrize("suite", SUITES)
def test_openssl_each_cipher_suite(rig: Rig, suite: str) -> None:
    out = s_client(rig, rig.keys["p256"].host, "-ciphersuites", suite, path=f"/suite/{suite}")
    assert f"Cipher is {suite}" in out, out[-3000:]
    assert_echoed(out, f"/suite/{suite}")


@pytest.mark.parametrize(("group", "temp_key"), [("X25519", "X25519, 253 bits"),
                                                  ("P-256", "ECDH, prime256v1, 256 bits")])
def test_openssl_groups_without_retry(rig: Rig, group: str, temp_key: str) -> None:
    out = s_client(rig, rig.keys["p256"].host, "-groups", group, "-msg", path=f"/group/{group}")
    assert f"Server Temp Key: {temp_key}" in out, out[-3000:]
    hellos = s_client_hex_after(out, "ServerHello")
    assert len(hellos) == 1 and HRR_RANDOM_HEX not in hellos[0], "the edge sent a HelloRetryRequest"
    assert_echoed(out, f"/group/{group}")


@pytest.mark.parametrize(("groups", "temp_key"), [("ffdhe2048:P-256", "ECDH, prime256v1, 256 bits"),
                                                   ("X448:X25519", "X25519, 253 bits")])
def test_openssl_hello_retry_request(rig: Rig, groups: str, temp_key: str) -> None:
    """The client's only key share is for a group the edge lacks: a HelloRetryRequest (the ServerHello carrying the
    special random) asks for a group both have, then the handshake completes with it."""
    out = s_client(rig, rig.keys["p384"].host, "-groups", groups, "-msg", path="/hrr")
    hellos = s_client_hex_after(out, "ServerHello")
    assert len(hellos) == 2, out[-3000:]
    assert HRR_RANDOM_HEX in hellos[0] and HRR_RANDOM_HEX not in hellos[1]
    assert f"Server Temp Key: {temp_key}" in out
    assert_echoed(out, "/hrr")


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_python_ssl_ticket_and_resumption(rig: Rig, kind: str) -> None:
    """Python's ssl completes a TLS 1.3 handshake and a request, receives a NewSessionTicket, and resumes with it."""
    host = rig.keys[kind].host
    context = tls13_context(rig.edge.ca_pem)  # a session resumes only with the context that made it
    with Tls13Conn(rig.port, host, rig.edge.ca_pem, context=context) as first:
        assert first.sock.version() == "TLSv1.3"
        response = first.get(f"/python/{kind}/1")
        assert response.status == 200 and response.json()["target"] == f"/python/{kind}/1"
        session = first.sock.session
        assert session is not None and session.has_ticket, "no NewSessionTicket from the edge"
        assert not first.sock.session_reused
    with Tls13Conn(rig.port, host, rig.edge.ca_pem, context=context, session=session) as second:
        assert second.sock.session_reused
        response = second.get(f"/python/{kind}/2")
        assert response.status == 200 and response.json()["target"] == f"/python/{kind}/2"


def settled_signs(rig: Rig, host: str) -> list[dict[str, Any]]:
    """The key server's sign lines for ``host`` once what came before is on disk (it writes about once a second)."""
    time.sleep(1.2)
    return rig.keyserver.signs(host)


def wait_signs(rig: Rig, host: str, count: int) -> list[dict[str, Any]]:
    """The sign lines for ``host`` once there are at least ``count``."""

    def enough() -> list[dict[str, Any]] | None:
        found = rig.keyserver.signs(host)
        return found if len(found) >= count else None

    return wait_for(enough, 5, what=f"{count} sign line(s) for {host} in the key server's log")


def test_oplog_line_per_full_handshake_none_when_resumed(rig: Rig, tmp_path: Path) -> None:
    """A full handshake costs one signature, logged with the edge, SNI, client IP and key; a resumed one (openssl
    -sess_in) costs none and logs nothing."""
    host = rig.keys["p384"].host
    before = len(settled_signs(rig, host))
    session = tmp_path / "session.pem"
    out = s_client(rig, host, "-sess_out", str(session), path="/full")
    assert "New, TLSv1.3" in out and session.stat().st_size > 0, out[-3000:]
    lines = wait_signs(rig, host, before + 1)
    assert len(lines) == before + 1
    line = lines[-1]
    assert line["result"] == "ok" and line["edge"] == EDGE_IDENTITY
    assert line["sni"] == host and line["client_ip"] == "127.0.0.1"
    assert line["key"] == key_id_for_certificate(rig.keys["p384"].chain.read_bytes())[:8].hex()
    out = s_client(rig, host, "-sess_in", str(session), path="/resumed")
    assert "Reused, TLSv1.3" in out, out[-3000:]
    assert_echoed(out, "/resumed")
    assert len(settled_signs(rig, host)) == before + 1, "a resumed handshake cost a signature"


def test_no_nagle_stall_after_handshake(rig: Rig) -> None:
    """Clients that leave Nagle on: neither the first request after the handshake (its bytes wait for the ACK of the
    client's Finished, which the NewSessionTicket carries at once) nor keep-alive requests take ~40 ms."""
    host = rig.keys["p256"].host
    firsts = []
    for i in range(5):
        with Tls13Conn(rig.port, host, rig.edge.ca_pem, nodelay=False) as conn:
            started = time.perf_counter()
            assert conn.get(f"/nagle/first/{i}").status == 200
            firsts.append(time.perf_counter() - started)
    with Tls13Conn(rig.port, host, rig.edge.ca_pem, nodelay=False) as conn:
        conn.get("/nagle/warm")
        times = []
        for i in range(10):
            started = time.perf_counter()
            assert conn.get(f"/nagle/{i}").status == 200
            times.append(time.perf_counter() - started)
    assert statistics.median(firsts) < 0.020, f"first request after the handshake: {firsts}"
    assert statistics.median(times) < 0.020, f"keep-alive requests: {times}"


def test_tls12_only_client_gets_protocol_version(rig: Rig) -> None:
    """The keyless engine is TLS 1.3 only: a TLS 1.2 client gets a clean protocol_version alert and a log line."""
    host = rig.keys["p256"].host
    done = openssl_s_client(rig.port, host, "-tls1_2", request=b"", timeout=10)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode != 0
    assert "alert protocol version" in out, out[-3000:]
    wait_for(lambda: "site p256: client 127.0.0.1 offers no TLS 1.3" in rig.edge.error_text(), 5,
             what="the edge's log line about a client without TLS 1.3")


# ---------------------------------------------------------------------------------------------------------- key leaks


def test_no_keyless_private_key_on_the_edge(rig: Rig) -> None:
    """The keyless sites' private keys are nowhere on the edge: not in its state directory (store included), its
    logs, or the memory of its control and worker processes. The same memory search finds the keys the edge does
    hold (the terminated site's, and its own client key for the key servers), so it is known to work."""
    for kind in KEY_KINDS:  # a handshake on every keyless site just now: whatever the edge keeps of them is loaded
        assert s_client(rig, rig.keys[kind].host, path="/leak").count("HTTP/1.1 200 OK") == 1
    keyless = {f"{kind}:{name}": needle for kind in KEY_KINDS
               for name, needle in key_secrets(rig.keys[kind].private_key).items()}
    edge = rig.edge
    controls = {f"{owner}:{name}": needle
                for owner, path in (("terminated", rig.terminated_key), ("edge-client", rig.kpki.edge.key))
                for name, needle in key_secrets(load_key(path)).items()}
    # edge.tmp holds the state directory (the store, ticket keys), the config and every log
    store = Path(edge.server["state_dir"]) / "store.sqlite3"
    assert store.exists()
    assert files_containing(edge.tmp, keyless) == {}
    # the search works: it finds the keys in the key server's files, and the imported key in the store unless
    # the store seals keys (TLSEDGE_STORE_KEY)
    assert len(files_containing(rig.kpki.dir / "keys", keyless)) == len(KEY_KINDS)
    if "TLSEDGE_STORE_KEY" not in os.environ:
        assert "terminated:pem-base64" in files_containing(store.parent, controls).get(str(store), [])
    children = edge.worker_pids()  # the workers, and helper processes of the control process
    assert children
    in_children: set[str] = set()
    for pid in [edge.pid, *children]:
        try:
            found = memory_containing(pid, {**keyless, **controls})
        except PermissionError as exc:
            pytest.skip(f"reading /proc/{pid}/mem needs root (or ptrace rights over the edge): {exc}")
        assert sorted(found - controls.keys()) == [], f"process {pid} holds a keyless site's private key"
        if pid != edge.pid:
            in_children |= {name.split(":")[0] for name in found}
    # the search does find the keys the workers hold in their TLS contexts
    assert in_children == {"terminated", "edge-client"}
