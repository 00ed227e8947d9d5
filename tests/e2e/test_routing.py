"""Routing: SNI picks the site, Host must agree (421 otherwise), default_site, the plain-HTTP listener, HSTS, ALPN."""

from __future__ import annotations

import json
import re
import ssl

import pytest
from e2e_support import main_sites, openssl_s_client


def _sans(conn) -> set[str]:
    return conn.peer_names


def test_sni_exact_name_routes_to_its_site(main_edge, origin):
    r = main_edge.curl("blog.example", "/hello?x=1")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    echo = json.loads(r.body)
    assert echo["target"] == "/hello?x=1"
    r2 = main_edge.curl("shop.example", "/")
    assert r2.status == 200, r2.stderr


def test_sni_wildcard_routes_and_certificate_verifies(main_edge, origin):
    # curl verifies the certificate against the CA and the wildcard name
    r = main_edge.curl("www.blog.example", "/wild")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    with main_edge.conn(sni="deep.blog.example") as c:
        assert "*.blog.example" in _sans(c)
        resp = c.request(host="deep.blog.example", target="/w2")
        assert resp.status == 200
        assert resp.json()["target"] == "/w2"


def test_host_of_another_site_gets_421(main_edge, origin):
    r = main_edge.curl("blog.example", "/", "-H", "Host: shop.example")
    assert r.status == 421, (r.status, r.stderr)
    assert origin.stats()["requests"] == 0


def test_unknown_host_on_https_gets_421(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(host="unknown.example")
        assert resp.status == 421
    assert origin.stats()["requests"] == 0


@pytest.mark.parametrize("host", ["BLOG.Example", "blog.example:443", "Blog.EXAMPLE:8443", "www.blog.example:1"])
def test_host_port_stripped_and_case_insensitive(main_edge, origin, host):
    with main_edge.conn() as c:
        resp = c.request(host=host, target="/case")
        assert resp.status == 200
        assert resp.json()["target"] == "/case"


def test_no_host_uses_the_sni_site(main_edge, origin):
    with main_edge.conn(sni="shop.example") as c:
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200
    echo = resp.json()
    assert echo["target"] == "/nohost"
    # and it went to shop's origin path, not to a 421
    assert origin.stats()["targets"] == ["/nohost"]


def test_unknown_sni_without_default_site_fails_with_unrecognized_name(main_edge):
    with pytest.raises(ssl.SSLError) as info:
        main_edge.conn(sni="unknown.example", verify=False)
    assert "unrecognized" in str(info.value).lower()
    out = openssl_s_client(main_edge.https_port, "unknown.example", request=b"")
    text = (out.stdout + out.stderr).decode(errors="replace").lower()
    assert "unrecognized name" in text or "unrecognized_name" in text


def test_no_sni_without_default_site_fails(main_edge):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        main_edge.conn(sni=None, verify=False)


@pytest.fixture
def default_edge(make_edge, py_origin, site_certs):
    return make_edge(main_sites(py_origin, site_certs), default_site="blog")


def test_unknown_sni_uses_default_site(default_edge, origin):
    with default_edge.conn(sni="unknown.example", verify=False) as c:
        assert "blog.example" in _sans(c)
        resp = c.request(host="blog.example", target="/via-default")
        assert resp.status == 200
        assert resp.json()["target"] == "/via-default"
    with default_edge.conn(sni=None) as c:  # no SNI at all: default site, certificate verifies against the CA
        assert "blog.example" in _sans(c)
        assert c.request(host="blog.example").status == 200


def test_unknown_sni_default_site_still_refuses_other_sites_host(default_edge, origin):
    with default_edge.conn(sni="unknown.example", verify=False) as c:
        assert c.request(host="shop.example").status == 421
    assert origin.stats()["requests"] == 0


def test_http_listener_redirects_sites_with_certificates(main_edge, origin):
    with main_edge.plain_conn() as c:
        resp = c.request(host="blog.example", target="/a/b?c=d&e=%20f")
        assert resp.status == 308
        assert resp.header("location") == f"https://blog.example:{main_edge.https_port}/a/b?c=d&e=%20f"
        assert resp.header("strict-transport-security") is None
        # keep-alive after a redirect: a second request on the same connection
        resp2 = c.request(host="www.blog.example:80", target="/x")
        assert resp2.status == 308
        assert resp2.header("location") == f"https://www.blog.example:{main_edge.https_port}/x"
    assert origin.stats()["requests"] == 0


def test_http_listener_proxies_sites_without_certificates(main_edge, origin):
    r = main_edge.curl("plain.example", "/plain?q=1", scheme="http")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    echo = json.loads(r.body)
    assert echo["target"] == "/plain?q=1"
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["x-forwarded-proto"] == "http"
    assert r.header("strict-transport-security") is None


def test_http_listener_unknown_host_without_default_site_gets_421(main_edge, origin):
    with main_edge.plain_conn() as c:
        assert c.request(host="unknown.example").status == 421
    assert origin.stats()["requests"] == 0


def test_http_listener_unknown_host_uses_default_site(default_edge, origin):
    with default_edge.plain_conn() as c:
        resp = c.request(host="unknown.example", target="/p")
    assert resp.status == 308  # the default site (blog) has certificates and redirect_http
    assert resp.header("location") == f"https://unknown.example:{default_edge.https_port}/p"


def test_https_site_on_plain_listener_not_reachable_by_host_of_plain_site_over_https(main_edge, origin):
    # plain.example has no certificate: asking for it over TLS is an unknown SNI
    with pytest.raises(ssl.SSLError):
        main_edge.conn(sni="plain.example", verify=False)


def test_hsts_added_on_https_only_when_configured(main_edge, origin):
    r = main_edge.curl("blog.example", "/")
    assert r.header("strict-transport-security") == "max-age=31536000"
    r2 = main_edge.curl("shop.example", "/")
    assert r2.status == 200
    assert r2.header("strict-transport-security") is None


def test_alpn_selects_http11(main_edge):
    with main_edge.conn(alpn=["h2", "http/1.1"]) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
    out = openssl_s_client(main_edge.https_port, "blog.example", "-alpn", "h2,http/1.1",
                           request=b"GET / HTTP/1.1\r\nHost: blog.example\r\nConnection: close\r\n\r\n")
    text = out.stdout.decode(errors="replace")
    assert re.search(r"ALPN protocol: http/1\.1", text), text[-2000:]


@pytest.mark.parametrize(
    ("sigalgs", "key_bits"),
    [("ECDSA+SHA256", 256), ("RSA-PSS+SHA256:RSA+SHA256", 2048)],
    ids=["ecdsa-client", "rsa-only-client"],
)
def test_ecdsa_and_rsa_certificates_client_gets_what_it_supports(main_edge, sigalgs, key_bits):
    out = openssl_s_client(main_edge.https_port, "blog.example", "-sigalgs", sigalgs, "-CAfile", str(main_edge.ca_pem),
                           request=b"GET / HTTP/1.1\r\nHost: blog.example\r\nConnection: close\r\n\r\n")
    text = out.stdout.decode(errors="replace")
    assert f"Server public key is {key_bits} bit" in text, text[-2500:]
    assert "Verify return code: 0 (ok)" in text
