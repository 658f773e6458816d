"""bioimage.io model packages (``emssl export --format bioimageio``), model description format 0.5.

A package holds:

- weights: TorchScript (always) and ONNX (when the ``onnx`` package is installed), both the
  exported graph of :mod:`napari_emssl.export.graph` (softmax probabilities for
  segmentation, normalised restored images for restoration);
- ``model.safetensors`` + ``model.json`` (+ ``log.csv``) as attachments: the napari-emssl
  model directory, from which :func:`napari_emssl.export.load_any` rebuilds the model
  without unpickling anything;
- a test input (raw grey values) and the test output computed by napari-emssl's own
  prediction (``emssl predict``'s code path on one tile), as ``.npy``;
- preprocessing: percentile normalisation with the model's percentiles (``scale_range``
  over Y and X); no postprocessing (the graph already ends with the activation);
- a cover image (test input | test output), a README generated from ``model.json``, and
  authors, licence and citation fields.

The package is built and validated with ``bioimageio.spec`` only, offline: no file
references a URL, so validation reads local files and never opens a connection.
"""

from __future__ import annotations

import contextlib
import math
import string
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..engine.model_dir import LOG_NAME, META_NAME, WEIGHTS_NAME, TrainedModel
from ..errors import EmsslError, InputError
from .graph import GraphSpec, graph_spec
from .bioimageio_validate import VALID, first_error, quiet_bioimageio, spec_module, validate_package  # noqa: F401
from .package_docs import TASK_WORDS, cover, readme

EMSSL_CONFIG_KEY = "napari_emssl"  # config.<this> marks packages made by napari-emssl
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_AUTHOR = "napari-emssl user"
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_+- ()")
TASK_TAGS = {"segment": ["semantic-segmentation", "segmentation"], "denoise": ["denoising", "restoration"],
             "bgremove": ["background-removal", "restoration"], "superres": ["super-resolution", "restoration"]}
CITATION = {
    "text": "Kazimi, Ruzaeva, Sandfeld. Self-supervised learning with generative adversarial networks for electron "
            "microscopy. CVPR Workshops 2024 (arXiv 2402.18286).",
    "doi": "10.48550/arXiv.2402.18286",
}
CHECK_TOLERANCE = 1e-3  # max |exported - PyTorch| on the test image, relative to the output's range (at least 1)


@dataclass
class PackageOptions:
    """What the user can set: name, authors, licence (SPDX id), description, test image (2D array)."""

    name: str | None = None
    authors: list[str] = field(default_factory=list)
    license: str = DEFAULT_LICENSE
    description: str | None = None
    test_image: np.ndarray | None = None
    test_image_note: str | None = None


@dataclass(frozen=True)
class PackageReport:
    path: Path
    status: str  # bioimage.io validation status ("passed")
    weights: tuple[str, ...]
    max_abs_diff: dict[str, float]  # per weights format: max |exported - napari-emssl prediction| on the test input


def default_name(model: TrainedModel) -> str:
    meta = model.meta
    task = TASK_WORDS.get(meta.get("task"), str(meta.get("task")))
    extra = f" x{meta.get('factor')}" if meta.get("task") == "superres" else ""
    return f"napari-emssl EM {task}{extra} ({meta.get('arch')})"


def check_name(name: str) -> str:
    name = name.strip()
    bad = sorted(set(name) - NAME_CHARACTERS)
    if bad or not 5 <= len(name) <= 128:
        why = f"it contains {''.join(bad)!r}" if bad else f"it has {len(name)} characters"
        raise InputError(
            f"the bioimage.io model name {name!r} is not allowed ({why}): use 5 to 128 letters, digits, spaces and _+-()"
        )
    return name


def check_license(license_id: str) -> str:
    """An SPDX licence identifier bioimage.io knows (e.g. CC-BY-4.0, MIT), else an InputError."""
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        return str(LicenseId(license_id.strip()))
    except ValueError:
        raise InputError(
            f"unknown licence {license_id!r}: give an SPDX licence identifier such as CC-BY-4.0, CC0-1.0, MIT or BSD-3-Clause"
        ) from None


# ---------------------------------------------------------------------------------------------- test data


