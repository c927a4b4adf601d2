"""A node's learning curve: one measurement per evaluation, kept in ``state/metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knexa_node.fsutil import atomic_write_text

CURVE_FILE = "metrics.jsonl"  # in the home's state directory


class LearningCurve:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.points: list[dict[str, Any]] = _read(self.path)

    def add(self, point: dict[str, Any]) -> None:
        """Append ``point`` and rewrite the file atomically."""
        self.points.append(point)
        atomic_write_text(self.path, "".join(json.dumps(p) + "\n" for p in self.points))

    def has(self, phase: str) -> bool:
        return any(p.get("phase") == phase for p in self.points)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.points[-1] if self.points else None


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []  # missing or unreadable: the curve is only a report; training state lives elsewhere
