"""Pixel sizes from TIFF metadata (ImageJ, OME, resolution tags), converted to micrometres."""

from __future__ import annotations

import numpy as np

# micrometres per unit
_UNITS = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "a": 1e-4,
}


def unit_factor(unit) -> float | None:
    if not unit:
        return None
    unit = str(unit).strip()
    if "\\u" in unit:  # ImageJ escapes µ as \u00B5
        try:
            unit = unit.encode("ascii", "backslashreplace").decode("unicode_escape")
        except Exception:
            pass
    return _UNITS.get(unit.lower())


def tiff_scale(tif, page, axes: str):
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
                    f = unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
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
        factor = unit_factor(ij.get("unit"))
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
                f = unit_factor(shaped[0].get("unit")) or 1.0
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


def final_scale(scale_per_axis, keep, axes_out: str):
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
