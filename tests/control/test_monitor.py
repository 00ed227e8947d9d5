"""The health monitor against real origins on 127.0.0.1: transitions reach SharedHealth, health.json and the log once.

The in-process tests run `monitor` on a uvloop loop next to the origins; the process tests fork `run_monitor` the way
the supervisor does and check that it stops on SIGTERM and when its parent disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tlsedge.config.schema import Config, HealthCheck, Origin, PoolConfig, PoolServer, ServerConfig, SiteConfig
from tlsedge.control.monitor import check_host, monitor, run_monitor
from tlsedge.upstream.shared import SharedHealth, health_slots


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (checks of it fail with "connection refused")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_tls(site: SiteConfig, pool: PoolConfig, origin: Origin) -> tuple[ssl.SSLContext | None, str | None]:
    """The tests' origins speak plain HTTP: no context, no server name."""
    assert not origin.tls
    return None, None


def make_config(state_dir: Path, ports: list[int], **health: Any) -> Config:
    check = HealthCheck(path="/health", **{"interval": 0.05, "timeout": 0.5, "rise": 2, "fall": 2, **health})
    servers = tuple(PoolServer(Origin("http", "127.0.0.1", port)) for port in ports)
    site = SiteConfig("blog", ("*.blog.example", "blog.example"), (), (PoolConfig("api", servers, "flexible",
                                                                                    health=check),), "flexible")
    return Config(state_dir / "tlsedge.toml", ServerConfig(state_dir=state_dir, workers=1, https=(), http=()), (site,))


class Origin200:
    """An origin answering every request with 200 "ok"; records request heads; can be stopped and started again."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


def health_file(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / "run" / "health.json"
    return json.loads(path.read_text()) if path.exists() else None


def server_entry(state_dir: Path, port: int) -> dict[str, Any]:
    data = health_file(state_dir)
    if data is None:
        return {}
    return next((s for s in data["servers"] if s["server"] == f"http://127.0.0.1:{port}"), {})


def test_a_stopped_origin_goes_down_and_comes_back_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tlsedge.monitor")

    async def scenario() -> int:
        steady, flaky = Origin200(), Origin200()
        await steady.start()
        await flaky.start()
        config = make_config(tmp_path, [steady.port, flaky.port])
        slots = health_slots(config)
        slot = slots[("blog", "api", f"http://127.0.0.1:{flaky.port}")]
        shared = SharedHealth(len(slots))
        stop = asyncio.Event()
        task = asyncio.create_task(monitor(config, shared, plain_tls, stop, write_interval=0.05))

        await wait_until(lambda: server_entry(tmp_path, flaky.port).get("checks", 0) >= 2, "flaky is checked")
        assert server_entry(tmp_path, flaky.port)["state"] == "up"
        await flaky.stop()
        await wait_until(lambda: not shared.is_up(slot), "flaky is down in shared memory")
        assert shared.is_up(1 - slot)
        assert shared.version() == 1
        await wait_until(lambda: server_entry(tmp_path, flaky.port).get("state") == "down", "health.json says down")
        down = server_entry(tmp_path, flaky.port)
        assert down["reason"] == "connection refused"
        assert down["consecutive_failed"] >= 2 and down["checks_failed"] >= 2 and down["consecutive_ok"] == 0
        assert down["since"] is not None and down["last_check"] >= down["since"]
        await asyncio.sleep(0.2)  # more failed checks while down must not log again

        await flaky.start()  # same port
        await wait_until(lambda: shared.is_up(slot), "flaky is up again in shared memory")
        assert shared.version() == 2
        await wait_until(lambda: server_entry(tmp_path, flaky.port).get("state") == "up", "health.json says up")
        up = server_entry(tmp_path, flaky.port)
        assert (up["reason"], up["consecutive_failed"]) == ("status 200", 0)
        assert up["latency_ms"] is not None and up["latency_ms"] < 500
        steady_entry = server_entry(tmp_path, steady.port)
        assert (steady_entry["state"], steady_entry["checks_failed"]) == ("up", 0)
        stop.set()
        await asyncio.wait_for(task, 2)
        await steady.stop()
        await flaky.stop()
        shared.close()
        assert steady.heads[0] == (b"GET /health HTTP/1.1\r\nHost: blog.example\r\nUser-Agent: tlsedge-health-check\r\n"
                                   b"Connection: close\r\n\r\n")
        return flaky.port

    port = uvloop.run(scenario())
    label = f"site blog pool api server http://127.0.0.1:{port}"
    transitions = [r for r in caplog.records if r.name == "tlsedge.monitor" and " is " in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in transitions] == [
        (logging.WARNING, f"{label} is DOWN: connection refused (2 checks failed)"),
        (logging.WARNING, f"{label} is UP again: status 200 (2 checks passed)"),
    ]
    mode = stat.S_IMODE((tmp_path / "run" / "health.json").stat().st_mode)
    assert mode == 0o644


def test_a_server_carried_over_as_down_comes_up_after_rise_checks(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tlsedge.monitor")

    async def scenario() -> int:
        origin = Origin200()
        await origin.start()
        config = make_config(tmp_path, [origin.port], rise=3)
        shared = SharedHealth(1)
        shared.set_up(0, False)  # what the supervisor carried over from the previous generation
        stop = asyncio.Event()
        task = asyncio.create_task(monitor(config, shared, plain_tls, stop, write_interval=0.05))
        await wait_until(lambda: shared.is_up(0), "the server is up")
        assert len(origin.heads) >= 3
        stop.set()
        await task
        await origin.stop()
        shared.close()
        return origin.port

    port = uvloop.run(scenario())
    assert [r.getMessage() for r in caplog.records if " is " in r.getMessage()] == [
        f"site blog pool api server http://127.0.0.1:{port} is UP again: status 200 (3 checks passed)"]


def test_checks_start_spread_over_the_interval(tmp_path: Path) -> None:
    """With a long interval, the first checks of many servers do not all happen at the same moment."""

    async def scenario() -> None:
        origins = [Origin200() for _ in range(8)]
        for origin in origins:
            await origin.start()
        config = make_config(tmp_path, [o.port for o in origins], interval=1.0)
        stop = asyncio.Event()
        shared = SharedHealth(8)
        task = asyncio.create_task(monitor(config, shared, plain_tls, stop, write_interval=0.05))
        await asyncio.sleep(0.3)
        checked = sum(1 for o in origins if o.heads)
        await wait_until(lambda: all(o.heads for o in origins), "every server is checked once")
        stop.set()
        await task
        shared.close()
        for origin in origins:
            await origin.stop()
        assert checked < len(origins)  # jitter in [0, 1 s): all eight within 0.3 s has probability 0.3**8

    uvloop.run(scenario())


def test_check_host_prefers_the_configured_name_then_an_exact_site_name() -> None:
    origin = Origin("http", "::1", 9001)
    wildcard_only = SiteConfig("w", ("*.example",), (), (), "flexible")
    named = SiteConfig("n", ("*.example", "www.example"), (), (), "flexible")
    assert check_host(named, HealthCheck(host="health.internal"), origin) == "health.internal"
    assert check_host(named, HealthCheck(), origin) == "www.example"
    assert check_host(wildcard_only, HealthCheck(), origin) == "[::1]:9001"


# --- the forked process ---------------------------------------------------------------------------------------------


def fork_monitor(config: Config) -> int:
    """Fork a process running run_monitor, as the supervisor will."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_monitor(config, SharedHealth(1), plain_tls)
        finally:
            os._exit(code)
    return pid


