"""Open big images without loading them: TIFF (chunk by chunk) and zarr / OME-Zarr.

:func:`open_lazy` returns an array-like that reads only what is indexed (``array[z]`` reads
one slice), so a stack larger than memory can be processed slice by slice. Uncompressed
TIFFs, compressed or not, are read through tifffile's zarr view, one page (or tile) at a
time into fresh memory that is freed again (not memory-mapped: mapped pages would count
towards the process's memory until the whole file had been touched). Zarr arrays and OME-Zarr images (the first,
full-resolution dataset) are opened as zarr arrays. Anything that is not a greyscale 2D image
or 3D stack after dropping length-1 axes (colour, 4D and more) falls back to
:func:`~napari_emssl.io.tiff.read_image`, which loads it and converts it or refuses it
with a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .pixel_size import tiff_scale, unit_factor
from .tiff import _TIFF_MAGIC, ImageMeta, check_claimed_size, read_image
from .tiff_integrity import check_complete

__all__ = ["LazyArray", "open_lazy", "is_zarr_path", "ome_zarr_attrs"]


def is_zarr_path(path: str | os.PathLike) -> bool:
    """A zarr store on disk: a folder with zarr metadata (``.zarray``/``.zgroup``/``zarr.json``)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in (".zarray", ".zgroup", "zarr.json"))


def open_lazy(path: str | os.PathLike) -> tuple[Any, ImageMeta]:
    """A lazily read greyscale ``(Y, X)`` or ``(Z, Y, X)`` array-like and its metadata; see the module docstring."""
    p = Path(path)
    if is_zarr_path(p):
        return _open_zarr(p)
    if p.is_file():
        try:
            with open(p, "rb") as fh:
                magic = fh.read(4)
        except OSError:
            magic = b""
        if magic in _TIFF_MAGIC:
            lazy = _open_tiff(p)
            if lazy is not None:
                return lazy
    return read_image(p)  # small, colour or non-TIFF images: loaded (and checked) as a whole


def _squeezed(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str, tuple]:
    """Drop length-1 axes (but keep Y and X); return the new shape, axes and an index that does it."""
    keep = [i for i, (n, a) in enumerate(zip(shape, axes)) if n != 1 or a in "YX"]
    index = tuple(slice(None) if i in keep else 0 for i in range(len(shape)))
    return tuple(shape[i] for i in keep), "".join(axes[i] for i in keep), index


def _open_tiff(path: Path):
    import tifffile

    name = str(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"Could not read '{name}' as a TIFF image ({type(exc).__name__}: {exc}); "
                         "the file may be truncated or corrupted: copy it again.") from exc
    try:
        if not tif.series or len(tif.series) != 1:
            tif.close()
            return None  # page-per-series files and empty ones: the eager reader knows them
        series = tif.series[0]
        shape, axes, index = _squeezed(tuple(series.shape), series.axes)
        if len(shape) not in (2, 3) or "S" in axes or not axes.endswith("YX"):
            tif.close()
            return None
        check_complete(tif, [series], name)
        plane_bytes = int(np.prod(shape[-2:])) * np.dtype(series.dtype).itemsize
        check_claimed_size(name, plane_bytes, path.stat().st_size)  # one slice must fit in memory
        page = series.keyframe
        if int(page.photometric) == 2:  # RGB
            tif.close()
            return None
        scale_all, unit = tiff_scale(tif, page, series.axes)
        scale = None
        if scale_all is not None:
            scale = tuple(s for s, i in zip(scale_all, index) if isinstance(i, slice))
            if len(scale) != len(shape) or any(s is None for s in scale):
                scale = None
        import zarr

        array = LazyArray(zarr.open(series.aszarr(), mode="r"), index, shape, owner=tif)
        meta = ImageMeta(scale=scale, axes="YX" if len(shape) == 2 else "ZYX", dtype=str(np.dtype(array.dtype)), path=name,
                         unit=unit if scale else None)
        return array, meta
    except InputError:
        tif.close()
        raise
    except Exception:
        tif.close()
        return None  # anything unusual: let the eager reader decide (and explain)


class LazyArray:
    """An array-like over a zarr array that reads only what is indexed, with length-1 axes dropped;
    ``close()`` closes the file it reads from (also when used as a context manager)."""

    def __init__(self, array: Any, index: tuple, shape: tuple[int, ...], owner: Any = None) -> None:
        self._array, self._index, self._owner = array, index, owner
        self.shape, self.dtype, self.ndim = shape, np.dtype(array.dtype), len(shape)

    def __getitem__(self, key) -> np.ndarray:
        keys = list(key) if isinstance(key, tuple) else [key]
        composed = tuple(keys.pop(0) if isinstance(i, slice) and keys else i for i in self._index)
        return np.asarray(self._array[composed])

    def __array__(self, dtype=None, copy=None):
        full = np.asarray(self._array[self._index])
        return full.astype(dtype) if dtype is not None else full

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def __enter__(self) -> "LazyArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_zarr(path: Path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"Could not open '{path}' as zarr ({type(exc).__name__}: {exc}).") from exc
    scale = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, else its only array
        attrs = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if multiscales:
            first = multiscales[0]
            dataset = first["datasets"][0]
            node = node[dataset["path"]]
            scale = _ome_scale(first, dataset)
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputError(f"'{path}' is a zarr group with {len(arrays)} arrays and no OME-Zarr multiscales; "
                                 "give the path of the array itself.")
            node = node[arrays[0]]
    shape, axes, index = _squeezed(tuple(node.shape), "Q" * (node.ndim - 2) + "YX")
    if len(shape) not in (2, 3):
        raise InputError(f"'{path}' holds an array of shape {tuple(node.shape)}; expected a 2D image (Y, X) or a 3D stack (Z, Y, X).")
    if scale is not None:
        scale = tuple(s for s, i in zip(scale, index) if isinstance(i, slice))
    array = LazyArray(node, index, shape)
    meta = ImageMeta(scale=scale, axes="YX" if len(shape) == 2 else "ZYX", dtype=str(np.dtype(node.dtype)), path=str(path),
                     unit="um" if scale else None)
    return array, meta


def _ome_scale(multiscale: dict, dataset: dict) -> tuple[float, ...] | None:
    """Pixel sizes in micrometres from OME-Zarr axes units and the dataset's scale transformation."""
    transforms = dataset.get("coordinateTransformations") or []
    scales = [t.get("scale") for t in transforms if t.get("type") == "scale"]
    if not scales:
        return None
    values = [float(v) for v in scales[0]]
    axes = multiscale.get("axes") or []
    factors = []
    for i, value in enumerate(values):
        unit = axes[i].get("unit") if i < len(axes) and isinstance(axes[i], dict) else None
        f = unit_factor(unit) if unit else None
        if f is None:
            return None
        factors.append(value * f)
    return tuple(factors)


def ome_zarr_attrs(name: str, ndim: int, scale: tuple[float, ...] | None) -> dict:
    """OME-NGFF 0.4 ``multiscales`` attributes of a one-level image (axes in micrometres; without a
    unit, and a scale of 1, when the pixel size is not known)."""
    names = ["y", "x"] if ndim == 2 else ["z", "y", "x"]
    axes = [{"name": n, "type": "space", **({"unit": "micrometer"} if scale else {})} for n in names]
    transform = [{"type": "scale", "scale": [float(s) for s in (scale or (1.0,) * ndim)]}]
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes,
                             "datasets": [{"path": "0", "coordinateTransformations": transform}]}]}



