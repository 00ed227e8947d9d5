"""The challenge pages: the page's own JavaScript SHA-256 and nonce search checked against Python in node, the whole
flow in real headless Chromium (with the page's CSP), the no-JavaScript wait page, and the HTML's safety."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pow_solver import solve

from tlsedge.guard.challenge.cookies import (
    CHALLENGE_COOKIE,
    CHALLENGE_PURPOSE,
    find_cookie,
    issue_cookie,
    set_cookie_value,
    verify_cookie,
)
from tlsedge.guard.challenge.page import (
    CHALLENGE_STATUS,
    PAGE_CSP,
    SCRIPT,
    challenge_page,
    parse_query,
    password_page,
    safe_return_path,
    wait_page,
)
from tlsedge.guard.challenge.pow import (
    issue_challenge,
    issue_wait_ticket,
    verify_solution,
    verify_wait_ticket,
)
from tlsedge.guard.signing import SigningKeys

NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium")
KEYS = SigningKeys.generate()
NOW = 1_800_000_000.0


def _page_script(page: bytes) -> str:
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1
    return scripts[0].decode()


def _node(script: str, harness: str) -> dict:
    done = subprocess.run([NODE, "-e", script + "\n" + harness], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_sha256_matches_python() -> None:
    page = challenge_page(issue_challenge(KEYS, "blog", "192.0.2.1", 8, 60, NOW), "/", "/v", "/n")
    messages = [b"", b"abc", bytes(range(256)) * 4, b"x" * 1000]
    messages += [b"a" * n for n in (1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 191, 192, 4097)]
    harness = "var inputs = " + json.dumps([message.hex() for message in messages]) + """, out = [];
    inputs.forEach(function (hex) {
      var bytes = new Uint8Array(Buffer.from(hex, "hex"));
      out.push(Buffer.from(tlsedgePow.sha256(bytes)).toString("hex"));
    });
    out.push(Buffer.from(tlsedgePow.sha256("abc")).toString("hex"));
    console.log(JSON.stringify({digests: out}));
    """
    digests = _node(_page_script(page), harness)["digests"]
    assert digests[:-1] == [hashlib.sha256(message).hexdigest() for message in messages]
    assert digests[1] == digests[-1] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_nonce_search_finds_what_python_accepts() -> None:
    challenge = issue_challenge(KEYS, "blog", "192.0.2.1", 12, 60, NOW)
    page = challenge_page(challenge, "/", "/v", "/n")
    # Real tokens, and synthetic ones of every length around the block boundaries (whole blocks precomputed,
    # nonce spilling into a second block).
    tokens = [challenge.token] + ["t" * n for n in range(0, 140, 3)]
    harness = "var tokens = " + json.dumps(tokens) + """, found = [];
    tokens.forEach(function (token, i) {
      var search = new tlsedgePow.Search(token, i === 0 ? 12 : 5), nonce = null;
      while (nonce === null) nonce = search.run(5000);
      found.push(nonce);
    });
    console.log(JSON.stringify({found: found}));
    """
    found = _node(_page_script(page), harness)["found"]
    seen: set[bytes] = set()
    first_use = lambda challenge_id, _expires: challenge_id not in seen and not seen.add(challenge_id)  # noqa: E731
    assert verify_solution(KEYS, "blog", "192.0.2.1", challenge.token, found[0], NOW + 1, first_use).ok
    assert found == [solve(challenge.token, 12)] + [solve(token, 5) for token in tokens[1:]]


class _Site:
    """A tiny origin that does what the lead's data plane does with these modules, over real HTTP."""

    def __init__(self, difficulty: int) -> None:
        self.difficulty = difficulty
        self.seen: set[bytes] = set()
        self.log: list[tuple[str, str]] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                site.handle(self, path, parse_query(query))

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_use(self, challenge_id: bytes, _expires: float) -> bool:
        if challenge_id in self.seen:
            return False
        self.seen.add(challenge_id)
        return True

    def handle(self, request: http.server.BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        client, now = request.client_address[0], time.time()
        if path == "/favicon.ico":  # the browser asks on its own; not part of the flow
            return self.send(request, 404, b"", {})
        if path == "/verify":
            check = verify_solution(KEYS, "blog", client, query.get("token", ""), query.get("nonce", ""), now,
                                    self.first_use)
            self.log.append((path, check.reason))
            return self.passed(request, query) if check.ok else self.send(request, 403, b"refused", {})
        if path == "/wait-verify":
            check = verify_wait_ticket(KEYS, "blog", client, query.get("ticket", ""), now, self.first_use)
            self.log.append((path, check.reason))
            return self.passed(request, query) if check.ok else self.send(request, 403, b"refused", {})
        if path == "/nojs":
            # Issued "two seconds ago", so the browser's one-second refresh finds it ripe whatever its clock does.
            ticket = issue_wait_ticket(KEYS, "blog", client, 1, now - 2)
            return self.send(request, CHALLENGE_STATUS, wait_page(ticket.token, 1, "/wait-verify",
                                                                  query.get("return", "/")), {})
        if path == "/start-nojs":  # what a visitor without JavaScript does: follow the page's <noscript> link
            return self.send(request, 303, b"", {"Location": "/nojs?return=/private"})
        headers = [(name.encode(), value.encode()) for name, value in request.headers.items()]
        cookie = find_cookie(headers, CHALLENGE_COOKIE)
        if cookie and verify_cookie(KEYS, "blog", CHALLENGE_PURPOSE, client, cookie, now).ok:
            self.log.append((path, "origin"))
            return self.send(request, 200, f"<html><body><p id=origin>welcome to {path}</p></body></html>".encode(),
                             {})
        challenge = issue_challenge(KEYS, "blog", client, self.difficulty, 60, now)
        page = challenge_page(challenge, request.path, "/verify", "/nojs")
        self.log.append((path, "challenged"))
        return self.send(request, CHALLENGE_STATUS, page, {"Content-Security-Policy": PAGE_CSP.decode()})

    def passed(self, request: http.server.BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        cookie = issue_cookie(KEYS, "blog", CHALLENGE_PURPOSE, request.client_address[0], 3600, time.time())
        self.send(request, 303, b"", {"Location": safe_return_path(query.get("return", "")),
                                      "Set-Cookie": set_cookie_value(CHALLENGE_COOKIE, cookie, 3600,
                                                                     secure=False).decode()})

    @staticmethod
    def send(request: http.server.BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        request.send_response(status)
        for name, value in {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                            "Content-Length": str(len(body)), **headers}.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def site() -> Iterator[_Site]:
    served = _Site(difficulty=14)
    yield served
    served.server.shutdown()
    served.server.server_close()


def _chromium(url: str, profile: Path) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_chromium_solves_the_page_and_reaches_the_origin(site: _Site, tmp_path: Path) -> None:
    dom = _chromium(f"{site.url}/private?a=1&b=%2F", tmp_path / "profile")
    assert "welcome to /private" in dom
    assert site.log == [("/private", "challenged"), ("/verify", "ok"), ("/private", "origin")]
    assert len(site.seen) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_chromium_follows_the_wait_page_without_running_script(site: _Site, tmp_path: Path) -> None:
    dom = _chromium(f"{site.url}/start-nojs", tmp_path / "profile")
    assert "welcome to /private" in dom
    assert site.log == [("/wait-verify", "ok"), ("/private", "origin")]


def test_challenge_page_content() -> None:
    challenge = issue_challenge(KEYS, "blog", "192.0.2.1", 16, 60, NOW)
    page = challenge_page(challenge, "/docs/a?b=1&c=2", "/.tlsedge/verify", "/.tlsedge/nojs")
    text = page.decode()
    assert text.startswith("<!DOCTYPE html>") and '<html lang="en">' in text and "<title>" in text
    assert 'role="status"' in text and 'aria-live="polite"' in text and "<noscript>" in text
    assert 'href="/.tlsedge/nojs?return=/docs/a%3Fb%3D1%26c%3D2"' in text
    assert f'data-token="{challenge.token}"' in text and 'data-difficulty="16"' in text
    url = re.search(r'data-url="([^"]*)"', text)
    assert url is not None
    split = urlsplit(url.group(1).replace("&amp;", "&") + "12345")
    assert split.path == "/.tlsedge/verify"
    assert parse_query(split.query) == {"token": challenge.token, "return": "/docs/a?b=1&c=2", "nonce": "12345"}
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and "<img" not in text and "@import" not in text
    assert len(page) < 12_000


def test_csp_allows_exactly_the_inline_script_and_style() -> None:
    page = challenge_page(issue_challenge(KEYS, "blog", "192.0.2.1", 8, 60, NOW), "/", "/v", "/n")
    script = _page_script(page)
    style = re.search(rb"<style>(.*?)</style>", page, re.S)
    assert script == SCRIPT and style is not None

    def digest(data: bytes) -> bytes:
        return b"'sha256-" + base64.b64encode(hashlib.sha256(data).digest()) + b"'"

    assert b"script-src " + digest(script.encode()) + b";" in PAGE_CSP
    assert b"style-src " + digest(style.group(1)) + b";" in PAGE_CSP
    assert PAGE_CSP.startswith(b"default-src 'none';")


def test_hostile_values_are_escaped() -> None:
    hostile = '/"><script>alert(1)</script>'
    assert safe_return_path(hostile) == hostile  # a path, just a strange one: escaping is what makes it harmless
    page = challenge_page(issue_challenge(KEYS, "blog", "192.0.2.1", 8, 60, NOW), hostile, '/v"x', "/n'<")
    assert b"<script>alert" not in page and b'/v"x' not in page and b"/n'<" not in page
    form = password_page('/a"<b>', "wrong <password>", '/login"', hostile)
    assert b"<b>" not in form and b"<password>" not in form and b'/login"' not in form
    assert b"<script>alert" not in form
    wait = wait_page('t"<', 5, '/w"', hostile)
    assert b't"<' not in wait and b"<script>alert" not in wait


def test_safe_return_path() -> None:
    for good in ("/", "/a/b?c=d&e=%2F", "/%2F%2Fevil.example", "/a//b"):
        assert safe_return_path(good) == good
    for bad in ("", "a", "//evil.example", "/\\evil.example", "\\\\evil", "https://evil.example/",
                "/\t/evil.example", "/a\r\nSet-Cookie: x", "/a b", "/é", "/" + "a" * 2048, "javascript:alert(1)"):
        assert safe_return_path(bad) == "/", bad


def test_parse_query_is_bounded() -> None:
    assert parse_query(b"token=a%2Bb&nonce=12&nonce=13&empty=") == {"token": "a+b", "nonce": "12", "empty": ""}
    assert parse_query("a=" + "x" * 5000) == {}
    assert parse_query("&".join(f"f{i}=1" for i in range(20))) == {}
    assert parse_query(b"a=%ff") == {}


def test_wait_page() -> None:
    page = wait_page("tok.en", 15, "/.tlsedge/wait", "/docs?x=1").decode()
    assert '<html lang="en">' in page and "<title>Please wait</title>" in page and "<h1>Please wait 15 seconds" in page
    refresh = re.search(r'<meta http-equiv="refresh" content="15;url=([^"]*)">', page)
    assert refresh is not None
    url = urlsplit(refresh.group(1).replace("&amp;", "&"))
    assert url.path == "/.tlsedge/wait" and parse_query(url.query) == {"ticket": "tok.en", "return": "/docs?x=1"}
    assert f'<a href="{refresh.group(1)}">' in page
    assert "Please wait 1 second<" in wait_page("t", 1, "/w", "/").decode()
    ticket = issue_wait_ticket(KEYS, "blog", "192.0.2.1", 15, NOW)
    assert wait_page(ticket, 15, "/w", "/") == wait_page(ticket.token, 15, "/w", "/")
    assert "<script" not in page


def test_password_page() -> None:
    page = password_page("/admin", None, "/.tlsedge/password", "/admin/x").decode()
    assert '<html lang="en">' in page and "<title>Password required</title>" in page
    assert '<label for="tlsedge-password">' in page and 'id="tlsedge-password"' in page
    assert 'type="password"' in page and 'autocomplete="current-password"' in page
    assert '<form method="post" action="/.tlsedge/password">' in page
    assert '<input type="hidden" name="return" value="/admin/x">' in page
    assert "role=\"alert\"" not in page and "<script" not in page
    defaulted = password_page("/admin/x?y=1", None, "/p").decode()  # the return path defaults to the page's path
    assert '<input type="hidden" name="return" value="/admin/x?y=1">' in defaulted
    failed = password_page("/admin", "That password is not right.", "/p").decode()
    assert 'role="alert"' in failed and 'aria-describedby="tlsedge-error"' in failed
    assert "That password is not right." in failed
