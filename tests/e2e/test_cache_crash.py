"""Crash safety of the disk tier (issue 5: "kill -9 during fills, restart, every served object is intact").

An edge with two workers fills many objects (small and large, with and without Content-Length) from an origin that
sends them slowly; the control process and both workers are killed with SIGKILL mid-fill, several times, and after
each restart on the same state directory every object is requested: a hit must carry exactly the bytes the origin
sent for that path (bodies are derived from the path, see ``body_for``), never a torn or mixed one.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from cache_support import Answer, TricklingOrigin, body_for, cache_status, cached_site, get
from e2e_support import LIVE_EDGES, Edge, wait_for

from tlsedge.cache.disk import key_hash

KIB = 1024
MIB = 1024 * KIB


ROUNDS = 4


def _objects() -> dict[str, tuple[int, bool]]:
    """path -> (size, chunked), 16 objects per round: a quarter large (1.5-3 MiB), the rest from 1 KiB to 300 KiB;
    a third chunked."""
    rng = random.Random(5)
    objects = {}
    for round_ in range(ROUNDS):
        for i in range(16):
            size = rng.randint(3 * MIB // 2, 3 * MIB) if i % 4 == 0 else rng.randint(KIB, 300 * KIB)
            objects[f"/o/{round_}/{i}"] = (size, i % 3 == 0)
    return objects


OBJECTS = _objects()


@pytest.fixture
def slow_origin():
    origin = TricklingOrigin(piece=64 * KIB, interval=0.01)  # ~6 MiB/s per connection
    for path, (size, chunked) in OBJECTS.items():
        origin.answers[path] = Answer(200, [("Cache-Control", "max-age=3600")], body_for(path, size),
                                      chunked=chunked, delay=random.Random(path).uniform(0, 0.2))
    yield origin
    origin.close()


def _kill(edge: Edge) -> None:
    """SIGKILL the control process and every worker at once, as a crash of the whole edge would."""
    pids = [edge.pid, *edge.worker_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    edge.proc.wait(5)
    wait_for(lambda: not any(_running(pid) for pid in pids), 5, what="the killed workers to exit")
    while edge in LIVE_EDGES:
        LIVE_EDGES.remove(edge)


def _running(pid: int) -> bool:
    """Alive and not a zombie (the orphaned workers are reaped by whoever adopted them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _fill_in_background(edge: Edge, paths: list[str]) -> list[threading.Thread]:
    """Request every path at once (two clients per path, so some are collapsed); the edge dies under them."""

    def fetch(path: str) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):  # the edge is killed mid-response
            get(edge.http_port, path, timeout=10)

    threads = [threading.Thread(target=fetch, args=(path,), daemon=True) for path in paths for _ in range(2)]
    for thread in threads:
        thread.start()
    return threads


