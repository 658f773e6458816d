"""Restoration runs (denoise, bgremove, superres): fine-tune on the user's image, apply to images.

:func:`iter_finetune_restoration` and :func:`iter_predict_restoration` are what
:func:`napari_emssl.api.iter_finetune` / :func:`~napari_emssl.api.iter_predict` run for the
restoration tasks; they yield the same events. Modes:

==========  ==========================================  ===========================================
task        from the image alone (no target)            paired (``target`` given)
==========  ==========================================  ===========================================
denoise     blind-spot self-supervision on the image    L1 + L2 to the clean target
bgremove    synthetic pairs matched to the image's      L1 + L2 to the background-free target
            column spacing, from the bundled weights
superres    pairs made by downscaling the image again   L1 + L2 to the high-resolution target
==========  ==========================================  ===========================================

Intensities: the image is normalised with its percentile map ``x -> (x - p_low) / s``;
a target is in the same units as the image and gets the same map (``bgremove``: the
scale only, so 0 means "no signal"). Results are mapped back to the image's units.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import FinetuneConfig, PredictConfig
from .data.normalize import NormStats, percentile_normalize
from .data.patches import PatchSampler
from .data.validate import check_image, is_constant
from .engine.cancel import CancelToken
from .engine.device import prefers_channels_last, resolve_device
from .engine.events import Event, Preview, RunStarted
from .engine.model_dir import TrainedModel, build_meta
from .engine.predictor import choose_tiling, forward_fn
from .engine.trainer import TrainState
from .errors import InputError
from .tasks import bgremove, denoise, superres, superres_lattice
from .tasks.metrics import restoration_metrics
from .tasks.restoration import PairedPatchSampler

RESTORATION_TASKS = ("denoise", "bgremove", "superres")
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
MIN_SIDE = 16  # pixels: smaller images carry too little context to learn from
METRIC_SLICES = 4  # PSNR/SSIM of a stack during fine-tuning: on at most this many slices


# ---------------------------------------------------------------------------------------------- intensities


def normalize_target(target: np.ndarray, stats: NormStats, task: str) -> np.ndarray:
    """A target in the image's units, mapped like the image (``bgremove``: scale only, no offset)."""
    scale = stats.p_high - stats.p_low
    offset = 0.0 if task == "bgremove" else stats.p_low
    return ((np.asarray(target, dtype=np.float32) - offset) / scale).astype(np.float32)


def denormalize(output: np.ndarray, stats: NormStats, task: str) -> np.ndarray:
    """A network output back in the image's units (the inverse of :func:`normalize_target`)."""
    scale = stats.p_high - stats.p_low
    offset = 0.0 if task == "bgremove" else stats.p_low
    return (np.asarray(output, dtype=np.float32) * scale + offset).astype(np.float32)


