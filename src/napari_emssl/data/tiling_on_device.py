"""The tiler's blending loop on a torch device (CUDA): one upload per image, one download per result.

Same tiles, windows and arithmetic as the host loop in :mod:`.tiling`; the tiles are cut
from the image on the device, go through the network there and are weighted and summed
into device buffers, so the host neither copies tiles nor waits for each batch.
"""

from __future__ import annotations

import numpy as np
import torch

from .tiling import Cancelled, TileLayout


def iter_blend_on_device(device_fn, device: torch.device, src: np.ndarray, layout: TileLayout, batch_size: int, cancel):
    """The blended ``(K, py, px)`` prediction of the padded image ``src`` (numpy float32); yields ``(done, total)``."""
    t, corners = layout.tile, layout.corners
    image = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).to(device)
    out = torch.zeros((layout.out_channels,) + src.shape, dtype=torch.float32, device=device)
    weight = torch.zeros(src.shape, dtype=torch.float32, device=device)
    wy = {y: torch.from_numpy(w).to(device) for y, w in layout.wy.items()}
    wx = {x: torch.from_numpy(w).to(device) for x, w in layout.wx.items()}
    done, total = 0, len(corners)
    for start in range(0, total, batch_size):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("prediction cancelled")
        chunk = corners[start : start + batch_size]
        with torch.no_grad():  # not across the yield: the caller's code runs between batches
            batch = torch.stack([image[y : y + t, x : x + t] for y, x in chunk])[:, None]
            pred = device_fn(batch).float()
            layout.check(pred.shape, len(chunk))
            for i, (y, x) in enumerate(chunk):
                w = wy[y][:, None] * wx[x][None, :]
                out[:, y : y + t, x : x + t] += pred[i] * w
                weight[y : y + t, x : x + t] += w
        done += len(chunk)
        yield done, total
    out /= weight.clamp_min(1e-6)
    return out.cpu().numpy()
