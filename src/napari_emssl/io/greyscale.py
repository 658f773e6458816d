"""Turn colour or channel axes into one greyscale image, refusing real multichannel data."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def channels_equal(array: np.ndarray, axis: int, lossy: bool) -> bool:
    first = np.take(array, 0, axis=axis)
    for c in range(1, array.shape[axis]):
        other = np.take(array, c, axis=axis)
        if lossy:
            if np.max(np.abs(other.astype(np.int32) - first.astype(np.int32))) > 2:
                return False
        elif not np.array_equal(other, first):
            return False
    return True


def to_greyscale(array: np.ndarray, axes: str, name: str, photometric_rgb, *, lossy: bool):
    """Squeeze singleton axes, collapse grey-in-RGB / alpha, refuse colour and 4D+.

    Returns the array, its axes ("YX" or "ZYX") and the indices of the input axes kept.
    """
    if array.size == 0:
        raise InputError(f"'{name}' holds no pixels (shape {array.shape}); the file may be damaged: copy it again.")
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
            if n > 1 and not channels_equal(array, i, lossy):
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
