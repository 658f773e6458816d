"""Apply a network to whole images and stacks, tile by tile."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..data.tiling import predict_tiled, tile_count
from .device import autocast


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
    net: torch.nn.Module, device: torch.device, *, amp: bool = True, activation: str = "softmax"
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a network as numpy (B,C,H,W) -> numpy (B,K,H,W) for the tiler."""

    def fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device, non_blocking=True)
        with torch.inference_mode(), autocast(device, amp):
            y = net(x).float()
            if activation == "softmax":
                y = y.softmax(dim=1)
            elif activation == "sigmoid":
                y = y.sigmoid()
        return y.cpu().numpy()

    return fn


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
