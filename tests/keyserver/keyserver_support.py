"""Shared pieces of the key-server tests: a PKI made at run time, keyserver.toml files, a key server on 127.0.0.1:0,
edge pools, CertificateVerify inputs and an independent signature check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.x509.oid import NameOID

from tlsedge.config.schema import Listener
from tlsedge.keyserver.oplog import OpLog
from tlsedge.keyserver.server import Keyserver, load_setup
from tlsedge.pki.local_ca import LocalCA, private_key_pem, self_signed, write_private
from tlsedge.tls.keyless.client import KeyserverEndpoint, KeyserverPool, pin_for_certificate
from tlsedge.tls.keyless.wire import key_id_for_certificate

CV_PREFIX = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"

# The scheme each site key signs with in the tests (RSA is tried with all three PSS hashes where it matters).
SCHEMES = {"p256": 0x0403, "p384": 0x0503, "rsa": 0x0804, "ed25519": 0x0807}


def cv_payload(hash_size: int = 32, fill: int = 0xAB) -> bytes:
    """A TLS 1.3 server CertificateVerify input with a transcript hash of ``hash_size`` bytes."""
    return CV_PREFIX + bytes([fill]) * hash_size


@dataclass(frozen=True)
class SiteKey:
    kind: str
    names: tuple[str, ...]
    key_file: Path
    cert_pem: bytes

    @property
    def key_id(self) -> bytes:
        return key_id_for_certificate(self.cert_pem)


@dataclass(frozen=True)
class Edge:
    cert: Path
    key: Path


@dataclass(frozen=True)
class KsPki:
    dir: Path
    edges_ca: Path
    keyserver_cert: Path
    keyserver_key: Path
    pin: bytes
    edges: dict[str, Edge]  # "edge-1", "edge-2", "rogue" (from another CA), "spiffe" (a URI identity)
    sites: dict[str, SiteKey]  # by kind


def _site_cert(ca: LocalCA, key: Any, names: Sequence[str]) -> bytes:
    return ca.issue_for_key(names, key, days=30)


def _uri_edge(ca: LocalCA, directory: Path) -> Edge:
    """A client certificate whose only name is a SPIFFE-style URI (and no CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edges")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://edges/paris-1")]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    edge = Edge(directory / "spiffe.pem", directory / "spiffe.key")
    edge.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(edge.key, private_key_pem(key))
    return edge


def make_pki(directory: Path) -> KsPki:
    edges_ca = LocalCA.create("edges CA")
    rogue_ca = LocalCA.create("rogue CA")
    sites_ca = LocalCA.create("sites CA")
    edges_ca_pem = directory / "edges-ca.pem"
    edges_ca_pem.write_bytes(edges_ca.cert_pem)
    keyserver = self_signed(["keyserver.test"])
    keyserver.write(directory / "keyserver.pem", directory / "keyserver.key")
    edges = {}
    for name, ca in (("edge-1", edges_ca), ("edge-2", edges_ca), ("rogue", rogue_ca)):
        issued = ca.issue([f"{name}.example"], client=True, server=False)
        edges[name] = Edge(directory / f"{name}.pem", directory / f"{name}.key")
        issued.write(edges[name].cert, edges[name].key)
    edges["spiffe"] = _uri_edge(edges_ca, directory)
    sites = {}
    for kind, names in (("p256", ("shop.example", "*.shop.example")), ("rsa", ("rsa.example",))):
        issued = sites_ca.issue(list(names), key_type="ecdsa" if kind == "p256" else "rsa")
        sites[kind] = SiteKey(kind, names, directory / f"site-{kind}.key", issued.cert_pem)
        write_private(sites[kind].key_file, issued.key_pem)
    for kind, key, names in (
        ("p384", ec.generate_private_key(ec.SECP384R1()), ("p384.example",)),
        ("ed25519", ed25519.Ed25519PrivateKey.generate(), ("ed.example",)),
    ):
        sites[kind] = SiteKey(kind, names, directory / f"site-{kind}.key", _site_cert(sites_ca, key, names))
        write_private(sites[kind].key_file, private_key_pem(key))
    return KsPki(
        dir=directory,
        edges_ca=edges_ca_pem,
        keyserver_cert=directory / "keyserver.pem",
        keyserver_key=directory / "keyserver.key",
        pin=pin_for_certificate(keyserver.cert_pem),
        edges=edges,
        sites=sites,
    )


