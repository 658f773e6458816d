"""The model directory: ``model.safetensors`` (weights) + ``model.json`` (everything else).

A model directory alone rebuilds the model. Weights are never pickled. Files are written
to temporary names and renamed, so an interrupted save never leaves a half-written
file under the final name. Unknown format versions, another task and weights that do
not fit the architecture are refused with a message that says what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import ModelFormatError
from ..io.atomic import fsync
from .model_schema import REQUIRED_KEYS, validate_model_meta

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
LOG_NAME = "log.csv"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")


def pickle_note(path: str | os.PathLike) -> str:
    """Why a file that is not safetensors is refused, when it looks like a pickle (``torch.save``); else ``""``.

    Only the first bytes are read: the file is never unpickled (unpickling runs code chosen by
    whoever wrote the file).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or Path(path).suffix.lower() in PICKLE_SUFFIXES:
        return ("it looks like a PyTorch/pickle file (torch.save); napari-emssl reads weights only from safetensors "
                "and never unpickles files, because unpickling can run any code: convert it to a model directory "
                "(model.safetensors + model.json) where it was made")
    return ""


@dataclass
class TrainedModel:
    """A network and the metadata that says what it is and how it was made."""

    net: torch.nn.Module
    meta: dict[str, Any]
    log: list[dict[str, float]] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def classes(self) -> list[int]:
        return list(self.meta.get("classes", []))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the model directory atomically (each file via a temporary name)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path, MODEL_TEMPS)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}
        _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        meta = dict(self.meta, format_version=FORMAT_VERSION, package_version=__version__)
        _atomic_write(path / META_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=_json_default)))
        if self.log:
            _atomic_write(path / LOG_NAME, lambda tmp: Path(tmp).write_text(_log_csv(self.log)))
        return path


