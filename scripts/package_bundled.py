"""Copy trained pretraining runs into the package's zoo: half-precision safetensors + model cards.

    PYTHONPATH=src python scripts/package_bundled.py runs/bundled --ship gan_resunet_b3_rf96 gan_hrnet_w18_small ...

``--ship`` lists the runs to bundle, in order of preference: ``--init bundled`` takes the
first entry that fits the task and architecture, so put the one that fine-tunes best first
(measured by ``benchmarks/pretrain_transfer.py``). ``--tasks NAME=TASK,TASK`` limits the
tasks an entry is used for (default: all), with ``--task-note NAME=TEXT`` saying why: an
entry that did not beat random initialisation on a task in the benchmark is not used for it. ``--keep-existing``
keeps the zoo entries of shipped names that have no run in the folder (to add or replace one model). The total
size is checked against the 60 MB the package allows for weights.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "src" / "napari_emssl" / "zoo"
sys.path.insert(0, str(ROOT / "benchmarks"))
LIMIT_BYTES = 60 * 1024 * 1024
TASKS = ["segment", "denoise", "bgremove", "superres"]


def final_losses(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader(open(run / "log.csv")))
    tail = rows[-20:]  # mean of the last 20 logged rows: one row is noisy
    keys = [k for k in tail[0] if k not in ("step", "seconds", "images_per_s") and not k.startswith("lr")
            and tail[0][k] not in ("", None)]
    out = {}
    for k in keys:
        try:
            out[k] = sum(float(r[k]) for r in tail) / len(tail)
        except ValueError:
            continue
    return out


def device_name(kind: str) -> str:
    """What ran the training, in words (a CUDA device's name, or the CPU and its core count)."""
    if kind.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def portable(command: str | None) -> str | None:
    """The recorded command with this machine's paths replaced by the names the docs use."""
    if not command:
        return command
    data = os.environ.get("EMSSL_DATA")
    if data:
        command = command.replace(str(Path(data).resolve()), "$EMSSL_DATA").replace(data, "$EMSSL_DATA")
    return command.replace(sys.executable, "python").replace(str(ROOT) + "/", "")


def budget_note(name: str, plan: dict, kind: str) -> str:
    budget = (plan.get("budgets_s") or {}).get(name, plan.get("budget_s"))
    if kind.startswith("cuda"):
        return f"trained on a GPU within a wall-clock budget of {budget} s"
    return (f"trained without a GPU, within a wall-clock budget of {budget} s on the CPU: a short run that makes the "
            "CPU budget count (steps chosen so the learning-rate schedule completes); retrain on a GPU with "
            "scripts/train_bundled.py for stronger weights")


def card(name: str, run: Path, plan: dict, tasks: list[str] | None = None, task_note: str | None = None) -> dict:
    from pretrain_throughput import flops_per_image

    meta = json.loads((run / "model.json").read_text())
    lineage = meta.get("lineage", {}).get("pretrain", {})
    rows = list(csv.DictReader(open(run / "log.csv")))
    batch = int(lineage.get("global_batch") or plan.get("batch_size"))
    patch = int(lineage.get("patch") or plan.get("patch"))
    steps, seconds = int(rows[-1]["step"]), float(rows[-1]["seconds"])
    return {
        "name": name,
        "file": f"{name}.safetensors",
        "arch": meta["arch"],
        "arch_kwargs": meta.get("arch_kwargs", {}),
        "method": meta.get("method") or lineage.get("method"),
        "tasks": tasks or TASKS,
        "task_note": task_note,
        "steps": steps,
        "completed": bool(lineage.get("completed", True)),
        "seconds": seconds,
        "batch_size": batch,
        "patch": patch,
        "patches_per_s": steps * batch / seconds,
        "train_flops_per_patch": flops_per_image(meta.get("method") or lineage.get("method"), meta["arch"], patch),
        "device": device_name(str(lineage.get("device") or plan.get("device") or "cpu")),
        "final_losses": final_losses(run),
        "data": plan.get("corpus"),
        "data_note": "unlabeled images only; the labeled ssTEM stack1 (the benchmark's test set) was not used",
        "command": portable(plan.get("commands", {}).get(name)),
        "driver": portable((plan.get("drivers") or {}).get(name) or plan.get("command")),
        "budget_s": (plan.get("budgets_s") or {}).get(name, plan.get("budget_s")),
        "budget_note": budget_note(name, plan, str(lineage.get("device") or plan.get("device") or "cpu")),
        "licence_note": "weights derived from the data above: the ssTEM images are CC BY-NC-SA 3.0 (non-commercial), "
                        "the STEM images come from atomap (GPL-3), the SEM images are MIT",
        "stored_as": "float16",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="the --out folder of scripts/train_bundled.py")
    parser.add_argument("--ship", nargs="+", required=True, help="run names to bundle, preferred first")
    parser.add_argument("--tasks", action="append", default=[], metavar="NAME=TASK,TASK", help="tasks an entry is used for")
    parser.add_argument("--task-note", action="append", default=[], metavar="NAME=TEXT", help="why an entry skips a task")
    parser.add_argument("--keep-existing", action="store_true",
                        help="a --ship name with no run in RUNS keeps its zoo entry and file as they are (card, tasks, note)")
    args = parser.parse_args()
    tasks = {n: [t for t in v.split(",") if t] for n, _, v in (x.partition("=") for x in args.tasks)}
    notes = {n: v for n, _, v in (x.partition("=") for x in args.task_note)}
    for name, ts in tasks.items():
        unknown = sorted(set(ts) - set(TASKS))
        if name not in args.ship or unknown:
            parser.error(f"--tasks {name}: not a shipped run, or unknown task(s) {unknown}")
    plan = json.loads((args.runs / "plan.json").read_text())
    entries, total = [], 0
    existing = {e["name"]: e for e in json.loads((ZOO / "index.json").read_text())} if (ZOO / "index.json").is_file() else {}
    for name in args.ship:
        run = args.runs / name
        if not run.is_dir() and args.keep_existing and name in existing:
            entry = dict(existing[name])
            if name in tasks:
                entry["tasks"] = tasks[name]
            if name in notes:
                entry["task_note"] = notes[name]
            total += (ZOO / entry["file"]).stat().st_size
            entries.append(entry)
            print(f"{name}: kept as it is in the zoo")
            continue
        state = load_file(str(run / "model.safetensors"))
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        entry = card(name, run, plan, tasks.get(name), notes.get(name))
        target = ZOO / entry["file"]
        save_file(half, str(target), metadata={"name": name, "arch": entry["arch"], "method": str(entry["method"])})
        entry["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
        entry["bytes"] = target.stat().st_size
        entry["tensors"] = len(half)
        total += entry["bytes"]
        entries.append(entry)
        print(f"{name}: {entry['bytes'] / 1e6:.1f} MB, {len(half)} tensors, {entry['steps']} steps, losses {entry['final_losses']}")
    if total > LIMIT_BYTES:
        raise SystemExit(f"bundled weights total {total / 1e6:.1f} MB, over the {LIMIT_BYTES / 1e6:.0f} MB limit")
    (ZOO / "index.json").write_text(json.dumps(entries, indent=2) + "\n")
    print(f"total {total / 1e6:.1f} MB in {len(entries)} files -> {ZOO / 'index.json'}")


if __name__ == "__main__":
    main()
