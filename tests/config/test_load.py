"""load_config and run_check against real files: every rule, with the field and the reason the operator sees."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlsedge.config import (
    CertificateFiles,
    Config,
    Limits,
    Listener,
    Origin,
    OriginTimeouts,
    ServerConfig,
    SiteConfig,
    load_config,
)
from tlsedge.config.check import run_check
from tlsedge.config.schema import PoolConfig, PoolServer

from .conftest import (
    Pki,
    blog,
    new_key,
    pem_key,
    plain,
    problem_at,
    problems_of,
    render,
    server,
    warning_at,
    warnings_of,
)

# --- a complete valid configuration -----------------------------------------------------------------------------------

FULL_EXAMPLE = """\
[server]
state_dir = "./state"
workers = 2
https = ["127.0.0.1:8443", "[::1]:8443"]
http  = ["127.0.0.1:8080"]
default_site = "blog"
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
drain_timeout = "45s"
access_log = "logs/access.log"
error_log = "-"

[server.limits]
max_header_bytes = "16KiB"
max_header_count = 50
max_uri_bytes = "4k"
header_timeout = "5s"
body_idle_timeout = 20
keepalive_timeout = "2m"
handshake_timeout = "500ms"
max_connections = 5000

[[site]]
name = "blog"
hosts = ["Blog.Example", "*.blog.example"]
certificate = [
  { cert = "certs/blog.pem", key = "certs/blog.key" },
  { cert = "certs/blog-rsa.pem", key = "certs/blog-rsa.key" },
]
origins = ["https://127.0.0.1:9443", "127.0.0.1:9444", "https://[::1]"]
origin_tls = "strict"
origin_ca = "certs/origin-ca.pem"
origin_server_name = "origin.blog.example"
redirect_http = true
hsts = "max-age=63072000; includeSubDomains"
max_body_size = "1GiB"

[site.origin]
connect_timeout = "2s"
response_timeout = "1m"
read_timeout = 90
idle_timeout = "15s"
max_idle = 8
max_connections = 100
tunnel_timeout = "10m"