def _test_image(options: PackageOptions, spec: GraphSpec) -> tuple[np.ndarray, str]:
    """The raw 2D test input (float32, ``sample_side`` square) and where it came from."""
    side = spec.sample_side
    if options.test_image is not None:
        image = np.asarray(options.test_image)
        if image.ndim == 3:
            image = image[image.shape[0] // 2]
        if image.ndim != 2:
            raise InputError(f"the test image must be 2D (Y, X) or a stack (Z, Y, X), got shape {image.shape}")
        note = options.test_image_note or "an image given by the model's author"
    else:
        from ..sample import CITATION as SAMPLE_CITATION, load_sstem_sample

        image = load_sstem_sample().image[0]
        note = f"a crop of the napari-emssl sample data: {SAMPLE_CITATION}"
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] < side or image.shape[1] < side:
        pad = ((0, max(0, side - image.shape[0])), (0, max(0, side - image.shape[1])))
        image = np.pad(image, pad, mode="reflect" if min(image.shape) > 1 else "edge")
    y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    crop = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
    if float(np.ptp(crop)) == 0.0:
        raise InputError("the test image crop is constant; give a test image with structure")
    return crop, note


def _our_prediction(model: TrainedModel, raw: np.ndarray, spec: GraphSpec) -> np.ndarray:
    """napari-emssl's own prediction for ``raw`` on one tile, in the exported graph's units: ``(1, C, fY, fX)``."""
    from .. import api
    from ..config import PredictConfig
    from ..data.normalize import percentile_normalize

    grid = raw.shape[0] * spec.factor
    config = PredictConfig(device="cpu", tile=grid, overlap=0, batch_size=1, amp=False, probabilities=True,
                           tta=False)  # the exported graph is one view
    training = model.net.training
    # the exported graph is the network alone: no leak or mean correction, no back-projection (post-processing, see the
    # package's docs)
    bare = TrainedModel(net=model.net, meta={**model.meta, "mean_correction": 0.0, "leak_correction": 0.0, "back_projection": 0},
                        log=model.log)
    try:
        result = api.predict(bare, raw, config)
    finally:
        model.net.train(training)  # predict switches the network to eval mode: leave the caller's model as it was
    if spec.task == "segment":
        return result.probabilities[None].astype(np.float32)
    normalization = model.meta.get("normalization") or {"low": 1.0, "high": 99.8}
    _, stats = percentile_normalize(raw, normalization["low"], normalization["high"])
    offset = 0.0 if spec.task == "bgremove" else stats.p_low
    out = (result.image.astype(np.float64) - offset) / (stats.p_high - stats.p_low)
    return out[None, None].astype(np.float32)


