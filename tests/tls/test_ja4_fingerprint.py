"""Tests for JA4 TLS client fingerprints (``tlsedge.tls.ja4``).

Where the vectors come from (FoxIO-LLC/ja4 at commit 0e54bc8371de34df94a35f2442c05bda2e8b2034):

- ``technical_details/JA4.md``, the specification: its worked example (cipher, extension and signature algorithm
  lists with their sorted strings, hashes, ``JA4`` and ``JA4_r``), the hash of the extension string without signature
  algorithms (``6d807ffa2a79``) and the eight ALPN examples of the non-alphanumeric rule.
- ClientHellos from FoxIO's capture files ``pcap/<name>`` (the bytes of the first client TLS records of one TCP
  stream, copied out of the capture), with the fingerprints FoxIO's tools print for them:
  ``python/test/testdata/<name>.json`` (keys ``JA4.1`` and ``JA4_r.1``) or, for ``https-connect.pcap``, whose Python
  output has no TLS entry, ``rust/ja4/src/snapshots/ja4__insta@https-connect.pcap.snap``.
  Checked while writing this module: all 150 TLS-over-TCP hellos of FoxIO's pcaps give FoxIO's JA4 except the one
  with a non-ASCII ALPN, where the tools print ``99`` and the specification asks for hex characters (see below).
- Real clients on this machine: ``openssl s_client``, ``curl`` and Python's ``ssl``, captured by accepting their
  connection on 127.0.0.1 and reading the first bytes (their handshakes then fail, which is expected).

FoxIO's Python tool needs tshark, which is not installed here; the pcap vectors above are its recorded output.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tlsedge.tls.clienthello import ClientHello, NeedMore, parse_client_hello
from tlsedge.tls.ja4 import ja4, ja4_raw

pytestmark = pytest.mark.timeout(30)

HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_CURL = shutil.which("curl") is not None


def make_hello(
    ciphers: tuple[int, ...] = (0x1301,),
    extensions: tuple[int, ...] = (0x000A,),
    sig_algs: tuple[int, ...] = (),
    versions: tuple[int, ...] = (),
    legacy: int = 0x0303,
    alpn: tuple[str, ...] = (),
) -> ClientHello:
    """A ClientHello built from lists, for the specification's list-level examples."""
    return ClientHello(
        server_name="example.com" if 0 in extensions else None,
        alpn=alpn,
        legacy_version=legacy,
        supported_versions=versions,
        cipher_suites=ciphers,
        extensions=extensions,
        signature_algorithms=sig_algs,
        length=0,
    )


def parsed(data: bytes) -> ClientHello:
    result = parse_client_hello(data, max_size=1 << 16)
    assert isinstance(result, ClientHello), result
    return result


# --- the specification's worked example (technical_details/JA4.md, "Cipher hash", "Extension hash", "Example") -------

SPEC_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C,
                0x009D, 0x002F, 0x0035)  # fmt: skip
SPEC_EXTENSIONS = (0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012, 0x002B,
                   0xFF01, 0x000B, 0x000A, 0x0015)  # fmt: skip
SPEC_SIG_ALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
SPEC_JA4_R = (
    "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,"
    "0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
)


def spec_hello(**changes: object) -> ClientHello:
    fields: dict = dict(
        ciphers=SPEC_CIPHERS, extensions=SPEC_EXTENSIONS, sig_algs=SPEC_SIG_ALGS, versions=(0x0304, 0x0303),
        alpn=("h2", "http/1.1"),
    )  # fmt: skip
    fields.update(changes)
    return make_hello(**fields)


def test_specification_example() -> None:
    hello = spec_hello()
    assert ja4(hello) == SPEC_JA4
    assert ja4_raw(hello) == SPEC_JA4_R


def test_grease_is_ignored_everywhere() -> None:
    """GREASE in ciphers, extensions, signature algorithms and supported_versions changes nothing, counts included."""
    hello = spec_hello(
        ciphers=(0x0A0A, *SPEC_CIPHERS, 0xFAFA),
        extensions=(0x3A3A, *SPEC_EXTENSIONS[:5], 0x9A9A, *SPEC_EXTENSIONS[5:]),
        sig_algs=(0x5A5A, *SPEC_SIG_ALGS),
    )
    assert ja4(hello) == SPEC_JA4
    assert ja4_raw(hello) == SPEC_JA4_R


