"""Serving stale copies (RFC 5861 stale-while-revalidate and stale-if-error, the site's "always online") and answering
range requests from cached full responses (RFC 9110 section 14), through a real edge in front of a scripted origin.

Responses are made old with the origin's ``Age`` header rather than by waiting: a response with ``max-age=10`` and
``Age: 20`` arrives ten seconds stale.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from cache_support import Answer, ScriptedOrigin, body_for, cache_status, cached_site, get, http_date
from e2e_support import Edge, wait_for


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    yield scripted
    scripted.close()


def _stale_answer(body: bytes, control: str, age: int, *extra: tuple[str, str], close: bool = False) -> Answer:
    return Answer(200, [("Cache-Control", control), ("Age", str(age)), *extra], body, close=close)


# --- stale-while-revalidate ---------------------------------------------------------------------------------------


def test_rfc5861_3_stale_while_revalidate_served_at_once_one_background_refresh(origin, make_edge) -> None:
    """RFC 5861 section 3: within stale-while-revalidate the stale copy is served at once, one request (not one per
    hit) refreshes it in the background, and the next request gets the refreshed body."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/swr"] = _stale_answer(b"old", "max-age=10, stale-while-revalidate=60", 20, ("ETag", '"v1"'))
    status, headers, body = get(edge.http_port, "/swr")
    assert (status, body) == (200, b"old")
    assert "stored" in cache_status(headers), headers
    origin.answers["/swr"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"v2"')], b"new", delay=1.0)

    results: list[tuple[float, int, dict[str, str], bytes]] = []

    def client() -> None:
        started = time.monotonic()
        status, headers, body = get(edge.http_port, "/swr")
        results.append((time.monotonic() - started, status, headers, body))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for elapsed, status, headers, body in results:
        assert (status, body) == (200, b"old")
        params = cache_status(headers)
        assert params.get("hit") is True and params.get("detail") == "stale-while-revalidate", headers
        assert elapsed < 0.8, f"a stale-while-revalidate hit waited {elapsed:.2f}s for the origin"
    assert origin.last("/swr").headers.get("if-none-match") == '"v1"'
    wait_for(lambda: get(edge.http_port, "/swr")[2] == b"new", 5, what="the refreshed body")
    assert origin.count("/swr") == 2, "one fill, then exactly one background refresh for eight stale hits"
    status, headers, body = get(edge.http_port, "/swr")
    assert (status, body) == (200, b"new") and cache_status(headers).get("hit") is True


def test_rfc5861_3_background_304_refreshes_the_stored_copy(origin, make_edge) -> None:
    """RFC 5861 section 3 with RFC 9111 section 4.3.4: the background revalidation answered 304 makes the stored copy
    fresh again, with the 304's header fields, and its body unchanged."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/swr304"] = _stale_answer(b"kept body", "max-age=10, stale-while-revalidate=60", 20,
                                              ("ETag", '"e"'), ("X-Version", "1"))
    get(edge.http_port, "/swr304")
    origin.answers["/swr304"] = Answer(304, [("Cache-Control", "max-age=300"), ("ETag", '"e"'), ("X-Version", "2")],
                                       b"")
    status, headers, body = get(edge.http_port, "/swr304")
    assert (status, body) == (200, b"kept body")
    assert cache_status(headers).get("detail") == "stale-while-revalidate"
    wait_for(lambda: get(edge.http_port, "/swr304")[1].get("x-version") == "2", 5, what="the 304's header fields")
    status, headers, body = get(edge.http_port, "/swr304")
    params = cache_status(headers)
    assert (status, body) == (200, b"kept body")
    assert params.get("hit") is True and int(str(params["ttl"])) > 250, headers
    assert origin.count("/swr304") == 2


def test_rfc5861_3_stale_on_arrival_within_swr_is_served_while_revalidating(origin, make_edge) -> None:
    """RFC 5861 section 3: a response that arrives already stale (``Age`` past ``max-age``) but inside its
    stale-while-revalidate window may be served stale while it is revalidated, validators or not."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/late"] = _stale_answer(b"late", "max-age=10, stale-while-revalidate=60", 20)
    get(edge.http_port, "/late")
    status, headers, body = get(edge.http_port, "/late")
    assert (status, body) == (200, b"late")
    assert cache_status(headers).get("detail") == "stale-while-revalidate", headers


