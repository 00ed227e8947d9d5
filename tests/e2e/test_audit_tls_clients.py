"""Audit of issue 2: the Mozilla "intermediate" settings checked against the running edge itself (tests/tls checks them
on a test server built from the same table, not on `tlsedge serve`), and httpx as a client, which the issue lists and
the suite did not use."""

from __future__ import annotations

import hashlib
import ssl

import httpx
import pytest
from e2e_support import openssl_s_client

REQUEST = b"GET / HTTP/1.1\r\nHost: blog.example\r\nConnection: close\r\n\r\n"


def _text(out) -> str:
    return (out.stdout + out.stderr).decode(errors="replace")


@pytest.mark.parametrize(
    "args",
    [
        ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),
        ("-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"),
        ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256:@SECLEVEL=0"),
        ("-tls1_3", "-groups", "P-521"),
        ("-tls1_2", "-groups", "P-521"),
    ],
    ids=["tls1.1", "tls1.0", "tls12-non-aead-or-no-pfs", "tls13-p521", "tls12-p521"],
)
def test_edge_refuses_what_intermediate_excludes(main_edge, args):
    text = _text(openssl_s_client(main_edge.https_port, "blog.example", *args, request=REQUEST))
    assert "HTTP/1.1 200" not in text, text[-1500:]
    assert "Cipher is (NONE)" in text or "alert" in text.lower() or "errno" in text.lower(), text[-1500:]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("-tls1_3",), "TLSv1.3"),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"), "ECDHE-ECDSA-CHACHA20-POLY1305"),
        (("-tls1_3", "-groups", "P-384"), "TLSv1.3"),
    ],
)
def test_edge_accepts_intermediate_and_never_compresses(main_edge, origin, args, expect):
    text = _text(openssl_s_client(main_edge.https_port, "blog.example", *args, request=REQUEST))
    assert "HTTP/1.1 200" in text, text[-1500:]
    assert expect in text
    assert "Compression: NONE" in text


def _client(edge) -> tuple[httpx.Client, str]:
    return httpx.Client(
        verify=ssl.create_default_context(cafile=str(edge.ca_pem)), timeout=10
    ), f"https://127.0.0.1:{edge.https_port}"


def test_httpx_keepalive_and_streamed_chunked_upload(main_edge, origin):
    client, base = _client(main_edge)
    ext = {"sni_hostname": "blog.example"}
    hdrs = {"Host": "blog.example"}
    with client:
        ids = {client.get(f"{base}/hx/{i}", headers=hdrs, extensions=ext).json()["conn_id"] for i in range(4)}
        assert len(ids) == 1, "httpx's keep-alive connection to the edge was not reused (or the origin's)"
        pieces = [bytes([i]) * 10_000 for i in range(50)]
        r = client.post(f"{base}/hx-up", headers=hdrs, extensions=ext, content=iter(pieces))
        assert r.status_code == 200
        echo = r.json()
        assert echo["body_len"] == 500_000
        assert echo["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
        r = client.get(f"{base}/hx", headers={"Host": "shop.example"}, extensions=ext)
        assert r.status_code == 421
        assert "request id" in r.text
