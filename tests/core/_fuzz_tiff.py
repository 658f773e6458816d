"""Fuzzing of the image reader, run in a child process under a memory limit (see test_fuzz.py).

A damaged TIFF can claim an image of tens of GB in a few hundred bytes; without a limit the
reader would try to allocate it and the whole test run could be killed. This module imports
no torch (the limit is on address space). ``python _fuzz_tiff.py EXAMPLES LIMIT_GB`` runs the
properties; ``python _fuzz_tiff.py --huge LIMIT_GB`` reads one such crafted file.
"""

from __future__ import annotations

import io
import resource
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np


def limit_memory(gb: float) -> None:
    size = int(gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def tiff_bytes(array: np.ndarray, compression=None) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, compression=compression)
    return buf.getvalue()


def huge_claim_tiff() -> bytes:
    """A 268-byte zlib TIFF whose tags claim a 3,000,000,000 x 13 uint8 image (39 GB)."""
    import tifffile

    raw = bytearray(tiff_bytes(np.zeros((1, 1), np.uint8), "zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tif:
        tags, order = tif.pages.first.tags, tif.byteorder
        for name, value in (("ImageLength", 3_000_000_000), ("ImageWidth", 13)):
            tag = tags[name]
            struct.pack_into(order + ("I" if int(tag.dtype) == 4 else "H"), raw, tag.valueoffset, value)
    return bytes(raw)


def mutate(data: bytes, how: str, draw) -> bytes:
    from hypothesis import strategies as st

    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1), label="cut")]
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 8), label="flips")):
        if how == "flip bit":
            i = draw(st.integers(0, len(buf) - 1), label="at")
            buf[i] ^= 1 << draw(st.integers(0, 7), label="bit")
        elif how == "random byte":
            buf[draw(st.integers(0, len(buf) - 1), label="at")] = draw(st.integers(0, 255), label="byte")
        elif how == "header byte":  # the first 64 bytes: byte order, IFD offset, tag entries
            buf[draw(st.integers(0, min(63, len(buf) - 1)), label="at")] = draw(st.integers(0, 255), label="byte")
    return bytes(buf)


# bugs reported by their own xfail(strict=True) tests in test_fuzz.py, let through here
KNOWN = [(ValueError, "cannot reshape array of size 0")]


def read(path: Path):
    """``read_image(path)``: a valid image, or an EmsslError with a message; anything else is raised."""
    from napari_emssl.errors import EmsslError
    from napari_emssl.io import read_image

    try:
        image, _ = read_image(path)
    except EmsslError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None
    except Exception as exc:
        if any(isinstance(exc, kind) and words in str(exc) for kind, words in KNOWN):
            return None
        raise
    assert isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.size > 0
    return image


def run(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fuzz = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

    @fuzz
    @given(data=st.data())
    def corrupt_tiff(data):
        shape = data.draw(st.sampled_from([(5, 7), (3, 4, 6), (1, 1), (33, 17)]), label="shape")
        dtype = data.draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.int16]), label="dtype")
        compression = data.draw(st.sampled_from([None, "zlib", "lzw"]), label="compression")
        array = (np.arange(int(np.prod(shape))) % 200).astype(dtype).reshape(shape)
        how = data.draw(st.sampled_from(["truncate", "flip bit", "random byte", "header byte"]), label="how")
        raw = mutate(tiff_bytes(array, compression), how, data.draw)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "image.tif"
            path.write_bytes(raw)
            read(path)

    @settings(fuzz, max_examples=max(5, examples // 2))
    @given(raw=st.binary(min_size=0, max_size=300),
           magic=st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]))
    def random_bytes(raw, magic):
        with tempfile.TemporaryDirectory() as folder:
            for name in ("image.tif", "image.png", "image.jpg"):
                path = Path(folder) / name
                path.write_bytes(magic + raw)
                read(path)

    corrupt_tiff()
    random_bytes()


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # tifffile logs every damaged tag
    if sys.argv[1] == "--huge":
        limit_memory(float(sys.argv[2]))
        from napari_emssl.errors import EmsslError
        from napari_emssl.io import read_image

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "claims_39GB.tif"
            path.write_bytes(huge_claim_tiff())
            try:
                read_image(path)
                print("READ")
            except EmsslError as exc:
                print(f"{type(exc).__name__}: {exc}")
    else:
        limit_memory(float(sys.argv[2]))
        run(int(sys.argv[1]))
        print("OK")
