"""Result layers of the Apply widget: in-memory results, and results that fill as they are streamed to disk."""

from __future__ import annotations

from typing import Any

from napari.layers import Layer

from ..tasks.denoise_corrections import leak_share_text

from ._layers import (
    class_colormap,
    find_layer,
    result_kind,
    result_name,
    scaled_spatial,
    upsert_labels,
    upsert_probabilities,
    upsert_restored,
)


def show_result(viewer, name: str, result, spatial: dict[str, Any], metadata: dict) -> str:
    """Add or update the layer(s) of one in-memory result of source ``name``; return the scores text."""
    scores = ""
    if result.image is not None:
        kind = result_kind(result.info.get("task", "denoise"), result.scale_factor)
        upsert_restored(viewer, result_name(name, kind), result.image, spatial, factor=result.scale_factor, metadata=metadata)
        if result.metrics:
            scores = f"; against the target: PSNR {result.metrics['psnr']:.2f} dB, SSIM {result.metrics['ssim']:.3f}"
        if result.info.get("clipped_pixels"):
            scores += f"; {result.info['clipped_pixels']} pixels clipped to the pixel type's range"
        if result.info.get("leak_shares"):
            scores += f"; {leak_share_text(result.info['leak_shares'])}"
    else:
        upsert_labels(viewer, result_name(name, "segmentation"), result.labels, spatial,
                      colormap=class_colormap(background=False), opacity=0.55)
        if result.probabilities is not None:
            upsert_probabilities(viewer, name, result.probabilities, spatial)
    return scores


def show_streamed(viewer, path: str, key: str, name: str, task: str, factor: int, spatial: dict[str, Any], metadata: dict,
                  contrast_limits: tuple[float, float]) -> Layer:
    """A layer over the OME-Zarr image being written at ``path`` (read lazily; refresh it as slices come in).

    An earlier result layer of the same name is replaced (its data may be another array type).
    """
    import zarr

    array = zarr.open_group(path, mode="r")["0"]
    meta = dict(metadata, emssl_path=path)
    kind = "segmentation" if key == "labels" else result_kind(task, factor)
    old = find_layer(viewer, result_name(name, kind))
    if old is not None:
        viewer.layers.remove(old)
    if key == "labels":
        return viewer.add_labels(array, name=result_name(name, kind), colormap=class_colormap(background=False),
                                 opacity=0.55, metadata=meta, **spatial)
    return viewer.add_image(array, name=result_name(name, kind), colormap="gray", contrast_limits=contrast_limits,
                            metadata=meta, **scaled_spatial(spatial, factor))
