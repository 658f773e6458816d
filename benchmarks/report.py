"""Write docs/benchmarks.md and its plots from benchmarks/results/*.json.

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"


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


def main() -> None:
    results = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("segmentation_strokes_*.json"))]
    lines = ["# Benchmarks", "", "Every number here was measured by the scripts in `benchmarks/`; each row gives the",
             "device and the command that reproduces it. Regenerate this page with `python benchmarks/report.py`.", ""]
    lines += segmentation_section(results)
    plot = plot_segmentation(results)
    if plot:
        lines += ["", f"![Dice per method]({plot})"]
    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
