"""Keyless sites in a worker: each site's public identity, its key-server pool, and the session-ticket keys.

Built once per worker generation (after the fork, since the key-server connections belong to one process). The
identity is also built by the control process before forking (``identities``), so a chain that cannot be served is
reported at start or reload, with the site and the file, instead of failing every handshake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tlsedge.config.errors import Problem
from tlsedge.config.schema import Config, SiteConfig
from tlsedge.pki.local_ca import private_file_problem
from tlsedge.tls.keyless.client import KeyserverPool
from tlsedge.tls.keyless.engine import KeylessServerConnection, SignatureNeeded
from tlsedge.tls.keyless.identity import KeylessIdentity
from tlsedge.tls.keyless.tickets import TicketKeys
from tlsedge.tls.keyless.transport import KeylessProtocol

log = logging.getLogger("tlsedge.keyless")

_TICKET_KEY_ID = b"tlsedge-kl1"


def identities(config: Config) -> tuple[dict[str, KeylessIdentity], list[Problem]]:
    """Every keyless site's identity from its public chain, or the problems that stop it being served."""
    found: dict[str, KeylessIdentity] = {}
    problems: list[Problem] = []
    for site in config.sites:
        if site.keyless is None:
            continue
        path = site.keyless.certificate
        try:
            found[site.name] = KeylessIdentity.from_pem_chain(path.read_bytes())
        except (OSError, ValueError) as exc:
            reason = f"{path}: cannot serve this chain keylessly: {exc}"
            problems.append(Problem(config.path, f"site[{site.name}].keyless.certificate", reason, site.name))
        unsafe = private_file_problem(site.keyless.client_certificate.key)
        if unsafe is not None:
            problems.append(Problem(config.path, f"site[{site.name}].keyless.client_certificate.key", unsafe,
                                    site.name))
    return found, problems


def ticket_keys(edge_ticket_keys: bytes) -> TicketKeys:
    """The keyless tickets' key, derived from the edge's own ticket keys: every worker derives the same one."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"tlsedge keyless session tickets").derive(edge_ticket_keys)
    return TicketKeys([(_TICKET_KEY_ID, key)])


class KeylessSite:
    """One keyless site in one worker."""

    def __init__(self, site: SiteConfig, identity: KeylessIdentity, tickets: TicketKeys) -> None:
        settings = site.keyless
        assert settings is not None
        self.name = site.name
        self.identity = identity
        self.tickets = tickets
        self.pool = KeyserverPool(
            settings.servers,
            pins=settings.pins,
            client_cert=settings.client_certificate.cert,
            client_key=settings.client_certificate.key,
            timeout=settings.timeout,
            ping_interval=settings.ping_interval,
            site=site.name,
        )
        self.started = False
        # Clients without SNI (reaching the site as default_site) sign for the site's first exact name.
        exact = [host for host in site.hosts if not host.startswith("*.")]
        self.default_name = exact[0] if exact else None

    def protocol(
        self,
        client_ip: str,
        server_name: str | None,
        app_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        alpn: list[str],
        unused: Callable[[], None],
    ) -> KeylessProtocol:
        """The protocol for one accepted connection (the key-server pool starts with the first one).

        ``unused`` runs once if the connection ends before the HTTP layer took it (a failed handshake).
        """
        if not self.started:
            self.started = True
            self.pool.start()
        server_name = server_name or self.default_name
        engine = KeylessServerConnection(
            self.identity, tickets=self.tickets, alpn_protocols=alpn, server_name=server_name
        )
        pool, key_id, site = self.pool, self.identity.key_id, self.name

        async def sign(need: SignatureNeeded) -> bytes:
            return await pool.sign(
                key_id=key_id, algorithm=need.algorithm, payload=need.payload, server_name=server_name,
                client_ip=client_ip,
            )

        def failed(reason: str) -> None:
            log.warning("site %s: keyless handshake with %s (SNI %s) failed: %s", site, client_ip, server_name, reason)

        return KeylessProtocol(engine, site, app_factory, sign, handshake_timeout, failed, unused)

    async def close(self) -> None:
        if self.started:
            await self.pool.close()
