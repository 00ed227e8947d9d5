"""The WAF of issue 6 through a running edge: ModSecurity with the OWASP CRS between real clients (raw sockets, curl)
and a real origin. Attacks in the query, headers and bodies (form, JSON, multipart, chunked, after Expect:
100-continue) are refused with 403 before the origin sees them, and every match is logged under the request's id;
everyday requests reach the origin byte for byte. Detect mode, exclusions by id and by path, extra rules files (and
broken ones at check, start and reload), the body limit, response-header inspection and keep-alive around a block.

One edge serves most tests, a site per WAF setting; the tests that restart or reload have edges of their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cache_support import Answer, TricklingOrigin, body_for
from e2e_support import RawConn, curl, wait_for
from guard_support import BodyOrigin, EdgeFactory, GuardEdge, call, plain_site, tlsedge

from tlsedge.guard.modsecurity import available

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

EXTRA_RULES = """\
# tlsedge e2e: an operator's own rules
SecRule REQUEST_HEADERS:X-Evil "@streq yes" "id:9100001,phase:1,deny,status:403,log,msg:'evil header'"
SecRule RESPONSE_HEADERS:X-Debug-Token "@contains leak" "id:9100002,phase:3,deny,status:403,log,msg:'debug token'"
"""
BROKEN_RULES = """\
# line 1 is fine
SecRule REQUEST_HEADERS:X-Evil "@streq yes" "id:9100003,phase:1,deny,log"
SecRule REQUEST_HEADERS:X-Other "@streq yes" "id:9100004,phase:1,nosuchaction"
"""
BROWSER = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.5"),
]
BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + bytes(range(256)) * 4


def form(fields: dict[str, str]) -> tuple[list[tuple[str, str]], bytes]:
    return [*BROWSER, ("Content-Type", "application/x-www-form-urlencoded")], urlencode(fields).encode()


def as_json(document: Any) -> tuple[list[tuple[str, str]], bytes]:
    return [*BROWSER, ("Content-Type", "application/json")], json.dumps(document).encode()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[list[tuple[str, str]],
                                                                                            bytes]:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts += [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
              for name, (filename, ctype, data) in files.items()]
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return [*BROWSER, ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], body


@pytest.fixture(scope="module")
def origin() -> Iterator[BodyOrigin]:
    made = BodyOrigin()
    yield made
    made.close()


@pytest.fixture(scope="module")
def trickler() -> Iterator[TricklingOrigin]:
    made = TricklingOrigin(piece=32768, interval=0.01)
    yield made
    made.close()


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("waf-rules") / "extra.conf"
    path.write_text(EXTRA_RULES)
    return path


@pytest.fixture(scope="module")
def factory(tmp_path_factory, pki) -> Iterator[EdgeFactory]:
    made = EdgeFactory(tmp_path_factory.mktemp("waf-edges"), pki.ca_pem)
    yield made
    made.close()


@pytest.fixture(scope="module")
def edge(factory, origin, trickler, rules_file) -> GuardEdge:
    return factory([
        plain_site(origin, "block", waf={"rules_files": [str(rules_file)],
                                         "exclusion": [{"path_prefix": "/graphql", "rules": [942190]}]}),
        plain_site(origin, "detect", waf={"mode": "detect"}),
        plain_site(origin, "byid", waf={"exclude_rules": [913100]}),
        plain_site(origin, "reject", waf={"body_limit": "1KiB", "over_limit": "reject"}),
        plain_site(origin, "pass", waf={"body_limit": "1KiB", "over_limit": "pass"}),
        plain_site(trickler, "slow", waf={"rules_files": [str(rules_file)]}),  # operator rules: heads wait
    ])


def assert_blocked(edge: GuardEdge, origin: BodyOrigin, site: str, path: str, status: int, headers_rid: str | None,
                   rule_prefix: str) -> None:
    """403 with a request id, the origin never saw the path, the error log has the WAF lines of that id, and the
    access log says waf-block."""
    assert status == 403
    assert headers_rid and re.fullmatch(r"[0-9A-Za-z]+", headers_rid), headers_rid
    assert origin.received(path) == []
    lines = edge.error_lines(f" event {headers_rid} ")
    rules = [int(m.group(1)) for line in lines if (m := re.search(rf"^.*WAF site {site} event {headers_rid} "
                                                                   r"block rule (\d+) \(request\) phase \d", line))]
    assert any(str(rule).startswith(rule_prefix) for rule in rules), lines
    assert edge.access_entry(headers_rid)["guard"] == "waf-block"


ATTACKS = {
    # name -> (method, path, headers, body, CRS rule family)
    "sqli in the query": ("GET", "/a1?id=1%27%20UNION%20SELECT%20username,%20password%20FROM%20users--", BROWSER,
                          b"", "942"),
    "xss in a header": ("GET", "/a2", [("User-Agent", "<script>alert(document.cookie)</script>"),
                                       ("Accept", "*/*")], b"", "941"),
    "traversal in the query": ("GET", "/a3?file=../../../../etc/passwd", BROWSER, b"", "930"),
    "command injection in a form": ("POST", "/a4", *form({"domain": "example.com; cat /etc/passwd"}), "932"),
    "scanner user agent": ("GET", "/a5", [("User-Agent", "sqlmap/1.5#stable (http://sqlmap.org)"),
                                          ("Accept", "*/*")], b"", "913"),
    "sqli in json": ("PUT", "/a6", *as_json({"query": "shoes' UNION SELECT credit_card, cvv FROM payments--"}),
                     "942"),
    "xss in multipart": ("POST", "/a7", *multipart({"caption": "<iframe src=javascript:alert(1)>"},
                                                   {"file": ("a.txt", "text/plain", b"hello")}), "941"),
    "traversal in a cookie": ("GET", "/a8", [*BROWSER, ("Cookie", "tpl=../../../../etc/shadow")], b"", "930"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_are_refused_before_the_origin_and_logged_by_event_id(edge, origin, name) -> None:
    method, path, headers, body, family = ATTACKS[name]
    resp = call(edge.http_port, "block.example", path, method, headers, body)
    assert_blocked(edge, origin, "block", path.split("?")[0], resp.status, resp.header("x-request-id"), family)


BENIGN = {
    "form with an apostrophe": ("POST", "/b1", *form({"name": "Seán O'Brien", "message": "Hi, my order hasn't "
                                                       "shipped yet (order 10423). Could you check? Thanks!"})),
    "json api put": ("PUT", "/api/v1/users/12345", *as_json({"display_name": "Jean-Luc", "preferences": {
        "theme": "dark", "languages": ["fr", "en"], "notifications": {"email": True, "sms": False}}})),
    "multipart upload": ("POST", "/b3", *multipart({"description": "My new profile picture"},
                                                   {"avatar": ("me.png", "image/png", PNG)})),
}


@pytest.mark.parametrize("name", list(BENIGN))
def test_everyday_requests_reach_the_origin_byte_for_byte(edge, origin, name) -> None:
    method, path, headers, body = BENIGN[name]
    resp = call(edge.http_port, "block.example", path, method, headers, body)
    assert resp.status == 200, resp.body
    assert resp.body == f"origin saw {method} {path}".encode()
    [seen] = origin.received(path)
    assert seen.method == method and seen.body == body
    assert seen.headers["content-type"] == dict((k.lower(), v) for k, v in headers)["content-type"]
    assert "guard" not in edge.access_for("block", path)


def test_detect_mode_passes_attacks_and_logs_them(edge, origin) -> None:
    path = "/d1"
    resp = call(edge.http_port, "detect.example", path + "?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
                headers=BROWSER)
    assert resp.status == 200 and resp.body.startswith(b"origin saw GET /d1?id=1%27")
    assert len(origin.received(path)) == 1
    record = edge.access_for("detect", path + "?id=1%27%20UNION%20SELECT%20password%20FROM%20users--")
    assert record["guard"] == "waf-detect" and record["status"] == 200
    rid = record["request_id"]
    lines = edge.error_lines(f" event {rid} ")
    assert lines and all(f"WAF site detect event {rid} detect rule " in line for line in lines), lines
    assert any(re.search(r" rule 942\d+ ", line) for line in lines), lines


def test_a_match_under_the_threshold_passes_and_is_logged(edge, origin) -> None:
    """A backwards Range (CRS 920190, a warning: 3 points under the threshold of 5) reaches the origin in block mode;
    the match is logged as "match" and the access log says waf-match."""
    resp = call(edge.http_port, "block.example", "/m1", headers=[*BROWSER, ("Range", "bytes=5-1")])
    assert resp.status == 200 and len(origin.received("/m1")) == 1
    record = edge.access_for("block", "/m1")
    assert record["guard"] == "waf-match"
    rid = record["request_id"]
    assert any(f"WAF site block event {rid} match rule 920190 (request)" in line
               for line in edge.error_lines(f" event {rid} ")), edge.error_text()[-2000:]


def test_exclusion_by_rule_id(edge, origin) -> None:
    """Site byid removes 913100 (scanner user agents): sqlmap's user agent passes there, SQL injection does not."""
    scanner = [("User-Agent", "sqlmap/1.5#stable (http://sqlmap.org)"), ("Accept", "*/*")]
    passed = call(edge.http_port, "byid.example", "/e1", headers=scanner)
    assert passed.status == 200 and len(origin.received("/e1")) == 1
    blocked = call(edge.http_port, "byid.example", "/e2?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
                   headers=BROWSER)
    assert_blocked(edge, origin, "byid", "/e2", blocked.status, blocked.header("x-request-id"), "942")
    same_on_block = call(edge.http_port, "block.example", "/e3", headers=scanner)
    assert_blocked(edge, origin, "block", "/e3", same_on_block.status, same_on_block.header("x-request-id"), "913")


