"""Simulated brush strokes: sparse labels as a person would paint them, from a full mask.

Used by the benchmarks and to make the sample data: for each class, short strokes follow
the skeleton of the class region (as a person traces a membrane or scribbles inside a
mitochondrion) and are painted with a round brush, until the class's pixel budget is used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, skeletonize


def simulate_strokes(
    truth: np.ndarray,
    budget: dict[int, int],
    *,
    brush_radius: int = 2,
    stroke_length: int = 60,
    erode: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Sparse labels (0 = unpainted) with about ``budget[c]`` painted pixels of each class ``c``.

    ``truth`` holds the full class map (values 1..K). Strokes stay inside the class region
    (eroded by ``erode`` pixels where that leaves room), so every painted pixel is correct.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, dtype=np.uint8)
    brush = disk(brush_radius).astype(bool)
    for cls, pixels in budget.items():
        region = truth == cls
        inner = ndi.binary_erosion(region, iterations=erode) if erode else region
        if inner.sum() < 10 * brush.sum():
            inner = region
        skeleton = skeletonize(inner)
        points = np.argwhere(skeleton)
        if len(points) == 0:
            continue
        painted = np.zeros(truth.shape, dtype=bool)
        for _ in range(10_000):
            if painted.sum() >= pixels:
                break
            start = tuple(points[rng.integers(len(points))])
            path = _walk(skeleton, start, stroke_length, rng)
            stroke = np.zeros(truth.shape, dtype=bool)
            stroke[tuple(np.array(path).T)] = True
            stroke = ndi.binary_dilation(stroke, structure=brush) & region
            room = pixels - int(painted.sum())
            if stroke.sum() > room:  # cut the last stroke to the budget
                coords = np.argwhere(stroke & ~painted)[:room]
                stroke = np.zeros_like(stroke)
                stroke[tuple(coords.T)] = True
            painted |= stroke
        out[painted & (out == 0)] = cls
    return out


def _walk(skeleton: np.ndarray, start: tuple[int, int], length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A path along skeleton pixels from ``start`` that does not revisit pixels."""
    path = [start]
    seen = {start}
    y, x = start
    for _ in range(length):
        neighbours = [
            (y + dy, x + dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dy or dx)
            and 0 <= y + dy < skeleton.shape[0]
            and 0 <= x + dx < skeleton.shape[1]
            and skeleton[y + dy, x + dx]
            and (y + dy, x + dx) not in seen
        ]
        if not neighbours:
            break
        y, x = neighbours[rng.integers(len(neighbours))]
        seen.add((y, x))
        path.append((y, x))
    return path
