"""Tests for the sans-IO ClientHello parser, on hellos captured from real clients (openssl, curl, Python ssl).

The captures come from a raw TCP listener on 127.0.0.1 that records the first bytes of each connection and closes it;
the client's handshake then fails, which is expected. Synthetic variants (re-framed records, padding, a large key
share, malformed fields) are built from those captures so the byte layout stays real.
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tlsedge.tls.clienthello import (
    DEFAULT_MAX_SIZE,
    NEED_MORE,
    ClientHello,
    Invalid,
    NeedMore,
    alert_record,
    is_grease,
    parse_client_hello,
    unrecognized_name_alert,
)

pytestmark = pytest.mark.timeout(30)

HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_CURL = shutil.which("curl") is not None

TLS12, TLS13 = 0x0303, 0x0304


# --- capturing real hellos --------------------------------------------------------------------------------------------


def _read_hello(conn: socket.socket) -> bytes:
    """Read until the parser says the hello is complete (or not a hello), or the peer stops sending."""
    conn.settimeout(5)
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return buf
        buf += data
        if not isinstance(parse_client_hello(buf, max_size=1 << 20), NeedMore):
            return buf


def capture(start_client: Callable[[int], Callable[[], None]], answer: bytes = b"") -> bytes:
    """Listen on an ephemeral port, run the client, return the first bytes it sent (optionally answer them)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        wait = start_client(listener.getsockname()[1])
        conn, _ = listener.accept()
        with conn:
            hello = _read_hello(conn)
            if answer:
                conn.sendall(answer)
        wait()
    return hello


def command(*argv: str) -> Callable[[int], Callable[[], None]]:
    """A client that is a subprocess; ``{port}`` in its arguments is replaced."""

    def start(port: int) -> Callable[[], None]:
        args = [a.replace("{port}", str(port)) for a in argv]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def wait() -> None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return wait

    return start


def s_client(*args: str) -> Callable[[int], Callable[[], None]]:
    return command("openssl", "s_client", "-connect", "127.0.0.1:{port}", *args)


@dataclass
class PyClient:
    """A Python ``ssl`` client in a thread; ``error`` is what its handshake raised (it always fails here)."""

    server_hostname: str | None
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    error: BaseException | None = None

    def __call__(self, port: int) -> Callable[[], None]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))

        def run() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                try:
                    ctx.wrap_socket(sock, server_hostname=self.server_hostname).close()
                except (OSError, ssl.SSLError) as exc:
                    self.error = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return lambda: thread.join(timeout=5)


CLIENTS: dict[str, Callable[[int], Callable[[], None]]] = {
    "python_sni": PyClient("Py.Example"),
    "python_no_sni": PyClient(None),
}
if HAVE_OPENSSL:
    CLIENTS |= {
        "openssl13": s_client("-tls1_3", "-alpn", "h2,http/1.1", "-servername", "x.example"),
        "openssl12": s_client("-tls1_2", "-alpn", "h2,http/1.1", "-servername", "x.example"),
        "openssl12_all_ciphers": s_client("-tls1_2", "-cipher", "ALL", "-noservername"),
        "openssl_upper_dot": s_client("-tls1_3", "-servername", "WWW.Example.COM."),
        # An 8192-bit finite-field key share is 1024 bytes: a real hello about the size post-quantum shares make.
        "openssl_ffdhe8192": s_client("-tls1_3", "-groups", "ffdhe8192", "-servername", "big.example"),
    }
if HAVE_CURL:
    CLIENTS["curl"] = command(
        "curl", "-sk", "--max-time", "5", "--resolve", "curl.example:{port}:127.0.0.1", "https://curl.example:{port}/"
    )


@pytest.fixture(scope="module")
def hellos() -> dict[str, bytes]:
    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        futures = {name: pool.submit(capture, client) for name, client in CLIENTS.items()}
        return {name: future.result() for name, future in futures.items()}


def real(hellos: dict[str, bytes], name: str) -> bytes:
    if name not in hellos:
        pytest.skip(f"{name}: client not installed")
    return hellos[name]


def parsed(data: bytes, **kwargs: int) -> ClientHello:
    result = parse_client_hello(data, **kwargs)
    assert isinstance(result, ClientHello), result
    return result


def invalid(data: bytes, **kwargs: int) -> str:
    result = parse_client_hello(data, **kwargs)
    assert isinstance(result, Invalid), result
    return result.reason


