"""The Cache-Status field (RFC 9211, serialised as RFC 8941 Structured Fields) as a pure function."""

from __future__ import annotations

import pytest

from tlsedge.cache.status import FWD_REASONS, cache_status


def test_rfc9211_2_1_hit_with_ttl() -> None:
    assert cache_status(b"tlsedge", hit=True, ttl=12) == b"Cache-Status: tlsedge; hit; ttl=12\r\n"


def test_rfc9211_2_1_hit_without_ttl() -> None:
    assert cache_status(b"tlsedge", hit=True) == b"Cache-Status: tlsedge; hit\r\n"
    assert cache_status(b"other", hit=True) == b"Cache-Status: other; hit\r\n"


def test_rfc9211_2_4_negative_ttl_for_stale() -> None:
    assert cache_status(b"tlsedge", hit=True, ttl=-5) == b"Cache-Status: tlsedge; hit; ttl=-5\r\n"


def test_rfc8941_3_3_1_ttl_clamped_to_sf_integer_range() -> None:
    assert cache_status(b"c", hit=True, ttl=10**20) == b"Cache-Status: c; hit; ttl=999999999999999\r\n"
    assert cache_status(b"c", hit=False, fwd=b"stale", ttl=-(10**20)).endswith(b"; ttl=-999999999999999\r\n")


def test_rfc9211_2_2_miss_with_fwd_status_and_stored() -> None:
    line = cache_status(b"tlsedge", hit=False, fwd=b"uri-miss", fwd_status=200, ttl=300, stored=True)
    assert line == b"Cache-Status: tlsedge; fwd=uri-miss; fwd-status=200; ttl=300; stored\r\n"


def test_rfc9211_2_2_every_fwd_reason_serialises_as_a_token() -> None:
    assert {b"bypass", b"method", b"uri-miss", b"vary-miss", b"miss", b"request", b"stale", b"partial"} == FWD_REASONS
    for reason in FWD_REASONS:
        assert cache_status(b"c", hit=False, fwd=reason) == b"Cache-Status: c; fwd=" + reason + b"\r\n"


def test_rfc9211_2_2_unknown_fwd_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        cache_status(b"c", hit=False, fwd=b"because")


def test_rfc9211_2_6_collapsed() -> None:
    line = cache_status(b"c", hit=False, fwd=b"uri-miss", fwd_status=200, ttl=5, collapsed=True)
    assert line == b"Cache-Status: c; fwd=uri-miss; fwd-status=200; ttl=5; collapsed\r\n"


def test_rfc9211_2_8_detail_token_or_string() -> None:
    assert cache_status(b"c", hit=True, ttl=1, detail=b"stale-if-error") == (
        b"Cache-Status: c; hit; ttl=1; detail=stale-if-error\r\n"
    )
    assert cache_status(b"c", hit=False, fwd=b"bypass", detail=b'too big: "x" \\ y\xff') == (
        b'Cache-Status: c; fwd=bypass; detail="too big: \\"x\\" \\\\ y?"\r\n'
    )
    assert cache_status(b"c", hit=False, detail=b"1abc").endswith(b'detail="1abc"\r\n')


def test_rfc8941_3_3_4_cache_name_token_or_string() -> None:
    assert cache_status(b"edge-1.example.com", hit=True) == b"Cache-Status: edge-1.example.com; hit\r\n"
    assert cache_status(b"my cache", hit=True, ttl=3) == b'Cache-Status: "my cache"; hit; ttl=3\r\n'
    assert cache_status(b"", hit=False, fwd=b"miss") == b'Cache-Status: ""; fwd=miss\r\n'


def test_rfc9211_2_miss_without_parameters() -> None:
    assert cache_status(b"c", hit=False) == b"Cache-Status: c\r\n"


def test_rfc8941_3_1_2_parameters_parse_back() -> None:
    """Every member splits back into the same key/value parameters."""
    line = cache_status(b"c", hit=True, fwd_status=304, ttl=-2, stored=True, collapsed=True, detail=b"x")
    name, *params = line.removeprefix(b"Cache-Status: ").removesuffix(b"\r\n").split(b"; ")
    assert name == b"c"
    assert params == [b"hit", b"fwd-status=304", b"ttl=-2", b"stored", b"collapsed", b"detail=x"]
