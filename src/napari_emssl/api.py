"""The public entry points: every long run is a generator of typed events.

``iter_pretrain``, ``iter_finetune`` and ``iter_predict`` yield :mod:`napari_emssl.engine.events` objects and
end with :class:`RunFinished` (or :class:`RunCancelled`). The napari widgets run them in a
thread worker; the CLI iterates them and prints a progress bar. ``pretrain``, ``finetune``
and ``predict`` run them to completion.

Only plain data goes in and out: numpy arrays, configs, events, :class:`TrainedModel`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import FinetuneConfig, PredictConfig, PretrainConfig
from .data.labels import check_trainable, painted_slices, sparse_targets
from .data.normalize import percentile_normalize
from .data.patches import PatchSampler
from .data.tiling import Cancelled
from .data.validate import check_image, check_labels
from .engine.cancel import CancelToken
from .engine.device import prefers_channels_last, release_device_memory, resolve_device
from .engine.events import Event, Preview, RunCancelled, RunFinished, RunStarted
from .engine.model_dir import TrainedModel, build_meta, load_model
from .engine.predictor import choose_tiling, forward_fn, predict_image
from .engine.trainer import TrainState, train
from .engine.transfer import load_matching
from .errors import InputError, ModelFormatError
from .pretraining import PretrainResult, iter_pretrain
from .tasks.segmentation import dice_per_class, probabilities_to_labels, segmentation_loss

NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


@dataclass
class FinetuneResult:
    model: TrainedModel
    model_dir: str | None
    steps: int
    seconds: float


@dataclass
class PredictResult:
    labels: np.ndarray | None  # segmentation: values 1..K, same shape as the input
    probabilities: np.ndarray | None  # (K, ...) float32 when asked for
    seconds: float
    image: np.ndarray | None = None  # restoration: the restored image (superres: Y and X times scale_factor)
    scale_factor: int = 1  # superres: the output pixel size is the input's divided by this
    metrics: dict[str, float] = field(default_factory=dict)  # PSNR/SSIM against a target, when one was given
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- fine-tune


def iter_finetune(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    config: FinetuneConfig | None = None,
    *,
    target: np.ndarray | None = None,
    cancel: CancelToken | None = None,
    out_dir: str | None = None,
    source: str | None = None,
    preview_z: int | None = None,
) -> Iterator[Event]:
    """Fine-tune a network on ``image`` for ``config.task``; yield events.

    Segmentation learns from sparse painted ``labels``: 0 = not painted (ignored),
    1 = background, 2.. = classes; for stacks only the painted slices are used.
    Restoration tasks (denoise, bgremove, superres) need no labels; ``target`` (a clean,
    background-free or high-resolution image of the same field of view) switches to paired
    training, see :mod:`napari_emssl.restoration`. ``out_dir`` (optional) receives the model
    directory, also when the run is stopped (the model trained so far is kept, never lost).
    """
    config = config or FinetuneConfig()
    if config.task != "segment":
        from .restoration import iter_finetune_restoration

        if labels is not None:
            raise InputError(f"painted labels are for segmentation; {config.task} learns from the image itself "
                             "(or from a paired target image)")
        yield from iter_finetune_restoration(image, config, target=target, cancel=cancel, out_dir=out_dir, source=source,
                                             preview_z=preview_z)
        return
    if target is not None:
        raise InputError("a target image is for restoration tasks (denoise, bgremove, superres); segmentation learns from labels")
    if labels is None:
        raise InputError("segmentation needs painted labels (0 = not painted, 1 = background, 2.. = classes)")
    image = check_image(image)
    labels = check_labels(labels, image.shape)
    classes = check_trainable(labels)
    num_classes = max(classes)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    net, init_info = _initial_network(config, num_classes)
    net.to(device)
    if prefers_channels_last(device):
        net.to(memory_format=torch.channels_last)
    patch = int(math.ceil(config.patch_size / net.size_multiple) * net.size_multiple)
    norm, stats = percentile_normalize(image, NORMALIZATION["low"], NORMALIZATION["high"])
    targets = sparse_targets(labels)
    sampler = PatchSampler(norm, targets, patch, seed=config.seed)
    slices = painted_slices(labels)
    total_steps = _total_steps(config, len(slices), image.shape[-2:], patch)
    tile, overlap = choose_tiling(net.receptive_field, config.tile, net.size_multiple)

    def loss_fn(model: torch.nn.Module, batch_size: int = config.batch_size) -> dict[str, torch.Tensor]:
        x, y = sampler.sample(batch_size)
        x = torch.from_numpy(x).to(device, non_blocking=True)
        y = torch.from_numpy(y).to(device, non_blocking=True)
        return segmentation_loss(model(x), y, dice_weight=config.dice_weight)

    z_preview = preview_z if (image.ndim == 3 and preview_z is not None and 0 <= preview_z < image.shape[0]) else None
    if image.ndim == 3 and z_preview is None:
        z_preview = slices[0]
    fn = forward_fn(net, device, amp=config.amp)

    def preview_fn(step: int) -> Preview:
        plane = norm[z_preview] if z_preview is not None else norm
        probs = predict_image(fn, plane, out_channels=num_classes, tile=tile, overlap=overlap, batch_size=4,
                              size_multiple=net.size_multiple, cancel=cancel)
        return Preview(step=step, data=probabilities_to_labels(probs), z=z_preview)

    painted_per_class = {int(c): int((labels == c).sum()) for c in classes}
    yield RunStarted(
        kind="finetune", total_steps=total_steps, device=str(device),
        info={"arch": net.arch_name, "classes": classes, "painted_pixels": painted_per_class, "painted_slices": slices,
              "patch_size": patch, "receptive_field": net.receptive_field, **init_info},
    )
    state, started = TrainState(), time.perf_counter()
    yield from _train_events(net, loss_fn, config, total_steps, device, cancel, preview_fn, state)
    meta = build_meta(
        net, task="segment", out_channels=num_classes, classes=list(range(1, num_classes + 1)),
        normalization=dict(NORMALIZATION), tile=tile, overlap=overlap, seed=config.seed,
        config=config.to_dict(),
        lineage={"init": init_info, "finetune": {"source": source, "shape": list(image.shape), "painted_pixels": painted_per_class,
                                                 "painted_slices": slices, "steps": state.step, "completed": not state.cancelled}},
        metrics={"train_painted_dice": _painted_dice(fn, norm, labels, slices, num_classes, tile, overlap, net.size_multiple)}
        if not state.cancelled else {},
    )
    yield from _finish_events(TrainedModel(net=net.cpu(), meta=meta, log=state.log or []), out_dir, state, started, device)


def _train_events(net, loss_fn, config: FinetuneConfig, total_steps: int, device, cancel, preview_fn,
                  state: TrainState) -> Iterator[Event]:
    """The fine-tuning loop with the config's optimiser settings; a stop (also inside a preview) ends it cleanly.

    Out of device memory (after the loop split the steps as far as the loss allows) ends it like a
    stop: the model trained so far is saved by :func:`_finish_events`, which then raises the error.
    """
    from .errors import DeviceMemoryError

    try:
        yield from train(
            net, loss_fn, total_steps=total_steps, device=device, lr=config.lr, weight_decay=config.weight_decay,
            amp=config.amp, cancel=cancel, preview_fn=preview_fn if config.preview_every_s > 0 else None,
            preview_every_s=config.preview_every_s, state=state, batch_size=config.batch_size,
        )
    except Cancelled:
        state.cancelled = True
    except DeviceMemoryError as exc:
        state.cancelled, state.error = True, exc
    net.eval()


def _finish_events(model: TrainedModel, out_dir: str | None, state: TrainState, started: float,
                   device: torch.device | None = None) -> Iterator[Event]:
    """Save the model (also when stopped: nothing trained is lost) and end the run.

    A run ended by an error (``state.error``: out of device memory) raises it once the model is saved.
    """
    model.net.to(memory_format=torch.contiguous_format)  # trained channels_last; handed back in the usual layout
    if device is not None:
        release_device_memory(device)  # the network is on the CPU now: give the cached device memory back
    saved = str(model.save(out_dir)) if out_dir else None
    if state.error is not None:
        from .errors import DeviceMemoryError

        kept = f"; the model trained so far ({state.step} steps) is saved in {saved}" if saved else ""
        raise DeviceMemoryError(f"{state.error}{kept}", step=state.step) from state.error
    result = FinetuneResult(model=model, model_dir=saved, steps=state.step, seconds=time.perf_counter() - started)
    if state.cancelled:
        yield RunCancelled(step=state.step, seconds=result.seconds, result=result)
    else:
        yield RunFinished(result=result, seconds=result.seconds)


def _initial_network(config: FinetuneConfig, num_classes: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from . import zoo
    from .models import DEFAULT_SEGMENT_ARCH, create_model

    source = None
    if config.init not in ("bundled", "random"):
        from .engine.checkpoint import is_pretrained_dir

        if is_pretrained_dir(config.init):
            return _pretrained_network(config, num_classes)
        source = load_model(config.init)
    if source is not None and config.arch is None and not config.arch_kwargs:
        arch, arch_kwargs = source.meta["arch"], dict(source.meta["arch_kwargs"])  # no architecture asked: the source's
    else:
        arch, arch_kwargs = config.arch or DEFAULT_SEGMENT_ARCH, dict(config.arch_kwargs)
    net = create_model(arch, in_channels=1, out_channels=num_classes, **arch_kwargs)
    if config.init == "random":
        return net, {"init": "random"}
    if config.init == "bundled":
        entry = zoo.bundled_for(config.task, arch, dict(net.arch_kwargs))
        if entry is None:
            return net, {"init": "random", "init_note": _no_bundled_note(config.task, arch, dict(net.arch_kwargs))}
        from safetensors.torch import load_file

        matched, total = load_matching(net, load_file(str(entry.path)))
        return net, {"init": f"bundled:{entry.name}", "init_kind": "bundled", "pretrain_method": entry.method,
                     "pretrain_steps": entry.card.get("steps"), "matched_tensors": matched, "total_tensors": total}
    if source.meta["arch"] != arch or source.meta["arch_kwargs"] != dict(net.arch_kwargs):
        raise ModelFormatError(
            f"the model in {str(config.init)!r} is a {source.meta['arch']!r} network with options {source.meta['arch_kwargs']}; "
            f"fine-tuning it needs the same architecture (asked for {arch!r} with options {dict(net.arch_kwargs)})"
        )
    matched, total = load_matching(net, source.net.state_dict())
    return net, {"init": str(config.init), "matched_tensors": matched, "total_tensors": total}


def _no_bundled_note(task: str, arch: str, arch_kwargs: dict[str, Any]) -> str:
    """Why ``--init bundled`` found nothing for this task and network (said to the user; the run starts from random)."""
    from . import zoo

    notes = [f"the bundled {entry.method} weights for {arch!r} are not used for {task!r}: "
             + (entry.card.get("task_note") or f"they are meant for {', '.join(entry.tasks)}")
             for entry in zoo.bundled_for_network(arch, arch_kwargs)]
    return "; ".join(notes) if notes else f"no bundled pretrained weights for {arch!r} with options {arch_kwargs}"


def _pretrained_network(config: FinetuneConfig, num_classes: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The downstream network started from a self-supervised pretrain directory (``model.json`` task ``pretrain``)."""
    from .engine.checkpoint import read_pretrained
    from .models import create_model

    meta, state = read_pretrained(config.init)
    if config.arch is None and not config.arch_kwargs:
        arch, arch_kwargs = meta["arch"], dict(meta["arch_kwargs"])
    else:
        arch, arch_kwargs = config.arch or meta["arch"], dict(config.arch_kwargs)
    net = create_model(arch, in_channels=1, out_channels=num_classes, **arch_kwargs)
    if meta["arch"] != arch or dict(meta["arch_kwargs"]) != dict(net.arch_kwargs):
        raise ModelFormatError(
            f"the pretrained weights in {str(config.init)!r} are for a {meta['arch']!r} network with options {meta['arch_kwargs']}; "
            f"fine-tuning from them needs the same architecture (asked for {arch!r} with options {dict(net.arch_kwargs)})"
        )
    matched, total = load_matching(net, state)
    if matched == 0:
        raise ModelFormatError(
            f"none of the {len(state)} pretrained tensors in {str(config.init)!r} fits the {arch!r} network "
            "(no parameter name and shape in common)"
        )
    pretrain = meta.get("lineage", {}).get("pretrain", {})
    return net, {"init": str(config.init), "init_kind": "pretrain", "pretrain_method": meta.get("method"),
                 "pretrain_steps": pretrain.get("steps"), "matched_tensors": matched, "total_tensors": total}


