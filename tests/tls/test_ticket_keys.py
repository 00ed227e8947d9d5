"""The shared ticket key file: permissions, reuse, regeneration after max_age."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from tlsedge.tls.tickets import load_or_create_ticket_keys, ticket_key_path


def test_created_with_private_modes(tmp_path: Path) -> None:
    key = load_or_create_ticket_keys(tmp_path)
    path = ticket_key_path(tmp_path)
    assert path == tmp_path / "tls" / "ticket.key"
    assert len(key) == 80
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_reused_while_fresh(tmp_path: Path) -> None:
    assert load_or_create_ticket_keys(tmp_path) == load_or_create_ticket_keys(tmp_path)


def test_regenerated_after_max_age(tmp_path: Path) -> None:
    first = load_or_create_ticket_keys(tmp_path, max_age=3600)
    path = ticket_key_path(tmp_path)
    old = time.time() - 3601
    os.utime(path, (old, old))
    second = load_or_create_ticket_keys(tmp_path, max_age=3600)
    assert second != first
    assert path.read_bytes() == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_ticket_keys(tmp_path, max_age=3600) == second


def test_invalid_file_replaced(tmp_path: Path) -> None:
    path = ticket_key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    key = load_or_create_ticket_keys(tmp_path)
    assert len(key) == 80
    assert path.read_bytes() == key


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_ticket_keys(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
