"""The schema of ``model.json``: an explicit validator with messages that name the field.

:func:`validate_model_meta` is what :func:`napari_emssl.engine.model_dir.load_model` runs on
every ``model.json`` of a trained model before anything is built from it. The same rules
are shipped as a JSON Schema (``model.schema.json`` beside this module, see
:func:`json_schema`) for other tools; a test keeps the two in agreement. A few rules that
JSON Schema cannot say are checked here only: ``normalization.low < normalization.high``,
``classes`` has one entry per output channel, numbers are finite, and integers are JSON
integers (``2``, not ``2.0``).

Unknown fields are allowed (newer versions may add some); known fields must have the
documented type.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

from ..errors import ModelFormatError

SCHEMA_FILE = "model.schema.json"
REQUIRED_KEYS = ("format_version", "arch", "arch_kwargs", "in_channels", "out_channels", "task")
FACTORS = (1, 2, 4)  # 1 for every task but superres

__all__ = ["validate_model_meta", "json_schema", "REQUIRED_KEYS", "SCHEMA_FILE"]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``model.json`` shipped with the package."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Checker:
    def __init__(self, meta: dict[str, Any], source: str) -> None:
        self.meta, self.source = meta, source

    def fail(self, field: str, expected: str, value: Any) -> None:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ModelFormatError(f"{self.source}: field {field!r} must be {expected}, got {_kind(value)} ({shown})")

    def int(self, field: str, value: Any, minimum: int | None = None) -> None:
        if not _is_int(value) or (minimum is not None and value < minimum):
            self.fail(field, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)

    def string(self, field: str, value: Any, nonempty: bool = True) -> None:
        if not isinstance(value, str) or (nonempty and not value):
            self.fail(field, "a non-empty string" if nonempty else "a string", value)

    def obj(self, field: str, value: Any) -> None:
        if not isinstance(value, dict):
            self.fail(field, "a JSON object", value)


def validate_model_meta(meta: Any, *, source: str = "model.json", tasks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the fields of a trained model's ``model.json``; return it unchanged.

    Raises :class:`ModelFormatError` naming the first field that is missing or has the
    wrong type or value. ``tasks`` defaults to the tasks this version knows.
    """
    if tasks is None:
        from ..config import TASKS as tasks
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{source} must hold a JSON object, got {_kind(meta)}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFormatError(f"{source} lacks required field(s): {', '.join(missing)}")
    c = _Checker(meta, source)
    c.int("format_version", meta["format_version"], 1)
    c.string("arch", meta["arch"])
    c.obj("arch_kwargs", meta["arch_kwargs"])
    c.int("in_channels", meta["in_channels"], 1)
    c.int("out_channels", meta["out_channels"], 1)
    if not isinstance(meta["task"], str) or meta["task"] not in tasks:
        c.fail("task", f"one of {', '.join(tasks)}", meta["task"])

    if "package_version" in meta:
        c.string("package_version", meta["package_version"], nonempty=False)
    for name in ("receptive_field", "size_multiple", "tile"):
        if name in meta:
            c.int(name, meta[name], 1)
    if "overlap" in meta:
        c.int("overlap", meta["overlap"], 0)
    if "seed" in meta and meta["seed"] is not None:
        c.int("seed", meta["seed"])
    if "input_axes" in meta:
        c.string("input_axes", meta["input_axes"])
    if "factor" in meta and (not _is_int(meta["factor"]) or meta["factor"] not in FACTORS):
        c.fail("factor", f"one of {', '.join(map(str, FACTORS))}", meta["factor"])
    if "mean_correction" in meta and (not _is_number(meta["mean_correction"]) or meta["mean_correction"] < 0):
        c.fail("mean_correction", "a low-pass sigma in pixels >= 0", meta["mean_correction"])
    if "leak_correction" in meta and meta["leak_correction"] != "auto" and (
            not _is_number(meta["leak_correction"]) or not 0 <= meta["leak_correction"] <= 1):
        c.fail("leak_correction", "a share between 0 and 1, or \"auto\"", meta["leak_correction"])
    if "back_projection" in meta and (not _is_int(meta["back_projection"]) or meta["back_projection"] < 0):
        c.fail("back_projection", "a whole number of steps >= 0", meta["back_projection"])
    for name in ("config", "lineage", "metrics"):
        if name in meta:
            c.obj(name, meta[name])
    if "classes" in meta:
        classes = meta["classes"]
        if not isinstance(classes, list) or not all(_is_int(v) and v >= 1 for v in classes):
            c.fail("classes", "a list of integers >= 1 (1 = background, 2.. = classes)", classes)
        if len(set(classes)) != len(classes):
            c.fail("classes", "a list without repeated values", classes)
        if meta["task"] == "segment" and classes and len(classes) != meta["out_channels"]:
            c.fail("classes", f"one class per output channel ({meta['out_channels']})", classes)
    if "normalization" in meta:
        norm = meta["normalization"]
        c.obj("normalization", norm)
        for key in ("low", "high"):
            if key not in norm:
                raise ModelFormatError(f"{source}: field 'normalization' lacks {key!r} (the percentiles the input is scaled by)")
            if not _is_number(norm[key]) or not 0 <= norm[key] <= 100:
                c.fail(f"normalization.{key}", "a percentile between 0 and 100", norm[key])
        if not norm["low"] < norm["high"]:
            c.fail("normalization", "percentiles with low < high", {"low": norm["low"], "high": norm["high"]})
        if "method" in norm:
            c.string("normalization.method", norm["method"])
    return meta