def test_rfc9111_4_3_3_full_response_to_a_revalidation_replaces_the_stale_copy(origin, make_edge) -> None:
    """RFC 9111 section 4.3.3: when the origin answers the edge's conditional request with a full 200, that response
    is used and (being storable) replaces the stale copy, so the following requests are hits on the new body."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/re"] = _stale_answer(b"v1", "max-age=10", 20, ("ETag", '"1"'))
    get(edge.http_port, "/re")
    origin.answers["/re"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"2"')], b"v2")
    status, headers, body = get(edge.http_port, "/re")
    assert (status, body) == (200, b"v2")
    assert origin.last("/re").headers.get("if-none-match") == '"1"'
    assert "stored" in cache_status(headers), headers
    status, headers, body = get(edge.http_port, "/re")
    assert (status, body) == (200, b"v2") and cache_status(headers).get("hit") is True, headers
    assert origin.count("/re") == 2


# --- stale-if-error and always online -----------------------------------------------------------------------------


def test_rfc5861_4_stale_if_error_response_directive_on_5xx(origin, make_edge) -> None:
    """RFC 5861 section 4: a copy with stale-if-error is served stale when the origin answers 500, 502 or 503 within
    the window (Cache-Status fwd=stale with the origin's status); past the window the origin's error goes through."""
    edge = make_edge([cached_site(origin)], https=[])
    for code in (500, 502, 503):
        path = f"/sie{code}"
        origin.answers[path] = _stale_answer(b"stale " + path.encode(), "max-age=10, stale-if-error=60", 20)
        assert get(edge.http_port, path)[0] == 200
        origin.answers[path] = Answer(code, [("Content-Type", "text/plain")], b"origin error")
        status, headers, body = get(edge.http_port, path)
        assert (status, body) == (200, b"stale " + path.encode()), headers
        params = cache_status(headers)
        assert params.get("fwd") == "stale" and params.get("fwd-status") == str(code), headers
        assert params.get("detail") == "stale-if-error" and int(str(params["ttl"])) < 0, headers
        assert int(headers["age"]) >= 20
    origin.answers["/sie-over"] = _stale_answer(b"too old", "max-age=10, stale-if-error=5", 20)
    get(edge.http_port, "/sie-over")
    origin.answers["/sie-over"] = Answer(500, [("Content-Type", "text/plain")], b"origin error")
    status, headers, body = get(edge.http_port, "/sie-over")
    assert (status, body) == (500, b"origin error"), "10 s stale is beyond stale-if-error=5"


def test_rfc5861_4_stale_if_error_on_origin_timeout(origin, make_edge) -> None:
    """RFC 5861 section 4 ("an error is any situation that would result in a 500, 502, 503 or 504"): an origin
    slower than the site's response_timeout makes the edge answer 504, and a stale-if-error copy is served instead."""
    edge = make_edge([{**cached_site(origin), "origin": {"response_timeout": "1s"}}], https=[])
    origin.answers["/slow"] = _stale_answer(b"stale slow", "max-age=10, stale-if-error=60", 20)
    get(edge.http_port, "/slow")
    origin.answers["/slow"] = Answer(200, [("Cache-Control", "max-age=60")], b"too late", delay=2.0)
    status, headers, body = get(edge.http_port, "/slow")
    assert (status, body) == (200, b"stale slow"), headers
    params = cache_status(headers)
    assert params.get("fwd") == "stale" and params.get("fwd-status") == "504", headers


def test_rfc9111_5_2_2_2_must_revalidate_never_served_stale_on_error(origin, make_edge) -> None:
    """RFC 9111 section 5.2.2.2: a stale must-revalidate copy is not served even when the origin fails and the
    response also said stale-if-error; the error goes to the client."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/mr"] = _stale_answer(b"mr", "max-age=10, must-revalidate, stale-if-error=60", 20,
                                          ("ETag", '"m"'))
    get(edge.http_port, "/mr")
    origin.answers["/mr"] = Answer(503, [("Content-Type", "text/plain")], b"down for maintenance")
    status, _, body = get(edge.http_port, "/mr")
    assert (status, body) == (503, b"down for maintenance")


def test_rfc5861_4_stale_if_error_request_directive(origin, make_edge) -> None:
    """RFC 5861 section 4: the client's own ``Cache-Control: stale-if-error=N`` lets a stale copy answer an origin
    error, within N seconds of staleness only; without it the error goes through."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/rq"] = _stale_answer(b"stale rq", "max-age=10", 20, ("ETag", '"r"'))
    get(edge.http_port, "/rq")
    origin.answers["/rq"] = Answer(503, [("Content-Type", "text/plain")], b"busy")
    status, headers, body = get(edge.http_port, "/rq", headers={"Cache-Control": "stale-if-error=60"})
    assert (status, body) == (200, b"stale rq"), headers
    assert cache_status(headers).get("fwd") == "stale"
    assert origin.last("/rq").headers.get("if-none-match") == '"r"', "the edge revalidated before falling back"
    assert get(edge.http_port, "/rq")[:3:2] == (503, b"busy")
    assert get(edge.http_port, "/rq", headers={"Cache-Control": "stale-if-error=3"})[:3:2] == (503, b"busy")