def test_exclusion_by_path(edge, origin) -> None:
    """A GraphQL query that CRS rule 942190 mistakes for SQL passes under /graphql (excluded there) only."""
    query = {"operationName": "GetUser", "variables": {"id": "42"},
             "query": "query GetUser($id: ID!) { user(id: $id) { name email posts(first: 10) { title } } }"}
    headers, body = as_json(query)
    ok = call(edge.http_port, "block.example", "/graphql", "POST", headers, body)
    assert ok.status == 200
    assert [s.body for s in origin.received("/graphql")] == [body]
    refused = call(edge.http_port, "block.example", "/api/query", "POST", headers, body)
    assert_blocked(edge, origin, "block", "/api/query", refused.status, refused.header("x-request-id"), "942190")


def test_extra_rules_file_request_rule(edge, origin) -> None:
    resp = call(edge.http_port, "block.example", "/x1", headers=[*BROWSER, ("X-Evil", "yes")])
    assert_blocked(edge, origin, "block", "/x1", resp.status, resp.header("x-request-id"), "9100001")
    fine = call(edge.http_port, "block.example", "/x2", headers=[*BROWSER, ("X-Evil", "no")])
    assert fine.status == 200


def test_response_headers_are_inspected_before_the_client_sees_them(edge, origin) -> None:
    """An extra phase-3 rule matches a header the origin sends: the client gets 403, none of the origin's answer."""
    origin.answers["/leaky"] = Answer(200, [("X-Debug-Token", "leak-0xdeadbeef"), ("Content-Type", "text/plain")],
                                      b"SECRET ORIGIN BODY")
    origin.answers["/tidy"] = Answer(200, [("X-Debug-Token", "fine"), ("Content-Type", "text/plain")], b"tidy body")
    resp = call(edge.http_port, "block.example", "/leaky", headers=BROWSER)
    assert resp.status == 403
    assert b"SECRET" not in resp.body and resp.header("x-debug-token") is None
    rid = resp.header("x-request-id")
    assert len(origin.received("/leaky")) == 1  # the request went; the answer did not come back
    lines = edge.error_lines(f" event {rid} ")
    assert any(f"WAF site block event {rid} block rule 9100002 (response) phase 3" in line for line in lines), lines
    assert edge.access_entry(rid)["guard"] == "waf-block"
    tidy = call(edge.http_port, "block.example", "/tidy", headers=BROWSER)
    assert (tidy.status, tidy.body, tidy.header("x-debug-token")) == (200, b"tidy body", "fine")


