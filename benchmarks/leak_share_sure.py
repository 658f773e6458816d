"""The leak-correction share chosen per image by Stein's unbiased risk estimate: the package's "auto" share.

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/leak_share_sure.py \\
        --images stem_detector sem_nanowires --seed 0 --model /tmp/m --out /tmp/leak_share_auto_seed0.json

Needs networks saved by ``leak_correction.py --save-model DIR`` (``DIR/<image>_<seed>``). Each
image is restored by ``api.predict`` exactly as ``emssl predict`` does (8 views, the leak
correction, the mean correction) with the model's share set to "auto" (``tasks/denoise.py``:
``noise_variance`` from the noisy image alone, ``sure_leak_share`` clipped to [0, 0.75]); the
planes the leak correction receives there (the views' average, the first view, the probe pass, in
the prediction's normalised units) are kept and corrected again with every share of a grid, and
with the share SURE picks given the true noise variance (a user never has it; unclipped). Rows:
PSNR per share, the auto share and the PSNR of the prediction, the true-variance share and its
PSNR, the ratio of the estimated mean noise variance to the true one, and the auto share and PSNR
of one view (``--no-tta``) and of the two views a stack gets by default (the image as a one-slice stack).
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

from napari_emssl import api, prediction  # noqa: E402
from napari_emssl.config import LEAK_AUTO, PredictConfig  # noqa: E402
from napari_emssl.engine.model_dir import TrainedModel, load_model  # noqa: E402
from napari_emssl.restoration import denormalize  # noqa: E402
from napari_emssl.tasks import denoise  # noqa: E402

GRID = tuple(np.round(np.arange(0.0, 1.001, 0.125), 3))


def predict_keeping_planes(model: TrainedModel, noisy: np.ndarray):
    """``api.predict`` with the leak share "auto" (8 views); also what its leak correction received."""
    kept = {}
    correct = prediction.correct_leak

    def keep(restored, plane, plain, probed, probe, share):
        kept.update(restored=restored, plane=plane, plain=plain, probed=probed, probe=probe)
        return correct(restored, plane, plain, probed, probe, share)

    prediction.correct_leak = keep
    try:
        result = api.predict(TrainedModel(net=model.net, meta={**model.meta, "leak_correction": LEAK_AUTO}), noisy,
                             PredictConfig(device="cpu", tta=True))
    finally:
        prediction.correct_leak = correct
    return result, kept


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
        result, kept = predict_keeping_planes(model, noisy)
        normalization = model.meta.get("normalization") or prediction.NORMALIZATION
        stats = prediction.source_stats(noisy, float(normalization["low"]), float(normalization["high"]))
        scale = stats.p_high - stats.p_low
        restored, plane = kept["restored"], kept["plane"]
        weight = denoise.own_pixel_weight(kept["plain"], kept["probed"], kept["probe"])
        sigma = float(model.meta.get("mean_correction", 0.0))

        def psnr(image: np.ndarray) -> float:
            return round(float(10 * np.log10(np.ptp(clean) ** 2 / np.mean((image.astype(np.float64) - clean) ** 2))), 3)

        def corrected(share: float) -> float:
            out = denoise.leak_correction(restored, plane, weight, share)
            return psnr(denormalize(denoise.mean_correction(out, plane, sigma), stats, "denoise"))

        level = (restored - weight * plane) / (1.0 - weight)
        estimated = denoise.noise_variance(plane, level)
        true = (np.clip(clean, 0, None) / bench.DOSE + bench.READ**2) / scale**2
        true_share = denoise.sure_leak_share(restored, plane, weight,
                                             denoise.probe_response(kept["plain"], kept["probed"], kept["probe"]), true,
                                             upper=1.0)
        share = result.info["leak_shares"][0]
        auto_model = TrainedModel(net=model.net, meta={**model.meta, "leak_correction": LEAK_AUTO})
        fewer = {"one": api.predict(auto_model, noisy, PredictConfig(device="cpu", tta=False)),
                 "stack": api.predict(auto_model, noisy[None], PredictConfig(device="cpu"))}  # a stack's default: 2 views
        row = {"image": name, "seed": args.seed, "weight": round(float(weight.mean()), 4),
               "psnr": {f"{f:g}": corrected(float(f)) for f in GRID},
               "auto": {"share": share, "psnr": psnr(result.image), "recomputed": corrected(share)},
               "true": {"share": round(true_share, 3), "psnr": corrected(true_share)},
               **{key: {"share": r.info["leak_shares"][0], "psnr": psnr(r.image.reshape(clean.shape))} for key, r in fewer.items()},
               "variance_ratio": round(float(np.mean(estimated) / np.mean(true)), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"task": "leak_share_auto", "seed": args.seed, "rows": rows,
                                    "command": "python benchmarks/leak_share_sure.py " + " ".join(sys.argv[1:])}, indent=1) + "\n")


if __name__ == "__main__":
    main()
