"""SharedHealth across a real fork (the monitor writes, workers read) and the slot numbering of a configuration."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tlsedge.config.schema import Config, HealthCheck, Origin, PoolConfig, PoolServer, ServerConfig, SiteConfig
from tlsedge.upstream.shared import SharedHealth, carry_over, health_slots


def test_every_server_starts_up_and_only_changes_bump_the_version() -> None:
    shared = SharedHealth(3)
    try:
        assert [shared.is_up(i) for i in range(3)] == [True, True, True]
        assert shared.version() == 0
        shared.set_up(1, True)
        assert shared.version() == 0
        shared.set_up(1, False)
        assert (shared.is_up(1), shared.version()) == (False, 1)
        shared.set_up(1, False)
        assert shared.version() == 1
        shared.set_up(1, True)
        shared.set_up(2, False)
        assert [shared.is_up(i) for i in range(3)] == [True, True, False]
        assert shared.version() == 3
    finally:
        shared.close()


def test_a_slot_out_of_range_is_an_error_not_a_neighbours_byte() -> None:
    shared = SharedHealth(2)
    try:
        with pytest.raises(IndexError):
            shared.is_up(2)
        with pytest.raises(IndexError):
            shared.set_up(-1, False)
    finally:
        shared.close()


def test_no_slots_is_allowed() -> None:
    shared = SharedHealth(0)
    try:
        assert shared.version() == 0
    finally:
        shared.close()


def test_writes_of_a_forked_child_are_seen_by_the_parent() -> None:
    shared = SharedHealth(4)
    try:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the "monitor": takes two servers down, brings one back
            code = 1
            try:
                shared.set_up(0, False)
                shared.set_up(3, False)
                shared.set_up(0, True)
                os.write(ready_w, b"x")
                code = 0
            finally:
                os._exit(code)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        os.close(ready_r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [shared.is_up(i) for i in range(4)] == [True, True, True, False]
        assert shared.version() == 3
    finally:
        shared.close()


def test_a_child_forked_earlier_sees_later_writes_of_the_parent() -> None:
    """Workers are forked before the monitor writes anything: the mapping is shared, not copied at fork."""
    shared = SharedHealth(1)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                deadline = time.monotonic() + 5
                while shared.version() == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                code = 0 if (shared.version(), shared.is_up(0)) == (1, False) else 2
            finally:
                os._exit(code)
        shared.set_up(0, False)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shared.close()


def pool(name: str, *ports: int, health: bool = True) -> PoolConfig:
    return PoolConfig(
        name,
        tuple(PoolServer(Origin("http", "127.0.0.1", port)) for port in ports),
        "flexible",
        health=HealthCheck() if health else None,
    )


def test_slots_cover_checked_pools_in_config_order() -> None:
    sites = (
        SiteConfig("blog", ("blog.example",), (), (pool("default", 1, 2), pool("static", 3, health=False)), "flexible"),
        SiteConfig("shop", ("shop.example",), (), (pool("api", 2, 4),), "flexible"),
    )
    server = ServerConfig(state_dir=Path("/nonexistent"), workers=1, https=(), http=())
    config = Config(Path("/nonexistent/tlsedge.toml"), server, sites)
    assert health_slots(config) == {
        ("blog", "default", "http://127.0.0.1:1"): 0,
        ("blog", "default", "http://127.0.0.1:2"): 1,
        ("shop", "api", "http://127.0.0.1:2"): 2,
        ("shop", "api", "http://127.0.0.1:4"): 3,
    }


def test_carry_over_keeps_known_down_servers_down_across_a_reload() -> None:
    old_slots = {("blog", "api", "http://a:1"): 0, ("blog", "api", "http://b:2"): 1, ("blog", "api", "http://c:3"): 2}
    new_slots = {("blog", "api", "http://c:3"): 0, ("blog", "api", "http://b:2"): 1, ("blog", "api", "http://d:4"): 2}
    old, new = SharedHealth(3), SharedHealth(3)
    try:
        old.set_up(0, False)  # a: removed by the reload
        old.set_up(2, False)  # c: kept, moved to slot 0
        carry_over(old, old_slots, new, new_slots)
        assert [new.is_up(i) for i in range(3)] == [False, True, True]
    finally:
        old.close()
        new.close()