# --- building variants ------------------------------------------------------------------------------------------------


def handshake_message(records: bytes) -> bytes:
    """The handshake bytes carried by a run of handshake records (the capture's framing removed)."""
    out, off = b"", 0
    while off < len(records):
        length = int.from_bytes(records[off + 3 : off + 5], "big")
        out += records[off + 5 : off + 5 + length]
        off += 5 + length
    return out


def frame(message: bytes, sizes: Iterator[int] | None = None, version: int = 0x0301, ctype: int = 22) -> bytes:
    """Frame a handshake message as records whose bodies take successive sizes (default: 16384)."""
    out, off = [], 0
    while off < len(message):
        size = next(sizes) if sizes is not None else 16384
        fragment = message[off : off + size]
        out.append(struct.pack(">BHH", ctype, version, len(fragment)) + fragment)
        off += size
    return b"".join(out)


@dataclass
class Hello:
    """A ClientHello taken apart: everything before the extensions, and the extensions as (type, data)."""

    head: bytes
    extensions: list[tuple[int, bytes]]

    @classmethod
    def decode(cls, records: bytes) -> Hello:
        body = handshake_message(records)[4:]
        p = 2 + 32
        p += 1 + body[p]
        p += 2 + int.from_bytes(body[p : p + 2], "big")
        p += 1 + body[p]
        head, exts, q = body[:p], [], p + 2
        while q < len(body):
            etype, elen = struct.unpack_from(">HH", body, q)
            exts.append((etype, body[q + 4 : q + 4 + elen]))
            q += 4 + elen
        return cls(head, exts)

    def message(self) -> bytes:
        exts = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in self.extensions)
        body = self.head + struct.pack(">H", len(exts)) + exts
        return b"\x01" + len(body).to_bytes(3, "big") + body

    def records(self, sizes: Iterator[int] | None = None) -> bytes:
        return frame(self.message(), sizes)

    def replace(self, etype: int, data: bytes) -> Hello:
        exts = [(t, data if t == etype else d) for t, d in self.extensions]
        if etype not in {t for t, _ in exts}:
            exts.insert(0, (etype, data))
        return Hello(self.head, exts)

    def without(self, etype: int) -> Hello:
        return Hello(self.head, [(t, d) for t, d in self.extensions if t != etype])


def sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack(">H", len(n)) + n for n in names)
    return struct.pack(">H", len(entries)) + entries


def alpn(*names: bytes) -> bytes:
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return struct.pack(">H", len(entries)) + entries


# --- real clients -----------------------------------------------------------------------------------------------------


def test_openssl_tls13_with_alpn(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "openssl13")
    hello = parsed(data)
    assert hello.server_name == "x.example"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.supported_versions == (TLS13,)
    assert hello.legacy_version == TLS12
    assert hello.length == len(data)
    assert 0x1301 in hello.cipher_suites
    assert hello.extensions[0] == 0 and {16, 43, 51, 13} <= set(hello.extensions)
    assert 0x0804 in hello.signature_algorithms  # rsa_pss_rsae_sha256


def test_openssl_tls12(hellos: dict[str, bytes]) -> None:
    hello = parsed(real(hellos, "openssl12"))
    assert hello.server_name == "x.example"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.supported_versions == ()  # TLS 1.2-only clients do not send the extension
    assert hello.legacy_version == TLS12
    assert 0xC02F in hello.cipher_suites  # ECDHE-RSA-AES128-GCM-SHA256


def test_openssl_many_ciphers_no_sni(hellos: dict[str, bytes]) -> None:
    hello = parsed(real(hellos, "openssl12_all_ciphers"))
    assert hello.server_name is None
    assert 0 not in hello.extensions
    assert len(hello.cipher_suites) > 50


def test_sni_is_lowercased_without_trailing_dot(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "openssl_upper_dot")
    assert b"WWW.Example.COM." in data  # sent as given; normalising is our job
    assert parsed(data).server_name == "www.example.com"


def test_curl(hellos: dict[str, bytes]) -> None:
    hello = parsed(real(hellos, "curl"))
    assert hello.server_name == "curl.example"
    assert hello.alpn == ("h2", "http/1.1")
    assert TLS13 in hello.supported_versions and TLS12 in hello.supported_versions


