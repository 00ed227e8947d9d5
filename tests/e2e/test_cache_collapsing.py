"""Request collapsing (issue 5): concurrent misses for one key cause one origin fetch that every waiting client shares,
except when the answer turns out uncacheable, when the wait exceeds collapse_timeout, and whatever the leader's own
client does. Each client is a thread with a connection of its own; the origin counts what it receives.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cache_support import (
    Answer,
    ScriptedOrigin,
    TricklingOrigin,
    body_for,
    cache_status,
    cached_site,
    deep_backlog,
    get,
)
from e2e_support import wait_for

from tlsedge.control.status import live_worker_pids

Result = tuple[int, dict[str, str], bytes]


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    scripted = deep_backlog(ScriptedOrigin())
    yield scripted
    scripted.close()


def _concurrently(count: int, request: Callable[[], Result]) -> list[Result]:
    """``count`` threads released together, each making ``request`` on its own connection."""
    barrier = threading.Barrier(count)
    results: list[Result] = []
    errors: list[BaseException] = []

    def client() -> None:
        barrier.wait()
        try:
            results.append(request())
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:3]
    assert len(results) == count
    return results


def test_issue5_collapsing_150_concurrent_misses_make_one_origin_request(origin, make_edge) -> None:
    """Issue 5 "request collapsing": 150 concurrent misses for one key while the origin takes a second: the origin
    sees one request, every client gets the identical full body, the waiters' Cache-Status says ``collapsed``."""
    edge = make_edge([cached_site(origin)], https=[])
    body = body_for("/popular", 64 * 1024)
    origin.answers["/popular"] = Answer(200, [("Cache-Control", "max-age=60")], body, delay=1.0)
    results = _concurrently(150, lambda: get(edge.http_port, "/popular", timeout=15))
    assert origin.count("/popular") == 1
    assert all(status == 200 and got == body for status, _, got in results)
    statuses = [cache_status(headers) for _, headers, _ in results]
    assert sum(1 for params in statuses if params.get("stored")) == 1, statuses[:3]
    collapsed = sum(1 for params in statuses if params.get("collapsed"))
    assert collapsed >= 100, f"only {collapsed} of 150 waiters were collapsed: {statuses[:3]}"
    status, headers, got = get(edge.http_port, "/popular")
    assert (status, got) == (200, body) and cache_status(headers).get("hit") is True


def test_issue5_collapsing_across_workers(origin, make_edge) -> None:
    """Issue 5: "N concurrent misses for the same key cause one origin fetch" and "workers share the disk tier (one
    object written once)": with two workers, 60 concurrent misses still make one origin request."""
    edge = make_edge([cached_site(origin)], https=[], workers=2)
    body = body_for("/both", 10_000)
    origin.answers["/both"] = Answer(200, [("Cache-Control", "max-age=60")], body, delay=1.0)
    state = Path(edge.server["state_dir"])
    wait_for(lambda: live_worker_pids(state) == sorted(edge.worker_pids()), 10, what="both workers' status files")
    results = _concurrently(60, lambda: get(edge.http_port, "/both", timeout=15))
    assert all(status == 200 and got == body for status, _, got in results)
    assert origin.count("/both") == 1
    # Both workers took part: each now holds the object in memory (the purge reports 1 per worker).
    purge = subprocess.run([sys.executable, "-m", "tlsedge", "purge", "url", "http://cached.example/both", "-c",
                            str(edge.config_path)], capture_output=True, text=True, timeout=30)
    assert re.findall(r"^worker \d+: (\d+) removed from memory$", purge.stdout, re.M) == ["1", "1"], purge.stdout