def test_a_slow_big_body_after_the_held_head_arrives_intact(edge, trickler) -> None:
    """The origin's head waits for the WAF while its body keeps arriving slowly: all of it is replayed, in order."""
    body = body_for("/slow-big", 1 << 20)
    trickler.answers["/slow-big"] = Answer(200, [("Content-Type", "application/octet-stream")], body)
    resp = call(edge.http_port, "slow.example", "/slow-big", headers=BROWSER)
    assert resp.status == 200 and resp.complete
    assert len(resp.body) == len(body) and resp.body == body


def test_body_over_the_limit_is_refused_with_reject(edge, origin) -> None:
    headers, body = form({"note": "x" * 2000})
    resp = call(edge.http_port, "reject.example", "/r1", "POST", headers, body)
    assert resp.status == 413
    assert origin.received("/r1") == []
    assert edge.access_entry(resp.header("x-request-id"))["guard"] == "waf-body-limit"
    small_headers, small = form({"note": "short"})
    assert call(edge.http_port, "reject.example", "/r2", "POST", small_headers, small).status == 200


def test_body_over_the_limit_passes_whole_with_pass(edge, origin) -> None:
    headers, body = form({"note": "lorem ipsum dolor sit amet " * 300})
    assert len(body) > 4096
    resp = call(edge.http_port, "pass.example", "/p1", "POST", headers, body)
    assert resp.status == 200
    assert [s.body for s in origin.received("/p1")] == [body]
    attack_headers, attack = form({"q": "1' UNION SELECT password FROM users--"})
    refused = call(edge.http_port, "pass.example", "/p2", "POST", attack_headers, attack)
    assert_blocked(edge, origin, "pass", "/p2", refused.status, refused.header("x-request-id"), "942")


