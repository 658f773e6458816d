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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_emssl.errors import InputError

__all__ = ["ImageMeta", "read_image", "write_image", "COMPRESSIONS"]

#: Compression names accepted by :func:`write_image` (tifffile spellings).
COMPRESSIONS = ("zlib", "lzw", "zstd", "lzma", "packbits", "none")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LOSSY_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
# micrometres per unit
_UNITS = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "a": 1e-4,
}
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

    array, axes, keep = _to_greyscale(array, axes, name, photometric_rgb, lossy=path.suffix.lower() in _LOSSY_SUFFIXES)
    if scale is not None:
        scale = _final_scale(scale, keep, axes)
    meta = ImageMeta(scale=scale, axes=axes, dtype=str(array.dtype), path=name, unit=unit if scale else None)
    return array, meta


def _read_tiff(path: Path):
    import tifffile

    name = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"'{name}' is a TIFF file without any image in it; expected a greyscale image or stack.")
            series = tif.series[0]
            same = [
                s for s in tif.series
                if s.shape == series.shape and s.dtype == series.dtype and s.axes == series.axes
            ]
            if series.ndim == 2 and len(same) > 1 and len(same) == len(tif.series):
                # pages written one by one, each with its own description: one 2D series per page
                _check_complete(tif, same, name)
                array = np.stack([s.asarray() for s in same])
                axes = "I" + series.axes
            else:
                _check_complete(tif, [series], name)
                array = series.asarray()
                axes = series.axes
            page = series.keyframe
            photometric_rgb = int(page.photometric) == 2  # PHOTOMETRIC.RGB
            scale, unit = _tiff_scale(tif, page, axes)
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


_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def _ifd_chain_end(tif) -> int | None:
    """Walk the image directories (IFDs) and their tag values; return the first byte past the
    end of the file that they refer to, or None when everything lies inside the file.

    tifffile stops quietly at a broken chain and returns fewer pages, which would turn a
    truncated stack into a shorter one without a word; this catches that.
    """
    fh, t = tif.filehandle, tif.tiff
    size = fh.size
    bo = t.byteorder
    big = t.offsetsize == 8
    entry = np.dtype([("code", bo + "u2"), ("type", bo + "u2"),
                      ("count", bo + ("u8" if big else "u4")), ("value", bo + ("u8" if big else "u4"))])
    offset = int(tif.pages.first.offset)
    seen = set()
    while offset:
        if offset in seen:  # circular chain: tifffile handles it, nothing is missing
            return None
        seen.add(offset)
        if offset + t.tagnosize > size:
            return offset + t.tagnosize
        fh.seek(offset)
        tagno = int(np.frombuffer(fh.read(t.tagnosize), bo + ("u8" if big else "u2"))[0])
        next_at = offset + t.tagnosize + tagno * t.tagsize
        if next_at + t.offsetsize > size:
            return next_at + t.offsetsize
        entries = np.frombuffer(fh.read(tagno * t.tagsize), entry)
        nbytes = entries["count"].astype(np.float64) * np.array(
            [_TYPE_SIZES.get(int(k), 1) for k in entries["type"]], dtype=np.float64
        )
        # values stored elsewhere in the file; private (vendor) tags >= 32768 are not checked,
        # some microscopes write sloppy ones and they do not affect the pixels
        outside = (nbytes > t.offsetsize) & (entries["code"] < 32768)
        if outside.any():
            need = float((entries["value"][outside].astype(np.float64) + nbytes[outside]).max())
            if need > size:
                return int(need)
        offset = int(np.frombuffer(fh.read(t.offsetsize), bo + ("u8" if big else "u4"))[0])
        if offset >= size:
            return offset
    return None


def _check_complete(tif, series_list, name: str) -> None:
    """Refuse a TIFF whose image directories or data run past the end of the file (a cut copy)."""
    size = tif.filehandle.size
    broken = _ifd_chain_end(tif)
    if broken is not None:
        raise InputError(
            f"'{name}' is truncated or damaged: the file is {size} bytes long but refers to data up to byte "
            f"{broken}; copy the file again."
        )
    end = 0
    for series in series_list:
        if getattr(series, "dataoffset", None) is not None:  # contiguous, uncompressed
            end = max(end, int(series.dataoffset) + int(series.nbytes))
            continue
        for page in series.pages:
            if page is None:
                continue
            offsets, counts = page.dataoffsets, page.databytecounts
            if len(offsets):
                end = max(end, max(int(o) + int(c) for o, c in zip(offsets, counts)))
    if end > size:
        raise InputError(
            f"'{name}' is truncated: the file is {size} bytes long but its image data need {end} bytes; "
            "copy the file again."
        )