def _normalized(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """``raw`` as a consumer's ``scale_range`` preprocessing makes it (eps 1e-6 as in bioimage.io)."""
    normalization = model.meta.get("normalization") or {"low": 1.0, "high": 99.8}
    low, high = np.percentile(raw.astype(np.float64), [normalization["low"], normalization["high"]])
    return ((raw - low) / (high - low + 1e-6)).astype(np.float32)[None, None]


def _path_is_zip(out: Path) -> bool:
    return out.suffix.lower() == ".zip"


def build_package(model: TrainedModel, out: Path, options: PackageOptions | None = None) -> PackageReport:
    """Write a bioimage.io package to ``out`` (``.zip``: zipped; else an unpacked folder) and validate it."""
    from .onnx import onnx_bytes, run_onnx
    from .torchscript import run_torchscript, torchscript_bytes

    options = options or PackageOptions()
    v0_5 = spec_module()
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
    from bioimageio.spec.common import InvalidDescr

    spec = graph_spec(model)
    name = check_name(options.name or default_name(model))
    license_id = check_license(options.license or DEFAULT_LICENSE)
    authors = [a.strip() for a in options.authors if a and a.strip()] or [DEFAULT_AUTHOR]
    for author in authors:
        if "/" in author:
            raise InputError(f"the author name {author!r} contains '/', which bioimage.io does not allow")

    with tempfile.TemporaryDirectory(prefix="emssl-bioimageio-") as tmp_name, quiet_bioimageio():
        tmp = Path(tmp_name)
        raw, test_note = _test_image(options, spec)
        expected = _our_prediction(model, raw, spec)
        x = _normalized(model, raw)
        scale = max(1.0, float(np.max(np.abs(expected))))
        files: dict[str, Path] = {}
        diffs: dict[str, float] = {}
        (tmp / "weights_torchscript.pt").write_bytes(torchscript_bytes(model))
        files["torchscript"] = tmp / "weights_torchscript.pt"
        diffs["torchscript"] = float(np.max(np.abs(run_torchscript(files["torchscript"], x) - expected)))
        try:
            data = onnx_bytes(model)
        except EmsslError as exc:
            if "not installed" not in str(exc):
                raise
        else:
            files["onnx"] = tmp / "weights.onnx"
            files["onnx"].write_bytes(data)
            with contextlib.suppress(EmsslError):  # onnxruntime missing: the graph is still valid ONNX
                diffs["onnx"] = float(np.max(np.abs(run_onnx(files["onnx"], x) - expected)))
        for fmt, diff in diffs.items():
            if not diff <= CHECK_TOLERANCE * scale:
                raise EmsslError(f"the exported {fmt} weights differ from napari-emssl's prediction by {diff:.3g} "
                                 f"on the test image (tolerance {CHECK_TOLERANCE * scale:.3g}); not writing a package")
        np.save(tmp / "test_input.npy", raw[None, None])
        np.save(tmp / "test_output.npy", expected)
        cover(x, expected, spec, tmp / "cover.png")
        model_dir = tmp / "emssl_model"
        model.save(model_dir)
        (tmp / "README.md").write_text(readme(model, name, spec, diffs, test_note))

        try:
            descr = _description(v0_5, model, spec, name, authors, license_id, options.description, files, tmp, model_dir)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise EmsslError(f"the bioimage.io description is invalid: {first_error(exc)}") from None
        if isinstance(descr, InvalidDescr):
            raise EmsslError(f"the bioimage.io description is invalid: {descr.validation_summary.format()}")
        if out.exists() and not _path_is_zip(out) and any(out.iterdir()):
            raise InputError(f"the output folder {str(out)!r} is not empty; give a new folder or a .zip path")
        created_folder = not out.exists()
        try:
            if _path_is_zip(out):
                tmp_zip = out.with_name(f".{out.name}.tmp.zip")
                try:
                    save_bioimageio_package(descr, output_path=tmp_zip)
                    tmp_zip.replace(out)
                finally:
                    tmp_zip.unlink(missing_ok=True)
            else:
                save_bioimageio_package_as_folder(descr, output_path=out)
            status = validate_package(out)
            if status not in VALID:
                raise EmsslError(f"the bioimage.io package did not pass validation ({status}); nothing was written")
        except BaseException:  # leave no package that failed to be written or validated
            if _path_is_zip(out):
                out.unlink(missing_ok=True)
            elif out.is_dir() and created_folder:
                shutil.rmtree(out)
            elif out.is_dir():
                for item in out.iterdir():
                    _remove(item)
            raise
    return PackageReport(path=out, status=status, weights=tuple(files), max_abs_diff=diffs)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _description(v0_5, model, spec: GraphSpec, name, authors, license_id, description, files, tmp: Path, model_dir: Path):
    """The bioimage.io ModelDescr (spec 0.5) of the package's files."""
    from bioimageio.spec.common import FileDescr
    from bioimageio.spec.model.v0_5 import (
        AxisId, BatchAxis, ChannelAxis, CiteEntry, Doi, EnsureDtypeDescr, EnsureDtypeKwargs, InputTensorDescr,
        IntervalOrRatioDataDescr, LicenseId, ModelDescr, OnnxWeightsDescr, OutputTensorDescr, ParameterizedSize,
        ScaleRangeDescr, ScaleRangeKwargs, SizeReference, SpaceInputAxis, SpaceOutputAxis, SpaceOutputAxisWithHalo, TensorId,
        TorchscriptWeightsDescr, Version, WeightsDescr,
    )
    from bioimageio.spec.generic.v0_3 import Author

    meta = model.meta
    task = spec.task
    norm = meta.get("normalization") or {"low": 1.0, "high": 99.8}
    size: Any = spec.fixed
    if spec.fixed is None:
        min_side = max(spec.step, int(math.ceil((2 * spec.halo // spec.factor + spec.step) / spec.step) * spec.step))
        size = ParameterizedSize(min=min_side, step=spec.step)
    input_axes = [
        BatchAxis(),
        ChannelAxis(channel_names=["em"]),
        SpaceInputAxis(id=AxisId("y"), size=size),
        SpaceInputAxis(id=AxisId("x"), size=size),
    ]
    in_id = TensorId("input")
    preprocessing = [
        EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32")),
        ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[AxisId("y"), AxisId("x")], min_percentile=float(norm["low"]),
                                                max_percentile=float(norm["high"]))),
    ]
    inputs = [InputTensorDescr(
        id=in_id, axes=input_axes, test_tensor=FileDescr(source=tmp / "test_input.npy"),
        data=IntervalOrRatioDataDescr(type="float32"), preprocessing=preprocessing,
        description="greyscale EM image (raw grey values; normalised by the preprocessing)",
    )]
    if task == "segment":
        classes = meta.get("classes") or list(range(1, spec.out_channels + 1))
        channel_names = ["background" if c == 1 else f"class{c}" for c in classes]
        out_data = IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
        out_description = "class probabilities (softmax); channel i is label value i + 1"
    else:
        channel_names = [task]
        out_data = IntervalOrRatioDataDescr(type="float32")
        out_description = f"{TASK_WORDS[task]} result in the input's normalised units"
    out_scale = 1.0 / spec.factor
    def space(axis: str):
        if spec.fixed is not None:  # a fixed size: no reference needed
            size = spec.fixed * spec.factor
            return (SpaceOutputAxisWithHalo(id=AxisId(axis), size=SizeReference(tensor_id=in_id, axis_id=AxisId(axis)),
                                            halo=spec.halo, scale=out_scale) if spec.halo
                    else SpaceOutputAxis(id=AxisId(axis), size=size, scale=out_scale))
        reference = SizeReference(tensor_id=in_id, axis_id=AxisId(axis))
        if spec.halo:
            return SpaceOutputAxisWithHalo(id=AxisId(axis), size=reference, halo=spec.halo, scale=out_scale)
        return SpaceOutputAxis(id=AxisId(axis), size=reference, scale=out_scale)

    output_axes = [BatchAxis(), ChannelAxis(channel_names=channel_names), space("y"), space("x")]
    outputs = [OutputTensorDescr(id=TensorId("output"), axes=output_axes, data=out_data,
                                 test_tensor=FileDescr(source=tmp / "test_output.npy"), description=out_description)]
    torch_version = Version(torch.__version__.split("+")[0])
    weights = WeightsDescr(
        torchscript=TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version),
        onnx=OnnxWeightsDescr(source=files["onnx"], opset_version=_opset(), parent="torchscript") if "onnx" in files else None,
    )
    attachments = [FileDescr(source=model_dir / META_NAME), FileDescr(source=model_dir / WEIGHTS_NAME)]
    if (model_dir / LOG_NAME).is_file():
        attachments.append(FileDescr(source=model_dir / LOG_NAME))
    tags = ["napari-emssl", "electron-microscopy", "2d", "pytorch", *TASK_TAGS[task]] + (["onnx"] if "onnx" in files else [])
    method = ((meta.get("lineage") or {}).get("init") or {}).get("pretrain_method")
    how = f"{method} self-supervised pretraining + fine-tuning" if method else "fine-tuning"
    text = description or (f"{TASK_WORDS[task].capitalize()} of 2D electron-microscopy images with a {meta.get('arch')} "
                           f"network, trained with napari-emssl ({how}).")
    return ModelDescr(
        name=name,
        description=text,
        authors=[Author(name=a) for a in authors],
        cite=[CiteEntry(text=CITATION["text"], doi=Doi(CITATION["doi"]))],
        license=LicenseId(license_id) if license_id else None,
        documentation=FileDescr(source=tmp / "README.md"),
        covers=[FileDescr(source=tmp / "cover.png")],
        attachments=attachments,
        tags=tags,
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config={EMSSL_CONFIG_KEY: {"format_version": int(meta.get("format_version", 1)), "package_version": __version__,
                                   "model_json": META_NAME, "weights": WEIGHTS_NAME, "task": task}},
    )


def _opset() -> int:
    from .onnx import OPSET

    return OPSET
