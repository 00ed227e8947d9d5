"""Tests for the PROXY protocol v2 header (``tlsedge.upstream.proxy_protocol``).

Expected bytes are written out from HAProxy's ``doc/proxy-protocol.txt`` (section 2.2) rather than produced by the
module under test; the last tests send headers to a real nginx (``listen ... proxy_protocol``) and check that it
reports the addresses the header carried.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsedge.upstream.proxy_protocol import (
    COMMAND_LOCAL,
    COMMAND_PROXY,
    DEFAULT_MAX_LENGTH,
    FAMILY_INET,
    FAMILY_INET6,
    FAMILY_UNIX,
    FAMILY_UNSPEC,
    NEED_MORE,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    PROTOCOL_DGRAM,
    PROTOCOL_STREAM,
    SIGNATURE,
    NeedMore,
    ProxyError,
    ProxyHeader,
    parse_proxy_v2,
    proxy_v2_header,
    proxy_v2_local,
)

pytestmark = pytest.mark.timeout(30)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # the specification's signature, spelled out


def fixed(ver_cmd: int, fam: int, length: int) -> bytes:
    return SIG + struct.pack(">BBH", ver_cmd, fam, length)


def header(data: bytes, **kwargs: int) -> ProxyHeader:
    result = parse_proxy_v2(data, **kwargs)
    assert isinstance(result, ProxyHeader), result
    return result


def error(data: bytes, **kwargs: int) -> str:
    result = parse_proxy_v2(data, **kwargs)
    assert isinstance(result, ProxyError), result
    return result.reason


# --- building headers ---------------------------------------------------------------------------------------------


def test_signature_constant() -> None:
    assert SIGNATURE == SIG


def test_ipv4() -> None:
    data = proxy_v2_header(("192.0.2.1", 51234), ("198.51.100.2", 443))
    expected = fixed(0x21, 0x11, 12) + bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 51234, 443)
    assert data == expected
    assert header(data) == ProxyHeader(
        COMMAND_PROXY, FAMILY_INET, PROTOCOL_STREAM, ("192.0.2.1", 51234), ("198.51.100.2", 443), (), 28
    )


def test_ipv6() -> None:
    data = proxy_v2_header(("2001:db8::7", 1), ("2001:db8::1", 65535))
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    assert data == fixed(0x21, 0x21, 36) + src + dst + struct.pack(">HH", 1, 65535)
    parsed = header(data)
    assert (parsed.family, parsed.source, parsed.destination, parsed.length) == (
        FAMILY_INET6, ("2001:db8::7", 1), ("2001:db8::1", 65535), 52
    )  # fmt: skip


@pytest.mark.parametrize(
    ("client", "server", "fam", "source", "destination"),
    [
        # A dual-stack listener reports IPv4 clients as mapped addresses: both ends IPv4 -> sent as IPv4.
        (("::ffff:192.0.2.1", 5), ("192.0.2.9", 443), 0x11, "192.0.2.1", "192.0.2.9"),
        (("::ffff:192.0.2.1", 5), ("::ffff:192.0.2.9", 443), 0x11, "192.0.2.1", "192.0.2.9"),
        # Mixed families: both as IPv6, the IPv4 one mapped.
        (("192.0.2.1", 5), ("2001:db8::1", 443), 0x21, "::ffff:192.0.2.1", "2001:db8::1"),
        (("2001:db8::7", 5), ("::ffff:192.0.2.9", 443), 0x21, "2001:db8::7", "::ffff:192.0.2.9"),
        # What an IPv6 socket's getpeername() returns: a 4-tuple, possibly with a zone id in the host.
        (("fe80::1%lo", 5, 0, 1), ("fe80::2", 443, 0, 1), 0x21, "fe80::1", "fe80::2"),
    ],
)
def test_address_families(client: tuple, server: tuple, fam: int, source: str, destination: str) -> None:
    data = proxy_v2_header(client, server)
    assert data[13] == fam
    parsed = header(data)
    assert parsed.source == (source, 5) and parsed.destination == (destination, 443)


def test_tlvs() -> None:
    tlvs = [(PP2_TYPE_AUTHORITY, b"blog.example"), (PP2_TYPE_UNIQUE_ID, bytes(range(16))), (PP2_TYPE_NOOP, b"")]
    data = proxy_v2_header(("192.0.2.1", 5), ("192.0.2.9", 443), tlvs=tlvs)
    tlv_bytes = b"\x02\x00\x0cblog.example" + b"\x05\x00\x10" + bytes(range(16)) + b"\x04\x00\x00"
    assert data[14:16] == struct.pack(">H", 12 + len(tlv_bytes))
    assert data.endswith(tlv_bytes)
    parsed = header(data)
    assert parsed.tlvs == tuple(tlvs)
    assert parsed.tlv(PP2_TYPE_AUTHORITY) == b"blog.example"
    assert parsed.tlv(0x30) is None
    assert parsed.length == len(data)


def test_local() -> None:
    assert proxy_v2_local() == SIG + b"\x20\x00\x00\x00"
    assert header(proxy_v2_local()) == ProxyHeader(COMMAND_LOCAL, FAMILY_UNSPEC, 0, None, None, (), 16)


@pytest.mark.parametrize(
    ("client", "server", "tlvs", "message"),
    [
        (("example.com", 1), ("192.0.2.9", 443), (), "not an IPv4 or IPv6"),
        (("192.0.2.1", 65536), ("192.0.2.9", 443), (), "port 65536"),
        (("192.0.2.1", 1), ("192.0.2.9", -1), (), "port -1"),
        (("192.0.2.1", 1), ("192.0.2.9", 443), ((256, b""),), "TLV type 256"),
        (("192.0.2.1", 1), ("192.0.2.9", 443), ((PP2_TYPE_UNIQUE_ID, bytes(129)),), "UNIQUE_ID TLV of 129"),
        (("192.0.2.1", 1), ("192.0.2.9", 443), ((PP2_TYPE_AUTHORITY, bytes(256)),), "AUTHORITY TLV of 256"),
        (("192.0.2.1", 1), ("192.0.2.9", 443), ((0xE0, bytes(65535 - 12 - 2)),), "does not fit"),
    ],
)
def test_sender_rejects_what_cannot_be_encoded(client: tuple, server: tuple, tlvs: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        proxy_v2_header(client, server, tlvs=tlvs)


def test_largest_header_that_fits() -> None:
    data = proxy_v2_header(("192.0.2.1", 1), ("192.0.2.9", 443), tlvs=[(0xE0, bytes(65535 - 12 - 3))])
    assert len(data) == 16 + 65535
    assert header(data, max_length=len(data)).tlvs[0][1] == bytes(65520)


# --- parsing: lengths, truncation, garbage ------------------------------------------------------------------------

FULL = proxy_v2_header(
    ("2001:db8::7", 40000), ("2001:db8::1", 443), tlvs=[(PP2_TYPE_AUTHORITY, b"a.example"), (PP2_TYPE_UNIQUE_ID, b"id")]
)


def test_every_prefix_needs_more() -> None:
    for i in range(len(FULL)):
        assert parse_proxy_v2(FULL[:i]) is NEED_MORE, i
    assert isinstance(parse_proxy_v2(FULL[:10]), NeedMore)


def test_bytes_after_the_header_are_the_connections() -> None:
    data = FULL + b"\x16\x03\x01rest of a ClientHello"
    parsed = header(data)
    assert parsed.length == len(FULL)
    assert data[parsed.length :] == b"\x16\x03\x01rest of a ClientHello"


def test_accepts_bytearray_and_memoryview() -> None:
    assert header(bytearray(FULL)) == header(FULL)
    assert header(memoryview(b"xx" + FULL)[2:]) == header(FULL)


@pytest.mark.parametrize("position", range(12))
def test_bad_signature_is_refused_as_soon_as_seen(position: int) -> None:
    broken = bytearray(FULL)
    broken[position] ^= 0x40
    assert "signature" in error(bytes(broken[: position + 1]))
    assert "signature" in error(bytes(broken))


def test_version_1_is_named() -> None:
    assert "version 1" in error(b"PROXY TCP4 192.0.2.1 192.0.2.9 5 443\r\n")
    assert "version 1" in error(b"PRO")


def test_plain_tls_or_http_is_refused() -> None:
    assert "signature" in error(b"\x16\x03\x01\x02\x00")
    assert "signature" in error(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0xF1, 0x01])
def test_bad_version(ver_cmd: int) -> None:
    assert f"version {ver_cmd >> 4} is not 2" in error(fixed(ver_cmd, 0x11, 12)[:13])


@pytest.mark.parametrize("command", [2, 3, 15])
def test_unknown_command(command: int) -> None:
    assert f"command {command}" in error(fixed(0x20 | command, 0x11, 12)[:13])


@pytest.mark.parametrize(
    ("fam", "what"),
    [(0x41, "address family 4"), (0xF1, "address family 15"), (0x13, "protocol 3"), (0x1F, "protocol 15")],
)
def test_unknown_family_or_protocol(fam: int, what: str) -> None:
    assert what in error(fixed(0x21, fam, 12)[:14])


def test_length_over_the_limit_is_refused_before_the_bytes_arrive() -> None:
    assert "above the limit of 4096" in error(fixed(0x21, 0x11, DEFAULT_MAX_LENGTH - 16 + 1))
    assert isinstance(parse_proxy_v2(fixed(0x21, 0x11, DEFAULT_MAX_LENGTH - 16)), NeedMore)
    assert len(FULL) == 69
    assert "header of 69 bytes is above the limit of 68" in error(FULL, max_length=68)
    assert header(FULL, max_length=len(FULL)).length == len(FULL)


@pytest.mark.parametrize(("fam", "size"), [(0x11, 12), (0x21, 36), (0x31, 216)])
def test_address_block_shorter_than_the_family_needs(fam: int, size: int) -> None:
    assert f"shorter than the {size} address bytes" in error(fixed(0x21, fam, size - 1) + bytes(size - 1))


def test_tlv_truncated_or_overflowing() -> None:
    addresses = bytes(12)
    assert "TLV header truncated" in error(fixed(0x21, 0x11, 14) + addresses + b"\x02\x00")
    assert "exceeds the 3 bytes left" in error(fixed(0x21, 0x11, 18) + addresses + b"\x02\x00\x04abc")
    assert "UNIQUE_ID TLV of 129" in error(fixed(0x21, 0x11, 12 + 3 + 129) + addresses + b"\x05\x00\x81" + bytes(129))
    assert "AUTHORITY TLV of 256" in error(fixed(0x21, 0x11, 12 + 3 + 256) + addresses + b"\x02\x01\x00" + bytes(256))


def test_udp_unspec_and_unix() -> None:
    udp = header(fixed(0x21, 0x12, 12) + bytes([192, 0, 2, 1, 192, 0, 2, 9]) + struct.pack(">HH", 53, 5353))
    assert (udp.protocol, udp.source, udp.destination) == (PROTOCOL_DGRAM, ("192.0.2.1", 53), ("192.0.2.9", 5353))
    # UNSPEC: "the receiver should ignore address information", whatever the block holds.
    unspec = header(fixed(0x21, 0x00, 5) + b"junk!")
    assert (unspec.family, unspec.source, unspec.tlvs, unspec.length) == (FAMILY_UNSPEC, None, (), 21)
    # UNIX: no IP to report, but the TLVs after the two 108-byte paths are read.
    unix = header(fixed(0x21, 0x31, 216 + 5) + bytes(216) + b"\x02\x00\x02ab")
    assert (unix.family, unix.source, unix.tlvs) == (FAMILY_UNIX, None, ((PP2_TYPE_AUTHORITY, b"ab"),))


def test_local_discards_the_block() -> None:
    """A LOCAL header may still carry addresses (receivers "must not assume zero"): they are skipped, not used."""
    data = fixed(0x20, 0x11, 12) + bytes(12) + b"GET"
    parsed = header(data)
    assert (parsed.command, parsed.source, parsed.length) == (COMMAND_LOCAL, None, 28)


def test_never_raises_on_garbage() -> None:
    rng = random.Random(7)
    kinds = set()
    for _ in range(3000):
        data = bytearray(FULL if rng.random() < 0.7 else rng.randbytes(rng.randrange(80)))
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randrange(len(data) + 1)]
        result = parse_proxy_v2(bytes(data))
        assert isinstance(result, ProxyHeader | NeedMore | ProxyError)
        kinds.add(type(result))
    assert kinds == {ProxyHeader, NeedMore, ProxyError}


# --- a real nginx origin ------------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _nginx_version() -> tuple[int, ...]:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=5).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(x) for x in match.groups())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NginxProxyOrigin:
    """nginx answering every request with the addresses it read from the PROXY header (and the SNI TLV if it can)."""

    def __init__(self, prefix: Path) -> None:
        assert NGINX is not None
        self.tlv_variables = _nginx_version() >= (1, 23, 2)  # $proxy_protocol_tlv_* appeared in nginx 1.23.2
        self.port4 = _free_port("127.0.0.1")
        self.port6 = _free_port("::1") if _ipv6_loopback() else None
        listen6 = f"listen [::1]:{self.port6} proxy_protocol;" if self.port6 else ""
        tlv = " $proxy_protocol_tlv_authority" if self.tlv_variables else ""
        (prefix / "tmp").mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    access_log off;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{self.port4} proxy_protocol;
        {listen6}
        location / {{
            return 200 "[$proxy_protocol_addr]:$proxy_protocol_port [$proxy_protocol_server_addr]:$proxy_protocol_server_port{tlv}";
        }}
    }}
}}
""")  # noqa: E501
        self.error_log = prefix / "error.log"
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nginx did not start:\n{self.log()}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port4), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, head: bytes, host: str = "127.0.0.1") -> tuple[int, str]:
        """Send ``head`` then an HTTP request in one write; (status, body) of nginx's answer, (0, "") if it closed."""
        port = self.port4 if host == "127.0.0.1" else self.port6
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(head + b"GET / HTTP/1.1\r\nHost: origin.example\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        if not response:
            return 0, ""
        status_line, _, rest = response.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxyOrigin]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    origin = NginxProxyOrigin(tmp_path_factory.mktemp("nginx-pp"))
    yield origin
    origin.stop()


