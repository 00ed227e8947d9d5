"""Talking to an ACME CA (RFC 8555) with certbot's ``acme`` library: accounts, orders, ARI and revocation.

Everything here is synchronous and runs in the certificate manager's threads, never on a worker's event loop. What
the library lacks is added around it rather than patched into it:

- ``badNonce`` is retried up to ``_NONCE_RETRIES`` times (the library retries once; a CA may reject many nonces,
  and RFC 8555 6.5 says the client should simply retry with the fresh nonce it was sent);
- ``Retry-After`` of the last response is kept, so rate limits and busy CAs are respected by the backoff;
- ``newOrder`` is posted by us to carry ``replaces`` (RFC 9773 ARI) next to ``profile``;
- TLS-ALPN-01 (RFC 8737), which the library no longer models, is answered as a plain key-authorization challenge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlsedge.acme import answers
from tlsedge.config.schema import AcmeSettings
from tlsedge.pki.local_ca import private_key_pem
from tlsedge.store.base import Store
from tlsedge.store.secrets import seal, unseal

log = logging.getLogger("tlsedge.acme")

_NONCE_RETRIES = 10
_NETWORK_TIMEOUT = 30
_ORDER_DEADLINE = timedelta(seconds=120)
_USER_AGENT = "tlsedge"
_REGISTERING = threading.Lock()  # one registration per account at a time among the manager's threads


class AcmeFailure(Exception):
    """An order or an ACME request failed; ``reason`` is for the operator, ``retry_after`` from the CA (seconds)."""

    def __init__(self, reason: str, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) response that asks the CA to validate TLS-ALPN-01."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737: the CA connects to port 443 with ALPN ``acme-tls/1`` and checks the validation certificate."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused_kwargs: Any) -> str:
        return self.key_authorization(account_key)


class NewOrderReplacing(messages.NewOrder):
    """newOrder with ARI's ``replaces``: the certificate this order renews (RFC 9773 section 5)."""

    replaces: str = jose.field("replaces", omitempty=True)


