"""Command line: `tlsedge serve | check | status | certs | cert | ca | origin-cert | demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tlsedge.commands import bans, cert, cert_revoke, certs, config_or_report, keyserver, origin_ca, purge
from tlsedge.config import ConfigError, load_config


def _setup_logging(target: str) -> None:
    """Error log: human-readable lines to stderr or a file (the access log is separate, JSON)."""
    handler: logging.Handler
    handler = logging.StreamHandler(sys.stderr) if target == "-" else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _serve(args: argparse.Namespace) -> int:
    from tlsedge.control.supervisor import Supervisor
    from tlsedge.tls.server import TlsSetupError

    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; not starting", file=sys.stderr)
        return 1
    _setup_logging(config.server.error_log)
    try:
        return Supervisor(path, config).run()
    except TlsSetupError as exc:
        for problem in exc.problems:
            logging.getLogger("tlsedge").error("%s", problem)
        return 1
    except OSError as exc:
        logging.getLogger("tlsedge").error("%s", exc)
        return 1


def _check(args: argparse.Namespace) -> int:
    from tlsedge.config.check import run_check

    return run_check(Path(args.config), sys.stdout)


def _status(args: argparse.Namespace) -> int:
    from tlsedge.control.status import NotRunning, collect_status, print_status

    config = config_or_report(args.config)
    if config is None:
        return 1
    try:
        rows = collect_status(config.server.state_dir)
    except NotRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_status(rows, sys.stdout, args.json)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tlsedge.demo.run import run_demo

    return run_demo(
        Path(args.state_dir),
        https_port=args.https_port,
        http_port=args.http_port,
        smoke=args.smoke,
        blog_origin_port=args.blog_origin_port,
        shop_origin_port=args.shop_origin_port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsedge", description="A self-hostable TLS edge.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run an edge (control process + workers)")
    serve.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check", help="validate a configuration and print every problem")
    check.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    check.set_defaults(func=_check)

    status = commands.add_parser("status", help="show every origin server of a running edge: state, load, health")
    status.add_argument("-c", "--config", default="tlsedge.toml", help="configuration file (TOML)")
    status.add_argument("--json", action="store_true", help="print the rows as JSON")
    status.set_defaults(func=_status)

    certs.register(commands)
    cert_revoke.register(cert.register(commands))
    origin_ca.register(commands)
    purge.register(commands)
    bans.register(commands)
    keyserver.register(commands)

    demo = commands.add_parser("demo", help="run a demo edge with two sites in front of demo origins")
    demo.add_argument("--state-dir", default="./state", help="where the demo keeps its CA, certificates, config")
    demo.add_argument("--https-port", type=int, default=8443)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--blog-origin-port", type=int, default=9000, help="plain-HTTP demo origin of blog.example")
    demo.add_argument("--shop-origin-port", type=int, default=9443, help="HTTPS demo origin of shop.example")
    demo.add_argument("--smoke", action="store_true", help="run the printed curl commands, check them, stop")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
