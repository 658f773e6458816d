"""Measured sweep of the fine-tuning defaults: one factor at a time around the current default.

On the GPU machine (NVIDIA H100, 16 cores, a 9-minute wall-clock limit), from the repository root:

    EMSSL_DATA=/path/to/data PYTHONPATH=src python benchmarks/sweep_defaults.py \\
        --device cuda --workers 8 --test-sections 1-19:2 --time-budget 360 --hard-limit 510

A second identical call continues where the first stopped (runs already in the results
file are skipped). Quick CPU check (one tiny run):

    PYTHONPATH=src python benchmarks/sweep_defaults.py --device cpu --workers 1 --only steps \\
        --steps-list 20 --seeds 0 --test-sections 1 --out /tmp/sweep_smoke.json

The task is the one of ``segmentation_strokes.py``: strokes covering at most 2 % of the
pixels of ssTEM section 0 (background, membrane, mitochondria; fixed, stroke seed 0) train
a network from random initialisation; Dice for membrane and mitochondria is the mean over
the test sections. Around the default (resunet_b3_rf96, 600 steps, lr 2e-3, patch 128,
batch 8, dice_weight 1) one factor changes at a time:

    arch         resunet_b2_rf44 resunet_b2_rf84 resunet_b3_rf96 resunet_b3_rf176 resunet_b4_rf200
                 unet_resnet18 hrnet_w18_small
    steps        150 300 600 1200
    lr           5e-4 1e-3 2e-3 5e-3
    patch_size   96 128 192 256
    dice_weight  0 1
    batch_size   4 8 16

The default configuration itself is run once per seed and belongs to every factor. Seeds
change the network initialisation and the patch sampling. Jobs run seed 0 first (every
factor), then seed 1, then seed 2; inside a seed the most expensive first (so that no long
run straggles at the end). Results are appended to ``benchmarks/results/sweep_defaults.json``
as each run finishes; ``benchmarks/report.py`` turns them into docs/benchmarks.md
("Choice of fine-tuning defaults") and ``docs/images/sweep_defaults.png``.

Train seconds are measured with ``--workers`` runs sharing the device, so they are
comparable between configurations of one sweep, not with a run alone on the device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from parallel_runs import add_common_options, parse_seeds, run_jobs  # noqa: E402

BENCHMARK = "sweep_defaults"
# The centre of the sweep: the package defaults when the sweep was written (FinetuneConfig,
# DEFAULT_SEGMENT_ARCH). Kept fixed here so that results stay comparable if the defaults move.
BASE = {"arch": "resunet_b3_rf96", "steps": 600, "lr": 2e-3, "patch_size": 128, "batch_size": 8, "dice_weight": 1.0}
FACTORS = {
    "arch": ["resunet_b2_rf44", "resunet_b2_rf84", "resunet_b3_rf96", "resunet_b3_rf176", "resunet_b4_rf200",
             "unet_resnet18", "hrnet_w18_small"],
    "steps": [150, 300, 600, 1200],
    "lr": [5e-4, 1e-3, 2e-3, 5e-3],
    "patch_size": [96, 128, 192, 256],
    "dice_weight": [0.0, 1.0],
    "batch_size": [4, 8, 16],
}
# Rough relative cost of a training step (measured on CPU, baseline = 1), only used to order
# the jobs and to guess durations before any run of an architecture has finished.
ARCH_COST = {"resunet_b2_rf44": 0.6, "resunet_b2_rf84": 0.8, "resunet_b3_rf96": 1.0, "resunet_b3_rf176": 1.3,
             "resunet_b4_rf200": 1.4, "unet_resnet18": 2.0, "hrnet_w18_small": 3.0}


def cost(job: dict) -> float:
    """Relative duration of a run (the default configuration = 1.2: 1 for training, 0.2 for prediction)."""
    p = job["params"]
    train = p["steps"] * p["batch_size"] * p["patch_size"] ** 2 / (BASE["steps"] * BASE["batch_size"] * BASE["patch_size"] ** 2)
    return train * ARCH_COST.get(p["arch"], 2.0) + 0.2


def describe(job: dict) -> str:
    changed = {k: v for k, v in job["params"].items() if v != job["base"][k]}
    return "default" if not changed else ", ".join(f"{k}={v}" for k, v in changed.items())


def build_jobs(factors: dict[str, list], seeds: list[int], init: str, base: dict = BASE) -> list[dict]:
    """Distinct configurations (the default once), seed-major; inside a seed the most expensive first."""
    configs: dict[str, dict] = {}
    for factor, values in factors.items():
        for value in values:
            params = dict(base, **{factor: type(BASE[factor])(value)})
            key = repr(sorted(params.items()))
            configs.setdefault(key, {"params": params, "factors": []})["factors"].append(factor)
    jobs = []
    for seed in seeds:
        batch = [{"benchmark": BENCHMARK, "params": c["params"], "base": base, "factors": c["factors"], "seed": seed, "init": init,
                  "config": dict(c["params"], seed=seed, init=init)} for c in configs.values()]
        jobs += sorted(batch, key=cost, reverse=True)
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_common_options(parser)
    parser.add_argument("--only", action="append", choices=list(FACTORS), help="sweep only this factor (repeatable)")
    for factor in FACTORS:
        if factor != "arch":
            parser.add_argument(f"--{factor.replace('_', '-')}-list", default=None,
                                help=f"comma-separated values of {factor} instead of {FACTORS[factor]}")
    parser.add_argument("--arch-list", default=None, help="comma-separated architectures instead of the seven above")
    parser.add_argument("--base", action="append", default=[], metavar="KEY=VALUE",
                        help="move the centre of the sweep, e.g. --base steps=10 for a quick check (repeatable)")
    parser.add_argument("--init", default="random",
                        help="initialisation of every run: random (default; no bundled weights ship yet) or bundled")
    args = parser.parse_args()

    factors = {f: list(v) for f, v in FACTORS.items() if not args.only or f in args.only}
    for f in factors:
        given = getattr(args, f"{f}_list")
        if given:
            factors[f] = [v.strip() if f == "arch" else type(BASE[f])(float(v)) for v in given.split(",") if v.strip()]
    base = dict(BASE)
    for item in args.base:
        key, _, value = item.partition("=")
        if key not in BASE:
            parser.error(f"--base {item}: the key must be one of {', '.join(BASE)}")
        base[key] = value if key == "arch" else type(BASE[key])(float(value))
    jobs = build_jobs(factors, parse_seeds(args.seeds), args.init, base)
    run_jobs(jobs, args, benchmark=BENCHMARK, cost=cost, describe=describe)


if __name__ == "__main__":
    main()