def test_python_ssl_with_and_without_server_hostname(hellos: dict[str, bytes]) -> None:
    with_sni = parsed(hellos["python_sni"])
    assert with_sni.server_name == "py.example"
    assert with_sni.alpn == ("h2", "http/1.1")
    assert TLS13 in with_sni.supported_versions
    without = parsed(hellos["python_no_sni"])
    assert without.server_name is None
    assert 0 not in without.extensions


def test_large_real_key_share(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "openssl_ffdhe8192")
    assert len(data) > 1200
    hello = parsed(data)
    assert hello.server_name == "big.example"
    assert hello.length == len(data)


def test_answers_are_prefix_stable_for_every_real_hello(hellos: dict[str, bytes]) -> None:
    """Every strict prefix is NEED_MORE, the whole is complete, and extra bytes after it change nothing."""
    for name, data in hellos.items():
        for cut in range(len(data)):
            assert parse_client_hello(data[:cut]) is NEED_MORE, (name, cut)
        full = parsed(data)
        assert parsed(data + b"\x14\x03\x03\x00\x01\x01" + b"junk") == full  # e.g. a CCS record after the hello
        assert parsed(memoryview(data)) == full
        assert parsed(bytearray(data)) == full


def test_unrecognized_name_alert_stops_real_clients() -> None:
    """A client given the alert instead of a ServerHello reports the unrecognized name (TLS 1.3 and 1.2)."""
    client = PyClient("unknown.example")
    hello = capture(client, answer=unrecognized_name_alert())
    assert parsed(hello).server_name == "unknown.example"
    assert isinstance(client.error, ssl.SSLError)
    assert "UNRECOGNIZED_NAME" in str(client.error).upper()
    if HAVE_OPENSSL:
        for version in ("-tls1_2", "-tls1_3"):
            out: list[str] = []

            def start(port: int, version: str = version, out: list[str] = out) -> Callable[[], None]:
                args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version, "-servername", "no.example"]

                def run() -> None:
                    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5)
                    out.append(result.stdout + result.stderr)

                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                return lambda: thread.join(timeout=5)

            capture(start, answer=unrecognized_name_alert())
            assert "unrecognized name" in out[0].lower(), out[0]


def test_alert_records() -> None:
    assert unrecognized_name_alert() == b"\x15\x03\x01\x00\x02\x02\x70"
    assert alert_record(40) == b"\x15\x03\x01\x00\x02\x02\x28"  # handshake_failure
    assert alert_record(0, level=1) == b"\x15\x03\x01\x00\x02\x01\x00"
    with pytest.raises(ValueError):
        alert_record(256)


def test_need_more_is_a_singleton() -> None:
    assert NeedMore() is NEED_MORE
    assert repr(NEED_MORE) == "NEED_MORE"
    assert parse_client_hello(b"") is NEED_MORE


def test_grease() -> None:
    assert all(is_grease(0x0A0A + 0x1010 * i) for i in range(16))
    assert not is_grease(0x0A1A) and not is_grease(0x0303) and not is_grease(0x1301)


# --- framing: split records, large hellos -----------------------------------------------------------------------------


def test_split_across_two_records_at_every_point(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "curl")
    message = handshake_message(data)
    expected = parsed(data)
    for cut in range(1, len(message)):
        records = frame(message, iter((cut, len(message))))
        hello = parsed(records)
        assert hello.length == len(records) == len(data) + 5
        assert (hello.server_name, hello.extensions, hello.cipher_suites) == (
            expected.server_name,
            expected.extensions,
            expected.cipher_suites,
        )


def test_many_tiny_records_and_every_prefix(hellos: dict[str, bytes]) -> None:
    """One-byte records (legal, if silly): the handshake header itself spans four records."""
    data = real(hellos, "openssl12")
    message = handshake_message(data)
    records = frame(message, iter(lambda: 1, 0))
    assert parsed(records, max_size=1 << 20).server_name == "x.example"
    for cut in range(len(records)):
        assert parse_client_hello(records[:cut], max_size=1 << 20) is NEED_MORE, cut
    assert "limit" in invalid(records, max_size=1000)  # six bytes of records per handshake byte count against it


