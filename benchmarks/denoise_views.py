"""Which views to average when denoising: one view, pixel shifts, mirrors, the 8 flips/rotations.

Adds the restoration benchmark's noise (``restoration.py``: dose 20, read 0.02, ``--seed``) to
one of its images, fine-tunes ours once (``emssl finetune --task denoise`` defaults) and BM3D
(true noise parameters), then predicts with that one network as ``emssl predict`` does (leak
and mean corrections at the model's defaults) and averages, per pixel, the predictions for:

- ``one``: the image itself (``--no-tta``);
- ``one_shift11``: the image and the image shifted by one pixel down and right (2 passes);
- ``one_shifts``: the image shifted by 0 or 1 pixel in y and in x (4 passes);
- ``one_mirror``: the image and its left-right mirror (2 passes), each corrected, then averaged;
- ``stack_default``: what ``emssl predict`` gives a stack by default (the image as a one-slice stack: the
  image and its mirror averaged, then corrected once);
- ``tta``: the 8 flips/rotations (the default for a single 2D image);
- ``tta_shifts``: the 8 flips/rotations of each of the 4 shifts above (32 passes).

A shifted input is the image with one mirrored row (column) added on top (left); the output is
cropped back. Also records the period-2 part of each error: the error times ``(-1)**(x+y)``,
``(-1)**y`` and ``(-1)**x``, Gaussian low-passed (sigma 2 px) and modulated back, as a mean
square (x 1e-6): the error at the Nyquist frequencies, where a 2x2 stride-2 transposed
convolution leaves its pattern. ``--crop N`` scores the top-left N x N pixels only (odd N: the
flips no longer swap the pattern's phase).

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/denoise_views.py \\
        --images stem_detector --threads 1 --out benchmarks/results/denoise_views_stem_detector.json

``--save-model DIR`` / ``--model DIR`` as in ``leak_correction.py`` (the same command trains the
same network there and here: training is deterministic at a fixed thread count).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restoration as bench  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.engine.model_dir import TrainedModel  # noqa: E402
from napari_emssl.restoration import DIHEDRAL, _dihedral, _dihedral_inverse  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402

SHIFTS = ((0, 0), (1, 0), (0, 1), (1, 1))
PATTERN_SIGMA = 2.0


def predicted(model: TrainedModel, image: np.ndarray, shift: tuple[int, int] = (0, 0), view=(0, False),
              tta: bool = False) -> np.ndarray:
    """``emssl predict`` of one view of ``image`` moved by ``shift`` px (mirrored rows/columns added), turned back."""
    k, flip = view
    moved = np.pad(np.ascontiguousarray(_dihedral(image, k, flip)), ((shift[0], 0), (shift[1], 0)), mode="reflect")
    out = api.predict(model, moved, PredictConfig(device="cpu", tta=tta)).image[shift[0]:, shift[1]:]
    return _dihedral_inverse(out, k, flip).astype(np.float32)


def period2_energy(error: np.ndarray) -> dict[str, float]:
    """Mean square (x 1e-6) of the error near each Nyquist frequency: (pi, pi), (pi, 0) and (0, pi)."""
    yy, xx = np.indices(error.shape)
    patterns = {"xy": (-1.0) ** (yy + xx), "y": (-1.0) ** yy, "x": (-1.0) ** xx}
    return {name: round(float(np.mean((gaussian_filter(error * c, PATTERN_SIGMA, mode="reflect") * c) ** 2)) * 1e6, 2)
            for name, c in patterns.items()}


def _without_model(argv: list[str]) -> list[str]:
    """``argv`` without ``--model DIR`` / ``--save-model DIR`` (the recorded command trains the network itself)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--model", "--save-model"):
            skip = True
        elif not a.startswith(("--model=", "--save-model=")):
            out.append(a)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.image_arguments(parser)
    parser.add_argument("--crop", type=int, default=0, help="score the top-left N x N pixels only (0: the whole image)")
    parser.add_argument("--model", type=Path, help="reuse DIR/<image>_<seed> (saved by --save-model) instead of training")
    parser.add_argument("--save-model", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.images:
        clean, noisy = bench.noisy_image(name, args.seed)
        data_range = float(np.ptp(clean))  # of the whole reference, as in restoration.py
        bm3d = bench.run_bm3d(noisy, bench.DOSE, bench.READ)
        whole = noisy  # training always sees the whole image
        if args.crop:
            clean, noisy, bm3d = (a[: args.crop, : args.crop] for a in (clean, noisy, bm3d))
        started = time.perf_counter()
        model = bench.default_denoiser(whole, name, args.seed, args.model, args.save_model)
        train_seconds = round(time.perf_counter() - started, 1)

        def add(method: str, image: np.ndarray, passes: int, seconds: float) -> None:
            s = restoration_metrics(clean, np.asarray(image, np.float32), data_range)
            rows.append({"image": name, "crop": args.crop or None, "method": method, "passes": passes,
                         "psnr": round(s["psnr"], 3), "ssim": round(s["ssim"], 4),
                         "period2_1e6": period2_energy(np.asarray(image, np.float64) - clean),
                         "mse_1e6": round(float(np.mean((np.asarray(image, np.float64) - clean) ** 2)) * 1e6, 2),
                         "train_seconds": train_seconds, "predict_seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)

        add("bm3d", bm3d, 0, 0.0)
        variants = {"one": [((0, 0), (0, False))], "one_shift11": [((0, 0), (0, False)), ((1, 1), (0, False))],
                    "one_shifts": [(s, (0, False)) for s in SHIFTS],
                    "one_mirror": [((0, 0), (0, False)), ((0, 0), DIHEDRAL[4])]}
        for method, views in variants.items():
            started = time.perf_counter()
            out = sum(predicted(model, noisy, shift, view) for shift, view in views) / len(views)
            add(method, out, len(views), time.perf_counter() - started)
        started = time.perf_counter()  # what a stack gets by default (the image as a one-slice stack)
        add("stack_default", api.predict(model, noisy[None], PredictConfig(device="cpu")).image[0],
            PredictConfig().view_count(noisy[None].shape), time.perf_counter() - started)
        started = time.perf_counter()
        add("tta", predicted(model, noisy, tta=True), len(DIHEDRAL), time.perf_counter() - started)
        started = time.perf_counter()
        out = sum(predicted(model, noisy, shift, tta=True) for shift in SHIFTS) / len(SHIFTS)
        add("tta_shifts", out, len(DIHEDRAL) * len(SHIFTS), time.perf_counter() - started)
    args.out.write_text(json.dumps({
        "task": "denoise_views", "seed": args.seed, "crop": args.crop or None,
        "held_out": [k for k in args.images if k in bench.HELD_OUT],
        "steps": FinetuneConfig(task="denoise").default_steps,
        "device": bench.device_text(),
        # with --model the network was saved by an earlier run of the same training: the command without it trains it again
        "reused_model": bool(args.model), "command": "python benchmarks/denoise_views.py " + shlex.join(_without_model(sys.argv[1:])),
        "rows": rows,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
