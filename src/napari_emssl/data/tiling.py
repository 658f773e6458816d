"""Tiled prediction of big images with smooth, seam-free blending.

Tiles of ``tile x tile`` pixels overlap by ``overlap`` pixels. Each tile's prediction is
weighted by a separable window that is 1 in the middle, rises with a raised cosine across
the overlap, and is exactly 0 in the outer quarter of the overlap (where a network's
zero-padding makes predictions wrong). Sides of a tile that touch the image border are not
tapered at all, so every pixel has total weight >= 1: no seams, no division by zero.
Consecutive ramps sum to exactly 1, so for a network whose receptive field radius is at most
``overlap // 4`` the result equals the untiled prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Cancelled", "predict_tiled", "tile_count", "tile_starts", "valid_tile"]


class Cancelled(Exception):
    """Raised by :func:`predict_tiled` when its ``cancel`` token is set."""


def valid_tile(tile: int, size_multiple: int = 1) -> int:
    """``tile`` rounded up to a multiple of ``size_multiple``."""
    tile, m = int(tile), max(1, int(size_multiple))
    if tile < 1:
        raise ValueError(f"tile must be at least 1 pixel, got {tile}")
    return int(math.ceil(tile / m) * m)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``max(length, tile)`` pixels with at least ``overlap`` overlap."""
    length = max(int(length), tile)
    if length == tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_count(shape_yx, tile: int = 256, overlap: int = 64, size_multiple: int = 1) -> int:
    """Number of tiles :func:`predict_tiled` evaluates for an image of ``shape_yx`` (for progress bars)."""
    t = valid_tile(tile, size_multiple)
    ov = min(max(0, int(overlap)), t - 1)
    ny, nx = (int(n) for n in tuple(shape_yx)[-2:])
    return len(tile_starts(ny, t, ov)) * len(tile_starts(nx, t, ov))


def _ramp(tile: int, overlap: int) -> np.ndarray:
    """Rising half of the window over ``overlap`` px: 0 for the first quarter, cosine, 1 after."""
    j = np.arange(overlap, dtype=np.float64)
    margin = overlap // 4
    width = overlap - 2 * margin
    if width <= 0:
        return np.ones(overlap)
    u = np.clip((j - margin + 0.5) / width, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)


def _window_1d(tile: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        r = _ramp(tile, overlap)
        if taper_start:
            w[:overlap] = np.minimum(w[:overlap], r)
        if taper_end:
            w[tile - overlap :] = np.minimum(w[tile - overlap :], r[::-1])
    return w


def iter_tiled(
    fn,
    image: np.ndarray,
    *,
    out_channels: int,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    size_multiple: int = 1,
    cancel=None,
):
    """Generator form of :func:`predict_tiled`: yields ``(done, total)`` after every batch
    and returns the blended array (``StopIteration.value``; use ``yield from``).

    Apply ``fn`` to overlapping tiles of a 2D image and blend them into ``(out_channels, Y, X)`` float32.

    ``fn`` takes a float32 batch ``(B, 1, t, t)`` and returns ``(B, out_channels, t, t)``
    (numpy, or a torch tensor), where ``t`` is ``tile`` rounded up to ``size_multiple``.
    When ``fn`` has a ``device_fn`` (torch tensor in, tensor out, both on ``fn.device``), the
    image goes to that device once and the tiles are cut and blended there
    (:mod:`.tiling_on_device`): the same result without a host round trip per batch.
    Images smaller than a tile are reflect-padded. ``on_tile(done, total)`` is called after
    every batch (``predict_tiled``); if ``cancel.cancelled`` becomes true, :class:`Cancelled` is raised before
    the next batch.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"predict_tiled needs a 2D (Y, X) image, got shape {image.shape}")
    t = valid_tile(tile, size_multiple)
    ov = min(max(0, int(overlap)), t - 1)
    batch_size = max(1, int(batch_size))
    ny, nx = image.shape
    py, px = max(ny, t), max(nx, t)
    src = image.astype(np.float32, copy=False)
    if (py, px) != (ny, nx):
        src = np.pad(src, ((0, py - ny), (0, px - nx)), mode="reflect")

    ys, xs = tile_starts(py, t, ov), tile_starts(px, t, ov)
    layout = TileLayout(tile=t, corners=[(y, x) for y in ys for x in xs], out_channels=int(out_channels),
                        wy={y: _window_1d(t, ov, y > 0, y + t < py).astype(np.float32) for y in ys},
                        wx={x: _window_1d(t, ov, x > 0, x + t < px).astype(np.float32) for x in xs})
    if getattr(fn, "device_fn", None) is not None:
        from .tiling_on_device import iter_blend_on_device

        out = yield from iter_blend_on_device(fn.device_fn, fn.device, src, layout, batch_size, cancel)
    else:
        out = yield from _iter_blend(fn, src, layout, batch_size, cancel)
    return np.ascontiguousarray(out[:, :ny, :nx])


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one (padded) image go (top-left ``corners``) and how each is weighted (``wy`` x ``wx``)."""

    tile: int
    corners: list[tuple[int, int]]
    out_channels: int
    wy: dict[int, np.ndarray]
    wx: dict[int, np.ndarray]

    def check(self, shape: tuple[int, ...], n: int) -> None:
        t, k = self.tile, self.out_channels
        if tuple(shape) != (n, k, t, t):
            raise ValueError(f"the model returned shape {tuple(shape)} for a batch of shape {(n, 1, t, t)}; "
                             f"expected {(n, k, t, t)}")


def _iter_blend(fn, src: np.ndarray, layout: TileLayout, batch_size: int, cancel):
    """The blended ``(K, py, px)`` prediction of the padded image ``src``, batches on the host."""
    t, corners = layout.tile, layout.corners
    out = np.zeros((layout.out_channels,) + src.shape, dtype=np.float32)
    weight = np.zeros(src.shape, dtype=np.float32)
    batch = np.empty((batch_size, 1, t, t), dtype=np.float32)
    done, total = 0, len(corners)
    for start in range(0, total, batch_size):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("prediction cancelled")
        chunk = corners[start : start + batch_size]
        for i, (y, x) in enumerate(chunk):
            batch[i, 0] = src[y : y + t, x : x + t]
        pred = fn(batch[: len(chunk)])
        if hasattr(pred, "detach"):  # a torch tensor
            pred = pred.detach().float().cpu().numpy()
        pred = np.asarray(pred, dtype=np.float32)
        layout.check(pred.shape, len(chunk))
        for i, (y, x) in enumerate(chunk):
            w = np.outer(layout.wy[y], layout.wx[x])
            out[:, y : y + t, x : x + t] += pred[i] * w
            weight[y : y + t, x : x + t] += w
        done += len(chunk)
        yield done, total
    out /= np.maximum(weight, np.float32(1e-6))
    return out


def predict_tiled(
    fn,
    image: np.ndarray,
    *,
    out_channels: int,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    size_multiple: int = 1,
    on_tile=None,
    cancel=None,
) -> np.ndarray:
    """Apply ``fn`` to overlapping tiles of a 2D image and blend them; see :func:`iter_tiled`.

    ``on_tile(done, total)`` is called after every batch.
    """
    steps = iter_tiled(fn, image, out_channels=out_channels, tile=tile, overlap=overlap, batch_size=batch_size,
                       size_multiple=size_multiple, cancel=cancel)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_tile is not None:
            on_tile(done, total)
