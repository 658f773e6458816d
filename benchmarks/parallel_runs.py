"""Shared machinery of the sweep benchmarks: many fine-tuning runs in parallel, results kept as they finish.

Used by ``sweep_defaults.py`` and ``pretrain_transfer.py`` (not a script itself).

* Every run fine-tunes on the strokes of ssTEM section 0 (the setting of
  ``segmentation_strokes.py``: its stroke budget, train section and scoring are imported,
  not copied) and scores Dice for membrane and mitochondria on the test sections.
* ``--workers N`` processes (``spawn`` start method, so each has its own CUDA context) run
  the jobs; the main process hands out one job at a time to a free worker, in the order
  given, so the first jobs of the list finish first.
* ``--time-budget S``: no run starts after S seconds. ``--hard-limit S``: a run is not
  started when its estimated duration (from the runs finished so far) would end it after
  S seconds; a cheaper job further down the list is tried instead.
* Each finished run is appended at once to a JSON file (written to a temporary name and
  renamed), so a sweep killed at a wall-clock limit keeps everything that finished.
  Runs already in the file (same parameters, seed, test sections and device type) are
  skipped, so a second call continues where the first stopped.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

RESULTS = HERE / "results"


# ---------------------------------------------------------------------------------------------- options


def parse_sections(text: str) -> list[int]:
    """``"1-19"``, ``"1-19:2"`` (every other one: 1, 3, ..., 19), ``"1,5,10,15"``, ``"3"`` or mixes like ``"1-5,9"``."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        span, _, step = part.partition(":")
        lo, _, hi = span.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    if not out:
        raise SystemExit(f"--test-sections {text!r} names no section")
    return sorted(dict.fromkeys(out))


def add_common_options(parser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (each its own CUDA context)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--test-sections", default="1-19", help='e.g. 1-19, 1-19:2 (every other), "1,5,10,15"')
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (network init and patch sampling)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds after which no new run starts")
    parser.add_argument("--hard-limit", type=float, default=None,
                        help="seconds: do not start a run whose estimated end (from finished runs) is later")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: cores / workers)")
    parser.add_argument("--rerun", action="store_true", help="run jobs again even if the results file has them")
    parser.add_argument("--out", default=None, help="results file (default: benchmarks/results/<benchmark>.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the job list and exit")


def parse_seeds(text: str) -> list[int]:
    return [int(s) for s in str(text).split(",") if s.strip()]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git on the machine: not recorded
        return None


# ---------------------------------------------------------------------------------------------- results file


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": []}


def append_result(path: Path, record: dict, benchmark: str) -> None:
    """Add one run to the file; written to a temporary name and renamed (never half-written)."""
    data = load_results(path)
    data.setdefault("benchmark", benchmark)
    data.setdefault("runs", []).append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def job_key(params: dict, seed: int, test_sections: list[int], device_type: str) -> str:
    return json.dumps([params, seed, test_sections, device_type], sort_keys=True)


# ---------------------------------------------------------------------------------------------- worker side

_W: dict[str, Any] = {}  # per worker process: data and settings, filled by _init_worker


def _init_worker(device: str, threads: int, test_sections: list[int], strokes: np.ndarray) -> None:
    import torch

    from sstem import load_section
    from segmentation_strokes import TRAIN_SECTION

    torch.set_num_threads(max(1, threads))
    raw, _ = load_section(TRAIN_SECTION)
    _W.update(device=device, threads=threads, raw=raw, strokes=strokes,
              tests=[load_section(i) for i in test_sections], test_sections=test_sections)
    if device == "cuda":
        torch.zeros(1, device="cuda")  # create the CUDA context here, not inside the first run's train time
        _W["device_name"] = torch.cuda.get_device_name(0)
    else:
        _W["device_name"] = f"{platform.processor() or platform.machine()} CPU"


