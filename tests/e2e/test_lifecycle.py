"""Process life: workers, TLS session resumption across workers and reloads, SIGHUP reloads (good and broken), SIGTERM
drain."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from e2e_support import BLOG_HOSTS, build_request, openssl_s_client, port_accepts, site, wait_for

REQUEST = b"GET / HTTP/1.1\r\nHost: blog.example\r\nConnection: close\r\n\r\n"


def _blog(py_origin, site_certs, **kw):
    return site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"], **kw)


def _shop(py_origin, site_certs, **kw):
    return site("shop", ["shop.example"], [py_origin.url], site_certs["shop"], **kw)


def _new_session(edge, sess_file, *args: str) -> str:
    out = openssl_s_client(edge.https_port, "blog.example", "-sess_out", str(sess_file), "-CAfile",
                           str(edge.ca_pem), *args, request=REQUEST)
    text = out.stdout.decode(errors="replace")
    assert "HTTP/1.1 200" in text, text[-1500:] + out.stderr.decode(errors="replace")
    assert sess_file.exists() and sess_file.stat().st_size > 0
    return text


def _resumed(edge, sess_file, *args: str) -> bool:
    out = openssl_s_client(edge.https_port, "blog.example", "-sess_in", str(sess_file), "-CAfile",
                           str(edge.ca_pem), *args, request=REQUEST)
    text = out.stdout.decode(errors="replace")
    assert "HTTP/1.1 200" in text, text[-1500:]
    return bool(re.search(r"^Reused, TLSv1\.[23]", text, re.M))


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_session_resumption_across_workers(make_edge, py_origin, site_certs, tmp_path, origin, version):
    edge = make_edge([_blog(py_origin, site_certs)], workers=2)
    wait_for(lambda: len(edge.worker_pids()) == 2, 10, what="two workers")
    sess = tmp_path / "sess.pem"
    _new_session(edge, sess, version)
    # 8 connections from fresh source ports: with SO_REUSEPORT (or a shared accept queue) both workers get some
    results = [_resumed(edge, sess, version) for _ in range(8)]
    assert all(results), f"resumed: {results}"


def test_session_resumption_across_reload(make_edge, py_origin, site_certs, tmp_path, origin):
    edge = make_edge([_blog(py_origin, site_certs)], workers=2)
    sess = tmp_path / "sess.pem"
    _new_session(edge, sess)
    edge.reload([_blog(py_origin, site_certs), _shop(py_origin, site_certs)])
    wait_for(lambda: edge.curl("shop.example", "/").status == 200, 10, what="reloaded config")
    results = [_resumed(edge, sess) for _ in range(4)]
    assert all(results), f"resumed after reload: {results}"


def test_reload_adds_site_and_keeps_established_connection(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs)], workers=2)
    with edge.conn() as before:
        assert before.request(target="/before-1").status == 200
        r = edge.curl("shop.example", "/")
        assert r.status is None or r.returncode != 0  # shop unknown: handshake fails
        edge.reload([_blog(py_origin, site_certs), _shop(py_origin, site_certs)])
        wait_for(lambda: edge.curl("shop.example", "/").status == 200, 10, what="new site served")
        # the connection opened before the reload still gets its next response
        resp = before.request(target="/before-2")
        assert resp.status == 200
        assert resp.json()["target"] == "/before-2"
    assert edge.curl("blog.example", "/").status == 200
    assert edge.proc.poll() is None


def test_reload_changes_certificate(make_edge, py_origin, site_certs, pki, origin):
    edge = make_edge([_blog(py_origin, site_certs)])
    with edge.conn() as c:
        serial_before = c.peer_cert.serial_number
    fresh = pki.good(*BLOG_HOSTS, key_type="rsa")
    edge.reload([site("blog", BLOG_HOSTS, [py_origin.url], fresh)])

    def serial_changed():
        with edge.conn() as c:
            return c.peer_cert.serial_number != serial_before

    wait_for(serial_changed, 10, what="new certificate served")


def test_reload_with_broken_config_keeps_old_one_and_logs_every_problem(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs)])
    offset = edge.error_log_size()
    broken = [
        _blog(py_origin, site_certs, origin_tls="bogus"),
        site("other", ["other.example"], ["ftp://nowhere"], None),
    ]
    edge.reload(broken)
    wait_for(lambda: "origin_tls" in edge.error_text_since(offset), 10, what="reload error in the error log")
    time.sleep(0.3)
    text = edge.error_text_since(offset)
    assert "origin_tls" in text, text
    assert "origins" in text or "ftp" in text, f"second problem not listed:\n{text}"
    assert "Traceback" not in text
    assert edge.proc.poll() is None
    r = edge.curl("blog.example", "/still")
    assert r.status == 200, r.stderr
    # a file that is not even TOML
    offset = edge.error_log_size()
    edge.reload(text="[server\nthis is not toml")
    wait_for(lambda: edge.error_text_since(offset).strip(), 10, what="TOML error in the error log")
    assert edge.proc.poll() is None
    assert edge.curl("blog.example", "/still2").status == 200


def test_sigterm_drains_in_flight_request(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs, origin={"response_timeout": "10s"})], drain_timeout="10s")
    idle = edge.conn()  # an idle keep-alive connection must not hold the exit until drain_timeout
    assert idle.request(target="/idle").status == 200
    port = edge.https_port
    curl = subprocess.Popen(
        ["curl", "-sS", "--http1.1", "--max-time", "20", "--cacert", str(edge.ca_pem), "--resolve",
         f"blog.example:{port}:127.0.0.1", "-o", "-", "-w", "\n%{http_code}", f"https://blog.example:{port}/slow?delay=2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: any(t.startswith("/slow") for t in origin.stats()["targets"]), 5, what="request at origin")
        t0 = time.monotonic()
        edge.signal(15)
        # new connections are refused soon after SIGTERM (while the slow request is still in flight)
        wait_for(lambda: not port_accepts(port), 1.5, what="listener closed after SIGTERM")
        out, err = curl.communicate(timeout=15)
    finally:
        if curl.poll() is None:
            curl.kill()
        idle.close()
    assert out.endswith(b"\n200"), (out, err)
    assert out.startswith(b"slow done")
    code = edge.proc.wait(12)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed <= 10 + 1, elapsed


def test_sigterm_exits_promptly_when_idle(make_edge, py_origin, site_certs, origin):
    edge = make_edge([_blog(py_origin, site_certs)], drain_timeout="10s", workers=2)
    with edge.conn() as c:
        c.send(build_request(target="/x"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        edge.signal(15)
        assert edge.proc.wait(12) == 0
    assert time.monotonic() - t0 < 10.5