def _chunked(body: bytes, size: int = 100) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def test_chunked_uploads_are_inspected_and_passed_whole(edge, origin) -> None:
    headers = [*BROWSER, ("Content-Type", "application/x-www-form-urlencoded"), ("Transfer-Encoding", "chunked")]
    attack = urlencode({"comment": "nice", "id": "1' UNION SELECT username, password FROM users--"}).encode()
    resp = call(edge.http_port, "block.example", "/c1", "POST", headers, _chunked(attack))
    assert_blocked(edge, origin, "block", "/c1", resp.status, resp.header("x-request-id"), "942")
    benign = urlencode({"comment": "Great recipe! I used 2 cups of flour instead of 3. " * 20}).encode()
    ok = call(edge.http_port, "block.example", "/c2", "POST", headers, _chunked(benign))
    assert ok.status == 200
    assert [s.body for s in origin.received("/c2")] == [benign]


def test_expect_100_continue_body_is_inspected(edge, origin, tmp_path) -> None:
    """curl sends Expect: 100-continue before a body over 1 KiB: the edge says 100 to get the body it inspects."""
    attack = tmp_path / "attack.txt"
    attack.write_bytes(urlencode({"bio": "x" * 1500, "q": "<script>alert(document.cookie)</script>"}).encode())
    benign = tmp_path / "benign.txt"
    benign.write_bytes(urlencode({"bio": "I like long walks on the beach. " * 60}).encode())
    url = f"http://127.0.0.1:{edge.http_port}"
    refused = curl(f"{url}/x100", "-H", "Host: block.example", "--data-binary", f"@{attack}", "-H",
                   "Expect: 100-continue", "-A", BROWSER[0][1], timeout=10)
    assert refused.interim == [100] and refused.status == 403, (refused.interim, refused.status, refused.stderr)
    assert origin.received("/x100") == []
    passed = curl(f"{url}/ok100", "-H", "Host: block.example", "--data-binary", f"@{benign}", "-H",
                  "Expect: 100-continue", "-A", BROWSER[0][1], timeout=10)
    assert passed.interim == [100] and passed.status == 200
    assert [s.body for s in origin.received("/ok100")] == [benign.read_bytes()]
    assert "expect" not in origin.received("/ok100")[0].headers