def _unit_factor(unit) -> float | None:
    if not unit:
        return None
    unit = str(unit).strip()
    if "\\u" in unit:  # ImageJ escapes µ as \u00B5
        try:
            unit = unit.encode("ascii", "backslashreplace").decode("unicode_escape")
        except Exception:
            pass
    return _UNITS.get(unit.lower())


def _tiff_scale(tif, page, axes: str):
    """Pixel size per axis of ``axes`` (``None`` where unknown) and the unit ("um" or None)."""
    yx = None  # (y, x) pixel size
    z = None
    factor = None
    unit_known = False

    if tif.is_ome:
        try:
            import tifffile

            meta = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (meta[0] if isinstance(meta, list) else meta)["Pixels"]
            sizes = {}
            for ax in "XYZ":
                value = pixels.get(f"PhysicalSize{ax}")
                if value:
                    f = _unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
                    sizes[ax] = float(value) * (f if f else 1.0)
                    unit_known = unit_known or f is not None
            if "X" in sizes and "Y" in sizes:
                yx = (sizes["Y"], sizes["X"])
            z = sizes.get("Z")
        except Exception:
            yx = None

    res = None
    try:
        res = page.resolution  # (x, y) pixels per unit
        resunit = int(page.resolutionunit)
    except Exception:
        resunit = 1

    if yx is None and tif.is_imagej:
        ij = tif.imagej_metadata or {}
        factor = _unit_factor(ij.get("unit"))
        if factor is not None and res and res[0] > 0 and res[1] > 0:
            yx = (factor / res[1], factor / res[0])
            unit_known = True
            if ij.get("spacing"):
                z = float(ij["spacing"]) * factor

    if yx is None and res and res[0] > 0 and res[1] > 0 and not tif.is_imagej:
        if resunit == 3:  # centimetre
            yx = (1e4 / res[1], 1e4 / res[0])
            unit_known = True
        elif resunit == 1 and tuple(res) != (1.0, 1.0):  # no unit
            yx = (1.0 / res[1], 1.0 / res[0])
        if yx is not None:
            shaped = getattr(tif, "shaped_metadata", None) or ()
            if shaped and shaped[0].get("spacing"):
                f = _unit_factor(shaped[0].get("unit")) or 1.0
                z = float(shaped[0]["spacing"]) * f

    if yx is None:
        return None, None
    per_axis = []
    for ax in axes:
        if ax == "Y":
            per_axis.append(yx[0])
        elif ax == "X":
            per_axis.append(yx[1])
        elif ax == "Z":
            per_axis.append(z)
        else:
            per_axis.append(None)
    return per_axis, ("um" if unit_known else None)


def _final_scale(scale_per_axis, keep, axes_out: str):
    kept = [scale_per_axis[i] for i in keep]
    if len(kept) != len(axes_out):
        return None
    y_size = kept[axes_out.index("Y")]
    if y_size is None:
        return None
    out = tuple(float(f"{(v if v is not None else y_size):.7g}") for v in kept)
    if not all(np.isfinite(out)) or min(out) <= 0:
        return None
    return out


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


def _channels_equal(array: np.ndarray, axis: int, lossy: bool) -> bool:
    first = np.take(array, 0, axis=axis)
    for c in range(1, array.shape[axis]):
        other = np.take(array, c, axis=axis)
        if lossy:
            if np.max(np.abs(other.astype(np.int32) - first.astype(np.int32))) > 2:
                return False
        elif not np.array_equal(other, first):
            return False
    return True