def test_nginx_reads_ipv4(nginx: NginxProxyOrigin) -> None:
    head = proxy_v2_header(("203.0.113.7", 40123), ("198.51.100.9", 8443))
    assert nginx.request(head)[1].startswith("[203.0.113.7]:40123 [198.51.100.9]:8443")


def test_nginx_reads_ipv6_and_mixed(nginx: NginxProxyOrigin) -> None:
    head = proxy_v2_header(("2001:db8::7", 40124), ("2001:db8::1", 443))
    assert nginx.request(head)[1].startswith("[2001:db8::7]:40124 [2001:db8::1]:443")
    mixed = proxy_v2_header(("203.0.113.9", 40125), ("2001:db8::1", 443))
    assert nginx.request(mixed)[1].startswith("[::ffff:203.0.113.9]:40125 [2001:db8::1]:443")
    mapped = proxy_v2_header(("::ffff:203.0.113.8", 40126), ("198.51.100.9", 443))
    assert nginx.request(mapped)[1].startswith("[203.0.113.8]:40126 [198.51.100.9]:443")


def test_nginx_on_an_ipv6_listener(nginx: NginxProxyOrigin) -> None:
    if nginx.port6 is None:
        pytest.skip("no IPv6 loopback")
    head = proxy_v2_header(("2001:db8::42", 50000), ("2001:db8::1", 443))
    status, body = nginx.request(head, host="::1")
    assert status == 200 and body.startswith("[2001:db8::42]:50000 [2001:db8::1]:443")
    ipv4 = proxy_v2_header(("203.0.113.10", 50001), ("198.51.100.9", 443))
    assert nginx.request(ipv4, host="::1")[1].startswith("[203.0.113.10]:50001 [198.51.100.9]:443")


