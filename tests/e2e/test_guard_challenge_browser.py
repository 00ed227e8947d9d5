"""The proof-of-work challenge (issue 6) in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright solves the page of an ``always`` site over https and plain http and lands on the origin's page; a second
navigation goes straight through; with JavaScript off it follows the <noscript> link, waits and gets through; the
page loads nothing but itself, breaks no rule of its own Content-Security-Policy and reads well to assistive tech.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cache_support import ScriptedOrigin
from challenge_support import (
    PASS_COOKIE,
    VERIFY_PATH,
    challenge_site,
    entries_for_paths,
    every_path_origin,
    query_of,
    seen_paths,
)
from e2e_support import Edge

from tlsedge.guard.challenge.pow import leading_zero_bits, work_digest

CHROMIUM = "/usr/bin/chromium"
HOST = "web.example"
DIFFICULTY = 16  # the default: what visitors really get

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedOrigin]:
    served = every_path_origin()
    yield served
    served.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki, origin: ScriptedOrigin) -> Iterator[Edge]:
    site = challenge_site("web", origin, pki.good(HOST), mode="always", difficulty=DIFFICULTY, noscript_delay="2s")
    started = Edge(tmp_path_factory.mktemp("challenge-browser"), [site], pki.ca_pem)
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
        )
        yield launched
        launched.close()


class Visit:
    """A browser context and page that record every request the page makes, console errors and script errors."""

    def __init__(self, browser: Any, base: str, **context: Any) -> None:
        self.base = base
        self.context = browser.new_context(ignore_https_errors=True, **context)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))

    def paths(self) -> list[str]:
        """The requests as paths; asserts every one went to the edge's own origin (scheme, host and port)."""
        foreign = [url for url in self.requests if not url.startswith(self.base + "/")]
        assert not foreign, f"requests outside {self.base}: {foreign}"
        return [url[len(self.base):] for url in self.requests]

    def pass_cookie(self) -> dict[str, Any]:
        found = [c for c in self.context.cookies() if c["name"] == PASS_COOKIE]
        assert len(found) == 1, self.context.cookies()
        return found[0]

    def close(self) -> None:
        self.context.close()


def _base(edge: Edge, scheme: str) -> str:
    return f"{scheme}://{HOST}:{edge.https_port if scheme == 'https' else edge.http_port}"


def _real_errors(errors: list[str]) -> list[str]:
    """Console errors other than the browser reporting the challenge page's 403 status (a script or style the
    page's CSP blocked, a script exception)."""
    return [e for e in errors if "status of 403" not in e]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_browser_solves_and_lands_on_the_origin(browser: Any, edge: Edge, origin: ScriptedOrigin,
                                                scheme: str) -> None:
    visit = Visit(browser, _base(edge, scheme))
    try:
        first = f"/b-{scheme}/doc?x=1&y=%2F"
        visit.page.goto(visit.base + first)
        visit.page.wait_for_selector("#origin", timeout=30_000)
        assert visit.page.inner_text("#origin") == f"origin page {first}"
        assert visit.page.url == visit.base + first
        paths = visit.paths()
        assert len(paths) == 3 and paths[0] == paths[2] == first, paths
        verify = urlsplit(paths[1])
        assert verify.path == VERIFY_PATH and query_of(paths[1])["return"] == first
        nonce, token = query_of(paths[1])["nonce"], query_of(paths[1])["token"]
        assert leading_zero_bits(work_digest(token, nonce)) >= DIFFICULTY

        cookie = visit.pass_cookie()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
        assert cookie["secure"] == (scheme == "https")
        # (a prefix of the test's own: the browser also asks for /favicon.ico by itself, outside the page)
        seen = seen_paths(origin, f"/b-{scheme}/")
        assert [s.target for s in seen] == [first]  # exactly the page, once, and only after the challenge
        assert seen[0].method == "GET" and seen[0].headers["cookie"] == f"{PASS_COOKIE}={cookie['value']}"

        second = f"/b-{scheme}/second"
        visit.requests.clear()
        response = visit.page.goto(visit.base + second)
        assert response.status == 200 and visit.page.inner_text("#origin") == f"origin page {second}"
        assert visit.paths() == [second]  # straight through: no challenge, no verify
        seen = seen_paths(origin, f"/b-{scheme}/")
        assert [s.target for s in seen] == [first, second]
        assert seen[1].headers["cookie"] == f"{PASS_COOKIE}={cookie['value']}"
        assert _real_errors(visit.errors) == []

        entries = entries_for_paths(edge, [paths[1], second])
        assert [e.get("guard") for e in entries] == ["challenge-passed", None]
    finally:
        visit.close()


