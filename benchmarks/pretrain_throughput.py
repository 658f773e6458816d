"""Pretraining throughput (images/s) of each method x architecture, and the fraction of the device's peak used.

    EMSSL_DATA=../shared/data PYTHONPATH=src python benchmarks/pretrain_throughput.py --device cuda --steps 80
    .venv/bin/python benchmarks/pretrain_throughput.py --device cpu --steps 12 --batch-size 8

Each configuration runs ``emssl pretrain`` alone (one process, nothing else on the device)
for ``--steps`` steps on the unlabeled corpus; images/s comes from the run's own log
(``log.csv``), skipping the first ``--warmup`` steps. FLOPs per image are counted with
``torch.utils.flop_counter.FlopCounterMode`` over one whole training step (every phase,
forward and backward) of the same pretext at the same patch size; achieved FLOP/s =
FLOPs per image x images/s. On CUDA the fraction of peak uses the dense bf16 peak of the
device (``--peak-tflops``, default 989 for an H100 SXM). Results are appended to
``benchmarks/results/pretrain_throughput.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from train_bundled import SPECS, corpus_paths  # noqa: E402

from napari_emssl.pretext import create_pretext  # noqa: E402


def flops_per_image(method: str, arch: str, patch: int) -> float:
    """FLOPs of one training step (all phases, forward + backward) per image, counted on CPU."""
    torch.manual_seed(0)
    pretext = create_pretext(method, arch)
    pretext.train()
    batch = torch.rand(2, 1, patch, patch)
    total = 0
    for phase in pretext.phases:
        with FlopCounterMode(display=False) as counter:
            losses = pretext(batch, phase)
            losses["loss"].backward()
        total += counter.get_total_flops()
        pretext.zero_grad(set_to_none=True)
    return total / batch.shape[0]


def run_one(name: str, method: str, arch: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "napari_emssl.cli", "pretrain", "--method", method, "--arch", arch,
            "--data", *corpus_paths(), "--out", tmp, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--patch", str(args.patch), "--device", args.device,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"name": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        rows = [r for r in csv.DictReader(open(Path(tmp) / "log.csv")) if r.get("seconds")]
    first, last = rows[min(args.warmup, len(rows) - 2)], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    seconds = float(last["seconds"]) - float(first["seconds"])
    return {"name": name, "method": method, "arch": arch, "images_per_s": steps * args.batch_size / seconds, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    out = HERE / "results" / "pretrain_throughput.json"
    results = json.loads(out.read_text()) if out.exists() else []
    for name, method, arch in SPECS:
        if args.only and name not in args.only:
            continue
        r = run_one(name, method, arch, args)
        if "error" not in r:
            r["flops_per_image"] = flops_per_image(method, arch, args.patch)
            r["achieved_tflops"] = r["flops_per_image"] * r["images_per_s"] / 1e12
            if args.device == "cuda":
                r["fraction_of_peak"] = r["achieved_tflops"] / args.peak_tflops
        r.update(device=args.device, device_name=device_name, batch_size=args.batch_size, patch=args.patch,
                 torch=torch.__version__, cpu_threads=torch.get_num_threads(), command=" ".join(sys.argv))
        print(json.dumps(r), flush=True)
        results.append(r)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
