"""The key server's network side: an asyncio mutual-TLS server answering SIGN and PING frames from edges.

Each edge keeps one connection and sends many requests on it; every request is checked (`policy`), signed on a thread
pool sized to the cores (an RSA signature takes about a millisecond of CPU, which would stall every other edge if it
ran on the event loop), and answered by id as soon as its signature is ready, in whatever order that is.

The TLS handshake is run explicitly after accepting (``start_tls``) rather than by the listener, because asyncio and
uvloop drop a failed listener handshake silently; here the failure reaches us, so an edge with a wrong or absent
client certificate is named in the operation log and on stderr. TLS 1.3 only, client certificates required and
verified against ``client_ca``; the edge's identity comes from that verified certificate.

It runs on asyncio's own event loop, not uvloop: uvloop starts reading an accepted connection right after
``connection_made`` even when the protocol paused it there, so the ClientHello would race ``start_tls``. The key
server's cost is the signatures (on threads), not the loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import signal
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tlsedge.config.errors import ConfigError, Problem
from tlsedge.config.values import bind_address
from tlsedge.keyserver.config import KeyserverConfig, load_config
from tlsedge.keyserver.keys import SigningKey, load_keyring
from tlsedge.keyserver.oplog import OpLog
from tlsedge.keyserver.policy import (
    RATE_REFUSAL,
    RateLimiter,
    Refusal,
    check_algorithm,
    check_edge,
    check_payload,
    check_server_name,
    edge_identities,
)
from tlsedge.pki.local_ca import private_file_problem
from tlsedge.tls.keyless.wire import (
    MAX_FRAME,
    ErrorCode,
    Frame,
    FrameError,
    FrameReader,
    MessageError,
    Opcode,
    SignRequest,
    decode_ping,
    decode_sign,
    encode_error,
    encode_ok,
    encode_pong,
    scheme_name,
)

log = logging.getLogger("tlsedge.keyserver")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0  # edges ping every few seconds; a silent connection is a dead one
WRITE_TIMEOUT = 10.0  # an edge that does not read its answers for this long is dropped
MAX_IN_FLIGHT = 256  # per connection: beyond this the connection is not read until answers go out
READ_SIZE = 64 * 1024
MAX_EARLY_DATA = MAX_IN_FLIGHT * MAX_FRAME
SHUTDOWN_GRACE = 5.0  # signatures under way get this long to be answered at shutdown


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything a reload replaces at once: requests see either the old setup or the new one, never a mix."""

    config: KeyserverConfig
    keyring: dict[bytes, SigningKey]
    context: ssl.SSLContext
    limiter: RateLimiter


