"""The operation log on its own: file modes, the flusher's cadence, order across reopen, bounded buffering."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from keyserver_support import run

from tlsedge.keyserver import oplog as oplog_module
from tlsedge.keyserver.oplog import OpLog, rfc3339


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def opened(path: Path) -> int:
    """Open (and close) an operation log at ``path``; return the file's mode."""
    run(OpLog(path).close())
    return os.stat(path).st_mode & 0o777


def test_created_private_and_loose_files_narrowed(tmp_path: Path) -> None:
    assert opened(tmp_path / "logs" / "ops.log") == 0o600
    loose = tmp_path / "loose.log"
    loose.write_text("")
    os.chmod(loose, 0o644)
    assert opened(loose) == 0o600
    group = tmp_path / "group.log"
    group.write_text("")
    os.chmod(group, 0o640)
    assert opened(group) == 0o640  # a group the owner chose may read it


def test_lines_are_written_within_a_second_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "ops.log"

    async def main() -> list[dict]:
        log = OpLog(path)
        log.start()
        log.record("sign", edge="edge-1", result="ok")
        assert path.read_text() == ""  # not on the request's path
        for _ in range(30):
            await asyncio.sleep(0.1)
            if path.read_text():
                break
        written = lines(path)
        await log.close()
        return written

    written = run(main())
    assert written[0]["op"] == "sign" and written[0]["edge"] == "edge-1"
    assert list(written[0]) == ["time", "op", "edge", "result"]


def test_reopen_keeps_order_and_close_flushes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"

    async def main() -> None:
        log = OpLog(first)
        log.start()
        log.record("one")
        log.reopen(second)
        log.record("two")
        await log.close()

    run(main())
    assert [line["op"] for line in lines(first)] == ["one"]
    assert [line["op"] for line in lines(second)] == ["two"]


def test_a_stalled_log_drops_and_counts_instead_of_growing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oplog_module, "MAX_BUFFERED", 3)
    path = tmp_path / "ops.log"

    async def main() -> None:
        log = OpLog(path)
        for index in range(10):
            log.record("sign", n=index)
        await log.close()

    run(main())
    written = lines(path)
    assert [line.get("n") for line in written[:3]] == [0, 1, 2]
    assert written[3]["op"] == "oplog" and written[3]["result"] == "dropped 7 lines"


def test_rfc3339() -> None:
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert rfc3339(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"
