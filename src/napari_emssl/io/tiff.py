"""Read and write greyscale EM images: TIFF (compressed, multi-page, ImageJ, OME) and PNG/JPEG.

:func:`read_image` always returns a 2D ``(Y, X)`` image or a 3D ``(Z, Y, X)`` stack in the
file's own dtype, together with an :class:`ImageMeta`. Anything else (colour, 4D, unreadable)
raises :class:`~napari_emssl.errors.InputError` with a message written for the microscopist.

Pixel sizes (``ImageMeta.scale``) are in micrometres whenever the file says which unit it
uses (ImageJ ``unit``, OME ``PhysicalSizeXUnit``, TIFF resolution unit centimetre);
otherwise they are in the file's own unit and ``ImageMeta.unit`` is ``None``. A TIFF
resolution in the default unit "inch" is a print setting, not a pixel size, and is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import temporary_file
from .greyscale import to_greyscale
from .pixel_size import final_scale, tiff_scale
from .tiff_integrity import check_complete

__all__ = ["ImageMeta", "read_image", "write_image", "tiff_write_kwargs", "COMPRESSIONS"]

#: Compression names accepted by :func:`write_image` (tifffile spellings).
COMPRESSIONS = ("zlib", "lzw", "zstd", "lzma", "packbits", "none")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LOSSY_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
# ImageJ reads these dtypes from hyperstacks; others are written as plain TIFF.
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


@dataclass(frozen=True)
class ImageMeta:
    """What :func:`read_image` learnt about a file besides its pixels.

    ``scale`` is the pixel size per axis (same order as ``axes``), in micrometres when
    ``unit == "um"``; ``None`` when the file stores no pixel size. For a stack with an
    in-plane pixel size but no slice spacing, the slice spacing is taken equal to the
    in-plane Y pixel size.
    """

    scale: tuple[float, ...] | None
    axes: str
    dtype: str
    path: str
    unit: str | None = None


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read a greyscale 2D image or 3D stack; see the module docstring."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError(f"'{name}' does not exist; expected the path of a TIFF, PNG or JPEG image file.")
    if path.is_dir():
        raise InputError(f"'{name}' is a folder; expected one image file (TIFF, PNG or JPEG).")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"Could not open '{name}' ({exc.strerror or exc}); expected a readable image file.") from exc
    if len(magic) == 0:
        raise InputError(f"'{name}' is an empty file (0 bytes); expected an image: copy it again.")

    if magic in _TIFF_MAGIC:
        array, axes, photometric_rgb, scale, unit = _read_tiff(path)
    else:
        array, axes = _read_other(path)
        photometric_rgb, scale, unit = None, None, None

    array, axes, keep = to_greyscale(array, axes, name, photometric_rgb, lossy=path.suffix.lower() in _LOSSY_SUFFIXES)
    if scale is not None:
        scale = final_scale(scale, keep, axes)
    meta = ImageMeta(scale=scale, axes=axes, dtype=str(array.dtype), path=name, unit=unit if scale else None)
    return array, meta


def numpy_stack_as_rgb(tif, page, axes: str) -> bool:
    """Whether an RGB-tagged TIFF is a stack of 3 or 4 slices that tifffile wrote with its defaults.

    ``tifffile.imwrite(path, stack)`` stores an array of shape ``(3, Y, X)`` or ``(4, Y, X)``
    as RGB(A) with separate colour planes and records the array's shape in the description
    ("shaped" files). Colour images are written from ``(Y, X, 3)`` arrays (interleaved
    samples), and cameras and Fiji write interleaved RGB too, so separate planes in a shaped
    file with the samples first are read as the slices of a stack.
    """
    return (getattr(tif, "is_shaped", False) and axes == "SYX" and int(page.planarconfig) == 2
            and page.samplesperpixel in (3, 4))


def _read_tiff(path: Path):
    import tifffile

    name = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"'{name}' is a TIFF file without any image in it; expected a greyscale image or stack.")
            series = tif.series[0]
            check_claimed_size(name, int(series.size) * series.dtype.itemsize, path.stat().st_size)
            same = [
                s for s in tif.series
                if s.shape == series.shape and s.dtype == series.dtype and s.axes == series.axes
            ]
            if series.ndim == 2 and len(same) > 1 and len(same) == len(tif.series):
                # pages written one by one, each with its own description: one 2D series per page
                check_complete(tif, same, name)
                array = np.stack([s.asarray() for s in same])
                axes = "I" + series.axes
            else:
                check_complete(tif, [series], name)
                array = series.asarray()
                axes = series.axes
            page = series.keyframe
            photometric_rgb = int(page.photometric) == 2  # PHOTOMETRIC.RGB
            if photometric_rgb and numpy_stack_as_rgb(tif, page, axes):
                axes, photometric_rgb = "I" + axes[1:], False  # the slices of a stack, not colours
            scale, unit = tiff_scale(tif, page, axes)
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"'{name}' is too big to load into memory; crop it or split the stack into smaller files.") from exc
    except Exception as exc:  # tifffile / imagecodecs raise many different types
        raise InputError(
            f"Could not read '{name}' as a TIFF image ({type(exc).__name__}: {exc}); the file may be "
            "truncated, corrupted or still being copied: copy it again."
        ) from exc
    if array.ndim != len(axes):  # defensive; tifffile keeps them in step
        axes = "Q" * (array.ndim - 2) + "YX"
    return array, axes, photometric_rgb, scale, unit


def check_claimed_size(name: str, nbytes: int, file_size: int) -> None:
    """Refuse a file whose tags claim more pixel bytes than this computer's memory (damaged tags, most likely),
    before anything that size is allocated."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    if nbytes > memory:
        raise InputError(
            f"'{name}' claims {nbytes / 2**30:.1f} GB of pixels in a {file_size:,}-byte file, more than this computer's "
            f"{memory / 2**30:.0f} GB of memory: the file is damaged, or too big to load at once (emssl predict "
            "reads big stacks slice by slice)."
        )


