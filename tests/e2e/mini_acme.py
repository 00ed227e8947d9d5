"""A small RFC 8555 ACME server for what pebble 2.4 lacks: ARI (RFC 9773 ``renewalInfo`` and ``replaces``) and
certificate profiles (``meta.profiles``, ``profile`` in newOrder).

It is a test double for the *protocol*, not for validation: authorizations start ``pending`` and become ``valid`` as
soon as the client POSTs to any of their challenges, without the server contacting anyone (``authz_valid=True`` makes
them valid from the start, like a CA reusing an earlier authorization). Everything else a client relies on is real:
JWS signatures are verified (a bad signature, an unknown or reused nonce, a wrong ``url`` are refused with the RFC's
problem documents), the CSR's names must equal the order's identifiers, and certificates are issued by a root →
intermediate chain of its own, with the lifetime of the order's profile. Tests read ``orders`` (every newOrder received,
also refused ones) and steer ARI through ``set_renewal_window``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import josepy
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsedge.pki.local_ca import LocalCA

DEFAULT_PROFILES = {"classic": timedelta(days=90), "shortlived": timedelta(days=6)}
_PEM = serialization.Encoding.PEM


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 certID: base64url(authority key identifier) "." base64url(DER serial number, signed)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier or b""
    serial = cert.serial_number
    return f"{_b64(aki)}.{_b64(serial.to_bytes(serial.bit_length() // 8 + 1, 'big', signed=True))}"


class Problem(Exception):
    """An RFC 7807 problem document with an ACME error type (``urn:ietf:params:acme:error:<kind>``)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


@dataclass
class OrderRecord:
    """What a client asked for in one newOrder; ``problem`` is the error type when the server refused it."""

    identifiers: list[str]
    profile: str | None
    replaces: str | None
    account: str
    problem: str | None = None


