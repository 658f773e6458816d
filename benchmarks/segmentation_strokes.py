"""Few-stroke segmentation on the ssTEM stack: fine-tuned network vs a random-forest pixel classifier.

    .venv/bin/python benchmarks/segmentation_strokes.py [--steps N] [--arch NAME] [--test-sections 1-19] [--tag NAME]

Strokes covering at most 2 % of the pixels of section 0 (background, membrane, mitochondria,
simulated from the dataset's masks) train both methods; Dice is measured on the other
sections. The random forest is the ilastik approach: scikit-image's
``multiscale_basic_features`` (intensity, edges, texture at sigmas 1-16) + scikit-learn.
Results go to ``benchmarks/results/segmentation_strokes*.json``; ``benchmarks/report.py``
writes docs/benchmarks.md and the plots from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sstem import CLASS_NAMES, MEMBRANE, MITO, load_section  # noqa: E402

from napari_emssl import __version__, api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.strokes import simulate_strokes  # noqa: E402
from napari_emssl.tasks.segmentation import dice_per_class  # noqa: E402

TRAIN_SECTION = 0
BUDGET = {1: 9000, MEMBRANE: 6000, MITO: 5000}  # 20,000 px = 1.9 % of a 1024 x 1024 section


def parse_sections(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def rf_features(image: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    features = partial(multiscale_basic_features, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)
    return features(image.astype(np.float32) / 255.0)


def run_random_forest(train_img, strokes, tests) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    start = time.perf_counter()
    feats = rf_features(train_img)
    painted = strokes > 0
    clf = RandomForestClassifier(n_estimators=100, max_depth=None, min_samples_leaf=1, n_jobs=-1, random_state=0)
    clf.fit(feats[painted], strokes[painted])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    preds = []
    for img, _ in tests:
        f = rf_features(img)
        preds.append(clf.predict(f.reshape(-1, f.shape[-1])).reshape(img.shape).astype(np.uint8))
    predict_s = (time.perf_counter() - start) / len(tests)
    return {"train_seconds": train_s, "predict_seconds_per_section": predict_s, "predictions": preds}


def run_network(train_img, strokes, tests, config: FinetuneConfig) -> dict:
    losses = []
    start = time.perf_counter()
    last = api.run_to_end(api.iter_finetune(train_img, strokes, config),
                          lambda e: losses.append(e.losses["loss"]) if hasattr(e, "losses") else None)
    train_s = time.perf_counter() - start
    model = last.result.model
    start = time.perf_counter()
    stack = np.stack([img for img, _ in tests])
    labels = api.predict(model, stack, PredictConfig(device=config.device)).labels
    predict_s = (time.perf_counter() - start) / len(tests)
    return {"train_seconds": train_s, "predict_seconds_per_section": predict_s, "predictions": list(labels),
            "loss_curve": losses, "steps": last.result.steps}


def score(preds, tests) -> dict:
    per = [dice_per_class(p, t, [MEMBRANE, MITO]) for p, (_, t) in zip(preds, tests)]
    return {CLASS_NAMES[c]: float(np.mean([d[c] for d in per])) for c in (MEMBRANE, MITO)} | {
        f"{CLASS_NAMES[c]}_per_section": [round(d[c], 4) for d in per] for c in (MEMBRANE, MITO)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the package default)")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--arch-kwargs", default="{}")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--init", default=None, help="bundled (the default), random, or a model / pretrain folder")
    parser.add_argument("--test-sections", default="1-19")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rf", action="store_true")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--save-predictions", action="store_true", help="keep section 1 predictions for the figure")
    args = parser.parse_args()

    raw, truth = load_section(TRAIN_SECTION)
    strokes = simulate_strokes(truth, BUDGET, brush_radius=2, stroke_length=60, seed=args.seed)
    tests = [load_section(i) for i in parse_sections(args.test_sections)]
    overrides = {k: v for k, v in {"steps": args.steps, "arch": args.arch, "lr": args.lr, "batch_size": args.batch_size,
                                   "patch_size": args.patch_size, "init": args.init}.items() if v is not None}
    config = FinetuneConfig(preview_every_s=0, seed=args.seed, arch_kwargs=json.loads(args.arch_kwargs), **overrides)
    result = {
        "benchmark": "segmentation_strokes", "tag": args.tag, "package_version": __version__,
        "device": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads",
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "train_section": TRAIN_SECTION, "test_sections": parse_sections(args.test_sections),
        "painted_fraction": float((strokes > 0).mean()),
        "painted_pixels": {CLASS_NAMES[c]: int((strokes == c).sum()) for c in BUDGET},
        "config": config.to_dict(), "methods": {},
    }
    print(f"painted {result['painted_fraction']:.2%} of section {TRAIN_SECTION}")
    runs = {"network": lambda: run_network(raw, strokes, tests, config)}
    if not args.no_rf:
        runs["random_forest"] = lambda: run_random_forest(raw, strokes, tests)
    for name, fn in runs.items():
        out = fn()
        preds = out.pop("predictions")
        out.update(score(preds, tests))
        result["methods"][name] = out
        print(f"{name}: membrane Dice {out['membrane']:.3f}, mitochondria Dice {out['mitochondria']:.3f}, "
              f"train {out['train_seconds']:.0f} s, predict {out['predict_seconds_per_section']:.1f} s/section")
        if args.save_predictions:
            np.save(HERE / "results" / f"pred_{args.tag}_{name}.npy", preds[0])
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / f"segmentation_strokes_{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
