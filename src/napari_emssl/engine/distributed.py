"""Multi-process data-parallel training (DDP) when launched by ``torchrun``.

``torchrun --nproc_per_node N -m napari_emssl.cli pretrain ...`` starts N processes with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`setup` then joins the process
group (NCCL on CUDA, one GPU per process ``cuda:LOCAL_RANK``; gloo on the CPU),
:func:`wrap` puts the module into ``DistributedDataParallel`` and :func:`teardown` waits
for every rank and leaves the group. Each process trains on ``batch_size`` patches per
step, so the global batch is ``batch_size x N``. Only rank 0 writes files, logs and
yields previews. Nothing here runs (or imports differently) without those variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError

__all__ = ["DistContext", "EpochSampler", "from_env", "setup", "wrap", "any_flag", "barrier", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run; ``world_size == 1`` means no DDP at all."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(environ: dict[str, str] | None = None) -> DistContext:
    """Read ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (set by torchrun); a single process without them."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers (they are set by torchrun)") from None
    if world <= 1:
        return DistContext()
    return DistContext(rank=rank, local_rank=local, world_size=world)


def setup(ctx: DistContext, device_name: str) -> tuple[DistContext, torch.device]:
    """Join the process group; return the context (with its backend) and this rank's device.

    ``device_name`` ``auto`` or ``cuda`` uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is
    available; ``cpu`` (or no CUDA) uses the CPU with gloo.
    """
    use_cuda = device_name in ("auto", "cuda") or device_name.startswith("cuda")
    use_cuda = use_cuda and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but no CUDA GPU is available here (use --device auto or cpu)")
    if device_name == "mps":
        raise InputError("multi-process training runs on CUDA GPUs or the CPU, not on Apple MPS")
    if use_cuda:
        if ctx.local_rank >= torch.cuda.device_count():
            raise InputError(f"process {ctx.local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size, **kwargs)
    return DistContext(ctx.rank, ctx.local_rank, ctx.world_size, backend), device


def wrap(module: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``module`` (already on ``device``)."""
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective: call it on all ranks together)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    """Wait for every rank, then leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices for the rest of the run, epoch after epoch, starting ``skip`` samples into ``start_epoch``.

    Index ``e * n + i`` stands for item ``i`` of epoch ``e`` (``UnlabeledPatches`` decodes it),
    so one DataLoader (and its workers) serves the whole run. With DDP each epoch's items
    come from a ``DistributedSampler`` (``set_epoch`` every epoch).
    """

    def __init__(self, n: int, start_epoch: int, skip: int, total: int, ctx: DistContext) -> None:
        self.n, self.start_epoch, self.skip, self.total, self.ctx = n, start_epoch, skip, total, ctx
        self._dist = None
        if ctx.enabled:
            self._dist = torch.utils.data.DistributedSampler(
                range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False, drop_last=True)

    def _epoch_items(self, epoch: int) -> list[int]:
        if self._dist is None:
            return list(range(self.n))
        self._dist.set_epoch(epoch)
        return list(self._dist)

    def __iter__(self):
        epoch, skip, left = self.start_epoch, self.skip, self.total
        while left > 0:
            for i in self._epoch_items(epoch)[skip:]:
                yield epoch * self.n + i
                left -= 1
                if left == 0:
                    return
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return self.total
