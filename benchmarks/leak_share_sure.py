"""Choosing the leak-correction share per image with Stein's unbiased risk estimate: the package's "auto" share.

    EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src .venv/bin/python benchmarks/leak_share_sure.py \\
        --images stem_detector sem_nanowires --seed 0 --model /tmp/m --out /tmp/leak_share_sure_seed0.json

Needs networks saved by ``leak_correction.py --save-model DIR`` (``DIR/<image>_<seed>``). For
each image it predicts as ``emssl predict`` does (8 views, then the leak correction with the
one-view own-pixel weight ``J``, then the mean correction) for a grid of shares ``f``, and with
the share ``--leak-correction auto`` chooses (``tasks/denoise.py``: ``noise_variance`` from the
noisy image alone, ``sure_leak_share`` clipped to [0, 0.75]). For reference, SURE with the true
noise variance (a user never has it), unclipped. Rows: PSNR per share of the grid, the auto
share and its PSNR, the same from ``api.predict`` with the model's ``leak_correction`` set to
"auto" (a check that the package gives what this script computes), the true-variance share and
its PSNR, and the ratio of the estimated mean noise variance to the true one.
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
from leak_correction import bare_denoiser  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import LEAK_AUTO, PredictConfig  # noqa: E402
from napari_emssl.data.normalize import percentile_normalize  # noqa: E402
from napari_emssl.engine.model_dir import TrainedModel, load_model  # noqa: E402
from napari_emssl.tasks import denoise  # noqa: E402

GRID = tuple(np.round(np.arange(0.0, 1.001, 0.125), 3))


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
        bare = bare_denoiser(model)
        probing, probe = denoise.probed_input(norm)
        one = PredictConfig(device="cpu", tta=False)
        plain, probed = api.predict(bare, norm, one).image, api.predict(bare, probing, one).image
        restored = api.predict(bare, norm, PredictConfig(device="cpu", tta=True)).image
        weight = denoise.own_pixel_weight(plain, probed, probe)
        sigma = float(model.meta.get("mean_correction", 16.0))

        def psnr(image: np.ndarray) -> float:
            return round(float(10 * np.log10(np.ptp(clean) ** 2 / np.mean((image.astype(np.float64) - clean) ** 2))), 3)

        def corrected(share: float) -> float:
            out = denoise.leak_correction(restored, norm, weight, share)
            return psnr(denoise.mean_correction(out, norm, sigma) * scale + stats.p_low)

        auto, share = denoise.correct_leak(restored, norm, plain, probed, probe, LEAK_AUTO)
        predicted = api.predict(TrainedModel(net=model.net, meta={**model.meta, "leak_correction": LEAK_AUTO}), noisy,
                                PredictConfig(device="cpu", tta=True))
        level = (restored - weight * norm) / (1.0 - weight)
        estimated = denoise.noise_variance(norm, level)
        true = (np.clip(clean, 0, None) / bench.DOSE + bench.READ**2) / scale**2
        true_share = denoise.sure_leak_share(restored, norm, weight, denoise.probe_response(plain, probed, probe), true,
                                             upper=1.0)
        grid = {f"{f:g}": corrected(float(f)) for f in GRID}
        row = {"image": name, "seed": args.seed, "weight": round(float(weight.mean()), 4), "psnr": grid,
               "auto": {"share": round(share, 3), "psnr": psnr(denoise.mean_correction(auto, norm, sigma) * scale + stats.p_low)},
               "predict": {"share": predicted.info["leak_shares"][0], "psnr": psnr(predicted.image)},
               "true": {"share": round(true_share, 3), "psnr": corrected(true_share)},
               "variance_ratio": round(float(np.mean(estimated) / np.mean(true)), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"task": "leak_share_auto", "seed": args.seed, "rows": rows,
                                    "command": "python benchmarks/leak_share_sure.py " + " ".join(sys.argv[1:])}, indent=1) + "\n")


if __name__ == "__main__":
    main()
