"""Super-resolution x2: training pairs made at smaller factors than the one applied.

    EMSSL_DATA=../shared/data PYTHONPATH=src python benchmarks/superres_pair_factors.py \
        --image stem_adf --smin 1.25 --smax 2 --out benchmarks/results/superres_pair_factors_<tag>.json

The self-supervised pairs of ``emssl finetune --task superres`` downscale the user's image
once more by the factor (2): on an atomic lattice sampled near its resolution limit this
leaves columns about a pixel wide, unlike the image the network is then applied to. Here
each batch's pairs are made at a factor ``s`` drawn uniformly from ``[smin, smax]``: the
patch (128 px) is averaged over ``s x s`` boxes (exact fractional areas, a detector with
``s`` times larger pixels), upsampled bicubically back to 128 px, and the network learns the
residual, as the package does; ``smin = smax = 2`` is the package's own training. Everything
else is the package's (``api.finetune``, bundled weights, 600 steps, seed 0): this script
only replaces the function that makes the pairs. ``--apply`` with several factors (their
product 2) applies the network step by step (gradual upsampling, as zero-shot SR does for
large factors), each step a bicubic upsampling followed by the network.

Scored as the main super-resolution table (same reference, area downscaling by 2, PSNR over
the data range of the reference) with one view, the network run on the whole image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restoration import HELD_OUT, IMAGES, load_clean  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import FinetuneConfig  # noqa: E402
from napari_emssl.data.degrade import downscale_area, upscale_bicubic  # noqa: E402
from napari_emssl.data.normalize import percentile_normalize  # noqa: E402
from napari_emssl.restoration import NORMALIZATION, denormalize  # noqa: E402
from napari_emssl.tasks import superres  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402
from napari_emssl.tasks.restoration import restoration_loss, to_tensor  # noqa: E402


def box_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """``(n_out, n_in)``: row i averages input pixels over ``[i s, (i + 1) s)``, ``s = n_in / n_out`` (fractional overlaps)."""
    s = n_in / n_out
    a = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = i * s, (i + 1) * s
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            a[i, j] = max(0.0, min(hi, j + 1) - max(lo, j)) / s
    return torch.from_numpy(a)


def box_down(x: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    ay, ax = box_matrix(ny, x.shape[-2]).to(x), box_matrix(nx, x.shape[-1]).to(x)
    return torch.einsum("iy,bcyx,jx->bcij", ay, x, ax)


def bicubic_to(x: torch.Tensor, shape) -> torch.Tensor:
    return F.interpolate(x, size=tuple(shape), mode="bicubic", align_corners=False)


def pairs_at_factors(smin: float, smax: float, rng: np.random.Generator):
    """A stand-in for ``superres.make_superres_loss_fn``: each batch's pairs at a factor drawn from ``[smin, smax]``."""

    def factory(sample, batch_size, device, factor=2, *, paired=False):
        def loss_fn(net):
            x, _ = sample(batch_size)
            high = to_tensor(x, device)
            s = rng.uniform(smin, smax) if smin != smax else smin
            n = max(8, int(round(high.shape[-1] / s)))
            up = bicubic_to(box_down(high, n, n), high.shape[-2:])
            losses = restoration_loss(up + net(up), high)
            losses["bicubic_l1"] = F.l1_loss(up, high).detach()
            return losses

        return loss_fn

    return factory


@torch.no_grad()
def run_net(net: torch.nn.Module, grid: np.ndarray, multiple: int) -> np.ndarray:
    """``grid + net(grid)`` on the whole (normalised) image, padded by reflection to the network's size multiple."""
    h, w = grid.shape
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    x = torch.from_numpy(np.pad(grid, ((0, ph), (0, pw)), mode="reflect"))[None, None]
    return grid + net(x)[0, 0, :h, :w].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="stem_adf", choices=list(IMAGES))
    parser.add_argument("--smin", type=float, required=True, help="smallest pair factor")
    parser.add_argument("--smax", type=float, required=True, help="largest pair factor")
    parser.add_argument("--apply", default="2", help="factors applied in turn, comma-separated, product 2 (default: 2)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--init", default="bundled")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clean = load_clean(args.image)
    low = downscale_area(clean, 2)
    superres.make_superres_loss_fn = pairs_at_factors(args.smin, args.smax, np.random.default_rng(0))
    started = time.perf_counter()
    result = api.finetune(low, config=FinetuneConfig(task="superres", init=args.init, preview_every_s=0, steps=args.steps, seed=0))
    train_seconds = time.perf_counter() - started
    net = result.model.net.eval()
    norm, stats = percentile_normalize(low, NORMALIZATION["low"], NORMALIZATION["high"])  # as the model was trained
    factors = [float(f) for f in args.apply.split(",")]
    grid, total = norm, 1.0
    for i, f in enumerate(factors):
        total *= f
        shape = clean.shape if i == len(factors) - 1 else (round(low.shape[0] * total), round(low.shape[1] * total))
        up = bicubic_to(torch.from_numpy(np.ascontiguousarray(grid))[None, None], shape)[0, 0].numpy()
        grid = run_net(net, up, int(net.size_multiple))
    out = denormalize(grid, stats, "superres")
    scores = restoration_metrics(clean, out, float(np.ptp(clean)))
    bicubic = restoration_metrics(clean, upscale_bicubic(low, 2).astype(np.float32), float(np.ptp(clean)))
    row = {"image": args.image, "smin": args.smin, "smax": args.smax, "apply": factors, "steps": args.steps, "init": args.init,
           "psnr": round(scores["psnr"], 3), "ssim": round(scores["ssim"], 4), "bicubic": round(bicubic["psnr"], 3),
           "gain": round(scores["psnr"] - bicubic["psnr"], 3), "train_s": round(train_seconds, 1),
           "held_out": [args.image] if args.image in HELD_OUT else [],
           "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
           "command": "python benchmarks/superres_pair_factors.py " + shlex.join(sys.argv[1:])}
    print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