def finetune_and_score(job: dict) -> dict:
    """Worker: fine-tune with ``job["config"]`` (FinetuneConfig fields), predict the test sections, score Dice."""
    import torch

    from segmentation_strokes import score

    from napari_emssl import __version__, api
    from napari_emssl.config import FinetuneConfig, PredictConfig

    record: dict[str, Any] = {k: v for k, v in job.items() if k != "config"}
    record.update(device=_W["device_name"], device_type=_W["device"], torch_threads=_W["threads"],
                  test_sections=_W["test_sections"], n_test_sections=len(_W["tests"]), package_version=__version__,
                  torch=torch.__version__, pid=os.getpid())
    try:
        config = FinetuneConfig(preview_every_s=0, device=_W["device"], **job["config"])
        record["config"] = config.to_dict()
        if _W["device"] == "cuda":
            torch.cuda.reset_peak_memory_stats()
        info: dict[str, Any] = {}
        losses: list[float] = []

        def on_event(event) -> None:
            if hasattr(event, "losses"):
                losses.append(event.losses["loss"])
            elif getattr(event, "kind", None) == "finetune":
                info.update(event.info)

        start = time.perf_counter()
        last = api.run_to_end(api.iter_finetune(_W["raw"], _W["strokes"], config), on_event)
        if _W["device"] == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
        model = last.result.model
        start = time.perf_counter()
        stack = np.stack([img for img, _ in _W["tests"]])
        labels = api.predict(model, stack, PredictConfig(device=_W["device"])).labels
        labels = labels[None] if labels.ndim == 2 else labels
        predict_s = time.perf_counter() - start
        tail = losses[-max(1, len(losses) // 10):]
        record.update(
            train_seconds=round(train_s, 2), predict_seconds=round(predict_s, 2),
            predict_seconds_per_section=round(predict_s / len(_W["tests"]), 3),
            steps_done=last.result.steps, final_loss=float(np.mean(tail)) if tail else None,
            loss_curve=[round(v, 4) for v in losses[:: max(1, len(losses) // 50)]],
            receptive_field=info.get("receptive_field"), patch_size_used=info.get("patch_size"),
            init_info={k: v for k, v in info.items() if k.startswith(("init", "matched", "total"))},
            train_painted_dice=model.meta.get("metrics", {}).get("train_painted_dice"),
            peak_gpu_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if _W["device"] == "cuda" else None,
        )
        record.update(score(list(labels), _W["tests"]))
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=6)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


# ---------------------------------------------------------------------------------------------- main side


def fixed_strokes() -> np.ndarray:
    """The strokes of every run: section 0, the budget of segmentation_strokes.py, stroke seed 0 (fixed)."""
    from segmentation_strokes import BUDGET, TRAIN_SECTION
    from sstem import load_section

    from napari_emssl.data.strokes import simulate_strokes

    _, truth = load_section(TRAIN_SECTION)
    return simulate_strokes(truth, BUDGET, brush_radius=2, stroke_length=60, seed=0)


def run_jobs(
    jobs: list[dict],
    args,
    *,
    benchmark: str,
    cost: Callable[[dict], float],
    describe: Callable[[dict], str],
    common: dict | None = None,
) -> Path:
    """Run ``jobs`` (dicts with ``config``, ``seed`` and ``params``; recorded as given) in order on ``args.workers``."""
    started = time.time()
    sections = parse_sections(args.test_sections)
    path = Path(args.out) if args.out else RESULTS / f"{benchmark}.json"
    done = {job_key(r["params"], r["seed"], r["test_sections"], r["device_type"])
            for r in load_results(path).get("runs", []) if "error" not in r}
    todo = [j for j in jobs if args.rerun or job_key(j["params"], j["seed"], sections, args.device) not in done]
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already in {path}, {len(todo)} to run "
          f"on {args.workers} worker(s), device {args.device}, test sections {args.test_sections} ({len(sections)})")
    if args.dry_run:
        for j in todo:
            print(f"  seed {j['seed']}  {describe(j)}  (cost {cost(j):.3g})")
        return path
    if not todo:
        return path
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.workers)
    strokes = fixed_strokes()
    common = dict(common or {}, painted_fraction=round(float((strokes > 0).mean()), 5), git_commit=git_commit(),
                  workers=args.workers, command="python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]))
    print(f"painted {common['painted_fraction']:.2%} of section 0; {threads} torch threads per worker")
    rates: list[float] = []  # seconds per unit of cost, of finished runs
    ctx = get_context("spawn")
    pending = list(todo)
    running: dict = {}
    n_done = n_failed = 0
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(args.device, threads, sections, strokes)) as pool:
        while pending or running:
            while pending and len(running) < args.workers:
                elapsed = time.time() - started
                if args.time_budget is not None and elapsed >= args.time_budget:
                    print(f"time budget of {args.time_budget:.0f} s reached: {len(pending)} job(s) not started")
                    pending.clear()
                    break
                job = _next_fitting(pending, elapsed, args.hard_limit, rates, cost)
                if job is None:
                    print(f"no remaining job fits before the hard limit of {args.hard_limit:.0f} s: "
                          f"{len(pending)} job(s) not started")
                    pending.clear()
                    break
                pending.remove(job)
                try:
                    running[pool.submit(finetune_and_score, job)] = (job, time.time())
                except BrokenProcessPool as exc:  # a worker could not start (no GPU, data missing, ...)
                    print(f"the worker pool is broken ({exc}); stopping")
                    pending.clear()
                    break
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job, t0 = running.pop(fut)
                try:
                    record = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (e.g. killed for memory)
                    record = {k: v for k, v in job.items() if k != "config"}
                    record.update(error=f"worker failed: {type(exc).__name__}: {exc}", test_sections=sections,
                                  device_type=args.device)
                record.update(common, wall_seconds=round(time.time() - t0, 2),
                              sweep_elapsed_seconds=round(time.time() - started, 1))
                append_result(path, record, benchmark)
                if "error" in record:
                    n_failed += 1
                    print(f"[{time.time() - started:6.0f}s] FAILED seed {job['seed']} {describe(job)}: {record['error']}")
                    continue
                n_done += 1
                rates.append(record["wall_seconds"] / max(cost(job), 1e-9))
                print(f"[{time.time() - started:6.0f}s] seed {job['seed']} {describe(job)}: membrane {record['membrane']:.3f}, "
                      f"mito {record['mitochondria']:.3f}, train {record['train_seconds']:.1f} s, "
                      f"predict {record['predict_seconds']:.1f} s ({len(running)} running, {len(pending)} waiting)")
    print(f"{n_done} run(s) finished, {n_failed} failed, in {time.time() - started:.0f} s; results in {path}")
    return path


def _next_fitting(pending: list[dict], elapsed: float, hard_limit: float | None, rates: list[float], cost) -> dict | None:
    """The first pending job expected to end before ``hard_limit`` (the first one while nothing is known)."""
    if hard_limit is None or not rates:
        return pending[0]
    rate = max(rates)  # pessimistic: the slowest seconds-per-cost seen
    for job in pending:
        if elapsed + 1.2 * rate * cost(job) <= hard_limit:
            return job
    return None
