"""`tlsedge status`: the state of every origin server, merged from the files the edge's processes write.

Each worker writes ``state_dir/run/worker-<pid>.json`` and the health monitor writes ``state_dir/run/health.json``,
every second, atomically. Reading files rather than asking a live process keeps the data plane free of any admin
endpoint, and works the same for an edge of one worker or many. A file counts only while its process is alive and
it is fresh, so what a stopped or crashed process left behind never shows as current.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import IO, Any

FRESH = 5.0  # seconds: a status file older than this is ignored (processes rewrite theirs every second)
_COLUMNS = ("SITE", "POOL", "SERVER", "STATE", "ACTIVE", "CONNS", "REQUESTS", "FAILURES", "LATENCY", "HEALTH")
_NUMERIC = {"ACTIVE", "CONNS", "REQUESTS", "FAILURES", "LATENCY"}
_SUMMED = ("active", "connections", "requests", "failures", "ejections", "tls_resumed")


class NotRunning(Exception):
    """No live process of an edge has written a fresh status file under the state directory."""


def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON so readers see the old file or the new one, never a partial one (temp + rename).

    Mode 0644: ``tlsedge status`` may run as another user than the edge. No fsync: these files describe the present
    and are rewritten every second; after a crash they are stale anyway.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o644)  # the umask must not narrow it
            json.dump(data, out, separators=(",", ":"))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_live(path: Path, now: float) -> dict[str, Any] | None:
    """A status file's content if its writer is alive and it is fresh, else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not isinstance(data.get("servers"), list):
        return None
    written = data.get("time")
    if not isinstance(written, int | float) or now - written > FRESH or not _alive(data["pid"]):
        return None
    return data


def live_worker_pids(state_dir: Path) -> list[int]:
    """The pids of the running edge's workers (their status files are fresh and they are alive)."""
    now = time.time()
    pids = []
    for path in run_dir(state_dir).glob("worker-*.json"):
        data = _read_live(path, now)
        if data is not None:
            pids.append(data["pid"])
    return sorted(pids)


def _not_running(directory: Path, now: float) -> NotRunning:
    """The error to show, with the age of the newest file when there is one (the edge stopped, or is hung)."""
    ages = []
    for path in [directory / "health.json", *directory.glob("worker-*.json")]:
        with contextlib.suppress(OSError):
            ages.append(now - path.stat().st_mtime)
    if not ages:
        return NotRunning(f"no running edge: no status files in {directory} (is `tlsedge serve` running with this "
                          "configuration?)")
    return NotRunning(f"no running edge: the newest status file in {directory} is {min(ages):.0f} s old and its "
                      "process is gone or stalled")


def _new_row(site: str, pool: str, server: str) -> dict[str, Any]:
    row: dict[str, Any] = {"site": site, "pool": pool, "server": server, "state": "up", "workers": 0}
    row.update(dict.fromkeys(_SUMMED, 0))
    row["latency_ms"] = None
    row["health"] = None
    row["_states"] = []
    row["_latency_sum"] = 0.0
    return row


def _merge_worker(row: dict[str, Any], entry: dict[str, Any]) -> None:
    row["workers"] += 1
    row["_states"].append(entry.get("state", "up"))
    for name in _SUMMED:
        row[name] += int(entry.get(name, 0))
    row["_latency_sum"] += float(entry.get("latency_ms", 0.0)) * int(entry.get("requests", 0))


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    """State and latency from the merged parts; see `collect_status` for the precedence of states."""
    states: list[str] = row.pop("_states")
    latency_sum: float = row.pop("_latency_sum")
    health = row["health"]
    if "draining" in states:
        row["state"] = "draining"
    elif (health is not None and health.get("state") == "down") or "down" in states:
        row["state"] = "down"
    elif "ejected" in states:
        row["state"] = f"ejected ({states.count('ejected')} of {len(states)} workers)"
    if row["requests"]:
        row["latency_ms"] = round(latency_sum / row["requests"], 3)
    return row


def collect_status(state_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """One row per origin server from the live, fresh status files; raises NotRunning when there are none.

    State precedence: "draining" if any worker drains it, else "down" if the health monitor (or a worker) says so,
    else "ejected (k of n workers)" if passive health ejected it in some workers, else "up". Counters are summed over
    workers; latency is their average weighted by requests; ``health`` holds the monitor's fields (None when the
    server's pool has no health check).
    """
    now = time.time() if now is None else now
    directory = run_dir(state_dir)
    workers = [d for p in sorted(directory.glob("worker-*.json")) if (d := _read_live(p, now)) is not None]
    health = _read_live(directory / "health.json", now)
    if not workers and health is None:
        raise _not_running(directory, now)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row_for(entry: dict[str, Any]) -> dict[str, Any]:
        key = (str(entry.get("site")), str(entry.get("pool")), str(entry.get("server")))
        if key not in rows:
            rows[key] = _new_row(*key)
        return rows[key]

    for worker in workers:
        for entry in worker["servers"]:
            _merge_worker(row_for(entry), entry)
    for entry in health["servers"] if health is not None else ():
        row_for(entry)["health"] = {k: v for k, v in entry.items() if k not in ("site", "pool", "server")}
    return [_finish(row) for row in rows.values()]


def _health_text(health: dict[str, Any] | None) -> str:
    if health is None:
        return "-"
    return f"{health.get('state', '?')}: {health.get('reason') or 'not checked yet'}"


def _cells(row: dict[str, Any]) -> list[str]:
    latency = row["latency_ms"]
    return [
        row["site"],
        row["pool"],
        row["server"],
        row["state"],
        str(row["active"]),
        str(row["connections"]),
        str(row["requests"]),
        str(row["failures"]),
        "-" if latency is None else f"{latency:.1f} ms",
        _health_text(row["health"]),
    ]


def print_status(rows: list[dict[str, Any]], out: IO[str], as_json: bool) -> None:
    """An aligned table (numbers right-aligned, the last column unpadded), or the rows as JSON."""
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    table = [list(_COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        cells = [
            cell.rjust(width) if name in _NUMERIC else cell.ljust(width)
            for name, cell, width in zip(_COLUMNS[:-1], line[:-1], widths[:-1], strict=True)
        ]
        out.write("  ".join([*cells, line[-1]]) + "\n")