def test_issue5_always_online_serves_stale_when_the_origin_is_down(origin, make_edge) -> None:
    """Issue 5 "always online": with every origin down (connection refused) or answering 5xx, a stale copy is served
    up to always_online_max_stale of staleness (detail=always-online); an older one, or a must-revalidate one, is not:
    the client gets the error page."""
    edge = make_edge([cached_site(origin, always_online=True, always_online_max_stale="5s")], https=[])
    answers = {
        "/ao": _stale_answer(b"ao", "max-age=10", 12, close=True),
        "/ao-5xx": _stale_answer(b"ao 5xx", "max-age=10", 12, close=True),
        "/ao-old": _stale_answer(b"old", "max-age=10", 30, close=True),
        "/ao-mr": _stale_answer(b"mr", "max-age=10, must-revalidate", 12, close=True),
    }
    for path, answer in answers.items():
        origin.answers[path] = answer
        assert get(edge.http_port, path)[0] == 200
    origin.answers["/ao-5xx"] = Answer(502, [("Content-Type", "text/plain")], b"bad gateway", close=True)
    status, headers, body = get(edge.http_port, "/ao-5xx")
    assert (status, body) == (200, b"ao 5xx"), headers
    assert cache_status(headers).get("detail") == "always-online"
    origin.close()
    status, headers, body = get(edge.http_port, "/ao")
    assert (status, body) == (200, b"ao"), headers
    params = cache_status(headers)
    assert params.get("fwd") == "stale" and params.get("detail") == "always-online", headers
    assert get(edge.http_port, "/ao-old")[0] == 502, "30 s stale is beyond always_online_max_stale = 5s"
    assert get(edge.http_port, "/ao-mr")[0] == 502, "must-revalidate wins over always online"


