"""Origin failures (502, 504, closing mid-body), error pages (short, request id, no traceback), the JSON access log."""

from __future__ import annotations

import re
import time

import pytest
from e2e_support import build_request, wait_for

ACCESS_FIELDS = {"site", "method", "path", "status", "bytes_in", "bytes_out", "upstream", "duration_ms", "request_id"}


def _find_access(edge, predicate, timeout: float = 5.0) -> dict:
    return wait_for(lambda: next((e for e in reversed(edge.access_entries()) if predicate(e)), None), timeout,
                    what="access log entry")


def _check_error_page(resp) -> None:
    ctype = (resp.header("content-type") or "").lower()
    assert ctype.startswith("text/html") or ctype.startswith("text/plain"), ctype
    assert len(resp.body) < 2048, len(resp.body)
    text = resp.body.decode(errors="replace")
    assert "traceback" not in text.lower()
    assert 'File "' not in text
    assert "request id" in text.lower(), text


def test_origin_refusing_gives_502(main_edge, origin):
    with main_edge.conn(sni="dead.example") as c:
        t0 = time.monotonic()
        resp = c.request(host="dead.example", target="/down")
        assert time.monotonic() - t0 < 3
        assert resp.status == 502
        _check_error_page(resp)
        # the client connection survives an origin failure
        assert c.request(host="dead.example", target="/down2").status == 502


def test_origin_not_answering_gives_504_after_response_timeout(main_edge, origin):
    with main_edge.conn() as c:
        t0 = time.monotonic()
        resp = c.request(target="/hang")
        elapsed = time.monotonic() - t0
    assert resp.status == 504
    assert 1.5 <= elapsed <= 4.0, elapsed
    _check_error_page(resp)


def test_origin_closing_mid_body_closes_client_connection(main_edge, origin):
    with main_edge.conn() as c:
        c.send(build_request(target="/truncate"))
        resp = c.read_response()
        assert resp.status == 200
        assert not resp.complete, f"a truncated body looked complete ({resp.framing}, {len(resp.body)} bytes)"
        assert len(resp.body) <= 100
        assert c.eof


def test_origin_closing_mid_body_curl_reports_partial_transfer(main_edge, origin):
    r = main_edge.curl("blog.example", "/truncate")
    assert r.returncode == 18, (r.returncode, r.stderr)


@pytest.mark.parametrize(
    ("sni", "request_bytes", "status"),
    [
        ("blog.example", build_request(host="shop.example"), 421),
        ("blog.example", b"GET foo HTTP/1.1\r\nHost: blog.example\r\n\r\n", 400),
        ("blog.example", build_request(headers=[("X-Big", "a" * 9000)]), 431),
        ("blog.example", build_request(target="/" + "u" * 3000), 414),
        ("blog.example", build_request("POST", "/", headers=[("Content-Length", "2000000")]), 413),
        ("dead.example", build_request(host="dead.example"), 502),
    ],
    ids=["421", "400", "431", "414", "413", "502"],
)
def test_error_pages_are_short_with_request_id_also_in_access_log(main_edge, origin, sni, request_bytes, status):
    with main_edge.conn(sni=sni) as c:
        c.send(request_bytes)
        resp = c.read_response()
    assert resp.status == status
    _check_error_page(resp)
    text = resp.body.decode(errors="replace")
    entry = _find_access(main_edge, lambda e: e.get("status") == status and str(e.get("request_id")) in text
                         and e.get("request_id"))
    assert entry["request_id"]


def test_access_log_json_line_per_request(main_edge, origin):
    marker = f"/access-{time.monotonic_ns()}"
    body = b"x" * 1234
    with main_edge.conn() as c:
        r1 = c.request("POST", marker + "?q=1", body=body)
        r2 = c.request("GET", marker + "-2")
    assert r1.status == r2.status == 200
    entry = _find_access(main_edge, lambda e: str(e.get("path", "")).startswith(marker) and e.get("method") == "POST")
    assert entry.keys() >= ACCESS_FIELDS, ACCESS_FIELDS - entry.keys()
    assert entry["site"] == "blog"
    assert entry["status"] == 200
    assert entry["bytes_in"] >= 1234
    assert entry["bytes_out"] >= len(r1.body)
    assert str(origin.port) in str(entry["upstream"])
    assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
    second = _find_access(main_edge, lambda e: str(e.get("path", "")).startswith(marker + "-2"))
    assert second["request_id"] != entry["request_id"]
    # every line of the file is one JSON object
    import json

    for line in main_edge.access_lines():
        assert isinstance(json.loads(line), dict), line


def test_access_log_for_plain_http_and_redirect(main_edge, origin):
    marker = f"/plainlog-{time.monotonic_ns()}"
    with main_edge.plain_conn() as c:
        assert c.request(host="plain.example", target=marker).status == 200
        assert c.request(host="blog.example", target=marker + "-r").status == 308
    e1 = _find_access(main_edge, lambda e: e.get("path") == marker)
    assert e1["site"] == "plain"
    e2 = _find_access(main_edge, lambda e: e.get("path") == marker + "-r")
    assert e2["status"] == 308


def test_no_traceback_in_error_log_after_all_this(main_edge):
    assert not re.search(r"Traceback \(most recent call last\)", main_edge.error_text()), main_edge.error_text()[-3000:]