def wait_for_health_file_of(state_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + 5
    while (data := health_file(state_dir)) is None or data["pid"] != pid:
        assert time.monotonic() < deadline, "the monitor process wrote no health.json"
        time.sleep(0.02)


def exit_code_within(pid: int, limit: float) -> int | None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    return None


def test_the_monitor_process_stops_on_sigterm(tmp_path: Path, unused_port: int) -> None:
    pid = fork_monitor(make_config(tmp_path, [unused_port]))
    try:
        wait_for_health_file_of(tmp_path, pid)
        os.kill(pid, signal.SIGTERM)
        assert exit_code_within(pid, 3) == 0
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_the_monitor_process_exits_when_its_parent_is_gone(tmp_path: Path, unused_port: int) -> None:
    config = make_config(tmp_path, [unused_port])
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # plays the control process: starts the monitor, waits until it runs, then dies
        code = 1
        try:
            os.close(read_end)
            monitor_pid = fork_monitor(config)
            os.close(write_end)
            wait_for_health_file_of(tmp_path, monitor_pid)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    orphan, exited = None, False
    try:
        assert os.waitstatus_to_exitcode(os.waitpid(middle, 0)[1]) == 0
        orphan = health_file(tmp_path)["pid"]
        # The monitor holds the pipe's write end: end of file means it has exited.
        ready, _, _ = select.select([read_end], [], [], 5)
        exited = bool(ready) and os.read(read_end, 1) == b""
        assert exited, "the orphaned monitor did not exit"
    finally:
        os.close(read_end)
        if orphan is not None and not exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
