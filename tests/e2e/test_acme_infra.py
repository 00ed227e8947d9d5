"""The ACME test servers work with a real client (certbot's ``acme`` library): the certificate tests can rely on them.

Pebble: HTTP-01 really validated (against a small challenge server of the test on the ``httpPort`` pebble was given),
chains verify against this run's root, ``certificateValidityPeriod`` sets the lifetime, revocation shows in the
management API, EAB is enforced, nonce rejection and authorization reuse are under the fixture's control.
MiniAcme: profiles, ARI windows, ``replaces``, and refusal of badly signed or replayed requests.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import josepy
import pytest
import requests
from acme import challenges, errors, messages
from acme import jws as acme_jws
from acme_support import Pebble, acme_client, finalize, make_csr, new_order, register
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from e2e_support import free_port
from mini_acme import MiniAcme, cert_id


class ChallengeServer:
    """Answers HTTP-01 requests from ``answers`` (token → key authorization) and records who asked (Host, path)."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.hits: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits.append((self.headers.get("Host", ""), self.path))
                answer = owner.answers.get(self.path.removeprefix("/.well-known/acme-challenge/"))
                body = (answer or "no such token").encode()
                self.send_response(200 if answer else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: ``hits`` is the record."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def http01() -> Iterator[ChallengeServer]:
    server = ChallengeServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, http01: ChallengeServer) -> Iterator[Pebble]:
    with Pebble(tmp_path_factory.mktemp("pebble"), http_port=http01.port, tls_port=free_port(),
                validity_seconds=120) as server:
        yield server


def answer_http01(acme, orderr: messages.OrderResource, http01: ChallengeServer, wrong: bool = False) -> None:
    for authzr in orderr.authorizations:
        challb = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challb.response_and_validation(acme.net.key)
        http01.answers[challb.chall.encode("token")] = "not-the-key-authorization" if wrong else validation
        acme.answer_challenge(challb, response)


def chain_of(orderr: messages.OrderResource) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(orderr.fullchain_pem.encode())


def lifetime(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


@pytest.fixture(scope="module")
def pebble_order(pebble: Pebble, http01: ChallengeServer):
    """One account and one certificate for a.test, validated over HTTP-01 (shared by the pebble tests)."""
    acme = acme_client(pebble.directory_url, pebble.api_ca_path)
    register(acme)
    _, csr = make_csr("a.test")
    orderr = acme.new_order(csr)
    answer_http01(acme, orderr, http01)
    return acme, finalize(acme, orderr)


# ---------------------------------------------------------------------------------------------------------- pebble


def test_pebble_http01_order_is_valid_and_verifies(pebble: Pebble, pebble_order, http01: ChallengeServer) -> None:
    _, orderr = pebble_order
    assert orderr.body.status == messages.STATUS_VALID
    assert f"a.test:{http01.port}" in {host for host, _ in http01.hits}  # pebble really fetched the answer
    leaf, *intermediates = chain_of(orderr)
    assert intermediates == x509.load_pem_x509_certificates(pebble.intermediate_pem())
    store = Store(x509.load_pem_x509_certificates(pebble.root_pem()))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("a.test"))
    verifier.verify(leaf, intermediates)  # raises if the chain or the name is wrong
    wrong_name = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("b.test"))
    with pytest.raises(x509.verification.VerificationError):
        wrong_name.verify(leaf, intermediates)


def test_pebble_validity_period_sets_lifetime(pebble_order) -> None:
    _, orderr = pebble_order
    assert lifetime(chain_of(orderr)[0]) == timedelta(seconds=119)  # pebble: notAfter = notBefore + period - 1 s


