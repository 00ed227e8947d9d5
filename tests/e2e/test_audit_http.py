"""Audit of issue 2, proxying details the main suite leaves out: Expect with HTTP/1.0 clients, the `Forwarded` header,
X-Forwarded-* kept from trusted peers, absolute-form targets for another site, HEAD over every response framing,
and the `tlsedge check` / `serve` command lines on a file with many mistakes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import build_request


def _headers(resp) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_no_100_continue_for_http10_clients(main_edge, origin):
    """RFC 9110 section 10.1.1: a 100-continue expectation in an HTTP/1.0 request must be ignored."""
    with main_edge.conn() as c:
        c.send(b"POST /e10 HTTP/1.0\r\nHost: blog.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        c.settimeout(1.0)
        try:
            early = c.sock.recv(200)
        except TimeoutError:
            early = b""
        assert not early.startswith(b"HTTP/1.1 100"), early
        c.settimeout(5)
        c.send(b"abc")
        resp = c.read_response("POST")
    assert resp.status == 200
    assert resp.json()["body_len"] == 3


def test_expect_100_continue_via_curl_on_plain_listener(main_edge, origin, tmp_path):
    f = tmp_path / "b.bin"
    f.write_bytes(b"p" * 200_000)
    r = main_edge.curl(
        "plain.example", "/exp-plain", "-H", "Expect: 100-continue", "--data-binary", f"@{f}", scheme="http"
    )
    assert r.returncode == 0, r.stderr
    assert 100 in r.interim
    assert r.status == 200
    assert r.body and b'"body_len": 200000' in r.body


def test_forwarded_header_from_untrusted_peer_dropped(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="/fwd-std", headers=[("Forwarded", "for=6.6.6.6;proto=http;host=evil.example")])
    assert resp.status == 200
    assert "forwarded" not in _headers(resp)


def test_trusted_peer_keeps_forwarded_proto_and_host(main_edge, origin):
    with main_edge.conn(source="127.0.0.2") as c:
        resp = c.request(
            target="/trusted-ph", headers=[("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "front.example")]
        )
    h = _headers(resp)
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["front.example"]
    assert h["x-forwarded-for"] == ["127.0.0.2"]


def test_untrusted_peer_cannot_set_forwarded_proto_or_host_over_plain_http(main_edge, origin):
    with main_edge.plain_conn() as c:
        resp = c.request(
            host="plain.example",
            target="/p",
            headers=[("X-Forwarded-Host", "evil.example"), ("X-Forwarded-For", "6.6.6.6")],
        )
    h = _headers(resp)
    assert h["x-forwarded-host"] == ["plain.example"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]


def test_absolute_form_target_for_another_site_gets_421(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="http://shop.example/abs", host="blog.example")
    assert resp.status == 421
    assert origin.stats()["requests"] == 0


def test_absolute_form_target_for_the_same_site_is_forwarded_in_origin_form(main_edge, origin):
    with main_edge.conn() as c:
        resp = c.request(target="https://blog.example/abs?q=1", host="blog.example")
    assert resp.status == 200
    assert resp.json()["target"] == "/abs?q=1"
    assert _headers(resp)["host"] == ["blog.example"]


@pytest.mark.parametrize(
    "target", ["/close?size=5000", "/chunked?n=3&size=10", "/status/204", "/status/304", "/bytes?size=100"]
)
def test_head_never_carries_a_body_whatever_the_origin_framing(main_edge, origin, target):
    with main_edge.conn() as c:
        c.send(build_request("HEAD", target))
        resp = c.read_response("HEAD")
        assert resp.status in (200, 204, 304)
        assert resp.header("transfer-encoding") is None or target.startswith("/chunked")
        nxt = c.request(target="/after-head")  # nothing left on the wire between the two responses
        assert nxt.json()["target"] == "/after-head"


def test_curl_head_via_edge(main_edge, origin):
    r = main_edge.curl("blog.example", "/bytes?size=777", "-I")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert r.header("content-length") == "777"
    assert r.body == b""


# --- the command line -----------------------------------------------------------------------------------------------

BAD = """\
[server]
workers = 0
https = ["127.0.0.1:99999"]
http  = ["127.0.0.1:{http}"]
drain_timeout = "soon"
limits = {{ keepalive_timout = "5s" }}

[[site]]
name = "blog"
hosts = ["blog.example"]
certificate = {{ cert = "missing.pem", key = "missing.key" }}
origins = ["http://127.0.0.1:9000", "ftp://x"]
origin_tls = "strct"

[[site]]
name = "shop"
hosts = ["blog.example"]
origins = []
"""


def _tlsedge(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlsedge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_check_lists_every_problem_with_file_site_and_field(tmp_path):
    (tmp_path / "tlsedge.toml").write_text(BAD.format(http=8080))
    r = _tlsedge("check", "-c", "tlsedge.toml", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} problems found"
    problems = lines[:-1]
    assert all(line.startswith("tlsedge.toml: ") for line in problems), problems
    expected = {
        ("server.https[0]", None),
        ("server.workers", None),
        ("server.drain_timeout", None),
        ("server.limits.keepalive_timout", None),
        ("site[blog].certificate.cert", "blog"),
        ("site[blog].certificate.key", "blog"),
        ("site[blog].origins[1]", "blog"),
        ("site[blog].origin_tls", "blog"),
        ("site[shop].hosts[0]", "shop"),
        ("site[shop].origins", "shop"),
    }
    for field, site_name in expected:
        matching = [line for line in problems if f" {field}: " in line]
        assert matching, f"no problem reported at {field}:\n" + "\n".join(problems)
        if site_name:
            assert f"site {site_name!r}, " in matching[0], matching[0]
    assert "Traceback" not in r.stdout + r.stderr


def test_serve_refuses_a_bad_config_listing_every_problem(tmp_path):
    (tmp_path / "tlsedge.toml").write_text(BAD.format(http=8080))
    r = _tlsedge("serve", "-c", "tlsedge.toml", cwd=tmp_path)
    assert r.returncode == 1
    assert len(re.findall(r"^error: tlsedge\.toml: ", r.stderr, re.M)) >= 10, r.stderr
    assert "Traceback" not in r.stderr


def test_check_ok_is_one_line(tmp_path):
    (tmp_path / "tlsedge.toml").write_text(
        '[server]\nhttp = ["127.0.0.1:8080"]\nworkers = 2\n\n[[site]]\nname = "s"\nhosts = ["s.example"]\n'
        'origins = ["http://127.0.0.1:9000"]\n'
    )
    r = _tlsedge("check", "-c", "tlsedge.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["tlsedge.toml: OK: 1 site, 0 https and 1 http listeners, 2 workers"]
