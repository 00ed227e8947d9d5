"""The operator's side of the cache (issue 5): per-site controls (path rules, key options, ignored query parameters,
object size limit, cache off), `tlsedge purge` reaching the disk tier and every worker, and the disk tier shared by
the workers of one edge. One edge serves the control tests (one site per control); each purge test has its own
edge with two workers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_support import Answer, ScriptedOrigin, TricklingOrigin, body_for, cache_status, cached_site, get
from e2e_support import Edge, wait_for

from tlsedge.control.status import live_worker_pids

Result = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    yield scripted
    scripted.close()


def _everything_cacheable(origin: ScriptedOrigin, *paths: str) -> None:
    """Each path answers max-age=60 with a body naming the full target (so a shared entry shows in the body)."""
    for path in paths:
        origin.answers[path] = lambda seen: Answer(200, [("Cache-Control", "max-age=60")], seen.target.encode())


@pytest.fixture(scope="module")
def controls(tmp_path_factory, pki, origin) -> Iterator[Edge]:
    sites = [
        cached_site(origin, "rules", key_cookies=["session"], rule=[
            {"path_prefix": "/nocache/", "bypass": True},
            {"path_prefix": "/ttl/", "ttl": "300s"},
            {"path_prefix": "/static/", "ignore_query": True},
            {"path_prefix": "/shared/", "ignore_cookies": True},
        ]),
        cached_site(origin, "keys", key_headers=["X-Device"], key_cookies=["lang"]),
        cached_site(origin, "params", ignore_query_params=["utm_source", "fbclid"]),
        cached_site(origin, "small", max_object_size="64KiB"),
        {**cached_site(origin, "off"), "cache": {"enabled": False}},
    ]
    edge = Edge(tmp_path_factory.mktemp("controls-edge"), sites, pki.ca_pem, https=[])
    edge.start()
    yield edge
    edge.stop()


def _twice(port: int, path: str, host: str, first: dict[str, str] | None = None,
           second: dict[str, str] | None = None) -> tuple[Result, Result]:
    return get(port, path, host, headers=first), get(port, path, host, headers=second)


def test_issue5_rule_bypass(controls, origin) -> None:
    """Issue 5 "rules by path (bypass)": a bypassed path is neither served from nor stored in the cache, however
    cacheable the origin says it is (Cache-Status fwd=bypass)."""
    _everything_cacheable(origin, "/nocache/page")
    first, second = _twice(controls.http_port, "/nocache/page", "rules.example")
    assert origin.count("/nocache/page") == 2
    for status, headers, _ in (first, second):
        assert status == 200 and cache_status(headers).get("fwd") == "bypass", headers
        assert "stored" not in cache_status(headers)


def test_issue5_rule_ttl_overrides_the_origin(controls, origin) -> None:
    """Issue 5 "override TTL": the rule's ttl replaces the origin's max-age (even a stale-on-arrival one), but not
    private or no-store, which still keep the response out of the cache."""
    origin.answers["/ttl/a"] = Answer(200, [("Cache-Control", "max-age=5")], b"ttl a")
    origin.answers["/ttl/old"] = Answer(200, [("Cache-Control", "max-age=5"), ("Age", "100")], b"old")
    origin.answers["/ttl/private"] = Answer(200, [("Cache-Control", "private, max-age=600")], b"mine")
    origin.answers["/ttl/nostore"] = Answer(200, [("Cache-Control", "no-store")], b"nope")
    _, headers, _ = get(controls.http_port, "/ttl/a", "rules.example")
    assert 290 <= int(str(cache_status(headers)["ttl"])) <= 300, headers
    _, headers, body = get(controls.http_port, "/ttl/a", "rules.example")
    assert body == b"ttl a" and cache_status(headers).get("hit") is True
    get(controls.http_port, "/ttl/old", "rules.example")
    _, headers, body = get(controls.http_port, "/ttl/old", "rules.example")
    assert body == b"old" and cache_status(headers).get("hit") is True, headers
    assert int(headers["age"]) >= 100
    for path in ("/ttl/private", "/ttl/nostore"):
        _twice(controls.http_port, path, "rules.example")
        assert origin.count(path) == 2, f"{path} was stored despite the origin"


def test_issue5_rule_ignore_query(controls, origin) -> None:
    """Issue 5 "ignore query parameters for the key": on an ignore_query path every query shares one entry."""
    _everything_cacheable(origin, "/static/app.css")
    port = controls.http_port
    first = get(port, "/static/app.css?v=1", "rules.example")
    second = get(port, "/static/app.css?v=2&x=y", "rules.example")
    assert first[2] == second[2] == b"/static/app.css?v=1"
    assert cache_status(second[1]).get("hit") is True
    assert origin.count("/static/app.css") == 1


def test_issue5_key_cookies_and_rule_ignore_cookies(controls, origin) -> None:
    """Issue 5 "include a cookie in the key", "ignore cookies" rule: the session cookie splits entries on the site's
    paths (other cookies do not), and a rule with ignore_cookies shares one entry whatever the cookies."""
    _everything_cacheable(origin, "/account", "/shared/logo")
    port = controls.http_port
    for session in ("alice", "bob", "alice"):
        get(port, "/account", "rules.example", headers={"Cookie": f"theme=dark; session={session}"})
    _, headers, _ = get(port, "/account", "rules.example", headers={"Cookie": "session=bob; theme=light"})
    assert cache_status(headers).get("hit") is True
    assert origin.count("/account") == 2, "one entry per session value; the theme cookie is not in the key"
    for session in ("alice", "bob"):
        _, headers, _ = get(port, "/shared/logo", "rules.example", headers={"Cookie": f"session={session}"})
    assert cache_status(headers).get("hit") is True and origin.count("/shared/logo") == 1


def test_issue5_key_headers_make_separate_entries(controls, origin) -> None:
    """Issue 5 "include a header in the key": each X-Device value is an entry of its own; the same value hits."""
    _everything_cacheable(origin, "/home")
    port = controls.http_port
    for device in ("mobile", "desktop", "mobile", "desktop"):
        _, headers, _ = get(port, "/home", "keys.example", headers={"X-Device": device})
    assert cache_status(headers).get("hit") is True
    _, headers, _ = get(port, "/home", "keys.example")
    assert cache_status(headers).get("fwd") == "uri-miss", "no X-Device is a third key"
    _, headers, _ = get(port, "/home", "keys.example", headers={"X-Device": "mobile", "Cookie": "lang=fr"})
    assert cache_status(headers).get("fwd") == "uri-miss", "the lang cookie is part of this site's key"
    assert origin.count("/home") == 4


def test_issue5_ignore_query_params(controls, origin) -> None:
    """Issue 5 "ignore query parameters": utm_source and fbclid are left out of the key, other parameters stay."""
    _everything_cacheable(origin, "/article")
    port = controls.http_port
    first = get(port, "/article?id=7&utm_source=news", "params.example")
    assert first[2] == b"/article?id=7&utm_source=news"
    for target in ("/article?id=7", "/article?utm_source=mail&id=7&fbclid=xyz"):
        _, headers, body = get(port, target, "params.example")
        assert body == first[2] and cache_status(headers).get("hit") is True, (target, headers)
    _, headers, body = get(port, "/article?id=8&utm_source=news", "params.example")
    assert body == b"/article?id=8&utm_source=news" and cache_status(headers).get("fwd") == "uri-miss"
    assert origin.count("/article") == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_issue5_max_object_size(controls, origin, chunked) -> None:
    """Issue 5 "objects over the limit pass through uncached": a 100 KiB response on a site limited to 64 KiB reaches
    the client whole, with or without Content-Length, and is not stored; a 10 KiB one is."""
    big, small = f"/big-{chunked}", f"/small-{chunked}"
    origin.answers[big] = Answer(200, [("Cache-Control", "max-age=60")], body_for(big, 100 * 1024), chunked=chunked)
    origin.answers[small] = Answer(200, [("Cache-Control", "max-age=60")], body_for(small, 10 * 1024),
                                   chunked=chunked)
    for _ in range(2):
        status, headers, body = get(controls.http_port, big, "small.example")
        assert status == 200 and body == body_for(big, 100 * 1024), (headers, len(body))
        assert "hit" not in cache_status(headers), headers
        if not chunked:  # known too big from the head; a chunked one only once 64 KiB went through
            assert cache_status(headers).get("detail") == "too-big", headers
    assert origin.count(big) == 2
    _twice(controls.http_port, small, "small.example")
    status, headers, body = get(controls.http_port, small, "small.example")
    assert body == body_for(small, 10 * 1024) and cache_status(headers).get("hit") is True
    assert origin.count(small) == 1


def test_issue5_cache_off_for_a_site(controls, origin) -> None:
    """Issue 5 "cache on/off": with ``enabled = false`` nothing is stored or served from the cache, and responses
    carry no Cache-Status."""
    _everything_cacheable(origin, "/uncached")
    first, second = _twice(controls.http_port, "/uncached", "off.example")
    assert first[0] == second[0] == 200
    assert "cache-status" not in first[1] and "cache-status" not in second[1]
    assert origin.count("/uncached") == 2


# --- purge -----------------------------------------------------------------------------------------------------


PATHS = ("/a", "/b", "/blog/1", "/blog/2", "/t1", "/t2", "/t3")


@pytest.fixture
def purge_origin() -> Iterator[ScriptedOrigin]:
    scripted = ScriptedOrigin()
    tags = {"/t1": "a, b", "/t2": "B", "/t3": "c"}

    def answer(seen) -> Answer:
        path = seen.target.split("?")[0]
        extra = [("Cache-Tag", tags[path])] if path in tags else []
        return Answer(200, [("Cache-Control", "max-age=600"), *extra], seen.target.encode())

    for path in PATHS:
        scripted.answers[path] = answer
    yield scripted
    scripted.close()


def _wait_for_workers(edge: Edge) -> None:
    """Until every worker has written its status file: the purge command asks only the workers it finds there."""
    state = Path(edge.server["state_dir"])
    wait_for(lambda: live_worker_pids(state) == sorted(edge.worker_pids()), 10, what="the workers' status files")


@pytest.fixture
def two_workers(make_edge, purge_origin) -> Edge:
    """An edge with two workers and two cached sites; every PATHS entry filled once on each site."""
    edge = make_edge([cached_site(purge_origin), cached_site(purge_origin, "other")], https=[], workers=2)
    _wait_for_workers(edge)
    for host in ("cached.example", "other.example"):
        for path in PATHS:
            status, headers, _ = get(edge.http_port, path, host)
            assert status == 200 and "stored" in cache_status(headers), headers
    return edge


def _purge(edge: Edge, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsedge", "purge", *args, "-c", str(edge.config_path)],
                          capture_output=True, text=True, timeout=30)


def _report(edge: Edge, proc: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(disk count, total of the workers' memory counts) from the CLI output, checking it names every worker."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    disk = re.search(r"^disk \(.*\): (\d+) removed$", proc.stdout, re.M)
    assert disk, proc.stdout
    memory = {int(pid): int(count) for pid, count in re.findall(r"^worker (\d+): (\d+) removed from memory$",
                                                                  proc.stdout, re.M)}
    assert sorted(memory) == sorted(edge.worker_pids()), proc.stdout
    return int(disk[1]), sum(memory.values())


def _hits(edge: Edge, host: str = "cached.example") -> dict[str, bool]:
    """Which PATHS are hits now (a miss refills the entry)."""
    return {path: cache_status(get(edge.http_port, path, host)[1]).get("hit") is True for path in PATHS}


def test_issue5_purge_by_url(two_workers, purge_origin) -> None:
    """Issue 5 "purge by URL": the URL's entry leaves the disk tier and the memory of the worker that held it (the
    CLI names both workers with their counts); the next request for it is a miss, other entries stay hits."""
    assert _report(two_workers, _purge(two_workers, "url", "http://CACHED.example/a")) == (1, 1)
    hits = _hits(two_workers)
    assert hits == {**dict.fromkeys(PATHS, True), "/a": False}
    assert purge_origin.count("/a") == 3  # filled once per site, then the miss after the purge


def test_issue5_purge_by_prefix(two_workers) -> None:
    """Issue 5 "purge by prefix": every URL under the prefix goes, of that site only."""
    assert _report(two_workers, _purge(two_workers, "prefix", "http://cached.example/blog/")) == (2, 2)
    assert _hits(two_workers) == {**dict.fromkeys(PATHS, True), "/blog/1": False, "/blog/2": False}
    assert all(_hits(two_workers, "other.example").values())


def test_issue5_purge_by_tag(two_workers) -> None:
    """Issue 5 "purge by tag (origin sends Cache-Tag)": objects whose Cache-Tag lists the tag go (tags compare
    case-insensitively, each site's copy included); ``--site`` limits a tag purge to one site."""
    assert _report(two_workers, _purge(two_workers, "tag", "b", "--site", "cached")) == (2, 2)
    assert _hits(two_workers) == {**dict.fromkeys(PATHS, True), "/t1": False, "/t2": False}
    assert all(_hits(two_workers, "other.example").values())
    disk, memory = _report(two_workers, _purge(two_workers, "tag", "C"))
    assert disk == 2 and 2 <= memory <= 4, "hits since may have copied an object into the other worker's memory"
    assert not _hits(two_workers)["/t3"] and not _hits(two_workers, "other.example")["/t3"]


def test_issue5_purge_site_and_all(two_workers) -> None:
    """Issue 5 "purge by site, everything": a site purge empties that site only; ``all`` empties every site."""
    assert _report(two_workers, _purge(two_workers, "site", "cached")) == (len(PATHS), len(PATHS))
    assert not any(_hits(two_workers).values())  # refills every entry of the site
    assert all(_hits(two_workers, "other.example").values())
    disk, memory = _report(two_workers, _purge(two_workers, "all"))
    assert disk == 2 * len(PATHS) and 2 * len(PATHS) <= memory <= 4 * len(PATHS)
    assert not any(_hits(two_workers).values()) and not any(_hits(two_workers, "other.example").values())


def test_issue5_purge_errors_are_clear(two_workers) -> None:
    """Issue 5 purge from the CLI: an unknown site, or a URL that is not http(s), is refused with a message naming
    it (and the cached sites), exit status 1, no traceback, and nothing purged."""
    for args, named in ((("site", "nosuch"), "nosuch"), (("url", "http://cached.example/a", "--site", "nosuch"),
                                                          "nosuch"), (("url", "ftp://cached.example/a"), "ftp://")):
        proc = _purge(two_workers, *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert named in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "cached, other" in _purge(two_workers, "site", "nosuch").stderr
    assert all(_hits(two_workers).values())


def test_rfc9211_2_2_miss_after_a_purge_is_a_uri_miss(make_edge, purge_origin) -> None:
    """RFC 9211 section 2.2: after a purge the URL is not stored at all, so the next request is ``fwd=uri-miss``;
    ``vary-miss`` would say a response for the URL is stored but another variant was asked for (these never vary).
    One worker, so the request after the purge meets the worker that stored the response."""
    edge = make_edge([cached_site(purge_origin)], https=[])
    _wait_for_workers(edge)
    assert "stored" in cache_status(get(edge.http_port, "/a")[1])
    _report(edge, _purge(edge, "url", "http://cached.example/a"))
    params = cache_status(get(edge.http_port, "/a")[1])
    assert params.get("fwd") == "uri-miss", params


def test_issue5_purge_url_covers_every_key_header_value(make_edge, purge_origin) -> None:
    """Issue 5 "purge by URL" with key_headers: the URL's entries for every value of the key header go."""
    edge = make_edge([cached_site(purge_origin, key_headers=["X-Device"])], https=[])
    _wait_for_workers(edge)
    for device in ("mobile", "desktop"):
        get(edge.http_port, "/a", headers={"X-Device": device})
    assert _report(edge, _purge(edge, "url", "http://cached.example/a")) == (2, 2)
    assert "hit" not in cache_status(get(edge.http_port, "/a", headers={"X-Device": "mobile"})[1])


def test_issue5_purge_url_applies_the_sites_key_options(make_edge, purge_origin) -> None:
    """Issue 5 "purge by URL" with ignore_query_params: a URL as clients request it (with a utm_source the site
    leaves out of its keys) purges the entry that answers it."""
    edge = make_edge([cached_site(purge_origin, ignore_query_params=["utm_source"])], https=[])
    _wait_for_workers(edge)
    get(edge.http_port, "/b?id=1&utm_source=mail")
    assert _report(edge, _purge(edge, "url", "http://cached.example/b?id=1&utm_source=news")) == (1, 1)
    assert "hit" not in cache_status(get(edge.http_port, "/b?id=1")[1])


def test_issue5_purge_during_a_fill_is_not_undone_by_it(make_edge) -> None:
    """Issue 5 purge: a fill that started before a purge must not be stored after it ("refuses to store fills that
    started before the purge"): the origin's answer leaves only after the CLI purged the disk tier, and arrives
    before the worker's next one-second sweep has seen the purge."""
    origin = ScriptedOrigin()
    try:
        edge = make_edge([cached_site(origin)], https=[])
        _wait_for_workers(edge)
        release = threading.Event()

        def answer(seen) -> Answer:
            release.wait(5)
            return Answer(200, [("Cache-Control", "max-age=600")], b"from before the purge")

        origin.answers["/race"] = answer
        client = threading.Thread(target=get, args=(edge.http_port, "/race"))
        client.start()
        wait_for(lambda: origin.count("/race") == 1, 5, what="the fill to reach the origin")
        with subprocess.Popen([sys.executable, "-m", "tlsedge", "purge", "url", "http://cached.example/race", "-c",
                               str(edge.config_path)], stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("disk ")  # printed once the disk tier is purged
            release.set()
            client.join(5)
            output = proc.communicate(timeout=10)[0]
        assert proc.returncode == 0, output
        origin.answers["/race"] = Answer(200, [("Cache-Control", "max-age=600")], b"after the purge")
        _, headers, body = get(edge.http_port, "/race")
        assert body == b"after the purge", headers
    finally:
        origin.close()


def test_issue5_purge_while_a_fill_streams(make_edge) -> None:
    """Issue 5 purge: a purge that reaches the worker while a matching response is still streaming in stops it
    from being stored; the client reading it still gets the whole body."""
    origin = TricklingOrigin(piece=16 * 1024, interval=0.02)
    try:
        edge = make_edge([cached_site(origin)], https=[])
        _wait_for_workers(edge)
        body = body_for("/stream", 2 * 1024 * 1024)
        origin.answers["/stream"] = Answer(200, [("Cache-Control", "max-age=600")], body)
        got: list[Result] = []
        client = threading.Thread(target=lambda: got.append(get(edge.http_port, "/stream", timeout=20)))
        client.start()
        wait_for(lambda: origin.count("/stream") == 1, 5, what="the fill to reach the origin")
        proc = _purge(edge, "url", "http://cached.example/stream")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client.join(20)
        assert got and got[0][2] == body
        _, headers, again = get(edge.http_port, "/stream", timeout=20)
        assert again == body and "hit" not in cache_status(headers), headers
        assert origin.count("/stream") == 2
    finally:
        origin.close()


# --- sharing --------------------------------------------------------------------------------------------------


def test_issue5_workers_share_the_disk_tier(make_edge) -> None:
    """Issue 5 "workers share the disk tier": with two workers, an object one worker filled is a hit for requests
    the other serves: over 20 fresh connections the origin is asked once, and afterwards both workers hold it in
    memory (each one's purge count is 1)."""
    origin = ScriptedOrigin()
    try:
        edge = make_edge([cached_site(origin)], https=[], workers=2)
        _wait_for_workers(edge)
        body = body_for("/shared", 20_000)
        origin.answers["/shared"] = Answer(200, [("Cache-Control", "max-age=600")], body)
        assert get(edge.http_port, "/shared")[2] == body
        # Fresh connections go to whichever worker accepts first, so on a busy machine one worker may take them all:
        # keep asking (in rounds) until the access log shows both workers' request ids (a prefix per worker).
        for _ in range(15):
            for _ in range(20):
                _, headers, got = get(edge.http_port, "/shared")
                assert got == body and cache_status(headers).get("hit") is True, headers
            time.sleep(0.6)  # the access log is flushed by the worker's sweep
            served_by = {e["request_id"][:6] for e in edge.access_entries() if e.get("path") == "/shared"}
            if len(served_by) == 2:
                break
        assert len(served_by) == 2, "every request went to one worker"
        assert origin.count("/shared") == 1
        proc = _purge(edge, "url", "http://cached.example/shared")
        assert re.findall(r"^worker \d+: (\d+) removed from memory$", proc.stdout, re.M) == ["1", "1"], proc.stdout
    finally:
        origin.close()
