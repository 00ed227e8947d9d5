"""Real ACME servers for the certificate tests: Let's Encrypt's ``pebble`` (Debian's 2.4 package) with its challenge
DNS, and a helper that builds an ``acme`` library client trusting a test server.

Why these choices:
- pebble validates challenges for real (``PEBBLE_VA_ALWAYS_VALID`` is removed from its environment), so an order only
  reaches ``valid`` when the edge under test answers on ``http_port``/``tls_port``; names resolve through
  ``pebble-challtestsrv`` (every A query → 127.0.0.1, no AAAA), which pebble only uses when given ``-dnsserver``.
- pebble's own API certificate is not shipped by the package: we issue one from a fresh LocalCA and keep the CA in
  ``api_ca_path`` for clients. Its issuing root is regenerated on every start, so ``root_pem()`` fetches it each run.
- ``PEBBLE_AUTHZREUSE`` defaults to 50 (% of orders reusing a valid authorization): 0 here, so a second order for a name
  needs a fresh challenge answer and a "wrong answer" test cannot pass on an old authorization.
- Output goes to files, not pipes, so a chatty process can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import josepy
from acme import client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e_support import free_port

from tlsedge.pki.local_ca import LocalCA

_START_TIMEOUT = 10.0


def _wait_ready(check: Any, procs: list[subprocess.Popen], what: str, logs: Any) -> None:
    """Poll ``check()`` until it is true; fail early if a process died, and after ``_START_TIMEOUT`` seconds."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what} exited with code {dead[0].returncode} while starting:\n{logs()}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {_START_TIMEOUT}s:\n{logs()}")
        time.sleep(0.05)


class Pebble:
    """A pebble + pebble-challtestsrv pair on free loopback ports, validating challenges against ``http_port`` (HTTP-01)
    and ``tls_port`` (TLS-ALPN-01) on 127.0.0.1: the ports of the edge under test.

    ``eab`` (kid → base64url MAC key) makes external account binding mandatory. ``validity_seconds`` sets pebble's
    ``certificateValidityPeriod``: certificates then live ``validity_seconds - 1`` s (default: 5 years).
    ``nonce_reject`` is the percentage of valid nonces pebble refuses as ``badNonce`` (pebble's own default is 5; 0 here
    so only tests that ask for it see them). ``authz_reuse`` is the percentage of orders that reuse a valid
    authorization (pebble's default 50; 0 here).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        tls_port: int,
        eab: dict[str, str] | None = None,
        validity_seconds: int | None = None,
        nonce_reject: int = 0,
        authz_reuse: int = 0,
    ) -> None:
        self.workdir = Path(workdir)
        self.http_port = http_port
        self.tls_port = tls_port
        self.eab = eab
        self.validity_seconds = validity_seconds
        self.nonce_reject = nonce_reject
        self.authz_reuse = authz_reuse
        self.api_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.challtest_port = free_port()
        self.api_ca_path = self.workdir / "pebble-api-ca.pem"
        self.startup_seconds = 0.0
        self._procs: list[subprocess.Popen] = []
        self._tls: ssl.SSLContext | None = None  # trusts api_ca_path once start() wrote it

    # ------------------------------------------------------------------------------------------------ lifecycle

    def _write_config(self) -> Path:
        ca = LocalCA.create("pebble API test CA")
        self.api_ca_path.parent.mkdir(parents=True, exist_ok=True)
        self.api_ca_path.write_bytes(ca.cert_pem)
        ca.issue(["127.0.0.1", "localhost"]).write(self.workdir / "pebble-api.pem", self.workdir / "pebble-api.key")
        self._tls = ssl.create_default_context(cafile=str(self.api_ca_path))
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.workdir / "pebble-api.pem"),
            "privateKey": str(self.workdir / "pebble-api.key"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab is not None,
        }
        if self.eab is not None:
            config["externalAccountMACKeys"] = self.eab
        if self.validity_seconds is not None:
            config["certificateValidityPeriod"] = self.validity_seconds
        path = self.workdir / "pebble-config.json"
        path.write_text(json.dumps({"pebble": config}, indent=2))
        return path

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.workdir / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            self._procs.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=self.workdir)
            )

    def start(self) -> Pebble:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        started = time.monotonic()
        self._spawn("challtestsrv", [
            "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{self.dns_port}", "-management", f"127.0.0.1:{self.challtest_port}",
            # its HTTP-01/TLS-ALPN-01 responders default to :5002/:5001/:5003 and would take the edge's ports
            "-http01", "", "-https01", "", "-tlsalpn01", "",
        ], env)
        env |= {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject),
            "PEBBLE_AUTHZREUSE": str(self.authz_reuse),
        }
        self._spawn("pebble", ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"], env)
        try:
            _wait_ready(self._answers, self._procs, "pebble", self.logs)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _answers(self) -> bool:
        with urllib.request.urlopen(self.directory_url, context=self._tls, timeout=1) as resp:
            json.load(resp)
        # challtestsrv's management API has no page at "/": any HTTP answer (here a 404) means it is up
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(self.challtestsrv_url + "/", timeout=1).close()
        return True

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ queries

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}/dir"

    @property
    def challtestsrv_url(self) -> str:
        """pebble-challtestsrv's management API (``/add-a``, ``/set-txt``, ``/clear-txt``...) to steer its DNS."""
        return f"http://127.0.0.1:{self.challtest_port}"

    def _management(self, path: str) -> bytes:
        assert self._tls is not None, "pebble is not started"
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, context=self._tls, timeout=5) as resp:
            return resp.read()

    def root_pem(self) -> bytes:
        """The root that signs this run's certificates (new at every start)."""
        return self._management("/roots/0")

    def intermediate_pem(self) -> bytes:
        """The intermediate below ``root_pem()``; pebble also sends it in every issued chain."""
        return self._management("/intermediates/0")

    def cert_status(self, serial: int) -> dict[str, Any]:
        """Pebble's record of an issued certificate: ``{"Serial": hex, "Status": "Valid"|"Revoked", "Certificate":
        PEM, "Reason": int, "RevokedAt": RFC 3339}`` (the last two only once revoked)."""
        return json.loads(self._management(f"/cert-status-by-serial/{serial:x}"))

    def logs(self) -> str:
        parts = []
        for name in ("challtestsrv", "pebble"):
            path = self.workdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no output)"
            parts.append(f"--- {name} ---\n{text}")
        return "\n".join(parts)


