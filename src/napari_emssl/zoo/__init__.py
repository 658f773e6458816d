"""Bundled pretrained weights shipped inside the package.

``index.json`` beside this file lists them (one entry per weights file with its model
card). :func:`bundled_for` picks the entry that suits a task and architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class BundledWeights:
    name: str
    arch: str
    method: str
    tasks: tuple[str, ...]
    path: Path
    card: dict


def list_bundled() -> list[BundledWeights]:
    """Every bundled weights file listed in ``zoo/index.json`` (empty when none ship)."""
    root = resources.files(__package__)
    index = root / "index.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text())
    return [
        BundledWeights(
            name=e["name"], arch=e["arch"], method=e["method"], tasks=tuple(e["tasks"]),
            path=Path(str(root / e["file"])), card=e,
        )
        for e in entries
    ]


def bundled_for(task: str, arch: str | None = None) -> BundledWeights | None:
    """The first bundled weights (index order = preference) for ``task`` (and ``arch``)."""
    for entry in list_bundled():
        if task in entry.tasks and (arch is None or entry.arch == arch):
            return entry
    return None