def test_padding_up_to_a_full_record(hellos: dict[str, bytes]) -> None:
    base = Hello.decode(real(hellos, "openssl13"))
    size = len(base.message())
    hello = base.replace(21, bytes(16384 - size - 4))  # the padding extension fills the record exactly
    records = hello.records()
    assert len(records) == 5 + 16384
    result = parsed(records)
    assert result.server_name == "x.example" and 21 in result.extensions
    assert result.length == len(records) <= DEFAULT_MAX_SIZE


def test_hello_larger_than_a_record(hellos: dict[str, bytes]) -> None:
    message = Hello.decode(real(hellos, "openssl13")).replace(21, bytes(20000)).message()
    records = frame(message)  # two records, as OpenSSL frames a hello above 16 KiB
    assert parsed(records, max_size=1 << 16).length == len(records)
    for cut in (9, 100, 16389, len(records) - 1):
        # Refused from the handshake header alone: no need to wait for 20 KB the edge will not accept.
        assert "above the limit" in invalid(records[:cut])


def test_post_quantum_size_key_share(hellos: dict[str, bytes]) -> None:
    """X25519MLKEM768 (0x11EC) sends 1216 + 32 bytes of key share; OpenSSL 3.0 here cannot, so one is grafted on."""
    base = Hello.decode(real(hellos, "curl"))
    shares = struct.pack(">HH", 0x11EC, 1216 + 32) + bytes(1216 + 32) + struct.pack(">HH", 0x001D, 32) + bytes(32)
    hello = base.without(21).replace(51, struct.pack(">H", len(shares)) + shares)
    records = hello.records()
    assert len(records) > 1400
    result = parsed(records)
    assert result.server_name == "curl.example" and 51 in result.extensions
    # Browsers' hellos of this size usually span two TCP segments: the first peek sees a prefix.
    assert parse_client_hello(records[:1200]) is NEED_MORE
    # And some stacks split such a hello into records of a few hundred bytes.
    assert parsed(hello.records(sizes=iter(lambda: 512, 0))).server_name == "curl.example"


def test_hello_without_extensions() -> None:
    """SSLv3/TLS 1.0-era hellos end after the compression methods."""
    body = struct.pack(">H", 0x0301) + bytes(32) + b"\x00" + struct.pack(">HH", 2, 0x002F) + b"\x01\x00"
    hello = parsed(frame(b"\x01" + len(body).to_bytes(3, "big") + body, version=0x0300))
    assert hello.extensions == () and hello.server_name is None and hello.alpn == ()
    assert hello.legacy_version == 0x0301 and hello.cipher_suites == (0x002F,)


def test_grease_values_kept_or_dropped(hellos: dict[str, bytes]) -> None:
    base = Hello.decode(real(hellos, "curl"))
    versions = struct.pack(">B4H", 8, 0x3A3A, TLS13, TLS12, 0xFAFA)
    hello = base.replace(43, versions)
    hello.extensions.insert(0, (0x0A0A, b""))
    hello.extensions.insert(5, (0x1A1A, b"\x00"))
    result = parsed(hello.records())
    assert result.supported_versions == (TLS13, TLS12)
    assert result.extensions[0] == 0x0A0A and result.extensions[5] == 0x1A1A


# --- malformed input --------------------------------------------------------------------------------------------------


def test_plain_http_and_other_protocols() -> None:
    for data in (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x HTTP/1.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM",
        b"GE",
        b"H",
    ):
        assert invalid(data) == "not TLS: looks like plain HTTP", data
    assert invalid(b"SSH-2.0-OpenSSH_9.2\r\n").startswith("not TLS: first byte 0x53")
    assert "SSLv2" in invalid(b"\x80\x2e\x01\x00\x02\x00\x15")
    assert invalid(b"\x17\x03\x03\x00\x10") == "record type 23 is not a handshake (application_data)"
    assert invalid(b"\x15\x03\x03\x00\x02\x02\x28").startswith("record type 21 is not a handshake")


def test_partial_headers_are_refused_early() -> None:
    assert "major" in invalid(b"\x16\x02")
    assert "not a TLS version" in invalid(b"\x16\x03\x05")
    assert "above 16384" in invalid(b"\x16\x03\x01\x41")
    assert "above 16384" in invalid(b"\x16\x03\x01\x40\x01")
    assert "empty handshake record" in invalid(b"\x16\x03\x01\x00\x00")
    assert "not a ClientHello" in invalid(b"\x16\x03\x01\x00\x30\x02")  # a ServerHello, say
    assert parse_client_hello(b"\x16\x03\x01\x00\x30\x01") is NEED_MORE
    assert parse_client_hello(b"\x16\x03\x00\x40\x00") is NEED_MORE  # SSLv3 record version, full-size record


