"""Does averaging the class probabilities of neighbouring sections help few-stroke segmentation of the ssTEM stack?

    PYTHONPATH=src python benchmarks/z_consistency.py [--steps N] [--seed 0] [--threads 2]

The network of ``segmentation_strokes.py`` (package defaults, strokes on section 0) predicts
class probabilities for every section 0-19 of the labeled stack; the labels are then taken
from each section's probabilities alone (``none``) or from a weighted mean over the
section and its neighbours along z (``w=(a, b, a)``: weight ``b`` for the section, ``a`` for
each neighbour; at the ends of the stack the missing neighbour's weight is left out; the
package's ``z_neighbour_mean``, what ``emssl predict --z-average a/b`` applies). Dice
for membrane and mitochondria is the mean over sections 1-19 (section 0 was painted; its
prediction is still used as a neighbour of section 1). The stack's sections are 45-50 nm thick
and its pixels 4.6 nm wide, so neighbouring sections differ much more than
neighbouring pixels. Result: ``benchmarks/results/z_consistency_seed<seed>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from segmentation_strokes import BUDGET, TRAIN_SECTION  # noqa: E402
from sstem import CLASS_NAMES, MEMBRANE, MITO, load_section  # noqa: E402

from napari_emssl import __version__, api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.strokes import simulate_strokes  # noqa: E402
from napari_emssl.tasks.segmentation import dice_per_class, probabilities_to_labels, z_neighbour_mean  # noqa: E402

WINDOWS = {"none": 0.0, "w=(1,4,1)": 0.25, "w=(1,2,1)": 0.5, "w=(1,1,1)": 1.0}  # neighbour weight, the slice's is 1


def smooth_z(probs: np.ndarray, weight: float) -> np.ndarray:
    """``(Z, C, Y, X)`` probabilities, each slice averaged with its z neighbours by the package's own rule."""
    depth = probs.shape[0]
    return np.stack([z_neighbour_mean(probs[z], probs[z - 1] if z else None, probs[z + 1] if z + 1 < depth else None, weight)
                     for z in range(depth)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the package default)")
    parser.add_argument("--sections", type=int, default=20, help="sections 0..N-1 of the labeled stack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/z_consistency_seed<seed>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    raw, truth = load_section(TRAIN_SECTION)
    strokes = simulate_strokes(truth, BUDGET, brush_radius=2, stroke_length=60, seed=args.seed)
    sections = [load_section(i) for i in range(args.sections)]
    config = FinetuneConfig(preview_every_s=0, seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    start = time.perf_counter()
    model = api.finetune(raw, strokes, config=config).model
    train_s = time.perf_counter() - start
    stack = np.stack([img for img, _ in sections])
    probs = api.predict(model, stack, PredictConfig(device=config.device, probabilities=True)).probabilities
    probs = np.moveaxis(np.asarray(probs, np.float32), 0, 1)  # api: (K, Z, Y, X) -> (Z, K, Y, X)
    rows = []
    for name, weight in WINDOWS.items():
        labels = np.stack([probabilities_to_labels(p) for p in smooth_z(probs, weight)])
        per = [dice_per_class(labels[z], sections[z][1], [MEMBRANE, MITO]) for z in range(1, len(sections))]
        row = {"window": name, **{CLASS_NAMES[c]: float(np.mean([d[c] for d in per])) for c in (MEMBRANE, MITO)}}
        rows.append(row)
        print(f"{name}: membrane {row['membrane']:.4f}, mitochondria {row['mitochondria']:.4f}")
    result = {
        "benchmark": "z_consistency", "package_version": __version__, "seed": args.seed, "train_seconds": round(train_s, 1),
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "config": config.to_dict(), "test_sections": list(range(1, len(sections))), "rows": rows,
    }
    out = args.out or HERE / "results" / f"z_consistency_seed{args.seed}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
