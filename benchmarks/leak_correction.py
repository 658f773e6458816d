"""Leak correction of self-supervised denoising: how much of the own-pixel weight to take out after prediction.

Adds the restoration benchmark's noise (``restoration.py``: dose 20, read 0.02, ``--seed``) to
one of its images, denoises it with BM3D (true noise parameters) and fine-tunes ours once
(``emssl finetune --task denoise`` defaults), then predicts with that same network for every
leak-correction share ``--shares`` (0: the network's output), each with the mean correction off
and at its default, one view and the 8-view average, exactly as ``emssl predict`` does (the
settings are the model's ``leak_correction`` and ``mean_correction``). Also records the mean
own-pixel weight the correction measured (``weight``) and, for reference only, the leak seen
against the true noise (the regression coefficient of the error on it; a user never has it).

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/leak_correction.py \\
        --images stem_detector --seed 1 --threads 1 --out benchmarks/results/leak_correction_seed1_stem_detector.json

``--save-model DIR`` writes the fine-tuned model(s) to ``DIR/<image>_<seed>``; ``--model DIR``
reuses a model saved there instead of training (training is deterministic at a fixed thread count).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restoration as bench  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import MEAN_CORRECTION, FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.normalize import percentile_normalize  # noqa: E402
from napari_emssl.engine.model_dir import TrainedModel  # noqa: E402
from napari_emssl.tasks import denoise  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def bare_denoiser(model: TrainedModel) -> TrainedModel:
    """``model`` without its leak and mean corrections: the network's own output."""
    return TrainedModel(net=model.net, meta={**model.meta, "leak_correction": 0.0, "mean_correction": 0.0})


def own_weight_map(model: TrainedModel, norm: np.ndarray) -> np.ndarray:
    """The own-pixel weight per pixel, measured as prediction does it (``norm``: the normalised image; one view)."""
    bare = bare_denoiser(model)
    probing, probe = denoise.probed_input(norm)
    config = PredictConfig(device="cpu", tta=False)
    plain = api.predict(bare, norm, config).image
    probed = api.predict(bare, probing, config).image
    return denoise.own_pixel_weight(plain, probed, probe)


def own_weight(model: TrainedModel, noisy: np.ndarray) -> float:
    """Mean own-pixel weight, measured as prediction does it (normalised units, one view)."""
    return float(own_weight_map(model, percentile_normalize(noisy, 1.0, 99.8)[0]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.image_arguments(parser)
    parser.add_argument("--shares", nargs="+", type=float, default=list(SHARES))
    parser.add_argument("--model", type=Path, help="reuse DIR/<image>_<seed> (saved by --save-model) instead of training")
    parser.add_argument("--save-model", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.images:
        clean, noisy = bench.noisy_image(name, args.seed)
        data_range = float(np.ptp(clean))

        def score(image: np.ndarray) -> dict:
            s = restoration_metrics(clean, np.asarray(image, np.float32), data_range)
            return {"psnr": round(s["psnr"], 3), "ssim": round(s["ssim"], 4)}

        started = time.perf_counter()
        rows.append({"image": name, "method": "bm3d", **score(bench.run_bm3d(noisy, bench.DOSE, bench.READ)),
                     "seconds": round(time.perf_counter() - started, 1)})
        started = time.perf_counter()
        model = bench.default_denoiser(noisy, name, args.seed, args.model, args.save_model)
        train_seconds = round(time.perf_counter() - started, 1)
        weight = own_weight(model, noisy)
        for share in args.shares:
            for mean in (0.0, MEAN_CORRECTION):
                variant = TrainedModel(net=model.net, meta={**model.meta, "leak_correction": share, "mean_correction": mean})
                for tta in (False, True):
                    started = time.perf_counter()
                    out = api.predict(variant, noisy, PredictConfig(device="cpu", tta=tta)).image
                    error, noise = out.astype(np.float64) - clean, noisy.astype(np.float64) - clean
                    rows.append({"image": name, "method": "ours_tta" if tta else "ours", "leak_correction": share,
                                 "mean_correction": mean, **score(out),
                                 "leak": round(float((error * noise).sum() / (noise**2).sum()), 4),
                                 "weight": round(weight, 4), "train_seconds": train_seconds,
                                 "predict_seconds": round(time.perf_counter() - started, 1)})
                    print(json.dumps(rows[-1]), flush=True)
        args.out.write_text(json.dumps({
            "task": "leak_correction", "seed": args.seed, "shares": args.shares, "held_out": [k for k in args.images if k in bench.HELD_OUT],
            "steps": FinetuneConfig(task="denoise").default_steps,
            "device": bench.device_text(),
            "command": "python benchmarks/leak_correction.py " + shlex.join(a for a in sys.argv[1:]), "rows": rows,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
