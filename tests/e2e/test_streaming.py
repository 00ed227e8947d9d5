"""1 GiB through the edge both ways with bounded memory: bodies stream with backpressure, never buffered whole."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest
from e2e_support import Edge, NginxOrigin, RssSampler, parse_curl_output, site

pytestmark = pytest.mark.slow

GIB = 1 << 30
RSS_LIMIT_KIB = 50 * 1024
TIME_LIMIT = 60  # per transfer; they take ~10-20 s on 2 cores


@pytest.fixture(scope="module")
def stream_edge(tmp_path_factory, pki, py_origin, nginx_origin: NginxOrigin, site_certs):
    sites = [
        site("dl", ["dl.example"], [f"http://127.0.0.1:{nginx_origin.plain_port}"], pki.good("dl.example"),
             origin={"read_timeout": "30s"}),
        site("up", ["up.example"], [py_origin.url], pki.good("up.example"), max_body_size=0,
             origin={"response_timeout": "60s", "read_timeout": "60s"}),
    ]
    edge = Edge(tmp_path_factory.mktemp("stream-edge"), sites, pki.ca_pem,
                limits={"body_idle_timeout": "30s", "header_timeout": "10s"})
    edge.start()
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def zeros_sha256() -> str:
    h = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(GIB >> 20):
        h.update(block)
    return h.hexdigest()


def _workers(edge: Edge) -> list[int]:
    return edge.worker_pids() or [edge.pid]


def _curl(edge: Edge, host: str, path: str, *args: str, stdin=None) -> subprocess.CompletedProcess:
    port = edge.https_port
    cmd = ["curl", "-sS", "--http1.1", "--max-time", str(TIME_LIMIT), "--cacert", str(edge.ca_pem),
           "--resolve", f"{host}:{port}:127.0.0.1", *args, f"https://{host}:{port}{path}"]
    return subprocess.run(cmd, capture_output=True, stdin=stdin, timeout=TIME_LIMIT + 10)


def test_download_1gib_bounded_memory(stream_edge, nginx_origin):
    # warm up (first request allocates pools, TLS contexts, ...), then measure
    assert _curl(stream_edge, "dl.example", "/index.html", "-o", "/dev/null").returncode == 0
    t0 = time.monotonic()
    with RssSampler(_workers(stream_edge)) as rss:
        r = _curl(stream_edge, "dl.example", "/big.bin", "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["200", str(GIB)]
    assert rss.growth_kib < RSS_LIMIT_KIB, f"worker RSS grew {rss.growth_kib // 1024} MiB"
    print(f"1 GiB download: {elapsed:.1f}s, RSS growth {rss.growth_kib // 1024} MiB")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_1gib_bounded_memory(stream_edge, nginx_origin, zeros_sha256, origin, framing):
    assert _curl(stream_edge, "up.example", "/warm", "-o", "/dev/null").returncode == 0
    t0 = time.monotonic()
    with RssSampler(_workers(stream_edge)) as rss, open(nginx_origin.big_path, "rb") as f:
        if framing == "content-length":
            r = _curl(stream_edge, "up.example", "/upload", "-i", "-T", str(nginx_origin.big_path))
        else:
            r = _curl(stream_edge, "up.example", "/upload", "-i", "-T", "-", "-H", "Transfer-Encoding: chunked",
                      stdin=f)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    status, _, body, _ = parse_curl_output(r.stdout)
    assert status == 200, r.stdout[:500]
    echo = json.loads(body)
    assert echo["method"] == "PUT"
    assert echo["body_len"] == GIB
    assert echo["body_sha256"] == zeros_sha256
    assert rss.growth_kib < RSS_LIMIT_KIB, f"worker RSS grew {rss.growth_kib // 1024} MiB"
    print(f"1 GiB upload ({framing}): {elapsed:.1f}s, RSS growth {rss.growth_kib // 1024} MiB")
