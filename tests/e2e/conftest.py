"""Fixtures of the end-to-end suite: origins (a scriptable Python one and a real nginx), edges (a shared main edge and a
factory for tests that need their own config), and the edge's logs attached to failing tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import BLOG_HOSTS, LIVE_EDGES, MAIN_LIMITS, Edge, NginxOrigin, PythonOrigin, main_sites
from pool_support import Fleet, pool_site


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for edge in list(LIVE_EDGES):
            rep.sections.append((f"edge {edge.tmp.name}", edge.diagnostics()))


@pytest.fixture(scope="session")
def py_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PythonOrigin]:
    origin = PythonOrigin(tmp_path_factory.mktemp("py-origin") / "origin.log")
    yield origin
    origin.stop()


@pytest.fixture(scope="session")
def origin_certs(pki) -> dict[str, Any]:
    return {
        "good": pki.good("origin.test"),
        "wrong_name": pki.wrong_name("origin.test"),
        "expired": pki.expired("origin.test"),
        "self_signed": pki.self_signed("origin.test"),
    }


@pytest.fixture(scope="session")
def nginx_origin(tmp_path_factory: pytest.TempPathFactory, origin_certs) -> Iterator[NginxOrigin]:
    origin = NginxOrigin(tmp_path_factory.mktemp("nginx"), origin_certs)
    yield origin
    origin.stop()


@pytest.fixture(scope="session")
def site_certs(pki) -> dict[str, Any]:
    return {
        "blog": [pki.good(*BLOG_HOSTS), pki.good(*BLOG_HOSTS, key_type="rsa")],
        "shop": pki.good("shop.example"),
        "dead": pki.good("dead.example"),
        "new": pki.good("new.example"),
    }


@pytest.fixture(scope="session")
def main_edge(tmp_path_factory: pytest.TempPathFactory, pki, py_origin, site_certs) -> Iterator[Edge]:
    """The shared edge: no default_site, trusted_proxies = 127.0.0.2, short limits (see MAIN_LIMITS)."""
    edge = Edge(
        tmp_path_factory.mktemp("main-edge"),
        main_sites(py_origin, site_certs),
        pki.ca_pem,
        trusted_proxies=["127.0.0.2"],
        limits=dict(MAIN_LIMITS),
    )
    edge.start()
    yield edge
    edge.stop()


@pytest.fixture
def origin(py_origin: PythonOrigin) -> PythonOrigin:
    """The Python origin with its counters reset for this test."""
    py_origin.reset()
    return py_origin


@pytest.fixture
def make_edge(tmp_path: Path, pki) -> Iterator[Any]:
    """Factory: ``make_edge(sites, **server)`` starts an edge of its own, stopped at teardown."""
    edges: list[Edge] = []

    def make(sites: list[dict[str, Any]], start: bool = True, **server: Any) -> Edge:
        edge = Edge(tmp_path / f"edge{len(edges)}", sites, pki.ca_pem, **server)
        edges.append(edge)
        if start:
            edge.start()
        return edge

    yield make
    for edge in edges:
        edge.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Origin servers of the pool tests, closed at teardown."""
    made = Fleet()
    yield made
    made.close()


@pytest.fixture
def blog_edge(make_edge, site_certs):
    """``blog_edge(pool, ..., workers=1)``: an edge whose blog site is served by the given pools."""

    def make(*pools: dict, workers: int = 1, **site_extra):
        return make_edge([pool_site(site_certs["blog"], list(pools), **site_extra)], workers=workers)

    return make
