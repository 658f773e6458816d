"""ONNX export (``emssl export --format onnx``): one graph with dynamic batch, height and width.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx``
package, is fast, and handles every registered architecture; the ``torch.export``-based
exporter (which needs ``onnxscript``) is the fallback where the former is unavailable. The
opset (17) is one that every onnxruntime on PyPI since 1.13 runs. Fixed-size networks
(ViT) get a fixed height and width and a dynamic batch.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from ..engine.model_dir import TrainedModel
from ..errors import EmsslError
from .graph import INPUT_NAME, OUTPUT_NAME, example_input, exported_network, graph_spec

OPSET = 17
SUFFIX = ".onnx"


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmsslError(
            f"{purpose} needs the Python package {module!r}, which is not installed: "
            "pip install 'napari-emssl[export]' (or pip install onnx onnxruntime)"
        ) from None


def onnx_bytes(model: TrainedModel) -> bytes:
    """The model's exported graph (see :mod:`napari_emssl.export.graph`) serialised as ONNX."""
    _require("onnx", "ONNX export")
    spec = graph_spec(model)
    wrapper = exported_network(model)
    x = example_input(spec)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer notes: the result is checked numerically
        try:
            axes = {0: "batch"} if not spec.dynamic else {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(wrapper, (x,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=OPSET, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, dynamo=False)
        except (TypeError, RuntimeError, ImportError) as legacy_error:  # no legacy exporter: torch.export-based one
            try:
                buffer = io.BytesIO()
                _export_dynamo(wrapper, x, buffer, spec.dynamic)
            except Exception as exc:  # noqa: BLE001 - report both reasons
                raise EmsslError(f"ONNX export of the {model.meta.get('arch')!r} network failed: {legacy_error}; {exc}") from exc
    return buffer.getvalue()


def _export_dynamo(wrapper: torch.nn.Module, x: torch.Tensor, buffer: io.BytesIO, dynamic: bool) -> None:
    _require("onnxscript", "ONNX export with torch.export")
    from torch.export import Dim

    shapes = {0: Dim("batch")}
    if dynamic:
        shapes.update({2: Dim.AUTO, 3: Dim.AUTO})
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(wrapper, (x,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=max(OPSET, 18), dynamic_shapes=({**shapes},), dynamo=True, verbose=False)
    program.save(buffer)


def export_onnx(model: TrainedModel, out: Path) -> Path:
    """Write ``out`` (an ``.onnx`` file) and return it."""
    data = onnx_bytes(model)
    out.write_bytes(data)
    return out


def run_onnx(path: str | Path | bytes, x: np.ndarray) -> np.ndarray:
    """Run an exported ONNX graph on ``x`` ``(B, 1, Y, X)`` float32 with onnxruntime on the CPU."""
    ort = _require("onnxruntime", "Running an ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]