class _Network(client.ClientNetwork):
    """The library's network layer, with more patience for bad nonces and memory of ``Retry-After``."""

    last_retry_after: float | None = None
    # Without it the library fetches a nonce with HEAD on the URL it posts to, which not every CA answers (pebble).
    new_nonce_url: str | None = None

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        if self.new_nonce_url is not None:
            kwargs.setdefault("new_nonce_url", self.new_nonce_url)
        for attempt in range(_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt == _NONCE_RETRIES - 1:
                    raise
                log.debug("ACME server rejected our nonce; retrying with the fresh one")
        raise AssertionError("unreachable")

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return response


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class Session:
    """A logged-in ACME client for one (directory, contact) account."""

    client: client.ClientV2
    net: _Network
    account_key: jose.JWK

    @property
    def has_ari(self) -> bool:
        return "renewalInfo" in self.directory_json

    @property
    def directory_json(self) -> dict[str, Any]:
        return self.client.directory.to_partial_json()


def account_id(settings: AcmeSettings) -> str:
    """Accounts are per (directory, contact): the key under which one is stored."""
    digest = hashlib.sha256(f"{settings.directory}\n{settings.contact or ''}".encode()).hexdigest()[:24]
    return f"acme-account/{digest}"


def open_session(store: Store, settings: AcmeSettings) -> Session:
    """Fetch the directory and log in with the stored account, registering one the first time."""
    verify: bool | str = str(settings.directory_ca) if settings.directory_ca else True
    name = account_id(settings)
    stored = store.get(name)
    record = json.loads(stored.value) if stored is not None else None
    if record is not None:
        key_pem = unseal(name, base64.b64decode(record["key"]))
        key = jose.JWKEC(key=serialization.load_pem_private_key(key_pem, password=None))
    else:
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = _Network(key, alg=jose.ES256, verify_ssl=verify, user_agent=_USER_AGENT, timeout=_NETWORK_TIMEOUT)
    try:
        directory = client.ClientV2.get_directory(settings.directory, net)
    except (requests.RequestException, errors.Error, messages.Error, ValueError) as exc:
        raise AcmeFailure(f"cannot fetch the ACME directory {settings.directory}: {describe(exc)}") from None
    net.new_nonce_url = directory["newNonce"]
    acme = client.ClientV2(directory, net)
    if record is not None and record.get("uri"):
        net.account = messages.RegistrationResource(body=messages.Registration(), uri=record["uri"])
        return Session(acme, net, key)
    with _REGISTERING:
        if store.get(name) is not None:  # another thread registered meanwhile: use that account
            return open_session(store, settings)
        _register(acme, net, key, settings)
        key_pem = private_key_pem(key.key)
        record = {
            "directory": settings.directory,
            "contact": settings.contact,
            "uri": net.account.uri,
            "key": base64.b64encode(seal(name, key_pem)).decode("ascii"),
        }
        if not store.put_if_version(name, json.dumps(record).encode(), 0):
            return open_session(store, settings)  # another edge registered first: one account, theirs
    log.info("registered ACME account %s at %s", net.account.uri, settings.directory)
    return Session(acme, net, key)


def _register(acme: client.ClientV2, net: _Network, key: jose.JWK, settings: AcmeSettings) -> None:
    eab = None
    if settings.eab is not None:
        hmac_key = os.environ.get(settings.eab.hmac_key_env, "")
        if not hmac_key:
            raise AcmeFailure(f"external account binding: the environment variable {settings.eab.hmac_key_env} "
                              "is not set in the edge's environment")
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(), kid=settings.eab.kid, hmac_key=hmac_key, directory=acme.directory
        )
    elif acme.external_account_required():
        raise AcmeFailure(f"the CA {settings.directory} requires external account binding: set "
                          "[acme] eab = { kid = ..., hmac_key_env = ... } with the credentials it gave you")
    registration = messages.NewRegistration.from_data(
        email=settings.contact, terms_of_service_agreed=True, external_account_binding=eab
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as exists:
        net.account = messages.RegistrationResource(body=messages.Registration(), uri=str(exists))
    except (requests.RequestException, errors.Error, messages.Error) as exc:
        raise failure("cannot register an ACME account", exc, net) from None


def new_private_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    bits = {"rsa2048": 2048, "rsa3072": 3072}[key_type]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_csr(names: list[str], key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def ari_cert_id(cert: x509.Certificate) -> str:
    """The ARI certificate identifier (RFC 9773 4.1): base64url(AKI keyIdentifier) "." base64url(serial DER)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier or b""
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki)}.{_b64url(serial_der)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class RenewalWindow:
    """ARI's suggested window and when to ask again."""

    start: datetime
    end: datetime
    retry_after: float | None


def renewal_info(session: Session, cert: x509.Certificate) -> RenewalWindow | None:
    """The CA's suggested renewal window for ``cert`` (None when the directory has no ARI)."""
    base = session.directory_json.get("renewalInfo")
    if not base:
        return None
    url = f"{base.rstrip('/')}/{ari_cert_id(cert)}"
    try:
        response = session.net.get(url, content_type="application/json")
        body = response.json()
        window = body["suggestedWindow"]
        start = datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    except (requests.RequestException, errors.Error, messages.Error, ValueError, KeyError, TypeError) as exc:
        raise failure(f"cannot read ACME renewal info {url}", exc, session.net) from None
    if end < start:
        raise AcmeFailure(f"ACME renewal info {url} has a window that ends before it starts")
    return RenewalWindow(start, end, retry_after_seconds(response.headers.get("Retry-After")))


@dataclass
class Issued:
    chain_pem: bytes
    key_pem: bytes
    order_url: str


def order_certificate(
    session: Session,
    store: Store,
    names: list[str],
    settings: AcmeSettings,
    challenge: str,
    replaces: str | None = None,
) -> Issued:
    """Order, authorize (answering ``challenge`` through the store), finalize and download a certificate."""
    key = new_private_key(settings.key_type)
    csr_pem = make_csr(names, key)
    orderr = _new_order(session, names, csr_pem, settings.profile, replaces)
    tokens: list[str] = []
    alpn_names: list[str] = []
    try:
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            challb = _find_challenge(authzr, challenge)
            name = authzr.body.identifier.value
            response, validation = challb.chall.response_and_validation(session.account_key)
            if challenge == "http-01":
                answers.put_http01(store, challb.chall.encode("token"), validation)
                tokens.append(challb.chall.encode("token"))
            else:
                answers.put_tls_alpn01(store, name, validation)
                alpn_names.append(name)
            session.client.answer_challenge(challb, response)
        deadline = datetime.now() + _ORDER_DEADLINE
        try:
            finished = session.client.poll_and_finalize(orderr, deadline)
        except errors.ValidationError as exc:
            raise AcmeFailure(_validation_reason(exc, challenge)) from None
        except errors.TimeoutError:
            raise AcmeFailure(f"the CA did not finish the order within {_ORDER_DEADLINE.seconds} s") from None
    except (requests.RequestException, errors.Error, messages.Error) as exc:
        raise failure("ACME order failed", exc, session.net) from None
    finally:
        answers.remove_answers(store, tokens, alpn_names)
    return Issued(finished.fullchain_pem.encode("ascii"), private_key_pem(key), orderr.uri or "")


def _new_order(
    session: Session, names: list[str], csr_pem: bytes, profile: str | None, replaces: str | None
) -> messages.OrderResource:
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names]
    fields: dict[str, Any] = {"identifiers": identifiers}
    if profile:
        fields["profile"] = profile
    if replaces:
        fields["replaces"] = replaces
    net = session.net
    try:
        response = net.post(session.client.directory["newOrder"], NewOrderReplacing(**fields))
        body = messages.Order.from_json(response.json())
        authorizations = [
            messages.AuthorizationResource(body=messages.Authorization.from_json(net.post(url, None).json()), uri=url)
            for url in body.authorizations
        ]
    except (requests.RequestException, errors.Error, messages.Error) as exc:
        raise failure("the CA refused the new order", exc, net) from None
    return messages.OrderResource(
        body=body, uri=response.headers.get("Location"), authorizations=authorizations, csr_pem=csr_pem
    )


def _find_challenge(authzr: messages.AuthorizationResource, kind: str) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if challb.chall.typ == kind:
            return challb
    offered = ", ".join(c.chall.typ for c in authzr.body.challenges) or "none"
    raise AcmeFailure(
        f"the CA offers no {kind} challenge for {authzr.body.identifier.value} (it offers: {offered}); "
        "choose another in challenges"
    )


def _validation_reason(exc: errors.ValidationError, challenge: str) -> str:
    parts = []
    for authzr in exc.failed_authzrs:
        for challb in authzr.body.challenges:
            if challb.error is not None:
                detail = challb.error.detail or challb.error.code or "failed"
                parts.append(f"{authzr.body.identifier.value}: {challb.chall.typ}: {detail}")
    return f"{challenge} validation failed: " + ("; ".join(parts) or "no detail from the CA")


def revoke(session: Session, cert: x509.Certificate, reason: int = 0) -> None:
    try:
        session.client.revoke(cert, reason)
    except (requests.RequestException, errors.Error, messages.Error) as exc:
        raise failure("the CA refused the revocation", exc, session.net) from None


def failure(what: str, exc: BaseException, net: _Network) -> AcmeFailure:
    """An AcmeFailure for an exception from the library, keeping the CA's Retry-After and rate-limit signal."""
    rate_limited = isinstance(exc, messages.Error) and exc.code == "rateLimited"
    return AcmeFailure(f"{what}: {describe(exc)}", net.last_retry_after, rate_limited)


def describe(exc: BaseException) -> str:
    """A one-line reason from whatever the library or requests raised."""
    if isinstance(exc, messages.Error):
        return f"{exc.typ.rsplit(':', 1)[-1] if exc.typ else 'error'}: {exc.detail or exc.description or exc}"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect ({exc.__class__.__name__}: {str(exc)[:200]})"
    return f"{exc.__class__.__name__}: {str(exc)[:300]}"