def _to_greyscale(array: np.ndarray, axes: str, name: str, photometric_rgb, *, lossy: bool):
    """Squeeze singleton axes, collapse grey-in-RGB / alpha, refuse colour and 4D+.

    Returns the array, its axes ("YX" or "ZYX") and the indices of the input axes kept.
    """
    keep = [i for i, (n, ax) in enumerate(zip(array.shape, axes)) if n > 1 or ax in "YX"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)

    for ch_axis in ("S", "C"):
        while ch_axis in axes:
            i = axes.index(ch_axis)
            n = array.shape[i]
            colour = ch_axis == "S" and (photometric_rgb or n in (3, 4))
            if colour and n == 4:  # drop alpha
                array = np.take(array, [0, 1, 2], axis=i)
                n = 3
            elif n == 2 and ch_axis == "S":  # grey + alpha
                array = np.take(array, [0], axis=i)
                n = 1
            if n > 1 and not _channels_equal(array, i, lossy):
                if colour:
                    raise InputError(
                        f"'{name}' is an RGB image; EM images are greyscale: convert it to 8-bit or 16-bit "
                        "greyscale (e.g. in Fiji: Image > Type > 8-bit) and load it again."
                    )
                raise InputError(
                    f"'{name}' has {n} different channels; EM images have one: save the channel you want "
                    "to use as its own file (e.g. in Fiji: Image > Color > Split Channels)."
                )
            if lossy and n > 1:
                sub = np.moveaxis(array, i, -1)
                array = np.rint(sub.mean(axis=-1)).astype(array.dtype)
            else:
                array = np.take(array, 0, axis=i)
            axes = axes[:i] + axes[i + 1 :]
            keep = keep[:i] + keep[i + 1 :]

    if array.ndim > 3:
        raise InputError(
            f"'{name}' has {array.ndim} dimensions (axes {axes}, shape {array.shape}) after removing "
            "axes of size 1; expected a 2D image (Y, X) or a 3D stack (Z, Y, X): save one channel "
            "and one time point as a stack."
        )
    if array.ndim == 3:
        others = [i for i, ax in enumerate(axes) if ax not in "YX"]
        if len(others) != 1 or "Y" not in axes or "X" not in axes:
            raise InputError(
                f"'{name}' has axes {axes} (shape {array.shape}); expected a 2D image (Y, X) or a 3D stack (Z, Y, X)."
            )
        order = [others[0], axes.index("Y"), axes.index("X")]
        array = np.transpose(array, order)
        keep = [keep[i] for i in order]
        axes = "ZYX"
    else:
        order = [axes.index("Y"), axes.index("X")] if set(axes) == {"Y", "X"} else [0, 1]
        array = np.transpose(array, order)
        keep = [keep[i] for i in order]
        axes = "YX"
    if array.dtype.kind == "c" or array.dtype == object:
        raise InputError(f"'{name}' has pixel type {array.dtype}; expected integer or floating-point grey values.")
    return np.ascontiguousarray(array), axes, keep


# --------------------------------------------------------------------------- writing


def write_image(path: str | os.PathLike, array: np.ndarray, *, scale=None, compression: str | None = "zlib") -> None:
    """Write a 2D image or 3D stack as TIFF, atomically, keeping its dtype.

    ``scale`` is the pixel size per axis in micrometres (``(y, x)`` or ``(z, y, x)``); it is
    stored as TIFF resolution, ImageJ-compatible for uint8/uint16/float32 (ImageJ's ``unit``
    and ``spacing``), and as resolution in centimetres plus tifffile metadata otherwise.
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
    comp = None if compression in (None, "none", "") else str(compression).lower()
    if comp is not None and comp not in COMPRESSIONS:
        raise InputError(f"Unknown TIFF compression '{compression}'; expected one of {', '.join(COMPRESSIONS)}.")
    if scale is not None:
        scale = tuple(float(s) for s in scale)
        if len(scale) != array.ndim or not all(np.isfinite(scale)) or min(scale) <= 0:
            raise InputError(
                f"Pixel size {scale} does not fit an image with {array.ndim} axes; expected {array.ndim} positive numbers."
            )

    axes = "YX" if array.ndim == 2 else "ZYX"
    bigtiff = array.nbytes > 2**32 - 2**25
    imagej = array.dtype.type in _IMAGEJ_DTYPES and not bigtiff
    kwargs: dict = {"compression": comp, "bigtiff": bigtiff}
    if imagej:
        metadata: dict = {"axes": axes}
        if scale is not None:
            kwargs["resolution"] = (1.0 / scale[-1], 1.0 / scale[-2])
            metadata["unit"] = "um"
            if array.ndim == 3:
                metadata["spacing"] = scale[0]
        kwargs.update(imagej=True, metadata=metadata)
    else:
        metadata = {"axes": axes}
        if scale is not None:
            kwargs["resolution"] = (1e4 / scale[-1], 1e4 / scale[-2])
            kwargs["resolutionunit"] = "CENTIMETER"
            metadata["unit"] = "um"
            if array.ndim == 3:
                metadata["spacing"] = scale[0]
        kwargs["metadata"] = metadata
        kwargs["photometric"] = "minisblack"

    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the folder '{folder}' for '{path}' ({exc.strerror or exc}).") from exc
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"Cannot write into the folder '{folder}' ({exc.strerror or exc}); choose a folder you can write to.") from exc
    os.close(fd)
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
