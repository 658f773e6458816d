"""The super-resolution sections of docs/benchmarks.md that study the x2 target on lattices and its limits.

Used by ``report.py``: synthetic lattice pairs (``superres_synthetic_pairs.py``), the package's
``--lattice-pairs`` (``restoration.py --lattice-pairs``) and the paired oracle network
(``superres_oracle_network.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "`EMSSL_DATA=../shared/data PYTHONPATH=src`"


def _load(pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(pattern))]


def _footer(runs: list[dict], at_a_time: str, env: str = ENV) -> list[str]:
    """Device, how many runs shared the CPU, and every run's command (with ``env`` in front)."""
    return ["", f"Device: {runs[0]['device']}, {at_a_time}. Commands (with {env} in front): "
            + " and ".join(f"`{r['command']}`" for r in runs) + "."]


def _own_pairs(r: dict) -> str:
    smin = float(r.get("smin", 2.0))
    return "-" if r["share"] == 1 else ("2" if smin >= 2 else f"{smin:g}-2")


def superres_synthetic_section(runs: list[dict]) -> list[str]:
    """Super-resolution of lattices trained on synthetic lattice pairs (``superres_synthetic_pairs_*.json``)."""
    runs = sorted(runs, key=lambda r: (r["image"], r["share"], r.get("match_noise", "off"), r["steps"], -r.get("smin", 2)))
    lines = ["### Synthetic lattice pairs for atomic-resolution images",
             "",
             "An atomic lattice does not look alike one scale up (its columns keep their size in the specimen), which is "
             "why the pairs made by downscaling the image once more fail on it. Here a share of each batch is synthetic "
             "instead: clean atom-column scenes (the generator of the bundled background-removal weights: lattices, grain "
             "boundaries, amorphous regions, backgrounds) with lattice constants of 0.8-1.4 times the lattice period found "
             "in the small image, taken at the scale the network is applied at, area-downscaled by 2 as input; everything "
             "else is `emssl finetune --task superres` (bundled weights, 600 steps unless said, seed 0). Share 0 is the "
             "package's own training, share 1 what `--lattice-pairs` now does. Own pairs at: the factor(s) of the image's "
             "own pairs (as in \"Training pairs at smaller factors\"). Input noise: the training inputs given noise so "
             "that theirs matches the small image's (3/4 of its variance on the image's own pairs, whose area downscaling "
             "keeps a quarter of it; all of it on the clean synthetic scenes), with the variance fitted (Poisson-Gaussian) "
             "on the reference, a quarter of it: an oracle no user has, to see whether matching the noise helps at all. "
             "Network alone: without the back-projection the package adds after prediction; as predicted: with it (the "
             "model's 5 steps). PSNR in dB, one view / 8-view:",
             "",
             "| image | held out | synthetic share | own pairs at | input noise | steps | period (px, small image) | bicubic | "
             "back_projection | network alone | as predicted | as predicted, 8-view, minus bicubic |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r["psnr"]
        noise = "matched" if r.get("match_noise", "off") != "off" else "-"
        lines.append(f"| {r['image']} | {'yes' if r['held_out'] else 'no'} | {r['share']:g} | {_own_pairs(r)} | {noise} | "
                     f"{r['steps']} | {r['period_px']:.1f} | {p['bicubic']:.2f} | {p['back_projection']:.2f} | "
                     f"{p['ours']:.2f} / {p['ours_tta']:.2f} | {p['ours_bp']:.2f} / {p['ours_tta_bp']:.2f} | "
                     f"{p['ours_tta_bp'] - p['bicubic']:+.2f} |")
    own = [r for r in runs if r["share"] == 0 and r.get("match_noise", "off") == "off"]
    if own:
        gains = [(r["image"], r["psnr"]["ours_bp"] - r["psnr"]["ours"], r["psnr"]["ours_tta_bp"] - r["psnr"]["ours_tta"])
                 for r in own]
        lines += ["", "The back-projection after prediction (share 0: the package's own training, the same network with "
                  "and without it), one view / 8-view: " + ", ".join(f"{i} {a:+.2f} / {b:+.2f} dB" for i, a, b in gains)
                  + f"; from {min(min(a, b) for _, a, b in gains):+.2f} to {max(max(a, b) for _, a, b in gains):+.2f} dB."]
    def plain(r: dict) -> bool:  # the two trainings the variants change one thing of
        return r.get("match_noise", "off") == "off" and r["steps"] == 600 and _own_pairs(r) in ("2", "-") and r["share"] in (0, 1)

    base = {(r["image"], r["share"]): r for r in runs if plain(r)}
    diffs = []
    for r in runs:
        ref = None if plain(r) else base.get((r["image"], 1.0 if r["share"] > 0 else 0.0))
        if ref:
            what = ", ".join(w for w, on in (("matched input noise", r.get("match_noise", "off") != "off"),
                                             (f"{r['steps']} steps", r["steps"] != 600),
                                             (f"own pairs at {_own_pairs(r)}", 0 < r["share"] < 1)) if on)
            diffs.append(f"{r['image']}, share {r['share']:g}, {what}: {r['psnr']['ours_tta_bp'] - ref['psnr']['ours_tta_bp']:+.2f} dB "
                         f"against share {ref['share']:g}")
    if diffs:
        lines += ["", "Measured, as predicted (8-view), against the same training without the change: " + "; ".join(diffs) + "."]
    lines += ["", "What it says: matched synthetic lattices move the network from below bicubic to above it on the lattice "
              "images, and the back-projection adds more there than after the image's own pairs. Training twice as long "
              "or mixing in the image's own pairs at smaller factors does not take the synthetic pairs further, nor does "
              "matching the input noise (the network then learns to denoise: its own output falls far below bicubic and "
              "the back-projection puts the input's noise back). Matched noise helps the image's own pairs on stem_adf, "
              "but not up to bicubic, and costs sem_aquami; a user would also need the image's noise level, which an "
              "estimate from the small image overstates where it has texture at the pixel scale. Since 0.1.0 the "
              "package offers share 1 as `emssl finetune --task superres --lattice-pairs` (next section). It is the "
              "user's choice: the lattice detector finds a period in every benchmark image, SEM included."]
    return lines + _footer(runs, "up to four runs at a time")


def lattice_pairs_section(runs: list[dict], main: dict | None) -> list[str]:
    """``emssl finetune --task superres --lattice-pairs`` on the lattice images (``superres_lattice_pairs_*.json``)."""
    table = {(r["image"], r["method"]): r for r in (main or {}).get("rows", [])}
    headroom = RESULTS / "superres_headroom.json"
    linear = json.loads(headroom.read_text())["rows"] if headroom.is_file() else {}
    lines = ["### Atomic-resolution images: `--lattice-pairs`",
             "",
             "`emssl finetune --task superres --lattice-pairs` (Fine-tune widget: *Learn from: synthetic atom-column "
             "lattices*) learns from synthetic lattices matched to the image's lattice period instead of the image "
             "downscaled once more, every other setting the default (bundled weights, 600 steps, 5 steps of "
             "back-projection after prediction); predicted as `emssl predict` does (8-view: the default for a single 2D "
             "image). Same downscaled images and reference as the main table; the default training (ours) from the main "
             "table or, for the held-out stem_abf, from \"Synthetic lattice pairs\" (share 0). PSNR in dB:",
             "",
             "| image | held out | bicubic | back_projection | best linear filter fitted to the reference | ours (default), "
             "8-view | seed | --lattice-pairs, one view / 8-view | 8-view minus bicubic | 8-view minus back_projection | "
             "seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    synthetic = {r["image"]: r for r in _load("superres_synthetic_pairs_*.json")
                 if r["share"] == 0 and r.get("match_noise", "off") == "off" and r["steps"] == 600}
    for run in sorted(runs, key=lambda r: (r["rows"][0]["image"], r["seed"])):
        cell = {r["method"]: r for r in run["rows"]}
        image = run["rows"][0]["image"]
        one, tta = cell["ours"], cell["ours_tta"]
        bicubic = table.get((image, "bicubic"), {}).get("psnr") or synthetic.get(image, {}).get("psnr", {}).get("bicubic")
        back = table.get((image, "back_projection"), {}).get("psnr") or synthetic.get(image, {}).get("psnr", {}).get("back_projection")
        default = table.get((image, "ours_tta"), {}).get("psnr") or synthetic.get(image, {}).get("psnr", {}).get("ours_tta_bp")
        oracle = linear.get(image, {}).get("oracle_linear", {}).get("9")
        lines.append(f"| {image} | {'yes' if run['held_out'] else 'no'} | {bicubic:.2f} | {back:.2f} | "
                     f"{bicubic + oracle:.2f} | {default:.2f} | {run['seed']} | {one['psnr']:.2f} / {tta['psnr']:.2f} | "
                     f"{tta['psnr'] - bicubic:+.2f} | {tta['psnr'] - back:+.2f} | {one['seconds']:.0f} |")
    by_image: dict[str, list[float]] = {}
    for run in runs:
        by_image.setdefault(run["rows"][0]["image"], []).extend(r["psnr"] for r in run["rows"] if r["method"] == "ours")
    spread = {i: max(v) - min(v) for i, v in by_image.items() if len(v) > 1}
    if spread:
        lines += ["", "Measured: the training seeds differ by at most " + ", ".join(f"{v:.3f} dB on {i}" for i, v in
                                                                              sorted(spread.items())) + " (one view)."]
    lines += ["", "Not for other images: a lattice period is also reported for the SEM and detector images, and the "
              "synthetic columns are not their structures; the option is refused only where no period stands out at all."]
    return lines + _footer(runs, "two runs at a time (one per core)", "`EMSSL_DATA=../shared/data PYTHONPATH=.bench-site:src`")


def oracle_network_section(runs: list[dict]) -> list[str]:
    """The paired oracle network, trained on the top half with the reference, scored on the bottom half."""
    lines = ["### How far can a network trained on the answer go? A paired oracle, split by halves",
             "",
             "The package's paired super-resolution (`emssl finetune --task superres --target`: same network, bundled "
             "weights, loss and sampler) trained on the top half of the downscaled image with the reference itself as "
             "the target, 1200 steps: supervision no user of the self-supervised mode has. Scored on the bottom half "
             "only, which it never saw, so memorising the reference's noise earns nothing; ours (every default, "
             "self-supervised on the whole small image, as a user has it) scored on the same half. Gains over bicubic on "
             "the bottom half in dB, one view / 8-view; _bp: with the 5 steps of back-projection the self-supervised "
             "models apply (paired models do not):",
             "",
             "| image | bicubic (bottom half) dB | back_projection | oracle network | oracle network, _bp | ours "
             "(self-supervised, default) | oracle training seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        g = r["gain_db"]
        ours = f"{g['ours']:+.2f} / {g['ours_tta']:+.2f}" if "ours" in g else "-"
        lines.append(f"| {r['image']} | {g['bicubic_psnr']:.2f} | {g['back_projection']:+.2f} | {g['oracle_network']:+.2f} / "
                     f"{g['oracle_network_tta']:+.2f} | {g['oracle_network_bp']:+.2f} / {g['oracle_network_tta_bp']:+.2f} | "
                     f"{ours} | {r['seconds']['oracle_train']:.0f} |")
    short = [r["image"] for r in runs if max(v for k, v in r["gain_db"].items() if k.startswith("oracle")) < 1.0]
    lines += ["", "Measured: trained on the answer, the network stays below +1 dB over bicubic on "
              f"{', '.join(short) or 'none'} (best of one view, 8-view, with and without back-projection).",
              "", "What it says: where the detail beyond the small image's grid is predictable, a network that is shown "
              "it gains far more than the best linear filter (\"How much can x2 super-resolution gain?\" below) and far "
              "more than ours, whose pairs come from the small image alone: there the pairs, not the network, are the "
              "limit. Where even the network shown the answer gains no more than ours, the finer image holds no detail "
              "this network can infer from the small one (its own shot noise and texture at the pixel scale), and no "
              "choice of self-supervised pairs can close the gap to +1 dB."]
    return lines + _footer(runs, "two runs at a time (one per core)")


def superres_lattice_lines(task: str, main: dict | None) -> list[str]:
    """Every section of this module that has results, in reading order."""
    if task != "superres":
        return []
    lines: list[str] = []
    synthetic = _load("superres_synthetic_pairs_*.json")
    if synthetic:
        lines += [""] + superres_synthetic_section(synthetic)
    lattice = _load("superres_lattice_pairs_*.json")
    if lattice:
        lines += [""] + lattice_pairs_section(lattice, main)
    oracle = _load("superres_oracle_network_*.json")
    if oracle:
        lines += [""] + oracle_network_section(oracle)
    return lines
