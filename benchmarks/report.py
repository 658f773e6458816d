"""Write docs/benchmarks.md and its plots from benchmarks/results/*.json and the bundled model cards.

    .venv/bin/python benchmarks/report.py

Sections: few-stroke segmentation (``segmentation_strokes.py``), does pretraining help
(``pretrain_transfer.py``), choice of fine-tuning defaults (``sweep_defaults.py``) and the
bundled pretrained weights with their pretraining throughput (``scripts/train_bundled.py``,
model cards in ``src/napari_emssl/zoo/index.json``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report_superres import superres_lattice_lines  # noqa: E402
DOCS = HERE.parent / "docs"
HELD_OUT = ("stem_abf", "sem_nanowires_05", "sem_nanowires_12", "sstem_stack1")  # restoration.HELD_OUT


def segmentation_section(results: list[dict]) -> list[str]:
    lines = [
        "## Few-stroke segmentation of the ssTEM stack",
        "",
        "Strokes (simulated from the dataset's masks, at most 2 % of the pixels of section 0: background,",
        "membrane, mitochondria) train both methods; Dice is the mean over the test sections. The",
        "baseline is a random forest on scikit-image's `multiscale_basic_features` (the ilastik approach).",
        "",
        "| run | test sections | painted | method | membrane Dice | mitochondria Dice | train s | predict s/section | device | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        secs = r["test_sections"]
        for name, m in r["methods"].items():
            steps = f" ({m['steps']} steps)" if "steps" in m else ""
            lines.append(
                f"| {r['tag']} | {secs[0]}-{secs[-1]} | {r['painted_fraction']:.2%} | {name}{steps} | {m['membrane']:.3f} | "
                f"{m['mitochondria']:.3f} | {m['train_seconds']:.0f} | {m['predict_seconds_per_section']:.1f} | {r['device']} | "
                f"`{r['command']}` |"
            )
    return lines


def plot_segmentation(results: list[dict]) -> str | None:
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, values = [], []
    for r in results:
        for name, m in r["methods"].items():
            labels.append(f"{r['tag']}\n{name}")
            values.append((m["membrane"], m["mitochondria"]))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [v[0] for v in values], width=0.4, label="membrane")
    ax.bar([x + 0.2 for x in xs], [v[1] for v in values], width=0.4, label="mitochondria")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("Dice (test sections)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    out = DOCS / "images" / "segmentation_strokes.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return "images/segmentation_strokes.png"


def _save_plot(fig, name: str) -> str:
    """Write ``fig`` to ``docs/<name>`` (tight layout, 120 dpi); returns ``name`` for the page's image link."""
    fig.tight_layout()
    fig.savefig(DOCS / name, dpi=120)
    return name


def _runs(name: str) -> list[dict]:
    path = HERE / "results" / f"{name}.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()).get("runs", []) if "error" not in r]


def _sections(r: dict) -> str:
    secs = r["test_sections"]
    step = secs[1] - secs[0] if len(secs) > 1 else 1
    return f"{secs[0]}-{secs[-1]}" + (f" every {step}" if step > 1 else "")


def _group(runs: list[dict], key) -> dict:
    """key(run) -> mean membrane, mean mitochondria, mean train s and the seeds, over the runs with that key."""
    import numpy as np

    groups: dict = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    return {
        k: {"membrane": float(np.mean([r["membrane"] for r in rs])), "mitochondria": float(np.mean([r["mitochondria"] for r in rs])),
            "membrane_sd": float(np.std([r["membrane"] for r in rs])), "mitochondria_sd": float(np.std([r["mitochondria"] for r in rs])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in rs])), "seeds": sorted(r["seed"] for r in rs), "runs": rs}
        for k, rs in groups.items()
    }