def test_issue5_always_online_off_by_default(origin, make_edge) -> None:
    """Issue 5: without always_online (and without stale-if-error) a stale copy is never served for a dead origin."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/plain"] = _stale_answer(b"plain", "max-age=10", 12, ("ETag", '"p"'), close=True)
    get(edge.http_port, "/plain")
    origin.close()
    assert get(edge.http_port, "/plain")[0] == 502


def test_rfc9110_14_2_ranges_answered_from_a_stale_copy(origin, make_edge) -> None:
    """RFC 9110 section 14.2 with RFC 5861: a Range answered by a stale copy (stale-if-error after a 500, or
    stale-while-revalidate) is the 206 of that copy; after the background refresh, the 206 of the new one."""
    edge = make_edge([cached_site(origin)], https=[])
    origin.answers["/sie-range"] = _stale_answer(b"0123456789", "max-age=10, stale-if-error=60", 20)
    origin.answers["/swr-range"] = _stale_answer(b"0123456789", "max-age=10, stale-while-revalidate=60", 20)
    get(edge.http_port, "/sie-range")
    get(edge.http_port, "/swr-range")
    origin.answers["/sie-range"] = Answer(500, [], b"error")
    origin.answers["/swr-range"] = Answer(200, [("Cache-Control", "max-age=60")], b"abcdefghij")
    for path in ("/sie-range", "/swr-range"):
        status, headers, body = get(edge.http_port, path, headers={"Range": "bytes=2-4"})
        assert (status, body, headers.get("content-range")) == (206, b"234", "bytes 2-4/10"), headers
    wait_for(lambda: get(edge.http_port, "/swr-range", headers={"Range": "bytes=2-4"})[2] == b"cde", 5,
             what="the refreshed copy's range")


# --- ranges --------------------------------------------------------------------------------------------------------


SIZE = 10_000
FULL = body_for("/file", SIZE)
LAST_MODIFIED = http_date(-86400)


@pytest.fixture(scope="module")
def range_origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def range_edge(tmp_path_factory, pki, range_origin) -> Iterator[Edge]:
    """One edge for every range test (they only read): /file (10,000 bytes, ETag "v1") is stored once."""
    edge = Edge(tmp_path_factory.mktemp("range-edge"),
                [cached_site(range_origin, rule=[{"path_prefix": "/live/", "bypass": True}])], pki.ca_pem, https=[])
    edge.start()
    range_origin.answers["/file"] = Answer(200, [("Cache-Control", "max-age=600"), ("ETag", '"v1"'),
                                                 ("Last-Modified", LAST_MODIFIED),
                                                 ("Content-Type", "application/octet-stream")], FULL)
    status, _, body = get(edge.http_port, "/file")
    assert (status, body) == (200, FULL)
    yield edge
    edge.stop()


@pytest.fixture
def ranged(range_edge) -> int:
    """The range edge's port."""
    return range_edge.http_port


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=100-199", 100, 199), ("bytes=-500", SIZE - 500, SIZE - 1), ("bytes=9990-", 9990, SIZE - 1),
     ("bytes=9000-20000", 9000, SIZE - 1), ("bytes=0-0", 0, 0)],
)
def test_rfc9110_14_2_single_range_from_a_stored_response(ranged, range_origin, spec, start, end) -> None:
    """RFC 9110 sections 14.2 and 15.3.7: one range (bounded, suffix, open, clamped) is a 206 with Content-Range and
    exactly those bytes, from the cache."""
    status, headers, body = get(ranged, "/file", headers={"Range": spec})
    assert status == 206, headers
    assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
    assert body == FULL[start:end + 1] and int(headers["content-length"]) == end + 1 - start
    assert headers["content-type"] == "application/octet-stream"
    assert cache_status(headers).get("hit") is True
    assert range_origin.count("/file") == 1