def test_pebble_revocation_shows_in_cert_status(pebble: Pebble, pebble_order) -> None:
    acme, orderr = pebble_order
    leaf = chain_of(orderr)[0]
    before = pebble.cert_status(leaf.serial_number)
    assert before["Status"] == "Valid"
    assert x509.load_pem_x509_certificate(before["Certificate"].encode()) == leaf
    acme.revoke(leaf, 4)  # superseded
    after = pebble.cert_status(leaf.serial_number)
    assert (after["Status"], after["Reason"]) == ("Revoked", 4)
    assert after["RevokedAt"]


def test_pebble_wrong_answer_fails_without_authz_reuse(pebble: Pebble, pebble_order, http01) -> None:
    """a.test was validated before: with PEBBLE_AUTHZREUSE=0 a new order still needs (and fails) a fresh answer."""
    acme, _ = pebble_order
    _, csr = make_csr("a.test")
    orderr = acme.new_order(csr)
    assert [a.body.status for a in orderr.authorizations] == [messages.STATUS_PENDING]
    answer_http01(acme, orderr, http01, wrong=True)
    with pytest.raises(errors.ValidationError) as failed:
        finalize(acme, orderr)
    error = next(c.error for c in failed.value.failed_authzrs[0].body.challenges if c.error)
    assert error.code == "unauthorized", error


def test_pebble_requires_eab_when_configured(tmp_path: Path, http01: ChallengeServer) -> None:
    mac_key = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with Pebble(tmp_path, http_port=http01.port, tls_port=free_port(), eab={"kid-1": mac_key}) as server:
        acme = acme_client(server.directory_url, server.api_ca_path)
        assert acme.external_account_required()
        with pytest.raises(messages.Error) as refused:
            register(acme)
        assert refused.value.code == "externalAccountRequired"
        wrong = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        with pytest.raises(messages.Error):
            register(acme, messages.ExternalAccountBinding.from_data(
                account_public_key=acme.net.key.public_key(), kid="kid-1", hmac_key=wrong, directory=acme.directory))
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=acme.net.key.public_key(), kid="kid-1", hmac_key=mac_key, directory=acme.directory)
        assert register(acme, eab).body.status == "valid"


def test_pebble_nonce_reject_is_honoured(tmp_path: Path, http01: ChallengeServer) -> None:
    """With every nonce refused, the library's single badNonce retry fails too: proof the variable reaches pebble."""
    with Pebble(tmp_path, http_port=http01.port, tls_port=free_port(), nonce_reject=100) as server:
        with pytest.raises(messages.Error) as refused:
            register(acme_client(server.directory_url, server.api_ca_path))
        assert refused.value.code == "badNonce"
        assert "reject 100% of good nonces" in server.logs()


# ---------------------------------------------------------------------------------------------------------- MiniAcme


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniAcme]:
    with MiniAcme(tmp_path_factory.mktemp("mini-acme")) as server:
        yield server


@pytest.fixture(scope="module")
def mini_client(mini: MiniAcme):
    acme = acme_client(mini.directory_url, mini.ca_path)
    register(acme)
    return acme


def mini_issue(acme, *names: str, profile: str | None = None, replaces: str | None = None) -> x509.Certificate:
    _, csr = make_csr(*names)
    orderr = new_order(acme, csr, profile=profile, replaces=replaces)
    for authzr in orderr.authorizations:
        challb = authzr.body.challenges[0]
        acme.answer_challenge(challb, challb.response(acme.net.key))
    return chain_of(finalize(acme, orderr))[0]


def test_mini_profiles(mini: MiniAcme, mini_client) -> None:
    assert set(mini_client.directory.meta.profiles) == {"classic", "shortlived"}
    assert lifetime(mini_issue(mini_client, "short.test", profile="shortlived")) == timedelta(days=6)
    assert mini.orders[-1].profile == "shortlived"
    assert lifetime(mini_issue(mini_client, "classic.test")) == timedelta(days=90)
    _, csr = make_csr("x.test")
    with pytest.raises(messages.Error) as refused:
        mini_client.new_order(csr, profile="weekly")
    assert refused.value.typ == "urn:ietf:params:acme:error:invalidProfile"  # .code only knows RFC 8555 types
    assert (mini.orders[-1].profile, mini.orders[-1].problem) == ("weekly", "invalidProfile")


