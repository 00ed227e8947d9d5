"""`tlsedge check`: validate a configuration and tell the operator everything that is wrong, or that it is fine."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from tlsedge.guard.runtime import waf_problems

from .errors import ConfigError
from .load import load_config
from .schema import Config


def run_check(path: Path, out: TextIO) -> int:
    """Print every problem and return 1, or print the warnings and a one-line summary and return 0."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        print(f"{_count(len(exc.problems), 'problem')} found", file=out)
        return 1
    problems = waf_problems(config)  # the rule files are parsed by ModSecurity itself, as a start would
    if any(site.keyless is not None for site in config.sites):  # keyless chains are read as a start would
        from tlsedge.tls.keyless.runtime import identities as keyless_identities

        problems += keyless_identities(config)[1]
    if problems:
        for problem in problems:
            print(problem, file=out)
        print(f"{_count(len(problems), 'problem')} found", file=out)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=out)
    print(summary(config, path), file=out)
    return 0


def summary(config: Config, shown_path: Path | None = None) -> str:
    """One line such as ``tlsedge.toml: OK: 2 sites, 1 https and 1 http listeners, 2 workers``."""
    server = config.server
    return (
        f"{shown_path or config.path}: OK: {_count(len(config.sites), 'site')}, "
        f"{len(server.https)} https and {len(server.http)} http listeners, {_count(server.workers, 'worker')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
