"""Origin pools in the configuration: the `origins` shorthand, [[site.pool]] tables, origin TLS per pool, client
certificates, balancing, stickiness, retries, health checks and outlier detection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlsedge.config import CertificateFiles, Origin, OriginTimeouts, load_config
from tlsedge.config.schema import (
    HeaderEdits,
    HealthCheck,
    OutlierDetection,
    PoolConfig,
    PoolServer,
    RouteConfig,
    StickySessions,
)

from .conftest import Pki, blog, changed, problem_at, problems_of, server, warning_at, warnings_of


def app(**changes: Any) -> dict[str, Any]:
    """A valid plain-HTTP site whose `origins` make the pool "default"."""
    return changed({"name": "app", "hosts": ["app.example"], "origins": ["http://127.0.0.1:9000"]}, changes)


def api(**changes: Any) -> dict[str, Any]:
    """A valid plain-HTTP pool named "api" with two servers."""
    return changed({"name": "api", "servers": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}, changes)


def tls_api(**changes: Any) -> dict[str, Any]:
    """A valid pool of https servers named by DNS name (so strict mode raises no IP-address warning)."""
    return api(servers=["https://a.internal:9443", "https://b.internal:9443"], **changes)


@pytest.fixture
def app_config(config_file):
    """Write a config with the site `app` and the given pools; unless told otherwise each pool gets a route."""

    def write(*pools: dict[str, Any], routes: list[dict[str, Any]] | None = None, **site_changes: Any) -> Path:
        site = app(**site_changes)
        if pools:
            site["pool"] = list(pools)
        if routes is None:
            routes = [
                {"path_prefix": f"/{p['name']}/", "pool": p["name"]} for p in pools if isinstance(p.get("name"), str)
            ]
        if routes:
            site["route"] = routes
        return config_file(server(https=None), [site])

    return write


def pool_of(path: Path, name: str, site: str = "app") -> PoolConfig:
    return load_config(path).site(site).pool(name)


# --- a complete example -----------------------------------------------------------------------------------------------

POOLS_EXAMPLE = """\
[server]
http = ["127.0.0.1:8080"]

[[site]]
name = "app"
hosts = ["app.example"]
origins = ["http://127.0.0.1:9000"]
origin_server_name = "origin.internal"
origin_client_certificate = { cert = "certs/edge-client.pem", key = "certs/edge-client.key" }

[site.origin]
tunnel_timeout = "1m"

[[site.pool]]
name = "api"
servers = [
  "https://10.0.0.1:9443",
  { address = "https://10.0.0.2:9443", weight = 3, max_connections = 50 },
  { address = "10.0.0.3:9443", backup = true },
  { address = "https://10.0.0.4", drain = true },
]
origin_tls = "strict"
origin_ca = "certs/origin-ca.pem"
balance = "hash"
hash_on = "header:X-User"
hash_method = "maglev"
slow_start = 0
retries = 3
retry_budget = 0.5
retry_timeout = "3s"
queue_timeout = "500ms"

[site.pool.health]
path = "/healthz?full=1"
interval = "10s"
timeout = "1s"
status = 204
body = "ok"
rise = 3
fall = 2
host = "health.internal"

[site.pool.outlier]
consecutive_failures = 0
base_ejection = "30s"
max_ejection = "10m"

[[site.pool]]
name = "static"
servers = ["http://127.0.0.1:9100"]
balance = "least_requests"
sticky = { cookie = "srv", max_age = "1h" }

[[site.route]]
path_prefix = "/api/"
methods = ["get", "POST"]
headers = { "X-Beta" = "1", "X-Debug" = true }
pool = "api"
host = "API.Internal:8443"
prefix_rewrite = "/v2/"
request_headers = { remove = ["X-Internal"], set = { "X-Env" = "prod" }, add = { Via = "edge" } }
response_headers = { set = { "Cache-Control" = "no-store" } }

[[site.route]]
path_regex = '^/static/.+\\.css$'
pool = "static"

