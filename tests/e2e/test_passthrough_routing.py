"""TLS pass-through through a running edge (issue 7): routing by SNI on the shared https listener, the origin's own
certificate, pools, ClientHellos cut every way a network cuts them, malformed and SNI-less clients, PROXY protocol v2
as a real nginx parses it, and the one access-log line per tunnel.

The origins hold certificates from a CA the edge does not have (``OriginPki``): a client verifying against that CA
can only succeed if its TLS session runs with the origin, through the edge, untouched.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from e2e_support import BLOG_HOSTS, Edge, RawConn, closed_port, curl, site, wait_for
from passthrough_support import (
    JA4_RE,
    BioClient,
    NameServer,
    NginxTlsOrigin,
    OriginPki,
    address,
    closed_without_answer,
    hello_records,
    passthrough_site,
    s_client,
    wait_tunnels,
)

HANDSHAKE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def origin_pki(tmp_path_factory) -> OriginPki:
    return OriginPki(tmp_path_factory.mktemp("origin-pki"))


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, origin_pki) -> Iterator[NginxTlsOrigin]:
    made = NginxTlsOrigin(tmp_path_factory.mktemp("pt-nginx"), origin_pki)
    yield made
    made.stop()


@pytest.fixture(scope="module")
def servers(origin_pki) -> Iterator[dict[str, NameServer]]:
    made = {name: NameServer(name, origin_pki.server_context()) for name in ("alpha", "beta", "gamma", "quiet")}
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture(scope="module")
def dead_ports() -> list[int]:
    return [closed_port(), closed_port()]


@pytest.fixture(scope="module")
def edge(tmp_path_factory, pki, py_origin, site_certs, nginx, servers, dead_ports) -> Iterator[Edge]:
    """No default site. A terminated site (blog) and pass-through sites on the same https listener."""
    pool = {"name": "tunnels", "balance": "round_robin"}
    sites = [
        site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"][0]),
        passthrough_site("vault", ["vault.example"], [address(nginx.tls)]),
        passthrough_site("pp", ["pp.example"], [address(nginx.pp)], passthrough={"proxy_protocol": True}),
        passthrough_site("direct", ["direct.example"], [address(nginx.direct)]),
        passthrough_site("nopp", ["nopp.example"], [address(nginx.pp)]),
        passthrough_site("rr", ["rr.tunnel.example"],
                         pool=[{**pool, "servers": [servers["alpha"].address, servers["beta"].address]}]),
        passthrough_site("half", ["half.tunnel.example"],
                         pool=[{**pool, "servers": [address(dead_ports[0]), servers["gamma"].address],
                                "outlier": {"consecutive_failures": 2}}]),
        passthrough_site("down", ["down.tunnel.example"], [address(p) for p in dead_ports],
                         origin={"connect_timeout": "1s"}),
    ]
    made = Edge(tmp_path_factory.mktemp("pt-edge"), sites, pki.ca_pem)
    made.start()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def default_edge(tmp_path_factory, pki, servers) -> Iterator[Edge]:
    """``default_site`` is a pass-through site (in front of the counting server "quiet"); short handshake_timeout."""
    made = Edge(tmp_path_factory.mktemp("pt-default-edge"),
                [passthrough_site("quiet", ["quiet.example"], [servers["quiet"].address])], pki.ca_pem,
                default_site="quiet", limits={"handshake_timeout": f"{HANDSHAKE_TIMEOUT:g}s"})
    made.start()
    yield made
    made.stop()


def names_via(edge: Edge, host: str, ca_pem, count: int) -> list[str]:
    """The names of the servers that answered ``count`` fresh TLS connections for ``host``."""
    names = []
    for _ in range(count):
        with RawConn(edge.https_port, sni=host, ca_pem=ca_pem, timeout=5) as conn:
            names.append(conn.request("GET", "/", host, [("Connection", "close")]).body.decode())
    return names


# --- the origin's certificate, through the shared listener ------------------------------------------------------------


def test_curl_sees_the_origin_certificate_and_answer(edge, nginx, origin_pki) -> None:
    port = edge.https_port
    got = curl(f"https://vault.example:{port}/", "-v", resolve=f"vault.example:{port}:127.0.0.1",
               ca_pem=origin_pki.ca_pem, timeout=10)
    assert (got.returncode, got.status, got.body) == (0, 200, NginxTlsOrigin.INDEX), got.stderr
    assert "subject: CN=vault.example" in got.stderr and "issuer: CN=passthrough origin CA" in got.stderr, got.stderr
    # Trusting only the edge's CA fails: the edge never answers for vault.example with a certificate of its own.
    refused = curl(f"https://vault.example:{port}/", resolve=f"vault.example:{port}:127.0.0.1", ca_pem=edge.ca_pem,
                   timeout=10)
    assert refused.returncode == 60 and refused.status is None, (refused.returncode, refused.stderr)
    # The terminated site on the same listener still gets the edge's certificate and the edge's HTTP.
    blog = edge.curl("blog.example", "/", "-v", timeout=10)
    assert (blog.returncode, blog.status) == (0, 200), blog.stderr
    assert "issuer: CN=tlsedge test CA" in blog.stderr and "passthrough origin CA" not in blog.stderr
    assert json.loads(blog.body)["target"] == "/", "the edge did not terminate and forward the blog request"


def test_openssl_s_client_through_the_edge(edge, nginx, origin_pki) -> None:
    done = s_client(edge.https_port, "vault.example", origin_pki.ca_pem)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, (out, done.stderr)
    assert "Verify return code: 0 (ok)" in out
    assert "subject=CN = vault.example" in out and "issuer=CN = passthrough origin CA" in out
    assert "HTTP/1.1 200 OK" in out and NginxTlsOrigin.INDEX.decode() in out
    assert "sni=vault.example GET / HTTP/1.1" in nginx.access_lines()[-1]


# --- pools ------------------------------------------------------------------------------------------------------------


def test_round_robin_spreads_tunnels_over_the_servers(edge, servers, origin_pki) -> None:
    before = {n: servers[n].connections for n in ("alpha", "beta")}
    names = names_via(edge, "rr.tunnel.example", origin_pki.ca_pem, 8)
    assert Counter(names) == {"alpha": 4, "beta": 4}, names
    assert {n: servers[n].connections - before[n] for n in before} == {"alpha": 4, "beta": 4}


def test_connect_failure_is_retried_on_another_server(edge, servers, dead_ports, origin_pki) -> None:
    """Half the picks of the round robin are the dead server: the tunnel still reaches gamma every time, and the
    failed connects count (two in a row eject the dead server)."""
    names = names_via(edge, "half.tunnel.example", origin_pki.ca_pem, 6)
    assert names == ["gamma"] * 6
    wait_for(lambda: f"127.0.0.1:{dead_ports[0]} ejected" in edge.error_text(), 5,
             what="the dead server's ejection in the error log")
    lines = wait_tunnels(edge, "half", 6)
    assert {line["upstream"] for line in lines} == {f"https://{servers['gamma'].address}"}


def test_all_servers_down_closes_the_client(edge, dead_ports, origin_pki) -> None:
    with BioClient(edge.https_port, "down.tunnel.example", origin_pki.ca_pem) as client:
        client.send_raw(client.client_hello())
        got, _ = closed_without_answer(client.sock, 5)
    assert got == b""
    (line,) = wait_tunnels(edge, "down", 1)
    assert line["end"].startswith("no origin: ") and any(str(p) in line["end"] for p in dead_ports), line
    assert (line["upstream"], line["bytes_out"]) == (None, 0)


# --- ClientHellos as the network delivers them ------------------------------------------------------------------------


def test_hello_dribbled_in_tiny_segments(edge, origin_pki) -> None:
    source = "127.0.0.11"
    with BioClient(edge.https_port, "vault.example", origin_pki.ca_pem, source=source) as whole:
        whole.send_raw(whole.client_hello())
        whole.handshake()
        assert whole.request("vault.example").endswith(NginxTlsOrigin.INDEX)
    with BioClient(edge.https_port, "vault.example", origin_pki.ca_pem, source=source) as client:
        hello = client.client_hello()
        client.send_raw(hello[:12], piece=1, pause=0.02)  # the record header and handshake header byte by byte
        client.send_raw(hello[12:], piece=40, pause=0.01)
        client.handshake()
        answer = client.request("vault.example")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(NginxTlsOrigin.INDEX)
    first, second = wait_tunnels(edge, "vault", 2, source)
    assert first["ja4"] == second["ja4"], "the same client's fingerprint changed with the segmentation"
    assert second["bytes_in"] == client.sent and second["bytes_out"] == client.received


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["back-to-back", "paused"])
def test_hello_spread_over_several_records(edge, origin_pki, pause) -> None:
    """Three records: the first holds only 2 bytes of the handshake header, the second the next 88."""
    with BioClient(edge.https_port, "vault.example", origin_pki.ca_pem) as client:
        records = hello_records(client.client_hello(), [2, 90])
        client.send_raw(records[:7], pause=pause)
        client.send_raw(records[7:], pause=pause)
        client.handshake()
        assert client.request("vault.example").endswith(NginxTlsOrigin.INDEX)


# --- malformed and SNI-less clients -----------------------------------------------------------------------------------

MALFORMED = {
    "garbage": bytes(range(7, 200)),
    "http": b"GET / HTTP/1.1\r\nHost: quiet.example\r\n\r\n",
    "alert-record": b"\x15\x03\x01\x00\x02\x02\x28",
    "oversized-record": b"\x16\x03\x01\x48\x00\x01" + b"\x00" * 64,
    "sslv2": b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x07\x00\xc0" * 7 + b"\x01" * 16,
    "short-hello-body": b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\xff\xff",
    "not-a-client-hello": b"\x16\x03\x01\x00\x08\x02\x00\x00\x04\x03\x03\x00\x00",
}


@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_hello_is_closed_before_any_origin(default_edge, servers, payload) -> None:
    """Closed at once (long before the handshake timeout), with no byte back, and the default site's origin is never
    contacted although it would take any SNI-less connection."""
    quiet = servers["quiet"]
    before = quiet.connections
    with socket.create_connection(("127.0.0.1", default_edge.https_port), timeout=5) as sock:
        sock.sendall(payload)
        got, took = closed_without_answer(sock, 5)
    assert got == b"" and took < HANDSHAKE_TIMEOUT * 0.8, (got, took)
    time.sleep(0.1)
    assert quiet.connections == before


def test_truncated_hello_then_silence_is_closed_at_the_handshake_timeout(default_edge, servers, origin_pki) -> None:
    quiet = servers["quiet"]
    before = quiet.connections
    with BioClient(default_edge.https_port, None, origin_pki.ca_pem) as client:
        client.send_raw(client.client_hello()[:100])
        got, took = closed_without_answer(client.sock, HANDSHAKE_TIMEOUT + 3)
    assert got == b"" and HANDSHAKE_TIMEOUT * 0.9 <= took <= HANDSHAKE_TIMEOUT + 1.5, took
    assert quiet.connections == before


def test_no_sni_reaches_the_default_passthrough_site(default_edge, servers, origin_pki) -> None:
    before = servers["quiet"].connections
    done = s_client(default_edge.https_port, None, origin_pki.ca_pem, host="quiet.example")
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0 and "Verify return code: 0 (ok)" in out, (out, done.stderr)
    assert "issuer=CN = passthrough origin CA" in out and "HTTP/1.1 200 OK" in out and "\r\n\r\nquiet" in out, out
    assert servers["quiet"].connections == before + 1
    (line,) = wait_tunnels(default_edge, "quiet", 1)
    assert line["sni"] is None and line["end"] in ("origin closed", "client closed"), line


def test_no_sni_without_default_site_gets_unrecognized_name(edge, nginx, origin_pki) -> None:
    accepted = nginx.accepted()
    done = s_client(edge.https_port, None, origin_pki.ca_pem)
    text = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode != 0
    assert "alert unrecognized name" in text or "alert number 112" in text, text
    assert nginx.accepted() == accepted


# --- PROXY protocol v2 ------------------------------------------------------------------------------------------------


def test_proxy_protocol_v2_gives_nginx_the_client_address(edge, nginx, origin_pki) -> None:
    with RawConn(edge.https_port, sni="pp.example", ca_pem=origin_pki.ca_pem, source="127.0.0.7", timeout=5) as conn:
        port = conn.sock.getsockname()[1]
        answer = conn.request("GET", "/", "pp.example", [("Connection", "close")])
    assert (answer.status, answer.body) == (200, f"127.0.0.7:{port}\n".encode())


def test_without_proxy_protocol_nginx_sees_the_edge(edge, nginx, origin_pki) -> None:
    with RawConn(edge.https_port, sni="direct.example", ca_pem=origin_pki.ca_pem, source="127.0.0.7",
                 timeout=5) as conn:
        port = conn.sock.getsockname()[1]
        answer = conn.request("GET", "/", "direct.example", [("Connection", "close")])
    host, _, seen_port = answer.body.decode().strip().rpartition(":")
    assert answer.status == 200 and host == "127.0.0.1" and int(seen_port) != port, answer.body
    # The same nginx listener that expects a PROXY header refuses a tunnel that sends none: it really parses it.
    errors = len(nginx.error_text())
    with pytest.raises((OSError, ConnectionError)):
        RawConn(edge.https_port, sni="nopp.example", ca_pem=origin_pki.ca_pem, timeout=5).close()
    wait_for(lambda: "broken header" in nginx.error_text()[errors:], 5, what="nginx's 'broken header' error")


# --- the access log ---------------------------------------------------------------------------------------------------


def test_one_access_log_line_per_tunnel(edge, nginx, origin_pki) -> None:
    done = []
    for alpn in (None, None, ["http/1.1"]):
        with BioClient(edge.https_port, "vault.example", origin_pki.ca_pem, source="127.0.0.9", alpn=alpn) as client:
            client.send_raw(client.client_hello())
            client.handshake()
            assert client.request("vault.example").endswith(NginxTlsOrigin.INDEX)
            done.append(client)
    lines = wait_tunnels(edge, "vault", 3, "127.0.0.9")
    for line, client in zip(lines, done, strict=True):
        assert line["sni"] == "vault.example" and line["upstream"] == f"https://{address(nginx.tls)}"
        assert JA4_RE.fullmatch(line["ja4"]), line["ja4"]
        assert (line["bytes_in"], line["bytes_out"]) == (client.sent, client.received)
        # nginx half-closes first (lingering close); the client closing its side then ends the tunnel
        assert line["end"] in ("origin closed", "client closed") and line["duration_ms"] > 0 and line["time"]
    plain, again, with_alpn = (line["ja4"] for line in lines)
    assert plain == again, "the JA4 of one client changed between connections"
    assert with_alpn != plain and with_alpn[8:10] == "h1" and plain[8:10] == "00", (plain, with_alpn)

