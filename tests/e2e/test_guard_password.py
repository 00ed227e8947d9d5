"""Password-protected paths of issue 6 through a running edge over TLS: the form page, wrong and right passwords,
the cookie (scoped to its prefix, bound to the client's /24), and failing closed when the signing keys cannot be
read from the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
from e2e_support import Response, wait_for
from guard_support import PASSWORD, BodyOrigin, EdgeFactory, GuardEdge, password_hash, plain_site, with_certificate

from tlsedge.store import open_store

FORM_ACTION = "/.tlsedge/password"


@pytest.fixture(scope="module")
def origin() -> Iterator[BodyOrigin]:
    made = BodyOrigin()
    yield made
    made.close()


@pytest.fixture(scope="module")
def factory(tmp_path_factory, pki) -> Iterator[EdgeFactory]:
    made = EdgeFactory(tmp_path_factory.mktemp("password-edges"), pki.ca_pem)
    yield made
    made.close()


@pytest.fixture(scope="module")
def hashed() -> str:
    return password_hash(PASSWORD)


def vault_edge(factory: EdgeFactory, origin: BodyOrigin, pki, hashed: str, start: bool = True) -> GuardEdge:
    """An https edge with site vault (/admin/ and /finance/ behind the same password; two wrong ones ban) and site
    locker (/ behind it, no bans)."""
    vault = plain_site(origin, "vault", password=[{"path_prefix": "/admin/", "password_hash": hashed},
                                                  {"path_prefix": "/finance/", "password_hash": hashed}],
                       bans={"threshold": 2, "duration": "30s"})
    locker = plain_site(origin, "locker", password=[{"path_prefix": "/", "password_hash": hashed}])
    return factory([with_certificate(vault, pki), with_certificate(locker, pki)], https=True, start=start)


@pytest.fixture(scope="module")
def edge(factory, origin, pki, hashed) -> GuardEdge:
    return vault_edge(factory, origin, pki, hashed)


def submit(edge: GuardEdge, password: str, back: str, source: str, host: str = "vault.example") -> Response:
    body = urlencode({"password": password, "return": back}).encode()
    return edge.ask(host, FORM_ACTION, "POST", [("Content-Type", "application/x-www-form-urlencoded")],
                    body, source=source)


def cookie_of(resp: Response) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes) of the response's one Set-Cookie."""
    [header] = resp.all("set-cookie")
    pair, *attrs = [part.strip() for part in header.split(";")]
    name, _, value = pair.partition("=")
    return name, value, {k.lower(): v for k, _, v in (a.partition("=") for a in attrs)}


def test_form_page_without_a_cookie(edge, origin) -> None:
    resp = edge.ask("vault.example", "/admin/panel?tab=users", source="127.0.20.1")
    assert resp.status == 403
    assert resp.header("content-type").startswith("text/html") and resp.header("cache-control") == "no-store"
    page = resp.body.decode()
    assert re.search(rf'<form method="post" action="{re.escape(FORM_ACTION)}">', page), page
    assert '<input type="hidden" name="return" value="/admin/panel?tab=users">' in page
    assert 'name="password" type="password"' in page
    assert origin.received("/admin/panel") == []
    assert edge.access_entry(resp.header("x-request-id"))["guard"] == "password"
    assert edge.ask("vault.example", "/public", source="127.0.20.1").status == 200  # the rest of the site is open