def _total_steps(config: FinetuneConfig, n_slices: int, shape_yx: tuple[int, int], patch: int) -> int:
    if config.steps is not None:
        return config.steps
    if config.epochs is None:
        return FinetuneConfig.DEFAULT_STEPS
    per_epoch = math.ceil(n_slices * shape_yx[0] * shape_yx[1] / (config.batch_size * patch * patch))
    return max(1, per_epoch * config.epochs)


def _painted_dice(fn, norm, labels, slices, k, tile, overlap, multiple) -> dict[str, float]:
    """Dice on the painted pixels themselves: how well the strokes are fitted (not a validation)."""
    planes = [(norm[z], labels[z]) for z in slices[:4]] if norm.ndim == 3 else [(norm, labels)]
    pred_all, true_all = [], []
    for plane, lab in planes:
        probs = predict_image(fn, plane, out_channels=k, tile=tile, overlap=overlap, batch_size=4, size_multiple=multiple)
        painted = lab > 0
        pred_all.append(probabilities_to_labels(probs)[painted])
        true_all.append(lab[painted])
    scores = dice_per_class(np.concatenate(pred_all), np.concatenate(true_all), list(range(1, k + 1)))
    return {str(c): round(v, 4) for c, v in scores.items()}


# ---------------------------------------------------------------------------------------------- predict


