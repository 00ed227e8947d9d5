"""A tiny uvloop TLS server over ``build_tls_table``, run as a subprocess by the tests.

Usage: ``python serve_tls.py CONFIG.pickle STATE_DIR [scramble-sites|scramble-listener]``; prints the port on stdout
once listening. For each connection it writes ``site=<site_of> alpn=<protocol> version=<tls version>`` after the
handshake, echoes lines back, and closes on a line ``bye``. The optional third argument replaces the ticket keys of
the site contexts or of the listener context with random ones, to show which context's keys OpenSSL really uses after
an SNI switch. A separate process (not a thread) so that two servers really are two processes for ticket sharing.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from pathlib import Path

import uvloop

from tlsedge.tls.openssl import set_ticket_keys
from tlsedge.tls.server import TlsTable, build_tls_table
from tlsedge.tls.tickets import load_or_create_ticket_keys


class Echo(asyncio.Protocol):
    def __init__(self, table: TlsTable) -> None:
        self.table = table
        self.buf = b""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        obj = transport.get_extra_info("ssl_object")
        greeting = f"site={self.table.site_of(obj)} alpn={obj.selected_alpn_protocol()} version={obj.version()}\n"
        transport.write(greeting.encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            if line.strip() == b"bye":
                self.transport.close()
                return
            self.transport.write(b"echo:" + line + b"\n")


async def main() -> None:
    config = pickle.loads(Path(sys.argv[1]).read_bytes())
    table = build_tls_table(config, load_or_create_ticket_keys(Path(sys.argv[2])))
    scramble = sys.argv[3] if len(sys.argv) > 3 else ""
    if scramble == "scramble-listener":
        set_ticket_keys(table.context, os.urandom(80))
    elif scramble == "scramble-sites":
        for ctx in table._contexts.values():
            set_ticket_keys(ctx, os.urandom(80))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Echo(table), "127.0.0.1", 0, ssl=table.context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
