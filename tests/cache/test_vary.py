"""Vary and secondary keys (RFC 9111 section 4.1) as pure functions."""

from __future__ import annotations

from tlsedge.cache.vary import variant_key, vary_names

AE = (b"accept-encoding",)


def test_rfc9111_4_1_vary_names_sorted_lowercased_deduplicated() -> None:
    headers = [(b"Vary", b"Accept-Encoding, Origin"), (b"Content-Type", b"x"), (b"vary", b"accept-encoding,Cookie")]
    assert vary_names(headers) == (b"accept-encoding", b"cookie", b"origin")


def test_rfc9111_4_1_no_vary_is_empty() -> None:
    assert vary_names([(b"Content-Type", b"text/html")]) == ()
    assert vary_names([(b"Vary", b" , ,")]) == ()


def test_rfc9110_5_6_1_vary_whitespace_and_empty_elements_tolerated() -> None:
    assert vary_names([(b"VARY", b" ,\tAccept-Language ,, ")]) == (b"accept-language",)


def test_rfc9111_4_1_vary_star_never_matches() -> None:
    assert vary_names([(b"Vary", b"Accept-Encoding"), (b"Vary", b"Origin, *")]) is None


def test_rfc9111_4_1_no_names_no_secondary_key() -> None:
    assert variant_key((), [(b"Accept-Encoding", b"gzip")]) == b""


def test_rfc9111_4_1_same_value_same_key_different_value_different_key() -> None:
    gzip = variant_key(AE, [(b"Accept-Encoding", b"gzip")])
    assert gzip == variant_key(AE, [(b"accept-encoding", b"gzip")])
    assert gzip != variant_key(AE, [(b"Accept-Encoding", b"br")])


def test_rfc9111_4_1_whitespace_around_separators_normalised() -> None:
    key = variant_key(AE, [(b"Accept-Encoding", b"gzip,br;q=0.5")])
    assert key == variant_key(AE, [(b"Accept-Encoding", b" gzip ,  br ; q=0.5 ")])
    assert key == variant_key(AE, [(b"Accept-Encoding", b"gzip,\t br;q=0.5,")])


def test_rfc9111_4_1_several_lines_combine_like_one() -> None:
    one = variant_key(AE, [(b"Accept-Encoding", b"gzip, br")])
    assert one == variant_key(AE, [(b"Accept-Encoding", b"gzip"), (b"X", b"y"), (b"Accept-Encoding", b"br")])


def test_rfc9111_4_1_case_folded_only_for_case_insensitive_fields() -> None:
    names = (b"accept-language",)
    assert variant_key(names, [(b"Accept-Language", b"en-US")]) == variant_key(names, [(b"Accept-Language", b"en-us")])
    accept = (b"accept",)
    assert variant_key(accept, [(b"Accept", b"Text/HTML")]) == variant_key(accept, [(b"Accept", b"text/html")])
    origin = (b"origin",)
    assert variant_key(origin, [(b"Origin", b"https://A.example")]) != variant_key(
        origin, [(b"Origin", b"https://a.example")]
    )


def test_rfc9111_4_1_list_order_is_kept() -> None:
    assert variant_key(AE, [(b"Accept-Encoding", b"gzip, br")]) != variant_key(AE, [(b"Accept-Encoding", b"br, gzip")])


def test_rfc9111_4_1_runs_of_whitespace_collapse_inside_values() -> None:
    names = (b"user-agent",)
    assert variant_key(names, [(b"User-Agent", b"Mozilla/5.0  (X11;   Linux)")]) == variant_key(
        names, [(b"User-Agent", b"Mozilla/5.0 (X11; Linux)")]
    )


def test_rfc9111_4_1_absent_differs_from_empty() -> None:
    absent = variant_key(AE, [(b"Accept", b"*/*")])
    empty = variant_key(AE, [(b"Accept-Encoding", b"")])
    assert absent != empty
    assert empty == variant_key(AE, [(b"Accept-Encoding", b"  ")])


def test_rfc9111_4_1_entries_cannot_imitate_each_other() -> None:
    names = (b"a", b"b")
    first = variant_key(names, [(b"A", b"x\x00b\x00-")])
    second = variant_key(names, [(b"A", b"x")])
    assert first != second
    assert variant_key(names, [(b"A", b"1"), (b"B", b"")]) != variant_key(names, [(b"A", b""), (b"B", b"1")])


def test_rfc9111_4_1_keys_of_different_vary_lists_differ() -> None:
    request = [(b"Accept-Encoding", b"gzip"), (b"Accept-Language", b"gzip")]
    assert variant_key(AE, request) != variant_key((b"accept-language",), request)


def test_rfc9111_4_1_names_order_given_is_key_order() -> None:
    request = [(b"B", b"2"), (b"A", b"1")]
    key = variant_key((b"a", b"b"), request)
    assert key.index(b"a\x00") < key.index(b"b\x00")


def test_rfc9111_4_1_quoted_strings_kept_byte_for_byte() -> None:
    names = (b"accept",)
    quoted = variant_key(names, [(b"Accept", b'text/html;x="A, B"')])
    assert quoted != variant_key(names, [(b"Accept", b'text/html;x="a,b"')])
    assert b'"A, B"' in quoted
    assert quoted == variant_key(names, [(b"Accept", b' Text/HTML ; x="A, B" ')])


def test_rfc9111_4_1_escaped_quote_inside_quoted_string() -> None:
    names = (b"x-q",)
    key = variant_key(names, [(b"X-Q", b'a;p="say \\"hi, there\\"" , b')])
    assert b'"say \\"hi, there\\""' in key
    assert key.endswith(b",b")


def test_rfc9111_4_1_unterminated_quote_left_as_sent() -> None:
    names = (b"x-q",)
    assert variant_key(names, [(b"X-Q", b'a, "b')]) != variant_key(names, [(b"X-Q", b'a,"b')])


def test_rfc9111_4_1_remembered_values_keep_case_rules_apart() -> None:
    """A value normalised for a case-insensitive field is not reused for a case-sensitive one, and vice versa."""
    for _ in range(2):
        assert variant_key((b"accept",), [(b"Accept", b"Text/X, A")]) == b"accept\x008=text/x,a"
        assert variant_key((b"x-h",), [(b"X-H", b"Text/X, A")]) == b"x-h\x008=Text/X,A"
