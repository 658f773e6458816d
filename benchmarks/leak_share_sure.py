"""Choosing the leak-correction share per image with Stein's unbiased risk estimate (a study; not the package's rule).

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/leak_share_sure.py \\
        --images stem_detector sem_nanowires --seed 0 --model /tmp/m --out /tmp/leak_share_sure_seed0.json

Needs networks saved by ``leak_correction.py --save-model DIR`` (``DIR/<image>_<seed>``). For
each image it predicts as ``emssl predict`` does (8 views, then the leak correction with the
one-view own-pixel weight ``J``, then the mean correction) for a grid of shares ``f``, and
computes the share SURE picks. With ``b`` the neighbours-only estimate (share 1), ``r = noisy
- b`` and ``s2`` the noise variance per pixel, the expected squared error of the share ``f``
is ``sum (1 - (1 - f) J)^2 r^2 + 2 s2 (1 - f) J`` up to a constant, least at
``f* = 1 - sum J (r^2 - s2) / sum J^2 r^2`` (clipped to [0, 1]). ``s2`` is taken

- ``true``: from the clean image and the noise model (a user never has it);
- ``haar``: from the noisy image alone, the median absolute deviation of its finest diagonal
  Haar details in 16 bins of ``b``, fitted as ``a b + c`` (Poisson-Gaussian).

``f*`` moves by about (relative error of ``s2``) / ``J`` and ``J`` is 0.04-0.2 here, so the
noise level must be known to a few per cent. Rows: PSNR per share of the grid, ``f*`` of each
estimate and its PSNR, the same clamped to [0.25, 0.75], and the ratio of each ``s2`` to the true one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restoration as bench  # noqa: E402
from leak_correction import bare_denoiser, own_weight_map  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import PredictConfig  # noqa: E402
from napari_emssl.data.normalize import percentile_normalize  # noqa: E402
from napari_emssl.engine.model_dir import load_model  # noqa: E402
from napari_emssl.tasks import denoise  # noqa: E402

GRID = tuple(np.round(np.arange(0.0, 1.001, 0.125), 3))
CLAMP = (0.25, 0.75)


def sure_share(noisy: np.ndarray, restored: np.ndarray, weight: np.ndarray, variance: np.ndarray) -> float:
    """The share SURE picks (see the module docstring), clipped to [0, 1]; normalised units."""
    b = (restored - weight * noisy) / (1.0 - weight)
    r2 = (noisy - b) ** 2
    keep = float(np.sum(weight * (r2 - variance)) / np.sum(weight**2 * r2))
    return float(np.clip(1.0 - keep, 0.0, 1.0))


def haar_variance(noisy: np.ndarray, level: np.ndarray, bins: int = 16) -> np.ndarray:
    """Noise variance per pixel from the noisy image alone: MAD of the finest diagonal Haar details vs ``level``."""
    ny, nx = (s // 2 * 2 for s in noisy.shape)
    q = noisy[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).astype(np.float64)
    detail = (q[:, 0, :, 0] - q[:, 0, :, 1] - q[:, 1, :, 0] + q[:, 1, :, 1]) / 2.0
    mean = level[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3))
    edges = np.quantile(mean, np.linspace(0.0, 1.0, bins + 1))
    xs, vs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        d = detail[(mean >= lo) & (mean <= hi)]
        if d.size >= 50:
            xs.append(float(mean[(mean >= lo) & (mean <= hi)].mean()))
            vs.append(float((1.4826 * np.median(np.abs(d - np.median(d)))) ** 2))
    a, c = np.linalg.lstsq(np.stack([np.array(xs), np.ones(len(xs))], axis=1), np.array(vs), rcond=None)[0]
    return np.maximum(a * level + c, 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.image_arguments(parser)
    parser.add_argument("--model", type=Path, required=True, help="DIR/<image>_<seed> saved by leak_correction.py --save-model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.images:
        clean, noisy = bench.noisy_image(name, args.seed)
        model = load_model(args.model / f"{name}_{args.seed}")
        norm, stats = percentile_normalize(noisy, 1.0, 99.8)
        scale = stats.p_high - stats.p_low
        weight = own_weight_map(model, norm)
        restored = api.predict(bare_denoiser(model), norm, PredictConfig(device="cpu", tta=True)).image
        sigma = float(model.meta.get("mean_correction", 16.0))

        def psnr(share: float) -> float:
            out = denoise.leak_correction(restored, norm, weight, share)
            out = denoise.mean_correction(out, norm, sigma) * scale + stats.p_low
            return round(float(10 * np.log10(np.ptp(clean) ** 2 / np.mean((out.astype(np.float64) - clean) ** 2))), 3)

        b = (restored - weight * norm) / (1.0 - weight)
        variances = {"true": (np.clip(clean, 0, None) / bench.DOSE + bench.READ**2) / scale**2,
                     "haar": haar_variance(norm, b)}
        row = {"image": name, "seed": args.seed, "weight": round(float(weight.mean()), 4),
               "psnr": {f"{f:g}": psnr(float(f)) for f in GRID}}
        for key, variance in variances.items():
            share = sure_share(norm, restored, weight, variance)
            clamped = min(max(share, CLAMP[0]), CLAMP[1])
            row[key] = {"share": round(share, 3), "psnr": psnr(share), "clamped_share": round(clamped, 3),
                        "clamped_psnr": psnr(clamped),
                        "variance_ratio": round(float(np.mean(variance) / np.mean(variances["true"])), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"task": "leak_share_sure", "seed": args.seed, "rows": rows,
                                    "command": "python benchmarks/leak_share_sure.py " + " ".join(sys.argv[1:])}, indent=1) + "\n")


if __name__ == "__main__":
    main()
