"""Helpers for the end-to-end tests of keyless TLS 1.3 (issue 7): the three PKIs involved, ``tlsedge keyserver``
processes, edge configs with keyless sites, TLS 1.3 clients and searches for private-key bytes.

Three CAs meet here, as in a real deployment: the *site CA* issues the certificates clients verify (the suite's
``pki`` CA, so ``Edge.curl`` and ``Edge.conn`` trust them as they are); the *edges CA* issues the edges' client
certificates, which the key server trusts (``client_ca``); the key server's own certificate is self-signed and
pinned by the edge. A *rogue* CA issues an edge certificate the key server must refuse.

Private keys of keyless sites live only in the key server's directory; ``key_secrets`` lists the byte strings whose
presence anywhere else (the edge's state, logs, worker memory) would show a copy of one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from e2e_support import RawConn, Response, free_port, site, stop_process, wait_for

from tlsedge.pki.local_ca import LocalCA, private_key_pem, self_signed, write_private
from tlsedge.tls.keyless.client import format_pin, pin_for_certificate

KEY_KINDS = ("p256", "p384", "rsa", "ed25519")
EDGE_IDENTITY = "edge-1.keyless.test"
# The ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3), as openssl -msg prints it: hex pairs.
HRR_RANDOM_HEX = "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
_HEX_LINE = re.compile(r"^\s+((?:[0-9a-f]{2}[ -]?)+)\s*$")


# ---------------------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pair:
    """A certificate file and its key file (mode 0600)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class SiteKey:
    """A keyless site's key: the public chain the edge gets, the key file only the key server reads."""

    kind: str
    host: str
    chain: Path
    key_file: Path
    private_key: PrivateKeyTypes


def _leaf(ca: LocalCA, key: PrivateKeyTypes, names: list[str], *, client: bool = False) -> bytes:
    """A server (or client-only) leaf signed by ``ca`` for any key type."""
    return ca.issue_for_key(names, key, days=30, server=not client, client=client)


def _new_key(kind: str) -> PrivateKeyTypes:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


class KeylessPki:
    """The edges CA with the edge's client certificate (and a rogue one), the key server's pinned certificate, and
    site keys made on demand with certificates from ``site_ca``."""

    def __init__(self, directory: Path, site_ca: LocalCA) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.site_ca = site_ca
        self.edges_ca = LocalCA.create("keyless edges CA")
        self.edges_ca_pem = directory / "edges-ca.pem"
        self.edges_ca_pem.write_bytes(self.edges_ca.cert_pem)
        self.edge = self._client(self.edges_ca, EDGE_IDENTITY, "edge")
        self.rogue_edge = self._client(LocalCA.create("rogue edges CA"), EDGE_IDENTITY, "rogue-edge")
        issued = self_signed(["keys.keyless.test"])
        self.keyserver = Pair(directory / "keyserver.pem", directory / "keyserver.key")
        issued.write(self.keyserver.cert, self.keyserver.key)
        self.pin = format_pin(pin_for_certificate(issued.cert_pem))
        other = self_signed(["other-keys.keyless.test"])
        self.wrong_pin = format_pin(pin_for_certificate(other.cert_pem))

    def _client(self, ca: LocalCA, identity: str, stem: str) -> Pair:
        pair = Pair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        ca.issue([identity], client=True, server=False).write(pair.cert, pair.key)
        return pair

    def site_key(self, kind: str, host: str) -> SiteKey:
        """A new key of ``kind`` (p256, p384, rsa, ed25519) for ``host``; the key file sits in ``keys/``, which only
        key servers read."""
        key = _new_key(kind)
        chain = self.dir / f"{host}.pem"
        chain.write_bytes(_leaf(self.site_ca, key, [host]))
        key_file = self.dir / "keys" / f"{host}.key"
        write_private(key_file, private_key_pem(key))
        return SiteKey(kind, host, chain, key_file, key)


