"""Detect truncated TIFF files: walk the IFD chain and check every strip/tile lies inside the file."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def ifd_chain_end(tif) -> int | None:
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


def check_complete(tif, series_list, name: str) -> None:
    """Refuse a TIFF whose image directories or data run past the end of the file (a cut copy)."""
    size = tif.filehandle.size
    broken = ifd_chain_end(tif)
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
