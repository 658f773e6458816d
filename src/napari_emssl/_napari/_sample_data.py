"""napari sample data: the bundled ssTEM crop and a few painted strokes (File > Open Sample)."""

from __future__ import annotations

from typing import Any

from ..io import read_image
from ..sample import CITATION, sample_path

ATTRIBUTION = {
    "dataset": "Segmented anisotropic ssTEM dataset of neural tissue (Drosophila larva VNC), stack 1, crop",
    "citation": CITATION,
    "doi": "https://doi.org/10.6084/m9.figshare.856713",
    "licence": "CC BY-NC-SA 3.0 (non-commercial use only), https://creativecommons.org/licenses/by-nc-sa/3.0/",
}


def sstem_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """The (Z, Y, X) image ``sstem_crop`` and its Labels layer ``sstem_crop strokes``.

    Strokes: 1 = background, 2 = mitochondria, painted on slice 0; 0 = not painted.
    """
    from ._layers import class_colormap

    image, meta = read_image(sample_path("sstem_crop.tif"))
    strokes, _ = read_image(sample_path("sstem_strokes.tif"))
    spatial: dict[str, Any] = {}
    if meta.scale is not None:
        spatial["scale"] = tuple(float(s) for s in meta.scale)
        if meta.unit == "um":
            spatial["units"] = ("um",) * image.ndim
    image_meta = dict(ATTRIBUTION, pixel_size_um=spatial.get("scale"))
    strokes_meta = dict(ATTRIBUTION, classes={0: "not painted", 1: "background", 2: "mitochondria"})
    return [
        (image, {"name": "sstem_crop", "metadata": image_meta, **spatial}, "image"),
        (strokes, {"name": "sstem_crop strokes", "metadata": strokes_meta, "colormap": class_colormap(),
                   "opacity": 0.8, **spatial}, "labels"),
    ]
