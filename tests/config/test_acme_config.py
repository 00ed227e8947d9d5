"""Loading ``[acme]`` and certificates kept in the store (``{ acme = true, ... }``, ``{ imported = true }``): defaults,
per-site overrides, and one problem per bad value at its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tlsedge.config import load_config
from tlsedge.config.schema import LETS_ENCRYPT, AcmeSettings, ExternalAccountBinding, ManagedCertificate

from .conftest import blog, changed, problem_at, problems_of, render, server, toml_key, toml_value, warning_at

SHOP = "site[shop]"
CERT = f"{SHOP}.certificate"


def shop(**changes: Any) -> dict[str, Any]:
    """A valid site whose certificate is ordered over ACME with the edge-wide settings."""
    base = {"name": "shop", "hosts": ["shop.example"], "certificate": {"acme": True}, "origins": ["http://127.0.0.1:9000"]}
    return changed(base, changes)


@pytest.fixture
def acme_file(write_config):
    """Write a config with an optional ``[acme]`` table, a server table and sites (one ACME site by default)."""

    def write(
        acme: dict[str, Any] | None = None,
        sites: list[dict[str, Any]] | None = None,
        server_table: dict[str, Any] | None = None,
    ) -> Path:
        head = ""
        if acme is not None:
            head = "[acme]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in acme.items()) + "\n"
        return write_config(head + render(server() if server_table is None else server_table, sites or [shop()]))

    return write


def managed(path: Path, site: str = "shop") -> ManagedCertificate:
    found = load_config(path).site(site).managed_certificate
    assert found is not None
    return found


# --- what loads -------------------------------------------------------------------------------------------------------


def test_acme_site_with_defaults(acme_file):
    config = load_config(acme_file())
    site = config.site("shop")
    assert site.managed_certificate == ManagedCertificate(source="acme", acme=AcmeSettings())
    assert site.certificates == ()
    assert site.serves_https
    assert site.managed_certificate.acme.directory == LETS_ENCRYPT
    assert site.managed_certificate.acme.challenges == ("http-01", "tls-alpn-01")
    assert config.warnings == ()


def test_imported_site(acme_file):
    found = managed(acme_file(sites=[shop(certificate={"imported": True})]))
    assert found == ManagedCertificate(source="import")


def test_acme_table_sets_every_default(acme_file, tmp_path, pki, monkeypatch):
    monkeypatch.setenv("TLSEDGE_TEST_EAB", "c2VjcmV0")
    ca = pki.ca_bundle("acme-ca")
    acme = {
        "directory": "https://acme.test/dir",
        "contact": "mailto:ops@shop.example",
        "key_type": "rsa3072",
        "challenges": ["tls-alpn-01"],
        "profile": "shortlived",
        "eab": {"kid": "kid-1", "hmac_key_env": "TLSEDGE_TEST_EAB"},
        "directory_ca": str(ca),
        "renew_remaining": 0.5,
        "retry_min": "30s",
        "retry_max": "2h",
        "check_interval": "5m",
    }
    assert managed(acme_file(acme)).acme == AcmeSettings(
        directory="https://acme.test/dir",
        contact="ops@shop.example",
        key_type="rsa3072",
        challenges=("tls-alpn-01",),
        profile="shortlived",
        eab=ExternalAccountBinding(kid="kid-1", hmac_key_env="TLSEDGE_TEST_EAB"),
        directory_ca=ca,
        renew_remaining=0.5,
        retry_min=30.0,
        retry_max=7200.0,
        check_interval=300.0,
    )


def test_site_settings_win_over_the_acme_table(acme_file):
    acme = {"directory": "https://edge-wide.test/dir", "contact": "ops@example.com", "key_type": "rsa2048",
            "retry_min": "10s"}
    own = shop(certificate={"acme": True, "directory": "https://own.test/dir", "key_type": "ecdsa-p384",
                            "challenges": ["http-01"], "profile": "classic"})
    other = shop(name="other", hosts=["other.example"])
    config = load_config(acme_file(acme, [own, other]))
    mine = config.site("shop").managed_certificate.acme
    assert (mine.directory, mine.key_type, mine.challenges, mine.profile) == (
        "https://own.test/dir", "ecdsa-p384", ("http-01",), "classic"
    )
    assert (mine.contact, mine.retry_min) == ("ops@example.com", 10.0)  # not overridden: from [acme]
    theirs = config.site("other").managed_certificate.acme
    assert (theirs.directory, theirs.key_type, theirs.challenges) == (
        "https://edge-wide.test/dir", "rsa2048", ("http-01", "tls-alpn-01")
    )


def test_duplicate_challenges_are_listed_once(acme_file):
    path = acme_file({"challenges": ["tls-alpn-01", "http-01", "tls-alpn-01"]})
    assert managed(path).acme.challenges == ("tls-alpn-01", "http-01")


# --- one problem per bad value ----------------------------------------------------------------------------------------


def only_problem(path: Path, field: str) -> str:
    """The reason of the one and only problem of the file, which must be at ``field``."""
    problems = problems_of(path)
    assert [p.field for p in problems] == [field], "\n".join(str(p) for p in problems)
    return problems[0].reason


def field_of(where: str, key: str) -> str:
    return f"acme.{key}" if where == "acme" else f"{CERT}.{key}"


def write_setting(acme_file, where: str, key: str, value: Any) -> Path:
    """A config with one setting either in ``[acme]`` or in the ACME site's certificate table."""
    if where == "acme":
        return acme_file({key: value})
    return acme_file(sites=[shop(certificate={"acme": True, key: value})])


