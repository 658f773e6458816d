"""The labeled ssTEM stack (Gerhard et al. 2013, CC BY-NC-SA 3.0) as arrays with class maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from skimage.io import imread

ROOT = Path(os.environ.get("EMSSL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
STACK1 = ROOT / "drosophila_vnc_sstem" / "stack1"
BACKGROUND, MEMBRANE, MITO = 1, 2, 3
CLASS_NAMES = {BACKGROUND: "background", MEMBRANE: "membrane", MITO: "mitochondria"}


def load_section(index: int, classes: str = "membrane+mito") -> tuple[np.ndarray, np.ndarray]:
    """Raw section (uint8) and its class map.

    ``classes="membrane+mito"``: 1 background, 2 membrane, 3 mitochondria.
    ``classes="mito"``: 1 background, 2 mitochondria.
    """
    raw = tifffile.imread(STACK1 / "raw" / f"{index:02d}.tif")
    mito = imread(STACK1 / "mitochondria" / f"{index:02d}.png") > 128
    truth = np.full(raw.shape, BACKGROUND, dtype=np.uint8)
    if classes == "mito":
        truth[mito] = 2
        return raw, truth
    membrane = imread(STACK1 / "membranes" / f"{index:02d}.png").astype(bool)
    truth[membrane] = MEMBRANE
    truth[mito] = MITO
    return raw, truth
