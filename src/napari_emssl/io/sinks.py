"""Where results go, one slice at a time: memory, a TIFF file or an OME-Zarr folder.

A sink receives the planes of a result in order (``write(plane)``; for a 2D result one
plane, for a stack one per slice) and is then closed (``close()``: the result is complete
under its final name) or aborted (``abort()``: nothing is left under the final name).
File sinks write to a temporary name beside the final one and rename it only when the
last plane is in, so a stopped, failed or killed run never leaves a half-written file
under a final name, and memory stays bounded by a few planes however big the result is.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .atomic import fsync, make_folder, temporary_file
from .tiff import resolve_compression, tiff_write_kwargs

__all__ = ["ArraySink", "TiffSink", "ZarrSink", "open_sink", "SINK_FORMATS", "output_suffix"]

SINK_FORMATS = ("tif", "zarr")
_END, _ABORT = object(), object()


def output_suffix(fmt: str) -> str:
    """File name ending of a result written in ``fmt``."""
    return ".ome.zarr" if fmt == "zarr" else ".tif"


class _Planes:
    """Shape bookkeeping shared by the sinks: planes of ``shape[1:]`` (stacks) or one plane (2D)."""

    def __init__(self, shape: tuple[int, ...], dtype, plane_ndim: int) -> None:
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.plane_shape = self.shape[-plane_ndim:]
        self.count = int(np.prod(self.shape[:-plane_ndim])) if len(self.shape) > plane_ndim else 1
        self.written = 0

    def check(self, plane: np.ndarray) -> np.ndarray:
        plane = np.asarray(plane)
        if plane.shape != self.plane_shape:
            raise ValueError(f"plane of shape {plane.shape} written to a result of planes {self.plane_shape}")
        if self.written >= self.count:
            raise ValueError(f"more than {self.count} planes written")
        self.written += 1
        return plane.astype(self.dtype, copy=False)


class ArraySink(_Planes):
    """Planes into a numpy array in memory (``.array``)."""

    def __init__(self, shape: tuple[int, ...], dtype, plane_ndim: int = 2) -> None:
        super().__init__(shape, dtype, plane_ndim)
        self.array = np.zeros(self.shape, self.dtype)
        self._flat = self.array.reshape((self.count,) + self.plane_shape)

    def write(self, plane: np.ndarray) -> None:
        index = self.written
        self._flat[index] = self.check(plane)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class TiffSink(_Planes):
    """Planes into a TIFF written by a background thread (compression overlaps with compute).

    ``axes`` is ``YX``, ``ZYX`` or ``ZCYX`` (class probabilities of a stack; each plane then is
    ``(C, Y, X)``). At most ``queue_planes`` planes wait in memory. ``compression`` ``auto``: zlib
    for integer planes (labels), none for floating point (restored images, probabilities).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, *, scale=None, axes: str | None = None,
                 compression: str | None = "auto", queue_planes: int = 2) -> None:
        import tifffile

        plane_ndim = 3 if "C" in (axes or "") else 2
        super().__init__(shape, dtype if np.dtype(dtype) != bool else np.uint8, plane_ndim)
        self.path = Path(path)
        kwargs = tiff_write_kwargs(self.shape, self.dtype, scale, resolve_compression(compression, self.dtype), axes)
        self._tmp = temporary_file(self.path)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_planes))
        self._error: BaseException | None = None

        def pages():
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if item is _ABORT:
                    raise _Aborted()
                yield from (item if item.ndim == 3 else (item,))

        def run() -> None:
            try:
                tifffile.imwrite(self._tmp, data=pages(), shape=self.shape, dtype=self.dtype, **kwargs)
            except _Aborted:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"emssl-write-{self.path.name}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None:
                self._raise(f"writing '{self.path}' failed")
            if not self._thread.is_alive():
                if item is _END:  # tifffile stops reading once it has every page
                    return
                self._raise(f"writing '{self.path}' stopped")
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise(self, what: str) -> None:
        error = self._error
        self.abort()
        if isinstance(error, OSError):
            raise InputError(f"Could not write '{self.path}' ({error.strerror or error}); check the disk space and permissions.") from error
        raise InputError(f"{what}: {type(error).__name__}: {error}" if error else what) from error

    def write(self, plane: np.ndarray) -> None:
        self._put(np.ascontiguousarray(self.check(plane)))

    def close(self) -> None:
        if self.written != self.count:
            self.abort()
            raise ValueError(f"'{self.path}': {self.written} of {self.count} planes written")
        self._put(_END)
        self._thread.join()
        if self._error is not None:
            self._raise(f"writing '{self.path}' failed")
        fsync(self._tmp)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(_ABORT, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=30)
        Path(self._tmp).unlink(missing_ok=True)


class _Aborted(Exception):
    pass


class ZarrSink(_Planes):
    """Planes into an OME-Zarr image (NGFF 0.4, one resolution level, chunks of one slice x 1024 x 1024).

    Written into a temporary folder beside the final one and renamed when complete
    (``atomic=True``), or straight into ``path`` when a viewer shows the result as it fills
    (``atomic=False``); ``.array`` is the zarr array being filled.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, *, scale=None, atomic: bool = True,
                 name: str | None = None) -> None:
        import zarr

        super().__init__(shape, dtype if np.dtype(dtype) != bool else np.uint8, 2)
        from .lazy import ome_zarr_attrs

        self.path, self.atomic = Path(path), atomic
        folder = self.path.parent if str(self.path.parent) else Path(".")
        make_folder(folder, self.path)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)) if atomic else self.path
        if not atomic and self._dir.exists():
            shutil.rmtree(self._dir)
        chunks = (1,) * (len(self.shape) - 2) + tuple(min(n, 1024) for n in self.shape[-2:])
        try:
            group = zarr.open_group(str(self._dir), mode="w", zarr_format=2)
            group.attrs.update(ome_zarr_attrs(name or self.path.name, len(self.shape), scale))
            self.array = group.create_array("0", shape=self.shape, chunks=chunks, dtype=self.dtype, fill_value=0,
                                            chunk_key_encoding={"name": "v2", "separator": "/"})
        except OSError as exc:
            self.abort()
            raise InputError(f"Could not write '{self.path}' ({exc.strerror or exc}); check the disk space and permissions.") from exc

    def write(self, plane: np.ndarray) -> None:
        index = self.written
        plane = self.check(plane)
        if len(self.shape) == 2:
            self.array[...] = plane
        else:
            self.array[index] = plane

    def close(self) -> None:
        if self.written != self.count:
            self.abort()
            raise ValueError(f"'{self.path}': {self.written} of {self.count} planes written")
        if not self.atomic:
            return
        old = None
        if self.path.exists():  # overwrite: move the old result aside first, delete it once the new one is in place
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self._dir, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if self.atomic:
            shutil.rmtree(self._dir, ignore_errors=True)


def open_sink(fmt: str, path: str | os.PathLike, shape: tuple[int, ...], dtype, *, scale=None, axes: str | None = None):
    """A file sink for ``fmt`` (``tif`` or ``zarr``)."""
    if fmt == "tif":
        return TiffSink(path, shape, dtype, scale=scale, axes=axes)
    if fmt == "zarr":
        if axes == "ZCYX":
            raise InputError("class probabilities of a stack are written as TIFF only; use --format tif with --probabilities")
        return ZarrSink(path, shape, dtype, scale=scale)
    raise InputError(f"Unknown output format {fmt!r}; expected one of {', '.join(SINK_FORMATS)}.")
