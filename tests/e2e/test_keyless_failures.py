"""Keyless TLS 1.3 when key servers fail or refuse: SIGKILL mid-traffic with and without a second key server, an edge
presenting a client certificate from another CA, an edge pinning another key server's key.

One edge serves the module with one keyless site per case, each with key servers of its own, so killing one case's
key server leaves the others untouched:

- ``dual``: key servers A and B; A is killed mid-traffic.
- ``solo``: key server C only; C is killed.
- ``badcert``: key server B, but the edge presents a client certificate from a CA B does not trust.
- ``badpin``: key server B, but the edge pins another key.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Edge, openssl_s_client, wait_for
from keyless_support import (
    KeylessPki,
    KeyserverProcess,
    SiteKey,
    Tls13Conn,
    keyless_site,
    tls13_context,
)

CASES = ("dual", "solo", "badcert", "badpin")
TIMEOUT = 2.0  # [site.keyless] timeout: one signature, failover included


class Rig:
    """The module's edge, its sites' keys, and key servers A, B and C."""

    def __init__(self, edge: Edge, keys: dict[str, SiteKey], servers: dict[str, KeyserverProcess]) -> None:
        self.edge, self.keys, self.servers = edge, keys, servers

    def host(self, case: str) -> str:
        return self.keys[case].host

    def connect(self, case: str, **kw: Any) -> Tls13Conn:
        return Tls13Conn(self.edge.https_port, self.host(case), self.edge.ca_pem, **kw)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki, py_origin) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("keyless-failures")
    kpki = KeylessPki(tmp / "pki", pki.ca)
    keys = {case: kpki.site_key("p256", f"{case}.keyless.test") for case in CASES}
    shared = [keys["dual"], keys["badcert"], keys["badpin"]]
    servers = {
        "A": KeyserverProcess(tmp / "ks-a", kpki, shared),
        "B": KeyserverProcess(tmp / "ks-b", kpki, shared),
        "C": KeyserverProcess(tmp / "ks-c", kpki, [keys["solo"]]),
    }
    a, b, c = servers["A"], servers["B"], servers["C"]
    url, good = py_origin.url, kpki.edge
    sites = [
        keyless_site("dual", keys["dual"], url, [a, b], kpki.pin, good, timeout=f"{TIMEOUT:g}s"),
        keyless_site("solo", keys["solo"], url, [c], kpki.pin, good, timeout=f"{TIMEOUT:g}s"),
        keyless_site("badcert", keys["badcert"], url, [b], kpki.pin, kpki.rogue_edge, timeout=f"{TIMEOUT:g}s"),
        keyless_site("badpin", keys["badpin"], url, [b], kpki.wrong_pin, good, timeout=f"{TIMEOUT:g}s"),
    ]
    edge = Edge(tmp / "edge", sites, pki.ca_pem)
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        edge.start()
        yield Rig(edge, keys, servers)
    finally:
        edge.stop()
        for server in servers.values():
            server.stop()


def full_handshake_and_get(rig: Rig, case: str, path: str) -> None:
    """A new TLS session (so a signature) and one request; raises on any failure."""
    with rig.connect(case, timeout=TIMEOUT + 3) as conn:
        response = conn.get(path)
        assert response.status == 200 and response.json()["target"] == path


def settled(server: KeyserverProcess, host: str) -> list[dict[str, Any]]:
    """``server``'s sign lines for ``host`` once what came before is on disk (it writes about once a second)."""
    time.sleep(1.2)
    return server.signs(host)