def to_dtype(image: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """``image`` (float) as ``dtype``: integers rounded and clipped to the dtype's range.

    Returns the array and the number of pixels that were clipped (0 for float dtypes).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return image.astype(dtype), 0
    if dtype.kind == "b":
        return image > 0.5, 0
    info = np.iinfo(dtype)
    clipped = int(np.count_nonzero((image < info.min) | (image > info.max)))
    return np.clip(np.rint(image), info.min, info.max).astype(dtype), clipped


# ---------------------------------------------------------------------------------------------- checks


def _expected_target_shape(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return tuple(shape[:-2]) + (shape[-2] * factor, shape[-1] * factor)


def check_target(target: Any, image_shape: tuple[int, ...], factor: int = 1) -> np.ndarray:
    """Refuse a target that is not an image of the expected shape (the image's, times ``factor`` in Y, X)."""
    target = check_image(target, name="target")
    expected = _expected_target_shape(image_shape, factor)
    if target.shape != expected:
        what = f"the image's shape {tuple(image_shape)} times the factor {factor} in Y and X" if factor > 1 else "the image's shape"
        raise InputError(f"The target has shape {target.shape}; expected {expected} ({what}).")
    if is_constant(target):
        raise InputError(f"The target is constant (every pixel is {target.flat[0]}); expected a clean image with structure.")
    return target


def check_restorable(image: np.ndarray, task: str, factor: int = 1, paired: bool = False) -> None:
    """Refuse images a restoration run cannot learn from: constant, or too small (for the factor)."""
    side = min(image.shape[-2:])
    if is_constant(image):
        raise InputError(f"The image is constant (every pixel is {image.flat[0]}); there is no structure to restore.")
    need = MIN_SIDE * factor if task == "superres" and not paired else MIN_SIDE
    if side < need:
        why = f" to be downscaled by the factor {factor} for training" if need > MIN_SIDE else ""
        raise InputError(f"The image is {image.shape[-2]} x {image.shape[-1]} pixels; {task} needs at least {need} x {need}{why}.")


# ---------------------------------------------------------------------------------------------- fine-tune


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _init_task(init: str) -> str | None:
    """The task of the model directory ``init`` (None for 'bundled', 'random', pretrain folders)."""
    meta = Path(init) / "model.json"
    if init in ("bundled", "random") or not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("task")
    except (OSError, ValueError):
        return None


def check_lattice_pairs(image: np.ndarray, paired: bool) -> None:
    """Refuse synthetic lattice pairs with a target (then the training is paired) or on an image without a lattice."""
    if paired:
        raise InputError("Synthetic lattice pairs replace the pairs made from the image itself; with a target image the "
                         "training is paired. Choose one of the two.")
    superres_lattice.find_period(image)


def _loss_fn(config: FinetuneConfig, norm: np.ndarray, tnorm: np.ndarray | None, patch: int, multiple: int,
             device: torch.device, progress: Callable[[], float]) -> tuple[Any, dict[str, Any]]:
    """The trainer's loss function for the task and mode, and what to report about it.

    ``progress()`` is the share of the training done (the re-visible denoising loss ramps with it).
    """
    task, bs, seed = config.task, config.batch_size, config.seed
    if tnorm is not None and task != "superres":  # paired patches must fit inside the image
        patch = min(patch, min(norm.shape[-2:]) // multiple * multiple)
    if task == "denoise":
        if tnorm is None:
            sampler = PatchSampler(norm, None, patch, seed=seed, intensity=False, noise=False)
            loss = denoise.make_denoise_loss_fn(sampler.sample, bs, device, seed=seed, fraction=config.mask_fraction,
                                                replace=config.mask_replace, loss=config.denoise_loss, progress=progress)
            return loss, {"mode": "self-supervised (blind spot)", "mask_fraction": config.mask_fraction,
                          "mask_replace": config.mask_replace, "denoise_loss": config.denoise_loss}
        sampler = PairedPatchSampler(norm, tnorm, patch, seed=seed, noise=False)
        return denoise.make_denoise_loss_fn(sampler.sample, bs, device, paired=True), {"mode": "paired"}
    if task == "bgremove":
        if tnorm is None:
            settings, period = bgremove.adapted_settings(norm)
            info = {"mode": "synthetic pairs", "column_spacing_px": None if period is None else round(period, 2)}
            return bgremove.make_bgremove_loss_fn(bs, device, patch_size=patch, seed=seed, settings=settings), info
        sampler = PairedPatchSampler(norm, tnorm, patch, seed=seed, noise=False)
        return bgremove.make_bgremove_loss_fn(bs, device, sample=sampler.sample), {"mode": "paired"}
    factor = config.factor
    if tnorm is None and config.lattice_pairs:
        settings, period = superres_lattice.lattice_settings(norm, factor, patch)
        info = {"mode": "synthetic lattice pairs", "lattice_period_px": round(period, 2),
                "lattice_constants_px": [round(v, 2) for v in settings.spacing]}
        return superres_lattice.make_lattice_loss_fn(settings, bs, device, factor, patch, seed=seed), info
    if tnorm is None:
        sampler = PatchSampler(norm, None, patch, seed=seed, noise=False)
        return superres.make_superres_loss_fn(sampler.sample, bs, device, factor), {"mode": "self-supervised (downscaled pairs)"}
    step = multiple // math.gcd(multiple, factor)  # low-resolution sides whose upscaling the network accepts
    low = min(_round_up(max(8, patch // factor), step), min(norm.shape[-2:]) // step * step)
    if low < 1:
        raise InputError(f"The image {norm.shape[-2:]} is too small for paired super-resolution with this network")
    sampler = PairedPatchSampler(norm, tnorm, low, factor=factor, seed=seed, noise=False)
    return superres.make_superres_loss_fn(sampler.sample, bs, device, factor, paired=True), {"mode": "paired"}


def iter_finetune_restoration(
    image: np.ndarray,
    config: FinetuneConfig,
    *,
    target: np.ndarray | None = None,
    cancel: CancelToken | None = None,
    out_dir: str | None = None,
    source: str | None = None,
    preview_z: int | None = None,
) -> Iterator[Event]:
    """Fine-tune a restoration network on ``image`` (and ``target`` when given); yield events.

    ``out_dir`` (optional) receives the model directory, also when stopped. With a target
    the result's metrics hold PSNR/SSIM of the restored image and of the input (the
    baseline: the noisy image, or its bicubic upscaling) against the target.
    """
    from .api import _finish_events, _initial_network, _train_events  # the same rules as segmentation

    task = config.task
    if task not in RESTORATION_TASKS:
        raise InputError(f"{task!r} is not a restoration task ({', '.join(RESTORATION_TASKS)})")
    factor = config.factor if task == "superres" else 1
    image = check_image(image)
    if target is not None:
        target = check_target(target, image.shape, factor)
    if config.lattice_pairs:
        check_lattice_pairs(image, target is not None)
    check_restorable(image, task, factor, target is not None)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    net, init_info = _initial_network(config, 1)
    if task == "superres" and _init_task(config.init) != "superres":
        superres.zero_output_layer(net)  # residual on bicubic: start exactly at the bicubic baseline
    net.to(device)
    if prefers_channels_last(device):
        net.to(memory_format=torch.channels_last)
    multiple = int(net.size_multiple)
    patch = _round_up(config.patch_size, _lcm(multiple, factor))
    norm, stats = percentile_normalize(image, NORMALIZATION["low"], NORMALIZATION["high"])
    tnorm = normalize_target(target, stats, task) if target is not None else None
    total_steps = _total_steps(config, image, patch)
    state = TrainState()
    loss_fn, mode_info = _loss_fn(config, norm, tnorm, patch, multiple, device, lambda: state.step / total_steps)
    tile, overlap = choose_tiling(net.receptive_field, config.tile, multiple)
    fn = forward_fn(net, device, amp=config.amp, activation="none")
    z_preview = None
    if image.ndim == 3:
        z_preview = preview_z if preview_z is not None and 0 <= preview_z < image.shape[0] else image.shape[0] // 2

    correction = model_mean_correction(task, config, paired=target is not None)
    leak = model_leak_correction(task, config, paired=target is not None)
    back = model_back_projection(task, config, paired=target is not None)

    def restore_plane(plane: np.ndarray) -> np.ndarray:
        return restore_normalized(fn, plane, task, factor, tile=tile, overlap=overlap, multiple=multiple, cancel=cancel)

    def preview_fn(step: int) -> Preview:
        plane = norm[z_preview] if z_preview is not None else norm
        restored = restore_plane(plane)
        if leak:  # as Apply will give it
            probing, probe = denoise.probed_input(plane)
            restored, _ = denoise.correct_leak(restored, plane, restored, restore_plane(probing), probe, leak)
        if correction:
            restored = denoise.mean_correction(restored, plane, correction)
        if back:
            restored = superres.back_project(restored, plane, factor, back)
        return Preview(step=step, data=denormalize(restored, stats, task), z=z_preview)

    yield RunStarted(
        kind="finetune", total_steps=total_steps, device=str(device),
        info={"task": task, "arch": net.arch_name, "patch_size": patch, "receptive_field": net.receptive_field,
              "factor": factor, **mode_info, **init_info},
    )
    started = time.perf_counter()
    yield from _train_events(net, loss_fn, config, total_steps, device, cancel, preview_fn, state)
    metrics: dict[str, Any] = {}
    if target is not None and not state.cancelled:
        # scored as Apply will give it by default: the 8-view average for a single 2D image, 2 views for a stack
        views = views_for(PredictConfig(), image.shape)
        metrics = _target_metrics(lambda plane: restore_views(restore_plane, plane, views), image, target, norm, stats,
                                  task, factor)
        metrics["views"] = len(views)
    meta = build_meta(
        net, task=task, out_channels=1, factor=factor, normalization=dict(NORMALIZATION), tile=tile, overlap=overlap,
        **({"mean_correction": correction, "leak_correction": leak} if task == "denoise" else {}),
        **({"back_projection": back} if task == "superres" else {}), seed=config.seed, config=config.to_dict(),
        lineage={"init": init_info, "finetune": {"source": source, "shape": list(image.shape), "paired": target is not None,
                                                 **mode_info, "steps": state.step, "completed": not state.cancelled}},
        metrics=metrics,
    )
    yield from _finish_events(TrainedModel(net=net.cpu(), meta=meta, log=state.log or []), out_dir, state, started, device)


def model_mean_correction(task: str, config: FinetuneConfig, *, paired: bool) -> float:
    """The mean-correction sigma (px) a model records: self-supervised denoising only (0: none)."""
    return float(config.mean_correction) if task == "denoise" and not paired else 0.0


def model_back_projection(task: str, config: FinetuneConfig, *, paired: bool) -> int:
    """The back-projection steps a model applies after prediction: self-supervised super-resolution only (0: none).

    Paired models learned the microscope's own degradation, which need not be area averaging.
    """
    return int(config.back_projection) if task == "superres" and not paired else 0


def model_leak_correction(task: str, config: FinetuneConfig, *, paired: bool) -> float | str:
    """The share of the own-pixel weight a model takes out after prediction, or "auto": self-supervised denoising only (0: none)."""
    return denoise.leak_setting(config.leak_correction) if task == "denoise" and not paired else 0.0


def _total_steps(config: FinetuneConfig, image: np.ndarray, patch: int) -> int:
    if config.steps is not None:
        return config.steps
    if config.epochs is None:
        return config.default_steps
    slices = image.shape[0] if image.ndim == 3 else 1
    per_epoch = math.ceil(slices * image.shape[-2] * image.shape[-1] / (config.batch_size * patch * patch))
    return max(1, per_epoch * config.epochs)


def _target_metrics(restore_plane, image, target, norm, stats, task, factor) -> dict[str, Any]:
    """PSNR/SSIM (data range of the target) of the restored image and of the plain input, on up to 4 slices."""
    zs = [None] if image.ndim == 2 else list(np.linspace(0, image.shape[0] - 1, min(METRIC_SLICES, image.shape[0])).astype(int))
    restored, baseline, reference = [], [], []
    for z in zs:
        plane = norm if z is None else norm[z]
        restored.append(denormalize(restore_plane(plane), stats, task))
        raw = (image if z is None else image[z]).astype(np.float32)
        baseline.append(superres.upscale_input(raw, factor) if factor > 1 else raw)
        reference.append((target if z is None else target[z]).astype(np.float32))
    ref = np.stack(reference)
    data_range = float(ref.max() - ref.min())
    ours = restoration_metrics(ref, np.stack(restored), data_range)
    base = restoration_metrics(ref, np.stack(baseline), data_range)
    baseline_name = "bicubic" if factor > 1 else "input"
    return {"psnr": round(ours["psnr"], 3), "ssim": round(ours["ssim"], 4),
            f"{baseline_name}_psnr": round(base["psnr"], 3), f"{baseline_name}_ssim": round(base["ssim"], 4),
            "slices_scored": len(zs)}


# ---------------------------------------------------------------------------------------------- apply

DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))  # (quarter turns, mirrored): identity first
MIRRORED = (DIHEDRAL[0], DIHEDRAL[4])  # the slice and its left-right mirror


def views_for(config: PredictConfig, shape: tuple[int, ...]) -> tuple[tuple[int, bool], ...]:
    """The views a restoration of an input of ``shape`` averages (:meth:`PredictConfig.view_count`), identity first."""
    return {8: DIHEDRAL, 2: MIRRORED, 1: DIHEDRAL[:1]}[config.view_count(shape)]


def _dihedral(plane: np.ndarray, k: int, flip: bool) -> np.ndarray:
    view = plane[:, ::-1] if flip else plane
    return np.ascontiguousarray(np.rot90(view, k))


def _dihedral_inverse(plane: np.ndarray, k: int, flip: bool) -> np.ndarray:
    view = np.rot90(plane, -k)
    return np.ascontiguousarray(view[:, ::-1] if flip else view)


def _view_shape(shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    return tuple(shape[:-2]) + ((shape[-1], shape[-2]) if k % 2 else (shape[-2], shape[-1]))


def restore_views(restore_plane, plane: np.ndarray, views=DIHEDRAL) -> np.ndarray:
    """Mean of ``restore_plane`` over the flips/rotations ``views`` of ``plane``, each turned back."""
    acc = None
    for k, flip in views:
        out = _dihedral_inverse(restore_plane(_dihedral(plane, k, flip)), k, flip)
        acc = out if acc is None else acc + out
    return acc / len(views)


def _network_input(plane: np.ndarray, fn, task: str, factor: int):
    """The grid the network runs on and the tiler function: superres upscales bicubically and adds the residual."""
    if task == "superres":
        return superres.upscale_input(plane, factor), superres.residual_fn(fn)
    return plane, fn


def restore_normalized(fn, plane: np.ndarray, task: str, factor: int, *, tile: int, overlap: int, multiple: int,
                       batch_size: int = 4, cancel: CancelToken | None = None) -> np.ndarray:
    """One normalised plane ``(Y, X)`` restored (``superres``: ``(Y * f, X * f)``), still normalised."""
    from .data.tiling import predict_tiled

    grid, run = _network_input(plane, fn, task, factor)
    out = predict_tiled(run, grid, out_channels=1, tile=tile, overlap=overlap, batch_size=batch_size,
                        size_multiple=multiple, cancel=cancel)
    return out[0]


def check_target_for(model: TrainedModel, image: Any, target: Any) -> np.ndarray:
    """A target to score a restoration model's result against: an image of the result's shape."""
    factor = int(model.meta.get("factor", 1)) if model.task == "superres" else 1
    target = check_image(target, name="target")
    expected = _expected_target_shape(tuple(int(n) for n in image.shape), factor)
    if target.shape != expected:
        raise InputError(f"The target has shape {target.shape}; the result will have shape {expected}: they must match.")
    return target