def _ca(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, issuer_key: Any,
        path_length: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.now(UTC) - timedelta(hours=1)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class MiniAcme:
    """The server, on a free 127.0.0.1 port over TLS (trust ``ca_path``); ``profiles`` maps name → lifetime."""

    def __init__(self, workdir: Path, *, profiles: dict[str, timedelta] | None = None,
                 default_profile: str = "classic", authz_valid: bool = False) -> None:
        self.workdir = Path(workdir)
        self.profiles = dict(DEFAULT_PROFILES if profiles is None else profiles)
        self.default_profile = default_profile
        self.authz_valid = authz_valid
        self.orders: list[OrderRecord] = []
        self.issued: dict[str, x509.Certificate] = {}  # certID → certificate
        self.revoked: dict[int, int] = {}  # serial → reason
        self.ari_requests: list[str] = []  # certIDs asked for, in order
        self.retry_after = 3600
        self.lock = threading.Lock()
        self._windows: dict[str | None, tuple[datetime, datetime]] = {}
        self._nonces: set[bytes] = set()
        self._accounts: dict[str, josepy.JWK] = {}  # account URL → key
        self._by_thumbprint: dict[bytes, str] = {}
        self._objects: dict[str, dict[str, Any]] = {}  # path → JSON of orders, authzs, challenges
        self._meta: dict[str, dict[str, Any]] = {}  # path → server-side facts (owner, links) per object
        self._chains: dict[str, tuple[str, str]] = {}  # certificate path → (chain PEM, account)
        self._owners: dict[int, str] = {}  # serial → account
        self._replaced: set[str] = set()
        root_key, self._int_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        self.root = _ca("MiniAcme test root", root_key, None, root_key, 1)
        self.intermediate = _ca("MiniAcme test intermediate", self._int_key, self.root, root_key, 0)
        self._server: ThreadingHTTPServer | None = None
        self.ca_path = self.workdir / "mini-acme-api-ca.pem"

    # ------------------------------------------------------------------------------------------------ test API

    def start(self) -> MiniAcme:
        api_ca = LocalCA.create("MiniAcme API test CA")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_path.write_bytes(api_ca.cert_pem)
        api_ca.issue(["127.0.0.1", "localhost"]).write(self.workdir / "mini-acme.pem", self.workdir / "mini-acme.key")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.workdir / "mini-acme.pem", self.workdir / "mini-acme.key")
        self._server = _Server(("127.0.0.1", 0), _Handler, self, tls)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="mini-acme", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MiniAcme:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "MiniAcme is not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/dir"

    def root_pem(self) -> bytes:
        return self.root.public_bytes(_PEM)

    def set_renewal_window(self, start: datetime, end: datetime, cert: str | None = None,
                           retry_after: int | None = None) -> None:
        """What renewalInfo answers for certID ``cert`` (for every issued certificate when None)."""
        with self.lock:
            self._windows[cert] = (start, end)
            if retry_after is not None:
                self.retry_after = retry_after

    # ------------------------------------------------------------------------------------------------ protocol

    def new_nonce(self) -> str:
        nonce = secrets.token_bytes(16)
        self._nonces.add(nonce)
        return _b64(nonce)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        """One request → (status, headers, JSON-able body or bytes). Raises ``Problem``."""
        if method in ("GET", "HEAD") and path == "/dir":
            return 200, {}, self._directory()
        if method in ("GET", "HEAD") and path == "/new-nonce":
            return (200 if method == "HEAD" else 204), {"Cache-Control": "no-store"}, b""
        if method == "GET" and path.startswith("/renewal-info/"):
            return self._renewal_info(path.removeprefix("/renewal-info/"))
        if method != "POST":
            raise Problem(405, "malformed", f"{method} {path}: POST (signed JWS) required")
        payload, account, jwk = self._verify(path, body)
        if path == "/new-account":
            return self._new_account(payload, account, jwk)
        if account is None and path != "/revoke-cert":
            raise Problem(400, "malformed", "this request must be signed with the account key id (kid)")
        if path == "/new-order":
            return self._new_order(payload, account)
        if path == "/revoke-cert":
            return self._revoke(payload, account, jwk)
        if path.startswith("/acct/"):
            return 200, {}, {"status": "valid", "orders": self.base_url + path + "/orders"}
        return self._object(path, payload, account)

    def _directory(self) -> dict[str, Any]:
        base = self.base_url
        return {
            "newNonce": f"{base}/new-nonce", "newAccount": f"{base}/new-account", "newOrder": f"{base}/new-order",
            "revokeCert": f"{base}/revoke-cert", "keyChange": f"{base}/key-change",
            "renewalInfo": f"{base}/renewal-info",
            "meta": {"profiles": {name: f"certificates valid for {life}" for name, life in self.profiles.items()}},
        }

    def _verify(self, path: str, body: bytes) -> tuple[Any, str | None, josepy.JWK | None]:
        """Check a flattened JWS (nonce, url, jwk xor kid, signature).

        Returns (payload, or None for POST-as-GET; the account URL, also for a jwk-signed request by a known key;
        the jwk of a jwk-signed request)."""
        try:
            jws = acme_jws.JWS.json_loads(body)
            header = acme_jws.Header.json_loads(jws.signature.protected)
        except (ValueError, AssertionError, josepy.DeserializationError) as e:
            raise Problem(400, "malformed", f"not a flattened JWS: {e}") from None
        if jws.signature.header.to_partial_json():
            raise Problem(400, "malformed", "every JWS header field must be in the protected header")
        if header.nonce not in self._nonces:
            raise Problem(400, "badNonce", "unknown or already used nonce")
        self._nonces.discard(header.nonce)
        if header.url != self.base_url + path:
            raise Problem(401, "unauthorized", f"JWS url {header.url!r} is not the request URL")
        if (header.jwk is None) == (header.kid is None):
            raise Problem(400, "malformed", "the protected header needs exactly one of jwk and kid")
        key = header.jwk if header.kid is None else self._accounts.get(header.kid)
        if key is None:
            raise Problem(400, "accountDoesNotExist", f"no account {header.kid}")
        if not isinstance(key, josepy.JWKRSA | josepy.JWKEC):
            raise Problem(400, "badPublicKey", "account keys must be RSA or EC")
        try:
            valid = jws.verify(key)
        except Exception:  # josepy raises various errors for a key/alg mismatch: all mean "does not verify"
            valid = False
        if not valid:
            raise Problem(403, "unauthorized", "JWS signature does not verify")
        account = header.kid or self._by_thumbprint.get(key.thumbprint())
        return (json.loads(jws.payload) if jws.payload else None), account, header.jwk

    def _new_account(self, payload: Any, existing: str | None, jwk: josepy.JWK | None
                     ) -> tuple[int, dict[str, str], Any]:
        if jwk is None:
            raise Problem(400, "malformed", "newAccount must be signed with a jwk, not a kid")
        body = {"status": "valid", "contact": (payload or {}).get("contact", [])}
        if existing is not None:
            return 200, {"Location": existing}, body
        if (payload or {}).get("onlyReturnExisting"):
            raise Problem(400, "accountDoesNotExist", "no account for this key")
        url = f"{self.base_url}/acct/{len(self._accounts) + 1}"
        self._accounts[url] = jwk
        self._by_thumbprint[jwk.thumbprint()] = url
        return 201, {"Location": url}, body

    def _new_order(self, payload: Any, account: str) -> tuple[int, dict[str, str], Any]:
        payload = payload or {}
        idents = payload.get("identifiers") or []
        names = [str(i.get("value", "")).lower() for i in idents if isinstance(i, dict)]
        record = OrderRecord(names, payload.get("profile"), payload.get("replaces"), account)
        self.orders.append(record)
        try:
            return self._create_order(record, idents)
        except Problem as problem:
            record.problem = problem.kind
            raise

    def _create_order(self, record: OrderRecord, idents: list[Any]) -> tuple[int, dict[str, str], Any]:
        if not idents or any(i.get("type") != "dns" or not i.get("value") for i in idents):
            raise Problem(400, "malformed", "identifiers must be a non-empty list of {type: dns, value}")
        profile = record.profile or self.default_profile
        if profile not in self.profiles:
            raise Problem(400, "invalidProfile", f"unknown profile {profile!r}; offered: {sorted(self.profiles)}")
        if record.replaces is not None:
            old = self.issued.get(record.replaces)
            if old is None:
                raise Problem(400, "malformed", f"replaces {record.replaces!r}: no certificate issued here")
            if self._owners[old.serial_number] != record.account:
                raise Problem(403, "unauthorized", f"{record.replaces} belongs to another account")
            if record.replaces in self._replaced:
                raise Problem(409, "alreadyReplaced", f"{record.replaces} already has a replacement")
            old_names = set(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                            .get_values_for_type(x509.DNSName))
            if not old_names & set(record.identifiers):
                raise Problem(400, "malformed", "the replaced certificate shares no identifier with the order")
        oid = secrets.token_hex(8)
        status = "valid" if self.authz_valid else "pending"
        authz_urls = []
        for name in record.identifiers:
            aid = secrets.token_hex(8)
            wildcard = name.startswith("*.")
            kinds = ["dns-01"] if wildcard else ["http-01", "tls-alpn-01"]
            challs = []
            for kind in kinds:
                cid = secrets.token_hex(8)
                self._objects[f"/chall/{cid}"] = {"type": kind, "url": f"{self.base_url}/chall/{cid}",
                                                  "token": secrets.token_urlsafe(32), "status": status}
                self._meta[f"/chall/{cid}"] = {"account": record.account, "authz": f"/authz/{aid}"}
                challs.append(self._objects[f"/chall/{cid}"])
            self._objects[f"/authz/{aid}"] = {
                "status": status, "expires": _rfc3339(datetime.now(UTC) + timedelta(days=7)),
                "identifier": {"type": "dns", "value": name.removeprefix("*.")}, "challenges": challs,
                **({"wildcard": True} if wildcard else {}),
            }
            self._meta[f"/authz/{aid}"] = {"account": record.account, "order": f"/order/{oid}"}
            authz_urls.append(f"{self.base_url}/authz/{aid}")
        order = {
            "status": "ready" if self.authz_valid else "pending",
            "expires": _rfc3339(datetime.now(UTC) + timedelta(days=7)),
            "identifiers": [{"type": "dns", "value": n} for n in record.identifiers],
            "authorizations": authz_urls, "finalize": f"{self.base_url}/finalize/{oid}", "profile": profile,
            **({"replaces": record.replaces} if record.replaces else {}),
        }
        self._objects[f"/order/{oid}"] = order
        self._meta[f"/order/{oid}"] = {"account": record.account}
        return 201, {"Location": f"{self.base_url}/order/{oid}"}, order

    def _object(self, path: str, payload: Any, account: str) -> tuple[int, dict[str, str], Any]:
        """POST-as-GET of orders/authzs/certificates, challenge answers and finalization."""
        if path.startswith("/cert/") and path in self._chains:
            chain, owner = self._chains[path]
            if owner != account:
                raise Problem(403, "unauthorized", "this certificate belongs to another account")
            return 200, {"Content-Type": "application/pem-certificate-chain"}, chain.encode()
        lookup = path.replace("/finalize/", "/order/")
        if lookup not in self._objects:
            raise Problem(404, "malformed", f"no such resource {path}")
        if self._meta[lookup]["account"] != account:
            raise Problem(403, "unauthorized", "this resource belongs to another account")
        obj = self._objects[lookup]
        if path.startswith("/chall/") and payload is not None:
            self._answer(path)
        elif path.startswith("/finalize/"):
            self._finalize(lookup, payload or {}, account)
        headers = {"Location": self.base_url + lookup} if path.startswith("/finalize/") else {}
        if path.startswith("/chall/"):
            headers["Link"] = f'<{self.base_url}{self._meta[path]["authz"]}>;rel="up"'
        return 200, headers, obj

    def _answer(self, chall_path: str) -> None:
        """A challenge POST: valid at once, no validation (see the module docstring)."""
        chall = self._objects[chall_path]
        chall.update(status="valid", validated=_rfc3339(datetime.now(UTC)))
        authz_path = self._meta[chall_path]["authz"]
        self._objects[authz_path]["status"] = "valid"
        order_path = self._meta[authz_path]["order"]
        order = self._objects[order_path]
        if order["status"] == "pending" and all(
                self._objects[u.removeprefix(self.base_url)]["status"] == "valid" for u in order["authorizations"]):
            order["status"] = "ready"

    def _finalize(self, order_path: str, payload: dict[str, Any], account: str) -> None:
        order = self._objects[order_path]
        if order["status"] != "ready":
            raise Problem(403, "orderNotReady", f"order is {order['status']}, not ready")
        try:
            csr = x509.load_der_x509_csr(_unb64(payload["csr"]))
        except (KeyError, ValueError, TypeError) as e:
            raise Problem(400, "badCSR", f"cannot parse the CSR: {e}") from None
        if not csr.is_signature_valid:
            raise Problem(400, "badCSR", "the CSR signature does not verify")
        try:
            names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        wanted = [i["value"] for i in order["identifiers"]]
        if sorted(n.lower() for n in names) != sorted(wanted):
            raise Problem(400, "badCSR", f"CSR names {sorted(names)} are not the order's {sorted(wanted)}")
        start = datetime.now(UTC).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
            .issuer_name(self.intermediate.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + self.profiles[order["profile"]])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in wanted]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._int_key.public_key()),
                           critical=False)
            .sign(self._int_key, hashes.SHA256())
        )
        self.issued[cert_id(cert)] = cert
        self._owners[cert.serial_number] = account
        if order.get("replaces"):
            self._replaced.add(order["replaces"])
        cert_path = f"/cert/{secrets.token_hex(8)}"
        self._chains[cert_path] = ((cert.public_bytes(_PEM) + self.intermediate.public_bytes(_PEM)).decode(), account)
        order.update(status="valid", certificate=self.base_url + cert_path)

    def _revoke(self, payload: Any, account: str | None, jwk: josepy.JWK | None) -> tuple[int, dict[str, str], Any]:
        try:
            cert = x509.load_der_x509_certificate(_unb64(payload["certificate"]))
        except (KeyError, TypeError, ValueError) as e:
            raise Problem(400, "malformed", f"cannot parse the certificate: {e}") from None
        owner = self._owners.get(cert.serial_number)
        if owner is None or cert not in self.issued.values():
            raise Problem(404, "malformed", "no such certificate issued here")
        by_key = jwk is not None and jwk.public_key().key == cert.public_key()
        if owner != account and not by_key:
            raise Problem(403, "unauthorized", "neither the owning account nor the certificate key signed this")
        if cert.serial_number in self.revoked:
            raise Problem(400, "alreadyRevoked", "already revoked")
        self.revoked[cert.serial_number] = int(payload.get("reason", 0))
        return 200, {}, b""

    def _renewal_info(self, cid: str) -> tuple[int, dict[str, str], Any]:
        if not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", cid):
            raise Problem(400, "malformed", f"{cid!r} is not a certID (base64url AKI '.' base64url serial)")
        self.ari_requests.append(cid)
        window = self._windows.get(cid)
        if window is None and cid in self.issued:
            window = self._windows.get(None)
            if window is None:  # default: the middle of the last third of the lifetime
                cert = self.issued[cid]
                life = cert.not_valid_after_utc - cert.not_valid_before_utc
                window = (cert.not_valid_before_utc + life * 2 / 3, cert.not_valid_before_utc + life * 5 / 6)
        if window is None:
            raise Problem(404, "malformed", f"no certificate {cid} issued here")
        body = {"suggestedWindow": {"start": _rfc3339(window[0]), "end": _rfc3339(window[1])}}
        return 200, {"Retry-After": str(self.retry_after)}, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, acme: MiniAcme, tls: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.acme, self.tls = acme, tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the request's own thread, so one stalled client cannot hold up accept()."""
        request.settimeout(10)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with conn:
            self.RequestHandlerClass(conn, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-request is normal for tests; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in two writes: no 40 ms delayed-ACK stall per request
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request lines on stderr; tests read ``MiniAcme.orders`` instead."""

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        acme = self.server.acme
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with acme.lock:
            try:
                status, headers, payload = acme.handle(method, self.path, body)
            except Problem as p:
                status, headers = p.status, {"Content-Type": "application/problem+json"}
                payload = json.dumps({"type": f"urn:ietf:params:acme:error:{p.kind}", "detail": p.detail,
                                      "status": p.status}).encode()
            headers["Replay-Nonce"] = acme.new_nonce()
        if not isinstance(payload, bytes):
            headers.setdefault("Content-Type", "application/json")
            payload = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