def test_kill_one_of_two_keyservers_mid_traffic(rig: Rig) -> None:
    """SIGKILL key server A while handshakes run back to back: every handshake, during and after, succeeds (the edge
    fails over to B) and B signs the ones after the kill."""
    a, b = rig.servers["A"], rig.servers["B"]
    host = rig.host("dual")
    for i in range(4):  # the pool alternates: both key servers serve this site before the kill
        full_handshake_and_get(rig, "dual", f"/warm/{i}")
    wait_for(lambda: a.signs(host) and b.signs(host), 5, what="sign lines from both key servers")
    results: list[tuple[float, str | None]] = []  # (started, error)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                full_handshake_and_get(rig, "dual", f"/during/{n}")
                results.append((started, None))
            except (OSError, AssertionError) as exc:
                results.append((started, repr(exc)))

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    time.sleep(0.3)
    a.kill()
    killed_at, killed_wall = time.monotonic(), time.time()
    time.sleep(1.0)
    stop.set()
    worker.join(TIMEOUT + 5)
    assert not worker.is_alive()
    failures = [error for _, error in results if error is not None]
    assert failures == [], f"{len(failures)} of {len(results)} handshakes failed: {failures[:3]}"
    after = [t for t, _ in results if t > killed_at]
    assert len(after) >= 5, f"only {len(after)} handshakes started after the kill"
    wait_for(lambda: len(b.signs(host, since=killed_wall)) >= len(after), 5,
             what=f"B's sign lines for the {len(after)} handshakes after the kill")


def test_only_keyserver_killed(rig: Rig) -> None:
    """With its only key server gone, a site's new full handshakes fail at once with a handshake_failure alert and a
    log line saying why; a resumed session needs no key server and works, and so does a connection opened before."""
    edge, host = rig.edge, rig.host("solo")
    context = tls13_context(edge.ca_pem)
    with rig.connect("solo", context=context) as before:
        assert before.get("/before/1").status == 200
        session = before.sock.session
        assert session is not None and session.has_ticket
        rig.servers["C"].kill()
        offset = edge.error_log_size()

        started = time.monotonic()
        with pytest.raises(ssl.SSLError, match="handshake failure"):
            rig.connect("solo", context=context, timeout=TIMEOUT + 3)
        assert time.monotonic() - started < TIMEOUT + 1
        done = openssl_s_client(edge.https_port, host, "-tls1_3", timeout=TIMEOUT + 5)
        assert "alert handshake failure" in done.stderr.decode(errors="replace"), done.stderr[-2000:]
        why = wait_for(lambda: [line for line in edge.error_text_since(offset).splitlines()
                                if f"site solo: keyless handshake with 127.0.0.1 (SNI {host}) failed" in line], 5,
                       what="the edge's log line about the failed handshake")
        assert "no key server could sign" in why[0], why

        with rig.connect("solo", context=context, session=session) as resumed:
            assert resumed.sock.session_reused
            response = resumed.get("/resumed")
            assert response.status == 200 and response.json()["target"] == "/resumed"
        for i in range(2, 4):
            response = before.get(f"/before/{i}")
            assert response.status == 200 and response.json()["target"] == f"/before/{i}"


def test_edge_with_wrong_client_certificate_is_refused(rig: Rig) -> None:
    """The edge's client certificate comes from a CA the key server does not trust: the key server refuses the TLS
    connection and logs it, signs nothing, and the edge fails the client's handshake saying so."""
    edge, b, host = rig.edge, rig.servers["B"], rig.host("badcert")
    offset = edge.error_log_size()
    with pytest.raises(ssl.SSLError, match="handshake failure"):
        rig.connect("badcert", timeout=TIMEOUT + 3)
    why = wait_for(lambda: [line for line in edge.error_text_since(offset).splitlines()
                            if "site badcert: keyless handshake" in line], 5, what="the edge's log line")
    assert "refuses this edge's client certificate" in why[0], why
    wait_for(lambda: [e for e in b.oplog() if e.get("op") == "handshake" and e.get("result") == "refused"
                      and "client certificate not accepted" in e.get("reason", "")],
             5, what="the key server's log line about the refused edge")
    assert settled(b, host) == []


def test_edge_pinning_another_key_refuses_the_keyserver(rig: Rig) -> None:
    """The key server's certificate does not match the edge's pin: the edge sends it nothing and fails the client's
    handshake, naming the pin mismatch."""
    edge, b, host = rig.edge, rig.servers["B"], rig.host("badpin")
    offset = edge.error_log_size()
    with pytest.raises(ssl.SSLError, match="handshake failure"):
        rig.connect("badpin", timeout=TIMEOUT + 3)
    why = wait_for(lambda: [line for line in edge.error_text_since(offset).splitlines()
                            if "site badpin: keyless handshake" in line], 5, what="the edge's log line")
    assert "is not a pinned key server" in why[0], why
    assert settled(b, host) == []