def test_order_of_ciphers_and_extensions_does_not_matter_but_signature_order_does() -> None:
    shuffled = spec_hello(ciphers=tuple(reversed(SPEC_CIPHERS)), extensions=tuple(sorted(SPEC_EXTENSIONS)))
    assert ja4(shuffled) == SPEC_JA4
    reordered = spec_hello(sig_algs=tuple(reversed(SPEC_SIG_ALGS)))
    assert ja4(reordered).split("_")[:2] == SPEC_JA4.split("_")[:2]
    assert ja4(reordered).split("_")[2] != SPEC_JA4.split("_")[2]


def test_no_signature_algorithms_means_no_underscore() -> None:
    """JA4.md: the extension string "ends without an underscore" and hashes to 6d807ffa2a79."""
    hello = spec_hello(sig_algs=())
    assert ja4_raw(hello).endswith("_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01")
    assert ja4(hello).endswith("_6d807ffa2a79")


def test_sni_and_alpn_are_counted_but_not_hashed() -> None:
    without = spec_hello(extensions=tuple(e for e in SPEC_EXTENSIONS if e not in (0x0000, 0x0010)), alpn=())
    assert ja4(without) == "t13i151400_8daaf6152771_e5627efa2ab1"


def test_empty_lists_give_twelve_zeros() -> None:
    # Nothing but GREASE in the ciphers and SNI as the only extension: nothing is left to hash in b or c.
    assert ja4(make_hello(ciphers=(0x0A0A,), extensions=(0x0000,))) == "t12d000100_000000000000_000000000000"
    assert ja4_raw(make_hello(ciphers=(0x0A0A,), extensions=())) == "t12i000000__"


@pytest.mark.parametrize(
    ("versions", "legacy", "code"),
    [
        ((0x0304, 0x0303), 0x0303, "13"),
        ((0x0303, 0x0304), 0x0303, "13"),  # the highest, not the first
        ((0x0303,), 0x0303, "12"),
        ((), 0x0303, "12"),  # no supported_versions: the legacy version
        ((), 0x0302, "11"),
        ((), 0x0301, "10"),
        ((), 0x0300, "s3"),
        ((), 0x0002, "s2"),
        ((), 0xFEFD, "d2"),
        ((0x7F1C,), 0x0303, "00"),  # a draft version: unknown
        ((), 0x0305, "00"),
    ],
)
def test_version(versions: tuple[int, ...], legacy: int, code: str) -> None:
    assert ja4(make_hello(versions=versions, legacy=legacy))[1:3] == code


def test_counts_are_capped_at_99() -> None:
    hello = make_hello(ciphers=tuple(range(1, 151)), extensions=tuple(range(0x100, 0x100 + 120)))
    assert ja4(hello).startswith("t12i9999")
    assert ja4_raw(hello).count(",") == 149 + 119  # capped counts, full lists


@pytest.mark.parametrize(
    ("name", "chars"),
    [
        ("h2", "h2"),
        ("http/1.1", "h1"),
        ("acme-tls/1", "a1"),
        ("h", "hh"),  # "treated as both the first and last character"
        # JA4.md, "ALPN Extension Value": the hex rule when the first or last byte is not alphanumeric
        ("\xab", "ab"),
        ("\x20", "20"),
        ("\xab\xcd", "ad"),
        ("\x20\x61", "21"),
        ("\x30\xab", "3b"),
        ("\x61\x20", "60"),
        ("\x30\x31\xab\xcd", "3d"),
        ("\x30\xab\xcd\x31", "01"),
        ("\xe9t\xe9", "e9"),  # latin-1 letters are not ASCII alphanumerics
    ],
)
def test_alpn_characters(name: str, chars: str) -> None:
    assert ja4(make_hello(alpn=(name, "h2")))[8:10] == chars


def test_no_alpn_is_00() -> None:
    assert ja4(make_hello(alpn=()))[8:10] == "00"


