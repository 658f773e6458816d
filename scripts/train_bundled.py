"""Train the bundled pretrained weights (all runs at once on one GPU) and package them into the zoo.

    EMSSL_DATA=../shared/data PYTHONPATH=src python scripts/train_bundled.py --budget-s 420 --out runs/bundled
    PYTHONPATH=src python scripts/package_bundled.py runs/bundled

Without a GPU (``--device cpu --sequential``) the runs go one after another, each alone on
the CPU with its own budget (``--budget NAME=SECONDS``, else ``--budget-s``), calibrated
just before it starts:

    EMSSL_DATA=../shared/data PYTHONPATH=src python scripts/train_bundled.py --device cpu --sequential \
        --batch-size 16 --only gan_resunet_b3_rf96 --budget gan_resunet_b3_rf96=1100 --out runs/bundled

Corpus: every unlabeled image in the data folder (see CORPUS). The labeled ssTEM stack1 is
left out on purpose: it is the test set of the transfer benchmark, and pretraining on its
sections would let the pretrained models see the test images.

The runs share one GPU and a wall-clock budget. A short calibration run of every spec, all
at the same time (so under the same contention as the real runs), measures steps per
second; each real run then gets the number of steps that fits the budget, so its learning
rate schedule completes. The command line, the calibration and the step counts are stored
in ``<out>/plan.json`` and end up in each model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("EMSSL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CORPUS = [  # (relative path, licence) of every unlabeled image set
    ("drosophila_vnc_sstem/stack2/raw", "CC BY-NC-SA 3.0, Gerhard et al. 2013, doi 10.6084/m9.figshare.856713"),
    ("nanowires_sem/images", "MIT, DeepSEM project"),
    ("aquami_sem/Sample.tif", "MIT, aquami (J. Stuckner)"),
    ("stem_atomic", "GPL-3, atomap"),
]
# name, method, arch: the bundled set (gan on the two CNN families, one ViT encoder per other
# method) plus the CNN variants of mae/mocov3 that the transfer benchmark compares.
SPECS = [
    ("gan_resunet_b3_rf96", "gan", "resunet_b3_rf96"),
    ("gan_hrnet_w18_small", "gan", "hrnet_w18_small"),
    ("mae_vit_tiny_p16", "mae", "vit_tiny_p16"),
    ("mff_vit_tiny_p16", "mff", "vit_tiny_p16"),
    ("mocov3_vit_tiny_p16", "mocov3", "vit_tiny_p16"),
    ("mae_resunet_b3_rf96", "mae", "resunet_b3_rf96"),
    ("mocov3_resunet_b3_rf96", "mocov3", "resunet_b3_rf96"),
    ("mae_hrnet_w18_small", "mae", "hrnet_w18_small"),
    ("mocov3_hrnet_w18_small", "mocov3", "hrnet_w18_small"),
]


def corpus_paths() -> list[str]:
    paths = [str(DATA / rel) for rel, _ in CORPUS]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        sys.exit(f"missing corpus paths (set EMSSL_DATA): {missing}")
    return paths


def command(method: str, arch: str, out: Path, steps: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "napari_emssl.cli", "pretrain", "--method", method, "--arch", arch,
        "--data", *corpus_paths(), "--out", str(out), "--steps", str(steps),
        "--batch-size", str(args.batch_size), "--patch", str(args.patch), "--device", args.device,
        "--seed", str(args.seed),
    ]


def launch(jobs: dict[str, list[str]], logs: Path, limit_s: float) -> dict[str, int]:
    """Start every command at once; Ctrl-C (SIGINT: the run saves what it has) any still going at ``limit_s``."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in jobs.items():
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    start = time.monotonic()
    while any(p.poll() is None for p, _ in procs.values()):
        if time.monotonic() - start > limit_s:
            for p, _ in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            time.sleep(20)
            for p, _ in procs.values():
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(2)
    codes = {}
    for name, (p, log) in procs.items():
        codes[name] = p.wait()
        log.close()
    return codes


def steps_per_second(run_dir: Path, skip: int = 10) -> float:
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    rows = [r for r in rows if r.get("seconds")]
    first, last = rows[min(skip, len(rows) - 2)], rows[-1]
    return (int(last["step"]) - int(first["step"])) / max(1e-6, float(last["seconds"]) - float(first["seconds"]))


