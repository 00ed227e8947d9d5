"""``tlsedge cert import`` end to end: the command as a process against a real configuration and store, and the live
swap of the imported certificate in a running edge."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from e2e_support import BLOG_HOSTS, children, site, wait_for

from tlsedge.pki.local_ca import IssuedCert
from tlsedge.pki.site_certs import load_certificate
from tlsedge.store import open_store


def tlsedge_cert(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``tlsedge cert ...`` as an operator runs it: a process of its own."""
    return subprocess.run([sys.executable, "-m", "tlsedge", "cert", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def write_pair(directory: Path, stem: str, issued: IssuedCert) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    issued.write(cert, key)
    return cert, key


def imported_site(origin_url: str, name: str = "blog", hosts: list[str] = BLOG_HOSTS) -> dict:
    return site(name, hosts, [origin_url], None, certificate={"imported": True})


def import_args(edge, cert: Path, key: Path, *extra: str, site_name: str = "blog") -> list[str]:
    return ["import", "--site", site_name, "--cert", str(cert), "--key", str(key), "--trust", str(edge.ca_pem),
            "-c", str(edge.config_path), *extra]


def stored(edge, site_name: str = "blog"):
    store = open_store(Path(edge.server["state_dir"]))
    try:
        return load_certificate(store, site_name)
    finally:
        store.close()


def test_import_stores_certificate_with_its_serial(make_edge, py_origin, pki, tmp_path):
    edge = make_edge([imported_site(py_origin.url)], start=False)
    issued = pki.ca.issue(BLOG_HOSTS)
    cert, key = write_pair(tmp_path, "blog", issued)
    out = tlsedge_cert(*import_args(edge, cert, key))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    serial = issued.cert.serial_number
    assert re.search(rf"serial:\s+{serial:X}\b", out.stdout), out.stdout
    assert "names:     blog.example, *.blog.example" in out.stdout
    record = stored(edge)
    assert record is not None and record.source == "import"
    assert record.serial == serial
    assert record.chain_pem == issued.cert_pem and record.key_pem == issued.key_pem


def test_wrong_key_is_refused_and_nothing_is_stored(make_edge, py_origin, pki, tmp_path):
    edge = make_edge([imported_site(py_origin.url)], start=False)
    cert, _ = write_pair(tmp_path, "blog", pki.ca.issue(BLOG_HOSTS))
    _, other_key = write_pair(tmp_path, "other", pki.ca.issue(BLOG_HOSTS))
    out = tlsedge_cert(*import_args(edge, cert, other_key))
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: the private key in {other_key} does not match any certificate in {cert}")
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert stored(edge) is None


def test_expired_certificate_is_refused(make_edge, py_origin, pki, tmp_path):
    edge = make_edge([imported_site(py_origin.url)], start=False)
    end = datetime.now(UTC) - timedelta(days=2)
    cert, key = write_pair(tmp_path, "old", pki.ca.issue(BLOG_HOSTS, not_before=end - timedelta(days=90),
                                                         not_after=end))
    out = tlsedge_cert(*import_args(edge, cert, key))
    assert out.returncode == 1
    assert f"error: the certificate expired on {end:%Y-%m-%d %H:%M} UTC" in out.stderr
    assert "Traceback" not in out.stderr
    assert stored(edge) is None


def test_encrypted_key_needs_passphrase_from_environment(make_edge, py_origin, pki, tmp_path):
    edge = make_edge([imported_site(py_origin.url)], start=False)
    issued = pki.ca.issue(BLOG_HOSTS)
    cert, key = write_pair(tmp_path, "blog", issued)
    encrypted = serialization.load_pem_private_key(issued.key_pem, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw!"))
    key.write_bytes(encrypted)
    out = tlsedge_cert(*import_args(edge, cert, key))
    assert out.returncode == 1 and "is encrypted: " in out.stderr and "--key-passphrase-env VAR" in out.stderr
    out = tlsedge_cert(*import_args(edge, cert, key, "--key-passphrase-env", "BLOG_KEY_PASS"))
    assert out.returncode == 1 and "the environment variable BLOG_KEY_PASS is not set" in out.stderr
    out = tlsedge_cert(*import_args(edge, cert, key, "--key-passphrase-env", "BLOG_KEY_PASS"),
                       env={"BLOG_KEY_PASS": "pw!"})
    assert out.returncode == 0, out.stderr
    record = stored(edge)
    assert record is not None and record.key_pem == issued.key_pem  # stored decrypted (sealed by the store if keyed)


def test_site_must_be_configured_for_imports(make_edge, py_origin, pki, tmp_path):
    edge = make_edge([imported_site(py_origin.url), site("plain", ["plain.example"], [py_origin.url])], start=False)
    cert, key = write_pair(tmp_path, "plain", pki.ca.issue(["plain.example"]))
    out = tlsedge_cert(*import_args(edge, cert, key, site_name="plain"))
    assert out.returncode == 1
    assert "site 'plain' has no certificate" in out.stderr and "certificate = { imported = true }" in out.stderr
    out = tlsedge_cert(*import_args(edge, cert, key, site_name="nope"))
    assert out.returncode == 1 and "(its sites: blog, plain)" in out.stderr


def test_import_swaps_certificate_in_running_edge_without_failed_handshakes(make_edge, origin, pki, tmp_path):
    """Needs the workers' swap on the ``certs`` topic (tlsedge.tls.server / edge.worker)."""
    first = pki.ca.issue(BLOG_HOSTS)
    second = pki.ca.issue(BLOG_HOSTS, key_type="rsa")
    edge = make_edge([imported_site(origin.url)], start=False, workers=2)
    out = tlsedge_cert(*import_args(edge, *write_pair(tmp_path, "first", first)))
    assert out.returncode == 0, out.stderr
    edge.start()
    with edge.conn() as c:
        assert c.peer_cert.serial_number == first.cert.serial_number
        assert c.request(target="/first").status == 200
    held = edge.conn()  # a keep-alive connection opened before the swap must keep working after it
    assert held.request(target="/held-1").status == 200

    failures: list[str] = []
    serials: list[int] = []
    stop = threading.Event()

    def keep_connecting() -> None:
        while not stop.is_set():
            try:
                with edge.conn() as c:
                    serials.append(c.peer_cert.serial_number)
                    status = c.request(target="/during").status
                    if status != 200:
                        failures.append(f"status {status}")
            except Exception as exc:  # any failed handshake or request is what this test looks for
                failures.append(repr(exc))

    client = threading.Thread(target=keep_connecting, daemon=True)
    client.start()
    try:
        wait_for(lambda: len(serials) >= 5, 10, what="connections before the import")
        out = tlsedge_cert(*import_args(edge, *write_pair(tmp_path, "second", second)))
        assert out.returncode == 0, out.stderr
        new = second.cert.serial_number
        # every worker swaps: the last 10 handshakes (spread over both workers) all get the new certificate
        wait_for(lambda: serials[-10:] == [new] * 10, 10, what="the imported certificate from every worker")
    finally:
        stop.set()
        client.join(10)
    assert failures == []
    assert set(serials) == {first.cert.serial_number, second.cert.serial_number}
    assert held.request(target="/held-2").status == 200
    held.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_site_waiting_for_its_import_serves_a_temporary_certificate_and_the_edge_idles(make_edge, py_origin):
    """Before any import the site is reachable with a temporary certificate; the certificate manager that keeps it
    fresh sleeps between looks (a busy loop here once cost a whole core)."""
    edge = make_edge([imported_site(py_origin.url)])
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=5) as raw:
        ctx = ssl._create_unverified_context()
        with ctx.wrap_socket(raw, server_hostname=BLOG_HOSTS[0]) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    assert "tlsedge temporary" in leaf.issuer.rfc4514_string()
    processes = children(edge.pid)
    assert len(processes) == 2  # one worker and the certificate manager
    before = {pid: _cpu_seconds(pid) for pid in processes}
    time.sleep(2.0)
    used = {pid: _cpu_seconds(pid) - cpu for pid, cpu in before.items()}
    assert all(seconds < 0.3 for seconds in used.values()), used
