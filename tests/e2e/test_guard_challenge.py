"""The proof-of-work challenge (issue 6) through a running ``tlsedge serve`` with two workers, from Python clients.

Each client connection is fresh, so either worker may answer any request; clients bind their source address
(127.0.0.x versus 127.0.1.x) to act as visitors on two different /24 networks. The challenge is read out of the page,
solved with tests/guard/pow_solver.py and answered like the page's script would.

Sites (in front of one origin that answers every path with a page naming it, except ng):
  alpha  always, https + http, /public/ exempt, X-Api-Key bypass, no-JavaScript wait of 2 s
  beta   always, 127.0.4.0/24 on its allow list (its cookies must not open alpha)
  shorty always, cookies live 2 s
  sus    suspicious: 127.0.3.0/24 (and the edge-wide [ip_rules] challenge, 127.0.6.9) is challenged, and a rate
         limit on /rl/ whose action is "challenge"
  open   mode off, and a rate limit on /rl-off/ whose action is "challenge"
  ng     always, /public/ exempt, in front of a real nginx (which resolves dot-segments)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cache_support import ScriptedOrigin
from challenge_support import (
    NOSCRIPT_PATH,
    PASS_COOKIE,
    challenge_site,
    cookie_attributes,
    cookie_for,
    decisions,
    entries_for_paths,
    every_path_origin,
    fetch,
    is_challenge,
    origin_body,
    pass_cookie,
    query_of,
    read_challenge,
    seen_paths,
    solve_from,
    wait_current_key,
    wait_link,
    worker_of,
)
from e2e_support import Edge

from tlsedge.guard.challenge.pow import ticket_not_before
from tlsedge.guard.signing import rotate
from tlsedge.store import open_store

ALPHA, BETA, SHORTY, SUS, OPEN = "alpha.example", "beta.example", "shorty.example", "sus.example", "open.example"
TOKEN_ENV = "TLSEDGE_E2E_CHALLENGE_BYPASS"
API_TOKEN = "e2e-bypass-token-0123456789abcdef"
HERE = "127.0.0.5"  # the visitor
NEIGHBOUR = "127.0.0.77"  # the same /24
ELSEWHERE = "127.0.1.5"  # another /24
SUSPICIOUS = "127.0.3.9"  # in sus's [site.ip_rules] challenge
EDGE_WIDE_SUSPICIOUS = "127.0.6.9"  # in the edge-wide [ip_rules] challenge


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedOrigin]:
    served = every_path_origin()
    yield served
    served.close()


def _edge(tmp: Path, sites: list[dict], pki, **server: object) -> Iterator[Edge]:
    with pytest.MonkeyPatch.context() as env:  # the bypass token is read from the edge's environment
        env.setenv(TOKEN_ENV, API_TOKEN)
        started = Edge(tmp, sites, pki.ca_pem, workers=2, **server)
        started.write_config(started.config_text() + f'\n[ip_rules]\nchallenge = ["{EDGE_WIDE_SUSPICIOUS}/32"]\n')
        started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki, origin: ScriptedOrigin, nginx_origin) -> Iterator[Edge]:
    nginx = {"origins": [f"http://127.0.0.1:{nginx_origin.plain_port}"]}
    sites = [
        challenge_site("alpha", origin, pki.good(ALPHA), mode="always", difficulty=8, exempt_paths=["/public/"],
                       noscript_delay="2s", bypass=[{"header": "X-Api-Key", "token_env": TOKEN_ENV}]),
        challenge_site("beta", origin, mode="always", difficulty=8, site={"ip_rules": {"allow": ["127.0.4.0/24"]}}),
        challenge_site("shorty", origin, mode="always", difficulty=8, cookie_ttl="2s"),
        challenge_site("sus", origin, mode="suspicious", difficulty=8, site={
            "ip_rules": {"challenge": ["127.0.3.0/24"]},
            "rate_limit": [{"name": "burst", "key": "ip", "rate": "3/m", "burst": 3, "path_prefix": "/rl/",
                            "action": "challenge"}],
        }),
        challenge_site("open", origin, mode="off", site={
            "rate_limit": [{"name": "slow", "rate": "1/m", "burst": 1, "path_prefix": "/rl-off/",
                            "action": "challenge"}],
        }),
        {**challenge_site("ng", origin, mode="always", exempt_paths=["/public/"]), **nginx},
    ]
    yield from _edge(tmp_path_factory.mktemp("challenge-edge"), sites, pki)


def _passes(edge: Edge, origin: ScriptedOrigin, host: str, path: str, **kw) -> None:
    """The request reaches the origin and its page comes back."""
    response = fetch(edge, host, path, **kw)
    assert response.status == 200 and response.body == origin_body(path), (response.status, response.body[:300])


def _challenged(edge: Edge, host: str, path: str, **kw) -> None:
    response = fetch(edge, host, path, **kw)
    assert is_challenge(response), (response.status, response.body[:300])
    assert decisions(edge, response) == ["challenge"]


# ---------------------------------------------------------------------------------------------------------- the flow


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_solve_verify_then_origin_with_cookie(edge: Edge, origin: ScriptedOrigin, tls: bool) -> None:
    prefix = f"/flow-{int(tls)}/"
    page = fetch(edge, ALPHA, prefix + "doc?a=1&b=%2F", source=HERE, tls=tls)
    challenge = read_challenge(page)
    assert challenge.difficulty == 8
    assert page.header("cache-control") == "no-store"
    assert page.header("content-security-policy").startswith("default-src 'none'")
    assert query_of(challenge.verify)["return"] == prefix + "doc?a=1&b=%2F"

    verified = fetch(edge, ALPHA, challenge.answer(), source=HERE, tls=tls)
    assert verified.status == 303
    assert verified.header("location") == prefix + "doc?a=1&b=%2F"
    attributes = cookie_attributes(verified)
    assert {"Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=3600"} <= attributes
    assert ("Secure" in attributes) == tls
    assert seen_paths(origin, prefix) == []  # nothing reached the origin before the cookie

    cookie = f"{PASS_COOKIE}={pass_cookie(verified)}"
    _passes(edge, origin, ALPHA, prefix + "doc?a=1&b=%2F", source=HERE, cookie=cookie, tls=tls)
    _passes(edge, origin, ALPHA, prefix + "next", source=NEIGHBOUR, cookie=cookie, tls=tls)  # same /24
    seen = seen_paths(origin, prefix)
    assert [s.target for s in seen] == [prefix + "doc?a=1&b=%2F", prefix + "next"]
    assert all(s.headers.get("cookie") == cookie for s in seen)
    assert decisions(edge, page, verified) == ["challenge", "challenge-passed"]


def test_replayed_answer_is_rejected(edge: Edge, origin: ScriptedOrigin) -> None:
    challenge, first = solve_from(edge, ALPHA, "/replay/x", source=HERE)
    assert first.status == 303
    again = fetch(edge, ALPHA, challenge.answer(), source=HERE)
    assert is_challenge(again) and not again.all("set-cookie")
    assert read_challenge(again).token != challenge.token  # a fresh challenge to solve instead
    assert decisions(edge, first, again) == ["challenge-passed", "challenge-failed"]


def test_insufficient_work_is_rejected_and_does_not_spend_the_challenge(edge: Edge) -> None:
    challenge = read_challenge(fetch(edge, ALPHA, "/work/x", source=HERE))
    lazy = fetch(edge, ALPHA, challenge.answer(challenge.wrong_nonce()), source=HERE)
    assert is_challenge(lazy) and not lazy.all("set-cookie")
    honest = fetch(edge, ALPHA, challenge.answer(), source=HERE)
    assert honest.status == 303 and pass_cookie(honest)
    assert decisions(edge, lazy, honest) == ["challenge-failed", "challenge-passed"]


@pytest.mark.parametrize("tamper", [
    lambda c: c.answer("").replace("&nonce=", ""),  # no nonce
    lambda c: c.answer("%21%21"),  # "!!": not a nonce
    lambda c: c.answer("0").replace(c.token[-8:], "AAAAAAAA"),  # forged token
    lambda c: c.answer().replace(c.token, c.token.partition(".")[2]),  # token without its key id
], ids=["no-nonce", "bad-nonce", "forged-token", "no-kid"])
def test_malformed_answers_are_rejected(edge: Edge, tamper: Callable) -> None:
    challenge = read_challenge(fetch(edge, ALPHA, "/malformed/x", source=HERE))
    response = fetch(edge, ALPHA, tamper(challenge), source=HERE)
    assert is_challenge(response) and not response.all("set-cookie")
    assert decisions(edge, response) == ["challenge-failed"]


def test_return_path_stays_on_the_site(edge: Edge) -> None:
    challenge = read_challenge(fetch(edge, ALPHA, "/ret/x", source=HERE))
    target = challenge.answer().replace("return=/ret/x", "return=//evil.example/x")
    response = fetch(edge, ALPHA, target, source=HERE)
    assert response.status == 303 and response.header("location") == "/"


def test_token_from_another_network_is_rejected_but_not_spent(edge: Edge) -> None:
    challenge = read_challenge(fetch(edge, ALPHA, "/stolen/x", source=HERE))
    stolen = fetch(edge, ALPHA, challenge.answer(), source=ELSEWHERE)
    assert is_challenge(stolen) and not stolen.all("set-cookie")
    own = fetch(edge, ALPHA, challenge.answer(), source=HERE)  # a thief cannot burn the visitor's answer
    assert own.status == 303
    assert decisions(edge, stolen, own) == ["challenge-failed", "challenge-passed"]


def test_cookie_from_another_network_is_challenged(edge: Edge, origin: ScriptedOrigin) -> None:
    cookie = f"{PASS_COOKIE}={cookie_for(edge, ALPHA, source=HERE)}"
    _challenged(edge, ALPHA, "/moved/x", source=ELSEWHERE, cookie=cookie)
    _passes(edge, origin, ALPHA, "/moved/y", source=HERE, cookie=cookie)
    assert [s.target for s in seen_paths(origin, "/moved/")] == ["/moved/y"]


# ---------------------------------------------------------------------------------------------------------- forgeries


def _field(cookie: str, index: int, value: str) -> str:
    parts = cookie.split(".")
    parts[index] = value
    return ".".join(parts)


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


FORGERIES: dict[str, Callable[[str, str], str]] = {
    "mac": lambda own, _: _field(own, 4, _flip(own.split(".")[4])),
    "expiry": lambda own, _: _field(own, 2, str(int(own.split(".")[2]) + 86400)),
    "network-tag": lambda own, _: _field(own, 3, _flip(own.split(".")[3])),
    "unknown-key": lambda own, _: _field(own, 1, "zzzzzz"),
    "other-site": lambda _, other: other,
    "truncated": lambda own, _: own[:-6],
    "garbage": lambda *_: "v1.%%%.!!.@@.##",
    "not-ascii": lambda own, _: own[:-1] + "\u00e9",
    "oversized": lambda own, _: own + "A" * 4000,
    "empty": lambda *_: "",
}


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_cookie_is_challenged(edge: Edge, origin: ScriptedOrigin, kind: str) -> None:
    own = cookie_for(edge, ALPHA, source=HERE)
    other = cookie_for(edge, BETA, source=HERE)
    forged = FORGERIES[kind](own, other)
    assert forged != own
    prefix = f"/forged-{kind}/"
    response = fetch(edge, ALPHA, prefix + "x", source=HERE,
                     headers=[("Cookie", f"{PASS_COOKIE}={forged}".encode().decode("latin-1"))])  # UTF-8 on the wire
    assert is_challenge(response), (response.status, response.body[:200])
    assert decisions(edge, response) == ["challenge"]
    _passes(edge, origin, ALPHA, prefix + "genuine", source=HERE, cookie=f"{PASS_COOKIE}={own}")
    assert [s.target for s in seen_paths(origin, prefix)] == [prefix + "genuine"]


def test_expired_cookie_is_challenged(edge: Edge, origin: ScriptedOrigin) -> None:
    value = cookie_for(edge, SHORTY, source=HERE)
    cookie = f"{PASS_COOKIE}={value}"
    _passes(edge, origin, SHORTY, "/short/fresh", source=HERE, cookie=cookie)
    expiry = int(value.split(".")[2])
    assert expiry - time.time() <= 2.5
    time.sleep(max(0.0, expiry - time.time()) + 0.2)
    _challenged(edge, SHORTY, "/short/stale", source=HERE, cookie=cookie)
    assert [s.target for s in seen_paths(origin, "/short/")] == ["/short/fresh"]


# ---------------------------------------------------------------------------------------------------------- modes


def test_mode_off_passes(edge: Edge, origin: ScriptedOrigin) -> None:
    for n in range(3):
        _passes(edge, origin, OPEN, f"/off/{n}", source=SUSPICIOUS)
    assert [e.get("guard") for e in entries_for_paths(edge, ["/off/0"])] == [None]
    # A rate limit whose action is "challenge" still challenges with mode = "off" (documented), and can be solved.
    _passes(edge, origin, OPEN, "/rl-off/0", source=SUSPICIOUS)
    _, verified = solve_from(edge, OPEN, "/rl-off/1", source=SUSPICIOUS)
    assert verified.status == 303
    _passes(edge, origin, OPEN, "/rl-off/1", source=SUSPICIOUS, cookie=f"{PASS_COOKIE}={pass_cookie(verified)}")


def test_allow_list_skips_the_challenge(edge: Edge, origin: ScriptedOrigin) -> None:
    _passes(edge, origin, BETA, "/allowed/x", source="127.0.4.20")
    _challenged(edge, BETA, "/allowed/y", source="127.0.5.20")


def test_suspicious_mode_challenges_listed_addresses_only(edge: Edge, origin: ScriptedOrigin) -> None:
    _passes(edge, origin, SUS, "/sus/plain", source=HERE)
    _passes(edge, origin, SUS, "/sus/neighbour", source="127.0.6.10")  # the edge-wide entry is one address
    _challenged(edge, SUS, "/sus/edge-wide", source=EDGE_WIDE_SUSPICIOUS)
    _challenged(edge, SUS, "/sus/listed", source=SUSPICIOUS)
    cookie = f"{PASS_COOKIE}={cookie_for(edge, SUS, '/sus/listed', source=SUSPICIOUS)}"
    _passes(edge, origin, SUS, "/sus/listed", source=SUSPICIOUS, cookie=cookie)
    assert [s.target for s in seen_paths(origin, "/sus/")] == ["/sus/plain", "/sus/neighbour", "/sus/listed"]
    _passes(edge, origin, OPEN, "/sus-off/x", source=EDGE_WIDE_SUSPICIOUS)  # a site with mode = "off" does not


def test_rate_limit_with_challenge_action(edge: Edge, origin: ScriptedOrigin) -> None:
    client = "127.0.2.1"  # rate counters are per address: this test's own
    for n in range(3):  # burst = 3
        _passes(edge, origin, SUS, f"/rl/{n}", source=client)
    over = fetch(edge, SUS, "/rl/3", source=client)
    challenge = read_challenge(over)
    assert fetch(edge, SUS, "/rl/4", source="127.0.2.2").status == 200  # another client has its own budget
    verified = fetch(edge, SUS, challenge.answer(), source=client)
    assert verified.status == 303 and verified.header("location") == "/rl/3"
    cookie = f"{PASS_COOKIE}={pass_cookie(verified)}"
    for n in range(5, 8):  # still over the rate, but solved: the rule's challenge lets it through
        _passes(edge, origin, SUS, f"/rl/{n}", source=client, cookie=cookie)
    _challenged(edge, SUS, "/rl/8", source=client)  # without the cookie: challenged again
    assert decisions(edge, over, verified) == ["challenge", "challenge-passed"]
    assert {s.target for s in seen_paths(origin, "/rl/")} == {"/rl/0", "/rl/1", "/rl/2", "/rl/4", "/rl/5", "/rl/6",
                                                              "/rl/7"}


def test_always_challenges_everybody(edge: Edge) -> None:
    for source in (HERE, ELSEWHERE, SUSPICIOUS, "127.0.0.2"):
        assert is_challenge(fetch(edge, BETA, "/everybody", source=source))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_exempt_and_acme_paths_are_never_challenged(edge: Edge, origin: ScriptedOrigin, tls: bool) -> None:
    # //public/ and /%70ublic/ are /public/ to an origin (merged slashes, decoded unreserved escapes)
    for path in ("/public/a.css", "/public/deep/b?c=d", "/.well-known/acme-challenge/token-123", "//public/a.css",
                 "/%70ublic/a.css"):
        _passes(edge, origin, ALPHA, path, source=ELSEWHERE, tls=tls)
    for path in ("/publicity", "/Public/a.css", "/.well-known/other", "/public%2F..%2Fsecret", "/public/../secret"):
        assert is_challenge(fetch(edge, ALPHA, path, source=ELSEWHERE, tls=tls)), path
    assert not any("secret" in s.target or "publicity" in s.target for s in origin.seen)


@pytest.mark.parametrize("path", [
    "/.well-known/acme-challenge/../../index.html",
    "/.well-known/acme-challenge/%2e%2e/%2E%2E/index.html",
    "/.well-known/acme-challenge/..%2f..%2findex.html",
    "/.well-known/acme-challenge/..%5C..%5Cindex.html",
    "/public/../index.html",
    "/public/./../index.html",
    "/public/..;/index.html",
])
def test_dot_segments_do_not_walk_out_of_exempt_paths(edge: Edge, path: str) -> None:
    """nginx resolves these to /index.html: the guard must see the same path, not the exempt prefix."""
    assert is_challenge(fetch(edge, "ng.example", "/index.html", source=ELSEWHERE))  # the page is protected
    response = fetch(edge, "ng.example", path, source=ELSEWHERE)
    assert b"nginx origin ok" not in response.body
    assert response.status in (400, 403), (path, response.status)


def test_api_bypass_header(edge: Edge, origin: ScriptedOrigin) -> None:
    _passes(edge, origin, ALPHA, "/api/1", source=ELSEWHERE, headers=[("X-Api-Key", API_TOKEN)])
    _passes(edge, origin, ALPHA, "/api/2", source=ELSEWHERE, headers=[("x-api-key", f"  {API_TOKEN} ")])
    for wrong in (API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(), ""):
        assert is_challenge(fetch(edge, ALPHA, "/api/wrong", source=ELSEWHERE, headers=[("X-Api-Key", wrong)]))
    assert is_challenge(fetch(edge, ALPHA, "/api/other-header", source=ELSEWHERE,
                              headers=[("X-Api-Token", API_TOKEN)]))
    assert is_challenge(fetch(edge, BETA, "/api/other-site", source=ELSEWHERE, headers=[("X-Api-Key", API_TOKEN)]))
    assert [s.target for s in seen_paths(origin, "/api/")] == ["/api/1", "/api/2"]
    assert seen_paths(origin, "/api/1")[0].headers["x-api-key"] == API_TOKEN  # forwarded untouched


def test_head_and_post_of_a_challenged_client(edge: Edge, origin: ScriptedOrigin) -> None:
    head = fetch(edge, ALPHA, "/hp/page", source=ELSEWHERE, method="HEAD")
    assert head.status == 403 and head.body == b"" and int(head.header("content-length")) > 1000
    post = fetch(edge, ALPHA, "/hp/form", source=ELSEWHERE, method="POST", body=b"card=4111111111111111")
    assert is_challenge(post)
    big = fetch(edge, ALPHA, "/hp/upload", source=ELSEWHERE, method="POST", body=b"x" * 65536)
    assert is_challenge(big)
    waiting = fetch(edge, ALPHA, "/hp/expect", source=ELSEWHERE, method="POST",
                    headers=[("Content-Length", "10"), ("Expect", "100-continue")])
    assert is_challenge(waiting) and waiting.interim == []  # answered at once, no 100 Continue asked the body
    chunked = fetch(edge, ALPHA, "/hp/chunked", source=ELSEWHERE, method="POST",
                    headers=[("Transfer-Encoding", "chunked")], body=b"5\r\nhello\r\n0\r\n\r\n")
    assert is_challenge(chunked)
    assert seen_paths(origin, "/hp/") == []
    assert decisions(edge, head, post, big, waiting, chunked) == ["challenge"] * 5


# ---------------------------------------------------------------------------------------------------- no JavaScript


def _wait_ticket(edge: Edge, path: str) -> tuple[str, int]:
    challenge = read_challenge(fetch(edge, ALPHA, path, source=HERE))
    waiting = fetch(edge, ALPHA, challenge.noscript, source=HERE)
    assert waiting.status == 403 and b"<h1>Please wait 2 seconds</h1>" in waiting.body
    assert b'<meta http-equiv="refresh" content="2;url=' in waiting.body
    link = wait_link(waiting)
    assert link.startswith("/.tlsedge/challenge/wait?") and query_of(link)["return"] == path
    not_before = ticket_not_before(query_of(link)["ticket"])
    assert not_before is not None
    return link, not_before


def test_noscript_wait_then_cookie(edge: Edge, origin: ScriptedOrigin) -> None:
    assert read_challenge(fetch(edge, ALPHA, "/ns/page", source=HERE)).noscript == NOSCRIPT_PATH + "?return=/ns/page"
    link, not_before = _wait_ticket(edge, "/ns/page")
    early = fetch(edge, ALPHA, link, source=HERE)
    assert early.status == 403 and b"Please wait" in early.body and not early.all("set-cookie")
    stolen = fetch(edge, ALPHA, link, source=ELSEWHERE)
    assert is_challenge(stolen)
    time.sleep(max(0.0, not_before - time.time()) + 0.1)
    passed = fetch(edge, ALPHA, link, source=HERE)
    assert passed.status == 303 and passed.header("location") == "/ns/page"
    replayed = fetch(edge, ALPHA, link, source=HERE)
    assert is_challenge(replayed)
    _passes(edge, origin, ALPHA, "/ns/page", source=HERE, cookie=f"{PASS_COOKIE}={pass_cookie(passed)}")
    assert decisions(edge, early, stolen, passed, replayed) == [
        "challenge-wait", "challenge-failed", "challenge-passed", "challenge-failed"]


def test_noscript_ticket_is_ripe_when_the_page_refreshes(edge: Edge) -> None:
    challenge = read_challenge(fetch(edge, ALPHA, "/ns/ripe", source=HERE))
    time.sleep((1.1 - time.time() % 1.0) % 1.0)  # just after a whole second: the rounding, not luck, decides
    start = time.time()
    waiting = fetch(edge, ALPHA, challenge.noscript, source=HERE)
    refresh = re.search(rb'<meta http-equiv="refresh" content="(\d+);url=', waiting.body)
    assert refresh is not None
    due = start + int(refresh.group(1))
    time.sleep(max(0.0, due + 0.05 - time.time()))  # what the browser does
    response = fetch(edge, ALPHA, wait_link(waiting), source=HERE)
    if time.time() > due + 0.8:  # so late that a rounded-up ticket would be ripe too: this run proves nothing
        pytest.skip("the machine was too slow to tell")
    assert response.status == 303, (response.status, response.body[:120])


# ---------------------------------------------------------------------------------------------------------- workers


def test_answers_and_replays_across_workers(edge: Edge) -> None:
    crossed = None
    for _ in range(40):
        page = fetch(edge, ALPHA, "/cross/x", source=HERE)
        challenge = read_challenge(page)
        verified = fetch(edge, ALPHA, challenge.answer(), source=HERE)
        assert verified.status == 303, (worker_of(page), worker_of(verified))
        if worker_of(page) != worker_of(verified):
            crossed = challenge
            break
    assert crossed is not None, "every verify was answered by the worker that issued the page"
    rejected_by = set()
    for _ in range(40):  # the token was spent on one worker: every worker refuses it now
        replay = fetch(edge, ALPHA, crossed.answer(), source=HERE)
        assert is_challenge(replay) and not replay.all("set-cookie")
        rejected_by.add(worker_of(replay))
        if len(rejected_by) == 2:
            break
    assert len(rejected_by) == 2, "the replay never reached the other worker"


def test_cookie_accepted_by_every_worker(edge: Edge, origin: ScriptedOrigin) -> None:
    cookie = f"{PASS_COOKIE}={cookie_for(edge, ALPHA, source=HERE)}"
    workers: set[str] = set()
    for batch in range(4):  # the workers share one accept queue: batches until both have answered some
        paths = [f"/everyworker/{batch}-{n}" for n in range(16)]
        for path in paths:
            _passes(edge, origin, ALPHA, path, source=HERE, cookie=cookie)
        workers |= {entry["request_id"][:6] for entry in entries_for_paths(edge, paths)}
        if len(workers) == 2:
            break
    assert len(workers) == 2, workers


# ---------------------------------------------------------------------------------------------------------- keys


@pytest.fixture
def rotation_edge(tmp_path: Path, pki, origin: ScriptedOrigin) -> Iterator[Edge]:
    """An edge of its own: rotating the signing keys invalidates cookies on every site of an edge."""
    yield from _edge(tmp_path / "rotation", [challenge_site("rot", origin, mode="always", difficulty=8)], pki,
                     https=[])


def test_cookies_survive_one_rotation_and_die_with_their_key(rotation_edge: Edge, origin: ScriptedOrigin) -> None:
    edge, host = rotation_edge, "rot.example"
    store = open_store(Path(edge.server["state_dir"]))
    first = cookie_for(edge, host, source=HERE)
    first_kid = first.split(".")[1]

    second_kid = rotate(store, keep=2).current
    wait_current_key(edge, host, second_kid, workers=2)
    for n in range(4):
        _passes(edge, origin, host, f"/rot/a{n}", source=HERE, cookie=f"{PASS_COOKIE}={first}")
    second = cookie_for(edge, host, source=HERE)
    assert second.split(".")[1] == second_kid != first_kid

    third_kid = rotate(store, keep=2).current  # keeps the new key and the second one: the first key is dropped
    wait_current_key(edge, host, third_kid, workers=2)
    for n in range(4):
        _challenged(edge, host, f"/rot/b{n}", source=HERE, cookie=f"{PASS_COOKIE}={first}")
        _passes(edge, origin, host, f"/rot/c{n}", source=HERE, cookie=f"{PASS_COOKIE}={second}")

    fourth_kid = rotate(store, keep=1).current  # keep=1: every cookie handed out so far dies
    wait_current_key(edge, host, fourth_kid, workers=2)
    _challenged(edge, host, "/rot/d", source=HERE, cookie=f"{PASS_COOKIE}={second}")
    assert not [s for s in seen_paths(origin, "/rot/") if s.target.startswith(("/rot/b", "/rot/d"))]
