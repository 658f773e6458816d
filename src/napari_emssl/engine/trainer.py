"""One visible training loop, written as a generator of events.

The loop knows nothing about tasks: ``loss_fn(net)`` draws a batch and returns a dict of
loss tensors with the key ``loss``: what is optimised and shown (live plot, progress), unless
the dict also holds ``objective``, which is then optimised while ``loss`` stays what is shown
(a loss whose optimised form changes scale during training, such as the re-visible denoising
loss, shows a comparable number). The loop owns the optimiser
(AdamW), the schedule (linear warm-up then cosine), AMP on CUDA, cancellation (checked
every step) and timed live previews.

Out of device memory in a step (CUDA's ``OutOfMemoryError``, MPS's "out of memory"): the
gradients and cached memory are freed and, when ``loss_fn`` takes a ``batch_size`` keyword
and the loop was told the batch size, the step is run again as two (then four, ...) smaller
batches whose gradients, weighted by their share of the batch, add up to the full batch's
(exactly for a loss averaged over samples; nearly for one averaged over painted pixels,
whose number differs between the parts); otherwise, or once a batch of one does
not fit, the run stops with :class:`~napari_emssl.errors.DeviceMemoryError` and the network
keeps the weights of the last finished step. When the loop ends by an error or is closed,
the network is moved to the CPU and the device memory released; when it ends normally the
optimiser state is freed and the network stays on the device for the caller (which moves it).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import DeviceMemoryError, DivergedError
from .cancel import CancelToken
from .device import autocast, is_out_of_memory, release, release_device_memory
from .events import Event, Preview, StepEnd

OBJECTIVE = "objective"  # the key of a loss dict optimised instead of "loss" when present (see the module docstring)


@dataclass
class TrainState:
    """What the loop leaves behind: the steps done, the per-step log, whether it was stopped."""

    step: int = 0
    log: list[dict[str, float]] | None = None
    cancelled: bool = False
    seconds: float = 0.0
    micro_batch_size: int | None = None  # set when the device ran out of memory and steps were split
    error: Exception | None = None  # what ended the run early (e.g. DeviceMemoryError), re-raised once the model is saved


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 1 % of the peak."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def accepts_batch_size(loss_fn: Callable[..., dict[str, torch.Tensor]]) -> bool:
    """True when ``loss_fn(net, batch_size=n)`` is allowed (the loop may then split a step that does not fit)."""
    try:
        return "batch_size" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False


def _chunks(batch_size: int, micro: int) -> list[int]:
    """``batch_size`` as micro-batches of at most ``micro`` (e.g. 5, 2 -> [2, 2, 1])."""
    full, rest = divmod(batch_size, micro)
    return [micro] * full + ([rest] if rest else [])


def _forward_backward(net, loss_fn, device, amp: bool, step: int, sizes: list[int] | None, batch_size: int | None):
    """One step's losses and gradients: in one call, or summed over micro-batches of ``sizes``."""
    if sizes is None:
        with autocast(device, amp):
            losses = loss_fn(net)
        values = {k: float(v.detach()) for k, v in losses.items()}
        _check_finite(values, step)
        losses.get(OBJECTIVE, losses["loss"]).backward()
        return values
    values: dict[str, float] = {}
    for n in sizes:
        with autocast(device, amp):
            losses = loss_fn(net, batch_size=n)
        part = {k: float(v.detach()) for k, v in losses.items()}
        _check_finite(part, step)
        weight = n / batch_size
        (losses.get(OBJECTIVE, losses["loss"]) * weight).backward()
        del losses
        for k, v in part.items():
            values[k] = values.get(k, 0.0) + weight * v
    return values


def _check_finite(values: dict[str, float], step: int) -> None:
    for key in ("loss", OBJECTIVE):  # checked before the update, so the weights stay usable
        if key in values and not math.isfinite(values[key]):
            raise DivergedError(f"the training loss became {values[key]} at step {step}; try a lower learning rate")


def train(
    net: torch.nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    *,
    total_steps: int,
    device: torch.device,
    lr: float,
    weight_decay: float = 1e-4,
    amp: bool = True,
    cancel: CancelToken | None = None,
    preview_fn: Callable[[int], Preview | None] | None = None,
    preview_every_s: float = 0.0,
    state: TrainState | None = None,
    clip_grad_norm: float = 1.0,
    batch_size: int | None = None,
) -> Iterator[Event]:
    """Run ``total_steps`` optimiser steps, yielding a :class:`StepEnd` after each.

    ``state`` (filled in as the loop runs) tells the caller how far it got and whether it
    was cancelled. A preview is produced at most every ``preview_every_s`` seconds and
    once at the end. ``batch_size`` (the batch ``loss_fn`` draws) lets the loop split a step
    that runs out of device memory, when ``loss_fn`` takes a ``batch_size`` keyword.
    """
    state = state if state is not None else TrainState()
    state.log = [] if state.log is None else state.log
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(50, total_steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(total_steps, warmup))
    splittable = batch_size is not None and accepts_batch_size(loss_fn)
    start = time.perf_counter()
    last_preview = start
    net.train()
    try:
        for step in range(1, total_steps + 1):
            if cancel is not None and cancel.cancelled:
                state.cancelled = True
                break
            while True:
                optimiser.zero_grad(set_to_none=True)
                sizes = _chunks(batch_size, state.micro_batch_size) if state.micro_batch_size else None
                out_of_memory = False
                try:
                    values = _forward_backward(net, loss_fn, device, amp, step, sizes, batch_size)
                except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
                    if not is_out_of_memory(exc):
                        raise
                    out_of_memory = True  # handled below, once the traceback (and the tensors it holds) is gone
                if not out_of_memory:
                    break
                optimiser.zero_grad(set_to_none=True)
                release_device_memory(device)
                current = state.micro_batch_size or batch_size
                if splittable and current is not None and current > 1:
                    state.micro_batch_size = current // 2
                    continue
                at = f" at batch size {current}" if current else ""
                raise DeviceMemoryError(
                    f"out of {_device_word(device)} memory in training step {step}{at}: lower --batch-size or --patch-size "
                    f"(the network keeps the weights of step {state.step})", step=state.step, batch_size=current,
                ) from None
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
            optimiser.step()
            schedule.step()
            now = time.perf_counter()
            state.step, state.seconds = step, now - start
            row = {"step": step, **values, "lr": schedule.get_last_lr()[0], "seconds": state.seconds}
            if state.micro_batch_size:
                row["micro_batch_size"] = state.micro_batch_size
            state.log.append(row)
            yield StepEnd(step=step, total_steps=total_steps, losses=values, seconds=state.seconds)
            due = preview_every_s > 0 and now - last_preview >= preview_every_s
            if preview_fn is not None and (due or step == total_steps):
                net.eval()
                event = preview_fn(step)
                net.train()
                last_preview = time.perf_counter()
                if event is not None:
                    yield event
    except BaseException:  # an error, a stop inside a preview, or the generator closed: give the device back
        net.eval()
        optimiser.zero_grad(set_to_none=True)
        optimiser.state.clear()
        release(net, device)
        raise
    net.eval()
    optimiser.zero_grad(set_to_none=True)
    optimiser.state.clear()  # the Adam moments: as big as the network, not needed once the loop is over
    release_device_memory(device)
    state.seconds = time.perf_counter() - start


def _device_word(device: torch.device) -> str:
    return {"cuda": "GPU", "mps": "GPU (MPS)"}.get(device.type, "device")
