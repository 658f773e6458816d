"""TorchScript export (``emssl export --format torchscript``): the exported graph traced with ``torch.jit.trace``.

Tracing records the network's operations for an example image; the spatial sizes stay
symbolic (the residual U-Nets, smp U-Nets and HRNet accept any multiple of their size
multiple after tracing; the export is checked on a second shape). Fixed-size networks
(ViT) accept only the size they were traced with. Load it with ``torch.jit.load(path)``;
no napari-emssl code is needed to run it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from ..engine.model_dir import TrainedModel
from .graph import example_input, exported_network, graph_spec

SUFFIX = ".pt"


def torchscript_bytes(model: TrainedModel) -> bytes:
    """The traced exported graph (see :mod:`napari_emssl.export.graph`), serialised."""
    spec = graph_spec(model)
    wrapper = exported_network(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notes; the result is checked numerically
        traced = torch.jit.trace(wrapper, example_input(spec), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def export_torchscript(model: TrainedModel, out: Path) -> Path:
    """Write ``out`` (a TorchScript ``.pt`` file) and return it."""
    out.write_bytes(torchscript_bytes(model))
    return out


def run_torchscript(path: str | Path | bytes, x: np.ndarray) -> np.ndarray:
    """Run an exported TorchScript file on ``x`` ``(B, 1, Y, X)`` float32 on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
        module = torch.jit.load(source, map_location="cpu")
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
