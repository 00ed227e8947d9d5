"""The certificate manager: one process per edge that orders and renews every ACME certificate.

Why a process of its own: ordering is slow, synchronous network work (certbot's library) that must happen once per
edge, never in a worker's event loop, and must not hold up the supervisor's signal handling. Orders for different
sites run in a few threads. Results go to the store; workers pick them up from there (topic ``certs``) and swap
contexts without dropping a connection.

Each site is looked at when its time comes (at start, at the renewal time, after a backoff, at least every
``check_interval``): keep a temporary certificate while there is no real one, refresh ARI when the CA offers it, order
when due. A lock per name in the store keeps one order per name even when several edges share the store.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime

from tlsedge.acme import client as acme
from tlsedge.acme.schedule import ari_choice, backoff, order_due
from tlsedge.config.schema import ORIGIN_CA_CLIENT, AcmeSettings, Config, SiteConfig
from tlsedge.pki import origin_ca
from tlsedge.pki.site_certs import (
    RENEW_TOPIC,
    CertificateStatus,
    StoredCertificate,
    leaf_facts,
    load_certificate,
    load_status,
    save_certificate,
    save_status,
)
from tlsedge.pki.temporary import ensure_temporary, needs_temporary
from tlsedge.store.base import Store, StoreError
from tlsedge.tls.memory import load_pem_chain

log = logging.getLogger("tlsedge.certs")

_THREADS = 4
_LOCK_TTL = 300.0  # an order takes seconds; a crashed manager's lock lapses after this
_BUSY_RETRY = 10.0  # another process holds the lock: look again after this
_ARI_DEFAULT_RECHECK = 6 * 3600.0  # RFC 9773: poll renewal info about twice a day absent Retry-After
_WAKE_MAX = 5.0  # the loop notices finished jobs at least this often
_CLIENT_CHECK = 12 * 3600.0  # origin-CA client certificates last a year: look twice a day
_CLIENT_RETRY = 600.0
_TEMPORARY_CHECK = 3600.0


def acme_sites(config: Config) -> list[SiteConfig]:
    return [s for s in config.sites if s.managed_certificate is not None and s.managed_certificate.acme is not None]


def import_sites(config: Config) -> list[SiteConfig]:
    return [s for s in config.sites if s.managed_certificate is not None and s.managed_certificate.source == "import"]


def needs_certmanager(config: Config) -> bool:
    """Whether this configuration has anything for the certificate manager to look after."""
    return bool(acme_sites(config) or import_sites(config) or origin_ca_client_sites(config))


def origin_ca_client_sites(config: Config) -> list[str]:
    """Sites presenting a client certificate from the origin CA to some pool: the manager keeps it renewed."""
    return [s.name for s in config.sites if any(p.client_certificate == ORIGIN_CA_CLIENT for p in s.pools)]


def usable_challenges(settings: AcmeSettings, config: Config) -> list[str]:
    """The site's challenges that this edge can answer (HTTP-01 needs an http listener, TLS-ALPN-01 an https one)."""
    listening = {"http-01": bool(config.server.http), "tls-alpn-01": bool(config.server.https)}
    return [c for c in settings.challenges if listening[c]]


