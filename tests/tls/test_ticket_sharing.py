"""Session resumption across processes: a ticket issued by one worker is accepted by another with the same key file.

Also pins down an OpenSSL detail the design relies on: after the SNI callback switches a connection to a site's
context, tickets are still encrypted and decrypted with the keys of the *listener* context (OpenSSL's session_ctx).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ServerFactory
from tls_helpers import Certs, Server, make_config, s_client


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-state")


@pytest.fixture(scope="module")
def worker_a(server_factory: ServerFactory, certs: Certs, shared_state: Path) -> Server:
    return server_factory(make_config(shared_state, certs, "blog"), shared_state)


@pytest.fixture(scope="module")
def worker_b(server_factory: ServerFactory, certs: Certs, shared_state: Path, worker_a: Server) -> Server:
    return server_factory(make_config(shared_state, certs, "blog"), shared_state)  # same key file as worker_a


@pytest.fixture(scope="module")
def other_edge(server_factory: ServerFactory, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Server:
    state = tmp_path_factory.mktemp("other-state")
    return server_factory(make_config(state, certs, "blog"), state)


def session_from(port: int, proto: str, tmp_path: Path, servername: str = "a.blog.example") -> Path:
    sess = tmp_path / f"session{proto}.pem"
    out = s_client(port, proto, "-sess_out", str(sess), servername=servername)
    assert f"New, TLSv1.{proto[-1]}" in out, out
    assert sess.stat().st_size > 0
    return sess


def resumed(port: int, proto: str, sess: Path, servername: str = "a.blog.example") -> bool:
    out = s_client(port, proto, "-sess_in", str(sess), servername=servername)
    assert "site=blog" in out, out  # the connection works either way
    return "\nReused, TLSv1." in out


@pytest.mark.parametrize("proto", ["-tls1_2", "-tls1_3"])
def test_ticket_from_one_worker_resumes_on_another(
    worker_a: Server, worker_b: Server, proto: str, tmp_path: Path
) -> None:
    sess = session_from(worker_a.port, proto, tmp_path)
    assert resumed(worker_b.port, proto, sess)
    assert resumed(worker_a.port, proto, sess)


@pytest.mark.parametrize("proto", ["-tls1_2", "-tls1_3"])
def test_ticket_not_accepted_with_another_key(worker_a: Server, other_edge: Server, proto: str, tmp_path: Path) -> None:
    sess = session_from(worker_a.port, proto, tmp_path)
    assert not resumed(other_edge.port, proto, sess)


@pytest.fixture(scope="module")
def scrambled(server_factory: ServerFactory, certs: Certs, shared_state: Path) -> dict[str, Server]:
    """Servers with the shared key on all contexts but then random keys on the site contexts / on the listener."""
    config = make_config(shared_state, certs, "blog")
    return {what: server_factory(config, shared_state, f"scramble-{what}") for what in ("sites", "listener")}


@pytest.mark.parametrize("proto", ["-tls1_2", "-tls1_3"])
def test_listener_context_keys_are_the_ones_used(
    worker_a: Server, scrambled: dict[str, Server], proto: str, tmp_path: Path
) -> None:
    sess = session_from(worker_a.port, proto, tmp_path)
    assert resumed(scrambled["sites"].port, proto, sess)
    assert not resumed(scrambled["listener"].port, proto, sess)
