"""Invalidation by unsafe methods (RFC 9111 section 4.4, RFC 3986 section 5) as pure functions."""

from __future__ import annotations

from tlsedge.cache.invalidation import SAFE_METHODS, UNSAFE_INVALIDATES, invalidation_targets


def targets(location: bytes | None = None, content_location: bytes | None = None, **kwargs) -> list[bytes]:
    headers = [(b"Content-Type", b"text/html")]
    if location is not None:
        headers.append((b"Location", location))
    if content_location is not None:
        headers.append((b"Content-Location", content_location))
    request = {"method": b"POST", "status": 200, "scheme": b"https", "host": b"example.com", "target": b"/a/b?x=1"}
    request.update(kwargs)
    return invalidation_targets(
        request["method"], request["status"], request["scheme"], request["host"], request["target"], headers
    )


def test_rfc9110_9_2_1_safe_methods_do_not_invalidate() -> None:
    assert {b"GET", b"HEAD", b"OPTIONS", b"TRACE"} == SAFE_METHODS
    for method in SAFE_METHODS:
        assert method not in UNSAFE_INVALIDATES
        assert targets(method=method, location=b"/c") == []


def test_rfc9111_4_4_unsafe_and_unknown_methods_invalidate() -> None:
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"PURGE", b"get"):
        assert method in UNSAFE_INVALIDATES
        assert targets(method=method) == [b"https://example.com/a/b?x=1"]


def test_rfc9111_4_4_only_non_error_statuses_invalidate() -> None:
    assert targets(status=201) == [b"https://example.com/a/b?x=1"]
    assert targets(status=303) == [b"https://example.com/a/b?x=1"]
    for status in (100, 199, 400, 404, 500, 503):
        assert targets(status=status) == []


def test_rfc9111_4_4_scheme_and_host_lowercased_path_kept() -> None:
    assert targets(scheme=b"HTTPS", host=b"Example.COM:8443", target=b"/A/%7e/../B?Q=Z") == [
        b"https://example.com:8443/A/%7e/../B?Q=Z"
    ]


def test_rfc9111_4_4_absolute_form_target_contributes_its_path() -> None:
    assert targets(target=b"https://example.com/p?q") == [b"https://example.com/p?q"]
    assert targets(target=b"http://example.com") == [b"https://example.com/"]


def test_rfc9111_4_4_authority_and_asterisk_targets_have_no_url() -> None:
    assert targets(method=b"CONNECT", target=b"example.com:443") == []
    assert targets(target=b"*") == []


def test_rfc9111_4_4_same_origin_location_and_content_location() -> None:
    assert targets(location=b"/items/7", content_location=b"https://EXAMPLE.com/items/7.json") == [
        b"https://example.com/a/b?x=1",
        b"https://example.com/items/7",
        b"https://example.com/items/7.json",
    ]


def test_rfc9111_4_4_other_origins_ignored() -> None:
    """The rule that stops one origin from purging another's objects."""
    for location in (
        b"https://victim.example/a",
        b"http://example.com/a",
        b"https://example.com:8443/a",
        b"//victim.example/a",
        b"https://example.com.evil/a",
        b"https://evil@victim.example/a",
        b"mailto:someone@example.com",
        b"https:/a",
        b"https://example.com:99999999/a",
    ):
        assert targets(location=location) == [b"https://example.com/a/b?x=1"], location


def test_rfc9111_4_4_default_port_is_the_same_origin() -> None:
    assert targets(location=b"https://example.com:443/c") == [b"https://example.com/a/b?x=1", b"https://example.com/c"]
    assert targets(host=b"example.com:443", location=b"https://example.com/c")[1] == b"https://example.com:443/c"
    assert targets(scheme=b"http", host=b"example.com", location=b"http://example.com:80/c")[1] == (
        b"http://example.com/c"
    )


def test_rfc9111_4_4_userinfo_does_not_change_the_origin() -> None:
    assert targets(location=b"https://user@example.com/c")[1:] == [b"https://example.com/c"]


def test_rfc3986_5_2_relative_references_resolved() -> None:
    cases = {
        b"c": b"/a/c",
        b"./c": b"/a/c",
        b"../c": b"/c",
        b"../../../c": b"/c",
        b"/x/./y/../z": b"/x/z",
        b"?y=2": b"/a/b?y=2",
        b"c?y": b"/a/c?y",
        b"#frag": b"/a/b?x=1",
        b"/d#frag": b"/d",
        b".": b"/a/",
        b"..": b"/",
        b"//example.com": b"/",
        b"//example.com?q": b"/?q",
        b"HTTPS://example.com/e": b"/e",
    }
    for reference, path in cases.items():
        assert targets(location=reference)[-1] == b"https://example.com" + path, reference


def test_rfc9111_4_4_empty_location_is_the_target_once() -> None:
    assert targets(location=b"", content_location=b"/a/b?x=1") == [b"https://example.com/a/b?x=1"]


def test_rfc9111_4_4_ipv6_hosts() -> None:
    assert targets(host=b"[::1]:8443", location=b"https://[::1]:8443/v")[1] == b"https://[::1]:8443/v"
    assert targets(host=b"[::1]:8443", location=b"https://[::1]/v") == [b"https://[::1]:8443/a/b?x=1"]


def test_rfc9111_4_4_bad_request_host_port_invalidates_only_the_target() -> None:
    assert targets(host=b"example.com:x", location=b"/c") == [b"https://example.com:x/a/b?x=1"]