def test_issue5_collapsed_range_and_conditional_requests(origin, make_edge) -> None:
    """Issue 5 with RFC 9110 sections 13.1.2 and 14.2: waiters that sent Range or If-None-Match share the fill and
    get their own answer from it: the exact 206 slice, or a 304 for a matching ETag."""
    edge = make_edge([cached_site(origin)], https=[])
    body = body_for("/video", 200_000)
    origin.answers["/video"] = Answer(200, [("Cache-Control", "max-age=60"), ("ETag", '"v"')], body, delay=0.8)
    kinds = ["full", "range", "etag"] * 8
    answers: dict[int, Result] = {}

    def client(index: int) -> None:
        kind = kinds[index]
        headers = {"range": {"Range": f"bytes={index}-{index + 999}"}, "etag": {"If-None-Match": '"v"'}}.get(kind)
        answers[index] = get(edge.http_port, "/video", headers=headers, timeout=10)

    # The leader is the plain GET (a leader's own Range or condition may be answered with the whole 200).
    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(kinds))]
    threads[0].start()
    wait_for(lambda: origin.count("/video") == 1, 5, what="the leader's request at the origin")
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert origin.count("/video") == 1
    assert len(answers) == len(kinds)
    for index, (status, headers, got) in answers.items():
        if kinds[index] == "full":
            assert (status, got) == (200, body)
        elif kinds[index] == "range":
            assert (status, got) == (206, body[index:index + 1000]), (index, headers)
            assert headers["content-range"] == f"bytes {index}-{index + 999}/200000"
        else:
            assert (status, got) == (304, b""), headers


def test_issue5_collapsed_waiters_of_another_variant_fetch_their_own(origin, make_edge) -> None:
    """Issue 5 with RFC 9111 section 4.1: waiters whose request selects another variant (``Vary: X-Lang``) are not
    given the leader's response: every client gets the body for its own language."""
    edge = make_edge([cached_site(origin)], https=[])

    def answer(seen) -> Answer:
        lang = seen.headers.get("x-lang", "none")
        return Answer(200, [("Cache-Control", "max-age=60"), ("Vary", "X-Lang")], f"in {lang}".encode(), delay=0.5)

    origin.answers["/hello"] = answer
    langs = ["en", "fr", "de"] * 6
    got: list[tuple[str, Result]] = []

    def client(lang: str) -> None:
        got.append((lang, get(edge.http_port, "/hello", headers={"X-Lang": lang}, timeout=10)))

    threads = [threading.Thread(target=client, args=(lang,)) for lang in langs]
    threads[0].start()  # the leader asks for English
    wait_for(lambda: origin.count("/hello") == 1, 5, what="the leader's request at the origin")
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(got) == len(langs)
    for lang, (status, headers, body) in got:
        assert (status, body) == (200, f"in {lang}".encode()), headers
    assert 3 <= origin.count("/hello") <= 1 + 2 * 6
    status, headers, body = get(edge.http_port, "/hello", headers={"X-Lang": langs[0]})
    assert body == f"in {langs[0]}".encode() and cache_status(headers).get("hit") is True, headers


def test_issue5_released_waiter_stores_its_own_variant(origin, make_edge) -> None:
    """RFC 9111 section 3 with issue 5: a waiter released because the leader's response is another variant fetches
    for itself like any miss, so its storable response is stored: the next request for its variant is a hit."""
    edge = make_edge([cached_site(origin)], https=[])

    def answer(seen) -> Answer:
        lang = seen.headers.get("x-lang", "none")
        return Answer(200, [("Cache-Control", "max-age=60"), ("Vary", "X-Lang")], f"in {lang}".encode(), delay=0.5)

    origin.answers["/hi"] = answer
    leader = threading.Thread(target=get, args=(edge.http_port, "/hi"), kwargs={"headers": {"X-Lang": "en"}})
    leader.start()
    time.sleep(0.1)
    status, headers, body = get(edge.http_port, "/hi", headers={"X-Lang": "fr"})
    leader.join(5)
    assert (status, body) == (200, b"in fr")
    status, headers, body = get(edge.http_port, "/hi", headers={"X-Lang": "fr"})
    assert body == b"in fr" and cache_status(headers).get("hit") is True, headers
    assert origin.count("/hi") == 2


@pytest.mark.parametrize("control", ["private", "no-store"])
def test_issue5_uncacheable_answer_is_not_shared(origin, make_edge, control) -> None:
    """Issue 5: collapsing is "not for responses that turn out uncacheable": when the leader's answer is private or
    no-store, each waiter fetches its own response (the origin sees every client) and gets it."""
    edge = make_edge([cached_site(origin)], https=[])
    served = iter(range(1000))

    def answer(seen) -> Answer:
        return Answer(200, [("Cache-Control", control)], b"for client %d" % next(served), delay=0.5)

    origin.answers["/mine"] = answer
    results = _concurrently(20, lambda: get(edge.http_port, "/mine", timeout=10))
    assert origin.count("/mine") == 20
    bodies = [got for status, _, got in results if status == 200]
    assert len(set(bodies)) == 20, "every client got a response of its own"
    for _, headers, _ in results:
        params = cache_status(headers)
        assert "stored" not in params and "collapsed" not in params, headers