MALFORMED: list[tuple[str, Callable[[Hello], bytes], str]] = [
    ("odd cipher suites", lambda h: _patch_head(h, cs=b"\x13\x01\x13"), "cipher suites length 3"),
    ("no cipher suites", lambda h: _patch_head(h, cs=b""), "cipher suites length 0"),
    ("long session id", lambda h: _patch_head(h, sid=bytes(33)), "session id of 33 bytes"),
    ("no null compression", lambda h: _patch_head(h, comp=b"\x01"), "null method"),
    ("no compression", lambda h: _patch_head(h, comp=b""), "compression methods length 0"),
    ("duplicate extension", lambda h: Hello(h.head, [*h.extensions, h.extensions[1]]).records(), "duplicate extension"),
    ("psk not last", lambda h: Hello(h.head, [(41, b"\x00"), *h.extensions]).records(), "pre_shared_key"),
    ("nul in sni", lambda h: h.replace(0, sni(b"a\x00.example")).records(), "not a valid DNS name"),
    ("empty sni", lambda h: h.replace(0, sni(b"")).records(), "empty SNI"),
    ("space in sni", lambda h: h.replace(0, sni(b"a b.example")).records(), "not a valid DNS name"),
    ("non-ascii sni", lambda h: h.replace(0, sni("é.example".encode())).records(), "not a valid DNS name"),
    ("ipv6 sni", lambda h: h.replace(0, sni(b"::1")).records(), "not a valid DNS name"),
    ("empty label", lambda h: h.replace(0, sni(b"a..example")).records(), "not a valid DNS name"),
    ("long label", lambda h: h.replace(0, sni(b"a" * 64 + b".example")).records(), "not a valid DNS name"),
    ("long name", lambda h: h.replace(0, sni(b".".join([b"a" * 63] * 4) + b".ab")).records(), "too long"),
    ("two host names", lambda h: h.replace(0, sni(b"a.example", b"b.example")).records(), "more than one host_name"),
    ("empty sni list", lambda h: h.replace(0, b"\x00\x00").records(), "server_name list length 0"),
    ("sni list overrun", lambda h: h.replace(0, sni(b"a.example")[:-1]).records(), "server_name list length"),
    ("sni name overrun", lambda h: h.replace(0, b"\x00\x06\x00\x00\x09abc").records(), "server name length 9"),
    ("empty alpn list", lambda h: h.replace(16, b"\x00\x00").records(), "ALPN list length 0"),
    ("empty alpn name", lambda h: h.replace(16, alpn(b"h2", b"")).records(), "ALPN protocol name length 0"),
    ("alpn overrun", lambda h: h.replace(16, b"\x00\x04\x05h2x").records(), "ALPN protocol name length 5"),
    ("odd versions", lambda h: h.replace(43, b"\x03\x03\x04\x03").records(), "supported_versions list length 3"),
    ("empty versions", lambda h: h.replace(43, b"").records(), "supported_versions extension is empty"),
    ("odd sig algs", lambda h: h.replace(13, b"\x00\x03\x04\x03\x05").records(), "signature_algorithms list length"),
]


def _patch_head(hello: Hello, sid: bytes | None = None, cs: bytes | None = None, comp: bytes | None = None) -> bytes:
    head = hello.head
    version_random, p = head[:34], 34
    old_sid = head[p + 1 : p + 1 + head[p]]
    p += 1 + head[p]
    cs_len = int.from_bytes(head[p : p + 2], "big")
    old_cs = head[p + 2 : p + 2 + cs_len]
    p += 2 + cs_len
    old_comp = head[p + 1 : p + 1 + head[p]]
    sid, cs, comp = (
        (old_sid if sid is None else sid),
        (old_cs if cs is None else cs),
        (old_comp if comp is None else comp),
    )
    new = version_random + bytes([len(sid)]) + sid + struct.pack(">H", len(cs)) + cs + bytes([len(comp)]) + comp
    return Hello(new, hello.extensions).records()