def key_secrets(key: PrivateKeyTypes) -> dict[str, bytes]:
    """Byte strings that only a copy of ``key`` contains: a line of its PEM body with secret bits in it (the first,
    but for RSA a middle one: an RSA PEM starts with the public modulus), 64 characters of the base64 of
    the whole PEM file (how the edge's store keeps keys), its DER (PKCS#8 and the traditional form), and the secret
    numbers themselves, big-endian (serialised forms) and little-endian (how an OpenSSL BIGNUM sits in memory on a
    little-endian machine). For RSA the first 64 bytes of the prime p."""
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    pem = private_key_pem(key)
    body = pem.splitlines()[1:-1]
    line = body[len(body) // 2] if isinstance(key, rsa.RSAPrivateKey) else body[0]
    secrets = {"pem": line, "pem-base64": base64.b64encode(pem)[40:104], "der-pkcs8": pkcs8}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        scalar = key.private_numbers().private_value.to_bytes(size, "big")
        secrets |= {"ec-scalar": scalar, "ec-scalar-le": scalar[::-1]}
    elif isinstance(key, rsa.RSAPrivateKey):
        p = key.private_numbers().p
        big = p.to_bytes((p.bit_length() + 7) // 8, "big")
        secrets |= {"rsa-p": big[:64], "rsa-p-le": big[::-1][:64]}
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        secrets["ed25519-seed"] = key.private_bytes_raw()
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        secrets["der-traditional"] = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    return secrets


def load_key(path: Path) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


# ---------------------------------------------------------------------------------------------------------- key server


class KeyserverProcess:
    """One ``tlsedge keyserver -c keyserver.toml`` with its own directory, port, operation log and stderr."""

    def __init__(self, directory: Path, kpki: KeylessPki, keys: list[SiteKey], edges: list[str] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = directory / "keyserver.toml"
        self.oplog_path = directory / "ops.log"
        self.stderr_path = directory / "stderr.txt"
        allowed = json.dumps(edges or [EDGE_IDENTITY])
        lines = [
            f'listen = ["{self.address}"]',
            f"certificate = {json.dumps(str(kpki.keyserver.cert))}",
            f"certificate_key = {json.dumps(str(kpki.keyserver.key))}",
            f"client_ca = {json.dumps(str(kpki.edges_ca_pem))}",
            f"log = {json.dumps(str(self.oplog_path))}",
            'rate = "1000/s"',
            "threads = 2",
        ]
        for key in keys:
            lines += ["", "[[key]]", f"file = {json.dumps(str(key.key_file))}",
                      f"names = {json.dumps([key.host])}", f"edges = {allowed}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> KeyserverProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> KeyserverProcess:
        """Start the process without waiting (several key servers start side by side, then ``wait_ready``)."""
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tlsedge", "keyserver", "-c", str(self.config)],
                stdout=err, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir,
            )
        return self

    def wait_ready(self, timeout: float = 10.0) -> KeyserverProcess:
        """Until the key server says it listens on its port: a port that merely accepts could be another process's
        (ports are picked free, then bound later), and a probe connection would log a refused handshake."""
        listening = f"key server listening on {self.address}"

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"key server exited with {self.proc.returncode}:\n{self.stderr()}")
            return listening in self.stderr()

        wait_for(up, timeout, what=f"the key server on {self.address}")
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to the edges, no final log flush (as when a machine dies)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def oplog(self) -> list[dict[str, Any]]:
        if not self.oplog_path.exists():
            return []
        entries = []
        for line in self.oplog_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def signs(self, sni: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        """The ``sign`` lines written so far (the log is flushed about once a second), for one SNI or all, made at
        or after ``since`` (a ``time.time()``)."""
        return [e for e in self.oplog() if e.get("op") == "sign" and (sni is None or e.get("sni") == sni)
                and datetime.fromisoformat(e["time"]).timestamp() >= since]


# ---------------------------------------------------------------------------------------------------------- edge config


def keyless_site(name: str, key: SiteKey, origin_url: str, servers: list[KeyserverProcess], pin: str,
                 client: Pair, **keyless: Any) -> dict[str, Any]:
    """A ``mode = "keyless"`` ``[[site]]`` for ``key.host`` in front of ``origin_url``."""
    table = {
        "certificate": str(key.chain),
        "servers": [ks.address for ks in servers],
        "pins": [pin],
        "client_certificate": {"cert": str(client.cert), "key": str(client.key)},
        **keyless,
    }
    return site(name, [key.host], [origin_url], None, mode="keyless", keyless=table,
                origin={"connect_timeout": "2s", "response_timeout": "3s"})


# ---------------------------------------------------------------------------------------------------------- clients


def tls13_context(ca_pem: Path) -> ssl.SSLContext:
    """A verifying client context that offers TLS 1.3 only (Python's ssl would otherwise offer 1.2 as well)."""
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Tls13Conn(RawConn):
    """A Python ssl TLS 1.3 client with RawConn's strict HTTP reader (it sets the ``sock``, ``buf`` and ``eof`` that
    reader uses); ``session`` resumes, ``nodelay=False`` keeps Nagle on (as many clients do), which is what makes a
    missing NewSessionTicket cost ~40 ms."""

    def __init__(self, port: int, host: str, ca_pem: Path, *, session: ssl.SSLSession | None = None,
                 context: ssl.SSLContext | None = None, nodelay: bool = True, timeout: float = 5.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
        ctx = context or tls13_context(ca_pem)
        try:
            self.sock = ctx.wrap_socket(sock, server_hostname=host, session=session)
        except BaseException:
            sock.close()
            raise
        self.buf = bytearray()
        self.eof = False
        self.host = host

    def get(self, path: str = "/") -> Response:
        return self.request("GET", path, host=self.host)


def s_client_hex_after(output: str, marker: str) -> list[str]:
    """The hex dumps openssl ``-msg`` prints after each line containing ``marker`` (joined, no spaces)."""
    dumps: list[str] = []
    current: list[str] | None = None
    for line in output.splitlines():
        if marker in line:
            current = []
            dumps.append("")
            continue
        match = _HEX_LINE.match(line) if current is not None else None
        if match:
            current.append(match.group(1).replace(" ", "").replace("-", ""))
            dumps[-1] = "".join(current)
        else:
            current = None
    return dumps


# ---------------------------------------------------------------------------------------------------------- searches


def files_containing(root: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """``{file: [needle names]}`` for every file under ``root`` holding one of ``needles``."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = [name for name, needle in needles.items() if needle in data]
        if hits:
            found[str(path)] = hits
    return found


def memory_containing(pid: int, needles: dict[str, bytes]) -> set[str]:
    """Names of ``needles`` found in the readable memory of process ``pid`` (/proc/pid/maps + /proc/pid/mem).

    Needs ptrace rights over the process (root, or its parent under Yama scope 0/1): PermissionError otherwise.
    Regions that cannot be read (device mappings, [vvar]) are skipped.
    """
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if fields[1][0] == "r" and name not in ("[vvar]", "[vsyscall]"):
            regions.append((start, end))
    found: set[str] = set()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end in regions:
            try:
                data = os.pread(fd, end - start, start)
            except OSError:
                continue
            found.update(name for name, needle in needles.items() if name not in found and needle in data)
    finally:
        os.close(fd)
    return found