def test_nginx_skips_tlvs_by_their_length(nginx: NginxProxyOrigin) -> None:
    """TLVs must be framed exactly: a byte too many or too few would reach nginx's HTTP parser (400) or eat the request.

    nginx from 1.23.2 also exposes the AUTHORITY TLV; older ones (Debian 12 ships 1.22) only skip it.
    """
    tlvs = [(PP2_TYPE_AUTHORITY, b"sni.example"), (PP2_TYPE_UNIQUE_ID, b"\x00\x01conn-42"), (PP2_TYPE_NOOP, bytes(7))]
    head = proxy_v2_header(("203.0.113.7", 40127), ("198.51.100.9", 443), tlvs=tlvs)
    status, body = nginx.request(head)
    assert status == 200
    expected = "[203.0.113.7]:40127 [198.51.100.9]:443"
    assert body == (f"{expected} sni.example" if nginx.tlv_variables else expected)


def test_nginx_accepts_local(nginx: NginxProxyOrigin) -> None:
    """A LOCAL header (the edge's health checks) is accepted; nginx then has no client address from it."""
    assert nginx.request(proxy_v2_local()) == (200, "[]: []:")


def test_nginx_refuses_a_truncated_header(nginx: NginxProxyOrigin) -> None:
    """The control: nginx really parses what it is sent (a header cut short is not answered with a 200)."""
    head = proxy_v2_header(("203.0.113.7", 40128), ("198.51.100.9", 443))
    broken = head[:14] + struct.pack(">H", 11) + head[16:]  # announces one address byte fewer than IPv4 needs
    assert nginx.request(broken) == (0, "")  # closed without an answer