@pytest.mark.parametrize("where", ["acme", "site"])
def test_directory_must_be_https(acme_file, where):
    path = write_setting(acme_file, where, "directory", "http://acme.test/dir")
    reason = only_problem(path, field_of(where, "directory"))
    assert "'http://acme.test/dir' is not an https:// URL" in reason


@pytest.mark.parametrize("where", ["acme", "site"])
@pytest.mark.parametrize("contact", ["ops", "ops@localhost", "mailto:", "ops@example.com, dev@example.com"])
def test_contact_must_be_an_email_address(acme_file, where, contact):
    reason = only_problem(write_setting(acme_file, where, "contact", contact), field_of(where, "contact"))
    assert "is not an e-mail address" in reason


@pytest.mark.parametrize("where", ["acme", "site"])
def test_unknown_key_type_with_a_suggestion(acme_file, where):
    reason = only_problem(write_setting(acme_file, where, "key_type", "ecdsa-256"), field_of(where, "key_type"))
    assert "'ecdsa-256' is not one of" in reason
    assert "did you mean 'ecdsa-p256'?" in reason


@pytest.mark.parametrize("where", ["acme", "site"])
def test_unknown_challenge_with_a_suggestion(acme_file, where):
    path = write_setting(acme_file, where, "challenges", ["http-01", "tls-alpn01"])
    reason = only_problem(path, field_of(where, "challenges") + "[1]")
    assert "'tls-alpn01' is not a challenge tlsedge answers" in reason
    assert "did you mean 'tls-alpn-01'?" in reason


@pytest.mark.parametrize("where", ["acme", "site"])
def test_empty_challenges(acme_file, where):
    reason = only_problem(write_setting(acme_file, where, "challenges", []), field_of(where, "challenges"))
    assert "is empty" in reason


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2])
def test_renew_remaining_is_a_fraction_strictly_between_0_and_1(acme_file, value):
    reason = only_problem(acme_file({"renew_remaining": value}), "acme.renew_remaining")
    assert "between 0 and 1" in reason or "from 0 to 1" in reason


def test_retry_min_above_retry_max(acme_file):
    reason = only_problem(acme_file({"retry_min": "2h", "retry_max": "30m"}), "acme.retry_max")
    assert "shorter than retry_min" in reason


def test_retry_min_equal_to_retry_max_is_fine(acme_file):
    assert managed(acme_file({"retry_min": "1h", "retry_max": "1h"})).acme.retry_max == 3600.0


@pytest.mark.parametrize(("eab", "missing"), [({"kid": "kid-1"}, "hmac_key_env"), ({"hmac_key_env": "X"}, "kid")])
def test_eab_needs_kid_and_hmac_key_env(acme_file, eab, missing):
    reason = only_problem(acme_file({"eab": eab}), f"acme.eab.{missing}")
    assert reason.startswith("missing")