def test_right_password_gives_a_cookie_for_the_prefix(edge, origin) -> None:
    src = "127.0.21.1"
    resp = submit(edge, PASSWORD, "/admin/panel?tab=users", src)
    assert resp.status == 303 and resp.header("location") == "/admin/panel?tab=users"
    name, value, attrs = cookie_of(resp)
    assert name.startswith("tlsedge_pw_") and value
    assert attrs["path"] == "/admin/" and "httponly" in attrs and "secure" in attrs
    assert attrs["samesite"] == "Lax" and int(attrs["max-age"]) == 12 * 3600
    assert edge.access_for("vault", FORM_ACTION)["guard"] == "password-passed"
    opened = edge.ask("vault.example", "/admin/panel?tab=users", headers=[("Cookie", f"{name}={value}")], source=src)
    assert opened.status == 200 and opened.body == b"origin saw GET /admin/panel?tab=users"
    [seen] = origin.received("/admin/panel")
    assert f"{name}={value}" in seen.headers["cookie"]
    # one prefix's cookie opens that prefix only, under its own name or the other prefix's
    other = edge.ask("vault.example", "/finance/report", headers=[("Cookie", f"{name}={value}")], source=src)
    assert other.status == 403 and FORM_ACTION in other.body.decode()
    finance = cookie_of(submit(edge, PASSWORD, "/finance/report", src))[0]
    assert finance != name
    swapped = edge.ask("vault.example", "/finance/report", headers=[("Cookie", f"{finance}={value}")], source=src)
    assert swapped.status == 403
    assert origin.received("/finance/report") == []


def test_cookie_is_bound_to_the_clients_network(edge, origin) -> None:
    name, value, _ = cookie_of(submit(edge, PASSWORD, "/admin/net", "127.0.22.1"))
    jar = [("Cookie", f"{name}={value}")]
    assert edge.ask("vault.example", "/admin/net", headers=jar, source="127.0.22.9").status == 200  # same /24
    elsewhere = edge.ask("vault.example", "/admin/net", headers=jar, source="127.0.23.1")
    assert elsewhere.status == 403 and FORM_ACTION in elsewhere.body.decode()
    assert len(origin.received("/admin/net")) == 1


def test_forged_cookie_is_refused(edge, origin) -> None:
    name, value, _ = cookie_of(submit(edge, PASSWORD, "/admin/forged", "127.0.24.1"))
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    resp = edge.ask("vault.example", "/admin/forged", headers=[("Cookie", f"{name}={tampered}")], source="127.0.24.1")
    assert resp.status == 403
    assert origin.received("/admin/forged") == []


def test_wrong_password_is_refused_and_counts_as_an_offense(edge, origin) -> None:
    src = "127.0.25.1"
    first = submit(edge, "not the password", "/admin/panel", src)
    assert first.status == 403 and first.all("set-cookie") == []
    page = first.body.decode()
    assert "not right" in page and f'action="{FORM_ACTION}"' in page
    assert edge.access_entry(first.header("x-request-id"))["guard"] == "password-failed"
    assert submit(edge, "still wrong", "/admin/panel", src).status == 403  # the second offense bans (threshold 2)
    banned = edge.ask("vault.example", "/public-page", source=src)
    assert banned.status == 403 and banned.header("retry-after")
    assert edge.access_entry(banned.header("x-request-id"))["guard"] == "banned"
    right = submit(edge, PASSWORD, "/admin/panel", src)  # even the right password, once banned
    assert right.status == 403 and right.all("set-cookie") == []
    assert origin.received("/public-page") == []


@pytest.mark.parametrize("spelling", ["/%61dmin/canon", "/public/../admin/canon", "//admin/canon",
                                      "/admin%2Fcanon", "/admin;v=1/canon", "/./admin/canon"])
def test_other_spellings_of_a_protected_path_get_the_form(edge, origin, spelling) -> None:
    """Spellings an origin may read as /admin/... do not walk past the password (nor reach the origin at all)."""
    resp = edge.ask("vault.example", spelling, source="127.0.29.1")
    assert resp.status == 403 and FORM_ACTION in resp.body.decode(), (resp.status, resp.body[:200])
    assert edge.access_entry(resp.header("x-request-id"))["guard"] == "password"
    assert not [s.target for s in origin.seen if "canon" in s.target]