_SHARED: dict[str, KsPki] = {}


def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    """One PKI for the whole run (RSA keys take a while), behind each test module's ``ks_pki`` fixture."""
    if "pki" not in _SHARED:
        _SHARED["pki"] = make_pki(tmp_path_factory.mktemp("keyserver-pki"))
    return _SHARED["pki"]


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_config(
    directory: Path,
    pki: KsPki,
    *,
    edges: Sequence[str] = ("edge-1.example",),
    kinds: Sequence[str] = ("p256", "p384", "rsa", "ed25519"),
    rate: str = "10000/s",
    burst: int | None = None,
    listen: str = "127.0.0.1:9443",
    name: str = "keyserver.toml",
) -> Path:
    """A keyserver.toml in ``directory`` with one [[key]] per kind (names as in the PKI), log in ``directory``."""
    lines = [
        f"listen = [{json.dumps(listen)}]",
        f"certificate = {json.dumps(str(pki.keyserver_cert))}",
        f"certificate_key = {json.dumps(str(pki.keyserver_key))}",
        f"client_ca = {json.dumps(str(pki.edges_ca))}",
        'log = "ops.log"',
        f"rate = {json.dumps(rate)}",
        "threads = 2",
    ]
    if burst is not None:
        lines.append(f"burst = {burst}")
    for kind in kinds:
        site = pki.sites[kind]
        lines += ["", "[[key]]", f"file = {json.dumps(str(site.key_file))}", f"names = {_toml_list(site.names)}",
                  f"edges = {_toml_list(edges)}"]
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def running_keyserver(config_path: Path, port: int = 0) -> AsyncIterator[tuple[Keyserver, int]]:
    """The key server of ``config_path`` listening on 127.0.0.1 (a free port unless given); closed (log flushed) on
    exit, unless the test closed it already."""
    setup = load_setup(config_path)
    setup = replace(setup, config=replace(setup.config, listen=(Listener("127.0.0.1", port),)))
    server = Keyserver(setup, OpLog(setup.config.log))
    addresses = await server.start()
    try:
        yield server, addresses[0][1]
    finally:
        await server.close()


@contextlib.contextmanager
def keyserver_in_thread(config_path: Path) -> Iterator[int]:
    """The key server on its own asyncio loop in a thread, for clients running on another loop (uvloop)."""
    started: queue.Queue[int | BaseException] = queue.Queue()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        try:
            async with running_keyserver(config_path) as (_, port):
                stop.append(asyncio.Event())
                started.put(port)
                await stop[0].wait()
        except BaseException as exc:
            started.put(exc)
            raise

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    port = started.get(timeout=10)
    if isinstance(port, BaseException):
        raise port
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=10)
        loop.close()


def make_pool(pki: KsPki, ports: Sequence[int], *, edge: str = "edge-1", pin: bytes | None = None,
              timeout: float = 2.0, ping_interval: float = 5.0) -> KeyserverPool:
    return KeyserverPool(
        [KeyserverEndpoint("127.0.0.1", port) for port in ports],
        pins=[pin if pin is not None else pki.pin],
        client_cert=pki.edges[edge].cert,
        client_key=pki.edges[edge].key,
        timeout=timeout,
        ping_interval=ping_interval,
        site="shop",
    )


def edge_context(pki: KsPki, edge: str | None = "edge-1") -> ssl.SSLContext:
    """A raw client context for hand-made frames: TLS 1.3, the edge's certificate (or none), no server check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if edge is not None:
        context.load_cert_chain(pki.edges[edge].cert, pki.edges[edge].key)
    return context


def verify(cert_pem: bytes, algorithm: int, payload: bytes, signature: bytes) -> None:
    """Check a TLS 1.3 signature with the certificate's public key (raises InvalidSignature); written apart from
    the key server's signing code so both are not wrong the same way."""
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    if algorithm in (0x0403, 0x0503):
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256() if algorithm == 0x0403 else hashes.SHA384()))
    elif algorithm in (0x0804, 0x0805, 0x0806):
        digest = {0x0804: hashes.SHA256(), 0x0805: hashes.SHA384(), 0x0806: hashes.SHA512()}[algorithm]
        public.verify(signature, payload, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    elif algorithm == 0x0807:
        public.verify(signature, payload)
    else:
        raise AssertionError(f"no verifier for 0x{algorithm:04x}")


def oplog_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run a test coroutine on a fresh loop with an overall bound."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
