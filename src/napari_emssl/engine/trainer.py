"""One visible training loop, written as a generator of events.

The loop knows nothing about tasks: ``loss_fn(net)`` draws a batch and returns a dict of
loss tensors with the key ``loss`` (what is optimised). The loop owns the optimiser
(AdamW), the schedule (linear warm-up then cosine), AMP on CUDA, cancellation (checked
every step) and timed live previews.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .cancel import CancelToken
from .device import autocast
from .events import Event, Preview, StepEnd


@dataclass
class TrainState:
    """What the loop leaves behind: the steps done, the per-step log, whether it was stopped."""

    step: int = 0
    log: list[dict[str, float]] | None = None
    cancelled: bool = False
    seconds: float = 0.0


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 1 % of the peak."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    net: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], dict[str, torch.Tensor]],
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
) -> Iterator[Event]:
    """Run ``total_steps`` optimiser steps, yielding a :class:`StepEnd` after each.

    ``state`` (filled in as the loop runs) tells the caller how far it got and whether it
    was cancelled. A preview is produced at most every ``preview_every_s`` seconds and
    once at the end.
    """
    state = state if state is not None else TrainState()
    state.log = [] if state.log is None else state.log
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(50, total_steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(total_steps, warmup))
    start = time.perf_counter()
    last_preview = start
    net.train()
    for step in range(1, total_steps + 1):
        if cancel is not None and cancel.cancelled:
            state.cancelled = True
            break
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, amp):
            losses = loss_fn(net)
        values = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(values["loss"]):  # checked before the update, so the weights stay usable
            raise FloatingPointError(f"the training loss became {values['loss']} at step {step}; try a lower learning rate")
        losses["loss"].backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
        optimiser.step()
        schedule.step()
        now = time.perf_counter()
        state.step, state.seconds = step, now - start
        state.log.append({"step": step, **values, "lr": schedule.get_last_lr()[0], "seconds": state.seconds})
        yield StepEnd(step=step, total_steps=total_steps, losses=values, seconds=state.seconds)
        due = preview_every_s > 0 and now - last_preview >= preview_every_s
        if preview_fn is not None and (due or step == total_steps):
            net.eval()
            event = preview_fn(step)
            net.train()
            last_preview = time.perf_counter()
            if event is not None:
                yield event
    net.eval()
    state.seconds = time.perf_counter() - start
