"""Pretraining checkpoints and pretrained model directories, never pickled.

A pretraining output folder ``DIR`` holds

* ``checkpoint-<step>.safetensors``: every tensor of the pretext module under ``model.<name>``,
  every optimiser state tensor under ``optim.<phase>.<param index>.<name>`` and the
  random generator states under ``rng.<name>``;
* ``checkpoint.json``: format version, step, total steps, per-phase optimiser
  ``param_groups`` and non-tensor state, scheduler positions, the run configuration,
  method / architecture and seed information;
* the model directory of the DESIGN contract: ``model.safetensors`` (the weights a
  downstream network starts from, :meth:`Pretext.pretrained_state`), ``model.json``
  (task ``"pretrain"``) and ``log.csv``.

Every file is written to a temporary name in ``DIR``, flushed to disk and renamed. The
JSON file is the commit point: it names the weights file of its own save (stamped with
the step), which is written first, and the previous weights file is deleted only after
the new JSON is in place. A crash at any moment leaves a complete pair (the old or the
new one). The step is also stored inside the weights file, so a mismatched pair (e.g.
copied together by hand) is detected and refused. Folders written before the weights
file was step-stamped (``checkpoint.safetensors``, no ``weights_file`` in the JSON) still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import InputError, ModelFormatError
from .model_dir import (FORMAT_VERSION, LOG_NAME, META_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, _atomic_write, _json_default,
                        MODEL_TEMPS, SAFETENSORS_TEMP, _log_csv, pickle_note, remove_stale_temps)

CHECKPOINT_VERSION = 1
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"  # the weights file of folders written without a ``weights_file`` entry
CHECKPOINT_META = "checkpoint.json"
PRETRAIN_TASK = "pretrain"

__all__ = [
    "Checkpoint", "save_checkpoint", "load_checkpoint", "restore_checkpoint", "write_pretrained", "read_pretrained",
    "has_checkpoint", "CHECKPOINT_WEIGHTS", "CHECKPOINT_META", "PRETRAIN_TASK",
]


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` from the JSON file, ``tensors`` from the safetensors file."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that owns its memory (safetensors refuses shared storage)."""
    return t.detach().to("cpu", copy=True).contiguous()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default)))


def weights_name(step: int) -> str:
    """The checkpoint weights file of the save at ``step``."""
    return f"checkpoint-{int(step):08d}.safetensors"


def _weights_files(path: Path) -> list[Path]:
    return sorted(path.glob("checkpoint*.safetensors"))


