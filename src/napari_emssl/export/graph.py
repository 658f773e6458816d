"""The computation every export holds: the network as napari-emssl applies it, on one normalised image.

An exported graph maps a batch of percentile-normalised images ``(B, 1, Y, X)`` float32
(``x -> (x - p_low) / (p_high - p_low)`` with the model's percentiles, see
:mod:`napari_emssl.data.normalize`) to:

==========  ======================================================================================
task        output
==========  ======================================================================================
segment     class probabilities ``(B, K, Y, X)``: the softmax of the network's logits, as
            ``emssl predict --probabilities`` writes them. Channel ``i`` is label ``i + 1``
            (1 = background), so the label image is ``argmax + 1``.
denoise     the restored image ``(B, 1, Y, X)`` in the same normalised units as the input.
bgremove    the background-free signal ``(B, 1, Y, X)`` divided by ``p_high - p_low`` (no offset:
            0 means "no signal"); multiply by ``p_high - p_low`` for the input's grey values.
superres    the high-resolution image ``(B, 1, f*Y, f*X)`` in normalised units: the input is
            upsampled bicubically inside the graph and the network's residual added (VDSR),
            exactly as :func:`napari_emssl.tasks.superres.superres_forward`.
==========  ======================================================================================

So the activation is part of the graph (no separate softmax step is needed by a consumer),
and only the percentile normalisation is left to the caller (in a bioimage.io package it
is the ``scale_range`` preprocessing). The graph runs on the whole image at once; ``emssl
predict`` runs the same network on overlapping tiles and blends them, which gives the same
values away from tile seams and within a small tolerance at them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.model_dir import TrainedModel
from ..errors import ModelFormatError

INPUT_NAME, OUTPUT_NAME = "input", "output"
TASKS = ("segment", "denoise", "bgremove", "superres")


class ExportedNetwork(torch.nn.Module):
    """``net`` with the task's input transform (superres: bicubic upsampling + residual) and activation (segment: softmax)."""

    def __init__(self, net: torch.nn.Module, task: str, factor: int = 1) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "superres":
            up = F.interpolate(x, scale_factor=float(self.factor), mode="bicubic", align_corners=False)
            return up + self.net(up)
        y = self.net(x)
        if self.task == "segment":
            y = torch.softmax(y, dim=1)
        return y


@dataclass(frozen=True)
class GraphSpec:
    """Shapes an exported graph accepts and returns (spatial sizes of the input; the output is ``factor`` times larger)."""

    task: str
    factor: int  # output pixels per input pixel along Y and X (1 except superres)
    out_channels: int
    step: int  # input sides must be multiples of this
    fixed: int | None  # input side when the network only takes one size (ViT), else None
    halo: int  # output pixels on each side that depend on pixels beyond the input (to crop when tiling); 0: none
    sample_side: int  # input side of the example / test image

    @property
    def dynamic(self) -> bool:
        return self.fixed is None


def graph_spec(model: TrainedModel) -> GraphSpec:
    """What the exported graph of ``model`` accepts: size multiple, fixed size (ViT), halo and a sample size."""
    meta, net = model.meta, model.net
    task = meta.get("task")
    if task not in TASKS:
        raise ModelFormatError(f"cannot export a model of task {task!r} (exportable tasks: {', '.join(TASKS)})")
    factor = int(meta.get("factor", 1)) if task == "superres" else 1
    multiple = max(1, int(meta.get("size_multiple", getattr(net, "size_multiple", 1))))
    receptive_field = int(meta.get("receptive_field", getattr(net, "receptive_field", 0)))
    step = multiple // math.gcd(multiple, factor)  # input side s: the network's grid f*s must be a multiple
    reach = receptive_field // 2 + 1  # output pixels, on the network's grid
    halo = int(math.ceil(reach / factor) * factor)  # whole input pixels, so the input halo is an integer too
    img_size = getattr(net, "arch_kwargs", {}).get("img_size") if "vit" in str(meta.get("arch", "")) else None
    fixed = int(img_size) // factor if img_size else None
    if fixed is not None:
        side = fixed
        # global attention within a fixed-size input: no halo reaches past a quarter of the output side
        halo = min(halo, (fixed * factor // 4) // factor * factor)
    else:
        side = max(128 // factor, 2 * (halo // factor) + step)
        side = int(math.ceil(side / step) * step)
    return GraphSpec(task=task, factor=factor, out_channels=int(meta["out_channels"]), step=step, fixed=fixed,
                     halo=halo, sample_side=side)


def exported_network(model: TrainedModel) -> ExportedNetwork:
    """A CPU float32 copy of ``model.net`` wrapped as the exported graph (the model itself is left unchanged)."""
    spec = graph_spec(model)
    net = copy.deepcopy(model.net).to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return ExportedNetwork(net, spec.task, spec.factor).eval()


def example_input(spec: GraphSpec, batch: int = 1, side: int | None = None, seed: int = 0) -> torch.Tensor:
    """A smooth random image ``(batch, 1, side, side)`` in normalised units (about 0..1), for tracing and checks."""
    side = int(side or spec.sample_side)
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, 1, max(2, side // 8), max(2, side // 8)), dtype=np.float32)
    x = F.interpolate(torch.from_numpy(coarse), size=(side, side), mode="bilinear", align_corners=False)
    return x + 0.05 * torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))


def check_input_side(spec: GraphSpec, side: int) -> int:
    """A valid input side near ``side`` (rounded up to the step; the fixed size of fixed-size networks)."""
    if spec.fixed is not None:
        return spec.fixed
    return int(math.ceil(max(side, spec.step) / spec.step) * spec.step)


def reference_output(model: TrainedModel, x: torch.Tensor) -> np.ndarray:
    """What PyTorch computes for ``x`` with the exported graph (float32 numpy)."""
    with torch.inference_mode():
        return exported_network(model)(x).numpy()