def test_eab_variable_must_be_set(acme_file, monkeypatch):
    monkeypatch.delenv("TLSEDGE_TEST_UNSET_EAB", raising=False)
    eab = {"kid": "kid-1", "hmac_key_env": "TLSEDGE_TEST_UNSET_EAB"}
    path = acme_file(sites=[shop(certificate={"acme": True, "eab": eab})])
    reason = only_problem(path, f"{CERT}.eab.hmac_key_env")
    assert "TLSEDGE_TEST_UNSET_EAB is not set" in reason


def test_unknown_keys(acme_file):
    path = acme_file({"retry_mni": "1m"}, [shop(certificate={"acme": True, "renew_remaining": 0.5, "colour": 1})])
    assert "did you mean 'retry_min'?" in problem_at(path, "acme.retry_mni").reason
    # renew_remaining is edge-wide only: a site cannot set it
    assert "unknown key 'renew_remaining'" in problem_at(path, f"{CERT}.renew_remaining").reason
    assert "unknown key 'colour'" in problem_at(path, f"{CERT}.colour").reason
    assert len(problems_of(path)) == 3


def test_unknown_key_next_to_imported(acme_file):
    path = acme_file(sites=[shop(certificate={"imported": True, "cert": "certs/blog.pem"})])
    assert "unknown key 'cert'" in only_problem(path, f"{CERT}.cert")


def test_acme_false(acme_file):
    reason = only_problem(acme_file(sites=[shop(certificate={"acme": False})]), f"{CERT}.acme")
    assert "must be true" in reason


def test_imported_false(acme_file):
    reason = only_problem(acme_file(sites=[shop(certificate={"imported": False})]), f"{CERT}.imported")
    assert "must be true" in reason


def test_wildcard_host_on_an_acme_site(acme_file):
    path = acme_file(sites=[shop(hosts=["shop.example", "*.shop.example"])])
    reason = only_problem(path, f"{SHOP}.hosts[1]")
    assert "wildcard" in reason
    assert "dns-01" in reason


def test_wildcard_host_on_an_imported_site_is_fine(acme_file):
    path = acme_file(sites=[shop(hosts=["shop.example", "*.shop.example"], certificate={"imported": True})])
    assert load_config(path).site("shop").hosts == ("shop.example", "*.shop.example")


def test_ip_host_on_an_acme_site(acme_file):
    reason = only_problem(acme_file(sites=[shop(hosts=["shop.example", "192.0.2.7"])]), f"{SHOP}.hosts[1]")
    assert "IP address" in reason


# --- challenges and listeners -----------------------------------------------------------------------------------------


def test_http01_only_without_an_http_listener_is_a_problem(acme_file):
    path = acme_file({"challenges": ["http-01"]}, server_table=server(http=None))
    reason = only_problem(path, f"{CERT}.challenges")
    assert "http-01 needs an http listener" in reason


def test_tls_alpn01_only_without_an_http_listener_is_fine(acme_file):
    config = load_config(acme_file({"challenges": ["tls-alpn-01"]}, server_table=server(http=None)))
    assert config.warnings == ()


def test_both_challenges_without_an_http_listener_is_a_warning(acme_file):
    path = acme_file(server_table=server(http=None))
    warning = warning_at(path, f"{CERT}.challenges")
    assert "only tls-alpn-01 will be tried" in warning


def test_no_https_listener_leaves_http01(acme_file):
    path = acme_file(server_table=server(https=None))
    assert "only http-01 will be tried" in warning_at(path, f"{CERT}.challenges")


# --- origin client certificate from the origin CA ---------------------------------------------------------------------


def test_origin_client_certificate_from_the_origin_ca(config_file):
    config = load_config(config_file(sites=[blog(origin_client_certificate="origin-ca")]))
    site = config.site("blog")
    assert site.origin_client_certificate == "origin-ca"
    assert site.pools[0].client_certificate == "origin-ca"


def test_origin_client_certificate_other_string_is_refused(config_file):
    path = config_file(sites=[blog(origin_client_certificate="origin_ca")])
    reason = only_problem(path, "site[blog].origin_client_certificate")
    assert '"origin-ca"' in reason
    assert "'origin_ca'" in reason