def test_challenge_page_is_self_contained_and_readable(browser: Any, edge: Edge, origin: ScriptedOrigin) -> None:
    visit = Visit(browser, _base(edge, "https"))
    answers: list[str] = []

    def hold(route: Any) -> None:  # keep the page on screen once solved: a 204 leaves the document where it is
        answers.append(route.request.url)
        route.fulfill(status=204)

    visit.page.route(lambda url: urlsplit(url).path == VERIFY_PATH, hold)
    try:
        # "commit", not "load": the solved page navigates to the held answer, which may come before its load event.
        response = visit.page.goto(visit.base + "/read/me", wait_until="commit")
        assert response.status == 403
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        status = visit.page.get_by_role("status")  # (waits through locators: the page's CSP forbids eval)
        sync_api.expect(status).to_have_text("Done. Taking you to the page.", timeout=30_000)
        assert status.get_attribute("aria-live") == "polite"
        assert visit.page.evaluate("document.documentElement.lang") == "en"
        assert visit.page.title() == "Checking your browser"
        assert visit.page.evaluate("performance.getEntriesByType('resource').length") == 0  # no subresource at all
        assert visit.page.evaluate("document.getElementById('tlsedge-progress').value") == 1

        tree = visit.page.locator("body").aria_snapshot()
        assert '- heading "Checking that you are a visitor, not a robot" [level=1]' in tree
        assert "- status: Done. Taking you to the page." in tree  # the live region says what happened
        assert '- progressbar "Progress of the check"' in tree
        assert '- link "continue without the calculation"' in tree

        assert visit.paths() == ["/read/me", urlsplit(answers[0]).path + "?" + urlsplit(answers[0]).query]
        solved = query_of(answers[0])
        assert leading_zero_bits(work_digest(solved["token"], solved["nonce"])) >= DIFFICULTY
        assert _real_errors(visit.errors) == []  # a blocked inline script or style would be reported here
        assert seen_paths(origin, "/read/") == []
    finally:
        visit.close()


def test_browser_without_javascript_waits_and_passes(browser: Any, edge: Edge, origin: ScriptedOrigin) -> None:
    visit = Visit(browser, _base(edge, "https"), java_script_enabled=False)
    try:
        response = visit.page.goto(visit.base + "/nojs/page")
        assert response.status == 403
        link = visit.page.get_by_role("link", name="continue without JavaScript")  # inside <noscript>
        assert link.is_visible()
        started = time.monotonic()
        link.click()
        visit.page.get_by_role("heading", name="Please wait 2 seconds").wait_for(timeout=5_000)
        visit.page.wait_for_selector("#origin", timeout=15_000)  # the page's meta refresh, no script
        assert time.monotonic() - started >= 2.0
        assert visit.page.inner_text("#origin") == "origin page /nojs/page"
        paths = visit.paths()
        assert paths[0] == "/nojs/page" and paths[-1] == "/nojs/page"
        assert paths[1] == "/.tlsedge/challenge/noscript?return=/nojs/page"
        assert all(p.startswith("/.tlsedge/challenge/wait?") for p in paths[2:-1]) and len(paths) in (4, 5)
        cookie = visit.pass_cookie()
        seen = seen_paths(origin, "/nojs/")
        assert [s.target for s in seen] == ["/nojs/page"]
        assert seen[0].headers["cookie"] == f"{PASS_COOKIE}={cookie['value']}"
        assert _real_errors(visit.errors) == []
    finally:
        visit.close()


def test_fresh_browser_is_challenged_again(browser: Any, edge: Edge, origin: ScriptedOrigin) -> None:
    """The cookie is what lets a browser through: a new profile (no cookie) sees the challenge on any page."""
    visit = Visit(browser, _base(edge, "http"), java_script_enabled=False)
    try:
        response = visit.page.goto(visit.base + "/fresh/page")
        assert response.status == 403
        heading = visit.page.get_by_role("heading", level=1).inner_text()
        assert heading == "Checking that you are a visitor, not a robot"
        assert [e.get("guard") for e in entries_for_paths(edge, ["/fresh/page"])] == ["challenge"]
        assert seen_paths(origin, "/fresh/") == []
    finally:
        visit.close()