def _update_plan(path: Path, **changes) -> dict:
    """Merge ``changes`` into ``plan.json`` (runs of several calls share one plan)."""
    plan = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(plan.get(key), dict):
            plan[key].update(value)
        else:
            plan[key] = value
    path.write_text(json.dumps(plan, indent=2))
    return plan


def sequential(specs: list[tuple[str, str, str]], args: argparse.Namespace) -> None:
    """Each spec alone: calibrate ``--calibrate-steps`` steps, then train for its budget."""
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        budgets[name] = float(seconds)
    plan_path = args.out / "plan.json"
    _update_plan(plan_path, batch_size=args.batch_size, patch=args.patch, device=args.device,
                 corpus=[{"path": p, "licence": lic} for p, lic in CORPUS])
    for name, method, arch in specs:
        budget = budgets.get(name, args.budget_s)
        calib = args.out / "_calibration" / name
        codes = launch({name: command(method, arch, calib, args.calibrate_steps, args)}, args.out / "_calibration" / "logs", 600)
        try:
            rate = steps_per_second(calib, skip=1)
        except (OSError, ValueError, IndexError, KeyError) as exc:
            print(f"{name}: calibration failed (exit {codes[name]}): {exc}", flush=True)
            continue
        steps = max(50, int(0.9 * rate * budget))
        cmd = command(method, arch, args.out / name, steps, args)
        print(f"{name}: {rate:.2f} steps/s alone -> {steps} steps in {budget:.0f} s", flush=True)
        t0 = time.monotonic()
        codes = launch({name: cmd}, args.out / "logs", budget * 1.3 + 60)
        _update_plan(plan_path, drivers={name: " ".join(["scripts/train_bundled.py", *sys.argv[1:]])},
                     calibration_steps_per_s={name: rate}, steps={name: steps},
                     budgets_s={name: budget}, commands={name: " ".join(cmd)}, exit_codes={name: codes[name]},
                     wall_s={name: time.monotonic() - t0})
        print(f"{name}: exit {codes[name]} after {time.monotonic() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bundled"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock seconds for the real runs")
    parser.add_argument("--calibrate-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="names of SPECS to train (default: all)")
    parser.add_argument("--sequential", action="store_true",
                        help="one run after another, each calibrated and trained alone (for a CPU)")
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS",
                        help="with --sequential: this run's budget (default --budget-s)")
    args = parser.parse_args()
    specs = [s for s in SPECS if not args.only or s[0] in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sequential:
        sequential(specs, args)
        return

    calib = args.out / "_calibration"
    t0 = time.monotonic()
    codes = launch({n: command(m, a, calib / n, args.calibrate_steps, args) for n, m, a in specs}, calib / "logs", 240)
    rates = {}
    for name, _, _ in specs:
        try:
            rates[name] = steps_per_second(calib / name)
        except (OSError, ValueError, IndexError, KeyError) as exc:
            print(f"{name}: calibration failed (exit {codes[name]}): {exc}", flush=True)
    print(f"calibration took {time.monotonic() - t0:.0f} s: " + ", ".join(f"{k} {v:.1f} it/s" for k, v in rates.items()), flush=True)

    steps = {n: max(50, int(0.9 * rates[n] * args.budget_s)) for n, _, _ in specs if n in rates}
    jobs = {n: command(m, a, args.out / n, steps[n], args) for n, m, a in specs if n in steps}
    plan = {
        "command": " ".join(sys.argv), "budget_s": args.budget_s, "batch_size": args.batch_size, "patch": args.patch,
        "calibration_steps_per_s": rates, "steps": steps, "corpus": [{"path": p, "licence": lic} for p, lic in CORPUS],
        "commands": {n: " ".join(c) for n, c in jobs.items()},
    }
    (args.out / "plan.json").write_text(json.dumps(plan, indent=2))
    t0 = time.monotonic()
    codes = launch(jobs, args.out / "logs", args.budget_s + 90)
    plan["exit_codes"], plan["wall_s"] = codes, time.monotonic() - t0
    (args.out / "plan.json").write_text(json.dumps(plan, indent=2))
    print(json.dumps({"exit_codes": codes, "wall_s": plan["wall_s"]}), flush=True)


if __name__ == "__main__":
    main()
