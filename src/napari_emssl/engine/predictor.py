"""Apply a network to whole images and stacks, tile by tile."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..data.tiling import predict_tiled, tile_count
from ..errors import InputError
from .device import autocast, is_out_of_memory, prefers_channels_last, release_device_memory


def choose_tiling(receptive_field: int, tile: int, size_multiple: int, overlap: int | None = None) -> tuple[int, int]:
    """Tile size and overlap: overlap >= the receptive field's reach to one side, tile >= 2 x overlap.

    The reach of a network with an (exact, worst-case) receptive field ``rf`` is at most
    ``rf // 2 + 1`` pixels to each side (pooling makes it depend on the pixel position).

    Both are rounded up to the model's size multiple so every tile is a valid input.
    """
    m = max(1, int(size_multiple))
    if overlap is None:
        overlap = receptive_field // 2 + 1
    overlap = int(math.ceil(overlap / m) * m) if overlap else 0
    tile = max(int(tile), 2 * overlap + m)
    tile = int(math.ceil(tile / m) * m)
    return tile, overlap


def count_tiles(shape: tuple[int, ...], tile: int, overlap: int) -> int:
    """Tiles needed for a 2D image or a stack (slice by slice)."""
    slices = shape[0] if len(shape) == 3 else 1
    return slices * tile_count(shape[-2:], tile, overlap)


def forward_fn(
    net: torch.nn.Module, device: torch.device, *, amp: bool = True, activation: str = "softmax",
    max_batch: int | None = None,
) -> "TileForward":
    """Wrap a network as numpy (B,C,H,W) -> numpy (B,K,H,W) for the tiler (see :class:`TileForward`)."""
    return TileForward(net, device, amp=amp, activation=activation, max_batch=max_batch)


class TileForward:
    """A network as a numpy function for the tiler, run in sub-batches that fit the device.

    On CUDA and the CPU the network and its input are channels_last (faster convolutions); on
    CUDA it runs under bf16 autocast (``amp``) and offers :meth:`device_fn` (``device_fn`` is set),
    so the tiler cuts and blends the tiles on the GPU (``data/tiling_on_device.py``); called
    with numpy it stages the batch through a pinned host buffer (asynchronous copy).
    ``on_device`` forces that choice (tests run the device loop on the CPU). When the device
    runs out of memory the sub-batch is halved and the tiles are tried again (``max_batch``
    remembers it); a single tile that does not fit raises
    :class:`~napari_emssl.errors.InputError` asking for smaller tiles.
    """

    def __init__(self, net: torch.nn.Module, device: torch.device, *, amp: bool = True, activation: str = "softmax",
                 max_batch: int | None = None, on_device: bool | None = None) -> None:
        self.net, self.device, self.amp, self.activation = net, device, amp, activation
        self.max_batch = max_batch
        self.backoffs = 0
        self._cuda = device.type == "cuda"
        self._channels_last = prefers_channels_last(device)
        self._pinned: torch.Tensor | None = None
        if self._channels_last:
            net.to(memory_format=torch.channels_last)
        self.device_fn = self.on_device_call if (self._cuda if on_device is None else on_device) else None

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if not self._cuda:
            return x.to(self.device)
        if self._pinned is None or self._pinned.numel() < x.numel():
            self._pinned = torch.empty(x.numel(), dtype=torch.float32).pin_memory()
        staged = self._pinned[: x.numel()].view(x.shape)
        staged.copy_(x)
        return staged.to(self.device, non_blocking=True)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,1,t,t) on the device -> (B,K,t,t) float32 on the device, activation applied."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.amp):
            y = self.net(x).float()
            if self.activation == "softmax":
                y = y.softmax(dim=1)
            elif self.activation == "sigmoid":
                y = y.sigmoid()
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(self._to_device(batch)).cpu().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._in_sub_batches(batch, self._run, np.concatenate)

    def on_device_call(self, batch: torch.Tensor) -> torch.Tensor:
        """The tiler's device path: a tensor batch on the device in, the outputs there out (``device_fn``)."""
        return self._in_sub_batches(batch, self._forward, torch.cat)

    def _in_sub_batches(self, batch, run, concatenate):
        n = len(batch)
        outs, start = [], 0
        while start < n:
            size = min(self.max_batch or n, n - start)
            try:
                outs.append(run(batch[start : start + size]))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_device_memory(self.device)
                if size == 1:
                    raise InputError(
                        f"The {self.device.type.upper()} device ran out of memory for a single tile of "
                        f"{batch.shape[-2]} x {batch.shape[-1]} pixels; choose smaller tiles (--tile) or the CPU."
                    ) from None
                self.max_batch = max(1, size // 2)
                self.backoffs += 1
                continue
            start += size
        return outs[0] if len(outs) == 1 else concatenate(outs)


def auto_batch_size(net: torch.nn.Module, device: torch.device, tile: int, *, amp: bool = True, default: int = 4,
                    limit: int = 64) -> int:
    """Tiles per batch: on CUDA as many as half the free GPU memory holds (measured on one tile), else ``default``."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return default
    fn = TileForward(net, device, amp=amp, activation="none")
    probe = np.zeros((1, 1, tile, tile), np.float32)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        fn._run(probe)
    except Exception as exc:
        if is_out_of_memory(exc):
            release_device_memory(device)
            return 1
        raise
    per_tile = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(limit, (free // 2) // per_tile)))


def predict_image(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    out_channels: int,
    tile: int,
    overlap: int,
    batch_size: int,
    size_multiple: int,
    on_tile: Callable[[int, int], None] | None = None,
    cancel=None,
) -> np.ndarray:
    """(Y,X) -> (K,Y,X) or (Z,Y,X) -> (K,Z,Y,X), float32; stacks slice by slice."""
    if image.ndim == 2:
        return predict_tiled(
            fn, image, out_channels=out_channels, tile=tile, overlap=overlap, batch_size=batch_size,
            size_multiple=size_multiple, on_tile=on_tile, cancel=cancel,
        )
    per_slice = tile_count(image.shape[-2:], tile, overlap)
    out = np.empty((out_channels,) + image.shape, dtype=np.float32)
    for z in range(image.shape[0]):
        def slice_progress(done: int, total: int, z: int = z) -> None:
            if on_tile is not None:
                on_tile(z * per_slice + done, image.shape[0] * per_slice)

        out[:, z] = predict_tiled(
            fn, image[z], out_channels=out_channels, tile=tile, overlap=overlap, batch_size=batch_size,
            size_multiple=size_multiple, on_tile=slice_progress, cancel=cancel,
        )
    return out
