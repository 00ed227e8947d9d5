"""Request collapsing (issue 5): concurrent misses for one key cause one origin fetch that every waiting client shares,
except when the answer turns out uncacheable, when the wait exceeds collapse_timeout, and whatever the leader's own
client does. Each client is a thread with a connection of its own; the origin counts what it receives.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cache_support import Answer, ScriptedOrigin, TricklingOrigin, body_for, cache_status, cached_site, get

Result = tuple[int, dict[str, str], bytes]


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
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
    while received < after:
        chunk = sock.recv(65536)
        assert chunk, "the edge closed before the leader left"
        received += len(chunk)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    return received


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_issue5_leader_leaving_mid_body_does_not_stop_the_waiters(make_edge, chunked) -> None:
    """Issue 5: "a client that disconnects does not abort a fill other clients wait on": the leader's client resets
    its connection a fifth of the way into a 1 MiB body the origin sends slowly; waiters that joined before the head
    and while the body streamed all get the whole body, and it is stored."""
    slow = TricklingOrigin(piece=16384, interval=0.02)
    try:
        edge = make_edge([cached_site(slow)], https=[])
        body = body_for("/big", 1024 * 1024)
        slow.answers["/big"] = Answer(200, [("Cache-Control", "max-age=60")], body, delay=0.3, chunked=chunked)
        results: list[Result] = []

        def waiter() -> None:
            results.append(get(edge.http_port, "/big", timeout=20))

        leader = threading.Thread(target=_leave_mid_body, args=(edge.http_port, "/big", 200 * 1024))
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