def test_mini_chain_verifies_against_its_root(mini: MiniAcme, mini_client) -> None:
    _, csr = make_csr("chain.test", "www.chain.test")
    orderr = new_order(mini_client, csr)
    for authzr in orderr.authorizations:
        challb = authzr.body.challenges[0]
        mini_client.answer_challenge(challb, challb.response(mini_client.net.key))
    leaf, *intermediates = chain_of(finalize(mini_client, orderr))
    store = Store(x509.load_pem_x509_certificates(mini.root_pem()))
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName("www.chain.test")).verify(leaf, intermediates)


def test_mini_renewal_info_window(mini: MiniAcme, mini_client) -> None:
    cert = mini_issue(mini_client, "ari.test")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    mini.set_renewal_window(start, start + timedelta(hours=2), cert=cert_id(cert), retry_after=600)
    when, _ = mini_client.renewal_time(cert.public_bytes(serialization.Encoding.PEM))
    assert start <= when <= start + timedelta(hours=2)
    resp = requests.get(f"{mini.directory_url.removesuffix('/dir')}/renewal-info/{cert_id(cert)}",
                        verify=str(mini.ca_path), timeout=5)
    assert resp.headers["Retry-After"] == "600"
    assert resp.json()["suggestedWindow"]["start"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert mini.ari_requests[-1] == cert_id(cert)


def test_mini_replaces_is_recorded_and_checked(mini: MiniAcme, mini_client) -> None:
    old = mini_issue(mini_client, "renew.test")
    new = mini_issue(mini_client, "renew.test", replaces=cert_id(old))
    assert new.serial_number != old.serial_number
    assert (mini.orders[-1].identifiers, mini.orders[-1].replaces) == (["renew.test"], cert_id(old))
    _, csr = make_csr("renew.test")
    with pytest.raises(errors.ConflictError):  # 409 alreadyReplaced (the library turns every 409 into this)
        new_order(mini_client, csr, replaces=cert_id(old))
    with pytest.raises(messages.Error) as unknown:
        new_order(mini_client, csr, replaces="AAAA.AQ")
    assert unknown.value.code == "malformed"


def test_mini_revocation(mini: MiniAcme, mini_client) -> None:
    cert = mini_issue(mini_client, "revoke.test")
    mini_client.revoke(cert, 1)
    assert mini.revoked[cert.serial_number] == 1
    with pytest.raises(messages.Error) as again:
        mini_client.revoke(cert, 1)
    assert again.value.code == "alreadyRevoked"


def test_mini_refuses_bad_signatures_and_replayed_nonces(mini: MiniAcme, mini_client) -> None:
    url = mini_client.directory["newOrder"]
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "evil.test"}]}).encode()

    def post(key: josepy.JWK, nonce: bytes) -> requests.Response:
        jws = acme_jws.JWS.sign(payload, key=key, alg=josepy.ES256, nonce=nonce, url=url,
                                kid=mini_client.net.account.uri)
        return requests.post(url, data=jws.json_dumps(), headers={"Content-Type": "application/jose+json"},
                             verify=str(mini.ca_path), timeout=5)

    def fresh_nonce() -> bytes:
        head = requests.head(mini_client.directory["newNonce"], verify=str(mini.ca_path), timeout=5)
        return josepy.decode_b64jose(head.headers["Replay-Nonce"])

    stranger = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    forged = post(stranger, fresh_nonce())
    assert (forged.status_code, forged.json()["type"]) == (403, "urn:ietf:params:acme:error:unauthorized")
    nonce = fresh_nonce()
    assert post(mini_client.net.key, nonce).status_code == 201
    replayed = post(mini_client.net.key, nonce)
    assert (replayed.status_code, replayed.json()["type"]) == (400, "urn:ietf:params:acme:error:badNonce")