def _check(edge: Edge, paths: list[str]) -> dict[str, str]:
    """Request every path (concurrently); each body must be exact, hit or not. Returns path -> its Cache-Status."""
    results: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def fetch(path: str) -> None:
        results[path] = get(edge.http_port, path, timeout=20)

    threads = [threading.Thread(target=fetch, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = {}
    for path in paths:
        assert path in results, f"no answer for {path}"
        status, headers, body = results[path]
        size = OBJECTS[path][0]
        assert status == 200, (path, headers)
        assert len(body) == size and body == body_for(path, size), (
            f"{path}: {len(body)} bytes, expected {size}; Cache-Status {headers.get('cache-status')}"
        )
        statuses[path] = headers.get("cache-status", "")
    return statuses


def test_issue5_kill_9_during_fills_never_serves_a_torn_object(make_edge, slow_origin) -> None:
    """Issue 5 crash test: four times, 16 new objects (4 of them a few MiB, streaming for ~0.5 s) are being filled
    when the whole edge is SIGKILLed; after each restart every object filled so far is served intact, hit or miss,
    whatever was stored before a kill is still a hit after it, and the temp files of the killed processes are gone."""
    edge = make_edge([cached_site(slow_origin)], https=[], workers=2)
    rng = random.Random(9)
    committed = torn = 0
    done: list[str] = []
    kept: set[str] = set()  # answered as a hit or "stored" by a check: on disk before the next kill
    for round_ in range(ROUNDS):
        paths = [path for path in OBJECTS if path.startswith(f"/o/{round_}/")]
        threads = _fill_in_background(edge, paths)
        time.sleep(rng.uniform(0.3, 0.6))
        _kill(edge)
        for thread in threads:
            thread.join(15)
        edge.start()
        statuses = _check(edge, done + paths)
        params = {path: cache_status({"cache-status": value}) for path, value in statuses.items()}
        committed += sum(params[path].get("hit") is True for path in paths)
        torn += sum(params[path].get("hit") is not True for path in paths)
        lost = {path: statuses[path] for path in kept if params[path].get("hit") is not True}
        assert not lost, f"objects stored before the kill are not hits after the restart: {lost}"
        kept |= {path for path, values in params.items() if values.get("hit") is True or values.get("stored")}
        done += paths
    assert committed and torn, f"{committed} objects were stored before a kill, {torn} were cut: both must happen"
    temp = Path(edge.server["state_dir"]) / "cache" / ".tmp"
    live = {str(pid) for pid in edge.worker_pids()}
    leftovers = [name for name in os.listdir(temp) if name.split("-", 1)[0] not in live]
    assert not leftovers, f"temp files of killed processes left in {temp}: {leftovers[:5]}"


def test_issue5_fill_lock_of_a_killed_worker_does_not_hold_up_the_object(make_edge, slow_origin) -> None:
    """Issue 5 (kill -9 during fills, restart): the cross-worker fill lock a killed worker leaves behind must not make
    the first request after the restart wait collapse_timeout and go unstored, even when the dead worker's pid is
    alive again: pids are reused (pid_max is 32768 here) and an orphaned worker stays a zombie until reaped. Here the
    lock names a live process that is no edge worker (this test's own pid)."""
    edge = make_edge([cached_site(slow_origin, collapse_timeout="3s")], https=[])
    path = "/o/0/7"
    lock = _object_file(edge, path).with_name(_object_file(edge, path).name + ".fill")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{os.getpid()}:1 {os.getpid()}-0badf00d-0")  # this pid, started at another time: reused
    started = time.monotonic()
    status, headers, body = get(edge.http_port, path, timeout=20)
    elapsed = time.monotonic() - started
    assert (status, body) == (200, body_for(path, OBJECTS[path][0]))
    assert elapsed < 2.0 and "stored" in cache_status(headers), (round(elapsed, 2), headers)


def _object_file(edge: Edge, path: str) -> Path:
    h = key_hash(f"http://cached.example{path}".encode())
    return Path(edge.server["state_dir"]) / "cache" / "cached" / h[:2] / f"{h}-0"


def test_issue5_damaged_disk_objects_are_misses(make_edge, slow_origin) -> None:
    """Issue 5 "a checksum so a torn or corrupted entry is never served": with the edge stopped, one stored object
    gets a flipped body byte, one is truncated, one has its last 4 KiB zeroed (a power loss); after a restart each
    is a miss answered from the origin with the right bytes, and is stored again."""
    edge = make_edge([cached_site(slow_origin)], https=[])
    damaged = {"/o/0/1": "flip", "/o/0/2": "truncate", "/o/0/4": "zero"}
    for path in damaged:
        get(edge.http_port, path, timeout=20)
    edge.stop()
    for path, how in damaged.items():
        file = _object_file(edge, path)
        data = bytearray(file.read_bytes())
        assert len(data) > OBJECTS[path][0], f"{file} does not hold the {path} object"
        if how == "flip":
            data[len(data) // 3] ^= 0x40
        elif how == "truncate":
            del data[-100:]
        else:
            data[-4096:] = bytes(4096)
        file.write_bytes(bytes(data))
    edge.start()
    for path in damaged:
        size = OBJECTS[path][0]
        status, headers, body = get(edge.http_port, path, timeout=20)
        assert (status, body) == (200, body_for(path, size)), (path, headers, len(body))
        assert "hit" not in cache_status(headers), (path, headers)
        status, headers, body = get(edge.http_port, path, timeout=20)
        assert body == body_for(path, size) and cache_status(headers).get("hit") is True
    assert all(slow_origin.count(path) == 2 for path in damaged)
