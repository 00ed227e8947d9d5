"""`tlsedge status`: atomic status files, merging the workers' and the monitor's files, the table, the CLI."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tlsedge.cli import main
from tlsedge.control.status import NotRunning, collect_status, print_status, write_json_atomic

NOW = 1_700_000_000.0


def entry(server: str, state: str = "up", **counters: Any) -> dict[str, Any]:
    base = {"site": "blog", "pool": "api", "server": server, "state": state, "active": 0, "connections": 0,
            "requests": 0, "failures": 0, "ejections": 0, "latency_ms": 0.0, "tls_resumed": 0}
    return {**base, **counters}


def write_worker(state_dir: Path, pid: int, servers: list[dict[str, Any]], written: float = NOW) -> None:
    write_json_atomic(state_dir / "run" / f"worker-{pid}.json", {"pid": pid, "time": written, "servers": servers})


def health(server: str, state: str, reason: str) -> dict[str, Any]:
    return {"site": "blog", "pool": "api", "server": server, "state": state, "reason": reason, "checks": 7,
            "checks_failed": 3, "latency_ms": 1.5, "last_check": NOW - 0.5}


@pytest.fixture
def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_write_json_atomic_replaces_whole_files_world_readable(tmp_path: Path) -> None:
    target = tmp_path / "run" / "worker-1.json"
    old_umask = os.umask(0o077)
    try:
        write_json_atomic(target, {"a": 1})
        write_json_atomic(target, {"a": [2, 3]})
    finally:
        os.umask(old_umask)
    assert json.loads(target.read_text()) == {"a": [2, 3]}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["worker-1.json"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "health.json"
    write_json_atomic(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["health.json"]


def test_collect_status_merges_live_fresh_workers_and_health(tmp_path: Path, dead_pid: int) -> None:
    me, parent = os.getpid(), os.getppid()
    write_worker(tmp_path, me, [
        entry("http://a:1", active=2, connections=3, requests=10, failures=1, latency_ms=10.0, tls_resumed=4),
        entry("http://b:2", "ejected", ejections=1),
        entry("http://c:3", "draining", active=1),
        entry("http://d:4", "ejected", ejections=2),
    ])
    write_worker(tmp_path, parent, [
        entry("http://a:1", active=1, connections=1, requests=30, latency_ms=20.0, tls_resumed=1),
        entry("http://b:2"),
        entry("http://c:3"),
        entry("http://d:4"),
    ])
    poison = [entry(s, "draining", requests=1000) for s in ("http://a:1", "http://b:2", "http://c:3", "http://d:4")]
    write_worker(tmp_path, 4_194_305, poison)  # above the kernel's PID_MAX_LIMIT: never a process
    write_worker(tmp_path, dead_pid, poison)  # exited
    write_json_atomic(tmp_path / "run" / "worker-stale.json", {"pid": me, "time": NOW - 6, "servers": poison})
    (tmp_path / "run" / f"worker-{me}-partial.json").write_text("{not json")
    write_json_atomic(tmp_path / "run" / "health.json", {"pid": me, "time": NOW - 1, "servers": [
        health("http://a:1", "up", "status 200"),
        health("http://b:2", "down", "connection refused"),
    ]})

    rows = {row["server"]: row for row in collect_status(tmp_path, now=NOW)}

    assert list(rows) == ["http://a:1", "http://b:2", "http://c:3", "http://d:4"]
    a = rows["http://a:1"]
    assert (a["state"], a["workers"], a["active"], a["connections"], a["requests"], a["failures"], a["tls_resumed"]) \
        == ("up", 2, 3, 4, 40, 1, 5)
    assert a["latency_ms"] == pytest.approx((10 * 10 + 20 * 30) / 40)
    assert a["health"]["reason"] == "status 200" and a["health"]["checks_failed"] == 3
    assert rows["http://b:2"]["state"] == "down"  # the monitor's verdict wins over a worker's ejection
    assert rows["http://b:2"]["ejections"] == 1
    assert rows["http://c:3"]["state"] == "draining"
    assert rows["http://c:3"]["health"] is None and rows["http://c:3"]["latency_ms"] is None
    assert rows["http://d:4"]["state"] == "ejected (1 of 2 workers)"
    assert rows["http://d:4"]["ejections"] == 2


def test_a_stale_health_file_is_ignored(tmp_path: Path) -> None:
    write_worker(tmp_path, os.getpid(), [entry("http://a:1")])
    write_json_atomic(tmp_path / "run" / "health.json",
                      {"pid": os.getpid(), "time": NOW - 6, "servers": [health("http://a:1", "down", "timed out")]})
    [row] = collect_status(tmp_path, now=NOW)
    assert (row["state"], row["health"]) == ("up", None)


def test_no_running_edge(tmp_path: Path, dead_pid: int) -> None:
    with pytest.raises(NotRunning, match="no status files in"):
        collect_status(tmp_path, now=NOW)
    write_worker(tmp_path, os.getpid(), [entry("http://a:1")], written=NOW - 60)
    write_worker(tmp_path, dead_pid, [entry("http://a:1")], written=time.time())
    with pytest.raises(NotRunning, match=r"newest status file in .* is \d+ s old"):
        collect_status(tmp_path, now=time.time() + 30)


def test_an_edge_without_servers_is_running_with_no_rows(tmp_path: Path) -> None:
    write_worker(tmp_path, os.getpid(), [])
    assert collect_status(tmp_path, now=NOW) == []


def sample_rows(tmp_path: Path) -> list[dict[str, Any]]:
    write_worker(tmp_path, os.getpid(), [
        entry("http://127.0.0.1:9001", requests=12345, latency_ms=3.25, active=7),
        entry("https://origin.example:443", "ejected"),
    ])
    write_json_atomic(tmp_path / "run" / "health.json", {"pid": os.getpid(), "time": NOW, "servers": [
        health("http://127.0.0.1:9001", "up", "status 200")]})
    return collect_status(tmp_path, now=NOW)


def test_print_status_table_is_aligned(tmp_path: Path) -> None:
    out = io.StringIO()
    print_status(sample_rows(tmp_path), out, as_json=False)
    header, first, second = out.getvalue().splitlines()
    assert header.split() == ["SITE", "POOL", "SERVER", "STATE", "ACTIVE", "CONNS", "REQUESTS", "FAILURES", "LATENCY",
                              "HEALTH"]
    assert first.split() == ["blog", "api", "http://127.0.0.1:9001", "up", "7", "0", "12345", "0", "3.2", "ms", "up:",
                             "status", "200"]
    assert second.split()[3:6] == ["ejected", "(1", "of"]
    assert second.endswith("  -")
    # Text columns start together, number columns end together.
    assert header.index("STATE") == first.index(" up ") + 1 == second.index("ejected")
    end = header.index("REQUESTS") + len("REQUESTS")
    assert first[:end].endswith(" 12345") and second[:end].endswith(" 0")
    assert not any(line.endswith(" ") for line in (header, first, second))


def test_print_status_json(tmp_path: Path) -> None:
    out = io.StringIO()
    rows = sample_rows(tmp_path)
    print_status(rows, out, as_json=True)
    assert json.loads(out.getvalue()) == rows
    assert rows[0]["health"]["reason"] == "status 200"


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tlsedge.toml"
    path.write_text(
        '[server]\nhttp = ["127.0.0.1:8080"]\nstate_dir = "state"\n\n'
        '[[site]]\nname = "blog"\nhosts = ["blog.example"]\norigins = ["http://127.0.0.1:9000"]\n'
    )
    return path


def test_cli_status_without_a_running_edge_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "-c", str(write_config(tmp_path))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no running edge" in captured.err and str(tmp_path / "state" / "run") in captured.err


def test_cli_status_prints_the_table_of_a_running_edge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    write_worker(tmp_path / "state", os.getpid(), [entry("http://127.0.0.1:9000", requests=3)], written=time.time())
    assert main(["status", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SITE") and "http://127.0.0.1:9000" in lines[1]
    assert main(["status", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["requests"] == 3
