"""Sub-commands of the ``tlsedge`` CLI that have grown beyond a few lines, one module per command group.

Each module has ``register(commands)`` adding its parsers to the CLI's sub-parser set (``cli.build_parser`` calls it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tlsedge.config import Config, ConfigError, load_config


def config_or_report(path: str | Path) -> Config | None:
    """The configuration a command works on, or None after printing every problem of the file on stderr."""
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None
