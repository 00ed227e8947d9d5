"""A scriptable HTTP/1.1 origin for end-to-end tests: behaviours nginx cannot show on demand.

Run as a subprocess: ``python tests/origins.py --port 0`` prints ``PORT <n>`` on stdout once it listens. The parser is
deliberately simple and strict enough for tests; it answers by path:

- ``/_stats`` (not counted): JSON ``{"requests", "connections", "targets"}``; ``/_reset`` clears them.
- ``/chunked?n=K&size=S``: a chunked response of K chunks of S bytes (``"abc..."``), body ``K*S`` bytes.
- ``/close?size=S``: a close-delimited response (no Content-Length, no Transfer-Encoding), S bytes, then close.
- ``/status/204``, ``/status/304``: headers only (304 with an ETag; 304 also carries ``Content-Length: 5``).
- ``/hop``: a response carrying hop-by-hop headers (and ``X-Kept: yes``) that must not reach the client.
- ``/truncate``: ``Content-Length: 1000``, 100 bytes, then the connection is closed.
- ``/slow?delay=D``: waits D seconds, then answers ``slow done``.
- ``/hang``: reads the request and never answers.
- ``/bytes?size=N``: N bytes with a Content-Length (streamed in 64 KiB pieces).
- anything else: an echo of the request as JSON: method, target, version, headers (as received), connection id, request
  number on that connection, body length and sha256 and framing ("length", "chunked", "none"). This is also the
  upload sink: the body is hashed as it streams, never kept.

HEAD requests get the head of what GET would get (with its Content-Length), never a body. ``Expect: 100-continue`` is
answered with ``100 Continue`` before the body is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 256 * 1024
PIECE = 64 * 1024


class BadRequest(Exception):
    pass


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.targets: list[str] = []


STATS = Stats()
_conn_ids = iter(range(1, 1 << 62))


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete head") from e
        return None
    except asyncio.LimitOverrunError as e:
        raise BadRequest("head too large") from e


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError as e:
        raise BadRequest(f"bad request line {lines[0]!r}") from e
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest(f"bad header line {line!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return method, target, version, headers


def _get(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> tuple[str, int, str]:
    """Read and hash the body; returns (framing, length, sha256)."""
    digest = hashlib.sha256()
    te = _get(headers, "transfer-encoding")
    cl = _get(headers, "content-length")
    total = 0
    if te:
        if [t.strip().lower() for t in ",".join(te).split(",")] != ["chunked"]:
            raise BadRequest(f"transfer-encoding {te!r}")
        if cl:
            raise BadRequest("content-length with transfer-encoding")
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text) or len(size_text) > 15:
                raise BadRequest(f"bad chunk size {line!r}")
            size = int(size_text, 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return "chunked", total, digest.hexdigest()
            left = size
            while left:
                data = await reader.read(min(left, 1 << 20))
                if not data:
                    raise BadRequest("eof in chunk")
                digest.update(data)
                left -= len(data)
            total += size
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
    if cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise BadRequest(f"content-length {cl!r}")
        left = int(cl[0])
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise BadRequest("eof in body")
            digest.update(data)
            left -= len(data)
            total += len(data)
        return "length", total, digest.hexdigest()
    return "none", 0, digest.hexdigest()


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _serve_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int, number: int
) -> bool:
    """Handle one request; returns whether the connection may be kept."""
    head = await _read_head(reader)
    if head is None:
        return False
    method, target, version, headers = _parse_head(head)
    path = urlsplit(target).path
    query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    counted = path not in ("/_stats", "/_reset")
    if counted:
        STATS.requests += 1
        STATS.targets.append(target)
        del STATS.targets[:-1000]
    if any(v.lower() == "100-continue" for v in _get(headers, "expect")):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    framing, length, sha = await _read_body(reader, headers)
    is_head = method == "HEAD"
    keep = not any("close" in v.lower() for v in _get(headers, "connection")) and version == "HTTP/1.1"
    conn_hdr = [("Connection", "keep-alive" if keep else "close")]

    def send(status: str, hdrs: list[tuple[str, str]], body: bytes = b"") -> None:
        writer.write(_head(status, hdrs + conn_hdr) + (b"" if is_head else body))

    if path == "/_stats":
        body = json.dumps(
            {"requests": STATS.requests, "connections": STATS.connections, "targets": STATS.targets}
        ).encode()
        send("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)
    elif path == "/_reset":
        STATS.reset()
        send("200 OK", [("Content-Length", "0")])
    elif path == "/chunked":
        n, size = int(query.get("n", "3")), int(query.get("size", "10"))
        writer.write(_head("200 OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"), *conn_hdr]))
        if not is_head:
            for i in range(n):
                chunk = bytes([97 + i % 26]) * size
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
    elif path == "/close":
        size = int(query.get("size", "1000"))
        writer.write(_head("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")]))
        if not is_head:
            for i in range(0, size, PIECE):
                writer.write(b"z" * min(PIECE, size - i))
                await writer.drain()
        return False
    elif path.startswith("/status/"):
        code = path.rsplit("/", 1)[1]
        if code == "204":
            send("204 No Content", [("X-Status", "204")])
        elif code == "304":
            send("304 Not Modified", [("ETag", '"v1"'), ("Content-Length", "5"), ("X-Status", "304")])
        else:
            send(f"{code} Whatever", [("Content-Length", "0")])
    elif path == "/hop":
        send(
            "200 OK",
            [
                ("Content-Length", "3"),
                ("Connection", "X-Custom-Hop"),
                ("X-Custom-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Trailer"),
                ("Upgrade", "foo/1"),
                ("X-Kept", "yes"),
            ],
            b"hop",
        )
    elif path == "/truncate":
        writer.write(_head("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1000")]))
        if not is_head:
            writer.write(b"t" * 100)
            await writer.drain()
        return False
    elif path == "/slow":
        await asyncio.sleep(float(query.get("delay", "2")))
        send("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")], b"slow done")
    elif path == "/hang":
        await asyncio.sleep(3600)
        return False
    elif path == "/bytes":
        size = int(query.get("size", "0"))
        writer.write(_head("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size)),
                                      *conn_hdr]))
        if not is_head:
            piece = b"b" * PIECE
            for i in range(0, size, PIECE):
                writer.write(piece[: min(PIECE, size - i)])
                await writer.drain()
    else:
        body = json.dumps(
            {
                "method": method,
                "target": target,
                "version": version,
                "headers": headers,
                "conn_id": conn_id,
                "number": number,
                "framing": framing,
                "body_len": length,
                "body_sha256": sha,
            }
        ).encode()
        send("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)
    await writer.drain()
    return keep


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn_id = next(_conn_ids)
    STATS.connections += 1
    number = 0
    try:
        while True:
            number += 1
            if not await _serve_request(reader, writer, conn_id, number):
                break
    except BadRequest as e:
        body = f"origin: bad request: {e}".encode()
        writer.write(_head("400 Bad Request", [("Content-Length", str(len(body))), ("Connection", "close")]) + body)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        try:
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(_handle, host, port, limit=MAX_HEAD, backlog=512)
    sys.stdout.write(f"PORT {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
