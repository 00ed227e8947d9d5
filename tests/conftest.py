"""Fixtures shared by the whole suite: the ``slow`` marker and a per-run local CA with a certificate factory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tlsedge.pki.local_ca import LocalCA, self_signed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: long-running end-to-end tests (1 GiB streams); part of the default run, select with -m slow"
    )


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class Pki:
    """A local CA written to ``dir/ca.pem`` and a factory of (deliberately good or broken) leaf certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = LocalCA.create("tlsedge test CA")
        self.ca_pem = directory / "ca.pem"
        self.ca_pem.write_bytes(self.ca.cert_pem)
        self._made: dict[tuple, CertPair] = {}

    def _write(self, stem: str, issued) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        issued.write(pair.cert, pair.key)
        return pair

    def _stem(self, kind: str, names: tuple[str, ...], key_type: str) -> str:
        base = names[0].replace("*", "wild").replace(":", "_")
        return f"{kind}-{key_type}-{base}-{len(self._made)}"

    def good(self, *names: str, key_type: str = "ecdsa") -> CertPair:
        """A valid certificate for ``names`` signed by the CA."""
        key = ("good", names, key_type)
        if key not in self._made:
            self._made[key] = self._write(self._stem("good", names, key_type), self.ca.issue(list(names),
                                                                                               key_type=key_type))
        return self._made[key]

    def expired(self, *names: str) -> CertPair:
        """Signed by the CA, names right, but expired yesterday."""
        key = ("expired", names, "ecdsa")
        if key not in self._made:
            now = datetime.now(UTC)
            issued = self.ca.issue(list(names), not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
            self._made[key] = self._write(self._stem("expired", names, "ecdsa"), issued)
        return self._made[key]

    def self_signed(self, *names: str) -> CertPair:
        """Right names, valid dates, but signed by itself (not by the CA)."""
        key = ("self", names, "ecdsa")
        if key not in self._made:
            self._made[key] = self._write(self._stem("self", names, "ecdsa"), self_signed(list(names)))
        return self._made[key]

    def wrong_name(self, *names: str) -> CertPair:
        """Signed by the CA, valid, but for a different name: ``names`` are what it is *not* valid for."""
        return self.good(*(f"wrong-{n}" for n in names))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))
