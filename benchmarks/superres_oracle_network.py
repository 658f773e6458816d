"""How far can a network trained on the answer take x2 super-resolution? A paired oracle, split by halves.

    EMSSL_DATA=../shared/data PYTHONPATH=src python benchmarks/superres_oracle_network.py \\
        --image sem_aquami --out benchmarks/results/superres_oracle_network_sem_aquami.json

The restoration benchmark's super-resolution task (``restoration.py --task superres``: the
reference area-downscaled by 2, every method restores it from that alone). Here the
package's paired super-resolution (``api.finetune(low, target=reference)``: the same network,
bundled weights, loss and sampler as ``emssl finetune --task superres --target``) learns from
the **top half** of the image with the reference itself as the target, the supervision no
user of the self-supervised mode has, and is scored on the **bottom half** only, which it
never saw (so memorising the reference's noise earns nothing). It bounds what this network
can learn of the mapping from the small image to the reference on that specimen and
microscope. ``_bp``: followed by the back-projection the self-supervised models apply (5
steps, ``superres.back_project``).

Beside it, on the same bottom half: bicubic, the back-projection classic, and ours as ``emssl
finetune --task superres`` gives it (self-supervised on the whole small image, which a user
has, every default). Gains in dB over bicubic on the bottom half; one view and 8-view.
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

from restoration import HELD_OUT, IMAGES, device_text, load_clean, run_back_projection  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.degrade import downscale_area, upscale_bicubic  # noqa: E402
from napari_emssl.tasks.metrics import restoration_metrics  # noqa: E402
from napari_emssl.tasks.superres import back_project  # noqa: E402

FACTOR = 2
BACK_PROJECTION = FinetuneConfig.back_projection  # what self-supervised models apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", choices=list(IMAGES), required=True)
    parser.add_argument("--steps", type=int, default=1200, help="paired training steps (the oracle)")
    parser.add_argument("--skip-ours", action="store_true", help="only the oracle, not the self-supervised training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clean = load_clean(args.image)
    half = clean.shape[0] // (2 * FACTOR)
    clean = clean[: 2 * half * FACTOR, : clean.shape[1] // FACTOR * FACTOR].astype(np.float32)
    low = downscale_area(clean, FACTOR)
    data_range = float(np.ptp(clean))
    ref_bottom = clean[half * FACTOR :]

    def gain(image: np.ndarray, base: float | None = None) -> float:
        score = restoration_metrics(ref_bottom, np.asarray(image, np.float32), data_range)["psnr"]
        return round(score - (base or 0.0), 3)

    bicubic = gain(upscale_bicubic(low, FACTOR)[half * FACTOR :])
    scores = {"bicubic_psnr": bicubic,
              "back_projection": gain(run_back_projection(low, FACTOR)[half * FACTOR :], bicubic)}
    seconds = {}

    def score_model(name: str, model, image: np.ndarray, rows: slice) -> None:
        for suffix, tta in (("", False), ("_tta", True)):
            out = api.predict(model, image, PredictConfig(device="cpu", tta=tta)).image.astype(np.float32)
            scores[name + suffix] = gain(out[rows], bicubic)
            if not model.meta.get("back_projection"):
                scores[name + suffix + "_bp"] = gain(back_project(out, image, FACTOR, BACK_PROJECTION)[rows], bicubic)

    started = time.perf_counter()
    config = FinetuneConfig(task="superres", device="cpu", preview_every_s=0, seed=args.seed, steps=args.steps)
    oracle = api.finetune(low[:half], target=clean[: half * FACTOR], config=config)
    seconds["oracle_train"] = round(time.perf_counter() - started, 1)
    score_model("oracle_network", oracle.model, low, slice(half * FACTOR, None))
    if not args.skip_ours:
        started = time.perf_counter()
        ours = api.finetune(low, config=FinetuneConfig(task="superres", device="cpu", preview_every_s=0, seed=args.seed))
        seconds["ours_train"] = round(time.perf_counter() - started, 1)
        score_model("ours", ours.model, low, slice(half * FACTOR, None))
    row = {"image": args.image, "held_out": args.image in HELD_OUT, "oracle_steps": oracle.steps,
           "gain_db": scores, "seconds": seconds, "bottom_half_rows": [half * FACTOR, clean.shape[0]],
           "device": device_text(),
           "command": "python benchmarks/superres_oracle_network.py " + shlex.join(sys.argv[1:])}
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
