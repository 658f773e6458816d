"""Share trained models: bioimage.io packages, ONNX and TorchScript (``emssl export``).

- :func:`export_model` writes one format and checks it against PyTorch (ONNX through
  onnxruntime, TorchScript through ``torch.jit.load``; the bioimage.io package against
  napari-emssl's own prediction, and validated with ``bioimageio.spec``).
- :func:`load_any` opens a model directory or a bioimage.io package made by napari-emssl.

What the exported graphs compute (softmax probabilities for segmentation, normalised
restored images for restoration) is described in :mod:`napari_emssl.export.graph`.
ONNX, onnxruntime and bioimageio.spec are optional (``pip install 'napari-emssl[export]'``)
and imported only when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "bioimageio": ".zip"}
TOLERANCE = 1e-3  # max |exported - PyTorch|, relative to the output's largest magnitude (at least 1)

__all__ = ["FORMATS", "ExportReport", "export", "export_model", "load_any", "output_path", "check_export"]


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per weights format, on the check input
    status: str | None = None  # bioimage.io validation status


def load_any(source: Any, *, task: str | None = None, map_location: str = "cpu"):
    """A TrainedModel from a model directory or a napari-emssl bioimage.io package (zip or folder)."""
    from .importer import load_any as _load_any

    return _load_any(source, task=task, map_location=map_location)


def output_path(out: str | os.PathLike, fmt: str, stem: str = "model") -> Path:
    """Where ``fmt`` is written for ``--out out``; refuses paths that cannot be written.

    ONNX / TorchScript: ``out`` is the file, or an existing folder that receives ``<stem>.onnx`` /
    ``<stem>.pt``. bioimage.io: ``out`` ending in ``.zip`` is the zipped package; any other
    path is an unpacked package folder (new, or empty).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    as_folder = str(out).endswith(("/", os.sep))  # "out/": a folder, also when it does not exist yet
    path = Path(out).expanduser()
    if fmt != "bioimageio" and (path.is_dir() or as_folder):
        path = path / f"{stem}{SUFFIXES[fmt]}"
    if fmt == "bioimageio" and path.suffix.lower() != ".zip":
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InputError(f"cannot write the package folder {str(path)!r}: it exists and is not an empty folder "
                             "(give a new folder, or a path ending in .zip)")
        folder = path
    else:
        if path.is_dir():
            raise InputError(f"cannot write {str(path)!r}: it is a folder")
        folder = path.parent
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise InputError(f"cannot write to {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write to {str(path)!r}: the folder {str(folder)!r} is not writable")
    return path


def check_export(path: str | os.PathLike, fmt: str, model) -> tuple[float, float]:
    """Largest |difference| of an exported ONNX / TorchScript file to PyTorch on a check batch (two images).

    Returns ``(difference, tolerance)``; the tolerance is :data:`TOLERANCE` times the largest
    output magnitude (at least 1).
    """
    from .graph import check_input_side, example_input, graph_spec, reference_output

    spec = graph_spec(model)
    side = check_input_side(spec, spec.sample_side + 2 * spec.step)  # another size than the one traced
    x = example_input(spec, batch=2, side=side, seed=1)
    expected = reference_output(model, x)
    if fmt == "onnx":
        from .onnx import run_onnx

        got = run_onnx(path, x.numpy())
    elif fmt == "torchscript":
        from .torchscript import run_torchscript

        got = run_torchscript(path, x.numpy())
    else:
        raise InputError(f"no numerical check for format {fmt!r}")
    if got.shape != expected.shape:
        from ..errors import EmsslError

        raise EmsslError(f"the exported {fmt} model returned shape {got.shape} for input {tuple(x.shape)}; expected {expected.shape}")
    return float(abs(got - expected).max()), TOLERANCE * max(1.0, float(abs(expected).max()))


def export(model: Any, fmt: str, out: str | os.PathLike, *, check: bool = True, name: str | None = None,
           authors: list[str] | None = None, license: str | None = None, description: str | None = None,
           test_image=None, test_image_note: str | None = None) -> ExportReport:
    """Export ``model`` (a TrainedModel, a model directory or a napari-emssl package) as ``fmt`` to ``out``.

    ``check``: run the exported file and compare it with PyTorch (ONNX, TorchScript); a
    bioimage.io package is always checked against napari-emssl's prediction on its test
    image and validated. ``name``, ``authors``, ``license``, ``description`` and
    ``test_image`` (a 2D array) only concern bioimage.io packages.
    """
    from ..errors import EmsslError

    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    stem = "model"
    if not hasattr(model, "net"):
        stem = Path(model).name.split(".")[0] or "model"
        model = load_any(model)
    path = output_path(out, fmt, stem)
    if fmt == "bioimageio":
        from .bioimageio import DEFAULT_LICENSE, PackageOptions, build_package

        options = PackageOptions(name=name, authors=list(authors or []), license=license or DEFAULT_LICENSE,
                                 description=description, test_image=test_image, test_image_note=test_image_note)
        report = build_package(model, path, options)
        return ExportReport(path=report.path, format=fmt, max_abs_diff=report.max_abs_diff, status=report.status)
    if fmt == "onnx":
        from .onnx import onnx_bytes as to_bytes
    else:
        from .torchscript import torchscript_bytes as to_bytes
    data = to_bytes(model)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        diffs = {}
        if check:
            diff, tolerance = check_export(tmp, fmt, model)
            diffs[fmt] = diff
            if not diff <= tolerance:
                raise EmsslError(f"the exported {fmt} model differs from PyTorch by {diff:.3g} (tolerance {tolerance:.3g}); "
                                 "not writing it")
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportReport(path=path, format=fmt, max_abs_diff=diffs)


def export_model(model: Any, fmt: str, out: str | os.PathLike, **options: Any) -> Path:
    """Export ``model`` as ``fmt`` (bioimageio, onnx, torchscript) to ``out``; returns the written path."""
    return export(model, fmt, out, **options).path
