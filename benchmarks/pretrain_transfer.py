"""Does pretraining help? Fine-tune from random init vs from each pretrained model, at three budgets.

On the GPU machine (NVIDIA H100, 16 cores), from the repository root, with pretrain output
directories made by ``emssl pretrain`` (one per method):

    EMSSL_DATA=/path/to/data PYTHONPATH=src python benchmarks/pretrain_transfer.py \\
        --init mae=runs/pre_mae --init moco=runs/pre_moco --init gan=runs/pre_gan \\
        --device cuda --workers 8 --test-sections 1-19:2 --time-budget 360 --hard-limit 510

Quick CPU check (random init only, one tiny run):

    PYTHONPATH=src python benchmarks/pretrain_transfer.py --device cpu --workers 1 --steps-list 10 \\
        --seeds 0 --test-sections 1 --out /tmp/transfer_smoke.json

The experiment of the source paper on our data. The task is the one of
``segmentation_strokes.py``: strokes covering at most 2 % of the pixels of ssTEM section 0
(fixed, stroke seed 0); Dice for membrane and mitochondria is the mean over the test
sections. Each ``--init NAME=DIR`` names a pretrain output directory; its ``model.json``
gives the architecture (``arch``, ``arch_kwargs``), which the downstream network gets, and
the method (``method``). For every distinct architecture the same network is also trained
from random initialisation. Budgets: 50, 200 and 600 fine-tuning steps (``--steps-list``),
other settings are the package defaults (lr, patch, batch, dice weight). Seeds change the
network's random parts (all of it for random init; the task head otherwise) and the patch
sampling. Jobs run seed 0 first, then 1, then 2.

Results are appended to ``benchmarks/results/pretrain_transfer.json`` as each run finishes
(with the number of tensors copied from the pretrained model); ``benchmarks/report.py``
writes the section "Does pretraining help?" of docs/benchmarks.md and
``docs/images/pretrain_transfer.png`` from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from parallel_runs import add_common_options, parse_seeds, run_jobs  # noqa: E402

BENCHMARK = "pretrain_transfer"
DEFAULT_STEPS = [50, 200, 600]
DEFAULT_ARCH = "resunet_b3_rf96"  # random init only (no --init): the package's default segmentation network


def read_pretrained(name: str, directory: str) -> dict:
    """What a pretrain output directory says about itself: architecture, method, pretraining length."""
    path = Path(directory).expanduser().resolve()
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise SystemExit(f"--init {name}={directory}: no model.json in {path}")
    meta = json.loads(meta_path.read_text())
    lineage = meta.get("lineage") or {}
    pre = lineage.get("pretrain") if isinstance(lineage.get("pretrain"), dict) else {}
    method = meta.get("method") or pre.get("method") or lineage.get("method") or "unknown"
    return {
        "init": name, "init_dir": str(path), "method": str(method), "arch": meta["arch"],
        "arch_kwargs": dict(meta.get("arch_kwargs") or {}),
        "pretrain": {k: pre.get(k) for k in ("steps", "total_steps", "completed", "seconds", "device", "global_batch", "patch")
                     if k in pre},
    }


def _model_arch_kwargs(arch: str, kwargs: dict) -> dict:
    """The registry's defaults completed with ``kwargs`` (as create_model stamps them), so equal nets compare equal."""
    from napari_emssl.models import model_info

    return {**model_info(arch).default_kwargs, **kwargs}


def cost(job: dict) -> float:
    return job["params"]["steps"] / 600 + 0.2


def describe(job: dict) -> str:
    p = job["params"]
    return f"{p['init']} ({job['method']}) {p['arch']} {p['steps']} steps"


def build_jobs(inits: list[dict], steps_list: list[int], seeds: list[int], random_archs: list[str]) -> list[dict]:
    nets: dict[str, dict] = {}  # one random init per distinct (arch, arch_kwargs)
    for arch in random_archs:
        kwargs = _model_arch_kwargs(arch, {})
        nets.setdefault(json.dumps([arch, kwargs], sort_keys=True), {"arch": arch, "arch_kwargs": kwargs})
    for i in inits:
        i["arch_kwargs"] = _model_arch_kwargs(i["arch"], i["arch_kwargs"])
        nets.setdefault(json.dumps([i["arch"], i["arch_kwargs"]], sort_keys=True), {"arch": i["arch"], "arch_kwargs": i["arch_kwargs"]})
    sources = [{"init": "random", "init_dir": None, "method": "random", "pretrain": None, **n} for n in nets.values()] + inits
    jobs = []
    for seed in seeds:
        batch = []
        for src in sources:
            for steps in steps_list:
                params = {"init": src["init"], "method": src["method"], "arch": src["arch"], "arch_kwargs": src["arch_kwargs"],
                          "steps": steps}
                batch.append({
                    "benchmark": BENCHMARK, "params": params, "seed": seed, **{k: src[k] for k in ("init", "init_dir", "method", "arch")},
                    "arch_kwargs": src["arch_kwargs"], "steps": steps, "pretrain": src["pretrain"],
                    "config": {"init": src["init_dir"] or "random", "arch": src["arch"], "arch_kwargs": src["arch_kwargs"],
                               "steps": steps, "seed": seed},
                })
        jobs += sorted(batch, key=cost, reverse=True)
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_common_options(parser)
    parser.add_argument("--init", action="append", default=[], metavar="NAME=DIR",
                        help="a pretrain output directory to fine-tune from (repeatable)")
    parser.add_argument("--steps-list", default=",".join(map(str, DEFAULT_STEPS)), help="fine-tuning budgets in steps")
    parser.add_argument("--random-arch", action="append", default=[],
                        help=f"also train this architecture from random init (default: {DEFAULT_ARCH} when no --init)")
    args = parser.parse_args()

    inits = []
    for item in args.init:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            parser.error(f"--init {item!r}: expected NAME=DIR")
        if name == "random":
            parser.error("--init: the name 'random' is reserved for random initialisation")
        inits.append(read_pretrained(name, directory))
    random_archs = args.random_arch or ([] if inits else [DEFAULT_ARCH])
    steps_list = [int(s) for s in args.steps_list.split(",") if s.strip()]
    jobs = build_jobs(inits, steps_list, parse_seeds(args.seeds), random_archs)
    run_jobs(jobs, args, benchmark=BENCHMARK, cost=cost, describe=describe)


if __name__ == "__main__":
    main()
