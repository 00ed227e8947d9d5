"""Unusable certificates and keys give one TlsSetupError naming the config file, site, field and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tls_helpers import Certs, make_config

from tlsedge.config.schema import (
    CertificateFiles,
    Config,
    Origin,
    PoolConfig,
    PoolServer,
    ServerConfig,
    SiteConfig,
)
from tlsedge.pki.local_ca import LocalCA
from tlsedge.tls.server import build_tls_table, host_matches

KEYS = os.urandom(80)


def one_site_config(tmp_path: Path, *certificates: CertificateFiles) -> Config:
    pools = (PoolConfig("default", (PoolServer(Origin("http", "127.0.0.1", 9)),), "flexible"),)
    site = SiteConfig("shop", ("shop.example",), certificates, pools, "flexible")
    server = ServerConfig(state_dir=tmp_path, workers=1, https=(), http=(), default_site=None)
    return Config(path=tmp_path / "tlsedge.toml", server=server, sites=(site,))


def only_problem(config: Config) -> tuple[str, str, str]:
    with pytest.raises(Exception) as info:
        build_tls_table(config, KEYS)
    assert type(info.value).__name__ == "TlsSetupError"
    problems = info.value.problems  # type: ignore[attr-defined]
    assert len(problems) == 1, problems
    p = problems[0]
    assert p.file == config.path
    assert p.site == "shop"
    return p.field, p.reason, str(p)


@pytest.fixture
def files(local_ca: tuple[LocalCA, Path], tmp_path: Path) -> CertificateFiles:
    files = CertificateFiles(tmp_path / "shop.pem", tmp_path / "shop.key")
    local_ca[0].issue(["shop.example"]).write(files.cert, files.key)
    return files


def test_missing_certificate(tmp_path: Path, files: CertificateFiles) -> None:
    field, reason, _ = only_problem(one_site_config(tmp_path, CertificateFiles(tmp_path / "nope.pem", files.key)))
    assert field == "site[shop].certificates[0].cert"
    assert "nope.pem" in reason and "No such file" in reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key(tmp_path: Path, files: CertificateFiles) -> None:
    files.key.chmod(0)
    field, reason, _ = only_problem(one_site_config(tmp_path, files))
    assert field == "site[shop].certificates[0].key"
    assert "Permission denied" in reason


def test_key_is_a_directory(tmp_path: Path, files: CertificateFiles) -> None:
    field, reason, text = only_problem(one_site_config(tmp_path, CertificateFiles(files.cert, tmp_path)))
    assert field == "site[shop].certificates[0].key"
    assert "cannot read private key" in reason
    assert text.startswith(f"{tmp_path / 'tlsedge.toml'}: site 'shop', site[shop].certificates[0].key: ")


def test_garbage_certificate(tmp_path: Path, files: CertificateFiles) -> None:
    files.cert.write_text("hello")
    field, reason, _ = only_problem(one_site_config(tmp_path, files))
    assert field.endswith(".cert") and "not a PEM certificate" in reason


def test_key_of_another_certificate(tmp_path: Path, files: CertificateFiles, local_ca: tuple[LocalCA, Path]) -> None:
    other = local_ca[0].issue(["other.example"])
    files.key.write_bytes(other.key_pem)
    field, reason, _ = only_problem(one_site_config(tmp_path, files))
    assert field.endswith(".key") and "does not belong to the certificate" in reason


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, files: CertificateFiles) -> None:
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    field, reason, _ = only_problem(one_site_config(tmp_path, files))
    assert field.endswith(".key") and "encrypted" in reason


def test_two_certificates_of_one_key_type(tmp_path: Path, files: CertificateFiles) -> None:
    field, reason, _ = only_problem(one_site_config(tmp_path, files, files))
    assert field == "site[shop].certificates[1].cert" and "second ECDSA certificate" in reason


def test_every_problem_is_reported(tmp_path: Path, certs: Certs) -> None:
    config = make_config(tmp_path, certs, "blog")
    broken = tuple(
        SiteConfig(
            s.name,
            s.hosts,
            tuple(CertificateFiles(c.cert, tmp_path / f"{s.name}.missing") for c in s.certificates),
            s.pools,
            s.origin_tls,
        )
        for s in config.sites
    )
    with pytest.raises(Exception) as info:
        build_tls_table(Config(config.path, config.server, broken), KEYS)
    fields = [p.field for p in info.value.problems]  # type: ignore[attr-defined]
    assert fields == [
        "site[blog].certificates[0].key",
        "site[blog].certificates[1].key",
        "site[api].certificates[0].key",
    ]


def test_table_lists_tls_sites_and_names(tmp_path: Path, certs: Certs) -> None:
    table = build_tls_table(make_config(tmp_path, certs, "plain"), KEYS)
    assert table.sites == ("blog", "api")
    assert table.site_for_name("X.Blog.Example.") == "blog"
    assert table.site_for_name("api.example") == "api"
    assert table.site_for_name("other.example") is None  # default "plain" has no certificate: refuse
    assert table.site_for_name(None) is None


@pytest.mark.parametrize(
    ("pattern", "name", "match"),
    [
        ("*.b.example", "a.b.example", True),
        ("*.b.example", "b.example", False),
        ("*.b.example", "x.a.b.example", False),
        ("*.b.example", ".b.example", False),
        ("b.example", "b.example", True),
    ],
)
def test_host_matches(pattern: str, name: str, match: bool) -> None:
    assert host_matches(pattern, name) is match
