"""Helpers for the keyless engine tests: certificates of each key type, a local signer, drivers for real clients.

The local signer stands in for the key server: the tests' servers reach it only through ``SignatureNeeded``, and it
counts its calls so a test can show a resumed handshake asked for no signature.

``MemoryPair`` drives the engine against Python's ``ssl`` client over memory BIOs (a real OpenSSL client, no socket);
``EngineServer`` serves the engine on a loopback TCP socket (one thread per connection) for openssl, curl and
Python's ssl module.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.tls import signature_algorithm_params
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.keyless.engine import (
    ApplicationData,
    CloseNotify,
    Event,
    HandshakeComplete,
    KeylessServerConnection,
    ProtocolError,
    SignatureNeeded,
)
from tlsedge.tls.keyless.identity import KeylessIdentity
from tlsedge.tls.keyless.tickets import TicketKeys

NAME = "site.example"
TIMEOUT = 10.0


def new_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def leaf_pem(ca: LocalCA, key, names: tuple[str, ...] = (NAME,)) -> bytes:
    """A server certificate for ``names`` with ``key``'s public half, issued by ``ca`` (any key type)."""
    return ca.issue_for_key(names, key, days=1)


class LocalSigner:
    """The key server's stand-in: signs CertificateVerify input with a key the engine never sees; counts calls."""

    def __init__(self, key) -> None:
        self._key = key
        self.calls = 0
        self._lock = threading.Lock()

    def sign(self, need: SignatureNeeded) -> bytes:
        with self._lock:
            self.calls += 1
        assert need.payload.startswith(b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"), need.payload[:100]
        return self._key.sign(need.payload, *signature_algorithm_params(need.algorithm))


@dataclass
class Site:
    """A keyless site for tests: the identity the edge has, the signer the key server has, files for clients."""

    kind: str
    identity: KeylessIdentity
    signer: LocalSigner


def make_site(ca: LocalCA, kind: str, names: tuple[str, ...] = (NAME,)) -> Site:
    key = new_key(kind)
    pem = leaf_pem(ca, key, names)
    return Site(kind, KeylessIdentity.from_pem_chain(pem + ca.cert_pem), LocalSigner(key))


def write_ca(ca: LocalCA, directory: Path) -> Path:
    """The CA certificate as a file for ``openssl -CAfile`` and ``curl --cacert`` (its key stays in memory)."""
    path = directory / "keyless-ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


def client_context(ca: LocalCA, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def respond(engine: KeylessServerConnection, events: list[Event], signer: LocalSigner) -> list[Event]:
    """Answer each SignatureNeeded with the local signer; return all events, the answers' included."""
    done: list[Event] = []
    for event in events:
        done.append(event)
        if isinstance(event, SignatureNeeded):
            done.extend(engine.provide_signature(signer.sign(event)))
    return done


class MemoryPair:
    """Python's ssl client and the engine joined by memory: bytes move only when a test says so."""

    def __init__(
        self,
        site: Site,
        ca: LocalCA,
        *,
        context: ssl.SSLContext | None = None,
        tickets: TicketKeys | None = None,
        session: ssl.SSLSession | None = None,
        server_hostname: str = NAME,
        **engine_options,
    ) -> None:
        self.site = site
        self.context = context or client_context(ca, ["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = self.context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname,
                                            session=session)
        self.engine = KeylessServerConnection(site.identity, tickets=tickets, **engine_options)
        self.events: list[Event] = []

    def client_bytes(self) -> bytes:
        """What the client wrote since the last call (drives its handshake one step first)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.client.do_handshake()
        return self.outgoing.read()

    def to_engine(self, data: bytes) -> list[Event]:
        events = respond(self.engine, self.engine.receive(data), self.site.signer)
        self.events.extend(events)
        return events

    def to_client(self) -> bytes:
        data = self.engine.data_to_send()
        self.incoming.write(data)
        return data

    def handshake(self) -> list[Event]:
        """Run the handshake to its end on both sides; the engine's events."""
        for _ in range(8):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            self.to_engine(self.outgoing.read())
            self.to_client()
        self.to_engine(self.outgoing.read())  # the client's Finished
        self.to_client()  # the NewSessionTicket
        return self.events

    def client_send(self, data: bytes) -> list[Event]:
        self.client.write(data)
        return self.to_engine(self.outgoing.read())

    def server_send(self, data: bytes) -> bytes:
        """Send through the engine; what the client reads."""
        self.engine.send(data)
        self.to_client()
        received = bytearray()
        while len(received) < len(data):
            received += self.client.read(1 << 20)
        return bytes(received)


def of_type(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# -- a loopback TCP server around the engine ------------------------------------------------------------------------


@dataclass
class ConnectionLog:
    events: list[Event] = field(default_factory=list)
    signatures: int = 0

    @property
    def complete(self) -> HandshakeComplete | None:
        found = of_type(self.events, HandshakeComplete)
        return found[0] if found else None

    @property
    def error(self) -> ProtocolError | None:
        found = of_type(self.events, ProtocolError)
        return found[0] if found else None


class EngineServer:
    """The engine on 127.0.0.1: ``echo`` mode echoes lines (``bye`` closes, ``KEYUPDATE`` updates keys both ways),
    ``http`` mode answers one HTTP/1.1 request with ``body`` and closes."""

    def __init__(self, site: Site, *, mode: str = "echo", body: bytes = b"hello from keyless\n",
                 tickets: TicketKeys | None = None, **engine_options) -> None:
        self.site = site
        self.mode = mode
        self.body = body
        self.tickets = tickets if tickets is not None else TicketKeys.generate()
        self.engine_options = engine_options
        self.logs: list[ConnectionLog] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> EngineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(TIMEOUT)
        self._listener.close()
        self.wait()

    def wait(self) -> list[ConnectionLog]:
        """Wait for every connection so far to end (bounded); their logs."""
        for thread in list(self._threads):
            thread.join(TIMEOUT)
        return self.logs

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            log = ConnectionLog()
            self.logs.append(log)
            thread = threading.Thread(target=self._serve, args=(conn, log), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, log: ConnectionLog) -> None:
        engine = KeylessServerConnection(self.site.identity, tickets=self.tickets, **self.engine_options)
        request = bytearray()
        conn.settimeout(TIMEOUT)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                done = self._handle(engine, engine.receive(data), log, request)
                with contextlib.suppress(OSError):
                    conn.sendall(engine.data_to_send())
                if done:
                    return

    def _handle(self, engine: KeylessServerConnection, events: list[Event], log: ConnectionLog,
                request: bytearray) -> bool:
        """Act on events; True when the connection is over."""
        for event in events:
            log.events.append(event)
            if isinstance(event, SignatureNeeded):
                log.signatures += 1
                signature = self.site.signer.sign(event)
                if self._handle(engine, engine.provide_signature(signature), log, request):
                    return True
            elif isinstance(event, ApplicationData):
                if self.mode == "http":
                    request += event.data
                    if b"\r\n\r\n" in request:
                        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n"
                                "Content-Type: text/plain\r\nConnection: close\r\n\r\n").encode()
                        engine.send(head + self.body)
                        engine.close()
                        return True
                else:
                    request += event.data
                    if self._echo_lines(engine, request):
                        return True
            elif isinstance(event, CloseNotify):
                engine.close()
                return True
            elif isinstance(event, ProtocolError):
                return True
        return False

    @staticmethod
    def _echo_lines(engine: KeylessServerConnection, pending: bytearray) -> bool:
        """Echo each complete line; ``bye`` closes (True), ``KEYUPDATE`` updates keys both ways first."""
        while b"\n" in pending:
            end = pending.index(b"\n") + 1
            line = bytes(pending[:end])
            del pending[:end]
            if line.strip() == b"bye":
                engine.close()
                return True
            if line.strip() == b"KEYUPDATE":
                engine.update_keys(request_peer=True)
            engine.send(line)
        return False


def s_client(port: int, *args: str, stdin: str = "hello\nbye\n", servername: str = NAME) -> str:
    """``openssl s_client`` against the engine; stdout+stderr. ``-ign_eof``: it reads until the server closes
    (after ``bye``), so the NewSessionTicket is always read."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername, "-ign_eof", *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    return result.stdout + result.stderr


@dataclass
class ClientResult:
    """What Python's ssl client saw, taken before the socket closed."""

    version: str | None
    cipher: str | None
    alpn: str | None
    session: ssl.SSLSession | None
    reused: bool
    peer_cert: dict
    received: bytes


def python_client(port: int, context: ssl.SSLContext, *, session: ssl.SSLSession | None = None,
                  exchange: Callable[[ssl.SSLSocket], bytes] | None = None) -> ClientResult:
    """Connect with Python's ssl, run ``exchange`` (what it returns is ``received``), say ``bye``, read to the
    server's close (the ticket arrives meanwhile)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with context.wrap_socket(raw, server_hostname=NAME, session=session) as tls:
        received = exchange(tls) if exchange is not None else b""
        tls.sendall(b"bye\n")
        with contextlib.suppress(ssl.SSLError, OSError):
            while tls.recv(65536):
                pass
        cipher = tls.cipher()
        return ClientResult(tls.version(), cipher[0] if cipher else None, tls.selected_alpn_protocol(), tls.session,
                            tls.session_reused, tls.getpeercert() or {}, received)


def read_exactly(tls: ssl.SSLSocket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = tls.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


# -- ClientHellos built by hand, for what real clients never send -----------------------------------------------------


def _vector(length_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + _vector(2, body)


def ext_server_name(name: str) -> bytes:
    return extension(0, _vector(2, b"\x00" + _vector(2, name.encode())))


def ext_supported_versions(*versions: int) -> bytes:
    return extension(43, _vector(1, b"".join(v.to_bytes(2, "big") for v in versions)))


def ext_supported_groups(*groups: int) -> bytes:
    return extension(10, _vector(2, b"".join(g.to_bytes(2, "big") for g in groups)))


def ext_key_share(*shares: tuple[int, bytes]) -> bytes:
    return extension(51, _vector(2, b"".join(g.to_bytes(2, "big") + _vector(2, k) for g, k in shares)))


def ext_signature_algorithms(*algorithms: int) -> bytes:
    return extension(13, _vector(2, b"".join(a.to_bytes(2, "big") for a in algorithms)))


def ext_alpn(*protocols: str) -> bytes:
    return extension(16, _vector(2, b"".join(_vector(1, p.encode()) for p in protocols)))


def ext_psk_modes(*modes: int) -> bytes:
    return extension(45, _vector(1, bytes(modes)))


def ext_early_data() -> bytes:
    return extension(42, b"")


def ext_pre_shared_key(identities: list[tuple[bytes, int]], binders: list[bytes]) -> bytes:
    ids = _vector(2, b"".join(_vector(2, t) + age.to_bytes(4, "big") for t, age in identities))
    return extension(41, ids + _vector(2, b"".join(_vector(1, b) for b in binders)))


def x25519_share() -> tuple[int, bytes]:
    return 0x001D, x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


def p256_share() -> tuple[int, bytes]:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return 0x0017, public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def default_extensions(*, share: tuple[int, bytes] | None = None) -> list[bytes]:
    return [
        ext_server_name(NAME),
        ext_supported_versions(0x0304),
        ext_supported_groups(0x001D, 0x0017, 0x0018),
        ext_key_share(share or x25519_share()),
        ext_signature_algorithms(0x0403, 0x0804, 0x0807),
    ]


def client_hello(extensions: list[bytes] | None = None, *, random: bytes = b"\x11" * 32, session_id: bytes = b"",
                 suites: tuple[int, ...] = (0x1301, 0x1302, 0x1303), compression: bytes = b"\x00",
                 version: int = 0x0303) -> bytes:
    """A ClientHello handshake message; ``extensions`` default to a valid TLS 1.3 set with an X25519 share."""
    body = b"".join((
        version.to_bytes(2, "big"),
        random,
        _vector(1, session_id),
        _vector(2, b"".join(s.to_bytes(2, "big") for s in suites)),
        _vector(1, compression),
        _vector(2, b"".join(default_extensions() if extensions is None else extensions)),
    ))
    return b"\x01" + _vector(3, body)


def plaintext_records(message: bytes, size: int = 16384, content_type: int = 22) -> bytes:
    return b"".join(
        bytes((content_type, 3, 1)) + _vector(2, message[i : i + size]) for i in range(0, len(message), size)
    )
