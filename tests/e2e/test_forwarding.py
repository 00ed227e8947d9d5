"""What the origin receives (Host, target, X-Forwarded-*, Via, no hop-by-hop) and what the client gets back."""

from __future__ import annotations

import re

from e2e_support import site

HOP_BY_HOP = ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding")


def _headers(echo) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in echo["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _connection_tokens(values: list[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def test_origin_gets_original_host_and_target(main_edge, origin):
    target = "/a/b/c;p?x=1&y=%20z&x=2&q=a%2Fb"  # odd but valid: forwarded byte for byte
    with main_edge.conn(sni="www.blog.example") as c:
        resp = c.request(target=target, host="www.blog.example")
    assert resp.status == 200
    echo = resp.json()
    assert echo["target"] == target
    assert echo["method"] == "GET"
    h = _headers(echo)
    assert h["host"] == ["www.blog.example"]


def test_forwarded_headers_added_and_client_values_dropped(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(
            target="/fwd",
            headers=[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
    assert resp.status == 200
    h = _headers(resp.json())
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-forwarded-host"] == ["blog.example"]
    via = ", ".join(h["via"])
    assert re.search(r"1\.1 tlsedge", via), via


def test_trusted_proxy_xff_is_appended(main_edge, origin):
    with main_edge.conn(source="127.0.0.2") as c:
        resp = c.request(target="/trusted", headers=[("X-Forwarded-For", "1.2.3.4, 5.6.7.8")])
    assert resp.status == 200
    h = _headers(resp.json())
    xff = ", ".join(h["x-forwarded-for"])
    assert [p.strip() for p in xff.split(",")] == ["1.2.3.4", "5.6.7.8", "127.0.0.2"]


def test_untrusted_peer_sending_several_xff_headers(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/x", headers=[("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")])
    assert _headers(resp.json())["x-forwarded-for"] == ["127.0.0.1"]


def test_via_appended_to_incoming_via(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/via", headers=[("Via", "1.0 fred")])
    via = ", ".join(_headers(resp.json())["via"])
    assert re.fullmatch(r"1\.0 fred,\s*1\.1 tlsedge.*", via), via


def test_plain_listener_forwarded_proto_http(main_edge, origin):
    with main_edge.plain_conn() as c:
        resp = c.request(host="plain.example", target="/p", headers=[("X-Forwarded-Proto", "https")])
    h = _headers(resp.json())
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-host"] == ["plain.example"]


def test_request_hop_by_hop_headers_removed(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(
            target="/hop-in",
            headers=[
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "1"),
                ("Keep-Alive", "timeout=300"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("Upgrade", "foo/1"),
                ("X-Keep", "1"),
            ],
        )
    assert resp.status == 200
    h = _headers(resp.json())
    for name in (*HOP_BY_HOP, "x-secret-hop"):
        assert name not in h, f"{name} reached the origin: {h.get(name)}"
    assert h["x-keep"] == ["1"]
    assert _connection_tokens(h.get("connection", [])) <= {"keep-alive", "close"}


def test_response_hop_by_hop_headers_removed(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/hop")
        assert resp.status == 200
        assert resp.body == b"hop"
        for name in ("keep-alive", "proxy-connection", "trailer", "upgrade", "x-custom-hop"):
            assert resp.header(name) is None, f"{name} reached the client"
        assert _connection_tokens(resp.all("connection")) <= {"keep-alive", "close"}
        assert resp.header("x-kept") == "yes"
        # the origin's "Connection: X-Custom-Hop" does not close the client connection
        assert c.request(target="/after").json()["target"] == "/after"


def test_request_without_host_gets_a_real_name_even_when_the_site_lists_a_wildcard_first(
    make_edge, py_origin, pki, origin
):
    hosts = ["*.blog.example", "blog.example"]
    edge = make_edge([site("blog", hosts, [py_origin.url], pki.good(*hosts))])
    with edge.conn() as c:
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200
    h = _headers(resp.json())
    assert h["host"] == ["blog.example"]
    assert h["x-forwarded-host"] == ["blog.example"]
