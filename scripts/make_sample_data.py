"""Make the napari sample data: a crop of the labeled ssTEM stack with a few painted strokes.

    python scripts/make_sample_data.py

Writes src/napari_emssl/sample_data/{sstem_crop.tif, sstem_strokes.tif, sstem_mito_truth.tif}.
The crop keeps the licence of its source (CC BY-NC-SA 3.0, see sample_data/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from sstem import load_section  # noqa: E402

from napari_emssl.data.strokes import simulate_strokes  # noqa: E402

OUT = ROOT / "src" / "napari_emssl" / "sample_data"
Y0, X0, SIZE, SLICES = 256, 0, 512, 5
PIXEL_NM, SECTION_NM = 4.6, 50.0


def main() -> None:
    raws, truths = zip(*(load_section(i, classes="mito") for i in range(SLICES)))
    crop = np.s_[:, Y0 : Y0 + SIZE, X0 : X0 + SIZE]
    raw = np.stack(raws)[crop]
    truth = np.stack(truths)[crop]
    strokes = np.zeros_like(truth)
    strokes[0] = simulate_strokes(truth[0], {1: 2500, 2: 1200}, brush_radius=2, stroke_length=50, seed=1)
    OUT.mkdir(parents=True, exist_ok=True)
    common = {"imagej": True, "metadata": {"spacing": SECTION_NM, "unit": "nm", "axes": "ZYX"}, "compression": "zlib"}
    tifffile.imwrite(OUT / "sstem_crop.tif", raw, resolution=(1 / PIXEL_NM, 1 / PIXEL_NM), **common)
    tifffile.imwrite(OUT / "sstem_strokes.tif", strokes, resolution=(1 / PIXEL_NM, 1 / PIXEL_NM), **common)
    tifffile.imwrite(OUT / "sstem_mito_truth.tif", truth, resolution=(1 / PIXEL_NM, 1 / PIXEL_NM), **common)
    painted = (strokes[0] > 0).mean()
    print(f"crop {raw.shape}, painted {painted:.2%} of slice 0: "
          f"{int((strokes == 1).sum())} background, {int((strokes == 2).sum())} mitochondria pixels")


if __name__ == "__main__":
    main()
