"""The access log: one JSON object per request, buffered and written off the request path.

Lines are collected in memory and written in batches (by the worker's periodic sweep, or when the batch is full),
so a request costs one small dict and one `json.dumps`, never a system call.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlsedge.edge.exchange import Exchange

_BATCH = 256


class AccessLog:
    """Buffered JSON-lines writer; `target` is "-" (stdout), "off", or a file path."""

    def __init__(self, target: str) -> None:
        self.enabled = target != "off"
        self._own_fd = False
        self._fd = 1
        if self.enabled and target != "-":
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own_fd = True
        self._lines: list[str] = []
        self._second = 0
        self._stamp = ""

    def _now(self) -> str:
        """The time stamp of a line, formatted once per second."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

    def write(self, ex: Exchange, now: float) -> None:
        """Record one finished exchange."""
        record = {
            "time": self._now(),
            "request_id": ex.request_id,
            "site": ex.site.name if ex.site is not None else None,
            "client": ex.client_ip,
            "method": ex.method.decode("latin-1"),
            "host": ex.host.decode("latin-1"),
            "path": ex.target.decode("latin-1"),
            "status": ex.status,
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "pool": ex.group.name if ex.group is not None else None,
            "upstream": ex.pool.label if ex.pool is not None else None,
            "attempts": ex.attempts,
            "duration_ms": round((now - ex.start) * 1000, 3),
            "upstream_ms": round((ex.t_head - ex.t_upstream) * 1000, 3) if ex.t_head and ex.t_upstream else None,
        }
        if ex.route is not None and ex.route.name != "default":
            record["route"] = ex.route.name
        if ex.cache is not None:
            record["cache"] = ex.cache.log_value()
        if ex.decision is not None:
            record["guard"] = ex.decision
        if ex.error:
            record["error"] = ex.error
        self._lines.append(json.dumps(record, separators=(",", ":")))
        if len(self._lines) >= _BATCH:
            self.flush()

    def write_record(self, record: dict) -> None:
        """Record one line that is not an HTTP exchange (a pass-through tunnel), stamped like the others."""
        self._lines.append(json.dumps({"time": self._now(), **record}, separators=(",", ":")))
        if len(self._lines) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines with one system call."""
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode()
        self._lines.clear()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        self.flush()
        if self._own_fd:
            os.close(self._fd)
