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
    arch_kwargs: dict
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
            name=e["name"], arch=e["arch"], arch_kwargs=dict(e.get("arch_kwargs", {})), method=e["method"], tasks=tuple(e["tasks"]),
            path=Path(str(root / e["file"])), card=e,
        )
        for e in entries
    ]


def _same_options(a: dict, b: dict) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def bundled_for_network(arch: str, arch_kwargs: dict) -> list[BundledWeights]:
    """Every bundled entry whose weights fit ``arch`` built with ``arch_kwargs``, whatever its tasks."""
    return [e for e in list_bundled() if e.arch == arch and _same_options(arch_kwargs, e.arch_kwargs)]


def bundled_for(task: str, arch: str | None = None, arch_kwargs: dict | None = None) -> BundledWeights | None:
    """The first bundled weights (index order = preference) for ``task`` (and ``arch``, ``arch_kwargs``).

    ``arch_kwargs`` are compared after a JSON round trip (tuples and lists are equal), so a
    network built with other options (e.g. more channels) does not get weights that only
    partly fit.
    """
    for entry in list_bundled():
        if task not in entry.tasks or (arch is not None and entry.arch != arch):
            continue
        if arch_kwargs is not None and not _same_options(arch_kwargs, entry.arch_kwargs):
            continue
        return entry
    return None
