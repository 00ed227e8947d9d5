"""Configuration problems, each pointing at a file, a site and a field, so the operator knows what to fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration."""

    file: Path
    field: str  # dotted path, e.g. "server.https[0]" or "site[blog].origins[1]"
    reason: str
    site: str | None = None

    def __str__(self) -> str:
        where = f"site {self.site!r}, " if self.site else ""
        return f"{self.file}: {where}{self.field}: {self.reason}"


class ConfigError(Exception):
    """Raised when a configuration cannot be used; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
