"""The self-supervised pretraining loop, written as a generator of events.

It drives any :class:`~napari_emssl.pretext.base.Pretext`: one AdamW per phase (built from
``optimiser_groups()`` / ``optimiser_settings()``), each with a linear warm-up and cosine
schedule; each step runs the phases in order (zero grad, ``losses = model(batch, phase)``,
backward ``losses["loss"]``, clip the phase's gradient norm to 1, step), then
``pretext.after_step``. On CUDA: bf16 autocast, channels-last and optional ``torch.compile``.

Host-device syncs: none inside the step loop on CUDA. Losses stay detached device tensors
and are read back (one sync) only every ``config.log_every`` steps, on the first step and
at the end; that is also where non-finite losses are caught. :class:`StepEnd` is yielded
every step with the most recently read values (so between log steps it repeats them).
Loss names: a one-phase method reports its dict as it is; a method with several phases
reports ``<phase>_<name>`` for each phase plus ``loss`` = the sum of the phases' losses.

Cancellation: a :class:`CancelToken` checked every step (with DDP: the ranks agree on it
at log steps, so they all stop after the same step). Stopping keeps everything: the
checkpoint and the model directory are written then, as at the end and every
``checkpoint_every_s`` seconds.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.pretrain import PretrainConfig
from ..errors import DeviceMemoryError, DivergedError  # noqa: F401 - DivergedError: re-exported (it was defined here)
from . import distributed
from .cancel import CancelToken
from .checkpoint import Checkpoint, restore_checkpoint, save_checkpoint, write_pretrained
from .device import autocast, is_out_of_memory, release, release_device_memory
from .distributed import DistContext, EpochSampler  # noqa: F401 - EpochSampler: re-exported
from .events import Checkpointed, Event, Preview, StepEnd
from .trainer import warmup_cosine

__all__ = ["PretrainState", "DivergedError", "pretrain_loop", "make_optimisers", "EpochSampler", "HASH_DIR_ENV"]

#: debugging aid for DDP tests: each rank writes ``rank<R>.sha256`` of its final parameters here
HASH_DIR_ENV = "EMSSL_DEBUG_PARAM_HASH_DIR"
CLIP_GRAD_NORM = 1.0


@dataclass
class PretrainState:
    """What the loop leaves behind (filled in as it runs)."""

    step: int = 0
    total_steps: int = 0
    log: list[dict[str, float]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0  # this run only
    seconds_total: float = 0.0  # including the runs this one resumed
    images_per_s: float = 0.0
    model_dir: str | None = None


def make_optimisers(pretext: torch.nn.Module, lr: float | None, total_steps: int):
    """AdamW + warm-up/cosine LambdaLR per phase; ``lr`` (if given) replaces every phase's peak lr."""
    groups, settings = pretext.optimiser_groups(), pretext.optimiser_settings()
    missing = [p for p in pretext.phases if p not in groups or p not in settings]
    if missing:
        raise ValueError(f"{type(pretext).__name__} gives no parameters or settings for phase(s) {missing}")
    warmup = max(1, min(500, total_steps // 10))
    optimisers, schedulers = {}, {}
    for phase in pretext.phases:
        kwargs = dict(settings[phase])
        if lr is not None:
            kwargs["lr"] = lr
        optimisers[phase] = torch.optim.AdamW(groups[phase], **kwargs)
        schedulers[phase] = torch.optim.lr_scheduler.LambdaLR(optimisers[phase], warmup_cosine(total_steps, warmup))
    return groups, optimisers, schedulers


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(saved: dict[str, torch.Tensor], device: torch.device) -> None:
    if "torch_cpu" in saved:
        torch.set_rng_state(saved["torch_cpu"].to(torch.uint8))
    if device.type == "cuda" and "torch_cuda" in saved:
        torch.cuda.set_rng_state(saved["torch_cuda"].to(torch.uint8), device)


def param_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter of ``module`` (names sorted).

    Buffers are left out: DDP broadcasts rank 0's buffers (BatchNorm statistics) at the
    start of each forward, so after the last forward they legitimately differ per rank.
    """
    digest = hashlib.sha256()
    for name, value in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pretrain_loop(pretext: torch.nn.Module, dataset: torch.utils.data.Dataset, config: PretrainConfig, *,
                  device: torch.device, **kwargs: Any) -> Iterator[Event]:
    """Pretrain ``pretext`` for ``total_steps`` steps on batches from ``dataset`` (see :func:`_pretrain_loop`).

    However the run ends (finished, stopped, failed, or the generator closed), the network is
    moved to the CPU and the device memory released.
    """
    try:
        yield from _pretrain_loop(pretext, dataset, config, device=device, **kwargs)
    except BaseException:
        release(pretext, device)
        raise
    release(pretext, device)


def _pretrain_loop(
    pretext: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    config: PretrainConfig,
    *,
    device: torch.device,
    total_steps: int,
    out_dir: str | os.PathLike | None,
    cancel: CancelToken | None = None,
    ctx: DistContext | None = None,
    checkpoint: Checkpoint | None = None,
    lineage: dict[str, Any] | None = None,
    state: PretrainState | None = None,
) -> Iterator[Event]:
    """Pretrain ``pretext`` for ``total_steps`` steps on batches from ``dataset``.

    ``dataset`` has ``samples_per_epoch`` items (index ``e * n + i`` = item ``i`` of epoch
    ``e``); ``checkpoint`` (from :func:`load_checkpoint`) resumes a run. With ``out_dir`` the
    checkpoint and the pretrained model directory are written there (rank 0 only).
    Raises :class:`DivergedError` when a loss is not finite (nothing is saved then).
    """
    ctx = ctx or DistContext()
    state = state if state is not None else PretrainState()
    state.total_steps = total_steps
    lineage = dict(lineage or {})
    main = ctx.is_main
    cuda = device.type == "cuda"
    channels_last = cuda and config.channels_last
    phases = tuple(pretext.phases)

    pretext.to(device)
    if channels_last:
        pretext.to(memory_format=torch.channels_last)
    groups, optimisers, schedulers = make_optimisers(pretext, config.lr, total_steps)
    start_step, seconds_before = 0, 0.0
    if checkpoint is not None:
        saved_rng = restore_checkpoint(checkpoint, pretext=pretext, optimisers=optimisers, schedulers=schedulers)
        start_step = checkpoint.step
        seconds_before = float(checkpoint.meta.get("seconds_total", 0.0))
        state.log = [row for row in lineage.pop("previous_log", []) if row.get("step", 0) <= start_step]
        if ctx.enabled:  # the saved generator state is rank 0's; give each rank its own stream
            torch.manual_seed(config.seed * 1_000_003 + start_step * 101 + ctx.rank)
        else:
            _set_rng_state(saved_rng, device)
    lineage.pop("previous_log", None)
    state.step = start_step

    model: torch.nn.Module = pretext
    if ctx.enabled:
        model = distributed.wrap(pretext, device, find_unused_parameters=len(phases) > 1)
    if config.compile and cuda:
        model = torch.compile(model)

    n = len(dataset)
    per_step = config.batch_size * ctx.world_size
    steps_per_epoch = max(1, n // per_step)
    start_epoch, skip_steps = divmod(start_step, steps_per_epoch)
    remaining = total_steps - start_step
    sampler = EpochSampler(n, start_epoch, skip_steps * config.batch_size, max(0, remaining) * config.batch_size, ctx)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True, num_workers=config.num_workers,
        pin_memory=cuda, persistent_workers=config.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # leaves the global RNG (restored on resume) alone
    )

    fixed = None
    if main and config.preview_every_s > 0:
        sample = getattr(dataset, "sample", None)
        items = [sample(i, epoch=2**31 - 1) if sample else dataset[i].numpy() for i in range(min(2, config.batch_size))]
        fixed = torch.from_numpy(np.stack(items)).to(device)

    def write(stopped: bool) -> str | None:
        """Checkpoint + model directory (rank 0); returns the folder."""
        if not main or out_dir is None:
            return None
        state.seconds_total = seconds_before + state.seconds
        info = {
            "method": getattr(pretext, "method", ""), "arch": pretext.arch, "arch_kwargs": dict(pretext.arch_kwargs),
            "phases": list(phases), "config": config.to_dict(), "seed": config.seed, "world_size": ctx.world_size,
            "seconds_total": state.seconds_total,
            "rng": {"torch_seed": config.seed, "data_seed": config.seed, "note": "data crops depend on (seed, epoch, index) only"},
        }
        save_checkpoint(out_dir, pretext=pretext, optimisers=optimisers, schedulers=schedulers, step=state.step,
                        total_steps=total_steps, info=info, rng=_rng_state(device))
        meta = _model_meta(pretext, config, lineage, state, device, ctx, completed=not stopped and state.step >= total_steps)
        write_pretrained(out_dir, pretext.pretrained_state(), meta, state.log)
        state.model_dir = str(Path(out_dir))
        return state.model_dir

    pretext.train()
    started = time.perf_counter()
    last_preview = last_checkpoint = last_log_time = started
    last_log_step = start_step
    pending: dict[str, torch.Tensor] = {}
    stop = False
    step = start_step
    for batch in loader if remaining > 0 else ():
        if cancel is not None and cancel.cancelled and not ctx.enabled:
            stop = True
            break
        step += 1
        batch = batch.to(device, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        total_loss = None
        stepped = out_of_memory = False  # stepped: an optimiser of this step has updated the weights
        try:
            for phase in phases:
                opt = optimisers[phase]
                opt.zero_grad(set_to_none=True)
                with autocast(device, config.amp):
                    losses = model(batch, phase)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(groups[phase], CLIP_GRAD_NORM)
                opt.step()
                stepped = True
                schedulers[phase].step()
                if len(phases) == 1:
                    pending.update({k: v.detach() for k, v in losses.items()})
                else:
                    pending.update({f"{phase}_{k}": v.detach() for k, v in losses.items()})
                    total_loss = losses["loss"].detach() if total_loss is None else total_loss + losses["loss"].detach()
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True  # handled below, once the traceback (and the tensors it holds) is gone
        if out_of_memory:
            losses = batch = total_loss = None
            pending.clear()
            for opt in optimisers.values():
                opt.zero_grad(set_to_none=True)
            release_device_memory(device)
            saved = ""
            if not stepped and main and out_dir is not None:  # the weights are those of the last finished step: keep them
                state.seconds = time.perf_counter() - started
                write(stopped=True)
                saved = f"; the checkpoint of step {state.step} is saved in '{out_dir}' (--resume continues from it)"
            raise DeviceMemoryError(
                f"out of GPU memory in pretraining step {step} at batch size {config.batch_size} (patch {config.patch}): "
                f"lower --batch-size or --patch{saved}", step=state.step, batch_size=config.batch_size,
            ) from None
        if total_loss is not None:
            pending["loss"] = total_loss
        pretext.after_step(step, total_steps)
        state.step = step

        log_now = step % config.log_every == 0 or step == total_steps or step == start_step + 1
        if ctx.enabled and log_now:  # ranks agree on stopping where they sync anyway
            stop = distributed.any_flag(cancel is not None and cancel.cancelled, device)
        elif not ctx.enabled:
            stop = cancel is not None and cancel.cancelled
        now = time.perf_counter()
        state.seconds = now - started
        if log_now or stop:
            names = list(pending)
            values = torch.stack([pending[k].float().reshape(()) for k in names]).cpu().tolist()  # the one sync
            state.losses = dict(zip(names, values))
            bad = [k for k, v in state.losses.items() if not np.isfinite(v)]
            if bad:
                raise DivergedError(f"the pretraining loss {bad[0]} became {state.losses[bad[0]]} at step {step}; "
                                    "try a lower learning rate (--lr) or --no-amp")
            state.images_per_s = (step - last_log_step) * per_step / max(now - last_log_time, 1e-9)
            last_log_step, last_log_time = step, now
            row = {"step": float(step), **state.losses, "seconds": state.seconds, "images_per_s": state.images_per_s}
            for phase in phases:
                row["lr" if len(phases) == 1 else f"lr_{phase}"] = schedulers[phase].get_last_lr()[0]
            if main:
                state.log.append(row)
        yield StepEnd(step=step, total_steps=total_steps, losses=dict(state.losses), seconds=state.seconds)
        if fixed is not None and (now - last_preview >= config.preview_every_s or step == total_steps):
            event = _preview(pretext, fixed, step)
            last_preview = time.perf_counter()
            if event is not None:
                yield event
        if stop:
            break
        if main and out_dir is not None and config.checkpoint_every_s > 0 and now - last_checkpoint >= config.checkpoint_every_s \
                and step < total_steps:
            yield Checkpointed(step=step, path=write(stopped=False))
            last_checkpoint = time.perf_counter()

    state.cancelled = stop or (cancel is not None and cancel.cancelled and state.step < total_steps)
    state.seconds = time.perf_counter() - started
    pretext.eval()
    path = write(stopped=state.cancelled)
    if path is not None:
        yield Checkpointed(step=state.step, path=path)
    hash_dir = os.environ.get(HASH_DIR_ENV)
    if hash_dir:
        Path(hash_dir).mkdir(parents=True, exist_ok=True)
        (Path(hash_dir) / f"rank{ctx.rank}.sha256").write_text(param_hash(pretext))


def _preview(pretext: torch.nn.Module, fixed: torch.Tensor, step: int) -> Preview | None:
    """The pretext's reconstruction of ``fixed``, drawn from a forked random stream: previews come on a
    wall-clock schedule, so drawing from the training stream would make runs depend on timing."""
    was_training = pretext.training
    pretext.eval()
    devices = [fixed.device] if fixed.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step)
            out = pretext.preview(fixed)
    finally:
        pretext.train(was_training)
    if out is None:
        return None
    return Preview(step=step, data=out[0, 0].detach().float().cpu().numpy().astype(np.float32))


def _model_meta(pretext, config: PretrainConfig, lineage: dict[str, Any], state: PretrainState, device: torch.device,
                ctx: DistContext, *, completed: bool) -> dict[str, Any]:
    """model.json of a pretrain model directory (format version and task are added on writing)."""
    arch_kwargs = dict(pretext.arch_kwargs)
    try:
        from ..models import model_info

        arch_kwargs = {**model_info(pretext.arch).default_kwargs, **arch_kwargs}  # as create_model stamps them
    except Exception:  # noqa: BLE001 - an unregistered test architecture keeps its own kwargs
        pass
    method = getattr(pretext, "method", "") or config.method
    return {
        "arch": pretext.arch,
        "arch_kwargs": arch_kwargs,
        "in_channels": 1,
        "method": method,
        "method_options": dict(config.method_options),
        "input_axes": "YX",
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8, "per": "image"},
        "seed": config.seed,
        "config": config.to_dict(),
        "lineage": {
            "pretrain": {
                **lineage,
                "method": method,
                "steps": state.step,
                "total_steps": state.total_steps,
                "completed": completed,
                "final_losses": dict(state.losses),
                "device": str(device),
                "world_size": ctx.world_size,
                "global_batch": config.batch_size * ctx.world_size,
                "patch": config.patch,
                "seconds": round(state.seconds_total, 3),
                "images_per_s": round(state.images_per_s, 3),
            }
        },
    }
