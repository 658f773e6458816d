"""Pick the compute device: CUDA when present, else Apple MPS, else the CPU."""

from __future__ import annotations

import torch

from ..errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a usable :class:`torch.device`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for, but no CUDA GPU is available here (use --device auto or cpu)")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise InputError("device 'mps' was asked for, but Apple MPS is not available here (use --device auto or cpu)")
        return torch.device("mps")
    raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or mps")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when enabled; a no-op context elsewhere."""
    use = enabled and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


def prefers_channels_last(device: torch.device) -> bool:
    """Channels-last (NHWC) convolutions are faster on CUDA and on the CPU (oneDNN: about 1.6x for
    prediction and 1.2x for training of the default U-Net, docs/benchmarks.md); MPS keeps NCHW."""
    return device.type in ("cuda", "cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error: CUDA's own type, or the RuntimeError that MPS (and older CUDA) raise."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_device_memory(device: torch.device) -> None:
    """Give the allocator's cached device memory back to the driver (a no-op on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps":
        try:
            torch.mps.empty_cache()
        except (AttributeError, RuntimeError):
            pass


def release(net: torch.nn.Module, device: torch.device) -> None:
    """Move ``net`` to the CPU and free the device memory it held (end of a run: finished, stopped or failed)."""
    if device.type != "cpu":
        net.to("cpu")
        release_device_memory(device)