def server_context(config: KeyserverConfig) -> ssl.SSLContext:
    """The mutual-TLS server context (TLS 1.3 only, client certificate required); `ConfigError` names the file."""
    problems = []
    problem = private_file_problem(config.certificate_key)
    if problem is not None:
        problems.append(Problem(config.path, "certificate_key", problem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0  # edges keep their connection; tickets would only cost a signature each
    if not problems:
        try:
            context.load_cert_chain(config.certificate, config.certificate_key)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(config.path, "certificate", f"cannot use {config.certificate} with "
                                    f"{config.certificate_key}: {_tls_reason(exc)}; give a PEM certificate and "
                                    "its own private key"))
    try:
        context.load_verify_locations(cafile=config.client_ca)
    except (ssl.SSLError, OSError) as exc:
        problems.append(Problem(config.path, "client_ca", f"cannot load {config.client_ca}: {_tls_reason(exc)}; give "
                                "the PEM certificate of the CA that issues the edges' client certificates"))
    if problems:
        raise ConfigError(problems)
    return context


def load_setup(path: Path) -> Setup:
    """Configuration, keys and TLS context from ``path``; `ConfigError` lists every problem."""
    config = load_config(path)
    problems = []
    keyring: dict[bytes, SigningKey] = {}
    context = None
    try:
        keyring = load_keyring(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        context = server_context(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or context is None:
        raise ConfigError(problems)
    return Setup(config, keyring, context, RateLimiter(config.rate, config.burst))


class Keyserver:
    """Listens on the configured addresses and serves edges until `close`."""

    def __init__(self, setup: Setup, oplog: OpLog) -> None:
        self.setup = setup
        self.oplog = oplog
        self.closing = False
        self.pool = ThreadPoolExecutor(max_workers=setup.config.threads, thread_name_prefix="keyserver-sign")
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listener (OSError when one cannot be bound) and start the operation log's flusher; returns
        the bound addresses (port 0 in a listener gets a free port, for tests)."""
        loop = asyncio.get_running_loop()
        if type(loop).__module__.startswith("uvloop"):
            raise RuntimeError("the key server needs asyncio's own event loop (uvloop races start_tls)")
        self.oplog.start()
        addresses = []
        for listener in self.setup.config.listen:
            server = await loop.create_server(lambda: _Connection(self), str(bind_address(listener)), listener.port)
            self._servers.append(server)
            addresses.extend(sock.getsockname()[:2] for sock in server.sockets)
        self.oplog.record("start", listen=", ".join(_address(a) for a in addresses), keys=len(self.setup.keyring))
        return addresses

    def reload(self, path: Path) -> bool:
        """Swap in the configuration at ``path``; a bad one keeps the old setup and says why on stderr."""
        try:
            setup = load_setup(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload refused; the previous configuration stays in force")
            self.oplog.record("reload", result="refused", reason=f"{len(exc.problems)} problem(s); see stderr")
            return False
        old = self.setup.config
        try:
            self.oplog.reopen(setup.config.log)
        except OSError as exc:
            log.error("reload refused: cannot open the operation log %s: %s", setup.config.log, exc)
            return False
        if setup.config.listen != old.listen or setup.config.threads != old.threads:
            log.warning("reload: listen and threads take effect only when the key server restarts")
        if (setup.config.rate, setup.config.burst) == (old.rate, old.burst):
            setup = Setup(setup.config, setup.keyring, setup.context, self.setup.limiter)
        self.setup = setup
        log.info("reloaded %s: %d key(s)", path, len(setup.keyring))
        self.oplog.record("reload", result="ok", keys=len(setup.keyring))
        return True

    async def close(self) -> None:
        """Stop accepting, give signatures under way a moment to be answered, close every connection, flush the log.
        A second call does nothing."""
        if self.closing:
            return
        self.closing = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while any(c.in_flight for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        ended = [connection.ended for connection in self.connections]
        for connection in list(self.connections):
            connection.close("key server shutting down")
        if ended:
            await asyncio.wait(ended, timeout=1.0)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.oplog.record("stop")
        await self.oplog.close()


class _Connection(asyncio.Protocol):
    """One edge's connection: the TLS handshake, then frames in and answers out by id.

    Reading stops from the moment of accepting until ``start_tls`` takes over, so no byte of the ClientHello can
    reach this protocol as plaintext; from then on only decrypted data reaches ``data_received``. Reading also stops
    while ``MAX_IN_FLIGHT`` signatures are under way or the edge is not reading its answers.
    """

    def __init__(self, server: Keyserver) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.identities: tuple[str, ...] = ()
        self.edge = "(handshake)"
        self.in_flight = 0
        self.requests = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._frames = FrameReader()
        self._reason: str | None = None
        self._tls = False
        self._early: list[bytes] = []
        self._write_paused = False
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        transport.pause_reading()
        self.peer = _address(transport.get_extra_info("peername"))
        self.server.connections.add(self)
        self._handshaking = self._loop.create_task(self._handshake(transport), name=f"keyserver-handshake {self.peer}")

    async def _handshake(self, plain: asyncio.Transport) -> None:
        server = self.server
        try:
            transport = await self._loop.start_tls(
                plain, self, server.setup.context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, OSError) as exc:
            reason = _tls_reason(exc)
            log.warning("edge %s refused at the TLS handshake: %s", self.peer, reason)
            server.oplog.record("handshake", peer=self.peer, result="refused", reason=reason)
            self._end(f"handshake failed: {reason}")
            plain.abort()
            return
        if self.ended.done():
            self._end("closed during the handshake")
            plain.abort()
            return
        self.transport = transport
        self._tls = True
        ssl_object = transport.get_extra_info("ssl_object")
        self.identities = edge_identities(ssl_object.getpeercert() or {}) if ssl_object is not None else ()
        self.edge = self.identities[0] if self.identities else "(unnamed)"
        server.oplog.record("connect", edge=self.edge, peer=self.peer)
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(IDLE_TIMEOUT, self._check_idle)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def _early_data(self, data: bytes) -> None:
        """Requests sent with the edge's last handshake flight are decrypted before ``start_tls`` returns (the
        identity is not known yet): keep them, within a bound, for the end of `_handshake`."""
        self._early.append(data)
        if sum(map(len, self._early)) > MAX_EARLY_DATA:
            self._early = []
            self.close("too much data before the handshake finished")

    def data_received(self, data: bytes) -> None:
        if not self._tls:
            self._early_data(data)
            return
        self._last_read = self._loop.time()
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            for frame in exc.frames:
                self._handle(frame)
            self._send(encode_error(exc.request_id, exc.code, str(exc)))
            self.close(f"protocol error: {exc}")
            return
        for frame in frames:
            self._handle(frame)
        self._flow()

    def eof_received(self) -> bool:
        self._reason = self._reason or "closed by the edge"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tls:
            reason = self._reason or (_tls_reason(exc) if exc else "closed by the edge")
            self.server.oplog.record("disconnect", edge=self.edge, peer=self.peer, reason=reason,
                                     requests=self.requests)
        self._end(self._reason or "connection lost")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(WRITE_TIMEOUT, self._check_writes)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()

    def close(self, reason: str) -> None:
        self._reason = self._reason or reason
        if self.transport is not None:
            self.transport.close()

    def _end(self, reason: str) -> None:
        self._reason = self._reason or reason
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if not self.ended.done():
            self.ended.set_result(None)

    def _flow(self) -> None:
        """Read only while answers can go out and the edge has room for more requests in flight."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._write_paused or self.in_flight >= MAX_IN_FLIGHT:
            transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last_read
        if idle >= IDLE_TIMEOUT:
            self.close("idle")
        else:
            self._timer = self._loop.call_later(IDLE_TIMEOUT - idle, self._check_idle)

    def _check_writes(self) -> None:
        if self._write_paused:
            self.close("the edge does not read its answers")
            if self.transport is not None:
                self.transport.abort()
        else:
            self._check_idle()

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handle(self, frame: Frame) -> None:
        self.requests += 1
        started = time.perf_counter()
        try:
            if frame.opcode == Opcode.SIGN:
                self._sign(decode_sign(frame), frame.request_id, started)
            elif frame.opcode == Opcode.PING:
                self._send(encode_pong(frame.request_id, decode_ping(frame)))
            else:
                raise MessageError(ErrorCode.UNKNOWN_OPCODE, f"opcode 0x{frame.opcode:02x} is not a request",
                                   frame.request_id)
        except MessageError as exc:
            self._send(encode_error(frame.request_id, exc.code, str(exc)))
            self.server.oplog.record("request", edge=self.edge, peer=self.peer, opcode=frame.opcode,
                                     result=f"refused: {exc.code.name.lower()}", reason=str(exc))

    def _sign(self, request: SignRequest, request_id: int, started: float) -> None:
        server = self.server
        setup = server.setup
        key = setup.keyring.get(request.key_id)
        refusal = self._refusal(setup, key, request)
        if refusal is not None:
            self._send(encode_error(request_id, refusal.code, refusal.reason))
            self._record(request, started, f"refused: {refusal.code.name.lower()}", refusal.reason)
            return
        assert key is not None  # _refusal refuses a missing key
        self.in_flight += 1
        future = self._loop.run_in_executor(server.pool, key.sign, request.algorithm, request.payload)
        future.add_done_callback(functools.partial(self._signed, request, request_id, started))

    def _refusal(self, setup: Setup, key: SigningKey | None, request: SignRequest) -> Refusal | None:
        """The first rule the request breaks, in an order that tells an edge nothing it may not know: an edge not
        allowed to use a key learns nothing about the key's names; the rate counts only requests worth signing."""
        if self.server.closing:
            return Refusal(ErrorCode.SHUTTING_DOWN, "the key server is shutting down; use another")
        if key is None:
            return Refusal(ErrorCode.KEY_NOT_FOUND, f"no key with id {request.key_id[:8].hex()}")
        refusal = (
            check_edge(key.edges, self.identities)
            or check_server_name(key.names, request.server_name)
            or check_payload(request.payload)
            or check_algorithm(key.kind, request.algorithm)
        )
        if refusal is None and not setup.limiter.allow(self.edge, self._loop.time()):
            return RATE_REFUSAL
        return refusal

    def _signed(self, request: SignRequest, request_id: int, started: float, future: asyncio.Future[bytes]) -> None:
        self.in_flight -= 1
        self._flow()
        if future.cancelled():
            self._record(request, started, "error", "cancelled at shutdown")
            return
        error = future.exception()
        if error is None:
            self._send(encode_ok(request_id, future.result()))
            self._record(request, started, "ok", None)
            return
        log.error("signing with key %s failed: %r", request.key_id[:8].hex(), error)
        self._send(encode_error(request_id, ErrorCode.INTERNAL, "signing failed on the key server"))
        self._record(request, started, "error", f"signing failed: {type(error).__name__}")

    def _record(self, request: SignRequest, started: float, result: str, reason: str | None) -> None:
        self.server.oplog.record(
            "sign",
            edge=self.edge,
            peer=self.peer,
            sni=request.server_name,
            client_ip=request.client_ip,
            key=request.key_id[:8].hex(),
            alg=scheme_name(request.algorithm),
            payload_sha256=hashlib.sha256(request.payload).hexdigest()[:16],
            result=result,
            reason=reason,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )


async def serve(path: Path) -> int:
    """Run the key server from ``path`` until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit status."""
    try:
        setup = load_setup(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        log.error("%d problem(s) found; not starting", len(exc.problems))
        return 1
    try:
        oplog = OpLog(setup.config.log)
    except OSError as exc:
        log.error("cannot open the operation log %s: %s", setup.config.log, exc)
        return 1
    server = Keyserver(setup, oplog)
    try:
        addresses = await server.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await server.close()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload, path)
    shown = ", ".join(_address(a) for a in addresses)
    log.info("key server listening on %s with %d key(s); operation log %s", shown, len(setup.keyring), oplog.path)
    await stop.wait()
    log.info("stopping")
    await server.close()
    return 0


def _address(address: tuple | None) -> str:
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_reason(exc: BaseException) -> str:
    """A short reason from an ssl/OS error: OpenSSL's reason and verification message when there are."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