def _read_other(path: Path):
    name = str(path)
    try:
        import imageio.v3 as iio

        array = np.asarray(iio.imread(path))
    except MemoryError as exc:
        raise InputError(f"'{name}' is too big to load into memory; crop it first.") from exc
    except Exception as exc:
        try:  # second chance through scikit-image's own readers
            from skimage import io as skio

            array = np.asarray(skio.imread(str(path)))
        except Exception:
            raise InputError(
                f"Could not read '{name}' as an image ({type(exc).__name__}: {exc}); expected a TIFF, PNG or "
                "JPEG file that is complete (not truncated or still being copied)."
            ) from exc
    if array.dtype == object or array.ndim < 2:
        raise InputError(f"'{name}' does not contain a 2D image (found shape {array.shape}); expected a greyscale image.")
    if array.ndim == 2:
        axes = "YX"
    elif array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        axes = "YXS"
    elif array.ndim == 3:
        axes = "ZYX"
    elif array.ndim == 4 and array.shape[-1] in (2, 3, 4):
        axes = "ZYXS"
    else:
        axes = "Q" * (array.ndim - 2) + "YX"
    return array, axes


# --------------------------------------------------------------------------- greyscale


def resolve_compression(compression: str | None, dtype) -> str | None:
    """tifffile's compression for a result: None (uncompressed) or one of ``COMPRESSIONS`` but ``none``.

    ``auto``: zlib for integer (label) images, which shrink many times over, none for floating
    point, which zlib shrinks by about a tenth at 10-15x the time of writing it raw.
    """
    if compression == "auto":
        return None if np.dtype(dtype).kind == "f" else "zlib"
    comp = None if compression in (None, "none", "") else str(compression).lower()
    if comp is not None and comp not in COMPRESSIONS:
        raise InputError(f"Unknown TIFF compression '{compression}'; expected one of {', '.join(COMPRESSIONS)}.")
    return comp


def write_image(path: str | os.PathLike, array: np.ndarray, *, scale=None, compression: str | None = "auto") -> None:
    """Write a 2D image or 3D stack as TIFF, atomically, keeping its dtype.

    ``scale`` is the pixel size per axis in micrometres (``(y, x)`` or ``(z, y, x)``); it is
    stored as TIFF resolution, ImageJ-compatible for uint8/uint16/float32 (ImageJ's ``unit``
    and ``spacing``), and as resolution in centimetres plus tifffile metadata otherwise.
    ``compression`` ``auto``: zlib for integer images, none for floating point (:func:`resolve_compression`).
    The file is written to a temporary name in the same folder and renamed over ``path``,
    so a reader never sees a half-written file. Parent folders are created.
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.size == 0:
        raise InputError(
            f"Cannot write an image of shape {array.shape} to '{path}'; expected a 2D image (Y, X) or a 3D stack (Z, Y, X)."
        )
    if array.dtype.kind not in "biuf":
        raise InputError(f"Cannot write pixel type {array.dtype} to '{path}'; expected integer or floating-point values.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    comp = resolve_compression(compression, array.dtype)
    if scale is not None:
        scale = tuple(float(s) for s in scale)
        if len(scale) != array.ndim or not all(np.isfinite(scale)) or min(scale) <= 0:
            raise InputError(
                f"Pixel size {scale} does not fit an image with {array.ndim} axes; expected {array.ndim} positive numbers."
            )

    kwargs = tiff_write_kwargs(array.shape, array.dtype, scale, comp)

    tmp = temporary_file(path)
    try:
        tifffile.imwrite(tmp, array, **kwargs)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise InputError(f"Could not write '{path}' ({exc.strerror or exc}); check the disk space and permissions.") from exc
        raise


def tiff_write_kwargs(shape: tuple[int, ...], dtype, scale, compression: str | None, axes: str | None = None) -> dict:
    """tifffile keyword arguments for a greyscale image: ImageJ-compatible (pixel size in um, slice
    spacing) for uint8/uint16/float32 under 4 GB, plain (Big)TIFF with the resolution in cm otherwise.

    ``axes`` defaults to ``YX`` / ``ZYX``; ``ZCYX`` writes class probabilities of a stack as an
    ImageJ hyperstack. ``scale`` is ``(y, x)`` or ``(z, y, x)`` in micrometres, or None.
    """
    dtype = np.dtype(dtype)
    axes = axes or ("YX" if len(shape) == 2 else "ZYX")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    bigtiff = nbytes > 2**32 - 2**25
    kwargs: dict = {"compression": compression, "bigtiff": bigtiff}
    metadata: dict = {"axes": axes}
    if dtype.type in _IMAGEJ_DTYPES and not bigtiff:
        if scale is not None:
            kwargs["resolution"] = (1.0 / scale[-1], 1.0 / scale[-2])
            metadata["unit"] = "um"
            if len(scale) == 3:
                metadata["spacing"] = scale[0]
        kwargs.update(imagej=True, metadata=metadata)
        return kwargs
    if scale is not None:
        kwargs["resolution"] = (1e4 / scale[-1], 1e4 / scale[-2])
        kwargs["resolutionunit"] = "CENTIMETER"
        metadata["unit"] = "um"
        if len(scale) == 3:
            metadata["spacing"] = scale[0]
    kwargs["metadata"] = metadata
    kwargs["photometric"] = "minisblack"
    return kwargs
