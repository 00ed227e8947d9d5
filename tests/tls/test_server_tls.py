"""Server TLS against real clients: openssl s_client, sslscan and Python ssl, over a uvloop server in a subprocess.

Note on alerts: asyncio's and uvloop's SSL protocols close the socket on a failed handshake without flushing the alert
OpenSSL queued, so clients of the uvloop server see a bare EOF. Which alert our contexts produce (unrecognized_name,
protocol_version, handshake_failure) is therefore checked on a small blocking ``ssl`` server in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerFactory
from tls_helpers import Certs, Server, make_config, s_client

from tlsedge.tls.server import build_tls_table


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """Default site: blog."""
    state = tmp_path_factory.mktemp("state")
    return server_factory(make_config(state, certs, "blog"), state)


@pytest.fixture(scope="module")
def strict_server(server_factory: ServerFactory, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """No default site."""
    state = tmp_path_factory.mktemp("strict-state")
    return server_factory(make_config(state, certs, None), state)


@pytest.fixture(scope="module")
def blocking_port(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The same contexts (no default site) on a blocking ssl server, which does send the handshake alerts."""
    table = build_tls_table(make_config(tmp_path_factory.mktemp("b"), certs, None), os.urandom(80))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with table.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(f"site={table.site_of(tls)}\n".encode())
                    tls.recv(100)  # the client's "bye": closing with unread data would reset the connection
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
    listener.close()
    thread.join(timeout=5)


def greeting(out: str) -> str:
    match = re.search(r"^site=.*$", out, re.M)
    assert match, out
    return match.group(0)


def peer_cn(out: str) -> str:
    match = re.search(r"^subject=CN ?= ?(\S+)", out, re.M)
    assert match, out
    return match.group(1)


def refused(out: str) -> bool:
    return "site=" not in out and ("Cipher is (NONE)" in out or "no peer certificate available" in out)


def py_connect(port: int, server_hostname: str, ca: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname=server_hostname)


# --- SNI -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "site", "cn"),
    [
        ("blog.example", "blog", "blog.example"),
        ("BLOG.Example.", "blog", "blog.example"),  # case-insensitive, trailing dot ignored
        ("a.blog.example", "blog", "blog.example"),  # one-label wildcard
        ("api.example", "api", "api.example"),
    ],
)
def test_sni_selects_site(server: Server, name: str, site: str, cn: str) -> None:
    out = s_client(server.port, servername=name)
    assert greeting(out).startswith(f"site={site} ")
    assert peer_cn(out) == cn


@pytest.mark.parametrize("name", ["unknown.example", "a.b.blog.example", "plain.example", None])
def test_unknown_or_absent_sni_gets_default_site(server: Server, name: str | None) -> None:
    out = s_client(server.port, servername=name)
    assert greeting(out).startswith("site=blog ")


@pytest.mark.parametrize("name", ["unknown.example", "a.b.blog.example", "blog.example.org", "plain.example", None])
def test_unknown_sni_without_default_is_refused(strict_server: Server, blocking_port: int, name: str | None) -> None:
    assert refused(s_client(strict_server.port, servername=name))
    out = s_client(blocking_port, servername=name)
    assert "SSL alert number 112" in out  # unrecognized_name
    assert "site=" not in out


def test_sni_with_python_client_verifies(strict_server: Server, certs: Certs) -> None:
    with py_connect(strict_server.port, "x.blog.example", certs.ca_pem) as tls:
        assert tls.recv(100).startswith(b"site=blog ")
    with py_connect(strict_server.port, "api.example", certs.ca_pem) as tls:
        assert tls.recv(100).startswith(b"site=api ")
    with pytest.raises(ssl.SSLError):
        py_connect(strict_server.port, "unknown.example", certs.ca_pem)


def test_site_recorded_by_blocking_server(blocking_port: int) -> None:
    assert "site=api" in s_client(blocking_port, servername="api.example")


# --- ECDSA / RSA ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["-tls1_3"], "ECDSA"),  # preferred when the client supports both
        (["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384"], "RSA"),
        (["-tls1_3", "-sigalgs", "ECDSA+SHA256"], "ECDSA"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "RSA"),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"], "ECDSA"),
    ],
)
def test_certificate_chosen_by_client_capabilities(server: Server, args: list[str], key: str) -> None:
    out = s_client(server.port, *args)
    assert greeting(out).startswith("site=blog ")
    assert f"Server public key is {2048 if key == 'RSA' else 256} bit" in out


