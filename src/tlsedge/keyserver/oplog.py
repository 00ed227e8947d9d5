"""The operation log: one JSON line per signing request, handshake and connection, appended to a file the owner reads.

It is the owner's record of what edges did with their key: who asked (edge identity from its certificate, peer
address), for which name and client, with which key and algorithm, and what the answer was. Lines are buffered in
memory and written by a flusher at least every second (and at shutdown), so a request never waits for the disk.
Payloads and signatures never appear; a short hash of the payload lets the owner match a line to an edge's log.

The file is opened in append mode and created with mode 0600; an existing file readable by others is narrowed to
0600 (0640 stays: a group the owner chose may read it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("tlsedge.keyserver")

FLUSH_INTERVAL = 1.0
MAX_BUFFERED = 100_000  # lines; beyond this (a stalled disk) lines are counted and dropped, never memory without end


def rfc3339(at: float) -> str:
    """``2025-01-31T12:00:00.123Z``: UTC with milliseconds."""
    moment = datetime.fromtimestamp(at, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class OpLog:
    """Append-only JSON lines. ``record`` is cheap (a list append); a flusher writes in the background.

    Every write, and the switch to a new file on reopen, runs on one dedicated writer thread in submission order, so
    lines stay in order and shutdown can wait for the last one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = _open(path)
        self._entries: list[dict[str, Any]] = []
        self._dropped = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oplog")
        self._flusher: asyncio.Task[None] | None = None

    def record(self, op: str, **fields: Any) -> None:
        """Queue one line: ``time`` and ``op`` first, then ``fields`` in the order given."""
        if len(self._entries) >= MAX_BUFFERED:
            self._dropped += 1
            return
        self._entries.append({"time": time.time(), "op": op, **fields})

    def start(self) -> None:
        """Start the flusher on the running loop."""
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name="oplog-flusher")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            data = self._take()
            if data:
                await loop.run_in_executor(self._writer, self._write, data)

    def _take(self) -> bytes:
        entries, self._entries = self._entries, []
        if self._dropped:
            entries.append({"time": time.time(), "op": "oplog", "result": f"dropped {self._dropped} lines",
                            "reason": "the log file could not keep up; check the disk"})
            self._dropped = 0
        lines = []
        for entry in entries:
            entry["time"] = rfc3339(entry["time"])
            lines.append(json.dumps(entry, separators=(",", ":"), ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.error("cannot write the operation log %s: %s (lines lost)", self.path, exc)

    def _switch(self, fd: int, path: Path) -> None:
        os.close(self._fd)
        self._fd, self.path = fd, path

    def flush(self) -> None:
        """Write what is buffered now and wait until it is written."""
        data = self._take()
        if data:
            self._writer.submit(self._write, data).result()

    def reopen(self, path: Path) -> None:
        """Continue in ``path`` (a new path after a reload, the same one after log rotation); OSError if it cannot
        be opened, and then the current file stays in use."""
        fd = _open(path)
        data = self._take()
        if data:
            self._writer.submit(self._write, data)
        self._writer.submit(self._switch, fd, path)

    async def close(self) -> None:
        """Stop the flusher, write every buffered line, close the file."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()
        self._writer.shutdown(wait=True)
        os.close(self._fd)


def _open(path: Path) -> int:
    """An append-only descriptor; the file is created 0600 and narrowed to 0600 when others could read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o137:  # anything beyond owner read-write and group read
        os.fchmod(fd, 0o600)
        log.warning("operation log %s had mode %04o; narrowed to 0600", path, mode)
    return fd
