"""The human side of a bioimage.io package: its cover image and its README (from the model's lineage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..engine.model_dir import TrainedModel
from ..config import LEAK_AUTO, LEAK_AUTO_MAX
from ..tasks.denoise_corrections import LEAK_MAX_WEIGHT, LEAK_PROBE, LEAK_WINDOW
from .graph import GraphSpec

TASK_WORDS = {"segment": "segmentation", "denoise": "denoising", "bgremove": "background removal",
              "superres": "super-resolution"}


def cover(raw_norm: np.ndarray, output: np.ndarray, spec: GraphSpec, path: Path) -> None:
    """A 2:1 PNG: the test input beside the test output (segmentation: the foreground probability; restoration: the image)."""
    from PIL import Image

    def grey(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.5, 99.5])
        return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    left = raw_norm[0, 0]
    if spec.factor > 1:
        left = np.kron(left, np.ones((spec.factor, spec.factor), np.float32))
    if spec.task == "segment":  # the probability of any class but background (label 1), black to white
        right = (np.clip(1.0 - output[0, 0], 0, 1) * 255).astype(np.uint8)
    else:
        right = grey(output[0, 0])
    both = Image.fromarray(np.concatenate([grey(left), right], axis=1))
    if both.height < 256:
        both = both.resize((2 * 256, 256), Image.NEAREST)
    both.save(path)


# ---------------------------------------------------------------------------------------------- README


def _leak_words(share: Any) -> str:
    """How the leak-correction share f of a model is set, for its docs."""
    if share != LEAK_AUTO:
        return f"f = {_fmt(share)}"
    return ("f chosen per image by Stein's unbiased risk estimate: with d = output - input, K = J / (1 - J), R = "
            f"`(second - first) * s / {LEAK_PROBE:g}` per pixel (not averaged) and s2 the noise variance per pixel "
            "(napari-emssl: the squared 1.4826 x median absolute deviation of the finest diagonal Haar details "
            "`(a - b - c + d) / 2` of the 2 x 2 blocks of the input, in 16 equal-count bins of the neighbours-only "
            "estimate (output - J input) / (1 - J), fitted as a straight line in it), f = (sum s2 K (1 - R) - sum K d^2) "
            f"/ sum K^2 d^2, clipped to [0, {LEAK_AUTO_MAX:g}]")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def readme(model: TrainedModel, name: str, spec: GraphSpec, weights: dict[str, float], test_note: str) -> str:
    """The package's documentation, generated from ``model.json``."""
    meta = model.meta
    task = meta.get("task")
    norm = meta.get("normalization") or {}
    lineage = meta.get("lineage") or {}
    init, finetune = lineage.get("init") or {}, lineage.get("finetune") or {}
    lines = [f"# {name}", "",
             f"A {TASK_WORDS.get(task, task)} model for 2D electron-microscopy images, trained with "
             f"napari-emssl {meta.get('package_version', '?')} "
             f"(exported by napari-emssl {__version__}).", "", "## What it computes", ""]
    if task == "segment":
        classes = meta.get("classes") or list(range(1, spec.out_channels + 1))
        lines += [f"Input: one greyscale image (batch, channel, y, x). Output: the probabilities of {spec.out_channels} "
                  "classes (softmax over the channel axis; the graph applies it).", "",
                  "| output channel | label value | meaning |", "|---|---|---|"]
        lines += [f"| {i} | {c} | {'background' if c == 1 else f'class {c}'} |" for i, c in enumerate(classes)]
        lines += ["", "The label image is `argmax(channel) + 1` (napari-emssl's label convention: 1 = background, "
                  "2, 3, ... = the painted classes)."]
    elif task == "superres":
        lines += [f"Input: one greyscale image (batch, channel, y, x). Output: the image at {spec.factor} times the "
                  "resolution (y and x), in the normalised units of the input. The graph upsamples the input "
                  "bicubically and adds the network's residual."]
        if meta.get("back_projection"):
            lines += ["", f"Back-projection: napari-emssl then repeats {int(meta['back_projection'])} times `output <- output + "
                      f"bicubic_x{spec.factor}(input - area_mean_{spec.factor}x{spec.factor}(output))` (the same bicubic "
                      "upsampling as the graph's), so that the output's block means are the input's. It is not part of "
                      "the exported graph (it needs the whole image, not a tile): add it after the graph to get "
                      "napari-emssl's result."]
    else:
        unit = ("the normalised units of the input" if task == "denoise"
                else "units of (p_high - p_low) of the input, without offset (0 = no signal)")
        lines += [f"Input: one greyscale image (batch, channel, y, x). Output: the {TASK_WORDS[task]} result in {unit}."]
        if task == "denoise" and meta.get("leak_correction"):
            lines += ["", f"Leak correction: napari-emssl runs the graph a second time on the input plus `{LEAK_PROBE:g} * s` "
                      "(s: a random sign, +1 or -1, per pixel), takes J = the Gaussian mean (sigma "
                      f"{LEAK_WINDOW:g} px) of `(second - first) * s / {LEAK_PROBE:g}`, clipped to [0, {LEAK_MAX_WEIGHT:g}], "
                      "the weight the network gives each pixel's own value, and returns `output - f * J / (1 - J) * "
                      f"(input - output)` with {_leak_words(meta['leak_correction'])}. It is not part of the exported graph "
                      "(it needs a second pass): add it after the graph, before the mean correction, to get "
                      "napari-emssl's result."]
        if task == "denoise" and meta.get("mean_correction"):
            lines += ["", f"Mean correction: napari-emssl adds to the output the Gaussian low-pass (sigma "
                      f"{_fmt(meta['mean_correction'])} px, borders reflected) of input minus output, over the whole "
                      "image, so the result keeps the input's local mean. It is not part of the exported graph (it needs "
                      "the whole image, not a tile): add it after the graph to get napari-emssl's result."]
    back = ("" if task == "segment" else " For grey values again, multiply the output by `(p_high - p_low)`"
            + (" (no offset: background removal)." if task == "bgremove" else " and add `p_low`."))
    lines += ["", f"Preprocessing: percentile normalisation, `(x - p_low) / (p_high - p_low)` with p_low, p_high the "
              f"{norm.get('low', 1.0)}th and {norm.get('high', 99.8)}th percentiles of the image (bioimage.io "
              f"`scale_range`).{back}", "",
              f"Sizes: y and x must be multiples of {spec.step}" + (f" (exactly {spec.fixed})" if spec.fixed else "")
              + f"; when tiling, crop {spec.halo} output pixels on each side (the receptive field's reach).", "",
              "## Network", "",
              f"- architecture: `{meta.get('arch')}` with options `{json.dumps(meta.get('arch_kwargs', {}))}`",
              f"- receptive field: {meta.get('receptive_field')} px; size multiple: {meta.get('size_multiple')}",
              f"- input channels: {meta.get('in_channels', 1)}; output channels: {meta.get('out_channels')}"]
    if task == "superres":
        lines.append(f"- scale factor: {spec.factor}")
    lines += ["", "## Training lineage", ""]
    start = init.get("init", "unknown")
    kind = init.get("init_kind")
    lines.append(f"- start point: {'random weights' if start == 'random' else start}" + (f" ({kind})" if kind else ""))
    if init.get("pretrain_method"):
        steps = f", {init['pretrain_steps']} steps" if init.get("pretrain_steps") else ""
        lines.append(f"- self-supervised pretraining: {init['pretrain_method']}{steps}")
    if init.get("init_note"):
        lines.append(f"- note: {init['init_note']}")
    if finetune:
        lines.append("- fine-tuning: " + _fmt({k: v for k, v in finetune.items() if v is not None}))
    if meta.get("seed") is not None:
        lines.append(f"- seed: {meta['seed']}")
    metrics = meta.get("metrics") or {}
    lines += ["", "## Metrics", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in metrics.items()] or ["- none recorded"]
    lines += ["", "## Use it", "",
              "- napari-emssl: `emssl predict --model THIS_PACKAGE.zip --input image.tif --out results/` (the model is "
              "rebuilt from the attached `model.safetensors` + `model.json`; nothing is unpickled).",
              "- any bioimage.io consumer, with the TorchScript or ONNX weights.", "",
              "## Validation", "",
              f"Test input: {test_note}. Test output: napari-emssl's own prediction on it. Largest difference of "
              "the exported weights to it: " + ", ".join(f"{k} {v:.2g}" for k, v in weights.items()) + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- build
