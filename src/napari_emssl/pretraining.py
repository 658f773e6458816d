"""Self-supervised pretraining as a run of events: :func:`iter_pretrain` (re-exported by :mod:`napari_emssl.api`).

Only plain data goes in and out: paths or arrays, a :class:`PretrainConfig`, events, and a
:class:`PretrainResult` at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import PretrainConfig
from .engine.cancel import CancelToken
from .engine.device import resolve_device
from .engine.events import Event, RunCancelled, RunFinished, RunStarted
from .errors import InputError


@dataclass
class PretrainResult:
    model_dir: str | None  # the pretrained model directory (also the checkpoint folder)
    steps: int  # optimiser steps done in total (including a resumed run's earlier steps)
    seconds: float  # wall time of this run
    losses: dict[str, float] = field(default_factory=dict)  # the last logged losses
    images_per_s: float = 0.0  # patches per second over all processes, at the last log step


def iter_pretrain(
    data: Sequence[Any] | Any,
    config: PretrainConfig,
    out_dir: str | os.PathLike | None = None,
    cancel: CancelToken | None = None,
    *,
    resume: bool = False,
    pretext: torch.nn.Module | None = None,
) -> Iterator[Event]:
    """Pretrain a network self-supervised on unlabeled images; yield events.

    ``data``: paths (TIFF files/stacks, PNG/JPEG, folders, zarr) and/or arrays (numpy,
    dask, zarr; 2D or stacks). ``out_dir`` receives the checkpoint and the pretrained model
    directory (every ``config.checkpoint_every_s`` seconds, at the end and when stopped);
    ``resume`` continues the checkpoint in ``out_dir``. ``pretext`` replaces the module
    built from ``config.method`` (for custom methods and tests). Under ``torchrun`` the
    processes train together (DDP); only rank 0 writes files and yields previews.

    Ends with :class:`RunFinished` or, when stopped, :class:`RunCancelled`; both carry a
    :class:`PretrainResult`.
    """
    from .data.unlabeled import build_dataset
    from .engine import distributed
    from .engine.checkpoint import has_checkpoint, load_checkpoint
    from .engine.model_dir import LOG_NAME, _read_log
    from .engine.pretrainer import PretrainState, pretrain_loop

    if not isinstance(config, PretrainConfig):
        raise InputError("config must be a PretrainConfig")
    ctx = distributed.from_env()
    checkpoint = None
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise InputError(f"the output '{out_dir}' is a file; expected a folder")
    if resume:
        if out_dir is None:
            raise InputError("resuming needs the output folder that holds the checkpoint")
        checkpoint = load_checkpoint(out_dir)
        method = getattr(pretext, "method", None) or config.method
        if checkpoint.meta["method"] != method:
            raise InputError(f"the checkpoint in '{out_dir}' was made with method {checkpoint.meta['method']!r}, not {method!r}")
        if config.arch is None and not config.arch_kwargs and pretext is None:  # nothing asked: the checkpoint's
            config = config.replace(arch=checkpoint.meta["arch"], arch_kwargs=dict(checkpoint.meta["arch_kwargs"]))
    elif out_dir is not None and has_checkpoint(out_dir):
        raise InputError(f"'{out_dir}' already holds a pretraining checkpoint; resume it (--resume) or choose another output folder")

    world = ctx.world_size
    steps_per_epoch = config.steps_per_epoch(world)
    dataset = build_dataset(data, config.patch, steps_per_epoch * config.batch_size * world, seed=config.seed)
    if ctx.enabled:
        ctx, device = distributed.setup(ctx, config.device)
    else:
        device = resolve_device(config.device)
    try:
        torch.manual_seed(config.seed)
        if pretext is None:
            from .pretext import create_pretext, default_arch

            arch = config.arch or default_arch(config.method)
            pretext = create_pretext(config.method, arch=arch, arch_kwargs=dict(config.arch_kwargs), **config.method_options)
        if checkpoint is not None and (checkpoint.meta["arch"] != pretext.arch or checkpoint.meta["arch_kwargs"] != dict(pretext.arch_kwargs)):
            raise InputError(
                f"the checkpoint in '{out_dir}' trains {checkpoint.meta['arch']!r} with options {checkpoint.meta['arch_kwargs']}; "
                f"this run asks for {pretext.arch!r} with options {dict(pretext.arch_kwargs)}"
            )
        if ctx.enabled:
            torch.manual_seed(config.seed + 7919 * ctx.rank)  # DDP copies rank 0's weights; random views differ per rank
        total = config.total_steps(world)
        if checkpoint is not None and config.steps is None and config.epochs is None:
            total = int(checkpoint.meta["total_steps"])
        sources = [s.name for s in dataset.sources]
        lineage: dict[str, Any] = {"data": sources, "images": dataset.info()["images"], "pixels": dataset.info()["pixels"]}
        if checkpoint is not None:
            lineage["previous_log"] = _read_log(Path(out_dir) / LOG_NAME)
            lineage["resumed_from_step"] = checkpoint.step
        n_params = sum(p.numel() for p in pretext.parameters())
        yield RunStarted(
            kind="pretrain", total_steps=total, device=str(device),
            info={"method": getattr(pretext, "method", config.method), "arch": pretext.arch, **dataset.info(),
                  "world_size": world, "rank": ctx.rank, "batch_size": config.batch_size,
                  "global_batch": config.batch_size * world, "steps_per_epoch": steps_per_epoch, "parameters": n_params,
                  "resumed_from_step": checkpoint.step if checkpoint is not None else 0},
        )
        state = PretrainState()
        yield from pretrain_loop(pretext, dataset, config, device=device, total_steps=total, out_dir=out_dir, cancel=cancel,
                                 ctx=ctx, checkpoint=checkpoint, lineage=lineage, state=state)
        if ctx.enabled:
            distributed.teardown(ctx)
    finally:
        if ctx.enabled and torch.distributed.is_initialized():  # an error on one rank: leave without waiting
            torch.distributed.destroy_process_group()
    result = PretrainResult(model_dir=out_dir if out_dir is not None else None, steps=state.step, seconds=state.seconds,
                            losses=dict(state.losses), images_per_s=state.images_per_s)
    if state.cancelled:
        yield RunCancelled(step=state.step, seconds=state.seconds, result=result)
    else:
        yield RunFinished(result=result, seconds=state.seconds)