def test_password_attempts_are_limited_per_address(edge) -> None:
    """Ten attempts at once, then one every six seconds: the eleventh is 429, even with the right password."""
    src = "127.0.30.1"
    with ThreadPoolExecutor(5) as pool:
        tries = list(pool.map(lambda i: submit(edge, f"guess {i}", "/", src, "locker.example").status, range(10)))
    assert tries == [403] * 10
    limited = submit(edge, PASSWORD, "/", src, "locker.example")
    assert limited.status == 429 and 1 <= int(limited.header("retry-after")) <= 6 and limited.all("set-cookie") == []
    assert edge.access_entry(limited.header("x-request-id"))["guard"] == "password-limit"
    assert submit(edge, PASSWORD, "/", "127.0.30.2", "locker.example").status == 303  # another address


# --- failing closed -------------------------------------------------------------------------------------------------


def test_unreadable_signing_keys_fail_closed(factory, origin, pki, hashed) -> None:
    """An edge that starts with a damaged signing-key record in its store answers protected paths (and the form)
    with 503 + Retry-After, never the protected content; the rest of the site is served."""
    edge = vault_edge(factory, origin, pki, hashed, start=False)
    open_store(edge.server["state_dir"]).put("guard/signing-keys", b"this is not a sealed key record")
    edge.start()
    resp = edge.ask("vault.example", "/admin/closed", source="127.0.26.1")
    assert resp.status == 503 and resp.header("retry-after")
    assert edge.access_entry(resp.header("x-request-id"))["guard"] == "store-unavailable"
    assert submit(edge, PASSWORD, "/admin/closed", "127.0.26.1").status == 503
    assert origin.received("/admin/closed") == []
    assert edge.ask("vault.example", "/open-page", source="127.0.26.1").status == 200
    wait_for(lambda: "signing keys" in edge.error_text(), 3, what="the error about the signing keys")
    assert "Traceback" not in edge.error_text()


def test_store_file_that_is_not_a_database_stops_the_start(factory, origin, pki, hashed) -> None:
    """The store file itself is garbage: the edge refuses to start (nothing is served), naming the file."""
    edge = vault_edge(factory, origin, pki, hashed, start=False)
    state = edge.tmp / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    (state / "store.sqlite3").write_bytes(b"garbage, not SQLite " * 512)
    with pytest.raises(AssertionError, match="exited"):
        edge.start()
    report = edge.error_text()
    assert str(state / "store.sqlite3") in report and "Traceback" not in report, report


def test_keys_unreadable_while_running_close_protected_paths_until_readable(factory, origin, pki, hashed) -> None:
    """The key record is damaged under a running edge (and the change announced): protected paths and the form
    answer 503, even to a valid cookie, until the record is readable again; then that cookie opens them again."""
    edge = vault_edge(factory, origin, pki, hashed)
    src = "127.0.28.1"
    name, value, _ = cookie_of(submit(edge, PASSWORD, "/admin/x", src))
    jar = [("Cookie", f"{name}={value}")]
    assert edge.ask("vault.example", "/admin/before", headers=jar, source=src).status == 200
    store = open_store(edge.server["state_dir"])
    good = store.get("guard/signing-keys").value
    store.put("guard/signing-keys", b"this is not a sealed key record")
    store.publish("guard-keys")
    wait_for(lambda: edge.ask("vault.example", "/admin/poll", headers=jar, source=src).status == 503, 3,
             what="the worker to notice")
    assert "cannot read the signing keys" in edge.error_text()
    for path, headers in (("/admin/kept", jar), ("/admin/nocookie", []), ("/finance/nocookie", jar)):
        resp = edge.ask("vault.example", path, headers=headers, source=src)
        assert resp.status == 503 and resp.header("retry-after"), path
    assert submit(edge, PASSWORD, "/admin/x", src).status == 503
    assert edge.ask("vault.example", "/open", source=src).status == 200
    store.put("guard/signing-keys", good)
    store.publish("guard-keys")
    wait_for(lambda: edge.ask("vault.example", "/admin/after", headers=jar, source=src).status == 200, 3,
             what="the worker to read the keys again")
    assert [s.target for s in origin.seen if s.target.split("?")[0] in ("/admin/kept", "/admin/nocookie",
                                                                        "/finance/nocookie")] == []
    assert "Traceback" not in edge.error_text()
