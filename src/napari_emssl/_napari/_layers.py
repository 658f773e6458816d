"""Small helpers between napari layers and the plain arrays the core works on.

Everything here runs on the main thread: snapshots copy layer data so a run in a worker
thread never sees the user's later edits, and result layers are added or updated in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap

from ..errors import InputError

#: colours of label values (napari convention: 1 = background, 2, 3, ... = classes)
CLASS_COLORS = {
    1: (0.30, 0.55, 1.00),
    2: (1.00, 0.62, 0.10),
    3: (0.20, 0.90, 0.45),
    4: (0.95, 0.30, 0.80),
    5: (0.95, 0.95, 0.25),
    6: (0.30, 0.95, 0.95),
    7: (0.95, 0.35, 0.30),
    8: (0.65, 0.45, 1.00),
}


def class_colormap(*, background: bool = True) -> DirectLabelColormap:
    """Fixed colours per class, so strokes, previews and results agree.

    ``background=False`` makes class 1 transparent: a result overlay then shows only the
    structures found, not a veil over the whole image.
    """
    colors: dict[int | None, Any] = {None: (0.85, 0.85, 0.85, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({k: (*rgb, 1.0) for k, rgb in CLASS_COLORS.items()})
    if not background:
        colors[1] = (0.0, 0.0, 0.0, 0.0)
    return DirectLabelColormap(color_dict=colors)


def result_name(source: str, kind: str) -> str:
    """Name of a layer made from ``source``: ``"<source> segmentation"``, ``"<source> preview"``."""
    return f"{source} {kind}"


def spatial_kwargs(layer: Layer) -> dict[str, Any]:
    """The layer's scale, translate and units as plain data, to place results on top of it."""
    out: dict[str, Any] = {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in layer.translate),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(str(u) for u in units)
    return out


def find_layer(viewer, name: str, layer_type: type[Layer] | None = None) -> Layer | None:
    """The layer called ``name`` (of ``layer_type`` when given), or None."""
    for layer in viewer.layers:
        if layer.name == name and (layer_type is None or isinstance(layer, layer_type)):
            return layer
    return None


def layers_of(viewer, layer_type: type[Layer]) -> list[Layer]:
    return [layer for layer in viewer.layers if isinstance(layer, layer_type)]


def upsert_labels(viewer, name: str, data: np.ndarray, spatial: dict[str, Any], *, keep_selection: bool = False,
                  **style: Any) -> Labels:
    """Replace the data of the Labels layer ``name`` or add it: re-runs do not pile up layers.

    ``keep_selection``: a new layer does not become the active one (the user may be painting).
    """
    layer = find_layer(viewer, name, Labels)
    if layer is None:
        active = viewer.layers.selection.active
        layer = viewer.add_labels(data, name=name, **spatial, **style)
        if keep_selection and active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        return layer
    layer.data = data
    _set_spatial(layer, spatial)
    return layer


def upsert_image(viewer, name: str, data: np.ndarray, spatial: dict[str, Any], *, keep_selection: bool = False,
                 **style: Any) -> Image:
    """Replace the data of the Image layer ``name`` or add it (``keep_selection`` as for :func:`upsert_labels`)."""
    layer = find_layer(viewer, name, Image)
    if layer is None:
        active = viewer.layers.selection.active
        layer = viewer.add_image(data, name=name, **spatial, **style)
        if keep_selection and active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        return layer
    layer.data = data
    _set_spatial(layer, spatial)
    return layer


def upsert_probabilities(viewer, source: str, probs: np.ndarray, spatial: dict[str, Any]) -> list[Image]:
    """One Image layer per class, ``"<source> p(class k)"``, added with ``channel_axis=0``."""
    names = [result_name(source, f"p(class {k})") for k in range(1, probs.shape[0] + 1)]
    if not any(find_layer(viewer, n, Image) for n in names):
        colormaps = [_class_colormap_name(k) for k in range(1, probs.shape[0] + 1)]
        return list(viewer.add_image(probs, channel_axis=0, name=names, colormap=colormaps, blending="additive",
                                     contrast_limits=[(0.0, 1.0)] * len(names), visible=False, **spatial))
    return [upsert_image(viewer, n, probs[k], spatial, colormap=_class_colormap_name(k + 1), blending="additive",
                         contrast_limits=(0.0, 1.0), visible=False) for k, n in enumerate(names)]


