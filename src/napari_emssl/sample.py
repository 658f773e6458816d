"""The bundled sample data (a crop of a labeled ssTEM stack), as plain arrays."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from .io import read_image

CITATION = (
    "ssTEM of Drosophila larva VNC, Gerhard, Funke, Martel, Cardona, Fetter (2013), "
    "doi:10.6084/m9.figshare.856713, CC BY-NC-SA 3.0"
)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (Z, Y, X) uint8
    strokes: np.ndarray  # (Z, Y, X) uint8: 0 unpainted, 1 background, 2 mitochondria (slice 0 only)
    truth: np.ndarray  # (Z, Y, X) uint8: 1 background, 2 mitochondria
    scale: tuple[float, float, float]  # nm per pixel (Z, Y, X)


def sample_path(name: str) -> str:
    return str(resources.files(__package__) / "sample_data" / name)


def load_sstem_sample() -> Sample:
    image, meta = read_image(sample_path("sstem_crop.tif"))
    strokes, _ = read_image(sample_path("sstem_strokes.tif"))
    truth, _ = read_image(sample_path("sstem_mito_truth.tif"))
    scale = tuple(meta.scale) if meta.scale else (50.0, 4.6, 4.6)
    return Sample(image=image, strokes=strokes, truth=truth, scale=scale)