# --- Mozilla intermediate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_old_protocols_refused(server: Server, blocking_port: int, flag: str) -> None:
    assert refused(s_client(server.port, flag, "-cipher", "DEFAULT:@SECLEVEL=0"))
    out = s_client(blocking_port, flag, "-cipher", "DEFAULT:@SECLEVEL=0", servername="blog.example")
    assert "SSL alert number 70" in out  # protocol_version


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-RSA-AES128-SHA256",  # CBC
        "ECDHE-ECDSA-AES256-SHA384",  # CBC
        "ECDHE-RSA-AES128-SHA",  # CBC, SHA-1
        "AES128-GCM-SHA256",  # RSA key exchange, no forward secrecy
        "DHE-RSA-AES128-GCM-SHA256",  # no DH parameters configured
    ],
)
def test_non_intermediate_tls12_ciphers_refused(server: Server, blocking_port: int, cipher: str) -> None:
    args = ("-tls1_2", "-cipher", f"{cipher}:@SECLEVEL=0")
    assert refused(s_client(server.port, *args))
    assert "SSL alert number 40" in s_client(blocking_port, *args)  # handshake_failure


@pytest.mark.parametrize("cipher", ["ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256"])
def test_intermediate_ciphers_accepted(server: Server, cipher: str) -> None:
    assert f"Cipher is {cipher}" in s_client(server.port, "-tls1_2", "-cipher", cipher)


@pytest.mark.parametrize(
    ("proto", "groups", "accepted"),
    [
        *[(proto, group, True) for proto in ("-tls1_3", "-tls1_2") for group in ("X25519", "P-256", "P-384")],
        ("-tls1_3", "P-521", False),
        ("-tls1_2", "P-521", False),
        ("-tls1_3", "ffdhe2048", False),  # TLS 1.2 finite-field DH is chosen by cipher suite: see the DHE test
    ],
)
def test_key_exchange_groups(server: Server, proto: str, groups: str, accepted: bool) -> None:
    out = s_client(server.port, proto, "-groups", groups)
    if accepted:
        assert f"Server Temp Key: {'X25519' if groups == 'X25519' else 'ECDH'}" in out
        assert "site=blog" in out
    else:
        assert refused(out)


def test_client_chooses_among_strong_suites(server: Server) -> None:
    out = s_client(server.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in out  # no server preference
    out = s_client(server.port, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")
    assert "Cipher is TLS_CHACHA20_POLY1305_SHA256" in out
    assert refused(s_client(server.port, "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"))


def test_no_compression_and_alpn(server: Server) -> None:
    out = s_client(server.port, "-alpn", "h2,http/1.1")
    assert "Compression: NONE" in out
    assert "ALPN protocol: http/1.1" in out
    assert greeting(out) == "site=blog alpn=http/1.1 version=TLSv1.3"
    assert "No ALPN negotiated" in s_client(server.port, "-alpn", "h2")  # no h2 yet; not a failure either


def test_alpn_after_sni_switch_to_other_site(server: Server) -> None:
    out = s_client(server.port, "-tls1_2", "-alpn", "http/1.1", servername="api.example")
    assert greeting(out) == "site=api alpn=http/1.1 version=TLSv1.2"


def test_client_renegotiation_refused(server: Server) -> None:
    # A line "R" makes s_client (without -ign_eof) start a TLS 1.2 renegotiation.
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "blog.example", "-tls1_2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("R\n")
    proc.stdin.flush()
    time.sleep(0.5)  # let the renegotiation attempt fail (or, wrongly, succeed) before sending data
    out, _ = proc.communicate("hello\n", timeout=10)  # communicate() ignores a broken pipe
    assert "RENEGOTIATING" in out
    assert "no renegotiation" in out  # the server's no_renegotiation alert
    assert "echo:hello" not in out


@pytest.mark.skipif(shutil.which("sslscan") is None, reason="sslscan not installed")
def test_sslscan_report(server: Server) -> None:
    result = subprocess.run(
        ["sslscan", "--no-colour", "--sni-name=blog.example", f"127.0.0.1:{server.port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    for proto, state in [
        ("SSLv2", "disabled"),
        ("SSLv3", "disabled"),
        ("TLSv1.0", "disabled"),
        ("TLSv1.1", "disabled"),
        ("TLSv1.2", "enabled"),
        ("TLSv1.3", "enabled"),
    ]:
        assert re.search(rf"^{re.escape(proto)}\s+{state}", out, re.M), (proto, out)
    assert "Session renegotiation not supported" in out
    suites = re.findall(r"^(?:Preferred|Accepted)\s+TLSv1\.[23]\s+\d+ bits\s+(\S+)", out, re.M)
    assert set(suites) == {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }, out
    groups_part = out.split("Server Key Exchange Group(s):")[1].split("SSL Certificate:")[0]
    assert set(re.findall(r"bits\s+(\S+)", groups_part)) == {"x25519", "secp256r1", "secp384r1"}, out
