"""keyserver.toml: loading, every problem named by file, field and reason, key files and `--check`."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from keyserver_support import KsPki, shared_pki, write_config

from tlsedge.commands import keyserver as keyserver_command
from tlsedge.config.errors import ConfigError
from tlsedge.keyserver.config import load_config
from tlsedge.keyserver.keys import load_keyring
from tlsedge.keyserver.server import load_setup
from tlsedge.pki.local_ca import private_key_pem, write_private
from tlsedge.tls.keyless.client import format_pin


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> KsPki:
    return shared_pki(tmp_path_factory)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_setup(path)
    return [str(p) for p in caught.value.problems]


def test_a_good_file_loads(tmp_path: Path, ks_pki: KsPki) -> None:
    path = write_config(tmp_path, ks_pki, rate="50/s", edges=("EDGE-1.example", "*"))
    config = load_config(path)
    assert config.log == tmp_path / "ops.log"  # relative to the file
    assert config.rate == 50 and config.burst == 50 and config.threads == 2
    assert [k.field for k in config.keys] == ["key[0]", "key[1]", "key[2]", "key[3]"]
    assert config.keys[0].names == frozenset({"shop.example", "*.shop.example"})
    assert config.keys[0].edges == frozenset({"edge-1.example", "*"})
    keyring = load_keyring(config)
    assert sorted(k.kind for k in keyring.values()) == ["ed25519", "p256", "p384", "rsa"]
    assert keyring[ks_pki.sites["p384"].key_id].names == frozenset({"p384.example"})


def test_every_problem_is_named(tmp_path: Path) -> None:
    path = tmp_path / "keyserver.toml"
    path.write_text(
        'listen = ["9443", "127.0.0.1:70000"]\n'
        'certificat = "ks.pem"\n'
        'rate = "fast"\n'
        "burst = 0\n"
        "[[key]]\n"
        'names = ["shop.*.example", 3]\n'
        "edges = []\n"
        "[[key]]\n"
        'file = "k.key"\n'
        'names = ["ok.example"]\n'
        'edges = ["edge\\u0000"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(str(p) for p in caught.value.problems)
    expected = [
        ("listen[0]", "has no port"),
        ("listen[1]", "port '70000'"),
        ("certificat", "unknown key 'certificat' (did you mean 'certificate'?)"),
        ("certificate", "missing"),
        ("certificate_key", "missing"),
        ("client_ca", "missing"),
        ("rate", "'fast' is not a rate"),
        ("burst", "from 1 to 1000000"),
        ("key[0].file", "missing"),
        ("key[0].names[0]", "'*' is allowed only as the whole leftmost label"),
        ("key[0].names[1]", "must be a non-empty string"),
        ("key[0].edges", "non-empty array"),
        ("key[1].edges[0]", "is not an edge identity"),
    ]
    for field, reason in expected:
        assert f"{path}: {field}: " in text and reason in text, (field, reason, text)
    assert all(str(p).startswith(str(path)) for p in caught.value.problems)


def test_no_keys_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "keyserver.toml"
    path.write_text('listen = ["127.0.0.1:9443"]\ncertificate = "a"\ncertificate_key = "b"\nclient_ca = "c"\n')
    assert any("key: missing; add at least one [[key]]" in p for p in problems_of(path))
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "absent.toml")
    path.write_text("listen = [")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(path)


def test_key_next_to_key_tables_says_which_name_to_use(tmp_path: Path) -> None:
    path = tmp_path / "keyserver.toml"
    path.write_text('key = "keyserver.key"\n[[key]]\nfile = "shop.key"\n')
    with pytest.raises(ConfigError, match="certificate_key") as caught:
        load_config(path)
    assert caught.value.problems[0].field == "(toml)"
    path.write_text('key = "keyserver.key"\n')
    with pytest.raises(ConfigError, match=r"key: must be \[\[key\]\] tables, not a string .*certificate_key"):
        load_config(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path, ks_pki: KsPki) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(ks_pki.sites["p256"].key_file.read_bytes())
    os.chmod(loose, 0o644)
    path = write_config(tmp_path, ks_pki, kinds=("rsa", "p256"))
    path.write_text(path.read_text().replace(str(ks_pki.sites["p256"].key_file), str(loose)))
    problems = problems_of(path)
    assert problems == [f"{path}: key[1].file: {loose} has mode 0644: other users could read or replace the private "
                        f"key; restrict it with: chmod 600 {loose}"]
    os.chmod(loose, 0o640)
    assert "mode 0640" in problems_of(path)[0]
    os.chmod(loose, 0o600)
    assert len(load_setup(path).keyring) == 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: private_key_pem(rsa.generate_private_key(65537, 1024)), "RSA key of 1024 bits is too weak"),
        (lambda: private_key_pem(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1 is not supported"),
        (lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")), "is encrypted"),
        (lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "is not a PEM private key"),
    ],
)
def test_unusable_keys_are_named(tmp_path: Path, ks_pki: KsPki, make, reason: str) -> None:
    bad = tmp_path / "bad.key"
    write_private(bad, make())
    path = write_config(tmp_path, ks_pki, kinds=("p256",))
    path.write_text(path.read_text().replace(str(ks_pki.sites["p256"].key_file), str(bad)))
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: key[0].file: {bad}") and reason in problems[0]


def test_same_key_twice(tmp_path: Path, ks_pki: KsPki) -> None:
    path = write_config(tmp_path, ks_pki, kinds=("p256", "p256"))
    assert problems_of(path) == [f"{path}: key[1].file: the same key as key[0]; merge their names and edges into "
                                 "one [[key]]"]


def test_own_certificate_and_client_ca_problems(tmp_path: Path, ks_pki: KsPki) -> None:
    path = write_config(tmp_path, ks_pki, kinds=("p256",))
    loose = tmp_path / "keyserver.key"
    loose.write_bytes(ks_pki.keyserver_key.read_bytes())
    os.chmod(loose, 0o604)
    not_ca = tmp_path / "not-ca.pem"
    not_ca.write_text("hello\n")
    text = path.read_text().replace(str(ks_pki.keyserver_key), str(loose)).replace(str(ks_pki.edges_ca), str(not_ca))
    path.write_text(text)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: certificate_key: {loose} has mode 0604") for p in problems), problems
    assert any(p.startswith(f"{path}: client_ca: cannot load {not_ca}") for p in problems), problems
    os.chmod(loose, 0o600)
    path.write_text(text.replace(str(ks_pki.keyserver_cert), str(ks_pki.edges[("edge-1")].cert)))
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: certificate: cannot use") and "its own private key" in p for p in problems)


def test_check_prints_the_pin_and_keys(tmp_path: Path, ks_pki: KsPki) -> None:
    path = write_config(tmp_path, ks_pki)
    out = io.StringIO()
    assert keyserver_command.check(path, out) == 0
    text = out.getvalue()
    assert f"pin (for the edges' [site.keyless] pins): {format_pin(ks_pki.pin)}" in text
    assert f"key[0]: p256 key {ks_pki.sites['p256'].key_id[:8].hex()} for *.shop.example, shop.example" in text
    out = io.StringIO()
    assert keyserver_command.check(path, out, pin_only=True) == 0
    assert out.getvalue() == format_pin(ks_pki.pin) + "\n"


def test_check_fails_with_the_problems(tmp_path: Path, ks_pki: KsPki, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, ks_pki, kinds=("p256",))
    os.chmod(ks_pki.sites["p256"].key_file, 0o644)
    try:
        assert keyserver_command.check(path, io.StringIO()) == 1
    finally:
        os.chmod(ks_pki.sites["p256"].key_file, 0o600)
    err = capsys.readouterr().err
    assert f"error: {path}: key[0].file:" in err and "chmod 600" in err and "1 problem(s) found" in err


def test_command_line() -> None:
    parser = argparse.ArgumentParser(prog="tlsedge")
    keyserver_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keyserver", "-c", "ks.toml", "--check"])
    assert (args.config, args.check, args.pin) == ("ks.toml", True, False)
    assert parser.parse_args(["keyserver"]).config == "keyserver.toml"
    with pytest.raises(SystemExit):
        parser.parse_args(["keyserver", "--check", "--pin"])