class CertManager:
    """Decides, per ACME site, what to do next and does it (in a thread pool)."""

    def __init__(self, config: Config, store: Store, owner: str) -> None:
        self.config = config
        self.store = store
        self.owner = owner
        self.sites = {site.name: site for site in acme_sites(config)}
        # Jobs by name: one per ACME site, one per site presenting an origin-CA client certificate.
        self.jobs: dict[str, Callable[[], float]] = {
            f"acme:{name}": lambda name=name: self.maintain(name) for name in self.sites
        }
        for name in origin_ca_client_sites(config):
            self.jobs[f"client:{name}"] = lambda name=name: self.renew_client_certificate(name)
        for site in import_sites(config):
            self.jobs[f"temporary:{site.name}"] = lambda site=site: self.keep_temporary(site)
        self.wake_at = dict.fromkeys(self.jobs, 0.0)

    def run(self, parent: int | None = None) -> int:
        log.info("certificate manager started for %d ACME site(s)", len(self.sites))
        running: dict[Future[float], str] = {}
        requests = self.store.topic_version(RENEW_TOPIC)
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="acme") as pool:
            while True:
                if parent is not None and os.getppid() != parent:
                    log.error("control process is gone; certificate manager %d exits", os.getpid())
                    os._exit(1)  # threads in the middle of an order must not keep the process alive
                now = time.time()
                if self.store.topic_version(RENEW_TOPIC) != requests:
                    requests = self.store.topic_version(RENEW_TOPIC)
                    self.wake_at = dict.fromkeys(self.wake_at, 0.0)
                busy = set(running.values())
                for name, at in self.wake_at.items():
                    if at <= now and name not in busy:
                        running[pool.submit(self.jobs[name])] = name
                pending = [at for name, at in self.wake_at.items() if name not in running.values()]
                timeout = min([_WAKE_MAX, *(max(0.0, at - now) for at in pending)])
                if not running:  # wait() returns at once for no futures: sleep instead of spinning
                    time.sleep(timeout)
                    continue
                done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        self.wake_at[name] = future.result()
                    except Exception:
                        log.exception("%s: certificate maintenance failed unexpectedly", name)
                        self.wake_at[name] = time.time() + _BUSY_RETRY

    def keep_temporary(self, site: SiteConfig) -> float:
        """A site waiting for its first import keeps a valid temporary certificate (re-issued at half its life)."""
        try:
            ensure_temporary(self.store, site.name, site.hosts)
        except StoreError as exc:
            log.error("site %s: cannot renew the temporary certificate: %s", site.name, exc)
        return time.time() + _TEMPORARY_CHECK

    def renew_client_certificate(self, site: str) -> float:
        """Keep a site's origin-CA client certificate fresh; workers swap a renewed one in (topic ``origin-ca``)."""
        try:
            origin_ca.client_certificate_for_site(self.store, site)
        except (origin_ca.OriginCAError, StoreError) as exc:
            log.error("site %s: cannot renew the origin-CA client certificate: %s", site, exc)
            return time.time() + _CLIENT_RETRY
        return time.time() + _CLIENT_CHECK

    def maintain(self, name: str) -> float:
        """One look at a site: returns when to look again (wall-clock seconds)."""
        site = self.sites[name]
        settings = site.managed_certificate.acme  # type: ignore[union-attr]
        assert settings is not None
        now = time.time()
        try:
            stored = load_certificate(self.store, name)
            if needs_temporary(stored):
                stored = ensure_temporary(self.store, name, site.hosts)
            status = load_status(self.store, name)
        except StoreError as exc:
            log.error("site %s: %s", name, exc)
            return now + _BUSY_RETRY
        session: acme.Session | None = None
        if stored is not None and stored.source == "acme" and now >= (status.ari_next_check or 0.0):
            session = self._refresh_ari(name, settings, stored, status, now)
        due = order_due(stored, list(site.hosts), settings, status, now)
        if due > now:
            return min(due, now + settings.check_interval, status.ari_next_check or due)
        return self._order(site, settings, stored, session)

    def _refresh_ari(
        self, name: str, settings: AcmeSettings, stored: StoredCertificate, status: CertificateStatus, now: float
    ) -> acme.Session | None:
        """Ask the CA when to renew (RFC 9773); failures only postpone the next ask."""
        try:
            session = acme.open_session(self.store, settings)
            window = acme.renewal_info(session, stored.leaf)
        except acme.AcmeFailure as exc:
            log.warning("site %s: %s", name, exc.reason)
            status.ari_next_check = now + min(_ARI_DEFAULT_RECHECK, max(60.0, stored.lifetime / 10))
            save_status(self.store, name, status)
            return None
        if window is None:
            status.ari_next_check = now + _ARI_DEFAULT_RECHECK
        else:
            status.ari_renew_at = ari_choice(window.start.timestamp(), window.end.timestamp(), now)
            recheck = window.retry_after if window.retry_after is not None else _ARI_DEFAULT_RECHECK
            status.ari_next_check = now + min(recheck, max(1.0, stored.lifetime / 10))
            log.info("site %s: the CA suggests renewing between %s and %s", name, window.start, window.end)
        save_status(self.store, name, status)
        return session

    def _order(
        self, site: SiteConfig, settings: AcmeSettings, stored: StoredCertificate | None, session: acme.Session | None
    ) -> float:
        names = list(site.hosts)
        locks = [f"acme-order/{n}" for n in sorted(names)]
        taken = []
        for lock in locks:
            if not self.store.acquire(lock, self.owner, _LOCK_TTL):
                break
            taken.append(lock)
        if len(taken) < len(locks):
            for lock in taken:
                self.store.release(lock, self.owner)
            log.info("site %s: another process is ordering a certificate for these names; waiting", site.name)
            return time.time() + _BUSY_RETRY
        try:
            return self._order_locked(site, settings, stored, session, names)
        finally:
            for lock in taken:
                self.store.release(lock, self.owner)

    def _order_locked(
        self,
        site: SiteConfig,
        settings: AcmeSettings,
        stored: StoredCertificate | None,
        session: acme.Session | None,
        names: list[str],
    ) -> float:
        status = load_status(self.store, site.name)
        challenges = usable_challenges(settings, self.config)
        challenge = challenges[status.failures % len(challenges)]  # after a failure, try the next challenge type
        try:
            session = session or acme.open_session(self.store, settings)
            replaces = None
            if session.has_ari and stored is not None and stored.source == "acme":
                replaces = acme.ari_cert_id(stored.leaf)
            log.info("site %s: ordering a certificate for %s (%s)", site.name, ", ".join(names), challenge)
            issued = acme.order_certificate(session, self.store, names, settings, challenge, replaces)
            _check_usable(issued.chain_pem, issued.key_pem)
        except acme.AcmeFailure as exc:
            return self._failed(site, settings, stored, exc)
        _, _, _, not_before, not_after = leaf_facts(issued.chain_pem)
        renew_at = not_after - (not_after - not_before) * settings.renew_remaining
        fresh = save_certificate(
            self.store, site.name, "acme", issued.chain_pem, issued.key_pem, renew_at=renew_at,
            details={"order": issued.order_url, "directory": settings.directory, "challenge": challenge,
                     "profile": settings.profile or ""},
        )
        status.failures = 0
        status.last_error = None
        status.last_error_at = None
        status.next_attempt = None
        status.last_success_at = time.time()
        status.ari_renew_at = None
        status.ari_next_check = None
        status.renew_requested = False
        save_status(self.store, site.name, status)
        log.info("site %s: certificate issued by %s, valid until %s, serial %x; renewal due %s", site.name,
                 fresh.issuer, fresh.not_after.isoformat(), fresh.serial, renew_at.isoformat())
        return min(renew_at.timestamp(), time.time() + settings.check_interval)

    def _failed(
        self, site: SiteConfig, settings: AcmeSettings, stored: StoredCertificate | None, exc: acme.AcmeFailure
    ) -> float:
        status = load_status(self.store, site.name)
        status.failures += 1
        lifetime = stored.lifetime if stored is not None and stored.source == "acme" else None
        delay = backoff(status.failures, settings, retry_after=exc.retry_after, rate_limited=exc.rate_limited,
                        lifetime=lifetime)
        now = time.time()
        status.last_error = exc.reason
        status.last_error_at = now
        status.next_attempt = now + delay
        save_status(self.store, site.name, status)
        keeping = (
            f"keeping the certificate valid until {stored.not_after.isoformat()}"
            if stored is not None and stored.source != "temporary" and stored.not_after > datetime.now(UTC)
            else "serving a temporary certificate meanwhile"
        )
        log.error("site %s: certificate order failed (%d in a row): %s; next try in %.0f s, %s", site.name,
                  status.failures, exc.reason, delay, keeping)
        return now + delay


def _check_usable(chain_pem: bytes, key_pem: bytes) -> None:
    """Never store what OpenSSL would refuse: a CA answering garbage must not replace a working certificate."""
    try:
        load_pem_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain_pem, key_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise acme.AcmeFailure(f"the CA returned a certificate that does not load with its key: {exc}") from None


def manager_owner() -> str:
    """Who holds the order locks: this edge (host and supervisor), so a restarted manager takes its own locks back."""
    return f"{socket.gethostname()}:{os.getppid()}"


def run_certmanager(config: Config, store: Store) -> int:
    return CertManager(config, store, manager_owner()).run(parent=os.getppid())
