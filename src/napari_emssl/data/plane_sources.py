"""Unlabeled image sources for pretraining, opened lazily: one :class:`PlaneSource` per array, file, folder or zarr.

Sources (:func:`open_sources`):

* numpy arrays (2D ``YX``, 3D ``ZYX``, ``YX3``/``YX4`` colour), dask and zarr arrays — napari
  layer data works as it is; only the crops are computed/read;
* TIFF files and stacks (each z slice is one image): memory-mapped when the pixels are
  stored uncompressed and contiguous (``tifffile.memmap``), else read chunk by chunk
  through ``tifffile.imread(aszarr=True)`` when zarr is installed, else page by page;
* PNG / JPEG files (read whole; they are small);
* folders: every ``.tif/.tiff/.png/.jpg/.jpeg`` directly inside, sorted by name;
* zarr arrays or groups (``*.zarr`` folders, OME-Zarr: the full-resolution level).

Colour images are turned grey (mean of R, G, B) with a note; images smaller than the
patch are skipped with a warning; nothing usable raises :class:`InputError`.

Each source is normalised on its own (percentiles 1 and 99.8 of a subsample of up to
8 planes, :func:`napari_emssl.data.normalize.percentile_normalize`); each crop is read
from its source lazily and normalised with those statistics.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .normalize import NormStats, percentile_normalize

__all__ = ["PlaneSource", "open_sources", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
_NORM_LOW, _NORM_HIGH = 1.0, 99.8
_STATS_PLANES = 8  # planes read for the normalisation statistics
_STATS_VALUES = 1 << 19  # values per plane at most


# --------------------------------------------------------------------------------------------- sources


class _PageArray:
    """A TIFF series read one page at a time: ``a[n, ys, xs]`` decodes page ``n`` (cached)."""

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, shape
        self._tif = None
        self._cached: tuple[int, np.ndarray] | None = None

    def __getitem__(self, key: tuple) -> np.ndarray:
        import tifffile

        n, rest = key[0], key[1:]
        if self._cached is None or self._cached[0] != n:
            if self._tif is None:
                self._tif = tifffile.TiffFile(self.path)
            self._cached = (n, self._tif.series[0].pages[n].asarray())
        return self._cached[1][rest]

    def __getstate__(self) -> dict[str, Any]:  # file handles do not cross processes
        return {"path": self.path, "shape": self.shape, "_tif": None, "_cached": None}


class PlaneSource:
    """A set of same-sized 2D planes (an image, the slices of a stack) read crop by crop.

    ``array`` is anything indexable like numpy with axes ``lead + (Y, X)`` or
    ``lead + (Y, X, S)``; the leading axes are flattened into a plane index. A file
    source (``path`` given, ``array`` None) opens its file lazily in each process, so the
    dataset can be sent to DataLoader workers without copying a memory map.
    """

    def __init__(self, name: str, shape: tuple[int, ...], *, samples: int = 0, array: Any = None,
                 path: str | None = None, mode: str = "memory") -> None:
        self.name, self.path, self.mode = name, path, mode
        self.samples = samples  # size of the trailing colour axis, 0 if none
        self.lead = tuple(int(n) for n in shape[: len(shape) - 2 - (1 if samples else 0)])
        self.shape_yx = tuple(int(n) for n in shape[len(self.lead): len(self.lead) + 2])
        self.n_planes = int(np.prod(self.lead)) if self.lead else 1
        self._array = array
        self.stats: NormStats | None = None

    @property
    def rgb(self) -> bool:
        return self.samples >= 3

    @property
    def area(self) -> int:
        return self.shape_yx[0] * self.shape_yx[1]

    @property
    def array(self) -> Any:
        """The underlying (lazy) array, opened on first use in this process."""
        if self._array is None:
            self._array = _open_file_array(self.path, self.mode)
        return self._array

    def read(self, plane: int, ys: slice, xs: slice) -> np.ndarray:
        """Grey float32 pixels of ``plane`` in the window ``ys, xs`` (only that window is read)."""
        index = np.unravel_index(plane, self.lead) if self.lead else ()
        block = np.asarray(self.array[(*(int(i) for i in index), ys, xs)])
        if self.samples:
            block = block[..., :3].astype(np.float32).mean(axis=-1) if self.rgb else block[..., 0]
        if block.dtype.kind == "b":
            block = block.astype(np.uint8)
        return block.astype(np.float32, copy=False)

    def compute_stats(self) -> NormStats:
        """Percentile statistics over a strided subsample of up to 8 evenly spaced planes."""
        picks = np.unique(np.linspace(0, self.n_planes - 1, min(self.n_planes, _STATS_PLANES)).round().astype(int))
        stride = max(1, math.ceil(math.sqrt(self.area / _STATS_VALUES)))
        values = [self.read(int(p), slice(None, None, stride), slice(None, None, stride)).ravel() for p in picks]
        _, self.stats = percentile_normalize(np.concatenate(values), _NORM_LOW, _NORM_HIGH)
        return self.stats

    def crop(self, plane: int, y: int, x: int, size: int) -> np.ndarray:
        """A normalised float32 ``(size, size)`` crop at ``(y, x)``."""
        raw = self.read(plane, slice(y, y + size), slice(x, x + size))
        out, _ = percentile_normalize(raw, stats=self.stats)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None  # reopened lazily in the worker process
        return state

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "planes": self.n_planes, "shape_yx": list(self.shape_yx), "mode": self.mode}


def _open_file_array(path: str, mode: str) -> Any:
    import tifffile

    if mode == "memmap":
        return tifffile.memmap(path, mode="r")
    if mode == "tiff-zarr":
        zarr = _import_zarr(path)
        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        return node if hasattr(node, "shape") else node["0"]
    if mode == "zarr":
        return _zarr_array(path)
    raise ValueError(f"unknown source mode {mode!r}")  # pages/memory hold their array already


def _import_zarr(path: str):
    try:
        import zarr
    except ImportError:
        raise InputError(f"reading '{path}' needs the zarr package: pip install zarr") from None
    return zarr


def _zarr_array(path: str) -> Any:
    zarr = _import_zarr(path)
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises many types for a folder that is not a store
        raise InputError(f"could not open '{path}' as a zarr array ({type(exc).__name__}: {exc})") from None
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]  # OME-Zarr: full resolution
    keys = sorted(node.array_keys())
    if not keys:
        raise InputError(f"the zarr group '{path}' holds no array")
    return node[keys[0]]


def _axes_for_shape(shape: tuple[int, ...]) -> str:
    """Axes of an array given without metadata: a trailing axis of 3 or 4 is colour."""
    if len(shape) >= 3 and shape[-1] in (3, 4):
        return "Q" * (len(shape) - 3) + "YXS"
    return "Q" * (len(shape) - 2) + "YX"


def _make_source(name: str, array: Any, axes: str, notes: list[str], *, path: str | None = None,
                 mode: str = "memory", rgb_hint: bool | None = None) -> PlaneSource:
    """Check dtype and axes of ``array`` and wrap it as a :class:`PlaneSource`."""
    dtype = np.dtype(getattr(array, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise InputError(f"'{name}' has pixel type {dtype}; expected whole numbers or floats")
    shape = tuple(int(n) for n in array.shape)
    if len(shape) < 2:
        raise InputError(f"'{name}' has shape {shape}; expected a 2D image or a stack of images")
    if "S" in axes and axes[-1] != "S":  # planar colour: move the sample axis last (a view)
        i = axes.index("S")
        array = array if mode == "pages" else np.moveaxis(array, i, -1) if isinstance(array, np.ndarray) else _moved(array, i)
        axes = axes[:i] + axes[i + 1:] + "S"
        shape = shape[:i] + shape[i + 1:] + (shape[i],)
    samples = shape[-1] if axes.endswith("S") else 0
    core = axes[:-1] if samples else axes
    if not core.endswith("YX"):
        raise InputError(f"'{name}' has axes {axes}; expected the image axes Y, X last")
    if samples >= 3 or (samples and rgb_hint):
        notes.append(f"'{name}' is a colour image: converted to grey (mean of R, G, B)")
    return PlaneSource(name, shape, samples=samples, array=array if mode in ("memory", "pages") else None, path=path,
                       mode=mode)


def _moved(array: Any, axis: int) -> Any:
    """Sample axis last for a non-numpy array (dask has moveaxis; else read it whole)."""
    try:
        import dask.array as da

        if isinstance(array, da.Array):
            return da.moveaxis(array, axis, -1)
    except ImportError:
        pass
    return np.moveaxis(np.asarray(array), axis, -1)


def _tiff_source(path: Path, notes: list[str]) -> PlaneSource:
    import tifffile

    name = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"'{name}' is a TIFF file without any image in it")
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            rgb = int(series.keyframe.photometric) == 2
            contiguous = getattr(series, "dataoffset", None) is not None
            pages_ok = len(series.pages) == int(np.prod(shape[: len(shape) - (3 if "S" in axes[-3:] else 2)] or (1,)))
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types
        raise InputError(f"could not read '{name}' as a TIFF image ({type(exc).__name__}: {exc})") from None
    if "S" in axes and not axes.endswith("S") and not contiguous:
        axes_note = axes  # planar colour, compressed: decoded page by page below
    else:
        axes_note = None
    if contiguous:
        array = tifffile.memmap(path, mode="r")
        source = _make_source(name, array, axes, notes, rgb_hint=rgb, path=str(path), mode="memmap")
        source._array = array
        return source
    try:
        import zarr  # noqa: F401

        have_zarr = True
    except ImportError:
        have_zarr = False
    if have_zarr and axes_note is None:
        array = _open_file_array(str(path), "tiff-zarr")
        source = _make_source(name, array, axes, notes, rgb_hint=rgb, path=str(path), mode="tiff-zarr")
        source._array = array
        return source
    if not pages_ok:
        raise InputError(f"'{name}' has an image layout (axes {axes}) that cannot be read page by page; install zarr")
    page_axes = axes[-3:] if "S" in axes[-3:] else axes[-2:]
    lead = shape[: len(shape) - len(page_axes)]
    page_shape = shape[len(lead):]
    if page_axes != "YX" and page_axes != "YXS":  # planar colour page (S, Y, X): decode whole pages
        page_shape = tuple(page_shape[i] for i in np.argsort([page_axes.index(a) for a in "YXS"]))
        notes.append(f"'{name}' stores colour planes separately; each crop decodes a whole page")
        return _make_source(name, _PlanarPages(str(path), (*lead, *page_shape)), "Q" * len(lead) + "YXS", notes,
                            rgb_hint=rgb, mode="pages")
    return _make_source(name, _PageArray(str(path), (int(np.prod(lead or (1,))), *page_shape)),
                        "Q" + page_axes, notes, rgb_hint=rgb, mode="pages")


class _PlanarPages(_PageArray):
    """Pages stored as (S, Y, X) planes, presented as (Y, X, S)."""

    def __getitem__(self, key: tuple) -> np.ndarray:
        n, ys, xs = key[0], key[1], key[2]
        page = _PageArray.__getitem__(self, (n, slice(None), slice(None), slice(None)))
        return np.moveaxis(page, 0, -1)[ys, xs]


def _picture_source(path: Path, notes: list[str]) -> PlaneSource:
    from skimage import io as skio

    try:
        array = np.asarray(skio.imread(str(path)))
    except Exception as exc:  # noqa: BLE001 - many reader errors
        raise InputError(f"could not read '{path}' as an image ({type(exc).__name__}: {exc})") from None
    return _make_source(str(path), array, _axes_for_shape(array.shape), notes)


def _is_zarr_dir(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / f).exists() for f in (".zarray", ".zgroup", "zarr.json"))


def _path_sources(path: Path, notes: list[str]) -> list[PlaneSource]:
    if not path.exists():
        raise InputError(f"'{path}' does not exist; expected an image file, a folder of images or a zarr array")
    if path.is_dir():
        if _is_zarr_dir(path):
            array = _zarr_array(str(path))
            return [_make_source(str(path), array, "Q" * (array.ndim - 2) + "YX", notes, path=str(path), mode="memory")]
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise InputError(f"the folder '{path}' holds no .tif, .tiff, .png or .jpg images")
        return [s for f in files for s in _path_sources(f, notes)]
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return [_tiff_source(path, notes)]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [_picture_source(path, notes)]
    raise InputError(f"'{path}' is not a TIFF, PNG or JPEG file (nor a folder or zarr array)")


def open_sources(data: Sequence[Any] | Any, patch: int) -> tuple[list[PlaneSource], list[str]]:
    """Open every item of ``data`` (paths and/or arrays) as sources at least ``patch`` pixels wide.

    Returns the usable sources (statistics computed) and notes for the user (colour
    conversions, skipped images). Raises :class:`InputError` when nothing is usable.
    """
    if isinstance(data, (str, os.PathLike)) or hasattr(data, "shape"):
        data = [data]
    items = list(data)
    if not items:
        raise InputError("no data given: pass image files, folders or arrays")
    notes: list[str] = []
    sources: list[PlaneSource] = []
    for k, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            sources += _path_sources(Path(item), notes)
        elif hasattr(item, "shape") and hasattr(item, "__getitem__"):
            sources.append(_make_source(f"array {k}", item, _axes_for_shape(tuple(item.shape)), notes))
        else:
            raise InputError(f"data item {k} is a {type(item).__name__}; expected a path or an array")
    usable = []
    for source in sources:
        if min(source.shape_yx) < patch:
            message = (f"'{source.name}' ({source.shape_yx[0]} x {source.shape_yx[1]} pixels) is smaller than the "
                       f"{patch}-pixel patch: skipped")
            warnings.warn(message, stacklevel=2)
            notes.append(message)
            continue
        source.compute_stats()
        usable.append(source)
    if not usable:
        raise InputError(f"no image is at least {patch} x {patch} pixels; use a smaller patch or larger images")
    return usable, notes
