"""``tlsedge keyserver -c keyserver.toml [--check | --pin]``: run the key server, or check its configuration.

The key server is a separate program from the edge (it runs next to the origin, on the owner's machine), so it has its
own configuration file and logs to stderr; the operation log it keeps is its record of every request.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

from tlsedge.config.errors import ConfigError


def register(commands: argparse._SubParsersAction) -> None:
    keyserver = commands.add_parser(
        "keyserver", help="run a key server: signs TLS 1.3 handshakes for keyless edges, keeping the private keys"
    )
    keyserver.add_argument("-c", "--config", default="keyserver.toml", help="key server configuration file (TOML)")
    what = keyserver.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true",
                      help="check the configuration, keys and certificates, print the pin and key ids, exit 0 or 1")
    what.add_argument("--pin", action="store_true",
                      help="print the pin of the key server's certificate (for the edges' keyless pins) and exit")
    keyserver.set_defaults(func=_keyserver)


def _keyserver(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if args.check or args.pin:
        return check(path, sys.stdout, pin_only=args.pin)
    import asyncio

    from tlsedge.keyserver.server import serve

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return asyncio.run(serve(path))


def check(path: Path, out: TextIO, *, pin_only: bool = False) -> int:
    """Load everything a start would; print the problems (stderr, exit 1) or a summary with the pin (exit 0)."""
    from tlsedge.keyserver.server import load_setup
    from tlsedge.tls.keyless.client import format_pin, pin_for_certificate

    try:
        setup = load_setup(path)
        pin = format_pin(pin_for_certificate(setup.config.certificate.read_bytes()))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    if pin_only:
        print(pin, file=out)
        return 0
    config = setup.config
    listen = ", ".join(f"{listener.host}:{listener.port}" for listener in config.listen)
    print(f"{path}: OK", file=out)
    print(f"  listen: {listen}", file=out)
    print(f"  pin (for the edges' [site.keyless] pins): {pin}", file=out)
    print(f"  operation log: {config.log}", file=out)
    print(f"  rate per edge: {config.rate:g}/s, burst {config.burst}", file=out)
    for key in setup.keyring.values():
        edges = ", ".join(sorted(key.edges))
        print(f"  {key.field}: {key.kind} key {key.key_id[:8].hex()} for {', '.join(sorted(key.names))} "
              f"(edges: {edges})", file=out)
    return 0