def build_meta(net: torch.nn.Module, *, task: str, **extra: Any) -> dict[str, Any]:
    """Metadata shared by every saved model; ``extra`` adds task-specific fields."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "arch": net.arch_name,
        "arch_kwargs": dict(net.arch_kwargs),
        "in_channels": int(extra.pop("in_channels", 1)),
        "out_channels": int(extra.pop("out_channels")),
        "receptive_field": int(net.receptive_field),
        "size_multiple": int(net.size_multiple),
        "task": task,
        "input_axes": "YX",
        **extra,
    }


def load_model(directory: str | os.PathLike, *, task: str | None = None, map_location: str = "cpu") -> TrainedModel:
    """Rebuild a model from its directory (or a zipped bioimage.io package made by napari-emssl);
    refuse anything that does not fit."""
    from ..export.importer import load_package_or_none
    from ..models import create_model  # local: models import timm/smp, which are slow to import

    packaged = load_package_or_none(directory, task=task, map_location=map_location)
    if packaged is not None:
        return packaged
    path = Path(directory)
    if path.is_file() and path.name in (WEIGHTS_NAME, META_NAME):
        path = path.parent
    meta_path, weights_path = path / META_NAME, path / WEIGHTS_NAME
    if path.is_file():
        note = pickle_note(path)
        raise ModelFormatError(f"{str(path)!r} is a file, not a model directory" + (f": {note}" if note else
                               f" (a folder with {META_NAME} and {WEIGHTS_NAME})"))
    if not path.is_dir():
        raise ModelFormatError(f"model directory {str(path)!r} does not exist")
    if not meta_path.is_file() or not weights_path.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        raise ModelFormatError(f"{str(path)!r} is not a model directory: it needs {META_NAME} and {WEIGHTS_NAME}"
                               + (f" ({', '.join(pickles)}: pickle files are never loaded, only safetensors)" if pickles else ""))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{meta_path} is not valid JSON ({exc})") from None
    if isinstance(meta, dict) and meta.get("task") == "pretrain":
        raise ModelFormatError(
            f"{str(path)!r} holds self-supervised pretrained weights (method {meta.get('method')!r}), not a trained model: "
            f"fine-tune from it first (emssl finetune --init {path})"
        )
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFormatError(f"{meta_path} lacks required field(s): {', '.join(missing)}")
    version = meta["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ModelFormatError(
            f"{meta_path} has model format version {version!r}; this napari-emssl ({__version__}) reads version {FORMAT_VERSION}"
        )
    from ..config import TASKS

    if not isinstance(meta["task"], str) or meta["task"] not in TASKS:
        raise ModelFormatError(
            f"the model in {str(path)!r} was trained for task {meta['task']!r}, which this napari-emssl ({__version__}) "
            f"does not know (it knows {', '.join(TASKS)})"
        )
    validate_model_meta(meta, source=str(meta_path), tasks=TASKS)
    if meta["task"] != "segment" and meta["out_channels"] != 1:
        raise ModelFormatError(f"{meta_path}: a {meta['task']} model has one output channel, not {meta['out_channels']}")
    if task is not None and meta["task"] != task:
        raise ModelFormatError(f"the model in {str(path)!r} was trained for task {meta['task']!r}, not {task!r}")
    build = dict(in_channels=meta["in_channels"], out_channels=meta["out_channels"], **meta["arch_kwargs"])
    try:
        shapes = _header_shapes(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        note = pickle_note(weights_path)
        raise ModelFormatError(f"{weights_path} is not a readable safetensors file" + (f": {note}" if note else f" ({exc})")) from None
    try:  # the architecture on the meta device (no memory) first: a model.json asking for a huge network is refused
        with torch.device("meta"):  # unless the weights file really holds that many weights
            probe = create_model(meta["arch"], **build)
    except ModelFormatError:
        raise
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on the meta device is checked after loading
        probe = None
    if probe is not None:
        check_state_dict(probe, shapes, source=str(weights_path))
        del probe
    net = create_model(meta["arch"], **build)
    try:
        state = load_file(str(weights_path), device=map_location)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{weights_path} is not a readable safetensors file ({exc})") from None
    check_state_dict(net, state, source=str(weights_path))
    net.load_state_dict(state, strict=True)
    net.eval()
    return TrainedModel(net=net, meta=meta, log=_read_log(path / LOG_NAME))


def _header_shapes(weights_path: Path) -> dict[str, torch.Tensor]:
    """The tensors named in a safetensors header, as shape-only (meta) tensors; nothing is read but the header."""
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as fh:
        return {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}


def check_state_dict(net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise ModelFormatError naming missing, unexpected or mis-shaped tensors."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise ModelFormatError(f"the weights in {source} do not fit the architecture: " + "; ".join(parts))


#: temporary files of an interrupted save: ours (``_atomic_write``) and safetensors' own (Rust ``tempfile``: ``.tmpXXXXXX``)
SAFETENSORS_TEMP = ".tmp??????"


def remove_stale_temps(directory: Path, patterns: tuple[str, ...]) -> None:
    """Delete the temporary files (glob ``patterns``) left in ``directory`` by a save that was killed midway.

    They never carry a final name (so nothing reads them) but can be as big as the weights.
    Only the process that owns the folder (the one saving into it) calls this.
    """
    for pattern in patterns:
        for tmp in directory.glob(pattern):
            try:
                tmp.unlink()
            except OSError:
                pass


MODEL_TEMPS = (f".{WEIGHTS_NAME}.*.tmp", f".{META_NAME}.*.tmp", f".{LOG_NAME}.*.tmp", SAFETENSORS_TEMP)


def _atomic_write(final: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``final``, flush it to disk, rename it to ``final``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, final)
        fsync(final.parent, directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in model.json")


def _log_csv(log: list[dict[str, float]]) -> str:
    columns: list[str] = []
    for row in log:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)]
    for row in log:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in columns))
    return "\n".join(lines) + "\n"


def _read_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if not lines:
        return []
    header = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        values = line.split(",")
        row = {}
        for k, v in zip(header, values):
            try:
                row[k] = float(v)
            except ValueError:  # the log is informative only: a damaged cell must not make the model unloadable
                continue
        rows.append(row)
    return rows