def iter_predict(
    model: TrainedModel | str,
    image: Any,
    config: PredictConfig | None = None,
    *,
    target: np.ndarray | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """Apply a model to a 2D image or a stack (slice by slice); the result is held in memory.

    Segmentation models give ``labels`` (and ``probabilities`` when asked for); restoration
    models give ``image`` in the input's units (superres: ``scale_factor`` times larger in Y
    and X); ``target`` adds PSNR/SSIM. ``image`` may also be a lazily read array (memory-mapped
    TIFF, zarr, dask): it is read one slice at a time. To stream results to files instead,
    see :func:`napari_emssl.batch.iter_predict_files`.
    """
    from .io.sinks import ArraySink
    from .prediction import iter_apply

    config = config or PredictConfig()
    if not isinstance(model, TrainedModel):
        model = load_model(model)
    if target is not None and model.task != "segment":
        from .restoration import check_target_for

        target = check_target_for(model, image, target)
    elif target is not None:
        raise InputError("a target image scores restoration results (PSNR, SSIM); this is a segmentation model")

    def make_sinks(specs):
        return {key: ArraySink(shape, dtype, plane_ndim=3 if "C" in axes else 2) for key, (shape, dtype, axes) in specs.items()}

    for event in iter_apply(model, image, config, make_sinks, cancel=cancel):
        if isinstance(event, RunFinished):
            run = event.result
            arrays = {key: sink.array for key, sink in run["sinks"].items()}
            probs = arrays.get("probabilities")
            if probs is not None and probs.ndim == 4:
                probs = np.moveaxis(probs, 0, 1)  # (Z, K, Y, X) -> (K, Z, Y, X)
            metrics: dict[str, float] = {}
            if target is not None:
                from .tasks.metrics import restoration_metrics

                scores = restoration_metrics(target.astype(np.float32), arrays["image"].astype(np.float32))
                metrics = {"psnr": round(scores["psnr"], 3), "ssim": round(scores["ssim"], 4)}
            result = PredictResult(labels=arrays.get("labels"), probabilities=probs, seconds=run["seconds"],
                                   image=arrays.get("image"), scale_factor=run["scale_factor"], metrics=metrics,
                                   info=run["info"])
            yield RunFinished(result=result, seconds=result.seconds)
        else:
            yield event


# ---------------------------------------------------------------------------------------------- run to completion


def run_to_end(events: Iterator[Event], on_event=None) -> Event:
    """Iterate a run; return its last event (RunFinished or RunCancelled)."""
    last = None
    for event in events:
        if on_event is not None:
            on_event(event)
        last = event
    return last


def pretrain(data: Sequence[Any] | Any, config: PretrainConfig, out_dir: str | os.PathLike | None = None,
             **kwargs: Any) -> PretrainResult:
    """Pretrain to completion and return the result."""
    return run_to_end(iter_pretrain(data, config, out_dir, **kwargs)).result


def finetune(image: np.ndarray, labels: np.ndarray | None = None, config: FinetuneConfig | None = None, **kwargs: Any) -> FinetuneResult:
    """Fine-tune to completion and return the result."""
    return run_to_end(iter_finetune(image, labels, config, **kwargs)).result


def predict(model: TrainedModel | str, image: np.ndarray, config: PredictConfig | None = None, **kwargs: Any) -> PredictResult:
    """Predict to completion and return the result."""
    return run_to_end(iter_predict(model, image, config, **kwargs)).result
