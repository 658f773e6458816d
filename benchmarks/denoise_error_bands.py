"""Where the denoising error is: error energy by spatial band, own-noise leak and bias, ours against BM3D.

Adds the restoration benchmark's noise (``restoration.py``: dose 20, read 0.02, ``--seed``) to
one of its images, denoises it with BM3D (true noise parameters) and with ours (``emssl
finetune --task denoise`` defaults without the leak and mean corrections, ``--leak-correction 0
--mean-correction 0``: the network's
own output; one view and the 8-view average), then reports for each:

- PSNR, and the mean squared error split into spatial bands with Gaussian low-passes of
  sigma 1, 2, 4, 8, 16 px (finer than 1 px, 1-2, 2-4, 4-8, 8-16, coarser than 16);
- the leak: the regression coefficient of the error on the true noise (how much of a pixel's
  own noise is passed through);
- the bias: the mean error over the bright pixels (clean above the median) and the rest;
- ``lowpass_<s>``: PSNR after adding back the Gaussian low-pass (sigma ``s``) of the residual
  (noisy minus denoised), which removes a low-frequency bias because the noise has zero mean.

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/denoise_error_bands.py \\
        --images stem_detector --threads 1 --out benchmarks/results/error_bands_stem_detector.json

``--cache DIR`` keeps the denoised images (``<image>_<seed>.npz``) and reuses them.
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

BANDS = (1, 2, 4, 8, 16)
LOWPASS = (8, 16, 32)


def denoised(name: str, seed: int, cache: Path | None) -> dict[str, np.ndarray]:
    path = cache / f"{name}_{seed}.npz" if cache else None
    if path is not None and path.exists():
        return dict(np.load(path))
    clean, noisy = bench.noisy_image(name, seed)
    out = {"clean": clean, "noisy": noisy, "bm3d": bench.run_bm3d(noisy, bench.DOSE, bench.READ)}
    # the network's own output: the mean correction is what lowpass_<s> measures, so it is off here (the leak
    # correction too: benchmarks/leak_correction.py measures it)
    result = api.finetune(noisy, config=FinetuneConfig(task="denoise", device="cpu", preview_every_s=0, seed=seed,
                                                       mean_correction=0.0, leak_correction=0.0))
    out["ours"] = api.predict(result.model, noisy, PredictConfig(device="cpu", tta=False)).image
    out["ours_tta"] = api.predict(result.model, noisy, PredictConfig(device="cpu", tta=True)).image
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def describe(images: dict[str, np.ndarray], method: str) -> dict:
    clean, noisy, estimate = (images[k].astype(np.float64) for k in ("clean", "noisy", method))
    data_range = float(np.ptp(clean))

    def psnr(x: np.ndarray) -> float:
        return round(float(10 * np.log10(data_range**2 / np.mean((x - clean) ** 2))), 3)

    error, noise = estimate - clean, noisy - clean
    bands, finer = [], error
    for sigma in BANDS:
        coarser = gaussian_filter(error, sigma, mode="reflect")
        bands.append(float(np.mean((finer - coarser) ** 2)))
        finer = coarser
    bands.append(float(np.mean(finer**2)))
    bright = clean > np.median(clean)
    row = {"method": method, "psnr": psnr(estimate), "band_mse_1e6": [round(b * 1e6, 2) for b in bands],
           "leak": round(float((error * noise).sum() / (noise**2).sum()), 4),
           "bias_bright": round(float(error[bright].mean()), 5), "bias_dark": round(float(error[~bright].mean()), 5)}
    for sigma in LOWPASS:
        row[f"lowpass_{sigma}"] = psnr(estimate + gaussian_filter(noisy - estimate, sigma, mode="reflect"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.image_arguments(parser)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.images:
        started = time.perf_counter()
        images = denoised(name, args.seed, args.cache)
        for method in ("bm3d", "ours", "ours_tta"):
            rows.append({"image": name, **describe(images, method)})
            print(json.dumps(rows[-1]), flush=True)
        rows[-1]["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps({
        "task": "error_bands", "seed": args.seed, "bands_px": list(BANDS), "lowpass_px": list(LOWPASS),
        "steps": FinetuneConfig(task="denoise").default_steps,
        "device": bench.device_text(),
        "command": "python benchmarks/denoise_error_bands.py " + shlex.join(sys.argv[1:]), "rows": rows,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