def transfer_section(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    groups = _group(runs, lambda r: (r["arch"], r["init"], r["method"], r["steps"]))
    first = runs[0]
    lines = [
        "## Does pretraining help? Fine-tuning from random init vs from self-supervised pretraining",
        "",
        "The experiment of Kazimi et al. 2024 on our data: the strokes of the table above (section 0),",
        "fine-tuned for a small, a medium and a large budget of steps, from random initialisation and",
        "from each pretrained model of the same architecture (package defaults otherwise); Dice is the",
        f"mean over test sections {_sections(first)}. Pretraining used only unlabeled images (ssTEM stack2, SEM, STEM),",
        "never the labeled stack1 this benchmark tests on. `tensors` = tensors copied from the pretrained model.",
        "",
        "| architecture | init | steps | membrane Dice | mitochondria Dice | train s | tensors | seeds | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, init, method, steps), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "random", kv[0][1], kv[0][3])):
        r = g["runs"][0]
        info = r.get("init_info") or {}
        tensors = f"{info['matched_tensors']}/{info['total_tensors']}" if "matched_tensors" in info else "-"
        pre = r.get("pretrain") or {}
        label = "random" if init == "random" else f"{method} ({pre.get('steps', '?')} pretraining steps)"
        sd = lambda k: f" ± {g[k + '_sd']:.3f}" if len(g["seeds"]) > 1 else ""  # noqa: E731
        lines.append(f"| {arch} | {label} | {steps} | {g['membrane']:.3f}{sd('membrane')} | {g['mitochondria']:.3f}{sd('mitochondria')} | "
                     f"{g['train_seconds']:.0f} | {tensors} | {','.join(map(str, g['seeds']))} | {r['device']}, {r['torch_threads']} threads |")
    lines += ["", "What this shows (computed from the table: mean of the two Dice values, best first):", ""]
    for arch in sorted({a for a, _, _, _ in groups}):
        for steps in sorted({s for a, _, _, s in groups if a == arch}):
            cells = {(i if i == "random" else m): g for (a, i, m, s), g in groups.items() if a == arch and s == steps}
            ranked = sorted(cells.items(), key=lambda kv: -(kv[1]["membrane"] + kv[1]["mitochondria"]) / 2)
            base = cells.get("random")
            text = ", ".join(
                f"{name} {(g['membrane'] + g['mitochondria']) / 2:.3f}"
                + (f" ({(g['membrane'] + g['mitochondria'] - base['membrane'] - base['mitochondria']) / 2:+.3f} vs random)"
                   if base is not None and name != "random" else "")
                for name, g in ranked)
            lines.append(f"- {arch}, {steps} steps: {text}")
    lines += _paired_by_seed(groups)
    best = []
    for arch in sorted({a for a, _, _, _ in groups}):
        small = min(s for a, _, _, s in groups if a == arch)
        cells = {m: g for (a, i, m, s), g in groups.items() if a == arch and s == small and i != "random"}
        if cells:
            name = max(cells, key=lambda m: cells[m]["membrane"] + cells[m]["mitochondria"])
            best.append(f"{name} for {arch}")
    if best:
        lines += ["", f"Best pretext at the smallest budget (the question of which method suits dense EM tasks): {', '.join(best)}. "
                  "`--init bundled` uses the best pretrained weights of the default U-Net for segmentation."]
    lines += ["", "Seeds per cell are listed in the table. With one seed, small differences are noise: the same",
              "configuration run twice (here and in the sweep below, with 1 instead of 2 CPU threads) differs by",
              "about 0.01-0.02 Dice."]
    commands = sorted({r["command"] for r in runs})
    lines += ["", "Commands:", ""] + [f"    {c}" for c in commands]
    return lines


def _dice(run: dict, cls: str) -> float:
    """A run's Dice for ``cls``, or the mean of membrane and mitochondria for ``"mean"``."""
    return (run["membrane"] + run["mitochondria"]) / 2 if cls == "mean" else run[cls]


def _paired_by_seed(groups: dict) -> list[str]:
    """Pretrained minus random, seed by seed (same strokes, same patch sampling), where at least 3 seeds have both."""
    from scipy.stats import ttest_rel

    out = []
    for (arch, init, method, steps), g in sorted(groups.items()):
        base = next((v for (a, i, _, s), v in groups.items() if a == arch and i == "random" and s == steps), None)
        if init == "random" or base is None:
            continue
        mine = {r["seed"]: r for r in g["runs"]}
        theirs = {r["seed"]: r for r in base["runs"]}
        seeds = sorted(set(mine) & set(theirs))
        if len(seeds) < 3:
            continue
        parts = []
        for cls in ("membrane", "mitochondria", "mean"):
            a = [_dice(mine[s], cls) for s in seeds]
            b = [_dice(theirs[s], cls) for s in seeds]
            diff = [x - y for x, y in zip(a, b)]
            p = float(ttest_rel(a, b).pvalue)
            ptext = "< 0.01" if p < 0.01 else f"= {p:.2f}"
            parts.append(f"{cls} {sum(diff) / len(diff):+.3f} (better in {sum(d > 0 for d in diff)} of {len(diff)} seeds, "
                         f"paired t-test p {ptext}; per seed " + ", ".join(f"{d:+.3f}" for d in diff) + ")")
        out.append(f"- {arch}, {method}, {steps} steps, seeds {', '.join(map(str, seeds))}: " + "; ".join(parts))
    if out:
        out = ["", "Pretrained minus random, seed by seed (each seed: the same strokes, the same patch sampling):", ""] + out
    return out


def plot_transfer(runs: list[dict]) -> str | None:
    if not runs:
        return None
    groups = _group(runs, lambda r: (r["arch"], r["init"] if r["init"] == "random" else r["method"], r["steps"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=False)
    for ax, cls in zip(axes, ("membrane", "mitochondria")):
        for arch, init in sorted({(a, i) for a, i, _ in groups}):
            pts = sorted((s, g[cls]) for (a, i, s), g in groups.items() if (a, i) == (arch, init))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if init == "random" else "s-", label=f"{arch}: {init}")
        ax.set_xscale("log")
        ticks = sorted({s for _, _, s in groups})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel(f"{cls} Dice")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out = DOCS / "images" / "pretrain_transfer.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return "images/pretrain_transfer.png"


def sweep_section(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    base = runs[0]["base"]
    lines = [
        "## Choice of fine-tuning defaults",
        "",
        "One factor at a time around the default configuration "
        f"({', '.join(f'{k} {v}' for k, v in base.items())}), from random weights and from the bundled",
        f"pretrained weights, on the strokes of section 0; Dice is the mean over test sections {_sections(runs[0])}.",
        "",
        "| init | factor | value | membrane Dice | mitochondria Dice | train s | seeds | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for init in sorted({r.get("init", "random") for r in runs}):
        mine = [r for r in runs if r.get("init", "random") == init]
        for factor in sorted({f for r in mine for f in r["factors"]}):
            rows = [r for r in mine if factor in r["factors"]]
            for value, g in sorted(_group(rows, lambda r: r["params"][factor]).items(),
                                   key=lambda kv: str(kv[0]) if factor == "arch" else kv[0]):
                mark = " (default)" if value == base[factor] else ""
                label = "GAN-pretrained (gan_resunet_b3_rf96)" if init == "bundled" else init  # what `bundled` loaded then
                lines.append(f"| {label} | {factor} | {value}{mark} | {g['membrane']:.3f} | {g['mitochondria']:.3f} | "
                             f"{g['train_seconds']:.0f} | {','.join(map(str, g['seeds']))} | "
                             f"{g['runs'][0]['device']}, {g['runs'][0]['torch_threads']} threads |")
    lines += ["", "Commands:", ""] + [f"    {c}" for c in sorted({r["command"] for r in runs})]
    return lines


def bundled_section() -> list[str]:
    index = HERE.parent / "src" / "napari_emssl" / "zoo" / "index.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text())
    lines = [
        "## Bundled pretrained weights and pretraining throughput",
        "",
        "Pretrained by `scripts/train_bundled.py` on every unlabeled image of the data folder (ssTEM stack2,",
        "SEM nanowires, SEM aquami, atomic-resolution STEM), one run at a time, alone on the device (the",
        "background-removal weights by `scripts/train_bgremove_weights.py` on synthetic STEM pairs);",
        "patches/s is measured by each run over its whole length (data loading included). The full",
        "model cards are in `src/napari_emssl/zoo/index.json`; `emssl models` lists them.",
        "",
        "| name | method | architecture | used for | steps | batch x patch | wall s | patches/s | GFLOP per patch (train step) | achieved GFLOP/s | final losses | MB | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        rate = e.get("patches_per_s")
        flops = e.get("train_flops_per_patch")
        achieved = f"{flops * rate / 1e9:.0f}" if flops and rate else "-"
        losses = ", ".join(f"{k} {v:.3g}" for k, v in e["final_losses"].items())
        lines.append(
            f"| {e['name']} | {e['method']} | {e['arch']} | {', '.join(e['tasks'])} | {e['steps']} | {e['batch_size']} x {e['patch']}² | "
            f"{e['seconds']:.0f} | {rate:.1f} | {flops / 1e9:.1f} | {achieved} | {losses} | {e['bytes'] / 1e6:.1f} | {e['device']} |"
            if rate and flops else
            f"| {e['name']} | {e['method']} | {e['arch']} | {', '.join(e['tasks'])} | {e['steps']} | {e['batch_size']} x {e['patch']}² | "
            f"{e['seconds']:.0f} | - | - | - | "
            f"{losses} | {e['bytes'] / 1e6:.1f} | {e['device']} |"
        )
    notes = [f"- {e['name']}: not used for the other tasks because {e['task_note']}" for e in entries if e.get("task_note")]
    if notes:
        lines += [""] + notes
    budgets = ", ".join(f"{e['name']} {e['budget_s']:.0f} s" for e in entries if e.get("budget_s"))
    if budgets:
        lines += ["", f"Budgets (wall clock for each run, steps chosen so that its learning-rate schedule completes): {budgets}.",
                  f"Note from the cards: {next(e for e in entries if e.get('budget_s')).get('budget_note')}."]
    drivers = sorted({e["driver"] for e in entries if e.get("driver")})
    lines += ["", "Commands (with `EMSSL_DATA=../shared/data PYTHONPATH=src python` in front), then "
              "`scripts/package_bundled.py` to write the zoo:", ""] + [f"    {c}" for c in drivers]
    return lines


BASELINES = {"denoise": ("nlm", "bm3d", "n2v", "n2v_long"), "superres": ("bicubic", "back_projection")}


def _loss(run: dict) -> str:
    """The denoising loss a result file was measured with (files without the key were written before it existed)."""
    return run.get("denoise_loss", "blind-spot")


def _has_ours(run: dict) -> bool:
    """Whether a result file holds rows of our own method (ours, ours_tta, ours_random, ...)."""
    return any(row["method"].startswith("ours") for row in run["rows"])


def _denoise_command(run: dict) -> str:
    """The recorded command, reproducing it with today's defaults: runs of our denoiser measured before the loss
    could be chosen used the blind-spot loss alone, which now needs ``--denoise-loss blind-spot``."""
    command = run["command"]
    if run.get("task") == "denoise" and _has_ours(run) and "denoise_loss" not in run and "--denoise-loss" not in command:
        command += " --denoise-loss blind-spot"
    return command


def _runs_footer(runs: list[dict], env: str | None = None) -> list[str]:
    """The closing lines of a section measured two runs at a time: device and the commands (``env`` in front)."""
    with_env = f" (with `{env}` in front)" if env else ""
    return ["", f"Device: {runs[0]['device']}, two runs at a time (one per core). Commands{with_env}: "
            + " and ".join(f"`{_denoise_command(r)}`" for r in runs) + "."]


def _correction(run: dict) -> float:
    """The mean-correction sigma of a result file's denoiser (files without the key were written before it existed)."""
    return float(run.get("mean_correction", 0.0))


def _leak(run: dict) -> float | str:
    """The leak-correction share of a result file's denoiser, or "auto" (files without the key were written before it existed)."""
    value = run.get("leak_correction", 0.0)
    return value if value == "auto" else float(value)


def _leak_words(value: float | str) -> str:
    """A leak-correction setting in words."""
    return "leak correction auto (the share chosen per image by SURE, 0-0.75)" if value == "auto" else f"leak correction {value:g}"


def _run_order(path: Path) -> list:
    """Sort key of a result file: whole numbers in its name compared as numbers (``z10`` after ``z9``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.stem)]


def _restoration_runs(task: str, loss: str | None = None, corrected: bool | None = None,
                      leak: float | str | None = None) -> dict | None:
    """``restoration_<task>*.json`` merged (runs split over processes): the first file's settings, all rows.

    ``loss``: only the files of our denoiser trained with that loss (and the files without our rows).
    ``corrected=False``: only the files of our denoiser without the mean correction (and those without our rows).
    """
    paths = sorted((HERE / "results").glob(f"restoration_{task}*.json"), key=_run_order)
    runs = [json.loads(p.read_text()) for p in paths]
    if loss is not None:
        runs = [r for r in runs if _loss(r) == loss or not _has_ours(r)]
    if corrected is False:
        runs = [r for r in runs if not _correction(r) or not _has_ours(r)]
    if leak is not None:  # only the files of our denoiser with that leak-correction setting (and those without our rows)
        runs = [r for r in runs if _leak(r) == leak or not _has_ours(r)]
    if not runs:
        return None
    merged = dict(runs[0], rows=[row for r in runs for row in r["rows"]], images={})
    ours = [r for r in runs if any(row["method"] == "ours" for row in r["rows"])]
    if ours:  # later files replace earlier rows of the same image and method: describe the settings of the last "ours"
        merged.update({k: ours[-1][k] for k in ("steps", "mask_fraction") if k in ours[-1]})
        merged["mask_replace"] = ours[-1].get("mask_replace", "mean")  # files without the key were written before it
        merged["denoise_loss"] = _loss(ours[-1])
        merged["mean_correction"] = _correction(ours[-1])
        merged["leak_correction"] = _leak(ours[-1])
        randoms = [r for r in runs if any(row["method"] == "ours_random" for row in r["rows"])]
        merged["random_leak_correction"] = _leak(randoms[-1]) if randoms else None
        # back-projection steps of the ours rows (a row's own record; files without it were written before it existed)
        merged["back_projection"] = next((row["back_projection"] for row in ours[-1]["rows"] if "back_projection" in row), 0)
    merged["timing_note"] = next((r["timing_note"] for r in reversed(runs) if r.get("timing_note")), None)  # the latest
    for r in runs:
        merged["images"].update(r["images"])
        merged.setdefault("noise_bound", {}).update(r.get("noise_bound", {}))
        if "n2v" in r:
            merged["n2v"] = {**r["n2v"], **merged.get("n2v", {})} if "long_epochs" not in r["n2v"] else \
                {**merged.get("n2v", {}), "long_epochs": r["n2v"]["long_epochs"]}
    # the commands of the files whose rows are shown (a later file replaces an earlier one's row of the same image and method)
    last = {(row["image"], row["method"]): i for i, r in enumerate(runs) for row in r["rows"]}
    commands = [_denoise_command(runs[i]) for i in sorted(set(last.values()))]
    merged["command"] = "` and `".join(dict.fromkeys(commands))
    return merged


def restoration_section(run: dict) -> list[str]:
    """Table (PSNR / SSIM / seconds per image and method) and the computed margins of ours over the baselines."""
    task, rows = run["task"], run["rows"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    cell = {(r["image"], r["method"]): r for r in rows}
    if task == "denoise":
        title = "## Denoising low-dose STEM and SEM images (every method sees only the noisy image)"
        intro = [f"Poisson-Gaussian noise at {run['dose']:g} electrons per unit intensity plus read noise {run['read']:g} "
                 "was added to each image (unit intensity: 1st percentile 0.05, 99.8th 1). NLM and BM3D run on the "
                 "variance-stabilised image (generalised Anscombe, given the true noise parameters, an advantage the "
                 f"learned methods do not have); N2V is careamics' Noise2Void ({run['n2v']['epochs']} epochs x "
                 f"{run['n2v']['steps_per_epoch']} batches of {run['n2v']['batch']} patches of {run['n2v']['patch']} px, as many "
                 "pixels as 600 of our steps see"
                 + (f"; n2v_long: {run['n2v'].get('long_epochs')} epochs, about the wall time of 600 of our steps"
                    if any(r["method"] == "n2v_long" for r in rows) else "") + "); "
                 f"ours is `emssl finetune --task denoise` with the defaults of the time ({run['steps']} steps, bundled "
                 f"weights, blind-spot share {run.get('mask_fraction', 0.01):g}, masked pixels showing "
                 f"{REPLACE_TEXT[run.get('mask_replace', 'mean')]}, {LOSS_TEXT[_loss(run)]}"
                 + (f", {_leak_words(_leak(run))}" if _leak(run) else "")
                 + (f", mean correction {_correction(run):g} px" if _correction(run) else "") + ") and ours_random the same "
                 "from random weights"
                 + (f" (measured with {_leak_words(run['random_leak_correction'])}, the default before)"
                    if run.get("random_leak_correction") not in (None, _leak(run)) else "") + "; "
                 "ours_tta is the mean of the 8 flips/rotations, what `emssl predict` and the Apply widget give by default "
                 "for a single 2D image (ours: one view, `--no-tta`; the default for stacks was one view until the "
                 "section \"Which views to average\" below, and is now the image and its mirror). The bundled weights were pretrained "
                 "(GAN pretext) on every unlabeled image of the data folder, these four included: ours_random shows the "
                 "result without that start, and the last section below adds an image the pretraining never saw."]
    else:
        title = "## Super-resolution x2 of STEM and SEM images (from the downscaled image alone)"
        intro = ["Each image was area-downscaled by 2; every method restores the full resolution from that alone. Ours is "
                 f"`emssl finetune --task superres` with every default ({run['steps']} steps, bundled weights, pairs made "
                 "by downscaling the input once more"
                 + (f", then {run['back_projection']} steps of back-projection onto the input after prediction"
                    if run.get("back_projection") else "") + "); ours_random is the same self-supervised network without pretraining; "
                 "ours_tta is the mean of the 8 flips/rotations (the default for a single 2D image). The bundled weights "
                 "were pretrained on every unlabeled image of the data folder, these four included."
                 + (" back_projection is bicubic upsampling corrected 20 times by the bicubic upsampling of what its area "
                    "downscaling misses of the input (iterative back-projection, Irani & Peleg 1991): a classic that, like "
                    "ours, knows the degradation; so the best baseline below is the better of the two classics."
                    if any(r["method"] == "back_projection" for r in rows) else "")]
    lines = [title, ""] + intro + [""] + _restoration_table(rows, task)
    if run.get("noise_bound"):
        bound = run["noise_bound"]
        lines += ["", "How much is there to gain: the references are recorded images with their own shot noise, and the "
                  "part of it that area downscaling averages away (3/4 of its energy at x2) cannot be predicted by any "
                  "method. Its standard deviation, estimated from the diagonal 2 x 2 details (median absolute deviation), "
                  "bounds the PSNR (optimistically: lost signal detail is not counted): "
                  + ", ".join(f"{i} {bound[i]['psnr_bound']:.2f} dB" + (f" (bicubic {cell[(i, 'bicubic')]['psnr']:.2f})"
                                                                        if (i, "bicubic") in cell else "")
                              for i in images if i in bound) + "."]
    if task == "superres":
        versus = [(i, cell[(i, "ours_tta")]["psnr"] - cell[(i, "bicubic")]["psnr"]) for i in images
                  if (i, "ours_tta") in cell and (i, "bicubic") in cell]
        if versus:
            lines += ["", "ours_tta minus bicubic (the target: at least +1 dB): " + ", ".join(f"{i} {d:+.2f} dB" for i, d in versus)
                      + f"; {sum(d >= 1.0 for _, d in versus)} of {len(versus)} images at +1 dB or more "
                      f"(mean {sum(d for _, d in versus) / len(versus):+.2f} dB)."]
    pre = [(i, cell[(i, "ours")]["psnr"] - cell[(i, "ours_random")]["psnr"]) for i in images
           if (i, "ours") in cell and (i, "ours_random") in cell]
    if pre:
        lines += ["", "Pretrained minus random initialisation (same training, no test-time augmentation): "
                  + ", ".join(f"{i} {d:+.2f} dB" for i, d in pre) + "."
                  + (f" The two were measured with different leak corrections ({_leak_words(_leak(run))} against "
                     f"{_leak_words(run['random_leak_correction'])}), so this also holds the change of the correction."
                     if run.get("random_leak_correction") not in (None, _leak(run)) else "")]
    if task == "denoise":
        lines += _leak_default_note(run, cell, images)
    if run.get("timing_note"):
        lines += ["", f"Timing: {run['timing_note']}"]
    lines += ["", f"Device: {run['device']}. Images: " + "; ".join(f"{k}: {v}" for k, v in run["images"].items()) + ".",
              f"Command (with `EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src` in front): `{run['command']}`."]
    return lines


REVISIBLE_LABEL = "ours_re-visible"  # the reseed table's name for our rows trained with the re-visible loss


def _restoration_table(rows: list[dict], task: str) -> list[str]:
    """PSNR / SSIM / seconds per image and method, then ours (and ours_tta) minus the best baseline per image."""
    images = list(dict.fromkeys(r["image"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["image"], r["method"]): r for r in rows}
    lines = ["PSNR in dB (data range of the clean reference) / SSIM / seconds (training and prediction):", "",
             "| image | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for image in images:
        cells = []
        for m in methods:
            r = cell.get((image, m))
            cells.append(f"{r['psnr']:.2f} / {r['ssim']:.3f} / {r['seconds']:.0f} s" if r else "-")
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    for variant in ("ours", "ours_tta", REVISIBLE_LABEL, f"{REVISIBLE_LABEL}_tta"):
        margins = []
        for image in images:
            ours, best = cell.get((image, variant)), _best_baseline(cell, image, task)
            if ours and best:
                margins.append((image, ours["psnr"] - best["psnr"], best["method"]))
        if margins:
            mean = sum(m[1] for m in margins) / len(margins)
            per = ", ".join(f"{i} {d:+.2f} dB vs {b}" for i, d, b in margins)
            lines += ["", f"Measured: {variant} minus the best baseline per image: {per}; mean {mean:+.2f} dB."]
    return lines


def _best_baseline(cell: dict[tuple[str, str], dict], image: str, task: str) -> dict | None:
    """The row of the best-scoring baseline on ``image`` (``cell``: rows by (image, method)), or None."""
    base = [cell[(image, b)] for b in BASELINES[task] if (image, b) in cell]
    return max(base, key=lambda r: r["psnr"]) if base else None


def _best_margin(rows: list[dict], image: str, method: str = "ours_tta") -> float | None:
    """``method`` minus the best denoising baseline on ``image`` (dB), or None."""
    cell = {(r["image"], r["method"]): r for r in rows}
    ours, best = cell.get((image, method)), _best_baseline(cell, image, "denoise")
    return ours["psnr"] - best["psnr"] if ours and best else None


def reseed_section(runs: list[dict], main: dict | None = None) -> list[str]:
    """Denoising with another noise draw, on the benchmark images and on held-out ones (``reseed_denoise_*.json``)."""
    held_out = sorted({k for r in runs for k in r.get("held_out", [])})
    # rows of our denoiser trained with the re-visible loss get their own columns (the older runs: blind-spot loss alone)
    rows = [dict(row, method=row["method"].replace("ours", REVISIBLE_LABEL, 1))
            if _loss(r) == "re-visible" and row["method"].startswith("ours") else row
            for r in runs for row in r["rows"]]
    order = list(dict.fromkeys(r["image"] for r in rows))
    rows.sort(key=lambda r: (r["image"] in held_out, order.index(r["image"])))  # the benchmark's images first
    shown = list(dict.fromkeys(r["image"] for r in rows))
    not_seen = sorted({k for r in runs for k in r.get("not_pretrained_on", [])})
    images = {k: v for r in runs for k, v in r["images"].items()}
    lines = ["### Another noise draw, and images no default was chosen on",
             "",
             "The blind-spot share and the step count of self-supervised denoising were chosen on the four images above "
             "with noise seed 0. The same comparison with another noise draw (seed "
             + ", ".join(map(str, sorted({r["seed"] for r in runs}))) + ")"
             + (f", on them and on {len(held_out)} held-out images that played no part in any choice ({', '.join(held_out)})"
                if held_out else "")
             + f"; ours with the defaults of the time ({', '.join(map(str, sorted({r['steps'] for r in runs})))} steps, "
             + ("the blind-spot loss alone; the columns " + REVISIBLE_LABEL + ": with the re-visible loss, the default now"
                if any(_loss(r) == "re-visible" for r in runs) else " and ".join(sorted({LOSS_TEXT[_loss(r)] for r in runs})))
             + "), same dose, "
             "read noise and classic baselines as above. The bundled weights ours starts from were pretrained on every "
             "unlabeled image of the data folder (clean, as recorded), which holds the benchmark images"
             + (" and the held-out ones except " + ", ".join(not_seen) + " (the corpus does hold the other ssTEM stack, "
                "stack2: the same tissue and microscope)" if not_seen else "") + ".",
             ""] + _restoration_table(rows, "denoise")
    cell = {(r["image"], r["method"]): r["psnr"] for r in rows}
    pre = [(i, cell[(i, "ours_tta")] - cell[(i, "ours_random_tta")]) for i in shown
           if (i, "ours_tta") in cell and (i, "ours_random_tta") in cell]
    if pre:
        lines += ["", "Pretrained minus random initialisation (8-view): " + ", ".join(f"{i} {d:+.2f} dB" for i, d in pre) + "."]
    loss = [(i, cell[(i, REVISIBLE_LABEL + "_tta")] - cell[(i, "ours_tta")]) for i in shown
            if (i, "ours_tta") in cell and (i, REVISIBLE_LABEL + "_tta") in cell]
    if loss:
        lines += ["", "Re-visible minus blind-spot loss (8-view): " + ", ".join(f"{i} {d:+.2f} dB" for i, d in loss)
                  + f"; mean over the {len(loss)} images {sum(d for _, d in loss) / len(loss):+.2f} dB."]
    if main:
        pairs = [(i, _best_margin(main["rows"], i), _best_margin(rows, i)) for i in shown if i not in held_out]
        pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
        if pairs:
            lines += ["", "ours_tta minus the best baseline, noise seed 0 (table above) -> this one: "
                      + ", ".join(f"{i} {a:+.2f} -> {b:+.2f} dB" for i, a, b in pairs)
                      + " (the noise draw and the training's random numbers both change)."]
    lines += ["", f"Device: {runs[0]['device']}, two runs at a time (one per core). Images: "
              + "; ".join(f"{k}: {v}" for k, v in images.items()) + ".",
              "Commands (with `EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src` in front): "
              + " and ".join(f"`{_denoise_command(r)}`" for r in runs) + "."]
    return lines


def revisible_fraction_section(runs: list[dict], main: dict) -> list[str]:
    """The blind-spot share with the re-visible loss (``revisible_mask_fraction_*.json``) against the main table's."""
    table = {(r["image"], r["method"]): r for r in main["rows"]}
    default = main.get("mask_fraction", 0.0625)
    lines = ["### Share of blind-spot pixels with the re-visible loss",
             "",
             f"The main table's runs (re-visible loss, mask fraction {default:g}) with a larger share of each patch "
             "hidden; the re-visible loss trains on the hidden pixels only, in both of its terms, so more hidden pixels "
             "give it more to learn from (Blind2Unblind hides one pixel of every 2 x 2 cell, 0.25); rows with one of the "
             "8 neighbours shown instead of their mean (`--mask-replace neighbour`) where measured. Same noise, "
             "steps and bundled weights; PSNR in dB (one view and the 8-view average), seconds of training and prediction:",
             "",
             "| image | mask fraction | masked pixels show | PSNR | 8-view | change (8-view) | 8-view minus the best baseline | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    main_replace = main.get("mask_replace", "mean")

    def line(image: str, fraction: float, replace: str, one: dict, eight: dict, base: dict | None, best: dict) -> str:
        change = f"{eight['psnr'] - base['psnr']:+.2f}" if base else "-"
        return (f"| {image} | {fraction:g} | {REPLACE_TEXT[replace]} | {one['psnr']:.2f} | {eight['psnr']:.2f} | {change} | "
                f"{eight['psnr'] - best['psnr']:+.2f} vs {best['method']} | {one['seconds']:.0f} |")

    diffs = []
    by_image: dict[str, list[dict]] = {}
    for run in runs:
        by_image.setdefault(run["rows"][0]["image"], []).append(run)
    for image, image_runs in sorted(by_image.items()):
        if (image, "ours_tta") not in table:
            continue
        base, best = table[(image, "ours_tta")], _best_baseline(table, image, "denoise")
        lines.append(line(image, default, main_replace, table[(image, "ours")], base, None, best))
        for run in sorted(image_runs, key=lambda r: (r.get("mask_replace", "mean"), r["mask_fraction"])):
            cells = {(r["image"], r["method"]): r for r in run["rows"]}
            if (image, "ours") in cells and (image, "ours_tta") in cells:
                replace, tta = run.get("mask_replace", "mean"), cells[(image, "ours_tta")]
                lines.append(line(image, run["mask_fraction"], replace, cells[(image, "ours")], tta, base, best))
                if replace == main_replace:
                    diffs.append(tta["psnr"] - base["psnr"])
    if diffs:
        lines += ["", f"Measured: with {REPLACE_TEXT[main_replace]} shown, mean change over {len(diffs)} images "
                  f"{sum(diffs) / len(diffs):+.2f} dB (8-view)."]
    lines += _runs_footer(runs)
    return lines


def reseed_fraction_section(runs: list[dict], reseed: list[dict], earlier: list[dict] | None = None,
                            main: dict | None = None) -> list[str]:
    """A quarter hidden on another noise draw and the held-out images (``seed1_fraction_*.json``) against the
    reseed runs of the same seed at the default share (``reseed_denoise_*.json``, re-visible loss)."""
    default = {(r["image"], r["method"]): r for run in reseed if _loss(run) == "re-visible" for r in run["rows"]}
    baselines = {(r["image"], r["method"]): r for run in reseed for r in run["rows"] if not r["method"].startswith("ours")}
    held_out = {k for r in runs + reseed for k in r.get("held_out", [])}
    fractions = sorted({run["mask_fraction"] for run in runs})
    shares = sorted({run["mask_fraction"] for run in reseed if _loss(run) == "re-visible"})
    lines = ["### A quarter hidden: another noise draw, and the held-out images",
             "",
             "The comparison of the section above (a larger blind-spot share with the re-visible loss) repeated "
             "on the second noise draw (seed " + ", ".join(map(str, sorted({r["seed"] for r in runs}))) + ") and on "
             "the held-out images, against the runs of the same seed and loss at the default share ("
             + ", ".join(f"{s:g}" for s in shares) + ") in \"Another noise draw\" above. Same steps, bundled weights "
             "and mean replacement; PSNR in dB. The seconds of the larger share are upper bounds: other work shared the two "
             "cores during parts of some of these runs (in the section above, without it, a quarter hidden took about "
             "10 % longer than the default share):",
             "",
             "| image | held out | default share: PSNR / 8-view | " + ", ".join(f"{f:g}" for f in fractions)
             + ": PSNR / 8-view | change (8-view) | 8-view minus the best baseline | seconds (default share / "
             + ", ".join(f"{f:g}" for f in fractions) + ") |",
             "|---|---|---|---|---|---|---|"]
    changes: dict[bool, list[float]] = {False: [], True: []}
    order = {name: i for i, name in enumerate(["stem_adf", "sem_aquami", "stem_detector", "sem_nanowires"])}
    for run in sorted(runs, key=lambda r: (r["rows"][0]["image"] in held_out, order.get(r["rows"][0]["image"], 9),
                                           r["rows"][0]["image"])):
        cells = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        one, eight = cells.get("ours"), cells.get("ours_tta")
        was_one, was_eight = default.get((image, "ours")), default.get((image, "ours_tta"))
        if not (one and eight and was_one and was_eight):
            continue
        best = _best_baseline(baselines, image, "denoise")
        margin = f"{eight['psnr'] - best['psnr']:+.2f} vs {best['method']}" if best else "-"
        change = eight["psnr"] - was_eight["psnr"]
        changes[image in held_out].append(change)
        lines.append(f"| {image} | {'yes' if image in held_out else 'no'} | {was_one['psnr']:.2f} / {was_eight['psnr']:.2f} | "
                     f"{one['psnr']:.2f} / {eight['psnr']:.2f} | {change:+.2f} | {margin} | {was_one['seconds']:.0f} / "
                     f"{one['seconds']:.0f} |")
    summary = [f"{len(v)} {'held-out' if k else 'benchmark'} images {sum(v) / len(v):+.2f} dB ({sum(d > 0 for d in v)} better)"
               for k, v in sorted(changes.items()) if v]
    if summary:
        lines += ["", "Measured: mean change (8-view) over " + "; over ".join(summary) + "."]
    if earlier and main:  # the same change with noise seed 0 (section above), where both seeds were measured
        table = {(r["image"], r["method"]): r for r in main["rows"]}
        now = {run["rows"][0]["image"]: run for run in runs}
        pairs = []
        for run in earlier:
            image = run["rows"][0]["image"]
            cells = {r["method"]: r for r in run["rows"]}
            if (run.get("mask_replace", "mean") != "mean" or image not in now or "ours_tta" not in cells
                    or (image, "ours_tta") not in table or run["mask_fraction"] != now[image]["mask_fraction"]):
                continue
            later = next(r for r in now[image]["rows"] if r["method"] == "ours_tta")["psnr"] - default[(image, "ours_tta")]["psnr"]
            pairs.append((image, cells["ours_tta"]["psnr"] - table[(image, "ours_tta")]["psnr"], later))
        if pairs:
            lines += ["", "The same change with noise seed 0 (section above) -> seed 1: "
                      + ", ".join(f"{i} {a:+.2f} -> {b:+.2f} dB" for i, a, b in pairs)
                      + f": the change moves by up to {max(abs(a - b) for _, a, b in pairs):.2f} dB between the two "
                        "draws (the noise and the training's random numbers both change), so a single run's difference "
                        "of that size says little."]
    lines += _runs_footer(runs)
    return lines


STEPS_BASELINES = {"denoise": ("bm3d",), "superres": ("bicubic", "back_projection")}


def steps_section(runs: list[dict], main: dict, task: str, same: dict | None = None) -> list[str]:
    """Restoration trained longer (``<task>_steps_*.json``) beside the main table's rows.

    ``same``: the main table's runs with the longer runs' own settings (denoising: their leak correction), whose ours
    rows replace the main table's.
    """
    table = {(r["image"], r["method"]): r for r in main["rows"]}
    if same is not None:
        table.update({(r["image"], r["method"]): r for r in same["rows"] if r["method"].startswith("ours")})
    baselines = STEPS_BASELINES[task]
    what = {"denoise": ("denoising", "the images closest to the +0.5 dB target or below it"),
            "superres": ("super-resolution", "the images where ours is furthest from the +1 dB target")}[task]
    lines = [f"### Longer {what[0]} training",
             "",
             f"The main table's runs ({main['steps']} steps) trained longer, everything else equal, on {what[1]}; PSNR in dB "
             "(one view / 8-view). The seconds are not comparable between the rows: the main table's runs shared the cores "
             "with more processes (its timing note)"
             + (f"; both rows of an image with {_leak_words(_leak(runs[0]))}, the default when the longer runs were made "
                f"(the {main['steps']}-step rows: the main table's training, predicted with that share)"
                if task == "denoise" and _leak(runs[0]) != _leak(main) else "")
             + (f". The longer runs are the network alone: they predate the {main['back_projection']} steps of back-projection "
                f"the {main['steps']}-step rows add after prediction" if main.get("back_projection")
                and not any("back_projection" in row for run in runs for row in run["rows"]) else "") + ":",
             "",
             "| image | steps | PSNR / 8-view | " + " | ".join(f"8-view minus {b}" for b in baselines) + " | seconds |",
             "|---|---|---|" + "---|" * len(baselines) + "---|"]
    for run in sorted(runs, key=lambda r: (r["rows"][0]["image"], r["steps"])):
        cells = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        rows = [(main["steps"], table.get((image, "ours")), table.get((image, "ours_tta"))),
                (run["steps"], cells.get("ours"), cells.get("ours_tta"))]
        for steps, one, eight in rows:
            if not (one and eight):
                continue
            margins = [f"{eight['psnr'] - table[(image, b)]['psnr']:+.2f}" if (image, b) in table else "-" for b in baselines]
            lines.append(f"| {image} | {steps} | {one['psnr']:.2f} / {eight['psnr']:.2f} | {' | '.join(margins)} | "
                         f"{one['seconds']:.0f} |")
    return lines


def steps_notes(runs: list[dict], main: dict, task: str) -> list[str]:
    """What the longer runs changed (8 views), in one line; nothing for super-resolution (its table says it).

    ``main``: the main table's runs with the longer runs' settings (see :func:`steps_section`).
    """
    if task != "denoise":
        return []
    table = {(r["image"], r["method"]): r["psnr"] for r in main["rows"]}
    changes = []
    for run in sorted(runs, key=lambda r: r["rows"][0]["image"]):
        cells = {r["method"]: r["psnr"] for r in run["rows"]}
        image = run["rows"][0]["image"]
        if (image, "ours_tta") in table and "ours_tta" in cells:
            changes.append(f"{image} {cells['ours_tta'] - table[(image, 'ours_tta')]:+.2f} dB")
    if not changes:
        return []
    return ["", f"Measured: {runs[0]['steps']} steps instead of {main['steps']}, 8 views: {', '.join(changes)}. Twice the "
            "training does not carry the detector image over the target: its 8-view result falls, while the textured SEM "
            "image gains a little; the default stays at the steps of the main table, which cost a user on this CPU about "
            "ten minutes for a 512 x 512 image."]


def _bm3d_by_run() -> dict[tuple[str, int], float]:
    """BM3D's PSNR per (image, noise seed) from the leak-correction runs (same noisy images)."""
    found = {}
    for path in sorted((HERE / "results").glob("leak_correction_seed*.json")):
        run = json.loads(path.read_text())
        for row in run["rows"]:
            if row["method"] == "bm3d":
                found[(row["image"], run["seed"])] = row["psnr"]
    return found


def leak_share_auto_section(runs: list[dict]) -> list[str]:
    """The leak share chosen per image by SURE, the package's "auto" (``leak_share_sure.py``)."""
    rows = [r for run in runs for r in run["rows"]]
    bm3d = _bm3d_by_run()
    lines = ["### The leak share chosen per image (auto, the default)",
             "",
             "The best share differs between images (about 0.9 on the smooth detector image, 0-0.4 elsewhere). Since "
             "0.1.0 the default, `--leak-correction auto`, chooses it for each slice by Stein's unbiased risk estimate "
             "(SURE): the corrected output's expected squared error is quadratic in the share, and its minimum needs the "
             "output, the input, the smoothed own-pixel weight J, the unsmoothed probe response per pixel (the "
             "divergence) and the noise variance. The variance is estimated from the noisy image alone: the median "
             "absolute deviation of its finest diagonal Haar details, in 16 bins of the neighbours-only estimate, fitted "
             "as a straight line (Poisson-Gaussian noise). The share is clipped to 0-0.75 (at 1 the output is the "
             "neighbours-only estimate, which loses on average: \"Leak correction\" above). `tasks/denoise.py` states "
             "the formula; `benchmarks/leak_share_sure.py` measures it on the networks of \"Leak correction\" (same "
             "images, noise draws and training): each image predicted as `emssl predict` gives it (8 views, mean "
             "correction on) with the share auto, and the planes its leak correction received corrected again with "
             "every share of a grid (the grid is the same as in \"Leak correction\"), and with the share SURE picks "
             "given the true noise variance, unclipped (no user has it); PSNR in dB:",
             "",
             "| image | held out | seed | J | share 0.5 | best share of 0-1 | auto: share / PSNR | auto minus 0.5 | auto minus "
             "BM3D | auto, one view / a stack's 2 views: PSNR minus BM3D | true variance: share / PSNR | estimated / true "
             "variance |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    changes, margins = [], []
    for r in sorted(rows, key=lambda r: (r["image"] in HELD_OUT, r["image"], r["seed"])):
        best = max(r["psnr"].items(), key=lambda kv: kv[1])
        auto, true = r["auto"], r["true"]
        change = auto["psnr"] - r["psnr"]["0.5"]
        changes.append((r["image"], change))
        margin = auto["psnr"] - bm3d[(r["image"], r["seed"])] if (r["image"], r["seed"]) in bm3d else None
        if margin is not None:
            margins.append(margin)
        lines.append(f"| {r['image']} | {'yes' if r['image'] in HELD_OUT else 'no'} | {r['seed']} | {r['weight']:.3f} | "
                     f"{r['psnr']['0.5']:.2f} | {best[1]:.2f} (f = {best[0]}) | {auto['share']:.2f} / {auto['psnr']:.2f} | "
                     f"{change:+.2f} | " + (f"{margin:+.2f}" if margin is not None else "-") + " | "
                     + (f"{r['one']['psnr'] - base:+.2f} / {r['stack']['psnr'] - base:+.2f}"
                        if "one" in r and (base := bm3d.get((r["image"], r["seed"]))) is not None else "-") + " | "
                     f"{true['share']:.2f} / {true['psnr']:.2f} | {r['variance_ratio']:.3f} |")
    if changes:
        values = [c for _, c in changes]
        wires = [c for i, c in changes if i.startswith("sem_nanowires")]
        others = [c for i, c in changes if not i.startswith("sem_nanowires")]
        ratios = [r["variance_ratio"] for r in rows if r["image"].startswith("sem_nanowires")]
        wire_ratio = f"{min(ratios) - 1:.0%} to {max(ratios) - 1:.0%} too high" if ratios else "not measured"
        true_gap = max(max(r["psnr"].values()) - r["true"]["psnr"] for r in rows)
        lines += ["", f"Against the fixed share 0.5, over the {len(values)} runs: mean {sum(values) / len(values):+.3f} dB "
                  f"(from {min(values):+.2f} to {max(values):+.2f}); on the {len(wires)} runs of the nanowire micrographs "
                  f"{min(wires):+.2f} to {max(wires):+.2f}, on the other {len(others)} {min(others):+.2f} to "
                  f"{max(others):+.2f}. Ours minus BM3D with auto: from {min(margins):+.2f} to {max(margins):+.2f} dB, "
                  f"at least +0.5 dB on {sum(m >= 0.5 for m in margins)} of {len(margins)} runs. Where it loses: the "
                  "share moves by about the relative error of the variance divided by J (0.04-0.2), so the noise level must "
                  "be known to a few per cent, and on the nanowire micrographs the Haar details of the bright wires carry "
                  f"texture at the pixel scale that the estimate counts as noise ({wire_ratio}): their share is "
                  f"clipped at 0.75 where 0-0.2 is best. With the true variance SURE's share is at most {true_gap:.2f} dB "
                  "below the best of the grid (an earlier version that used the 8 px-smoothed J in the divergence picked 1 "
                  "on the nanowire images even with the true variance: J varies with the texture, and so does the noise "
                  "variance). `--leak-correction 0.5` (or any share) gives a fixed share again."]
    lines += ["", "Device: x86_64 CPU, 2 cores (prediction only). Commands (with `EMSSL_DATA=../shared/data "
              "PYTHONPATH=.bench-site:src` in front; the networks saved by `leak_correction.py --save-model /tmp/m` with "
              "the commands of \"Leak correction\"): " + " and ".join(f"`{run['command']}`" for run in runs) + "."]
    return lines


def _pair_factors(run: dict) -> str:
    return f"{run['smin']:.3g}" if run["smin"] == run["smax"] else f"{run['smin']:.3g}-{run['smax']:.3g}"


def _pair_factors_order(run: dict) -> tuple:
    return (run["image"], len(run["apply"]), -run["smin"], -run["smax"])


def superres_pair_factors_section(runs: list[dict], main: dict | None) -> list[str]:
    """Super-resolution trained on pairs made at other factors (``superres_pair_factors_*.json``)."""
    runs = sorted(runs, key=_pair_factors_order)
    table = {(r["image"], r["method"]): r for r in main["rows"]} if main else {}
    own = {r["image"]: r for r in runs if r["smin"] == r["smax"] == 2 and r["apply"] == [2.0]}
    agree = [abs(r["psnr"] - table[(i, "ours")]["psnr"]) for i, r in own.items() if (i, "ours") in table]
    lines = ["### Training pairs at smaller factors",
             "",
             "The pairs ours learns from are the small image downscaled once more by 2, which on an atomic lattice leaves "
             "columns about a pixel wide. Here each batch's pairs were made at a factor drawn uniformly from a range (a box "
             "average over s x s pixels with exact fractional areas, upsampled bicubically back), everything else as "
             "`emssl finetune --task superres` (bundled weights, 600 steps, seed 0); the network was then applied once at x2, "
             "or in two steps of x1.41 (gradual upsampling, each step bicubic then the network). Pairs at 2 is the package's own "
             "training in the same script (the whole image at once, no tiling)"
             + (f": {max(agree):.2f} dB or closer to the main table's one-view ours on the same images" if agree else "")
             + (" (these runs are the network alone; the main table's ours adds the back-projection after prediction)"
                if main and main.get("back_projection") else "")
             + ". PSNR in dB, one view:",
             "",
             "| image | pair factors | applied | PSNR | minus bicubic | minus pairs at 2 | main table ours |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        pairs = _pair_factors(r)
        applied = " then ".join(f"{f:.3g}" for f in r["apply"])
        base = own.get(r["image"])
        versus = f"{r['psnr'] - base['psnr']:+.2f}" if base and base is not r else "-"
        ours = table.get((r["image"], "ours"))
        name = f"{r['image']} (held out)" if r["image"] in r.get("held_out", []) else r["image"]
        lines.append(f"| {name} | {pairs} | {applied} | {r['psnr']:.2f} | {r['gain']:+.2f} | {versus} | "
                     + (f"{ours['psnr']:.2f} |" if ours else "- |"))
    for low in sorted({r["smin"] for r in runs if r["smin"] < 2 and r["apply"] == [2.0]}, reverse=True):
        diffs = [(r["image"], r["psnr"] - own[r["image"]]["psnr"]) for r in runs
                 if r["image"] in own and r["apply"] == [2.0] and (r["smin"], r["smax"]) == (low, 2.0)]
        if diffs:
            lines += ["", f"Measured: pairs at {low:.3g}-2 minus pairs at 2: " + ", ".join(f"{i} {d:+.2f} dB" for i, d in diffs)
                      + "."]
    steps = [(f"{r['image']} (pairs at {_pair_factors(r)})", r["psnr"] - own[r["image"]]["psnr"])
             for r in runs if r["image"] in own and len(r["apply"]) > 1]
    if steps:
        lines += ["", "Applied in two steps, minus pairs at 2 applied once: " + ", ".join(f"{i} {d:+.2f} dB" for i, d in steps)
                  + "."]
    lines += _runs_footer(runs, env="EMSSL_DATA=../shared/data PYTHONPATH=src")
    return lines


def superres_headroom_section(run: dict, main: dict | None) -> list[str]:
    """Linear filters against the reference (``superres_headroom.json``): how much x2 super-resolution can gain."""
    rows, big = run["rows"], str(max(run["sizes"]))
    table = {(r["image"], r["method"]): r for r in main["rows"]} if main else {}
    sizes = " / ".join(f"K{k}" for k in run["sizes"])
    lines = ["### How much can x2 super-resolution gain? Linear filters fitted to the answer",
             "",
             "Gains over bicubic upsampling in dB, same images and downscaling as the table above. oracle_linear: per output "
             f"phase, the least-squares K x K filter on the small image fitted to the reference itself (K{big}; in brackets "
             "fitted on the top half and scored on the bottom half). It uses the answer, so no user has it: it bounds what any "
             "linear upsampler can reach. zero_shot_linear: the same filter fitted on the pairs ours trains on (the small image "
             "downscaled once more -> the small image) and applied to the small image: the premise of ours, that the image "
             f"looks alike one scale up, with a linear model ({sizes}: a larger filter sees more of the structure). ours_tta: "
             "the main table (a network, not linear).",
             "",
             f"| image | held out | bicubic dB | back_projection | oracle_linear K{big} (split) | zero_shot_linear {sizes} | ours_tta |",
             "|---|---|---|---|---|---|---|"]
    for image, r in rows.items():
        ours = table.get((image, "ours_tta"))
        ours_text = f"{ours['psnr'] - r['bicubic']:+.2f}" if ours else "-"
        zero = " / ".join(f"{r['zero_shot_linear'][str(k)]:+.2f}" for k in run["sizes"])
        lines.append(f"| {image} | {'yes' if image in run['held_out'] else 'no'} | {r['bicubic']:.2f} | "
                     f"{r['back_projection']:+.2f} | {r['oracle_linear'][big]:+.2f} ({r['oracle_linear_split'][big]:+.2f}) | "
                     f"{zero} | {ours_text} |")
    short = [i for i, r in rows.items() if r["oracle_linear"][big] < 1.0]
    unlike = [i for i, r in rows.items() if r["zero_shot_linear"][big] < 0.0]
    lines += ["", f"Measured: the best linear filter, fitted to the reference, stays below +1 dB on {', '.join(short) or 'none'}; "
              f"the filter learnt one scale down loses against bicubic at K{big} on {', '.join(unlike) or 'none'}."]
    missed = [i for i in rows if (i, "ours_tta") in table and (i, "bicubic") in table
              and table[(i, "ours_tta")]["psnr"] - table[(i, "bicubic")]["psnr"] < 1.0]
    if missed:
        edges = rows[missed[0]]["bands"]["edges"]
        names = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
        lines += ["", "Where the error is on the images below the target (mean squared value x 1e6 per frequency band, "
                  "cycles per pixel of the reference, max-norm; the small image holds up to 0.25): the reference's own "
                  "energy in the band (its mean taken out) and the error of each method there (the bands add up to the "
                  "variance and the mean squared error).", "",
                  "| image | what | " + " | ".join(names) + " | total |", "|---|---|" + "---|" * (len(names) + 1)]
        for image in missed:
            bands = rows[image]["bands"]
            for what in ("reference", "bicubic", "back_projection", "oracle_linear"):
                values = bands[what]
                lines.append(f"| {image} | {what} | " + " | ".join(f"{v * 1e6:.1f}" for v in values) + f" | {sum(values) * 1e6:.1f} |")
    lines += ["", f"Device: {run['device']}. Command (with `EMSSL_DATA=../shared/data PYTHONPATH=src` in front): "
              f"`{run['command']}`."]
    return lines


def error_bands_section(runs: list[dict]) -> list[str]:
    """Where the denoising error is (``error_bands_denoise*.json``, ``benchmarks/denoise_error_bands.py``)."""
    run = runs[0]
    bands = run["bands_px"]
    names = [f"< {bands[0]}"] + [f"{a}-{b}" for a, b in zip(bands, bands[1:])] + [f"> {bands[-1]}"]
    lowpass = 16 if 16 in run["lowpass_px"] else run["lowpass_px"][0]
    lines = ["### Where the denoising error is",
             "",
             f"BM3D and ours (the defaults, {run['steps']} steps; noise seed 0: the main table's runs again, seed 1: "
             "images of \"Another noise draw\") with the "
             "squared error split into spatial bands by differences of Gaussian low-passes (sigma in px; mean square of "
             "each band x 1e-6); leak: the regression coefficient of the error on the true noise, how much of a pixel's own "
             "noise is passed through; bias: the mean error over the bright half of the pixels (clean above the median) "
             f"and the dark half; and the PSNR after adding back the Gaussian low-pass (sigma {lowpass} px) of the residual, "
             "noisy minus denoised, which has zero mean where only noise was removed (applied here to the saved outputs; "
             "since then the package's default, \"Mean correction\" below). Ours is the network's output without it:",
             "",
             "| image | seed | method | PSNR | " + " | ".join(f"{n} px" for n in names) + " | leak | bias bright / dark | "
             f"+ low-pass {lowpass} px of the residual |",
             "|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for run in runs:
        for row in run["rows"]:
            lines.append(f"| {row['image']} | {run['seed']} | {row['method']} | {row['psnr']:.2f} | "
                         + " | ".join(f"{b:.1f}" for b in row["band_mse_1e6"])
                         + f" | {row['leak']:.3f} | {row['bias_bright']:+.4f} / {row['bias_dark']:+.4f} | "
                           f"{row[f'lowpass_{lowpass}']:.2f} ({row[f'lowpass_{lowpass}'] - row['psnr']:+.2f}) |")
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src")
    return lines


def mean_correction_section(runs: list[dict], neighbour: list[dict] | None = None, before: list[dict] | None = None) -> list[str]:
    """The mean correction on every image and both noise draws (``error_bands_*.json``: ours without it, then with it).

    ``neighbour``: runs with one neighbour shown and the correction (``mean_correction_neighbour_*.json``), beside
    ``before``, the same runs without it (``unleaked_neighbour_denoise_*.json``).
    """
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for run in runs:
        for row in run["rows"]:
            cells.setdefault((row["image"], run["seed"]), {})[row["method"]] = row
    sigmas = runs[0]["lowpass_px"]
    order = ("stem_adf", "sem_aquami", "stem_detector", "sem_nanowires", "sem_nanowires_05", "sem_nanowires_12",
             "sstem_stack1", "stem_abf")
    keys = sorted(cells, key=lambda k: (k[0] in HELD_OUT, order.index(k[0]) if k[0] in order else 99, k[0], k[1]))
    lines = ["### Mean correction",
             "",
             "The blind-spot loss is dominated by the noise, so a slowly varying offset of the output costs almost "
             "nothing in training and is barely trained away (\"Where the denoising error is\": on the detector image "
             "the error coarser than 16 px is 2.4x BM3D's). Since 0.1.0 a self-supervised denoiser adds back, after "
             "prediction, the Gaussian low-pass (sigma 16 px by default, `emssl finetune --mean-correction`) of what it "
             "removed, noisy minus denoised, which has zero mean where only noise was removed. On every image and both noise "
             "draws, the network's output (the default training, 8-view) and the same output corrected with each sigma; "
             "BM3D from the same run on the same noisy image (PSNR in dB):",
             "",
             "| image | held out | seed | BM3D | ours, uncorrected | " + " | ".join(f"corrected, {s} px" for s in sigmas)
             + " | change at 16 px | corrected (16 px) minus BM3D | error > 16 px before, ours / BM3D (x 1e-6) |",
             "|---|---|---|---|---|" + "---|" * len(sigmas) + "---|---|---|"]
    changes: dict[int, list[float]] = {s: [] for s in sigmas}
    margins = []
    for image, seed in keys:
        methods = cells[(image, seed)]
        ours, bm3d = methods.get("ours_tta"), methods.get("bm3d")
        if ours is None or bm3d is None:
            continue
        for s in sigmas:
            changes[s].append(ours[f"lowpass_{s}"] - ours["psnr"])
        margins.append(ours["lowpass_16"] - bm3d["psnr"])
        lines.append(f"| {image} | {'yes' if image in HELD_OUT else 'no'} | {seed} | {bm3d['psnr']:.2f} | {ours['psnr']:.2f} | "
                     + " | ".join(f"{ours[f'lowpass_{s}']:.2f}" for s in sigmas)
                     + f" | {ours['lowpass_16'] - ours['psnr']:+.2f} | {margins[-1]:+.2f} | "
                       f"{ours['band_mse_1e6'][-1]:.1f} / {bm3d['band_mse_1e6'][-1]:.1f} |")
    if margins:
        lines += ["", f"Over the {len(margins)} runs, change by sigma: " + "; ".join(
            f"{s} px mean {sum(v) / len(v):+.3f} dB (from {min(v):+.2f} to {max(v):+.2f})" for s, v in changes.items())
            + f". With the correction at 16 px, ours minus BM3D is at least +0.5 dB on {sum(m >= 0.5 for m in margins)} "
              f"of {len(margins)} and below BM3D on {sum(m < 0 for m in margins)}. What it gains follows the error coarser "
              "than 16 px the network left (last column), as a share of its whole error: that offset comes and goes from one training run to the next "
              "(the same image with another noise draw), and where it is absent the correction changes next to nothing."]
    earlier = {(r["rows"][0]["image"], r.get("seed", 0)): r for r in before or [] if not _correction(r)}
    for run in neighbour or []:
        image, seed = run["rows"][0]["image"], run.get("seed", 0)
        now = next(r for r in run["rows"] if r["method"] == "ours_tta")
        old = earlier.get((image, seed))
        was = next((r for r in old["rows"] if r["method"] == "ours_tta"), None) if old else None
        bm3d = cells.get((image, seed), {}).get("bm3d")
        lines += ["", f"With one neighbour shown (`--mask-replace neighbour`), {image}, seed {seed}: {now['psnr']:.2f} dB "
                  "(8-view) with the correction"
                  + (f", {was['psnr']:.2f} without it ({now['psnr'] - was['psnr']:+.2f})" if was else "")
                  + (f"; minus BM3D {now['psnr'] - bm3d['psnr']:+.2f} dB" if bm3d else "")
                  + f". Command: `{_denoise_command(run)}`."]
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src")
    return lines


def _leak_default_note(run: dict, cell: dict, images: list[str]) -> list[str]:
    """When the main table's leak-correction share is not the current default: ours at the default, same networks.

    The ``leak_correction_seed0_*.json`` runs predict every share with the networks the main table's
    command trains (training is deterministic at one thread), so they give the ours rows at the default.
    """
    from napari_emssl.config import LEAK_CORRECTION

    if "leak_correction" not in run or _leak(run) == LEAK_CORRECTION:
        return []
    found = {}
    for path in sorted((HERE / "results").glob("leak_correction_seed0_*.json")):
        for row in json.loads(path.read_text())["rows"]:
            if row["method"] != "bm3d" and row["mean_correction"] and row["leak_correction"] == LEAK_CORRECTION:
                found[(row["image"], row["method"])] = row["psnr"]
    parts = [f"{i} {found[(i, 'ours')]:.2f} / {found[(i, 'ours_tta')]:.2f} dB ({found[(i, 'ours_tta')] - best:+.2f} vs the "
             f"best baseline)" for i in images if (i, "ours_tta") in found
             for best in [max(cell[(i, m)]["psnr"] for m in ("nlm", "bm3d", "n2v", "n2v_long") if (i, m) in cell)]]
    if not parts:
        return []
    return ["", f"The ours rows above were measured with leak correction {_leak(run):g}; the default is now "
            f"{LEAK_CORRECTION:g} (\"Leak correction\" below: it loses less on images with pixel-scale detail). The same "
            f"networks at {LEAK_CORRECTION:g}, one view / 8-view: " + ", ".join(parts) + ". ours_random was not measured "
            "at the new default."]


FIXED_LEAK = 0.5  # the default leak-correction share before "auto"


def leak_correction_section(runs: list[dict]) -> list[str]:
    """The leak correction at every share, on every image and noise draw (``leak_correction_seed*.json``)."""
    LEAK_CORRECTION = FIXED_LEAK  # noqa: N806 - the fixed default this section chose

    order = ("stem_adf", "sem_aquami", "stem_detector", "sem_nanowires", "sem_nanowires_05", "sem_nanowires_12",
             "sstem_stack1", "stem_abf")
    runs = sorted(runs, key=lambda r: (r["rows"][0]["image"] in HELD_OUT, order.index(r["rows"][0]["image"])
                                       if r["rows"][0]["image"] in order else 99, r["seed"]))
    shares = runs[0]["shares"]
    lines = ["### Leak correction",
             "",
             "A network that sees every pixel at inference lets a share of that pixel's own noise through (\"Where the "
             "denoising error is\": the leak, 0.06 on the detector image against BM3D's 0.03, and the finest band 2.7x "
             "BM3D's). Since 0.1.0 a self-supervised denoiser measures, with one more network pass on the input plus a "
             "random +-0.01 probe, the weight it gives each pixel's own value (averaged over 8 px) and takes out the "
             f"share f of it (`emssl finetune --leak-correction`; {LEAK_CORRECTION:g} was the default until the share "
             "chosen per image, next section): f = 1 is the estimate from "
             "the neighbours alone, f = 0 the network's output. One training per image and noise draw, then every share "
             "predicted with that same network as `emssl predict` does, with the mean correction (16 px) on; 8-view PSNR "
             "in dB; weight: the mean own-pixel weight the correction measured; BM3D from the same run on the same noisy "
             "image:",
             "",
             "| image | held out | seed | weight | BM3D | " + " | ".join(f"f = {f:g}" for f in shares)
             + f" | change at f = {LEAK_CORRECTION:g} | f = {LEAK_CORRECTION:g} minus BM3D |",
             "|---|---|---|---|---|" + "---|" * len(shares) + "---|---|"]
    changes: dict[float, list[float]] = {f: [] for f in shares}
    one_view: dict[float, list[float]] = {f: [] for f in shares}
    margins, seconds = [], []
    for run in runs:
        rows = run["rows"]
        image = rows[0]["image"]
        bm3d = next(r for r in rows if r["method"] == "bm3d")
        cell = {(r["method"], r["leak_correction"]): r for r in rows
                if r["method"] != "bm3d" and r["mean_correction"]}
        base, base_one = cell[("ours_tta", 0.0)]["psnr"], cell[("ours", 0.0)]["psnr"]
        for f in shares:
            changes[f].append(cell[("ours_tta", f)]["psnr"] - base)
            one_view[f].append(cell[("ours", f)]["psnr"] - base_one)
        default = cell[("ours_tta", LEAK_CORRECTION)]["psnr"]
        margins.append(default - bm3d["psnr"])
        seconds.append((cell[("ours", LEAK_CORRECTION)]["predict_seconds"], cell[("ours", 0.0)]["predict_seconds"]))
        lines.append(f"| {image} | {'yes' if image in HELD_OUT else 'no'} | {run['seed']} | {cell[('ours_tta', 0.0)]['weight']:.3f} "
                     f"| {bm3d['psnr']:.2f} | " + " | ".join(f"{cell[('ours_tta', f)]['psnr']:.2f}" for f in shares)
                     + f" | {default - base:+.2f} | {margins[-1]:+.2f} |")
    lines += ["", f"Over the {len(runs)} runs, change from f = 0, 8-view: " + "; ".join(
        f"f = {f:g} mean {sum(v) / len(v):+.3f} dB (from {min(v):+.2f} to {max(v):+.2f})" for f, v in changes.items() if f)
        + ". One view: " + "; ".join(f"f = {f:g} mean {sum(v) / len(v):+.3f} dB (from {min(v):+.2f} to {max(v):+.2f})"
                                     for f, v in one_view.items() if f)
        + f". With the share {LEAK_CORRECTION:g}, ours minus BM3D is at least +0.5 dB on {sum(m >= 0.5 for m in margins)} of "
          f"{len(margins)} runs and below BM3D on {sum(m < 0 for m in margins)}. The probe pass costs one more pass of "
          f"the network: one view took {sum(a for a, _ in seconds) / len(seconds):.1f} s with it and "
          f"{sum(b for _, b in seconds) / len(seconds):.1f} s without it on these 512 x 512 images (one thread, mean). "
          "How 0.5 was chosen as the fixed default: 0.5 and 0.75 gain about the same on average with 8 views, 0.5 more with one view "
          "(then the default for stacks), and 0.5 loses far less where the correction hurts (the worst runs above; 0.75 "
          "was the default briefly). The weight does not tell where "
          "the correction helps (stem_abf: 0.054, like the detector image's, but -0.12 dB at f = 0.75); the next "
          "section chooses the share per image from the noisy image and the network instead. The networks of seed 0 on the four "
          "main images are those of \"Where the denoising error is\" (the same command trains the same network: "
          "training is deterministic at one thread; f = 0 without the mean correction gives its PSNR again)."]
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src")
    return lines


VIEW_METHODS = (("one", "one view"), ("one_shift11", "+ shifted 1 px"), ("one_shifts", "4 shifts"),
                ("one_mirror", "+ mirror"), ("stack_default", "stacks' default"), ("tta", "8 flips/rotations"), ("tta_shifts", "8 x 4 shifts"))


def denoise_views_section(runs: list[dict], bilinear: list[dict] | None = None, main: dict | None = None) -> list[str]:
    """Denoising with the predictions of several views averaged (``denoise_views_*.json``); ``bilinear``: runs of a
    decoder with bilinear upsampling from random weights (``views_bilinear_*.json``), next to ``main``'s ours_random."""
    order = ("stem_adf", "sem_aquami", "stem_detector", "sem_nanowires")
    runs = sorted(runs, key=lambda r: (r["rows"][0]["image"] in HELD_OUT, order.index(r["rows"][0]["image"])
                                       if r["rows"][0]["image"] in order else 99, r["crop"] or 0, r["seed"]))
    lines = ["### Which views to average: the period-2 pattern of one view",
             "",
             "The denoiser's last upsampling is a 2 x 2 transposed convolution with stride 2, which can leave a pattern "
             "that repeats every 2 pixels. With one view (the default for stacks before this section) part of the error is that pattern; a "
             "mirrored view or one shifted by one pixel has it with the opposite sign, so averaging cancels it. One "
             "training per image (the defaults, seed 0; on the four main images the networks of the main table), then each set of views predicted "
             "as `emssl predict` does (leak and mean corrections on) and averaged; stacks' default: what `emssl predict` now "
             "gives a stack (the image as a one-slice stack: the image and its mirror averaged, then corrected once); passes: network passes per image "
             "without the probe pass; PSNR in dB; period-2 error: the error near the three Nyquist frequencies "
             "((-1)^(x+y), (-1)^y, (-1)^x, each demodulated with a 2 px Gaussian), summed, as a share of the whole "
             "mean square error:",
             "",
             "| image | held out | size | BM3D | " + " | ".join(f"{label} ({_views_passes(runs, m)})" for m, label in VIEW_METHODS)
             + " | period-2 error, one view / 8 views / BM3D |",
             "|---|---|---|---|" + "---|" * len(VIEW_METHODS) + "---|"]
    gains: dict[str, list[float]] = {m: [] for m, _ in VIEW_METHODS[1:]}
    for run in runs:
        cell = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        size = f"{run['crop']} x {run['crop']}" if run["crop"] else "512 x 512"
        for m in gains:
            if not run["crop"]:
                gains[m].append(cell[m]["psnr"] - cell["one"]["psnr"])
        share = {m: sum(cell[m]["period2_1e6"].values()) / cell[m]["mse_1e6"] for m in ("one", "tta", "bm3d")}
        lines.append(f"| {image} | {'yes' if image in HELD_OUT else 'no'} | {size} | {cell['bm3d']['psnr']:.2f} | "
                     + " | ".join(f"{cell[m]['psnr']:.2f}" for m, _ in VIEW_METHODS)
                     + f" | {share['one']:.1%} / {share['tta']:.1%} / {share['bm3d']:.1%} |")
    labels = dict(VIEW_METHODS)
    lines += ["", "Change from one view, whole images: " + "; ".join(
        f"{labels[m]} mean {sum(v) / len(v):+.2f} dB (from {min(v):+.2f} to {max(v):+.2f})" for m, v in gains.items() if v) + ".",
        "",
        "What it says: the pattern is a large share of the one-view error only where the rest of the error is small (the "
        "smooth detector image); there a second view, mirrored or shifted by one pixel, wins more than half of what the "
        "8-view average wins, at a quarter of its passes. On the other images a mirrored view gains more than a shifted "
        "one: besides the pattern it averages the network's other orientation-dependent errors. The 8-view average "
        "cancels the pattern on even-sized images (shifts on top of it gain a few hundredths of a dB for four times the "
        "passes), less on odd-sized ones (the 511 x 511 crop). Since these runs, stacks and images bigger than 4096 x 4096 "
        "get the image and its mirror by default (`tta=None`; `--no-tta` gives one view, `--tta` the 8): "
        f"{min(gains['stack_default']):+.2f} to {max(gains['stack_default']):+.2f} dB over one view above, for twice the "
        "network passes of one view (with the leak correction's probe pass 3 instead of 2; "
        f"{_mean_seconds(runs, 'one'):.1f} s and {_mean_seconds(runs, 'stack_default'):.1f} s per 512 x 512 image here, "
        "one thread, mean). "
        "On stacks of smooth images *Average flips* (`--tta`) is still worth its time."]
    for run in bilinear or []:
        cell = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        default = {r["method"]: r for r in (main or {}).get("rows", []) if r["image"] == image}  # later rows replace earlier
        if not {"ours_random", "ours_random_tta"} <= set(cell) or not {"ours_random", "ours_random_tta"} <= set(default):
            continue
        lines[-1] += (f" The pattern's source, the transposed convolution, replaced by bilinear upsampling (`--arch-kwargs "
                      f"'{json.dumps(run['arch_kwargs'])}'`, from random weights: the bundled weights are for the "
                      f"transposed convolution): on {image} {cell['ours_random']['psnr']:.2f} dB with one view and "
                      f"{cell['ours_random_tta']['psnr']:.2f} with 8, against {default['ours_random']['psnr']:.2f} and "
                      f"{default['ours_random_tta']['psnr']:.2f} for the default decoder from random weights (main table): "
                      f"{_compare(cell['ours_random']['psnr'] - default['ours_random']['psnr'], cell['ours_random_tta']['psnr'] - default['ours_random_tta']['psnr'])}"
                      f"; 8 views still add {cell['ours_random_tta']['psnr'] - cell['ours_random']['psnr']:.2f} dB there "
                      f"(command: `{run['command']}`).")
    lines += ["",
        "The networks were trained once and reused by the runs (`--save-model` / `--model`); each command below trains "
        "its network again (training is deterministic at one thread)."]
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src")
    return lines


def superres_views_lines(runs: list[dict], main: dict | None) -> list[str]:
    """Super-resolution x2 with one view, the stacks' default and 8 views (``views_superres_*.json``), next to the
    super-resolution table's bicubic."""
    order = ("stem_adf", "sem_aquami", "stem_detector", "sem_nanowires")
    runs = sorted(runs, key=lambda r: order.index(r["rows"][0]["image"]) if r["rows"][0]["image"] in order else 99)
    bicubic = {r["image"]: r["psnr"] for r in (main or {}).get("rows", []) if r["method"] == "bicubic"}
    lines = ["", "The same for super-resolution x2 (`emssl finetune --task superres` defaults, one training per image on the "
             "area-downscaled image as in \"Super-resolution x2\" below; PSNR in dB against the reference; bicubic from "
             "that section's table):", "",
             "| image | bicubic | one view | stacks' default (2 views) | 8 flips/rotations | stacks' default minus one view |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        cell = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        base = f"{bicubic[image]:.2f}" if image in bicubic else "-"
        lines.append(f"| {image} | {base} | {cell['ours']['psnr']:.2f} | {cell['ours_stack']['psnr']:.2f} | "
                     f"{cell['ours_tta']['psnr']:.2f} | {cell['ours_stack']['psnr'] - cell['ours']['psnr']:+.2f} |")
    lines += ["", f"Device: {runs[0]['device']}, two runs at a time (one per core). Commands (with "
              "`EMSSL_DATA=../shared/data PYTHONPATH=src` in front): " + " and ".join(f"`{r['command']}`" for r in runs) + "."]
    return lines


def _mean_seconds(runs: list[dict], method: str) -> float:
    seconds = [r["predict_seconds"] for run in runs if not run["crop"] for r in run["rows"] if r["method"] == method]
    return sum(seconds) / len(seconds)


def _compare(one: float, eight: float) -> str:
    """Words for the changes ``one`` (one view) and ``eight`` (8 views), dB."""
    if one < 0 and eight < 0:
        return f"worse with both ({one:+.2f} / {eight:+.2f} dB)"
    if one > 0 and eight > 0:
        return f"better with both ({one:+.2f} / {eight:+.2f} dB)"
    return f"{one:+.2f} dB with one view, {eight:+.2f} with 8"


def _views_passes(runs: list[dict], method: str) -> int:
    return next(r["passes"] for r in runs[0]["rows"] if r["method"] == method)


def unleaked_section(runs: list[dict], earlier: list[dict], main: dict) -> list[str]:
    """One neighbour shown, measured again after masked neighbours were excluded (``unleaked_*.json``)."""
    def key(run: dict) -> tuple:
        return (run["rows"][0]["image"], run.get("mask_fraction"), run.get("mask_replace", "mean"), _loss(run),
                run.get("seed", 0), run.get("steps"))

    before = {key(r): r for r in earlier if _has_ours(r)}
    table = {(r["image"], r["method"]): r for r in main["rows"]}
    lines = ["### One neighbour shown, without masked neighbours",
             "",
             "Until this fix, a hidden pixel shown one of its 8 neighbours could be shown a neighbour that was itself "
             "hidden, and so showed a neighbour's value in turn, possibly the first pixel's own: the network could read "
             "a hidden pixel's value next door. The more pixels are hidden, the more often (with a quarter hidden, "
             "often). The mean replacement, the default, always left masked neighbours out and is not affected. The "
             "rows with one neighbour shown in the sections above were measured before the fix; the same runs again "
             "(8-view PSNR in dB):",
             "",
             "| image | mask fraction | before the fix | after | change | after minus the best baseline | seconds |",
             "|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=key):
        cells = {r["method"]: r for r in run["rows"]}
        old = before.get(key(run))
        old_tta = next((r for r in old["rows"] if r["method"] == "ours_tta"), None) if old else None
        image, tta = run["rows"][0]["image"], cells.get("ours_tta")
        best = _best_baseline(table, image, "denoise")
        if tta is None or best is None:
            continue
        was = f"{old_tta['psnr']:.2f}" if old_tta else "-"
        change = f"{tta['psnr'] - old_tta['psnr']:+.2f}" if old_tta else "-"
        lines.append(f"| {image} | {run['mask_fraction']:g} | {was} | {tta['psnr']:.2f} | {change} | "
                     f"{tta['psnr'] - best['psnr']:+.2f} vs {best['method']} | {cells['ours']['seconds']:.0f} |")
    lines += _runs_footer(runs)
    return lines


def arch_section(runs: list[dict], main: dict | None = None) -> list[str]:
    """Denoising with another architecture (``arch_denoise_*.json``, ``--arch``), beside the default's main-table rows."""
    lines = ["### Another architecture: HRNet",
             "",
             "The same self-supervised denoising with `--arch hrnet_w18_small` instead of the default residual U-Net. "
             "HRNet's head works at a quarter of the input resolution; `refine_channels` (default 16) adds the "
             "full-resolution refinement of its output (0: without it, as before it existed). Same noise, loss and "
             "steps as the main table; PSNR in dB against the clean image (8-view: the default prediction for a "
             "single 2D image):",
             "",
             "| image | network | weights | PSNR | 8-view | SSIM | seconds |",
             "|---|---|---|---|---|---|---|"]

    def row_line(image: str, net: str, weights: str, row: dict, tta: dict | None) -> str:
        views = f"{tta['psnr']:.2f}" if tta else "-"
        return f"| {image} | {net} | {weights} | {row['psnr']:.2f} | {views} | {row['ssim']:.3f} | {row['seconds']:.0f} |"

    entries = []  # (image, network, weights, row, 8-view row)
    for run in runs:
        net = run.get("arch") or "default"
        if net.startswith("hrnet"):
            net += " without refinement" if (run.get("arch_kwargs") or {}).get("refine_channels") == 0 else " with refinement"
        cells = {(r["image"], r["method"]): r for r in run["rows"]}
        for (image, method), row in cells.items():
            if method in ("ours", "ours_random"):
                weights = "random" if method == "ours_random" else (row.get("init") or "bundled")
                entries.append((image, net, weights, row, cells.get((image, f"{method}_tta"))))
    table = {(r["image"], r["method"]): r for r in main["rows"]} if main else {}
    views = {(image, net, weights): (tta or row)["psnr"] for image, net, weights, row, tta in entries}
    gains = []
    for image in dict.fromkeys(e[0] for e in entries):
        lines += [row_line(*e) for e in sorted(entries, key=lambda e: (e[1], e[2])) if e[0] == image]
        if (image, "ours") in table:
            lines.append(row_line(image, "residual U-Net (default)", "bundled", table[(image, "ours")],
                                  table.get((image, "ours_tta"))))
        best = _best_baseline(table, image, "denoise")
        if best:
            lines.append(row_line(image, f"{best['method']} (best baseline)", "-", best, None))
        pair = [views.get((image, f"hrnet_w18_small {w} refinement", "random")) for w in ("with", "without")]
        if None not in pair:
            gains.append(f"{image} {pair[0] - pair[1]:+.2f} dB")
    if gains:
        lines += ["", "Measured: the refinement, both from random weights (8-view): " + ", ".join(gains) + "."]
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=src")
    return lines


def plot_restoration(run: dict) -> str:
    rows = run["rows"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["image"], r["method"]): r["psnr"] for r in rows}
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(images))]
        ax.bar(xs, [cell.get((im, m), 0.0) for im in images], width=width, label=m)
    ax.set_xticks(range(len(images)), images, fontsize=8)
    ax.set_ylabel("PSNR (dB)")
    lo = min(cell.values())
    ax.set_ylim(max(0.0, lo - 3.0), max(cell.values()) + 1.5)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    name = f"images/restoration_{run['task']}.png"
    fig.savefig(DOCS / name, dpi=120)
    return name


def plot_leak(runs: list[dict]) -> str:
    """8-view PSNR minus BM3D's against the leak-correction share, one line per image and noise draw."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for run in runs:
        rows = run["rows"]
        bm3d = next(r for r in rows if r["method"] == "bm3d")["psnr"]
        cell = {r["leak_correction"]: r["psnr"] for r in rows
                if r["method"] == "ours_tta" and r["mean_correction"]}
        shares = sorted(cell)
        ax.plot(shares, [cell[f] - bm3d for f in shares], marker="o", label=f"{rows[0]['image']} (seed {run['seed']})")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("leak-correction share f")
    ax.set_ylabel("ours (8-view) minus BM3D (dB)")
    ax.legend(fontsize=7, ncol=2)
    return _save_plot(fig, "images/leak_correction.png")


def plot_views(runs: list[dict]) -> str:
    """PSNR minus one view's against the network passes, one line per image (whole images)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for run in runs:
        if run["crop"]:
            continue
        cell = {r["method"]: r for r in run["rows"]}

        def gains(methods: tuple[str, ...]) -> tuple[list[int], list[float]]:
            return [cell[m]["passes"] for m in methods], [cell[m]["psnr"] - cell["one"]["psnr"] for m in methods]

        solid = ax.plot(*gains(("one", "one_mirror", "tta", "tta_shifts")), marker="o", label=run["rows"][0]["image"])[0]
        ax.plot(*gains(("one", "one_shift11", "one_shifts")), ls="--", marker="o", color=solid.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 32], ["1", "2", "4", "8", "32"])
    ax.set_xlabel("network passes per image")
    ax.set_title("solid: + mirror, 8 flips/rotations, 8 x 4 shifts; dashed: 1 px shifts", fontsize=8)
    ax.set_ylabel("PSNR minus one view (dB)")
    ax.legend(fontsize=7, ncol=2)
    return _save_plot(fig, "images/denoise_views.png")


REPLACE_TEXT = {"mean": "the mean of their 8 neighbours", "neighbour": "one of their 8 neighbours"}
LOSS_TEXT = {"re-visible": "the re-visible loss", "blind-spot": "the blind-spot loss alone"}


def _fit_seconds(row: dict) -> float:
    """Training and one-view prediction (a row's ``seconds`` may also hold other predictions of the same run)."""
    if "train_seconds" in row and "predict_seconds" in row:
        return row["train_seconds"] + row["predict_seconds"]
    return row["seconds"]


def loss_section(revisible: dict, blind: dict, neighbour: list[dict] | None = None,
                 neighbour_blind: list[dict] | None = None, longer: list[dict] | None = None) -> list[str]:
    """Our denoiser trained with the re-visible loss against the blind-spot loss alone, same noise, steps and start.

    ``neighbour``: re-visible runs with ``--mask-replace neighbour`` (``revisible_neighbour_denoise_*.json``), compared
    with the blind-spot runs of that replacement (``blind_spot_replace_denoise_neighbour*.json``). ``longer``:
    re-visible runs with more steps (``revisible_longer_denoise_*.json``), compared with the rows above of the
    same image and replacement.
    """
    def cells(rows):  # later files replace earlier rows of the same image and method, as in the main table
        return {(row["image"], row["method"]): row for row in rows}

    main_rv, main_bs = cells(revisible["rows"]), cells(blind["rows"])
    variants = [("mean", main_rv, main_bs)]
    if neighbour and neighbour_blind:
        variants.append(("neighbour", cells([r for run in neighbour for r in run["rows"]]),
                         cells([r for run in neighbour_blind for r in run["rows"]])))
    lines = ["### Re-visible loss or the blind-spot loss alone",
             "",
             "The blind-spot loss trains the network only on pixels it cannot see; how it uses a pixel's own value, "
             "which plain inference gives it, is never trained (section \"What a masked pixel shows\": with the mean replacement it lets a "
             "share of it through, by chance). The re-visible loss (Blind2Unblind, Wang et al. 2022; `--denoise-loss`, "
             "default `re-visible`) adds a term on the same hidden pixels that ties the network's output for the "
             "unmasked patch to them, so that share is learned. Same noise (seed 0), start (bundled weights) and "
             f"{revisible['steps']} steps as the main table; PSNR in dB / seconds of training and one-view prediction:",
             "",
             "| image | masked pixels show | blind-spot loss: one view | 8-view | re-visible: one view | 8-view | "
             "change (8-view) | re-visible 8-view minus the best baseline |",
             "|---|---|---|---|---|---|---|---|"]
    changes = []
    for replace, rv, bs in variants:
        for i in dict.fromkeys(image for image, _ in rv):
            r1, r8, b1, b8 = rv.get((i, "ours")), rv.get((i, "ours_tta")), bs.get((i, "ours")), bs.get((i, "ours_tta"))
            if not (r1 and b1):
                continue
            best = _best_baseline(main_rv, i, "denoise")
            change = r8["psnr"] - b8["psnr"] if b8 and r8 else None
            if change is not None and replace == "mean":
                changes.append(change)
            lines.append(f"| {i} | {REPLACE_TEXT[replace]} | {b1['psnr']:.2f} / {_fit_seconds(b1):.0f} s | "
                         + (f"{b8['psnr']:.2f}" if b8 else "-") + f" | {r1['psnr']:.2f} / {_fit_seconds(r1):.0f} s | "
                         + (f"{r8['psnr']:.2f}" if r8 else "-") + " | " + (f"{change:+.2f}" if change is not None else "-")
                         + " | " + (f"{r8['psnr'] - best['psnr']:+.2f} vs {best['method']}" if best and r8 else "-") + " |")
    if changes:
        lines += ["", f"Measured: re-visible minus blind-spot loss (8-view, the mean replacement, the default), mean over "
                      f"the {len(changes)} images {sum(changes) / len(changes):+.2f} dB. The loss needs one more forward "
                      "pass per step (no backward): the training seconds above."]
    shown = {("mean", image, method): row for (image, method), row in main_rv.items()}
    shown.update({(variant[0], image, method): row for variant in variants[1:] for (image, method), row in variant[1].items()})
    for run in longer or []:
        for row in run["rows"]:
            base = shown.get((run["mask_replace"], row["image"], row["method"]))
            if row["method"] != "ours_tta" or base is None or base["steps"] == row["steps"]:
                continue
            one = next((r for r in run["rows"] if r["image"] == row["image"] and r["method"] == "ours"), None)
            lines += ["", f"More steps: {row['image']}, masked pixels showing {REPLACE_TEXT[run['mask_replace']]}, "
                          f"re-visible loss, {row['steps']} steps instead of {base['steps']}: "
                          + (f"{one['psnr']:.2f} dB one view, " if one else "")
                          + f"{row['psnr']:.2f} dB 8-view ({row['psnr'] - base['psnr']:+.2f} dB), "
                          f"{_fit_seconds(row):.0f} s of training and prediction. Command: `{run['command']}`."]
    commands = [run["command"] for run in (neighbour or [])]
    if commands:
        lines += ["", "Commands of the re-visible rows: those of the main table, and "
                  + " and ".join(f"`{c}`" for c in commands) + "; the blind-spot rows: the main table's earlier runs "
                  "(`--denoise-loss blind-spot`) and those of section \"What a masked pixel shows\"."]
    return lines


def mask_replace_section(runs: list[dict], main: dict | None = None) -> list[str]:
    """Plain, 8-view and J-invariant inference after training with each replacement (``blind_spot_replace_*.json``;
    8-view results of the default replacement may come from the main table's runs with the same seed and steps)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs:
        for row in run["rows"]:
            cells.setdefault((row["image"], run["mask_replace"]), {})[row["method"]] = row["psnr"]
    for path in sorted((HERE / "results").glob("restoration_denoise*.json"), key=_run_order):  # same training, already in the table
        run = json.loads(path.read_text())
        if run.get("seed", 0) == runs[0]["seed"] and run["steps"] == runs[0]["steps"] and _loss(run) == _loss(runs[0]):
            for row in run["rows"]:
                key = (row["image"], run.get("mask_replace", "mean"))
                if row["method"] == "ours_tta" and key in cells:
                    cells[key].setdefault("ours_tta", row["psnr"])
    lines = ["### What a masked pixel shows: the mean of its 8 neighbours or one of them",
             "",
             "In self-supervised training a hidden pixel must show the network something other than its own value. "
             "The mean of the 8 neighbours (the default) is smoother than any real noisy pixel, so the network can tell "
             "the hidden pixels apart, and how it responds to a pixel's own value is never trained; one neighbour "
             "chosen at random (`--mask-replace neighbour`) looks like any other pixel. Plain inference shows the "
             "network every pixel's own value; J-invariant inference (Noise2Self) predicts each pixel while it is "
             "hidden as in training (16 passes, one per cell of the 4 x 4 blind-spot grid). Plain minus J-invariant "
             "is what the network gains or loses by seeing each pixel's own value, its noise and its fine detail. "
             f"Same noise (seed {runs[0]['seed']}) and training ({runs[0]['steps']} steps, bundled weights) as the "
             f"main table, with {LOSS_TEXT[_loss(runs[0])]}; PSNR in dB (8-view: the default prediction for a single 2D "
             "image):",
             "",
             "| image | masked pixel shows | plain inference | 8-view | J-invariant inference | plain minus J-invariant |",
             "|---|---|---|---|---|---|"]
    for (image, replace), cell in sorted(cells.items()):
        if "ours" in cell and "ours_jinv" in cell:
            tta = f"{cell['ours_tta']:.2f}" if "ours_tta" in cell else "-"
            lines.append(f"| {image} | {REPLACE_TEXT[replace]} | {cell['ours']:.2f} | {tta} | {cell['ours_jinv']:.2f} | "
                         f"{cell['ours'] - cell['ours_jinv']:+.2f} |")
    images = sorted({i for i, _ in cells})
    diff = [(i, cells[(i, "neighbour")]["ours"] - cells[(i, "mean")]["ours"]) for i in images
            if "ours" in cells.get((i, "neighbour"), {}) and "ours" in cells.get((i, "mean"), {})]
    if diff:
        lines += ["", "Measured: one neighbour minus the mean (plain inference): "
                  + ", ".join(f"{i} {d:+.2f} dB" for i, d in diff) + "."]
    if main:
        table = {(r["image"], r["method"]): r for r in main["rows"]}
        margins = []
        for (image, replace), cell in sorted(cells.items()):
            best = _best_baseline(table, image, "denoise")
            if "ours_tta" in cell and best:
                margins.append(f"{image} with {replace} {cell['ours_tta'] - best['psnr']:+.2f} dB vs {best['method']}")
        if margins:
            lines += ["", "Measured: 8-view minus the best baseline of the main table: " + ", ".join(margins) + "."]
    lines += _runs_footer(runs, "EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src")
    return lines


def mask_fraction_section(runs: list[dict], baselines: dict | None) -> list[str]:
    """The blind-spot share (``--mask-fraction``) of self-supervised denoising, per image, with and without TTA."""
    cells: dict[tuple[str, str], dict[float, float]] = {}
    fractions, device, commands = set(), runs[0]["device"], []
    for run in runs:
        fraction = float(run["mask_fraction"])
        fractions.add(fraction)
        commands.append(_denoise_command(run))
        for row in run["rows"]:
            cells.setdefault((row["image"], row["method"]), {})[fraction] = row["psnr"]
    fractions = sorted(fractions)
    best = {}
    if baselines:
        for row in baselines["rows"]:
            current = best.get(row["image"])
            if row["method"] in ("nlm", "bm3d", "n2v", "n2v_long") and (current is None or row["psnr"] > current[0]):
                best[row["image"]] = (row["psnr"], row["method"])
    lines = [
        "### Share of blind-spot pixels in self-supervised denoising",
        "",
        "The same denoising run (bundled GAN start, 600 steps, same noise as above, masked pixels showing "
        + " and ".join(sorted({REPLACE_TEXT[r.get("mask_replace", "mean")] for r in runs})) + ", "
        + " and ".join(sorted({LOSS_TEXT[_loss(r)] for r in runs})) + ") with "
        + " and ".join(f"{f:g}" for f in fractions) + " of the pixels of each patch hidden; PSNR in dB "
        "(`ours_tta`: the 8-view test-time average). The best classic or learned baseline of the table above is "
        "given for reference.",
        "",
        "| image | method | " + " | ".join(f"mask fraction {f:g}" for f in fractions) + " | best baseline |",
        "|---|---|" + "---|" * len(fractions) + "---|",
    ]
    for (image, method), values in sorted(cells.items()):
        ref = best.get(image)
        lines.append(f"| {image} | {method} | " + " | ".join(f"{values[f]:.2f}" if f in values else "-" for f in fractions)
                     + f" | {f'{ref[0]:.2f} ({ref[1]})' if ref else '-'} |")
    lines += ["", f"Device: {device}, two runs at a time (one per core, one thread each). Commands: "
              + "; ".join(f"`{c}`" for c in commands[:2]) + (f" and {len(commands) - 2} more like them" if len(commands) > 2 else "")]
    return lines


MODE_TEXT = {
    "end_to_end": "file to file (`emssl predict`: lazy read, batched tiles, TIFF written behind)",
    "tiled_in_memory": "tiled, stack in memory (no file I/O)",
    "naive_full": "naive: whole slice in one forward, no tiling or overlap",
    "tiled_512": "tiled, 512-pixel tiles",
    "tiled_torchscript": "tiled, TorchScript (trace + freeze)",
    "tiled_nchw": "tiled, NCHW convolutions (the layout before channels-last)",
    "end_to_end_host_tiling": "file to file, tiles cut and blended on the host (the CUDA path before device tiling)",
    "end_to_end_tile512": "file to file, 512-pixel tiles",
    "end_to_end_tile1024": "file to file, 1024-pixel tiles",
    "end_to_end_tile2048": "file to file, 2048-pixel tiles",
    "end_to_end_compile_tile1024": "file to file, `--compile`, 1024-pixel tiles (compilation counted)",
}


def throughput_section(runs: list[dict]) -> list[str]:
    lines = [
        "## Prediction throughput and memory (batch and big stacks)",
        "",
        "Megapixels per second for the default segmentation network (3 classes) and the default",
        "denoising network (same U-Net, one output), random weights, on a zlib-compressed uint8 TIFF",
        "stack; the fraction of peak is FLOPs per pixel (counted by `FlopCounterMode`) x pixels/s /",
        "the device's peak (on the CPU: its measured float32 matrix-multiply rate on the same threads).",
        "",
        "| device | model | GFLOP per megapixel | mode | s | megapixels/s | fraction of peak | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for task, entry in run["models"].items():
            for mode, m in entry["modes"].items():
                lines.append(f"| {run['device']} | {task} ({entry['arch']}) | {entry['flops_per_pixel'] / 1e3:.1f} | "
                             f"{MODE_TEXT.get(mode, mode)} | {m['seconds']:.1f} | {m['megapixels_per_s']:.3f} | "
                             f"{100 * m['fraction_of_peak']:.1f} % | `{run['command']}` |")
        lines.append("")
        lines.append(f"Peak ({run['device']}): {run['peak_kind']}. Stack: {' x '.join(map(str, run['stack']))} pixels.")
        mem = run.get("memory")
        if mem:
            lines += ["", f"Peak memory ({run['device']}): a float32 stack of {' x '.join(map(str, mem['stack_shape']))} "
                          f"({mem['input_mb']:.0f} MB in, {mem['output_mb']:.0f} MB of labels and class probabilities out: "
                          f"{(mem['input_mb'] + mem['output_mb']) / mem['budget_mb']:.1f} x a {mem['budget_mb']:.0f} MB budget) "
                          "streamed from file to file. Peak resident memory "
                          f"{mem['peak_rss_mb']:.0f} MB, of which {mem['model_loaded_rss_mb']:.0f} MB were there with the model "
                          f"loaded; prediction used **{mem['working_mb']:.0f} MB** over that (the network's activations for "
                          "a batch of tiles, a few slices in flight), and it does not grow with the stack: the resident "
                          f"memory after each slice peaked at {mem['rss_first_half_max_mb']:.0f} MB over the first half of "
                          f"the stack and {mem['rss_second_half_max_mb']:.0f} MB over the second "
                          f"(`{run.get('memory_command', run['command'])}`; the test suite checks the same on a smaller stack: "
                          "`tests/core/test_batch.py`)."]
        lines.append("")
    cuda = [run for run in runs if run.get("device_type") == "cuda"]
    if cuda:
        lines += gpu_throughput_lines(cuda[0])
    return lines


def gpu_throughput_lines(run: dict) -> list[str]:
    """What the GPU rows say: the network alone, where the rest of the time goes, the roofline target."""
    seg, den = run["models"]["segment"], run["models"]["denoise"]
    lines = ["### On the GPU: the network alone, and why file to file stays far below the roofline", "",
             "`network_only` is the network on a batch of tiles already on the GPU (bf16 autocast, channels-last), no",
             "reading, normalising, blending, copying back or writing: the most the rest of the pipeline could reach.", "",
             "| model | tiles | batch | compiled | megapixels/s | fraction of peak |", "|---|---|---|---|---|---|"]
    for task, entry in run["models"].items():
        for row in entry.get("network_only", []):
            lines.append(f"| {task} | {row['tile']} px | {row['batch']} | {'yes' if row['compiled'] else 'no'} | "
                         f"{row['megapixels_per_s']:.0f} | {100 * row['fraction_of_peak']:.1f} % |")
    start = _load_result("gpu/prediction_throughput_cuda_host_tiling.json")
    compiled = start["models"]["segment"]["modes"].get("end_to_end_compile_tile1024") if start else None
    compiled_net = next((r for r in (start or {}).get("models", {}).get("segment", {}).get("network_only", [])
                         if r["compiled"]), None)
    e2e = seg["modes"]["end_to_end"]["megapixels_per_s"], den["modes"]["end_to_end"]["megapixels_per_s"]
    lines += ["", f"- The default network does {seg['flops_per_pixel'] / 1e3:.0f} kFLOP per output pixel: even alone, with "
              f"its small channel counts, it keeps the H200 at {100 * seg['network_only'][0]['fraction_of_peak']:.1f} % "
              "of the bf16 peak eager"
              + (f" and {100 * compiled_net['fraction_of_peak']:.1f} % compiled (`torch.compile`, "
                 f"{compiled_net['megapixels_per_s']:.0f} megapixels/s)" if compiled_net else "")
              + ". Reaching 30 % of the bf16 roofline file to file would take about "
              f"{0.3 * run['peak_flops'] / seg['flops_per_pixel'] / 1e6:,.0f} megapixels/s: "
              "more than the network alone reaches, so it is out of reach for this network on this GPU; "
              "it would need a network with far more arithmetic per pixel.",
              f"- File to file the default models run at {e2e[0]:.0f} (segmentation) and {e2e[1]:.0f} "
              "(denoising, 2 views per slice) megapixels/s: about a tenth of the network alone. The rest is host "
              "work per slice (decompressing and normalising the slice, the labels, writing the TIFF) and the copy back. "
              "The first `end_to_end` row of each model also pays for the first batch shapes (cuDNN's choices); "
              "the tile rows after it run the same path warm.",
              "- Tiles are cut, run and blended on the GPU (one upload and one download per slice): file to file "
              f"{e2e[0] / seg['modes']['end_to_end_host_tiling']['megapixels_per_s']:.1f}x (segmentation) and "
              f"{e2e[1] / den['modes']['end_to_end_host_tiling']['megapixels_per_s']:.1f}x (denoising) the speed of the "
              "host loop it replaces (`end_to_end_host_tiling`).",
              "- On CUDA the default tile is 512 px (256 on the CPU): fewer, larger batches."]
    if compiled:
        lines.append(f"- `--compile` doubles the network alone but costs its compilation: a {run['stack'][0]}-slice "
                     f"stack took {compiled['seconds']:.0f} s with it (1024-px tiles) against about 3 s without, so it "
                     "pays off only for stacks of thousands of slices.")
    mem = run.get("memory")
    if mem:
        lines.append(f"- Memory: of the {mem['working_mb']:.0f} MB over the loaded model, most are CUDA's own libraries "
                     "(loaded at the first use of the GPU); the resident memory stays flat over the stack. With "
                     "zlib-compressed float results (the earlier default) the writer fell behind the GPU and the resident "
                     "memory rose by about one slice of probabilities (48 MB) per slice before the allocator gave it back.")
    lines += ["- Denoising a stack averages each slice with its mirror (2 network passes per pixel); its fraction of peak "
              "counts both.", "",
              "The earlier pipeline on the same GPU and stack is in `benchmarks/results/gpu/` "
              "(`prediction_throughput_cuda_host_tiling.json`: tiles blended on the host, zlib-compressed float results, "
              "`np.argmax` labels, 256-px tiles: 17-19 megapixels/s segmentation, 15 denoising, file to file; "
              "`prediction_throughput_cuda_profiled.json`: a cProfile of one file-to-file run per model).", ""]
    return lines


def _load_result(name: str) -> dict | None:
    path = HERE / "results" / name
    return json.loads(path.read_text()) if path.exists() else None


def gpu_denoise_seeds_section(runs: list[dict]) -> list[str]:
    """``scripts/gpu_denoise_seeds.sh``: ours (8 views) minus BM3D per noise draw, and longer training, on a GPU."""
    rows = []
    for run in runs:
        cell = {r["method"]: r for r in run["rows"]}
        if not {"bm3d", "ours", "ours_tta"} <= cell.keys():
            continue
        rows.append({"image": run["rows"][0]["image"], "seed": run["seed"], "steps": cell["ours"]["steps"],
                     "held_out": bool(run.get("held_out")), "bm3d": cell["bm3d"]["psnr"], "ours": cell["ours"]["psnr"],
                     "tta": cell["ours_tta"]["psnr"], "train": cell["ours"]["train_seconds"], "device": run["device"]})
    if not rows:
        return []
    counts = [r["steps"] for r in rows]
    default = max(set(counts), key=counts.count)  # the default training: the steps most runs used
    rows.sort(key=lambda r: (r["held_out"], r["image"], r["steps"] != default, r["steps"], r["seed"]))
    lines = ["### On a GPU: denoising over noise draws and longer training", "",
             "The denoising benchmark (`benchmarks/restoration.py --task denoise --methods noisy bm3d ours --tta`) run on a GPU: "
             "each noise draw (`--seed`, also the training seed) of the four main images with the default training, the "
             "first draw once more with longer training, and one draw of held-out images; BM3D (true noise parameters) on "
             "the same noisy image in the same run. PSNR in dB; 8 views: what `emssl predict` gives a single image:", "",
             "| image | held out | seed | steps | BM3D | ours | ours, 8 views | 8 views minus BM3D | training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {'yes' if r['held_out'] else 'no'} | {r['seed']} | {r['steps']} | {r['bm3d']:.2f} | "
                     f"{r['ours']:.2f} | {r['tta']:.2f} | {r['tta'] - r['bm3d']:+.2f} | {r['train']:.0f} |")
    lines.append("")
    for image in dict.fromkeys(r["image"] for r in rows):
        base = [r["tta"] - r["bm3d"] for r in rows if r["image"] == image and r["steps"] == default]
        at_default = {r["seed"]: r for r in rows if r["image"] == image and r["steps"] == default}
        longer = [r for r in rows if r["image"] == image and r["steps"] != default]
        text = f"{image}: 8 views minus BM3D with the default training"
        text += (f" {sum(base) / len(base):+.2f} dB on average over {len(base)} draws (from {min(base):+.2f} to {max(base):+.2f})"
                 if len(base) > 1 else (f" {base[0]:+.2f} dB" if base else " not run"))
        for r in longer:
            if r["seed"] in at_default:
                text += (f"; {r['steps']} steps instead of {default} (seed {r['seed']}): "
                         f"{r['tta'] - at_default[r['seed']]['tta']:+.2f} dB")
        lines.append(f"- {text}.")
    devices = sorted({r["device"] for r in rows})
    lines += ["", f"Device: {'; '.join(devices)}. Eight runs at a time share the GPU, so the training seconds are upper "
              "bounds. Command: `EMSSL_DATA=.gpu-data scripts/gpu_denoise_seeds.sh` (`scripts/gpu_checks.sh --prepare "
              "../shared/data` first); results in `benchmarks/results/gpu/denoise_*.json`."]
    return lines


def gpu_section() -> list[str]:
    """Pretraining throughput, fine-tuning times and the torchrun check on the GPU (benchmarks/results/gpu/)."""
    pre = _load_result("gpu/pretrain_throughput_cuda.json")
    times = _load_result("gpu/finetune_times_cuda.json")
    den = _load_result("gpu/restoration_denoise_cuda.json")
    if not (pre or times or den):
        return []
    lines = ["## On a GPU: pretraining, fine-tuning, torchrun", "",
             "Measured with `EMSSL_DATA=.gpu-data scripts/gpu_checks.sh` (`scripts/gpu_checks.sh --prepare ../shared/data` "
             "first) on one NVIDIA H200, torch 2.11.0+cu130; results in `benchmarks/results/gpu/`.", ""]
    if pre:
        lines += ["Pretraining throughput (`benchmarks/pretrain_throughput.py --device cuda --steps 40 --warmup 10`: batch 64 "
                  "of 128 x 128 patches, bf16 autocast, one process; images/s after the warm-up steps; the two hrnet rows "
                  "of mae and mocov3 in a second run, `--only mae_hrnet_w18_small mocov3_hrnet_w18_small`):", "",
                  "| method | network | images/s | GFLOP per image (one step) | TFLOP/s | fraction of the bf16 peak |",
                  "|---|---|---|---|---|---|"]
        for r in pre:
            if "error" in r:
                continue
            lines.append(f"| {r['method']} | {r['arch']} | {r['images_per_s']:.0f} | {r['flops_per_image'] / 1e9:.2f} | "
                         f"{r['achieved_tflops']:.2f} | {100 * r['fraction_of_peak']:.2f} % |")
        lines += ["", "Small networks on small patches keep an H200 mostly idle; a step of a few milliseconds is bound by "
                  "kernel launches and the data pipeline, not by arithmetic.", ""]
    if times:
        for r in times:
            lines.append(f"- `{r['command']}`: {r['wall_s']:.0f} s wall, start-up and saving included (exit {r['rc']}).")
    if den:
        rows = {r["method"]: r for r in den["rows"]}
        ours, tta = rows.get("ours"), rows.get("ours_tta")
        if ours:
            lines.append(f"- Self-supervised denoising of stem_adf ({' x '.join(map(str, ours['shape']))}), the default "
                         f"{ours['steps']} steps from the bundled weights: {ours['train_seconds']:.0f} s of training "
                         f"(PSNR {ours['psnr']:.2f} dB, 8 views {tta['psnr']:.2f} dB; the CPU rows of the denoising table: "
                         "the same settings, minutes) (`" + den["command"].replace("/root/out/", "") + "`).")
    ddp = HERE / "results" / "gpu" / "ddp_cuda.log"
    if ddp.exists():
        last = [line for line in ddp.read_text().splitlines() if line.strip()][-1]
        lines.append("- `torchrun --standalone --nproc_per_node 1 -m napari_emssl.cli pretrain --method mae ... --device cuda` "
                     f"(NCCL process group on the GPU; one GPU, so one process): `{last}`.")
    return lines


def plot_throughput(runs: list[dict]) -> str:
    fig, axes = plt.subplots(1, len(runs), figsize=(8.5 * len(runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        tasks = list(run["models"])
        modes = list(next(iter(run["models"].values()))["modes"])
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            values = [run["models"][t]["modes"].get(mode, {}).get("megapixels_per_s", 0.0) for t in tasks]
            ax.bar([j + i * width for j in range(len(tasks))], values, width, label=mode.replace("_", " "))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
        ax.set_ylabel("megapixels / s")
        ax.set_title(run["device"], fontsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save_plot(fig, "images/prediction_throughput.png")


def z_consistency_section(runs: list[dict]) -> list[str]:
    """Dice with the class probabilities of each section averaged with its z neighbours, per window, over seeds."""
    import numpy as np

    windows = [r["window"] for r in runs[0]["rows"]]
    seeds = [r["seed"] for r in runs]
    lines = ["### Averaging neighbouring sections (z-consistency)", "",
             "The default U-Net fine-tuned on the strokes of section 0 (package defaults) predicts class probabilities for",
             "sections 0-19 of the ssTEM stack; labels come from each section alone (`none`) or from the probabilities",
             "averaged with the neighbouring sections (weights neighbour, section, neighbour). Dice is the mean over",
             "sections 1-19; the sections are 45-50 nm thick, the pixels 4.6 nm wide.", "",
             "| window | membrane Dice | mitochondria Dice | seeds |", "|---|---|---|---|"]
    for w in windows:
        vals = {c: [next(r for r in run["rows"] if r["window"] == w)[c] for run in runs] for c in ("membrane", "mitochondria")}
        cells = [f"{np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else "") + " (" + ", ".join(f"{x:.3f}" for x in v) + ")"
                 for v in vals.values()]
        lines.append(f"| {w} | {cells[0]} | {cells[1]} | {', '.join(map(str, seeds))} |")
    changes = []
    for w in windows[1:]:
        parts = []
        for c in ("membrane", "mitochondria"):
            d = [next(r for r in run["rows"] if r["window"] == w)[c] - next(r for r in run["rows"] if r["window"] == "none")[c]
                 for run in runs]
            parts.append(f"{c} {np.mean(d):+.3f} (better in {sum(x > 0 for x in d)} of {len(d)} seeds)")
        changes.append(f"{w}: " + ", ".join(parts))
    lines += ["", "Change against `none`, seed by seed: " + "; ".join(changes) + "."]
    lines += ["", f"Device: {runs[0]['device']}. Commands: " + "; ".join(f"`{r['command']}`" for r in runs) + "."]
    return lines


def main() -> None:
    results = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("segmentation_strokes_*.json"))]
    lines = ["# Benchmarks", "", "Every number here was measured by the scripts in `benchmarks/`; each row gives the",
             "device and the command that reproduces it. Regenerate this page with `python benchmarks/report.py`.", ""]
    lines += segmentation_section(results)
    plot = plot_segmentation(results)
    if plot:
        lines += ["", f"![Dice per method]({plot})"]
    transfer = _runs("pretrain_transfer")
    if transfer:
        lines += [""] + transfer_section(transfer)
        lines += ["", f"![Dice vs fine-tuning steps]({plot_transfer(transfer)})"]
    sweep = _runs("sweep_defaults") + _runs("sweep_lr_bundled")
    if sweep:
        lines += [""] + sweep_section(sweep)
    for task in ("denoise", "superres"):
        run = _restoration_runs(task)
        # the sections below were measured without the mean correction: compared with the main table's rows without it
        plain = _restoration_runs(task, corrected=False) if task == "denoise" else run
        # and some with the blind-spot loss alone: compared with the main table's rows of that loss
        blind = _restoration_runs(task, loss="blind-spot") if task == "denoise" else None
        if run:
            lines += [""] + restoration_section(run) + ["", f"![PSNR per image and method]({plot_restoration(run)})"]
        longer = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"{task}_steps_*.json"))]
        if run and longer:
            # beside the main table's rows measured with the same leak correction as the longer runs
            same = _restoration_runs(task, leak=_leak(longer[0])) if task == "denoise" else run
            lines += [""] + steps_section(longer, run, task, same) + _runs_footer(longer) + steps_notes(longer, same, task)
        factors = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"{task}_pair_factors_*.json"))]
        if factors:
            lines += [""] + superres_pair_factors_section(factors, run)
        lines += superres_lattice_lines(task, run)
        headroom = HERE / "results" / "superres_headroom.json"
        if task == "superres" and headroom.is_file():
            lines += [""] + superres_headroom_section(json.loads(headroom.read_text()), run)
        if run and blind and _loss(run) != "blind-spot":
            results = HERE / "results"
            neighbour = [json.loads(p.read_text()) for p in sorted(results.glob(f"revisible_neighbour_{task}_*.json"))]
            neighbour_blind = [json.loads(p.read_text()) for p in sorted(results.glob(f"blind_spot_replace_{task}_neighbour*.json"))]
            longer = [json.loads(p.read_text()) for p in sorted(results.glob(f"revisible_longer_{task}_*.json"))]
            lines += [""] + loss_section(plain, blind, neighbour, neighbour_blind, longer)
            run_for_ablations = blind
        else:
            run_for_ablations = run
        ablation = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("ablation_mask_fraction_*_*.json"))]
        if task == "denoise" and ablation:
            lines += [""] + mask_fraction_section(ablation, run)  # baselines only
        replace = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"blind_spot_replace_{task}_*.json"))]
        if replace:
            lines += [""] + mask_replace_section(replace, run)  # baselines only
        reseed = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"reseed_{task}_*.json"))]
        if reseed:
            lines += [""] + reseed_section(reseed, run_for_ablations)  # seed 0 -> 1 with the same loss
        fractions = [r for r in (json.loads(p.read_text()) for p in sorted((HERE / "results").glob("revisible_mask_fraction_*.json")))
                     if r["task"] == task]
        if fractions and run:  # with the runs of one neighbour shown at the default share, for comparison
            neighbour_default = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"revisible_neighbour_{task}_*.json"))]
            lines += [""] + revisible_fraction_section(fractions + neighbour_default, plain)
        seed1 = [r for r in (json.loads(p.read_text()) for p in sorted((HERE / "results").glob("seed1_fraction_*.json")))
                 if r["task"] == task]
        if seed1 and reseed:
            lines += [""] + reseed_fraction_section(seed1, reseed, fractions, plain)
        unleaked = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"unleaked_*{task}_*.json"))]
        if unleaked and run:
            earlier = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("*.json"))
                       if not p.name.startswith("unleaked_")]
            earlier = [r for r in earlier if r.get("task") == task and r.get("rows")]
            lines += [""] + unleaked_section(unleaked, earlier, plain)
        bands = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"error_bands_{task}*.json"))]
        if bands:
            lines += [""] + error_bands_section(bands)
        every = bands + [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("error_bands_all_*.json"))]
        if every and task == "denoise":
            results = HERE / "results"
            lines += [""] + mean_correction_section(
                every, [json.loads(p.read_text()) for p in sorted(results.glob(f"mean_correction_neighbour_{task}_*.json"))],
                [json.loads(p.read_text()) for p in sorted(results.glob(f"unleaked_neighbour_{task}_*.json"))])
        leaks = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("leak_correction_seed*.json"))]
        if leaks and task == "denoise":
            lines += [""] + leak_correction_section(leaks) + ["", f"![Leak correction]({plot_leak(leaks)})"]
        sure = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("leak_share_auto_seed*.json"))]
        if sure and task == "denoise":
            lines += [""] + leak_share_auto_section(sure)
        views = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("denoise_views_*.json"), key=_run_order)]
        if views and task == "denoise":
            bilinear = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"views_bilinear_{task}_*.json"))]
            lines += [""] + denoise_views_section(views, bilinear, run) + ["", f"![Views averaged]({plot_views(views)})"]
            sr_views = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("views_superres_*.json"))]
            if sr_views:
                lines += superres_views_lines(sr_views, _restoration_runs("superres"))
        archs = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob(f"arch_{task}_*.json"))]
        if archs:
            lines += [""] + arch_section(archs, plain)
    throughput = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("prediction_throughput_*.json"))]
    if throughput:
        lines += [""] + throughput_section(throughput) + [f"![Prediction throughput]({plot_throughput(throughput)})"]
    gpu = gpu_section()
    if gpu:
        lines += [""] + gpu
    seeds = gpu_denoise_seeds_section([json.loads(p.read_text()) for p in sorted((HERE / "results" / "gpu").glob("denoise_*_seed*.json"))])
    if seeds:
        lines += [""] + seeds
    zruns = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("z_consistency_seed*.json"))]
    if zruns:
        lines += [""] + z_consistency_section(zruns)
    bundled = bundled_section()
    if bundled:
        lines += [""] + bundled
    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