[[site]]
name = "plain"
hosts = ["plain.example"]
origins = ["http://localhost:9000", "127.0.0.1:9001"]
max_body_size = 0
"""


def test_full_example_loads_into_the_expected_objects(tmp_path, pki, write_config):
    pki.leaf("blog-rsa", ["blog.example", "*.blog.example"], "rsa")
    pki.ca_bundle("origin-ca")
    (tmp_path / "logs").mkdir()
    path = write_config(FULL_EXAMPLE)

    config = load_config(path)

    certs = tmp_path / "certs"
    assert config == Config(
        path=path,
        server=ServerConfig(
            state_dir=tmp_path / "state",
            workers=2,
            https=(Listener("127.0.0.1", 8443), Listener("::1", 8443)),
            http=(Listener("127.0.0.1", 8080),),
            default_site="blog",
            trusted_proxies=(
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("2001:db8::/32"),
                ipaddress.ip_network("192.0.2.7/32"),
            ),
            drain_timeout=45.0,
            access_log=str(tmp_path / "logs" / "access.log"),
            error_log="-",
            limits=Limits(
                max_header_bytes=16 * 1024,
                max_header_count=50,
                max_uri_bytes=4 * 1024,
                header_timeout=5.0,
                body_idle_timeout=20.0,
                keepalive_timeout=120.0,
                handshake_timeout=0.5,
                max_connections=5000,
            ),
        ),
        sites=(
            SiteConfig(
                name="blog",
                hosts=("blog.example", "*.blog.example"),
                certificates=(
                    CertificateFiles(certs / "blog.pem", certs / "blog.key"),
                    CertificateFiles(certs / "blog-rsa.pem", certs / "blog-rsa.key"),
                ),
                pools=(
                    PoolConfig(
                        name="default",
                        servers=(
                            PoolServer(Origin("https", "127.0.0.1", 9443)),
                            PoolServer(Origin("https", "127.0.0.1", 9444)),
                            PoolServer(Origin("https", "::1", 443)),
                        ),
                        origin_tls="strict",
                        origin_ca=certs / "origin-ca.pem",
                        origin_server_name="origin.blog.example",
                    ),
                ),
                origin_tls="strict",
                origin_ca=certs / "origin-ca.pem",
                origin_server_name="origin.blog.example",
                redirect_http=True,
                hsts="max-age=63072000; includeSubDomains",
                max_body_size=1024**3,
                origin=OriginTimeouts(
                    connect_timeout=2.0,
                    response_timeout=60.0,
                    read_timeout=90.0,
                    idle_timeout=15.0,
                    max_idle=8,
                    max_connections=100,
                    tunnel_timeout=600.0,
                ),
            ),
            SiteConfig(
                name="plain",
                hosts=("plain.example",),
                certificates=(),
                pools=(
                    PoolConfig(
                        name="default",
                        servers=(
                            PoolServer(Origin("http", "localhost", 9000)),
                            PoolServer(Origin("http", "127.0.0.1", 9001)),
                        ),
                        origin_tls="flexible",
                    ),
                ),
                origin_tls="flexible",
                redirect_http=False,
                max_body_size=0,
            ),
        ),
        warnings=(),
    )
    assert config.path.is_absolute()
    assert config.site("plain").origins[0].tls is False


def test_minimal_config_gets_documented_defaults(tmp_path, config_file):
    config = load_config(config_file(server(http=None), [blog()]))

    assert config.server.state_dir == tmp_path / "state"
    assert config.server.workers == min(os.cpu_count() or 1, 256)
    assert config.server.http == ()
    assert config.server.default_site is None
    assert config.server.trusted_proxies == ()
    assert config.server.drain_timeout == 30.0
    assert (config.server.access_log, config.server.error_log) == ("-", "-")
    assert config.server.limits == Limits()
    site = config.site("blog")
    assert site.origin_tls == "strict"
    assert site.redirect_http is True
    assert site.hsts is None
    assert site.max_body_size == 100 * 1024 * 1024
    assert site.origin == OriginTimeouts()
    assert config.warnings == ()


def test_relative_paths_resolve_against_the_config_directory_not_the_cwd(tmp_path, pki, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    pki_here = Pki(conf_dir)
    pki_here.leaf("blog", ["blog.example", "*.blog.example"])
    path = conf_dir / "tlsedge.toml"
    path.write_text(render(server(state_dir="var/state"), [blog()]))
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("etc/tlsedge.toml"))

    assert config.path == conf_dir / "tlsedge.toml"
    assert config.server.state_dir == conf_dir / "var" / "state"
    assert config.site("blog").certificates[0].cert == conf_dir / "certs" / "blog.pem"


def test_every_problem_is_reported_not_only_the_first(config_file):
    path = config_file(
        server(workers=0, drain_timeout="soon"), [blog(origins=["ftp://x"]), plain(hosts=["a_b.example"])]
    )

    fields = {p.field for p in problems_of(path)}

    assert fields == {"server.workers", "server.drain_timeout", "site[blog].origins[0]", "site[plain].hosts[0]"}


# --- the file itself --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    [problem] = problems_of(path)
    assert problem.file == path
    assert problem.field == "(file)"
    assert "cannot read the configuration file: No such file or directory" in problem.reason


def test_directory_instead_of_file(tmp_path):
    [problem] = problems_of(tmp_path)
    assert "cannot read the configuration file" in problem.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(config_file):
    path = config_file()
    path.chmod(0)
    [problem] = problems_of(path)
    assert "Permission denied" in problem.reason


def test_toml_syntax_error_names_line_and_column(write_config):
    path = write_config('[server]\nhttps = ["127.0.0.1:8443"]\nworkers = \n')
    [problem] = problems_of(path)
    assert problem.field == "(toml)"
    assert "TOML syntax error" in problem.reason
    assert "line 3, column 11" in problem.reason


def test_non_utf8_file(tmp_path):
    path = tmp_path / "tlsedge.toml"
    path.write_bytes(b'[server]\nhttps = ["\xff"]\n')
    [problem] = problems_of(path)
    assert "not UTF-8" in problem.reason


# --- unknown keys and types -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_changes", "site_changes", "field", "suggestion"),
    [
        ({"stat_dir": "x"}, {}, "server.stat_dir", "'state_dir'"),
        ({"limits": {"max_header_byte": 1}}, {}, "server.limits.max_header_byte", "'max_header_bytes'"),
        ({}, {"orgins": ["x"]}, "site[blog].orgins", "'origins'"),
        ({}, {"origin": {"conect_timeout": 1}}, "site[blog].origin.conect_timeout", "'connect_timeout'"),
        (
            {},
            {"certificate": {"cert": "certs/blog.pem", "key": "certs/blog.key", "chain": "x"}},
            "site[blog].certificate.chain",
            None,
        ),
    ],
)
def test_unknown_keys_are_problems_with_suggestions(config_file, server_changes, site_changes, field, suggestion):
    problem = problem_at(config_file(server(**server_changes), [blog(**site_changes)]), field)
    assert "unknown key" in problem.reason
    if suggestion:
        assert f"did you mean {suggestion}?" in problem.reason
    else:
        assert "did you mean" not in problem.reason


def test_unknown_top_level_key(write_config):
    path = write_config(render(server(), [blog()]) + "\n[serve]\nx = 1\n")
    assert "did you mean 'server'?" in problem_at(path, "serve").reason


def test_site_problems_carry_the_site_name(config_file):
    problem = problem_at(config_file(sites=[blog(hosts=["ok.example", "bad host"])]), "site[blog].hosts[1]")
    assert problem.site == "blog"
    assert str(problem).startswith(f"{problem.file}: site 'blog', site[blog].hosts[1]: ")


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"workers": "two"}, "server.workers", "must be an integer from 1 to 256, not a string ('two')"),
        ({"workers": 0}, "server.workers", "must be from 1 to 256, not 0"),
        ({"workers": 257}, "server.workers", "must be from 1 to 256, not 257"),
        ({"workers": True}, "server.workers", "not a boolean (true)"),
        ({"workers": 2.0}, "server.workers", "not a float (2.0)"),
        ({"https": "127.0.0.1:8443"}, "server.https", "must be an array of strings, not a string"),
        ({"https": [8443]}, "server.https[0]", "must be a string, not an integer (8443)"),
        ({"default_site": 1}, "server.default_site", "must be a string"),
        ({"state_dir": ""}, "server.state_dir", "is empty"),
        ({"limits": 5}, "server.limits", "must be a table"),
        ({"limits": {"max_header_count": 0}}, "server.limits.max_header_count", "must be 1 or more, not 0"),
        ({"limits": {"max_connections": "many"}}, "server.limits.max_connections", "must be an integer 1 or more"),
    ],
)
def test_wrong_types_and_ranges_in_server(config_file, changes, field, reason):
    assert reason in problem_at(config_file(server(**changes)), field).reason


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"name": 7}, "site[0].name", "must be a string"),
        ({"redirect_http": "yes"}, "site[blog].redirect_http", "must be true or false, not a string ('yes')"),
        ({"origin": {"max_idle": -1}}, "site[blog].origin.max_idle", "must be 0 or more, not -1"),
        ({"origin": {"max_connections": 1.5}}, "site[blog].origin.max_connections", "must be an integer 0 or more"),
        ({"origin": "fast"}, "site[blog].origin", "must be a table"),
        ({"origin_tls": "ful"}, "site[blog].origin_tls", "did you mean 'full'?"),
        ({"hsts": 5}, "site[blog].hsts", "must be true, false or a header value"),
    ],
)
def test_wrong_types_and_ranges_in_sites(config_file, changes, field, reason):
    assert reason in problem_at(config_file(sites=[blog(**changes)]), field).reason


# --- durations and sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (0.25, 0.25), ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_durations(config_file, value, seconds):
    config = load_config(config_file(server(drain_timeout=value, limits={"header_timeout": value})))
    assert config.server.drain_timeout == seconds
    assert config.server.limits.header_timeout == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10 parsecs", "'10 parsecs' is not a duration; write a number of seconds"),
        ("30", "'30' has no unit; write it as a number (30) or add a unit"),
        (0, "must be greater than zero, not 0"),
        ("0s", "must be greater than zero, not '0s'"),
        (-5, "must be greater than zero"),
        (True, "must be a duration, not a boolean"),
    ],
)
def test_bad_durations_name_the_field(config_file, value, reason):
    path = config_file(sites=[blog(origin={"connect_timeout": value})])
    assert reason in problem_at(path, "site[blog].origin.connect_timeout").reason


def test_non_finite_duration(write_config):
    path = write_config(render(server(), [blog()]).replace("[server]", "[server]\ndrain_timeout = inf"))
    assert "greater than zero" in problem_at(path, "server.drain_timeout").reason


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("512B", 512),
        ("32KiB", 32768),
        ("32k", 32768),
        ("2M", 2 * 1024**2),
        ("1g", 1024**3),
        ("1.5KiB", 1536),
        ("100MiB", 100 * 1024**2),
        (0, 0),
    ],
)
def test_sizes(config_file, value, size):
    assert load_config(config_file(sites=[blog(max_body_size=value)])).site("blog").max_body_size == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("32KB", "'32KB' is not a size (units are 1024-based: use KiB, MiB, GiB)"),
        ("lots", "'lots' is not a size"),
        ("1024", "'1024' has no unit"),
        (-1, "must be zero or more, not -1"),
        (1.5, "must be a size, not a float"),
    ],
)
def test_bad_sizes_name_the_field(config_file, value, reason):
    assert reason in problem_at(config_file(sites=[blog(max_body_size=value)]), "site[blog].max_body_size").reason


def test_header_size_limits_must_be_positive(config_file):
    path = config_file(server(limits={"max_header_bytes": 0}))
    assert "must be at least 1 bytes" in problem_at(path, "server.limits.max_header_bytes").reason


# --- listeners --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "listener"),
    [
        ("127.0.0.1:8443", Listener("127.0.0.1", 8443)),
        ("[::1]:8443", Listener("::1", 8443)),
        ("[0:0::1]:8443", Listener("::1", 8443)),
        ("localhost:443", Listener("localhost", 443)),
        ("LOCALHOST:443", Listener("localhost", 443)),
        ("*:443", Listener("*", 443)),
        ("0.0.0.0:443", Listener("0.0.0.0", 443)),
        ("[::]:443", Listener("::", 443)),
        ("127.0.0.1:65535", Listener("127.0.0.1", 65535)),
    ],
)
def test_listeners(config_file, text, listener):
    assert load_config(config_file(server(https=[text], http=None))).server.https == (listener,)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("::1:8443", "IPv6 addresses must be in brackets, e.g. '[::1]:8443'"),
        ("127.0.0.1", "'127.0.0.1' has no port"),
        ("[::1]", "'[::1]' has no port"),
        ("127.0.0.1:0", "port '0' is not valid; use a number from 1 to 65535"),
        ("127.0.0.1:65536", "port '65536' is not valid"),
        ("127.0.0.1:https", "port 'https' is not valid"),
        ("example.com:443", "cannot listen on 'example.com': use an IP address"),
        ("[127.0.0.1]:443", "in brackets is not an IPv6 address"),
        ("[::1]8443", "expected ':port' after ']'"),
        ("[::1:8443", "has '[' without ']'"),
    ],
)
def test_bad_listeners(config_file, text, reason):
    path = config_file(server(http=["127.0.0.1:8080", text]))
    assert reason in problem_at(path, "server.http[1]").reason


@pytest.mark.parametrize(
    ("https", "http", "field", "clashes_with"),
    [
        (["127.0.0.1:8443", "127.0.0.1:8443"], [], "server.https[1]", "server.https[0]"),
        (["127.0.0.1:8443"], ["127.0.0.1:8443"], "server.http[0]", "server.https[0]"),
        (["0.0.0.0:8443"], ["127.0.0.1:8443"], "server.http[0]", "server.https[0]"),
        (["*:8443"], ["127.0.0.1:8443"], "server.http[0]", "server.https[0]"),
        (["[::]:8443"], ["[::1]:8443"], "server.http[0]", "server.https[0]"),
        (["localhost:8443"], ["127.0.0.1:8443"], "server.http[0]", "server.https[0]"),
        (["*:8443"], ["[::1]:8443"], None, None),  # '*' is IPv4 only
        (["127.0.0.1:8443", "[::]:8443"], [], None, None),  # different families
        (["127.0.0.1:8443", "127.0.0.2:8443"], [], None, None),
    ],
)
def test_listener_clashes(config_file, https, http, field, clashes_with):
    path = config_file(server(https=https, http=http))
    if field is None:
        load_config(path)
    else:
        assert f"clashes with {clashes_with}" in problem_at(path, field).reason


def test_at_least_one_listener(config_file):
    for changes in ({"https": None, "http": None}, {"https": [], "http": []}):
        path = config_file(server(**changes), [plain()])
        assert "no listener; add https =" in problem_at(path, "server").reason


def test_missing_server_table(write_config):
    path = write_config(render(None, [plain()]))
    assert "no listener" in problem_at(path, "server").reason


# --- other server fields ----------------------------------------------------------------------------------------------


def test_trusted_proxies(config_file):
    path = config_file(server(trusted_proxies=["10.0.0.1/8", "nope", "192.168.0.0/16"]))
    problems = {p.field: p.reason for p in problems_of(path)}
    assert "write the network as '10.0.0.0/8'" in problems["server.trusted_proxies[0]"]
    assert "'nope' is not an IP address or network" in problems["server.trusted_proxies[1]"]
    assert len(problems) == 2


def test_logs(tmp_path, config_file):
    config = load_config(config_file(server(access_log="off", error_log="error.log")))
    assert config.server.access_log == "off"
    assert config.server.error_log == str(tmp_path / "error.log")

    path = config_file(server(access_log="nodir/access.log", error_log="off"))
    problems = {p.field: p.reason for p in problems_of(path)}
    assert f"directory {str(tmp_path / 'nodir')!r} does not exist" in problems["server.access_log"]
    assert "cannot be turned off; use '-' for stderr" in problems["server.error_log"]

    (tmp_path / "logs").mkdir()
    assert "is a directory" in problem_at(config_file(server(access_log="logs")), "server.access_log").reason


def test_state_dir_must_be_a_directory(tmp_path, config_file):
    (tmp_path / "state").write_text("")
    assert "is not a directory" in problem_at(config_file(), "server.state_dir").reason


def test_default_site_must_exist(config_file):
    assert load_config(config_file(server(default_site="blog"))).server.default_site == "blog"
    problem = problem_at(config_file(server(default_site="blg")), "server.default_site")
    assert "no site is named 'blg' (did you mean 'blog'?); sites are: 'blog'" in problem.reason


# --- sites and hosts --------------------------------------------------------------------------------------------------


def test_at_least_one_site(config_file, write_config):
    assert "no site configured" in problem_at(config_file(server(https=None), []), "site").reason
    path = write_config(render(server(), []) + '\n[site]\nname = "blog"\n')
    assert "must be an array of tables (write [[site]]" in problem_at(path, "site").reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Blog", "'Blog' is not a valid site name"),
        ("-blog", "not a valid site name"),
        ("", "is empty"),
        ("my blog", "not a valid site name"),
    ],
)
def test_site_names_are_well_formed(config_file, name, reason):
    assert reason in problem_at(config_file(sites=[blog(name=name)]), "site[0].name").reason


def test_site_name_is_required_and_unique(config_file):
    path = config_file(sites=[blog(name=None), plain(), plain(hosts=["other.example"])])
    problems = {p.field: p.reason for p in problems_of(path)}
    assert "missing; give the site a name" in problems["site[0].name"]
    assert "'plain' is already the name of site[1]; site names must be unique" in problems["site[2].name"]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("bad_host.example", "label 'bad_host' is not valid"),
        ("-a.example", "label '-a' is not valid"),
        ("a-.example", "label 'a-' is not valid"),
        ("a..example", "label '' is not valid"),
        ("x" * 64 + ".example", "1 to 63 characters per label"),
        (("a" * 60 + ".") * 5 + "example", "longer than 253 characters"),
        ("*.*.example", "'*' is allowed only as the whole leftmost label"),
        ("a.*.example", "'*' is allowed only as the whole leftmost label"),
        ("foo*.example", "'*' is allowed only as the whole leftmost label"),
        ("*", "a wildcard needs a domain after it"),
        ("127.0.0.1", "is an IP address, not a host name"),
        ("[::1]", "label '[::1]' is not valid"),
        ("example.123", "the last label cannot be all digits"),
        ("héllo.example", "write internationalized names as IDNA A-labels: 'xn--hllo-bpa.example'"),
        ("", "host name is empty"),
    ],
)
def test_invalid_hosts(config_file, host, reason):
    path = config_file(sites=[plain(hosts=["ok.example", host])])
    assert reason in problem_at(path, "site[plain].hosts[1]").reason


def test_hosts_are_normalized(config_file):
    path = config_file(
        server(https=None), [plain(hosts=["WWW.Example.", "xn--hllo-bpa.example", "*.Example", "localhost"])]
    )
    assert load_config(path).site("plain").hosts == ("www.example", "xn--hllo-bpa.example", "*.example", "localhost")


def test_hosts_required_and_non_empty(config_file):
    assert "missing; list the names" in problem_at(config_file(sites=[plain(hosts=None)]), "site[plain].hosts").reason
    assert "is empty" in problem_at(config_file(sites=[plain(hosts=[])]), "site[plain].hosts").reason


def test_a_host_belongs_to_one_site(config_file):
    path = config_file(sites=[blog(), plain(hosts=["plain.example", "Blog.Example"])])
    problem = problem_at(path, "site[plain].hosts[1]")
    assert problem.reason == (
        "host 'blog.example' is already served by site[blog]; a host belongs to one site only: "
        "remove it from one of them"
    )
    problem = problem_at(config_file(sites=[plain(hosts=["plain.example", "plain.example"])]), "site[plain].hosts[1]")
    assert "listed twice in this site" in problem.reason


def test_wildcard_and_exact_host_may_be_in_different_sites(pki, config_file):
    path = config_file(sites=[blog(), plain(hosts=["www.blog.example"])])
    assert load_config(path).site("plain").hosts == ("www.blog.example",)


# --- certificates -----------------------------------------------------------------------------------------------------


def cert_field(site: str = "blog", index: int | None = None) -> str:
    return f"site[{site}].certificate" + (f"[{index}]" if index is not None else "")


def test_certificate_files_must_exist(tmp_path, config_file):
    path = config_file(sites=[blog(certificate={"cert": "certs/nope.pem", "key": "certs/nope.key"})])
    problems = {p.field: p.reason for p in problems_of(path)}
    assert problems[f"{cert_field()}.cert"].startswith(
        f"cannot read {str(tmp_path / 'certs' / 'nope.pem')!r}: No such file or directory; check the path"
    )
    assert "cannot read" in problems[f"{cert_field()}.key"]


def test_certificate_needs_cert_and_key(config_file):
    path = config_file(sites=[blog(certificate={"cert": "certs/blog.pem"})])
    assert "missing; give the PEM private key" in problem_at(path, f"{cert_field()}.key").reason
    path = config_file(sites=[blog(certificate=["certs/blog.pem"])])
    assert "must be a table" in problem_at(path, cert_field(index=0)).reason
    path = config_file(sites=[blog(certificate="certs/blog.pem")])
    assert "must be a table" in problem_at(path, cert_field()).reason


def test_cert_file_without_pem_certificate(tmp_path, config_file):
    (tmp_path / "certs" / "junk.pem").write_text("hello\n")
    path = config_file(sites=[blog(certificate={"cert": "certs/junk.pem", "key": "certs/blog.key"})])
    reason = problem_at(path, f"{cert_field()}.cert").reason
    assert "no PEM certificate found" in reason
    assert "leaf first" in reason


def test_swapped_cert_and_key(config_file):
    path = config_file(sites=[blog(certificate={"cert": "certs/blog.key", "key": "certs/blog.pem"})])
    problems = {p.field: p.reason for p in problems_of(path)}
    assert "are cert and key swapped?" in problems[f"{cert_field()}.cert"]
    assert "are cert and key swapped?" in problems[f"{cert_field()}.key"]


def test_broken_pem_certificate(tmp_path, config_file):
    (tmp_path / "certs" / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    path = config_file(sites=[blog(certificate={"cert": "certs/broken.pem", "key": "certs/blog.key"})])
    assert "cannot parse the certificates" in problem_at(path, f"{cert_field()}.cert").reason


def test_encrypted_key_is_a_problem(pki, config_file):
    key = new_key()
    _, key_path = pki.leaf("enc", ["blog.example", "*.blog.example"], key=key)
    key_path.write_bytes(pem_key(key, password=b"secret"))
    path = config_file(sites=[blog(certificate={"cert": "certs/enc.pem", "key": "certs/enc.key"})])
    reason = problem_at(path, f"{cert_field()}.key").reason
    assert "is encrypted; tlsedge needs an unencrypted key" in reason
    assert f"openssl pkey -in {key_path}" in reason


def test_key_must_match_the_leaf(pki, config_file):
    pki.leaf("other", ["blog.example"])
    path = config_file(sites=[blog(certificate={"cert": "certs/blog.pem", "key": "certs/other.key"})])
    reason = problem_at(path, f"{cert_field()}.key").reason
    assert "the private key does not match the certificate (CN=blog.example)" in reason


def test_leaf_must_come_first(pki, config_file):
    key = new_key()
    cert_path, _ = pki.leaf("reversed", ["blog.example", "*.blog.example"], key=key)
    pems = cert_path.read_bytes().split(b"-----END CERTIFICATE-----\n")
    cert_path.write_bytes(pems[1] + b"-----END CERTIFICATE-----\n" + pems[0] + b"-----END CERTIFICATE-----\n")
    path = config_file(sites=[blog(certificate={"cert": "certs/reversed.pem", "key": "certs/reversed.key"})])
    reason = problem_at(path, f"{cert_field()}.cert").reason
    assert "the leaf certificate must come first: the key matches certificate #2" in reason


def test_one_ec_and_one_rsa_certificate_per_site(pki, config_file):
    pki.leaf("rsa", ["blog.example", "*.blog.example"], "rsa")
    pki.leaf("ec2", ["blog.example", "*.blog.example"])
    both = [{"cert": "certs/blog.pem", "key": "certs/blog.key"}, {"cert": "certs/rsa.pem", "key": "certs/rsa.key"}]
    assert len(load_config(config_file(sites=[blog(certificate=both)])).site("blog").certificates) == 2

    two_ec = [both[0], {"cert": "certs/ec2.pem", "key": "certs/ec2.key"}]
    reason = problem_at(config_file(sites=[blog(certificate=two_ec)]), cert_field(index=1)).reason
    assert f"a second EC certificate (the first is {cert_field(index=0)})" in reason
    assert "remove one" in reason


def test_unfit_keys(pki, config_file):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pki.leaf("weak", ["blog.example"], key=weak)
    path = config_file(sites=[blog(certificate={"cert": "certs/weak.pem", "key": "certs/weak.key"})])
    assert "RSA key of 1024 bits is too small" in problem_at(path, f"{cert_field()}.key").reason

    odd = ec.generate_private_key(ec.SECP256K1())
    pki.leaf("odd", ["blog.example"], key=odd)
    path = config_file(sites=[blog(certificate={"cert": "certs/odd.pem", "key": "certs/odd.key"})])
    assert "EC curve secp256k1 is not accepted" in problem_at(path, f"{cert_field()}.key").reason


def test_ed25519_certificate_is_a_warning(pki, config_file):
    pki.leaf("ed", ["blog.example", "*.blog.example"], key=ed25519.Ed25519PrivateKey.generate())
    path = config_file(sites=[blog(certificate={"cert": "certs/ed.pem", "key": "certs/ed.key"})])
    assert "most browsers do not accept Ed25519 certificates" in warning_at(path, f"{cert_field()}.key")


def test_expired_and_not_yet_valid_certificates_are_warnings(pki, config_file):
    now = dt.datetime.now(dt.UTC)
    pki.leaf(
        "old",
        ["blog.example", "*.blog.example"],
        not_before=now - dt.timedelta(days=100),
        not_after=now - dt.timedelta(days=10),
    )
    path = config_file(sites=[blog(certificate={"cert": "certs/old.pem", "key": "certs/old.key"})])
    warning = warning_at(path, f"{cert_field()}.cert")
    assert "the certificate expired on" in warning
    assert "renew it" in warning

    pki.leaf("future", ["blog.example", "*.blog.example"], not_before=now + dt.timedelta(days=2))
    path = config_file(sites=[blog(certificate={"cert": "certs/future.pem", "key": "certs/future.key"})])
    assert "is not valid before" in warning_at(path, f"{cert_field()}.cert")


def test_hosts_not_covered_by_a_certificate_are_warnings(pki, config_file):
    pki.leaf("narrow", ["blog.example", "*.shop.example"])
    hosts = ["blog.example", "www.shop.example", "*.shop.example", "shop.example", "a.b.shop.example", "*.blog.example"]
    path = config_file(sites=[blog(hosts=hosts, certificate={"cert": "certs/narrow.pem", "key": "certs/narrow.key"})])
    warnings = warnings_of(path)
    uncovered = {w.split(": ")[1].split(", ")[1] for w in warnings}
    assert uncovered == {"site[blog].hosts[3]", "site[blog].hosts[4]", "site[blog].hosts[5]"}
    assert "host 'shop.example' is not covered by the site's certificates" in warnings[0]
    assert "(they name: blog.example, *.shop.example)" in warnings[0]


def test_host_covered_by_any_of_the_site_certificates(pki, config_file):
    pki.leaf("apex", ["blog.example"], "rsa")
    pki.leaf("star", ["*.blog.example"])
    both = [{"cert": "certs/apex.pem", "key": "certs/apex.key"}, {"cert": "certs/star.pem", "key": "certs/star.key"}]
    assert warnings_of(config_file(sites=[blog(certificate=both)])) == []


def test_certificate_without_san_is_a_warning(pki, config_file):
    pki.leaf("nosan", [])
    path = config_file(sites=[blog(certificate={"cert": "certs/nosan.pem", "key": "certs/nosan.key"})])
    assert "has no subjectAltName" in warning_at(path, f"{cert_field()}.cert")


def test_key_readable_by_others_is_a_warning(pki, config_file):
    _, key_path = pki.leaf("open", ["blog.example", "*.blog.example"], key_mode=0o644)
    path = config_file(sites=[blog(certificate={"cert": "certs/open.pem", "key": "certs/open.key"})])
    warning = warning_at(path, f"{cert_field()}.key")
    assert f"readable by group or others (mode 0644); restrict it: chmod 600 {key_path}" in warning


# --- origins ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origins", "mode", "expected"),
    [
        (["http://127.0.0.1:9000"], "flexible", [Origin("http", "127.0.0.1", 9000)]),
        (["http://app.internal"], "flexible", [Origin("http", "app.internal", 80)]),
        (["https://App.Internal"], "strict", [Origin("https", "app.internal", 443)]),
        (["HTTPS://[::1]:9443/"], "strict", [Origin("https", "::1", 9443)]),
        (["http://[::1]"], "flexible", [Origin("http", "::1", 80)]),
        (["127.0.0.1:9001"], "strict", [Origin("https", "127.0.0.1", 9001)]),
        (
            ["http://a.internal:1", "b.internal:2"],
            "flexible",
            [Origin("http", "a.internal", 1), Origin("http", "b.internal", 2)],
        ),
        (
            ["https://a.internal", "b.internal:2"],
            "strict",
            [Origin("https", "a.internal", 443), Origin("https", "b.internal", 2)],
        ),
    ],
)
def test_origins_and_inferred_origin_tls(config_file, origins, mode, expected):
    site = load_config(config_file(sites=[blog(origins=origins, origin_server_name=None)])).site("blog")
    assert (site.origins, site.origin_tls) == (tuple(expected), mode)


@pytest.mark.parametrize(
    ("mode", "origin", "expected"),
    [
        ("flexible", "127.0.0.1:9000", Origin("http", "127.0.0.1", 9000)),
        ("full", "127.0.0.1:9000", Origin("https", "127.0.0.1", 9000)),
        ("strict", "127.0.0.1:9000", Origin("https", "127.0.0.1", 9000)),
    ],
)
def test_schemeless_origins_follow_origin_tls(config_file, mode, origin, expected):
    path = config_file(sites=[blog(origins=[origin], origin_tls=mode, origin_server_name=None)])
    assert load_config(path).site("blog").origins == (expected,)


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("http://127.0.0.1:9000/app", "has a path, query or fragment ('/app'); give only scheme://host:port"),
        ("http://127.0.0.1:9000?x=1", "has a path, query or fragment ('?x=1')"),
        ("http://127.0.0.1#frag", "has a path, query or fragment ('#frag')"),
        ("http://user:pw@127.0.0.1:9000", "contains user info ('...@'); origins take no credentials"),
        ("ftp://127.0.0.1", "scheme 'ftp' is not supported; use http:// or https://"),
        ("127.0.0.1", "has neither scheme nor port; write 'http://127.0.0.1' or '127.0.0.1:PORT'"),
        ("http://::1:9000", "IPv6 addresses must be in brackets, e.g. 'http://[::1]:9000'"),
        ("http://127.0.0.1:0", "port '0' is not valid"),
        ("http://127.0.0.1:99999", "port '99999' is not valid"),
        ("http://:9000", "has no host"),
        ("http://bad_name:9000", "origin host is not an IP address or a valid DNS name"),
        ("http://[nope]:9000", "in brackets is not an IPv6 address"),
    ],
)
def test_bad_origins(config_file, origin, reason):
    path = config_file(sites=[plain(origins=["http://127.0.0.1:9000", origin])])
    assert reason in problem_at(path, "site[plain].origins[1]").reason


def test_origins_required_non_empty_and_distinct(config_file):
    path = config_file(sites=[plain(origins=None)])
    assert "missing; list the servers" in problem_at(path, "site[plain].origins").reason
    assert "is empty" in problem_at(config_file(sites=[plain(origins=[])]), "site[plain].origins").reason
    path = config_file(sites=[plain(origins=["http://127.0.0.1:80", "http://127.0.0.1"])])
    assert "'http://127.0.0.1:80' is listed twice" in problem_at(path, "site[plain].origins[1]").reason


def test_mixed_schemes_without_origin_tls_is_a_problem(config_file):
    path = config_file(sites=[blog(origins=["http://127.0.0.1:9000", "https://127.0.0.1:9443"])])
    assert "mixes http:// and https:// origins" in problem_at(path, "site[blog].origins").reason


def test_explicit_origin_tls_must_agree_with_schemes(config_file):
    path = config_file(sites=[blog(origins=["http://127.0.0.1:9000", "https://127.0.0.1:9443"], origin_tls="strict")])
    reason = problem_at(path, "site[blog].origins[0]").reason
    assert "is http:// but origin_tls = 'strict' means TLS to the origin: this would send plaintext" in reason
    assert "use https:// or origin_tls = 'flexible'" in reason

    path = config_file(sites=[plain(origins=["https://127.0.0.1:9443"], origin_tls="flexible")])
    assert "is https:// but origin_tls = 'flexible'" in problem_at(path, "site[plain].origins[0]").reason

    path = config_file(sites=[blog(origins=["http://127.0.0.1:9000"], origin_tls="full", origin_server_name=None)])
    assert "origin_tls = 'full' means TLS" in problem_at(path, "site[blog].origins[0]").reason


def test_full_mode_is_a_warning(config_file):
    path = config_file(sites=[blog(origin_tls="full")])
    config = load_config(path)
    assert config.site("blog").origin_tls == "full"
    assert "'full' does not verify origin certificates" in warning_at(path, "site[blog].origin_tls")


def test_origin_ca(tmp_path, pki, config_file):
    pki.ca_bundle("origin-ca")
    site = load_config(config_file(sites=[blog(origin_ca="certs/origin-ca.pem")])).site("blog")
    assert site.origin_ca == tmp_path / "certs" / "origin-ca.pem"

    path = config_file(sites=[blog(origin_ca="certs/origin-ca.pem", origin_tls="full")])
    assert "only applies with origin_tls = 'strict' (this site uses 'full')" in (
        problem_at(path, "site[blog].origin_ca").reason
    )
    path = config_file(sites=[blog(origin_ca="certs/missing.pem")])
    assert "cannot read" in problem_at(path, "site[blog].origin_ca").reason
    path = config_file(sites=[blog(origin_ca="certs/blog.key")])
    assert "no PEM certificate found" in problem_at(path, "site[blog].origin_ca").reason


def test_origin_server_name(config_file):
    path = config_file(sites=[blog(origin_server_name="Origin.Blog.Example")])
    assert load_config(path).site("blog").origin_server_name == "origin.blog.example"
    path = config_file(sites=[blog(origin_server_name="*.blog.example")])
    assert "a wildcard is not allowed here" in problem_at(path, "site[blog].origin_server_name").reason
    path = config_file(sites=[blog(origin_server_name="bad name")])
    assert "is not valid" in problem_at(path, "site[blog].origin_server_name").reason
    path = config_file(sites=[plain(origin_server_name="origin.example")])
    assert "origin_tls = 'flexible' is plain HTTP" in problem_at(path, "site[plain].origin_server_name").reason


def test_strict_ip_origin_without_server_name_is_a_warning(config_file):
    path = config_file(sites=[blog(origin_server_name=None)])
    assert "its certificate must name that IP" in warning_at(path, "site[blog].origin_server_name")
    assert warnings_of(config_file(sites=[blog(origin_server_name=None, origins=["https://app.internal"])])) == []


# --- redirect, HSTS, and listeners per site ---------------------------------------------------------------------------


def test_redirect_http_defaults_follow_certificates(config_file):
    config = load_config(config_file(sites=[blog(), plain()]))
    assert config.site("blog").redirect_http is True
    assert config.site("plain").redirect_http is False
    assert load_config(config_file(sites=[blog(redirect_http=False)])).site("blog").redirect_http is False


def test_redirect_and_hsts_need_a_certificate(config_file):
    path = config_file(sites=[blog(), plain(redirect_http=True, hsts="max-age=60")])
    problems = {p.field: p.reason for p in problems_of(path)}
    assert "there is no https to redirect to" in problems["site[plain].redirect_http"]
    assert "HSTS is only sent over https" in problems["site[plain].hsts"]
    assert load_config(config_file(sites=[blog(), plain(redirect_http=False, hsts=False)])).site("plain").hsts is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "max-age=31536000"),
        (False, None),
        ("max-age=600", "max-age=600"),
        ("max-age=63072000; includeSubDomains; preload", "max-age=63072000; includeSubDomains; preload"),
    ],
)
def test_hsts_values(config_file, value, expected):
    assert load_config(config_file(sites=[blog(hsts=value)])).site("blog").hsts == expected


@pytest.mark.parametrize("value", ["maxage=1", "max-age=1; evil", "max-age=1\r\nX-Injected: 1", ""])
def test_bad_hsts_values(config_file, value):
    assert "Strict-Transport-Security" in problem_at(config_file(sites=[blog(hsts=value)]), "site[blog].hsts").reason


def test_certificate_without_https_listener_is_a_warning(config_file):
    path = config_file(server(https=None), [blog()])
    assert "has a certificate but [server] has no https listener" in warning_at(path, "site[blog].certificate")


def test_https_listener_without_any_certificate_is_a_problem(config_file):
    path = config_file(server(), [plain()])
    assert "no site has a certificate" in problem_at(path, "server.https").reason


def test_plain_site_without_http_listener_is_a_warning(config_file):
    path = config_file(server(http=None), [blog(), plain()])
    assert "cannot be reached" in warning_at(path, "site[plain]")


# --- tlsedge check ----------------------------------------------------------------------------------------------------


def test_check_success_prints_warnings_and_summary(tmp_path, config_file, monkeypatch):
    config_file(server(workers=2), [blog(origin_tls="full"), plain()])
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()

    assert run_check(Path("tlsedge.toml"), out) == 0

    lines = out.getvalue().splitlines()
    assert lines[0].startswith("warning: tlsedge.toml: site 'blog', site[blog].origin_tls: 'full' does not verify")
    assert lines[-1] == "tlsedge.toml: OK: 2 sites, 1 https and 1 http listeners, 2 workers"
    assert len(lines) == 2


def test_check_failure_prints_each_problem_and_the_count(tmp_path, config_file, monkeypatch):
    config_file(server(workers="two"), [blog(orgins=[])])
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()

    assert run_check(Path("tlsedge.toml"), out) == 1

    assert out.getvalue().splitlines() == [
        "tlsedge.toml: server.workers: must be an integer from 1 to 256, not a string ('two')",
        "tlsedge.toml: site 'blog', site[blog].orgins: unknown key 'orgins' (did you mean 'origins'?); "
        "fix its name or remove it",
        "2 problems found",
    ]


def test_check_singular_wording(tmp_path, write_config):
    out = io.StringIO()
    assert run_check(tmp_path / "missing.toml", out) == 1
    assert out.getvalue().splitlines()[-1] == "1 problem found"

    path = write_config(render(server(https=None, workers=1), [plain()]))
    out = io.StringIO()
    assert run_check(path, out) == 0
    assert out.getvalue().endswith(": OK: 1 site, 0 https and 1 http listeners, 1 worker\n")


# --- the documentation's examples -------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)


def test_documented_minimal_example_loads(write_config):
    config = load_config(write_config(documented_examples()[0]))
    assert [site.name for site in config.sites] == ["blog"]
    assert config.warnings == ()


def test_documented_complete_example_loads(tmp_path, pki, write_config):
    pki.leaf("blog-ecdsa", ["blog.example", "*.blog.example"])
    pki.leaf("blog-rsa", ["blog.example", "*.blog.example"], "rsa")
    pki.ca_bundle("origin-ca")
    text = documented_examples()[-1].replace("/var/log/tlsedge/access.log", str(tmp_path / "access.log"))

    config = load_config(write_config(text))

    assert [site.name for site in config.sites] == ["blog", "status"]
    assert config.site("blog").origin_tls == "strict"
    assert config.site("status").redirect_http is False
    assert config.server.limits == Limits()
    assert config.site("blog").origin == OriginTimeouts()
    assert config.warnings == ()


def test_documented_pools_example_loads(tmp_path, pki, write_config):
    [text] = [example for example in documented_examples() if "[[site.route]]" in example and "[server]" in example]
    pki.leaf("shop", ["shop.example"])
    pki.leaf("edge-client", ["edge.example"], usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pki.ca_bundle("origin-ca")

    config = load_config(write_config(text))

    site = config.site("shop")
    assert [(pool.name, pool.origin_tls, len(pool.servers)) for pool in site.pools] == [
        ("web", "strict", 2),
        ("api", "strict", 3),
    ]
    assert all(pool.client_certificate == site.origin_client_certificate for pool in site.pools)
    assert site.pool("web").sticky is not None
    assert site.pool("api").health is not None and site.pool("api").health.status == (204, 204)
    assert [(route.pool, route.prefix_rewrite) for route in site.routes] == [("api", "/"), ("web", None)]
    assert config.warnings == ()