def _class_colormap_name(k: int) -> str:
    return {1: "blue", 2: "yellow", 3: "green", 4: "magenta", 5: "cyan", 6: "red"}.get(k, "gray")


def _set_spatial(layer: Layer, spatial: dict[str, Any]) -> None:
    if len(spatial.get("scale", ())) == layer.ndim:
        layer.scale = spatial["scale"]
        layer.translate = spatial["translate"]


def snapshot_image(layer: Layer) -> np.ndarray:
    """A copy of an image layer's pixels (highest resolution), refusing colour layers."""
    if not isinstance(layer, Image):
        raise InputError(f"Layer {layer.name!r} is not an image layer; choose an image to segment.")
    if layer.rgb:
        raise InputError(
            f"The image layer {layer.name!r} is an RGB colour image; EM images are greyscale (Y, X) or stacks "
            "(Z, Y, X): convert it to one channel first."
        )
    data = layer.data[0] if layer.multiscale else layer.data
    return np.array(data, copy=True)


def image_source(layer: Layer) -> Any:
    """An image layer's pixels for a run that reads crops of them (pretraining), refusing colour layers.

    In-memory (numpy) data is copied, as by :func:`snapshot_image`; lazy data (dask, zarr)
    is passed as it is, since only the crops the run needs are read from it.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if isinstance(data, np.ndarray) or not isinstance(layer, Image) or layer.rgb:
        return snapshot_image(layer)
    return data


def plane_spatial(layer: Layer) -> dict[str, Any]:
    """:func:`spatial_kwargs` of the layer's last two (Y, X) axes, for a 2D result of it."""
    return {key: tuple(value)[-2:] for key, value in spatial_kwargs(layer).items()}


def snapshot_labels(layer: Layer) -> np.ndarray:
    """A copy of a labels layer's painted values (the user may keep painting meanwhile)."""
    if not isinstance(layer, Labels):
        raise InputError(f"Layer {layer.name!r} is not a Labels layer; paint the classes in a Labels layer.")
    data = layer.data[0] if layer.multiscale else layer.data
    return np.array(data, copy=True)


def current_slice(viewer, layer: Layer) -> int | None:
    """The z index of ``layer`` shown in the viewer now (None for 2D layers)."""
    if layer.ndim != 3:
        return None
    z = float(layer.world_to_data(viewer.dims.point)[0])
    n = int(layer.data[0].shape[0] if getattr(layer, "multiscale", False) else layer.data.shape[0])
    return int(np.clip(round(z), 0, n - 1))


def docked_widgets(viewer) -> Iterable[Any]:
    """The widgets docked in the viewer's window (napari >= 0.6.2); empty when headless."""
    window = getattr(viewer, "window", None)
    mapping = getattr(window, "dock_widgets", None) if window is not None else None
    return list(mapping.values()) if mapping is not None else []


def result_kind(task: str, factor: int = 1) -> str:
    """The suffix of a result layer's name: ``"<source> denoised"``, ``"<source> superres x2"``, …"""
    return {"segment": "segmentation", "denoise": "denoised", "bgremove": "background removed",
            "superres": f"superres x{factor}"}.get(task, task)


def scaled_spatial(spatial: dict[str, Any], factor: int) -> dict[str, Any]:
    """Placement of a result ``factor`` times finer than its source: pixel size / factor, centres aligned."""
    if factor == 1:
        return dict(spatial)
    from ..tasks.superres import output_scale, output_translate

    out = dict(spatial)
    out["scale"] = output_scale(spatial["scale"], factor)
    out["translate"] = output_translate(spatial["translate"], spatial["scale"], factor)
    return out


def upsert_restored(viewer, name: str, data: np.ndarray, spatial: dict[str, Any], *, factor: int = 1,
                    keep_selection: bool = False, metadata: dict | None = None) -> Image:
    """Add or update the grey-value result layer ``name`` (contrast from its 1-99.8 % percentiles)."""
    sample = np.asarray(data).ravel()[:: max(1, np.asarray(data).size // 200_000)]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.8])) if sample.size else (0.0, 1.0)
    limits = (lo, hi) if hi > lo else (lo, lo + 1.0)
    style: dict[str, Any] = {"contrast_limits": limits, "colormap": "gray"}
    if metadata is not None and find_layer(viewer, name, Image) is None:
        style["metadata"] = metadata
    layer = upsert_image(viewer, name, data, scaled_spatial(spatial, factor), keep_selection=keep_selection, **style)
    layer.contrast_limits = limits
    return layer