def test_keep_alive_survives_a_block_in_the_middle(edge, origin) -> None:
    """Four requests on one connection; the second and third are attacks (one with a body): the others are answered
    in order, on the same connection."""
    attack_headers, attack_body = form({"q": "1' UNION SELECT password FROM users--"})
    with RawConn(edge.http_port, tls=False) as conn:
        first = conn.request("GET", "/k1", "block.example", BROWSER)
        second = conn.request("GET", "/k2?q=%3Cscript%3Ealert(1)%3C/script%3E", "block.example", BROWSER)
        third = conn.request("POST", "/k3", "block.example", attack_headers, attack_body)
        fourth = conn.request("GET", "/k4", "block.example", BROWSER)
    assert [r.status for r in (first, second, third, fourth)] == [200, 403, 403, 200]
    assert first.body == b"origin saw GET /k1" and fourth.body == b"origin saw GET /k4"
    assert origin.received("/k2") == [] and origin.received("/k3") == []
    assert second.header("x-request-id") != third.header("x-request-id")
    assert edge.access_entry(third.header("x-request-id"))["guard"] == "waf-block"


# --- broken rules files ---------------------------------------------------------------------------------------------


def test_broken_rules_file_fails_check_naming_file_and_line(factory, origin, tmp_path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text(BROKEN_RULES)
    edge = factory([plain_site(origin, "broken", waf={"rules_files": [str(broken)]})], start=False)
    checked = tlsedge("check", "-c", str(edge.config_path))
    report = checked.stdout + checked.stderr
    assert "Traceback" not in report
    assert checked.returncode != 0, report
    assert re.search(rf"{re.escape(str(broken))}\. Line: 3\b", report), report


def test_broken_rules_file_fails_start_naming_file_and_line(factory, origin, tmp_path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text(BROKEN_RULES)
    edge = factory([plain_site(origin, "broken", waf={"rules_files": [str(broken)]})], start=False)
    with pytest.raises(AssertionError, match="exited"):
        edge.start(timeout=15)
    report = edge.error_text()
    assert "Traceback" not in report
    assert re.search(rf"{re.escape(str(broken))}\. Line: 3\b", report), report


def test_reload_with_a_broken_rules_file_keeps_the_old_rules(factory, origin, tmp_path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text(BROKEN_RULES)
    edge = factory([plain_site(origin, "reloaded", waf={})], workers=1)
    attack = "/rl?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"
    assert call(edge.http_port, "reloaded.example", attack, headers=BROWSER).status == 403
    before = edge.error_log_size()
    edge.reload([plain_site(origin, "reloaded", waf={"mode": "detect", "rules_files": [str(broken)]})])
    wait_for(lambda: str(broken) in edge.error_text_since(before), 10, what="the reload's complaint")
    assert "Traceback" not in edge.error_text_since(before)
    assert call(edge.http_port, "reloaded.example", attack, headers=BROWSER).status == 403
    assert edge.proc.poll() is None
    edge.reload([plain_site(origin, "reloaded", waf={"mode": "detect"})])
    wait_for(lambda: call(edge.http_port, "reloaded.example", attack, headers=BROWSER).status == 200, 10,
             what="the good reload")