def acme_client(directory_url: str, ca_path: Path, account_key: josepy.JWK | None = None) -> client.ClientV2:
    """An ``acme`` library client for ``directory_url`` trusting only ``ca_path`` (``requests`` takes a CA file where
    ``ClientNetwork`` expects ``verify_ssl``); a new EC P-256 account key unless one is given. No account yet."""
    key = account_key or josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = client.ClientNetwork(key, alg=josepy.ES256, verify_ssl=str(ca_path), user_agent="tlsedge-tests")  # type: ignore[arg-type]
    return client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)


def register(acme: client.ClientV2, eab: dict[str, Any] | None = None) -> messages.RegistrationResource:
    """Create the account of ``acme``'s key (``eab`` from ``messages.ExternalAccountBinding.from_data``)."""
    return acme.new_account(messages.NewRegistration.from_data(
        email="tests@tlsedge.invalid", terms_of_service_agreed=True, external_account_binding=eab))


def make_csr(*names: str) -> tuple[bytes, bytes]:
    """A new P-256 key and a CSR for ``names``: (key PEM, CSR PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, crypto_util.make_csr(key_pem, list(names))


class ReplacingOrder(messages.NewOrder):
    """newOrder with RFC 9773's ``replaces`` (the certID of the certificate this order renews): acme 5.x's
    ``ClientV2.new_order`` only knows ``profile``."""

    replaces: str | None = josepy.field("replaces", omitempty=True)


def new_order(acme: client.ClientV2, csr_pem: bytes, *, profile: str | None = None,
              replaces: str | None = None) -> messages.OrderResource:
    """``ClientV2.new_order`` that can also send ``replaces``: the order is posted through ``acme.net.post`` and its
    authorizations fetched with ``acme.poll``."""
    csr = x509.load_pem_x509_csr(csr_pem)
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    order = ReplacingOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names],
                           profile=profile, replaces=replaces)
    resp = acme.net.post(acme.directory["newOrder"], order, new_nonce_url=acme.directory["newNonce"])
    body = messages.Order.from_json(resp.json())
    authzrs = [acme.poll(messages.AuthorizationResource(uri=url, body=messages.Authorization()))[0]
               for url in body.authorizations]
    return messages.OrderResource(body=body, uri=resp.headers["Location"], authorizations=authzrs, csr_pem=csr_pem)


def finalize(acme: client.ClientV2, orderr: messages.OrderResource, timeout: float = 10.0) -> messages.OrderResource:
    """``poll_and_finalize`` without its fixed one-second sleeps (the tests run many orders): wait for the
    authorizations, finalize, wait for ``valid``, download the chain into ``fullchain_pem``."""
    deadline = time.monotonic() + timeout

    def pause() -> None:
        if time.monotonic() > deadline:
            raise errors.TimeoutError()
        time.sleep(0.05)

    authzrs = []
    for authzr in orderr.authorizations:
        while authzr.body.status == messages.STATUS_PENDING:
            pause()
            authzr = acme.poll(authzr)[0]
        if authzr.body.status != messages.STATUS_VALID:
            raise errors.ValidationError([authzr])
        authzrs.append(authzr)
    orderr = acme.begin_finalization(orderr.update(authorizations=authzrs))
    nonce_url = acme.directory["newNonce"]
    while orderr.body.status != messages.STATUS_VALID:
        if orderr.body.status == messages.STATUS_INVALID:
            raise errors.IssuanceError(orderr.body.error)
        pause()
        orderr = orderr.update(body=messages.Order.from_json(
            acme.net.post(orderr.uri, None, new_nonce_url=nonce_url).json()))
    chain = acme.net.post(orderr.body.certificate, None, new_nonce_url=nonce_url).text
    return orderr.update(fullchain_pem=chain)