def _multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/byteranges body (RFC 9110 section 14.6, RFC 2046 section 5.1.1)."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    delimiter = b"\r\n--" + boundary
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    preamble_free = b"\r\n" + body
    assert preamble_free.rstrip(b"\r\n").endswith(delimiter + b"--"), body[-80:]
    parts = []
    for chunk in preamble_free.split(delimiter)[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        fields = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        parts.append((fields, data))
    return parts


def test_rfc9110_14_6_multiple_ranges_multipart_byteranges(ranged) -> None:
    """RFC 9110 section 14.6: several ranges are one 206 multipart/byteranges whose parts carry the stored
    Content-Type and their own Content-Range, with exactly those bytes; Content-Length is the body's length."""
    status, headers, body = get(ranged, "/file", headers={"Range": "bytes=0-9, 5000-5099, -10"})
    assert status == 206, headers
    assert headers["content-type"].startswith("multipart/byteranges; boundary="), headers
    assert "content-range" not in headers
    assert int(headers["content-length"]) == len(body)
    parts = _multipart(headers["content-type"], body)
    expected = [(0, 9), (5000, 5099), (SIZE - 10, SIZE - 1)]
    assert len(parts) == len(expected)
    for (fields, data), (start, end) in zip(parts, expected, strict=True):
        assert fields["content-type"] == "application/octet-stream"
        assert fields["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert data == FULL[start:end + 1]


@pytest.mark.parametrize(
    ("if_range", "applies"),
    [('"v1"', True), ('"v0"', False), ('W/"v1"', False), (LAST_MODIFIED, True), (http_date(-3600), False)],
)
def test_rfc9110_13_1_5_if_range(ranged, if_range, applies) -> None:
    """RFC 9110 section 13.1.5: If-Range with the current strong ETag or the exact Last-Modified gets the 206; any
    other validator (weak, old, another date) gets the whole 200."""
    status, headers, body = get(ranged, "/file", headers={"Range": "bytes=10-19", "If-Range": if_range})
    if applies:
        assert (status, body, headers["content-range"]) == (206, FULL[10:20], f"bytes 10-19/{SIZE}")
    else:
        assert (status, body) == (200, FULL) and "content-range" not in headers


def test_rfc9110_15_5_17_unsatisfiable_range_416(ranged) -> None:
    """RFC 9110 section 15.5.17: a range starting past the end is 416 with ``Content-Range: bytes */N``."""
    status, headers, body = get(ranged, "/file", headers={"Range": f"bytes={SIZE}-"})
    assert status == 416, headers
    assert headers["content-range"] == f"bytes */{SIZE}"
    assert body == b""


def test_rfc9110_14_2_range_with_curl(ranged, range_origin) -> None:
    """RFC 9110 section 14.2 with a real client: ``curl -r`` gets the 206 and exactly its bytes, from the cache."""
    proc = subprocess.run(
        ["curl", "-sS", "--http1.1", "-r", "1234-5677", "-H", "Host: cached.example", "-o", "-", "-w",
         "\n%{http_code}", f"http://127.0.0.1:{ranged}/file"],
        capture_output=True, timeout=10,
    )
    body, _, code = proc.stdout.rpartition(b"\n")
    assert proc.returncode == 0, proc.stderr
    assert code == b"206" and body == FULL[1234:5678]
    assert range_origin.count("/file") == 1


def test_rfc9110_14_2_range_on_a_miss_stores_the_whole_response(ranged, range_origin) -> None:
    """RFC 9110 section 14.2: a Range on a miss is answered correctly (206 with the slice, or the whole 200: a server
    may ignore Range) and the edge stores the complete response, so the next range is a hit."""
    full = body_for("/miss", 4000)
    range_origin.answers["/miss"] = Answer(200, [("Cache-Control", "max-age=600")], full)
    status, headers, body = get(ranged, "/miss", headers={"Range": "bytes=100-199"})
    assert (status, body) in ((206, full[100:200]), (200, full)), headers
    assert "range" not in range_origin.last("/miss").headers, "the edge fetches the whole response to store it"
    status, headers, body = get(ranged, "/miss", headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, full[100:200]) and cache_status(headers).get("hit") is True
    assert range_origin.count("/miss") == 1


def _origin_206(seen) -> Answer:
    """An origin that answers ranges itself (for paths the edge does not store)."""
    full = body_for(seen.target, 5000)
    spec = seen.headers.get("range", "")
    control = ("Cache-Control", "no-store")
    if not spec.startswith("bytes="):
        return Answer(200, [control], full)
    first, _, last = spec[6:].partition("-")
    start, end = int(first), int(last)
    return Answer(206, [control, ("Content-Range", f"bytes {start}-{end}/5000"), ("Content-Type", "video/mp4")],
                  full[start:end + 1])


def test_rfc9110_15_3_7_origin_206_passes_through_uncached(ranged, range_origin) -> None:
    """RFC 9110 section 15.3.7 and RFC 9111 section 3.4: on paths the edge does not store (a bypass rule, or a
    response that said no-store), the client's Range reaches the origin and its 206 comes back intact."""
    range_origin.answers["/live/clip"] = _origin_206
    status, headers, body = get(ranged, "/live/clip", headers={"Range": "bytes=1000-1999"})
    assert status == 206, headers
    assert headers["content-range"] == "bytes 1000-1999/5000"
    assert body == body_for("/live/clip", 5000)[1000:2000]
    assert range_origin.last("/live/clip").headers.get("range") == "bytes=1000-1999"
    assert cache_status(headers).get("fwd") == "bypass"

    range_origin.answers["/nostore"] = _origin_206
    first = get(ranged, "/nostore", headers={"Range": "bytes=0-99"})
    assert (first[0], first[2]) in ((206, body_for("/nostore", 5000)[:100]), (200, body_for("/nostore", 5000)))
    status, headers, body = get(ranged, "/nostore", headers={"Range": "bytes=4000-4999"})
    assert status == 206, headers
    assert headers["content-range"] == "bytes 4000-4999/5000"
    assert body == body_for("/nostore", 5000)[4000:]
    assert "stored" not in cache_status(headers)