[[site.route]]
path = "/"
pool = "default"
"""


def test_pools_example_loads_into_the_expected_objects(tmp_path, pki, write_config):
    pki.leaf("edge-client", ["edge.example"], usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pki.ca_bundle("origin-ca")
    certs = tmp_path / "certs"
    client = CertificateFiles(certs / "edge-client.pem", certs / "edge-client.key")

    config = load_config(write_config(POOLS_EXAMPLE))

    site = config.site("app")
    assert site.pools == (
        PoolConfig(name="default", servers=(PoolServer(Origin("http", "127.0.0.1", 9000)),), origin_tls="flexible"),
        PoolConfig(
            name="api",
            servers=(
                PoolServer(Origin("https", "10.0.0.1", 9443)),
                PoolServer(Origin("https", "10.0.0.2", 9443), weight=3, max_connections=50),
                PoolServer(Origin("https", "10.0.0.3", 9443), backup=True),
                PoolServer(Origin("https", "10.0.0.4", 443), drain=True),
            ),
            origin_tls="strict",
            origin_ca=certs / "origin-ca.pem",
            origin_server_name="origin.internal",
            client_certificate=client,
            balance="hash",
            hash_on="header",
            hash_key="x-user",
            hash_method="maglev",
            health=HealthCheck(
                path="/healthz?full=1",
                interval=10.0,
                timeout=1.0,
                status=(204, 204),
                body="ok",
                rise=3,
                fall=2,
                host="health.internal",
            ),
            outlier=OutlierDetection(consecutive_failures=0, base_ejection=30.0, max_ejection=600.0),
            slow_start=0.0,
            retries=3,
            retry_budget=0.5,
            retry_timeout=3.0,
            queue_timeout=0.5,
        ),
        PoolConfig(
            name="static",
            servers=(PoolServer(Origin("http", "127.0.0.1", 9100)),),
            origin_tls="flexible",
            balance="least_requests",
            sticky=StickySessions(cookie="srv", max_age=3600.0),
        ),
    )
    assert site.routes == (
        RouteConfig(
            pool="api",
            path_prefix="/api/",
            methods=("GET", "POST"),
            headers=(("x-beta", "1"), ("x-debug", None)),
            host="api.internal:8443",
            prefix_rewrite="/v2/",
            request_headers=HeaderEdits(remove=("x-internal",), set=(("x-env", "prod"),), add=(("via", "edge"),)),
            response_headers=HeaderEdits(set=(("cache-control", "no-store"),)),
        ),
        RouteConfig(pool="static", path_regex=r"^/static/.+\.css$"),
        RouteConfig(pool="default", path="/"),
    )
    assert site.origin_tls == "flexible"  # not set for the site: the mode of its first pool
    assert site.origin_server_name == "origin.internal"
    assert site.origin_client_certificate == client
    assert site.origin == OriginTimeouts(tunnel_timeout=60.0)
    assert site.origins[0] == Origin("http", "127.0.0.1", 9000)
    assert config.warnings == ()


# --- the origins shorthand and pool names -----------------------------------------------------------------------------


def test_origins_shorthand_makes_one_pool_named_default_with_the_site_settings(tmp_path, pki, config_file):
    pki.ca_bundle("origin-ca")
    path = config_file(sites=[blog(origins=["https://127.0.0.1:9443"], origin_ca="certs/origin-ca.pem")])

    site = load_config(path).site("blog")

    assert site.pools == (
        PoolConfig(
            name="default",
            servers=(PoolServer(Origin("https", "127.0.0.1", 9443)),),
            origin_tls="strict",
            origin_ca=tmp_path / "certs" / "origin-ca.pem",
            origin_server_name="origin.blog.example",
        ),
    )
    assert site.pool("default") is site.pools[0]
    assert site.routes == ()


def test_declared_pools_follow_the_shorthand_pool_in_order(app_config):
    site = load_config(app_config(api(), api(name="web"))).site("app")
    assert [pool.name for pool in site.pools] == ["default", "api", "web"]


def test_pools_without_origins(app_config):
    site = load_config(app_config(api(), origins=None)).site("app")
    assert [pool.name for pool in site.pools] == ["api"]
    assert site.origin_tls == "flexible"


def test_a_site_needs_origins_or_a_pool(app_config):
    for changes in ({"origins": None}, {"origins": None, "pool": []}):
        reason = problem_at(app_config(**changes), "site[app].origins").reason
        assert "missing; list the servers to proxy to" in reason
        assert "origins = [" in reason
        assert "[[site.pool]]" in reason


@pytest.mark.parametrize(
    ("pool", "field", "reason"),
    [
        (
            {"servers": ["http://127.0.0.1:9001"]},
            "site[app].pool[0].name",
            'missing; give the pool a name, e.g. name = "api"',
        ),
        (api(name="API"), "site[app].pool[0].name", "'API' is not a valid pool name"),
        (api(name=""), "site[app].pool[0].name", "is empty"),
        (api(name="default"), "site[app].pool[0].name", "already the name of the pool that `origins` makes"),
    ],
)
def test_pool_names(app_config, pool, field, reason):
    assert reason in problem_at(app_config(pool), field).reason


def test_pool_names_are_unique_in_a_site(app_config, config_file):
    reason = problem_at(app_config(api(), api()), "site[app].pool[1].name").reason
    assert reason == "'api' is already the name of site[app].pool[0]; pool names must be unique in a site: rename one"
    # ...but two sites may each have a pool named "api", and a site without `origins` may name a pool "default".
    path = config_file(
        server(https=None), [app(pool=[api()]), app(name="other", hosts=["other.example"], pool=[api()])]
    )
    assert len(load_config(path).sites) == 2
    assert [pool.name for pool in load_config(app_config(api(name="default"), origins=None)).site("app").pools] == [
        "default"
    ]


def test_pool_must_be_an_array_of_tables(write_config):
    path = write_config(
        '[server]\nhttp = ["127.0.0.1:8080"]\n[[site]]\nname = "app"\nhosts = ["app.example"]\n'
        '[site.pool]\nname = "api"\nservers = ["http://127.0.0.1:9001"]\n'
    )
    assert (
        "must be an array of tables (write [[site.pool]] with double brackets)"
        in problem_at(path, "site[app].pool").reason
    )


def test_unknown_pool_keys_suggest_the_right_one(app_config):
    path = app_config(api(balanse="hash", servers=[{"address": "http://127.0.0.1:9001", "wieght": 2}]))
    assert "did you mean 'balance'?" in problem_at(path, "site[app].pool[api].balanse").reason
    assert "did you mean 'weight'?" in problem_at(path, "site[app].pool[api].servers[0].wieght").reason


# --- servers ----------------------------------------------------------------------------------------------------------


def test_server_tables_carry_balancing_settings(app_config):
    servers = [
        "http://127.0.0.1:9001",
        {"address": "127.0.0.1:9002", "weight": 1000, "max_connections": 0, "backup": False, "drain": True},
        {"address": "http://127.0.0.1:9003", "backup": True},
    ]
    pool = pool_of(app_config(api(servers=servers)), "api")
    assert pool.servers == (
        PoolServer(Origin("http", "127.0.0.1", 9001)),
        PoolServer(Origin("http", "127.0.0.1", 9002), weight=1000, max_connections=0, drain=True),
        PoolServer(Origin("http", "127.0.0.1", 9003), backup=True),
    )


@pytest.mark.parametrize(
    ("servers", "field", "reason"),
    [
        (None, "site[app].pool[api].servers", "missing; list the pool's servers"),
        ([], "site[app].pool[api].servers", "is empty; list at least one server"),
        ("http://127.0.0.1:9001", "site[app].pool[api].servers", "must be an array of origins"),
        ([9001], "site[app].pool[api].servers[0]", "must be an origin string or a table"),
        ([{"weight": 2}], "site[app].pool[api].servers[0].address", "missing; give the server's origin"),
        (["http://127.0.0.1:9001/app"], "site[app].pool[api].servers[0]", "has a path, query or fragment"),
        ([{"address": "ftp://x"}], "site[app].pool[api].servers[0].address", "scheme 'ftp' is not supported"),
        (
            ["http://127.0.0.1:9001", {"address": "http://127.0.0.1:9001"}],
            "site[app].pool[api].servers[1].address",
            "'http://127.0.0.1:9001' is listed twice; remove one",
        ),
        (
            ["http://127.0.0.1:80", "http://127.0.0.1"],
            "site[app].pool[api].servers[1]",
            "'http://127.0.0.1:80' is listed twice",
        ),
        (
            [{"address": "http://127.0.0.1:9001", "weight": 0}],
            "site[app].pool[api].servers[0].weight",
            "from 1 to 1000, not 0",
        ),
        (
            [{"address": "http://127.0.0.1:9001", "weight": 1001}],
            "site[app].pool[api].servers[0].weight",
            "from 1 to 1000, not 1001",
        ),
        (
            [{"address": "http://127.0.0.1:9001", "max_connections": -1}],
            "site[app].pool[api].servers[0].max_connections",
            "must be 0 or more, not -1",
        ),
        (
            [{"address": "http://127.0.0.1:9001", "backup": "yes"}],
            "site[app].pool[api].servers[0].backup",
            "must be true or false",
        ),
        (
            [
                {"address": "http://127.0.0.1:9001", "backup": True},
                {"address": "http://127.0.0.1:9002", "backup": True},
            ],
            "site[app].pool[api].servers",
            "every server is a backup",
        ),
    ],
)
def test_bad_servers(app_config, servers, field, reason):
    assert reason in problem_at(app_config(api(servers=servers)), field).reason


def test_the_same_server_may_be_in_two_pools(app_config):
    site = load_config(app_config(api(), api(name="web"))).site("app")
    assert site.pool("api").origins == site.pool("web").origins
    assert len(site.origins) == 3  # each server once


def test_every_server_draining_without_backup_is_a_warning(app_config):
    servers = [{"address": "http://127.0.0.1:9001", "drain": True}, {"address": "http://127.0.0.1:9002", "drain": True}]
    warning = warning_at(app_config(api(servers=servers)), "site[app].pool[api].servers")
    assert "every server drains (drain = true) and there is no backup" in warning
    assert "set drain = false on at least one server" in warning
    # With a backup, draining every primary is how a pool is moved onto its backups: no warning.
    servers = [servers[0], {"address": "http://127.0.0.1:9002", "backup": True}]
    assert warnings_of(app_config(api(servers=servers))) == []


# --- origin TLS per pool ----------------------------------------------------------------------------------------------


def test_each_pool_infers_its_own_mode(app_config):
    site = load_config(app_config(tls_api(), api(name="web"))).site("app")
    assert [(pool.name, pool.origin_tls) for pool in site.pools] == [
        ("default", "flexible"),
        ("api", "strict"),
        ("web", "flexible"),
    ]


def test_a_pool_mixing_schemes_without_origin_tls(app_config):
    path = app_config(api(servers=["http://127.0.0.1:9001", "https://a.internal"]))
    assert "mixes http:// and https:// origins" in problem_at(path, "site[app].pool[api].servers").reason


def test_the_site_origin_tls_is_the_default_of_its_pools(app_config):
    path = app_config(api(), origin_tls="flexible")
    assert [pool.origin_tls for pool in load_config(path).site("app").pools] == ["flexible", "flexible"]
    # Scheme-less servers follow the mode they get from the site.
    path = app_config(api(servers=["a.internal:9443"]), origins=None, origin_tls="strict")
    assert pool_of(path, "api").servers[0].origin == Origin("https", "a.internal", 9443)
    # A server whose scheme contradicts the inherited mode is reported at the pool's server.
    path = app_config(tls_api(), origins=["https://o.internal"], origin_tls="flexible")
    assert "is https:// but origin_tls = 'flexible'" in problem_at(path, "site[app].pool[api].servers[0]").reason


def test_a_pool_origin_tls_overrides_the_site(app_config):
    path = app_config(api(origin_tls="flexible"), origins=["https://o.internal"], origin_tls="strict")
    site = load_config(path).site("app")
    assert (site.origin_tls, site.pool("api").origin_tls) == ("strict", "flexible")

    path = app_config(api(origin_tls="strict"))
    reason = problem_at(path, "site[app].pool[api].servers[1]").reason
    assert "is http:// but origin_tls = 'strict' means TLS to the origin: this would send plaintext" in reason
    assert (
        "did you mean 'full'?" in problem_at(app_config(api(origin_tls="ful")), "site[app].pool[api].origin_tls").reason
    )


def test_full_mode_is_warned_once_where_it_is_written(app_config):
    path = app_config(tls_api(origin_tls="full"))
    assert "'full' does not verify origin certificates" in warning_at(path, "site[app].pool[api].origin_tls")

    path = app_config(tls_api(), tls_api(name="web"), origins=["https://o.internal"], origin_tls="full")
    warnings = warnings_of(path)
    assert len(warnings) == 1
    assert " site[app].origin_tls: 'full' does not verify" in warnings[0]


def test_site_origin_ca_reaches_only_strict_pools(tmp_path, pki, app_config):
    pki.ca_bundle("origin-ca")
    ca = tmp_path / "certs" / "origin-ca.pem"
    site = load_config(app_config(tls_api(), origin_ca="certs/origin-ca.pem")).site("app")
    assert (site.origin_ca, site.pool("api").origin_ca, site.pool("default").origin_ca) == (ca, ca, None)


def test_pool_origin_ca(tmp_path, pki, app_config):
    pki.ca_bundle("private-ca")
    path = app_config(tls_api(origin_ca="certs/private-ca.pem"))
    assert pool_of(path, "api").origin_ca == tmp_path / "certs" / "private-ca.pem"

    path = app_config(tls_api(origin_tls="full", origin_ca="certs/private-ca.pem"))
    reason = problem_at(path, "site[app].pool[api].origin_ca").reason
    assert "only applies with origin_tls = 'strict' (this pool uses 'full')" in reason

    path = app_config(tls_api(origin_ca="certs/missing.pem"))
    assert "cannot read" in problem_at(path, "site[app].pool[api].origin_ca").reason


def test_site_tls_settings_no_pool_can_use(pki, app_config):
    pki.ca_bundle("origin-ca")
    path = app_config(api(), origin_ca="certs/origin-ca.pem")
    assert "only applies with origin_tls = 'strict' (this site uses 'flexible')" in (
        problem_at(path, "site[app].origin_ca").reason
    )
    path = app_config(tls_api(origin_tls="full"), api(name="web"), origins=None, origin_ca="certs/origin-ca.pem")
    assert "(its pools use 'flexible' and 'full')" in problem_at(path, "site[app].origin_ca").reason

    path = app_config(api(), origin_server_name="origin.internal")
    assert "origin_tls = 'flexible' is plain HTTP" in problem_at(path, "site[app].origin_server_name").reason


def test_a_site_tls_setting_every_pool_overrides_is_a_warning(pki, app_config):
    pki.ca_bundle("origin-ca")
    path = app_config(tls_api(origin_server_name="api.internal"), origins=None, origin_server_name="origin.internal")
    assert "every pool of the site sets its own value" in warning_at(path, "site[app].origin_server_name")


def test_pool_origin_server_name(app_config):
    path = app_config(tls_api(origin_server_name="API.Internal"), origin_server_name=None)
    assert pool_of(path, "api").origin_server_name == "api.internal"
    path = app_config(api(origin_server_name="api.internal"))
    assert "origin_tls = 'flexible' is plain HTTP" in problem_at(path, "site[app].pool[api].origin_server_name").reason


def test_strict_ip_servers_without_server_name_warn_at_the_pool(app_config):
    path = app_config(api(servers=["https://10.0.0.1"]))
    assert "its certificate must name that IP" in warning_at(path, "site[app].pool[api].origin_server_name")
    path = app_config(
        api(servers=["https://10.0.0.1"]), origins=["https://o.internal"], origin_server_name="o.internal"
    )
    assert warnings_of(path) == []


# --- client certificates (authenticated origin pulls) -----------------------------------------------------------------


@pytest.fixture
def edge_client(pki: Pki) -> dict[str, str]:
    pki.leaf("edge-client", ["edge.example"], usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return {"cert": "certs/edge-client.pem", "key": "certs/edge-client.key"}


def test_site_client_certificate_reaches_tls_pools_only(tmp_path, edge_client, app_config):
    site = load_config(app_config(tls_api(), origin_client_certificate=edge_client)).site("app")
    files = CertificateFiles(tmp_path / "certs" / "edge-client.pem", tmp_path / "certs" / "edge-client.key")
    assert site.origin_client_certificate == files
    assert site.pool("api").client_certificate == files
    assert site.pool("default").client_certificate is None


def test_pool_client_certificate(tmp_path, pki, edge_client, app_config):
    pki.leaf("api-client", ["edge.example"])
    own = {"cert": "certs/api-client.pem", "key": "certs/api-client.key"}
    path = app_config(
        tls_api(client_certificate=own), origins=["https://o.internal"], origin_client_certificate=edge_client
    )
    site = load_config(path).site("app")
    assert site.pool("api").client_certificate == CertificateFiles(
        tmp_path / "certs" / "api-client.pem", tmp_path / "certs" / "api-client.key"
    )
    assert site.pool("default").client_certificate == site.origin_client_certificate

    reason = problem_at(app_config(api(client_certificate=own)), "site[app].pool[api].client_certificate").reason
    assert "only applies to TLS origins (the edge presents it in the TLS handshake)" in reason
    reason = problem_at(app_config(origin_client_certificate=edge_client), "site[app].origin_client_certificate").reason
    assert "origin_tls = 'flexible' is plain HTTP" in reason


def test_client_certificate_files_are_checked(pki, app_config):
    pki.leaf("other", ["edge.example"])
    pki.leaf("edge-client", ["edge.example"])
    pool = tls_api(client_certificate={"cert": "certs/edge-client.pem", "key": "certs/other.key"})
    reason = problem_at(app_config(pool), "site[app].pool[api].client_certificate.key").reason
    assert "the private key does not match the certificate (CN=edge.example)" in reason

    pool = tls_api(client_certificate={"cert": "certs/nope.pem", "key": "certs/edge-client.key"})
    assert "cannot read" in problem_at(app_config(pool), "site[app].pool[api].client_certificate.cert").reason

    pool = tls_api(client_certificate={"cert": "certs/edge-client.pem"})
    assert (
        "missing; give the PEM private key"
        in problem_at(app_config(pool), "site[app].pool[api].client_certificate.key").reason
    )
    reason = problem_at(
        app_config(tls_api(client_certificate="certs/edge-client.pem")), "site[app].pool[api].client_certificate"
    ).reason
    assert "or a table" in reason and "'certs/edge-client.pem'" in reason
    config = load_config(app_config(tls_api(client_certificate="origin-ca")))
    assert config.site("app").pool("api").client_certificate == "origin-ca"


def test_client_certificate_warnings(pki, app_config):
    now = dt.datetime.now(dt.UTC)
    pki.leaf("old", ["edge.example"], not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1))
    path = app_config(
        tls_api(), origins=None, origin_client_certificate={"cert": "certs/old.pem", "key": "certs/old.key"}
    )
    assert "origins will refuse it: renew it" in warning_at(path, "site[app].origin_client_certificate.cert")

    _, key_path = pki.leaf("open", ["edge.example"], key_mode=0o644)
    path = app_config(tls_api(client_certificate={"cert": "certs/open.pem", "key": "certs/open.key"}))
    warning = warning_at(path, "site[app].pool[api].client_certificate.key")
    assert f"readable by group or others (mode 0644); restrict it: chmod 600 {key_path}" in warning

    pki.leaf("server-only", ["edge.example"], usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    path = app_config(tls_api(client_certificate={"cert": "certs/server-only.pem", "key": "certs/server-only.key"}))
    assert "does not include clientAuth" in warning_at(path, "site[app].pool[api].client_certificate.cert")


# --- balancing, stickiness, retries, queueing -------------------------------------------------------------------------


def test_pool_defaults(app_config):
    pool = pool_of(app_config(api()), "api")
    assert pool == PoolConfig(name="api", servers=pool.servers, origin_tls="flexible")
    assert (pool.balance, pool.sticky, pool.health, pool.outlier) == ("round_robin", None, None, OutlierDetection())


@pytest.mark.parametrize(
    ("hash_on", "expected"),
    [
        ("client_ip", ("client_ip", None)),
        ("uri", ("uri", None)),
        ("header:X-User", ("header", "x-user")),
        ("cookie:Session", ("cookie", "Session")),
    ],
)
def test_hash_on(app_config, hash_on, expected):
    pool = pool_of(app_config(api(balance="hash", hash_on=hash_on)), "api")
    assert (pool.hash_on, pool.hash_key) == expected


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"balance": "round_robbin"}, "balance", "did you mean 'round_robin'?"),
        ({"balance": "random"}, "balance", "is not one of 'round_robin', 'least_requests', 'power_of_two', 'hash'"),
        ({"hash_on": "uri"}, "hash_on", "only applies with balance = 'hash' (this pool uses 'round_robin')"),
        ({"balance": "least_requests", "hash_method": "ring"}, "hash_method", "only applies with balance = 'hash'"),
        ({"balance": "hash", "hash_on": "ip"}, "hash_on", "is not one of 'client_ip', 'uri', 'header:<name>'"),
        ({"balance": "hash", "hash_on": "client-ip"}, "hash_on", "did you mean 'client_ip'?"),
        ({"balance": "hash", "hash_on": "header:X User"}, "hash_on", "'X User' is not a header name"),
        ({"balance": "hash", "hash_on": "cookie:a=b"}, "hash_on", "'a=b' is not a cookie name"),
        ({"balance": "hash", "hash_method": "jump"}, "hash_method", "is not one of 'ring', 'maglev'"),
        ({"sticky": "yes"}, "sticky", "must be true, false or a table"),
        ({"sticky": {"cookie": "my cookie"}}, "sticky.cookie", "'my cookie' is not a cookie name"),
        ({"sticky": {"max_age": 0}}, "sticky.max_age", "must be greater than zero"),
        ({"sticky": {"name": "x"}}, "sticky.name", "unknown key 'name'"),
        ({"slow_start": -1}, "slow_start", "must be zero or more (0 turns it off)"),
        ({"retries": 11}, "retries", "must be from 0 to 10, not 11"),
        ({"retries": 1.5}, "retries", "must be an integer from 0 to 10"),
        ({"retry_budget": 1.5}, "retry_budget", "must be from 0 to 1, not 1.5"),
        ({"retry_budget": True}, "retry_budget", "must be a number from 0 to 1, not a boolean"),
        ({"retry_timeout": "0s"}, "retry_timeout", "must be greater than zero"),
        ({"queue_timeout": "soon"}, "queue_timeout", "is not a duration"),
    ],
)
def test_bad_pool_settings(app_config, changes, field, reason):
    assert reason in problem_at(app_config(api(**changes)), f"site[app].pool[api].{field}").reason


def test_sticky_forms(app_config):
    assert pool_of(app_config(api(sticky=True)), "api").sticky == StickySessions()
    assert pool_of(app_config(api(sticky=False)), "api").sticky is None
    assert pool_of(app_config(api(sticky={"max_age": "30m"})), "api").sticky == StickySessions(max_age=1800.0)


def test_slow_start_zero_disables_and_budget_takes_integers(app_config):
    pool = pool_of(app_config(api(slow_start=0, retry_budget=1, retries=0)), "api")
    assert (pool.slow_start, pool.retry_budget, pool.retries) == (0.0, 1.0, 0)


def test_sticky_with_hash_is_a_warning(app_config):
    warning = warning_at(app_config(api(balance="hash", sticky=True)), "site[app].pool[api].sticky")
    assert "is redundant with balance = 'hash'" in warning


def test_retries_with_a_single_server_is_a_warning(app_config):
    warning = warning_at(app_config(api(servers=["http://127.0.0.1:9001"], retries=2)), "site[app].pool[api].retries")
    assert "this pool has only one, so no retry can happen" in warning
    assert warnings_of(app_config(api(servers=["http://127.0.0.1:9001"]))) == []  # the default is not the operator's


# --- health checks and outlier detection ------------------------------------------------------------------------------


def test_health_defaults_and_values(app_config):
    assert pool_of(app_config(api(health={})), "api").health == HealthCheck()
    health = {"status": "200 - 204", "host": "[::1]:8080", "path": "/"}
    assert pool_of(app_config(api(health=health)), "api").health == HealthCheck(status=(200, 204), host="[::1]:8080")


@pytest.mark.parametrize(
    ("health", "field", "reason"),
    [
        ({"path": "healthz"}, "path", "does not start with '/'"),
        ({"path": "/health z"}, "path", "contains characters requests never carry raw"),
        ({"status": "200-399-500"}, "status", "is not a status or a status range"),
        ({"status": 600}, "status", "600 is out of range"),
        ({"status": "399-200"}, "status", "is empty: 399 is above 200"),
        ({"status": 2.5}, "status", "a float (2.5) is not a status"),
        ({"rise": 0}, "rise", "must be from 1 to 100, not 0"),
        ({"fall": 101}, "fall", "must be from 1 to 100, not 101"),
        ({"timeout": "5s"}, "timeout", "timeout (5s) must be shorter than interval (5s)"),
        ({"interval": "1s"}, "interval", "timeout (2s) must be shorter than interval (1s)"),
        ({"body": ""}, "body", "is empty"),
        ({"host": "bad host"}, "host", "not a host name or IP address"),
        ({"intervall": "5s"}, "intervall", "did you mean 'interval'?"),
    ],
)
def test_bad_health_checks(app_config, health, field, reason):
    assert reason in problem_at(app_config(api(health=health)), f"site[app].pool[api].health.{field}").reason


def test_health_must_be_a_table(app_config):
    assert "must be a table" in problem_at(app_config(api(health=True)), "site[app].pool[api].health").reason


def test_outlier_detection(app_config):
    outlier = {"consecutive_failures": 3, "base_ejection": "1s", "max_ejection": "1s"}
    assert pool_of(app_config(api(outlier=outlier)), "api").outlier == OutlierDetection(3, 1.0, 1.0)

    path = app_config(api(outlier={"consecutive_failures": -1}))
    assert "must be 0 or more, not -1" in problem_at(path, "site[app].pool[api].outlier.consecutive_failures").reason
    path = app_config(api(outlier={"base_ejection": "1m", "max_ejection": "30s"}))
    reason = problem_at(path, "site[app].pool[api].outlier.max_ejection").reason
    assert "max_ejection (30s) is shorter than base_ejection (60s)" in reason
    path = app_config(api(outlier={"base_ejection": "10m"}))
    assert "is shorter than base_ejection" in problem_at(path, "site[app].pool[api].outlier.base_ejection").reason


def test_tunnel_timeout(config_file):
    path = config_file(sites=[blog(origin={"tunnel_timeout": "2m"})])
    assert load_config(path).site("blog").origin.tunnel_timeout == 120.0
    path = config_file(sites=[blog(origin={"tunnel_timeout": 0})])
    assert "greater than zero" in problem_at(path, "site[blog].origin.tunnel_timeout").reason


# --- pools nothing reaches --------------------------------------------------------------------------------------------


def test_a_pool_no_route_names_is_a_warning(app_config):
    warning = warning_at(app_config(api(), routes=[]), "site[app].pool[api]")
    assert "no request reaches this pool: no route sends requests to it and unmatched requests go to 'default'" in (
        warning
    )
    assert "add a [[site.route]] with pool = 'api'" in warning


def test_the_first_pool_is_unused_only_behind_a_catch_all_route(app_config):
    assert warnings_of(app_config(api(), routes=[{"path_prefix": "/api/", "pool": "api"}])) == []
    path = app_config(api(), routes=[{"pool": "api"}])
    assert "{route} matches every request".format(route="site[app].route[0]") in warning_at(path, "site[app].origins")


def test_every_problem_in_a_pool_is_reported(app_config):
    pool = api(
        servers=[{"address": "http://127.0.0.1:9001", "weight": 0}, "nope"],
        retries=-1,
        health={"rise": 0},
        sticky={"cookie": ""},
    )
    assert {p.field for p in problems_of(app_config(pool))} == {
        "site[app].pool[api].servers[0].weight",
        "site[app].pool[api].servers[1]",
        "site[app].pool[api].retries",
        "site[app].pool[api].health.rise",
        "site[app].pool[api].sticky.cookie",
    }


def test_two_sticky_pools_of_a_site_need_distinct_cookie_names(app_config):
    path = app_config(api(sticky=True), api(name="web", sticky=True))
    reason = problem_at(path, "site[app].pool[web].sticky").reason
    assert "like pool 'api'" in reason and "srv_web" in reason
    distinct = app_config(api(sticky=True), api(name="web", sticky={"cookie": "web_srv"}))
    assert [p.sticky.cookie for p in load_config(distinct).site("app").pools if p.sticky] == ["tlsedge_srv", "web_srv"]
