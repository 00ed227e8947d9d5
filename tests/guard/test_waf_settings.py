"""Each WafSettings field changes what the real ModSecurity + CRS decide: exclusions, extra rules, thresholds,
paranoia, detect mode, response headers and the body inspection limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tlsedge.guard.modsecurity import available
from tlsedge.guard.waf import RequestCheck, SiteWaf, WafConfigError, WafSettings, build_site_waf

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

BROWSER = [
    (b"Host", b"shop.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.5"),
]
SQLI = b"/search?q=1%27%20or%201=1--"  # one critical match (942100): anomaly score 5
XSS = b"/search?q=%3Cscript%3Ealert(1)%3C/script%3E"  # several XSS rules: score 15 and more


@pytest.fixture
def build() -> Iterator:
    built: list[SiteWaf] = []

    def make(**fields) -> SiteWaf:
        site = build_site_waf(WafSettings(**fields))
        built.append(site)
        return site

    yield make
    for site in built:
        assert site.open_checks == 0
        site.close()


def check(waf: SiteWaf, target: bytes = b"/", headers=(), body: bytes | None = None, method: bytes = b"GET",
          content_type: bytes = b"application/x-www-form-urlencoded", **kwargs) -> RequestCheck:
    head = BROWSER + list(headers)
    if body is not None:
        head += [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())]
    return waf.check_request("evt-1", "192.0.2.10", 40000, 443, method, target, b"1.1", head,
                             [body] if body is not None else None, **kwargs)


def verdict(waf: SiteWaf, *args, **kwargs) -> tuple[bool, int, set[int]]:
    c = check(waf, *args, **kwargs)
    c.close()
    return c.blocked, c.status, {m.rule_id for m in c.matches}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_exclusion_by_id_disables_the_rule_everywhere(build) -> None:
    assert verdict(build(), SQLI) == (True, 403, {942100, 949110})
    assert verdict(build(exclude_rules=(942100,)), SQLI) == (False, 200, set())


def test_exclusion_by_path_only_applies_under_the_prefix(build) -> None:
    waf = build(exclude_paths=(("/search", (942100,)), ("/other", (941100,))))
    assert verdict(waf, SQLI) == (False, 200, set())
    assert verdict(waf, SQLI.replace(b"/search", b"/find")) == (True, 403, {942100, 949110})
    blocked, _, rules = verdict(waf, XSS)
    assert blocked and 941100 in rules


def test_extra_rules_file_is_loaded_and_its_status_is_used(build, tmp_path: Path) -> None:
    extra = write(tmp_path, "own.conf", (
        "# the operator's own rules\n"
        'SecRule REQUEST_HEADERS:X-Forbidden "@streq yes" '
        "\"id:10001,phase:1,deny,status:418,log,msg:'forbidden header',severity:3\"\n"
    ))
    waf = build(extra_rules=(extra,))
    c = check(waf, headers=[(b"X-Forbidden", b"yes")], body=b"a=1", method=b"POST")
    c.close()
    assert (c.blocked, c.status) == (True, 418)
    assert [(m.rule_id, m.message, m.severity, m.phase, m.disruptive) for m in c.matches] == [
        (10001, "forbidden header", 3, 1, True)]
    assert verdict(waf, headers=[(b"X-Forbidden", b"no")]) == (False, 200, set())


def test_broken_extra_rules_name_the_file_and_line(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.conf", 'SecRule ARGS "@rx a" "id:10002,phase:2,pass"\n\nSecRule ARGS "@rx b" '
                                            '"id:10003,phase:9,pass"\n')
    with pytest.raises(WafConfigError) as info:
        build_site_waf(WafSettings(extra_rules=(broken,)))
    assert info.value.field == "extra_rules"
    assert str(broken) in str(info.value) and "Line: 3" in str(info.value) and "phase" in str(info.value)

    duplicate = write(tmp_path, "dup.conf", 'SecRule ARGS "@rx a" "id:942100,phase:2,pass"\n')
    with pytest.raises(WafConfigError, match="942100 is duplicated") as info:
        build_site_waf(WafSettings(extra_rules=(duplicate,)))
    assert str(duplicate) in str(info.value)

    with pytest.raises(WafConfigError, match="no such file") as info:
        build_site_waf(WafSettings(extra_rules=(tmp_path / "missing.conf",)))
    assert info.value.field == "extra_rules"


def test_invalid_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(WafConfigError, match="modsecurity-crs") as info:
        build_site_waf(WafSettings(crs_path=tmp_path))
    assert info.value.field == "crs_path"
    with pytest.raises(WafConfigError, match="must start with /") as info:
        build_site_waf(WafSettings(exclude_paths=(('/a" "id:1', (942100,)),)))
    assert info.value.field == "exclude_paths"
    with pytest.raises(WafConfigError, match="not a ModSecurity rule id") as info:
        build_site_waf(WafSettings(exclude_rules=(0,)))
    assert info.value.field == "exclude_rules"
    with pytest.raises(ValueError, match="off"):
        build_site_waf(WafSettings(mode="off"))


def test_inbound_threshold_changes_the_outcome(build) -> None:
    assert verdict(build(inbound_threshold=5), SQLI)[0] is True
    assert verdict(build(inbound_threshold=10), SQLI) == (False, 200, {942100})
    assert verdict(build(inbound_threshold=10), XSS)[0] is True


def test_outbound_threshold_applies_to_response_header_scores(build, tmp_path: Path) -> None:
    extra = write(tmp_path, "leak.conf", (
        'SecRule RESPONSE_HEADERS:X-Debug-Token "@rx ." "id:10010,phase:3,pass,log,msg:\'debug token leaked\','
        "severity:3,setvar:'tx.outbound_anomaly_score_pl1=+%{tx.error_anomaly_score}'\"\n"
    ))
    leak = [(b"Content-Type", b"text/html"), (b"X-Debug-Token", b"a1b2c3")]
    for threshold, blocked in ((4, True), (8, False)):
        c = check(build(outbound_threshold=threshold, extra_rules=(extra,)))
        assert c.check_response(200, leak) is blocked
        c.close()
        assert c.blocked is blocked
        assert 10010 in {m.rule_id for m in c.matches}
        assert (1_700_310 in {m.rule_id for m in c.matches if m.disruptive}) is blocked


def test_paranoia_level_enables_stricter_rules(build) -> None:
    no_accept = [(b"Host", b"api.example.com"), (b"User-Agent", b"curl/8.5.0")]
    for level, expected in ((1, set()), (2, {920300})):
        c = build(paranoia=level).check_request("e", "192.0.2.1", 1, 443, b"GET", b"/", b"1.1", no_accept, None)
        c.close()
        assert {m.rule_id for m in c.matches} == expected


def test_detect_mode_reports_but_never_blocks(build, tmp_path: Path) -> None:
    extra = write(tmp_path, "php.conf", 'SecRule RESPONSE_HEADERS:X-Powered-By "@rx PHP/5\\." '
                                        "\"id:10020,phase:3,deny,status:502,log,msg:'outdated PHP exposed'\"\n")
    waf = build(mode="detect", extra_rules=(extra,), body_limit=64, over_limit="reject")
    c = check(waf, SQLI)
    assert (c.blocked, c.status) == (False, 200)
    assert {m.rule_id for m in c.matches} == {942100, 949110}
    assert c.check_response(200, [(b"X-Powered-By", b"PHP/5.6.40")]) is False
    c.close()
    assert 10020 in {m.rule_id for m in c.matches} and not c.blocked
    assert verdict(waf, body=b"{", method=b"POST", content_type=b"application/json") == (False, 200, {1_700_020})
    assert verdict(waf, body=b"a=" + b"x" * 100, method=b"POST")[:2] == (False, 200)


def test_response_headers_are_inspected_in_phase_3(build, tmp_path: Path) -> None:
    extra = write(tmp_path, "php.conf", 'SecRule RESPONSE_HEADERS:X-Powered-By "@rx PHP/5\\." '
                                        "\"id:10020,phase:3,deny,status:502,log,msg:'outdated PHP exposed'\"\n")
    waf = build(extra_rules=(extra,))
    c = check(waf)
    assert c.wants_response
    assert c.check_response(200, [(b"Content-Type", b"text/html"), (b"X-Powered-By", b"PHP/7.4.3")]) is False
    c.close()
    c = check(waf)
    assert c.check_response(200, [(b"Content-Type", b"text/html"), (b"X-Powered-By", b"PHP/5.6.40")]) is True
    c.close()
    assert (c.blocked, c.status) == (True, 502)
    assert [(m.rule_id, m.phase, m.disruptive) for m in c.matches] == [(10020, 3, True)]

    c = check(build(extra_rules=(extra,), response_headers=False))
    assert not c.wants_response
    assert c.check_response(200, [(b"X-Powered-By", b"PHP/5.6.40")]) is False
    c.close()
    assert c.matches == []


def test_body_over_the_limit_with_reject(build) -> None:
    waf = build(body_limit=1024, over_limit="reject")
    big = urlencode({"comment": "A perfectly normal comment. " * 60}).encode()
    assert len(big) > 1024
    blocked, status, rules = verdict(waf, body=big, method=b"POST")
    assert (blocked, status, rules) == (True, 413, {1_700_900})
    # Content-Length over the limit: the body need not be read at all.
    assert verdict(waf, body=None, method=b"POST", body_truncated=True) == (True, 413, {1_700_900})
    assert verdict(waf, body=big[:1000], method=b"POST") == (False, 200, set())
    # Chunks: the limit falls exactly between two of them, and chunks may be memoryviews.
    chunks = [memoryview(big[:600]), big[600:1024], big[1024:1124]]
    for count, expected in ((3, (True, 413)), (2, (False, 200))):
        given = chunks[:count]
        length = str(sum(len(chunk) for chunk in given)).encode()
        head = [*BROWSER, (b"Content-Type", b"application/x-www-form-urlencoded"), (b"Content-Length", length)]
        c = waf.check_request("evt-2", "192.0.2.10", 40000, 443, b"POST", b"/", b"1.1", head, given)
        c.close()
        assert (c.blocked, c.status) == expected


def test_body_over_the_limit_with_pass_inspects_the_first_bytes_only(build) -> None:
    waf = build(body_limit=1024, over_limit="pass")
    padding = "A perfectly normal comment. " * 60
    attack = "<script>alert(document.cookie)</script>"
    early = urlencode({"comment": attack, "padding": padding}).encode()
    late = urlencode({"padding": padding, "comment": attack}).encode()
    blocked, status, rules = verdict(waf, body=early, method=b"POST")
    assert (blocked, status) == (True, 403) and 1_700_900 in rules and 941100 in rules
    assert verdict(waf, body=late, method=b"POST") == (False, 200, {1_700_900})
    # A JSON or multipart body cut at the limit cannot parse: that alone is no reason to refuse it.
    document = json.dumps({"items": [{"sku": f"A-{i}", "qty": i} for i in range(100)]}).encode()
    assert len(document) > 1024
    assert verdict(waf, body=document, method=b"POST", content_type=b"application/json") == (False, 200, {1_700_900})
    boundary = b"XyZ123"
    parts = b"--XyZ123\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n" + b"n" * 2000 + b"\r\n--XyZ123--\r\n"
    assert verdict(waf, body=parts, method=b"POST", content_type=b"multipart/form-data; boundary=" + boundary) == (
        False, 200, {1_700_900})


def test_a_complete_body_that_does_not_parse_is_refused(build) -> None:
    waf = build()
    c = check(waf, body=b'{"name": "x", ', method=b"POST", content_type=b"application/json")
    c.close()
    assert (c.blocked, c.status) == (True, 400)
    assert [(m.rule_id, m.disruptive) for m in c.matches] == [(1_700_020, True)]
    assert "JSON parsing error" in c.matches[0].data
    bad = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n"  # no closing boundary
    blocked, status, rules = verdict(waf, body=bad, method=b"POST", content_type=b"multipart/form-data; boundary=XyZ")
    assert (blocked, status) == (True, 400) and rules & {1_700_020, 1_700_021}