@pytest.mark.parametrize(("case", "build", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_fields(hellos: dict[str, bytes], case: str, build: Callable[[Hello], bytes], reason: str) -> None:
    data = build(Hello.decode(real(hellos, "openssl13")))
    assert reason in invalid(data), case


def test_malformed_lengths(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "openssl13")
    message = handshake_message(data)
    body = message[4:]
    # The handshake length claims more than the record holds, then more records are not handshakes.
    longer = b"\x01" + (len(body) + 10).to_bytes(3, "big") + body
    assert parse_client_hello(frame(longer)) is NEED_MORE  # it might continue in a next record...
    assert "record type 23" in invalid(frame(longer) + b"\x17\x03\x03\x00\x05hello")  # ... but does not
    # The record holds more than the handshake message: a second message riding along.
    assert "after the ClientHello" in invalid(frame(message + b"\x14\x00\x00\x00"))
    # Extensions block length disagrees with what is left.
    ext_off = len(Hello.decode(data).head)
    wrong = bytearray(body)
    wrong[ext_off : ext_off + 2] = (len(body) - ext_off - 2 + 1).to_bytes(2, "big")
    assert "extensions length" in invalid(frame(b"\x01" + len(body).to_bytes(3, "big") + bytes(wrong)))
    # An extension claiming more than what is left.
    wrong = bytearray(body)
    wrong[ext_off + 4 : ext_off + 6] = b"\xff\xff"  # the first extension's length
    assert "exceeds" in invalid(frame(b"\x01" + len(body).to_bytes(3, "big") + bytes(wrong)))
    # Record version out of range; split into two records where the second has a bad version.
    two = frame(message, iter((50, 16384)))
    bad = two[: 5 + 50] + b"\x16\x04\x03" + two[5 + 50 + 3 :]
    assert "major 4" in invalid(bad)
    # Truncated ClientHello body (the handshake length is honest, the body is short).
    assert "too short" in invalid(frame(b"\x01\x00\x00\x05" + body[:5]))


def test_max_size_is_enforced_on_records(hellos: dict[str, bytes]) -> None:
    data = real(hellos, "curl")
    assert parsed(data, max_size=len(data)).length == len(data)
    assert "limit" in invalid(data, max_size=len(data) - 1)
    assert "limit" in invalid(data[:5], max_size=len(data) - 1)  # known from the record header alone


# --- robustness -------------------------------------------------------------------------------------------------------


def _check_never_raises(data: bytes) -> None:
    result = parse_client_hello(data)
    assert isinstance(result, ClientHello | NeedMore | Invalid)
    if isinstance(result, Invalid):
        assert "internal" not in result.reason, (data, result)


def test_fuzz_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        _check_never_raises(rng.randbytes(rng.randrange(0, 300)))
        # Past the record header, so the inner parsers see the garbage.
        body = rng.randbytes(rng.randrange(0, 300))
        _check_never_raises(frame(b"\x01" + len(body).to_bytes(3, "big") + body))


def test_fuzz_mutated_real_hellos(hellos: dict[str, bytes]) -> None:
    rng = random.Random(5678)
    samples = [handshake_message(data) for data in hellos.values()]
    outcomes: set[str] = set()
    for i in range(6000):
        message = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(message))
            if op == 0:
                message[pos] = rng.randrange(256)
            elif op == 1:
                message[pos] ^= 1 << rng.randrange(8)
            elif op == 2:
                del message[pos : pos + rng.randrange(1, 8)]
            else:
                message[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        # Keep the handshake length honest half of the time, so the extension walkers are reached.
        if i % 2 and len(message) >= 4:
            message[1:4] = (len(message) - 4).to_bytes(3, "big")
        sizes = iter(lambda: rng.choice((16384, 16384, 7, 300)), 0)
        data = frame(bytes(message), sizes)
        _check_never_raises(data)
        _check_never_raises(data[: rng.randrange(len(data) + 1)])
        outcomes.add(type(parse_client_hello(data)).__name__)
    assert outcomes == {"ClientHello", "Invalid", "NeedMore"}


def test_parsing_is_cheap(hellos: dict[str, bytes]) -> None:
    """A loose bound (the real figure is ~10 µs a hello): catches an accidental per-byte loop, not a regression."""
    data = real(hellos, "curl")
    start = time.perf_counter()
    for _ in range(2000):
        parse_client_hello(data)
    assert (time.perf_counter() - start) / 2000 < 200e-6