def has_checkpoint(directory: str | os.PathLike) -> bool:
    path = Path(directory)
    return (path / CHECKPOINT_META).exists() or bool(_weights_files(path))


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    pretext: torch.nn.Module,
    optimisers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
    step: int,
    total_steps: int,
    info: dict[str, Any],
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoint.safetensors`` and ``checkpoint.json`` (atomically); return the JSON path.

    ``info`` is stored as it is (config, method, arch, seed, seconds ...).
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path, (".checkpoint*.tmp", SAFETENSORS_TEMP))  # left by a run killed while saving
    tensors = {f"model.{k}": _cpu(v) for k, v in pretext.state_dict().items()}
    optim_meta: dict[str, Any] = {}
    for phase, opt in optimisers.items():
        sd = opt.state_dict()
        other: dict[str, dict[str, Any]] = {}
        for index, entries in sd["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{phase}.{index}.{name}"] = _cpu(value)
                else:
                    other.setdefault(str(index), {})[name] = value
        optim_meta[phase] = {"param_groups": sd["param_groups"], "state": other}
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = _cpu(value)
    name = weights_name(step)
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "package_version": __version__,
        "weights_file": name,
        "step": int(step),
        "total_steps": int(total_steps),
        "optimisers": optim_meta,
        "schedulers": {phase: {"last_epoch": int(s.last_epoch)} for phase, s in schedulers.items()},
        **info,
    }
    _atomic_write(path / name, lambda tmp: save_file(tensors, tmp, metadata={"step": str(int(step))}))
    _write_json(path / CHECKPOINT_META, meta)  # the commit point
    for old in _weights_files(path):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path / CHECKPOINT_META


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint pair; :class:`InputError` when it is missing, damaged or inconsistent."""
    path = Path(directory)
    meta_path = path / CHECKPOINT_META
    if not meta_path.is_file():
        raise InputError(f"no pretraining checkpoint in '{path}' (it needs {CHECKPOINT_META} and its weights file)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"the checkpoint '{meta_path}' is damaged (not valid JSON: {exc}); start a new run") from None
    name = meta.get("weights_file", CHECKPOINT_WEIGHTS) if isinstance(meta, dict) else CHECKPOINT_WEIGHTS
    if isinstance(name, str) and Path(name).name == name and Path(name).suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFormatError(f"the checkpoint '{meta_path}' names the weights file {name!r}: {pickle_note(path / name)}")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise InputError(f"the checkpoint '{meta_path}' is damaged: bad weights file name {name!r}")
    weights_path = path / name
    if not weights_path.is_file():
        raise InputError(f"the checkpoint '{meta_path}' names the weights file '{name}', which is missing from '{path}'")
    if not isinstance(meta, dict) or meta.get("checkpoint_version") != CHECKPOINT_VERSION:
        version = meta.get("checkpoint_version") if isinstance(meta, dict) else None
        raise InputError(f"the checkpoint '{meta_path}' has format version {version!r}; this napari-emssl reads {CHECKPOINT_VERSION}")
    for key in ("step", "total_steps", "optimisers", "schedulers", "method", "arch", "arch_kwargs"):
        if key not in meta:
            raise InputError(f"the checkpoint '{meta_path}' is damaged: it lacks {key!r}")
    try:
        tensors = load_file(str(weights_path))
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as fh:
            saved_step = (fh.metadata() or {}).get("step")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        note = pickle_note(weights_path)
        if note:  # not a damaged safetensors file but another format: refused, never unpickled
            raise ModelFormatError(f"the checkpoint '{weights_path}' is not a safetensors file: {note}") from None
        raise InputError(f"the checkpoint '{weights_path}' is damaged ({exc}); start a new run") from None
    if saved_step != str(meta["step"]):
        raise InputError(f"the checkpoint files in '{path}' come from different saves (steps {saved_step} and {meta['step']})")
    return Checkpoint(meta=meta, tensors=tensors)


def _fix_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for group in groups:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        out.append(group)
    return out


def restore_checkpoint(
    checkpoint: Checkpoint,
    *,
    pretext: torch.nn.Module,
    optimisers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
) -> dict[str, torch.Tensor]:
    """Load weights, optimiser states and schedule positions; return the saved RNG tensors."""
    model = {k[len("model."):]: v for k, v in checkpoint.tensors.items() if k.startswith("model.")}
    try:
        pretext.load_state_dict(model, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"the checkpoint does not fit this network ({first})") from None
    saved = checkpoint.meta["optimisers"]
    if set(saved) != set(optimisers):
        raise InputError(f"the checkpoint has optimiser phases {sorted(saved)}, this method uses {sorted(optimisers)}")
    for phase, opt in optimisers.items():
        state: dict[int, dict[str, Any]] = {}
        prefix = f"optim.{phase}."
        for key, value in checkpoint.tensors.items():
            if key.startswith(prefix):
                index, name = key[len(prefix):].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for index, entries in saved[phase]["state"].items():
            state.setdefault(int(index), {}).update(entries)
        try:
            opt.load_state_dict({"state": state, "param_groups": _fix_groups(saved[phase]["param_groups"])})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"the checkpoint's optimiser state of phase {phase!r} does not fit ({exc})") from None
        sched = schedulers[phase]
        sched.last_epoch = int(checkpoint.meta["schedulers"][phase]["last_epoch"])
        sched._last_lr = [group["lr"] for group in opt.param_groups]  # what get_last_lr() reports
    return {k[len("rng."):]: v for k, v in checkpoint.tensors.items() if k.startswith("rng.")}


# ---------------------------------------------------------------------------------------------- model dir


def write_pretrained(directory: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any],
                     log: list[dict[str, float]] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (task ``pretrain``) + ``log.csv`` atomically."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path, MODEL_TEMPS)
    tensors = {k: _cpu(v) for k, v in state.items()}
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    full = {**meta, "format_version": FORMAT_VERSION, "package_version": __version__, "task": PRETRAIN_TASK}
    _write_json(path / META_NAME, full)
    if log:
        _atomic_write(path / LOG_NAME, lambda tmp: Path(tmp).write_text(_log_csv(log)))
    return path


def read_pretrained(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, weights)`` of a pretrain model directory; :class:`ModelFormatError` when it is not one."""
    path = Path(directory)
    meta_path, weights_path = path / META_NAME, path / WEIGHTS_NAME
    if not meta_path.is_file() or not weights_path.is_file():
        raise ModelFormatError(f"'{path}' is not a model directory: it needs {META_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{meta_path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("task") != PRETRAIN_TASK:
        raise ModelFormatError(f"'{path}' does not hold pretrained weights (task {meta.get('task') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{meta_path} has model format version {meta.get('format_version')!r}; this napari-emssl "
                               f"({__version__}) reads version {FORMAT_VERSION}")
    if not isinstance(meta.get("arch"), str) or not isinstance(meta.get("arch_kwargs"), dict):
        raise ModelFormatError(f"{meta_path} lacks the architecture (arch, arch_kwargs) the weights are meant for")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        note = pickle_note(weights_path)
        raise ModelFormatError(f"{weights_path} is not a readable safetensors file" + (f": {note}" if note else f" ({exc})")) from None
    return meta, state


def is_pretrained_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory/model.json`` says task ``pretrain``."""
    try:
        meta = json.loads((Path(directory) / META_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("task") == PRETRAIN_TASK