def test_issue5_collapse_timeout_waiter_fetches_itself(origin, make_edge) -> None:
    """Issue 5 (collapsing "with a timeout"): a waiter whose leader's origin is slower than collapse_timeout stops
    waiting and fetches for itself; the leader still gets, and stores, its own response."""
    edge = make_edge([cached_site(origin, collapse_timeout="0.5s")], https=[])
    first = threading.Event()

    def answer(seen) -> Answer:
        slow = not first.is_set()
        first.set()
        return Answer(200, [("Cache-Control", "max-age=60")], b"slow" if slow else b"quick", delay=3.0 if slow else 0)

    origin.answers["/slow"] = answer
    leader: list[Result] = []
    thread = threading.Thread(target=lambda: leader.append(get(edge.http_port, "/slow", timeout=10)))
    thread.start()
    assert first.wait(2)
    started = time.monotonic()
    status, headers, body = get(edge.http_port, "/slow", timeout=10)
    elapsed = time.monotonic() - started
    assert (status, body) == (200, b"quick")
    assert 0.4 < elapsed < 2.0, f"the waiter answered after {elapsed:.2f}s (collapse_timeout = 0.5s)"
    assert cache_status(headers).get("detail") == "collapse-timeout", headers
    thread.join(10)
    assert leader and leader[0][0] == 200 and leader[0][2] == b"slow"
    assert origin.count("/slow") == 2
    status, headers, body = get(edge.http_port, "/slow")
    assert body == b"slow" and cache_status(headers).get("hit") is True, headers


def _leave_mid_body(port: int, path: str, after: int) -> int:
    """Request ``path`` and reset the connection once ``after`` bytes have arrived; returns the bytes read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: cached.example\r\n\r\n".encode())
    received = 0
    if not after:
        time.sleep(0.15)  # the request has reached the origin, which waits before answering
    while received < after:
        chunk = sock.recv(65536)
        assert chunk, "the edge closed before the leader left"
        received += len(chunk)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    return received


@pytest.mark.parametrize(("chunked", "leave_after"), [(False, 200 * 1024), (True, 200 * 1024), (False, 0)],
                         ids=["mid-body", "mid-body-chunked", "before-head"])
def test_issue5_leader_leaving_does_not_stop_the_waiters(make_edge, chunked, leave_after) -> None:
    """Issue 5: "a client that disconnects does not abort a fill other clients wait on": the leader's client resets
    its connection before the head, or a fifth of the way into a 1 MiB body the origin sends slowly (with or
    without Content-Length); waiters that joined before the head and while the body streamed all get the whole
    body, and it is stored."""
    slow = TricklingOrigin(piece=16384, interval=0.02)
    try:
        edge = make_edge([cached_site(slow)], https=[])
        body = body_for("/big", 1024 * 1024)
        slow.answers["/big"] = Answer(200, [("Cache-Control", "max-age=60")], body, delay=0.3, chunked=chunked)
        results: list[Result] = []

        def waiter() -> None:
            results.append(get(edge.http_port, "/big", timeout=20))

        leader = threading.Thread(target=_leave_mid_body, args=(edge.http_port, "/big", leave_after))
        leader.start()
        time.sleep(0.1)
        early = [threading.Thread(target=waiter) for _ in range(3)]
        for thread in early:
            thread.start()
        leader.join(10)
        late = [threading.Thread(target=waiter) for _ in range(3)]
        for thread in late:
            thread.start()
        for thread in early + late:
            thread.join(20)
        assert len(results) == 6
        for status, headers, got in results:
            assert status == 200 and len(got) == len(body) and got == body, (status, headers, len(got))
        assert slow.count("/big") == 1
        status, headers, got = get(edge.http_port, "/big")
        assert got == body and cache_status(headers).get("hit") is True, headers
        assert slow.count("/big") == 1
    finally:
        slow.close()