def test_transport() -> None:
    assert ja4(spec_hello(), "q") == "q" + SPEC_JA4[1:]
    assert ja4_raw(spec_hello(), "d").startswith("d13d")
    with pytest.raises(ValueError, match="transport"):
        ja4(spec_hello(), "tcp")


def test_hash_parts_are_sha256_of_the_raw_lists() -> None:
    """ja4 and ja4_raw agree: each hashed part is the first 12 hex digits of SHA-256 over the raw part."""
    hello = spec_hello()
    prefix, ciphers, extensions = ja4_raw(hello).split("_", 2)
    digest = [hashlib.sha256(part.encode()).hexdigest()[:12] for part in (ciphers, extensions)]
    assert ja4(hello) == "_".join((prefix, *digest))


# --- ClientHellos from FoxIO's capture files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    source: str
    hello: str  # hex of the TLS records carrying the ClientHello
    ja4: str
    ja4_r: str | None = None


FOXIO_CAPTURES = [
    # rust/ja4/src/snapshots/ja4__insta@https-connect.pcap.snap, stream 0: TLS 1.2 after an HTTP CONNECT, no SNI, no
    # ALPN, 86 ciphers.
    Capture(
        "https-connect.pcap stream 0",
        (
            "160301011c010001180303a3073873f429ef8ad6c13fa035798a93be55208aec5ffe09c5736f4f32c15e4b0000acc030c02cc028"
            "c024c014c00a00a500a300a1009f006b006a0069006800390038003700360088008700860085c032c02ec02ac026c00fc005009d"
            "003d00350084c02fc02bc027c023c013c00900a400a200a0009e00670040003f003e0033003200310030009a0099009800970045"
            "004400430042c031c02dc029c025c00ec004009c003c002f00960041c012c008001600130010000dc00dc003000a0007c011c007"
            "c00cc0020005000400ff01000043000b000403000102000a000a0008001700190018001600230000000d0020001e060106020603"
            "050105020503040104020403030103020303020102020203000f000101"
        ),
        "t12i860500_e18388e7f3a3_a1e935682795",
    ),
    # python/test/testdata/https3-301-get.pcap.json, stream 0: TLS 1.0, SNI as the only extension, so part c is empty.
    Capture(
        "https3-301-get.pcap stream 0",
        (
            "16030100720100006e030152937a55b696cc98ae7b08ec10e765c98aefa82db3081771f8627617b967980800002e003900380035"
            "00160013000a00330032002f009a00990096000500040015001200090014001100080006000300ff010000170000001300110000"
            "0e7777772e6769746875622e636f6d"
        ),
        "t10d230100_6a57a6f57151_000000000000",
        "t10d230100_0003,0004,0005,0006,0008,0009,000a,0011,0012,0013,0014,0015,0016,002f,0032,0033,0035,0038,0039,0096,"
        "0099,009a,00ff_",
    ),
    # python/test/testdata/latest.pcapng.json, stream 3: TLS 1.2 without supported_versions, no ALPN.
    Capture(
        "latest.pcapng stream 3",
        (
            "16030300b8010000b4030364960ddb84e92e8d5a9be477e2f7112257269dc742143793732813c25ec65af0000026c02cc02bc030"
            "c02fc024c023c028c027c00ac009c014c013009d009c003d003c0035002f000a010000650000001b0019000016646973636f7665"
            "72792e63656d2e636c6f75642e7573000500050100000000000a00080006001d00170018000b00020100000d001a001808040805"
            "08060401050102010403050302030202060106030023000000170000ff01000100"
        ),
        "t12d190800_d83cc789557e_7af1ed941c26",
        "t12d190800_000a,002f,0035,003c,003d,009c,009d,c009,c00a,c013,c014,c023,c024,c027,c028,c02b,c02c,c02f,c030_"
        "0005,000a,000b,000d,0017,0023,ff01_0804,0805,0806,0401,0501,0201,0403,0503,0203,0202,0601,0603",
    ),
    # python/test/testdata/tls-sni.pcapng.json, stream 2: Chrome with GREASE; the specification's example.
    Capture(
        "tls-sni.pcapng stream 2",
        (
            "1603010200010001fc030337780577bb74609f897a5720ee9dfe9dc63ee7287f2d16ffca3e95d677f57b3e20e292b5a6a27d2131"
            "43c1008cfe389b509f735e2a559c09576f4dda6db133282a00206a6a130113021303c02bc02fc02cc030cca9cca8c013c014009c"
            "009d002f003501000193fafa0000001b00030200020000001800160000136163636f756e74732e676f6f676c652e636f6d003300"
            "2b00298a8a000100001d0020ccb23a9fd50719f384d17df738cb5939eb3a23fe9654dfae895fc5120b022e660010000e000c0268"
            "3208687474702f312e3144690005000302683200170000002d00020101000d001200100403080404010503080505010806060100"
            "05000501000000000023000000120000002b000706caca03040303ff01000100000b00020100000a000a00088a8a001d00170018"
            "4a4a000100001500c400000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        ),
        SPEC_JA4,
        SPEC_JA4_R,
    ),
    # python/test/testdata/tls-non-ascii-alpn.pcapng.json, stream 0: the first ALPN value is 0xBA 0xAD. FoxIO's tools
    # print "99" (t13d151699_...); JA4.md's rule gives the first and last hex digits of "baad", "bd".
    Capture(
        "tls-non-ascii-alpn.pcapng stream 0",
        (
            "1603010200010001fc03030f9e38acb9a54a7c6e00e29a70ac2feee180ff76d7f25dca84932a66a42d1e5a20bc58b92f865e6b9a"
            "a4a6371cadcb0afe1da1c0f705209a11d52357f56d5dd9620020aaaa130113021303c02bc02fc02cc030cca9cca8c013c014009c"
            "009d002f0035010001939a9a0000ff010001000033002b00290a0a000100001d0020cf55af2603e92f59eb321779706a18fa6b96"
            "b16c16404c2264ed687a59401878002d00020101000500050100000000446900050003026832000d001200100403080404010503"
            "08050501080606010010000e000c02baad08687474702f312e3100230000001b0003020002002b0007060a0a0304030300000022"
            "002000001d636c69656e7473657276696365732e676f6f676c65617069732e636f6d00120000000a000a00080a0a001d00170018"
            "00170000000b000201006a6a000100001500ba000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
            "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        ),
        "t13d1516bd_8daaf6152771_e5627efa2ab1",
    ),
]


@pytest.mark.parametrize("capture", FOXIO_CAPTURES, ids=lambda c: c.source)
def test_foxio_captures(capture: Capture) -> None:
    data = bytes.fromhex(capture.hello)
    hello = parsed(data)
    assert hello.length == len(data)
    assert ja4(hello) == capture.ja4
    if capture.ja4_r is not None:
        assert ja4_raw(hello) == capture.ja4_r


def test_fingerprint_is_fast() -> None:
    """Computed once per connection: a Chrome hello must take microseconds, not milliseconds (typically ~12 us)."""
    chrome = next(c for c in FOXIO_CAPTURES if c.source.startswith("tls-sni"))
    hello = parsed(bytes.fromhex(chrome.hello))
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        ja4(hello)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} us per fingerprint"


# --- real clients -----------------------------------------------------------------------------------------------------

Client = Callable[[int], Callable[[], None]]


def _read_hello(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    buf = b""
    while isinstance(parse_client_hello(buf), NeedMore):
        data = conn.recv(65536)
        if not data:
            break
        buf += data
    return buf


def capture(client: Client) -> bytes:
    """Accept the client's connection on 127.0.0.1 and return the records of its ClientHello."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        wait = client(listener.getsockname()[1])
        try:
            conn, _ = listener.accept()
            with conn:
                return _read_hello(conn)
        finally:
            wait()


def command(*argv: str) -> Client:
    """A client that is a subprocess; ``{port}`` in its arguments is replaced by the listener's port."""

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


def s_client(*args: str) -> Client:
    return command("openssl", "s_client", "-connect", "127.0.0.1:{port}", *args)


def curl(*args: str) -> Client:
    return command(
        "curl", "-sk", "--max-time", "5", *args, "--resolve", "c.example:{port}:127.0.0.1", "https://c.example:{port}/"
    )


def python_ssl(server_hostname: str | None) -> Client:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    def start(port: int) -> Callable[[], None]:
        def run() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, contextlib.suppress(OSError):
                ctx.wrap_socket(sock, server_hostname=server_hostname).close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return lambda: thread.join(timeout=5)

    return start


# Each client twice: the fingerprint must not change between connections although the bytes do (random, key share).
CLIENTS: dict[str, Client] = {"python": python_ssl("py.example"), "python_no_sni": python_ssl(None)}
if HAVE_OPENSSL:
    CLIENTS |= {
        "openssl": s_client("-servername", "o.example", "-alpn", "h2,http/1.1"),
        "openssl_no_sni": s_client("-noservername", "-alpn", "h2,http/1.1"),
        "openssl_h1": s_client("-servername", "o.example", "-alpn", "http/1.1"),
        "openssl_no_alpn": s_client("-servername", "o.example"),
        "openssl_tls12": s_client("-tls1_2", "-servername", "o.example", "-alpn", "h2"),
    }
if HAVE_CURL:
    CLIENTS |= {"curl": curl(), "curl_h1": curl("--http1.1")}


@pytest.fixture(scope="module")
def hellos() -> dict[str, tuple[bytes, bytes]]:
    """Two captured hellos per client, all clients in parallel."""
    with ThreadPoolExecutor(8) as pool:
        futures = {name: (pool.submit(capture, c), pool.submit(capture, c)) for name, c in CLIENTS.items()}
        return {name: (a.result(), b.result()) for name, (a, b) in futures.items()}


def fingerprint(hellos: dict[str, tuple[bytes, bytes]], name: str) -> str:
    """The client's JA4, after checking both of its connections gave different bytes but the same fingerprint."""
    if name not in hellos:
        pytest.skip(f"{name}: client not installed")
    first, second = hellos[name]
    assert first != second
    fp = ja4(parsed(first))
    assert ja4(parsed(second)) == fp
    assert ja4_raw(parsed(second)) == ja4_raw(parsed(first))
    return fp


def test_openssl(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    fp = fingerprint(hellos, "openssl")
    assert fp.startswith("t13d") and fp[8:10] == "h2"


def test_openssl_without_sni(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    fp = fingerprint(hellos, "openssl_no_sni")
    assert fp.startswith("t13i") and fp[8:10] == "h2"
    # Same client: one extension less, same cipher and extension hashes (SNI is not hashed).
    with_sni = fingerprint(hellos, "openssl")
    assert int(fp[6:8]) == int(with_sni[6:8]) - 1
    assert fp[10:] == with_sni[10:]


def test_openssl_alpn_choices(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    h2 = fingerprint(hellos, "openssl")
    h1 = fingerprint(hellos, "openssl_h1")
    none = fingerprint(hellos, "openssl_no_alpn")
    assert (h2[8:10], h1[8:10], none[8:10]) == ("h2", "h1", "00")
    assert h1[10:] == h2[10:]  # ALPN is not hashed either
    assert int(none[6:8]) == int(h2[6:8]) - 1


def test_openssl_tls12_only(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    fp = fingerprint(hellos, "openssl_tls12")
    assert fp.startswith("t12d")
    assert fp.split("_")[1] != fingerprint(hellos, "openssl").split("_")[1]  # no TLS 1.3 suites


def test_curl(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    fp = fingerprint(hellos, "curl")
    assert fp.startswith("t13d") and fp[8:10] == "h2"
    assert fingerprint(hellos, "curl_h1")[8:10] == "h1"


def test_python_ssl(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    fp = fingerprint(hellos, "python")
    assert fp.startswith("t13d") and fp[8:10] == "h2"
    assert fingerprint(hellos, "python_no_sni").startswith("t13i")


def test_clients_are_told_apart(hellos: dict[str, tuple[bytes, bytes]]) -> None:
    """Python's ssl and openssl s_client share the OpenSSL library but not its configuration: different JA4."""
    python, openssl = fingerprint(hellos, "python"), fingerprint(hellos, "openssl")
    assert python != openssl
    if HAVE_CURL:
        assert len({python, openssl, fingerprint(hellos, "curl")}) == 3
