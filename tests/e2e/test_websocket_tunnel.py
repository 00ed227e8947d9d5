"""Upgraded connections through the edge: real WebSocket sessions (`websockets` client and origin, plain and over
verified TLS to the origin), closing from either side, tunnel_timeout, refused upgrades, upgrade requests that are
not tunnelled, and another upgrade token over a raw-socket origin."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from e2e_support import Edge, RawConn, build_request, site, wait_for
from websockets.exceptions import ConnectionClosed
from ws_support import RawUpgradeOrigin, WsClient, WsOrigin, pattern, server_context

HOSTS = ["ws.example", "wss.example", "idle.example", "foo.example", "refuse.example", "refuse200.example"]
MIB = 1 << 20
WS_HEADERS = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


@pytest.fixture(scope="module")
def ws_origin():
    origin = WsOrigin()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def wss_origin(pki):
    cert = pki.good("origin.test")
    origin = WsOrigin(server_context(cert.cert, cert.key))
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def foo_origin():
    origin = RawUpgradeOrigin(greeting=b"hello-from-origin\n")
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def refusing_origins():
    """Origins answering an upgrade request with a keep-alive 403 and 200 (no Connection: close of their own)."""
    origins = {
        403: RawUpgradeOrigin(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope\n"),
        200: RawUpgradeOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplain\n"),
    }
    yield origins
    for origin in origins.values():
        origin.close()


@pytest.fixture(scope="module")
def ws_edge(tmp_path_factory, pki, py_origin, ws_origin, wss_origin, foo_origin, refusing_origins):
    cert = pki.good(*HOSTS)
    sites = [
        # Plain requests go to the Python origin (the first pool); /ws/ to the WebSocket origin, prefix stripped.
        site("ws", ["ws.example"], [py_origin.url], cert,
             pool=[{"name": "sockets", "servers": [ws_origin.url]}],
             route=[{"path_prefix": "/ws/", "pool": "sockets", "prefix_rewrite": "/"}]),
        site("wss", ["wss.example"], [wss_origin.url], cert, origin_tls="strict", origin_ca=str(pki.ca_pem),
             origin_server_name="origin.test"),
        site("idle", ["idle.example"], [ws_origin.url], cert, origin={"tunnel_timeout": "1s"}),
        site("foo", ["foo.example"], [foo_origin.url], cert),
        site("refuse", ["refuse.example"], [refusing_origins[403].url], cert),
        site("refuse200", ["refuse200.example"], [refusing_origins[200].url], cert),
    ]
    edge = Edge(tmp_path_factory.mktemp("ws-edge"), sites, pki.ca_pem)
    edge.start()
    yield edge
    edge.stop()


def _connect(edge: Edge, host: str, path: str, **options) -> WsClient:
    return WsClient(edge.https_port, host, path, edge.ca_pem, **options)


SECURE = pytest.mark.parametrize(("host", "origin_name"), [("ws.example", "ws_origin"), ("wss.example", "wss_origin")],
                                 ids=["plain-origin", "tls-origin"])


@SECURE
def test_text_binary_and_many_messages(ws_edge, request, host, origin_name):
    origin: WsOrigin = request.getfixturevalue(origin_name)
    before = len(origin.sessions)
    path = "/ws/echo?x=1" if host == "ws.example" else "/echo?x=1"
    with _connect(ws_edge, host, path) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=5) == b"\x00\x01binary\xff"
        for i in range(300):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=5) for _ in range(300)] == [f"message {i}" for i in range(300)]
    session = origin.wait_session(before)
    assert session.path == "/echo?x=1"  # the route's prefix_rewrite applies to the upgrade request too
    assert session.header("host") == [f"{host}:{ws_edge.https_port}"]  # as the client sent it
    assert session.header("x-forwarded-proto") == ["https"]
    assert session.received == 302


def test_extension_negotiated_by_the_origin_reaches_the_client(ws_edge):
    with _connect(ws_edge, "ws.example", "/ws/echo", compression="deflate") as ws:
        assert ws.extensions == ["PerMessageDeflate"]
        ws.send("compressed " * 1000)
        assert ws.recv(timeout=5) == "compressed " * 1000


@SECURE
def test_large_messages_both_ways(ws_edge, host, origin_name):
    path = "/ws/echo" if host == "ws.example" else "/echo"
    big_binary = pattern(7, 8 * MIB)
    big_text = "x" * (3 * MIB) + "é" * MIB
    with _connect(ws_edge, host, path) as ws:
        ws.send(big_binary)
        ws.send(big_text)
        echoed = ws.recv(timeout=20)
        assert len(echoed) == len(big_binary)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(big_binary).digest()
        assert ws.recv(timeout=20) == big_text


def test_origin_push_is_paced_by_a_slow_client(ws_edge, ws_origin):
    """The client reads nothing for a while: the edge stops reading the origin instead of buffering its output."""
    before = len(ws_origin.sessions)
    count = 64
    with _connect(ws_edge, "ws.example", "/ws/echo", max_queue=1) as ws:
        ws.send(f"!push {count} {MIB}")
        session = ws_origin.wait_session(before)
        time.sleep(1.0)
        assert session.pushed < count * MIB // 2, f"origin pushed {session.pushed} bytes to a client that reads none"
        for n in range(count):
            assert ws.recv(timeout=10) == pattern(n, MIB), f"message {n} differs"
        assert ws.recv(timeout=5) == "!pushed"


def test_client_push_is_paced_by_a_slow_origin(ws_edge, ws_origin):
    """The origin reads nothing for a while: the edge stops reading the client instead of buffering its input."""
    count = 64
    sent = 0
    with _connect(ws_edge, "ws.example", "/ws/sink?hold=1.5") as ws:

        def push() -> None:
            nonlocal sent
            for n in range(count):
                ws.send(pattern(n, MIB))
                sent += 1

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        time.sleep(1.0)
        assert sent < count // 2, f"the client sent {sent} MiB to an origin that reads none"
        pusher.join(20)
        assert sent == count
        ws.send("!end")
        assert ws.recv(timeout=10) == str(count * MIB)


def test_client_close_reaches_the_origin_and_is_logged_as_101(ws_edge, ws_origin):
    before = len(ws_origin.sessions)
    ws = _connect(ws_edge, "ws.example", "/ws/echo?test=client-close")
    ws.send("bye soon")
    assert ws.recv(timeout=5) == "bye soon"
    ws.close(code=4000, reason="client done")
    session = ws_origin.wait_session(before)
    assert session.closed.wait(3), "the origin did not see the close"
    assert (session.close_code, session.close_reason) == (4000, "client done")
    entry = wait_for(lambda: [e for e in ws_edge.access_entries() if e["path"] == "/ws/echo?test=client-close"], 3,
                     what="access log line of the tunnel")[0]
    assert entry["status"] == 101
    assert entry["bytes_in"] > 0 and entry["bytes_out"] > 0


def test_client_vanishing_closes_the_origin_side(ws_edge, ws_origin):
    before = len(ws_origin.sessions)
    ws = _connect(ws_edge, "ws.example", "/ws/echo")
    ws.send("x")
    assert ws.recv(timeout=5) == "x"
    session = ws_origin.wait_session(before)
    ws.vanish()  # no close frame: the TCP connection just goes away
    assert session.closed.wait(3), "the origin still holds the tunnel of a client that is gone"
    assert session.close_code == 1006
    ws.close()


def test_origin_close_reaches_the_client(ws_edge):
    with _connect(ws_edge, "ws.example", "/ws/echo") as ws:
        ws.send("!close 4001 origin done")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=3)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "origin done")


def test_origin_vanishing_closes_the_client_side(ws_edge):
    ws = _connect(ws_edge, "ws.example", "/ws/echo")
    ws.send("!abort")
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=3)
    assert time.monotonic() - started < 3
    assert info.value.rcvd is None  # no close frame: the edge closed the connection when the origin dropped it
    ws.close()


def test_tunnel_timeout_closes_an_idle_tunnel_only(ws_edge, ws_origin):
    before = len(ws_origin.sessions)
    ws = _connect(ws_edge, "idle.example", "/idle?test=tunnel-timeout")
    session = ws_origin.wait_session(before)
    # Traffic every 0.4 s keeps it open well past the 1 s tunnel_timeout.
    for i in range(5):
        time.sleep(0.4)
        ws.send(f"tick {i}")
        assert ws.recv(timeout=2) == f"tick {i}"
    idle_since = time.monotonic()
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    idle = time.monotonic() - idle_since
    assert 0.9 <= idle < 3, f"an idle tunnel with tunnel_timeout = 1s was closed after {idle:.2f}s"
    assert session.closed.wait(3), "the origin side of the timed-out tunnel stayed open"
    ws.close()
    entry = wait_for(lambda: [e for e in ws_edge.access_entries() if e["path"] == "/idle?test=tunnel-timeout"], 3,
                     what="access log line of the timed-out tunnel")[0]
    assert entry["status"] == 101
    assert "tunnel_timeout" in entry.get("error", "")


@pytest.mark.parametrize(("host", "path", "status", "body"), [
    ("ws.example", "/ws/refuse/403", 403, b"refused by the origin\n"),
    ("refuse.example", "/chat", 403, b"nope\n"),
    ("refuse200.example", "/chat", 200, b"plain\n"),
])
def test_refused_upgrade_is_answered_then_closed(ws_edge, host, path, status, body):
    with ws_edge.conn(sni=host) as c:
        resp = c.request(target=path, host=host, headers=WS_HEADERS)
        assert resp.status == status
        assert resp.body == body
        assert resp.header("connection") == "close"
        assert c.read_to_eof(3) == b""


def test_plain_requests_on_the_websocket_site_still_work(ws_edge, py_origin):
    with _connect(ws_edge, "ws.example", "/ws/echo") as ws, ws_edge.conn(sni="ws.example") as c:
        resp = c.request(target="/page?a=1", host="ws.example")
        assert resp.status == 200
        assert resp.json()["target"] == "/page?a=1"
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
        assert c.request(target="/page2", host="ws.example").json()["target"] == "/page2"


def test_upgrade_request_with_a_body_is_not_tunnelled(ws_edge, py_origin):
    """Such a request goes on as plain HTTP: its body goes to the origin, and is never read as a request."""
    py_origin.reset()
    body = build_request("GET", "/smuggled", "ws.example")
    with ws_edge.conn(sni="ws.example") as c:
        c.settimeout(3)
        resp = c.request("POST", "/upload", host="ws.example", headers=WS_HEADERS, body=body)
        assert resp.status == 200
        echo = resp.json()
        names = {k.lower(): v for k, v in echo["headers"]}
        assert "upgrade" not in names
        assert "upgrade" not in names.get("connection", "").lower()
        assert echo["body_len"] == len(body)
        # Not an upgrade: the connection goes on as HTTP.
        assert c.request(target="/next", host="ws.example").json()["target"] == "/next"
    assert py_origin.stats()["targets"] == ["/upload", "/next"]


def test_upgrade_request_with_a_chunked_body_is_refused(ws_edge, py_origin):
    py_origin.reset()
    body = b"5\r\nhello\r\n0\r\n\r\n"
    with ws_edge.conn(sni="ws.example") as c:
        c.settimeout(3)
        resp = c.request("POST", "/upload", host="ws.example", headers=[*WS_HEADERS, ("Transfer-Encoding", "chunked")],
                         body=body)
        assert resp.status == 400
        assert c.read_to_eof(3) == b""
    assert py_origin.stats()["targets"] == []


def _upgrade_foo(c: RawConn, early: bytes = b"") -> bytes:
    c.send(build_request("GET", "/tunnel", "foo.example", [("Connection", "Upgrade"), ("Upgrade", "foo")]) + early)
    return c.read_until(b"\r\n\r\n")


def test_other_upgrade_token_is_tunnelled(ws_edge, foo_origin):
    before, closed_before = len(foo_origin.heads), foo_origin.closed
    with ws_edge.conn(sni="foo.example") as c:
        head = _upgrade_foo(c)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nUpgrade: foo\r\n" in head
        # The origin's first bytes arrived together with its 101: they follow the head.
        assert c.read_exact(len(b"hello-from-origin\n")) == (b"hello-from-origin\n", True)
        for chunk in (b"ping", b"\x00\xff" * 5000, b"pong"):
            c.send(chunk)
            assert c.read_exact(len(chunk)) == (chunk, True)
    origin_head = wait_for(lambda: foo_origin.heads[before:], 3, what="the origin's request")[0].lower()
    assert b"\r\nupgrade: foo\r\n" in origin_head
    assert b"\r\nconnection: upgrade\r\n" in origin_head
    wait_for(lambda: foo_origin.closed > closed_before, 3, what="the origin to see the client's close")


def test_bytes_sent_with_the_upgrade_request_reach_the_origin_after_101(ws_edge, foo_origin):
    with ws_edge.conn(sni="foo.example") as c:
        head = _upgrade_foo(c, early=b"early")
        assert head.startswith(b"HTTP/1.1 101 ")
        data, _ = c.read_exact(len(b"hello-from-origin\nearly"))
        assert data == b"hello-from-origin\nearly"


def test_bytes_sent_before_the_101_never_reach_an_origin_that_refuses(ws_edge, refusing_origins):
    """A client may send data right after its upgrade request; until the origin agreed to switch protocols that
    data must not reach it: an origin that refuses would read it as the next HTTP request on the connection,
    a request the edge never routed (WebSocket request smuggling)."""
    origin = refusing_origins[403]
    smuggled = build_request("GET", "/smuggled", "refuse.example")
    with ws_edge.conn(sni="refuse.example") as c:
        c.send(build_request("GET", "/chat", "refuse.example", WS_HEADERS) + smuggled)
        resp = c.read_response()
        assert resp.status == 403
        assert c.read_to_eof(3) == b""
    time.sleep(0.3)
    assert not [head for head in origin.heads if b"/smuggled" in head], "bytes sent before the 101 reached the origin"
