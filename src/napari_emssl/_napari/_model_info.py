"""The Apply widget's model: a model folder's (or package's) metadata read cheaply on the main thread, and its description."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TASKS
from ..engine.model_dir import META_NAME, WEIGHTS_NAME
from ..errors import InputError, ModelFormatError
from ._layers import result_kind


def read_model_meta(folder: str) -> dict:
    """model.json of a model folder, with the cheap checks done on the main thread."""
    if not folder:
        raise InputError("Choose the model folder (the one with model.json and model.safetensors).")
    path = Path(folder)
    from ..export.importer import is_bioimageio_package

    if path.exists() and is_bioimageio_package(path):  # a bioimage.io package made by napari-emssl (zip or folder)
        from ..export import load_any

        return load_any(path).meta
    if not path.is_dir():
        raise ModelFormatError(f"Model folder {folder!r} does not exist.")
    if not (path / META_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise ModelFormatError(f"{folder!r} is not a model folder: it needs {META_NAME} and {WEIGHTS_NAME}.")
    try:
        meta = json.loads((path / META_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"{path / META_NAME} is not readable JSON ({exc}).") from None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise ModelFormatError(f"{path / META_NAME} does not describe a napari-emssl model.")
    if meta.get("task", "segment") not in TASKS:
        raise ModelFormatError(f"The model in {folder!r} was trained for {meta['task']!r}, which this version does not "
                               f"know (it knows {', '.join(TASKS)}).")
    return meta


def describe_model(meta: dict) -> str:
    task = meta.get("task", "segment")
    if task == "segment":
        classes = meta.get("classes") or list(range(1, int(meta.get("out_channels", 0)) + 1))
        text = f"{meta.get('arch')} · classes {classes}"
    else:
        text = f"{meta.get('arch')} · {result_kind(task, int(meta.get('factor', 1)))}"
        if task == "denoise" and meta.get("leak_correction"):
            leak = meta["leak_correction"]
            text += f" · leak correction {leak if isinstance(leak, str) else format(float(leak), 'g')}"
        if task == "denoise" and meta.get("mean_correction"):
            text += f" · mean correction {float(meta['mean_correction']):g} px"
    finetune = (meta.get("lineage") or {}).get("finetune") or {}
    if finetune:
        text += f" · fine-tuned {finetune.get('steps')} steps on {finetune.get('source') or 'an image'}"
        if finetune.get("completed") is False:
            text += " (stopped early)"
    return text
