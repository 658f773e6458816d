"""How much can x2 super-resolution gain on each image, and does the image look alike one scale down?

The restoration benchmark's super-resolution task (``restoration.py --task superres``: the
reference area-downscaled by 2, every method restores it from that alone) scored against
linear filters that need no training run, in seconds:

  - ``oracle_linear``: for each of the 4 output phases (pixel (y mod 2, x mod 2)), the
    least-squares ``K x K`` filter (plus offset) on the small image **fitted to the reference
    itself**. It uses the answer, so it is no method a user has: it bounds what any *linear*
    upsampler can reach on that image. ``oracle_linear_split`` fits on the top half and scores
    on the bottom half only (so a filter that memorised the noise would show it).
  - ``zero_shot_linear``: the same filter fitted on the pairs a self-supervised method has
    (the small image downscaled once more -> the small image), then applied to the small
    image: the premise of ours (``emssl finetune --task superres``), that the image looks alike
    one scale up, with a linear model instead of a network.

Both are scored as gains over bicubic upsampling (dB). Per image also the error energy per
frequency band (max-norm frequency of the reference grid, cycles per pixel; the small image's
Nyquist limit is 0.25) of bicubic, back-projection and the oracle, next to the reference's own
energy in the band (above 0.25 only what the reference holds beyond the small image's grid).

    EMSSL_DATA=../shared/data PYTHONPATH=src .venv/bin/python benchmarks/superres_headroom.py \\
        --out benchmarks/results/superres_headroom.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restoration as bench  # noqa: E402

from napari_emssl.data.degrade import downscale_area  # noqa: E402

SIZES = (3, 5, 9)
BAND_EDGES = (0.0, 0.0625, 0.125, 0.1875, 0.25, 0.375, 0.51)


def _even(a: np.ndarray) -> np.ndarray:
    return a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2]


def _down(a: np.ndarray) -> np.ndarray:
    return downscale_area(_even(a).astype(np.float32), 2).astype(np.float64)


def _design(low: np.ndarray, size: int) -> np.ndarray:
    """Every ``size x size`` neighbourhood of ``low`` (reflected borders) as a row, plus a constant column."""
    h = size // 2
    pad = np.pad(low, h, mode="reflect")
    ny, nx = low.shape
    taps = [pad[dy : dy + ny, dx : dx + nx].ravel() for dy in range(size) for dx in range(size)]
    return np.stack(taps + [np.ones(ny * nx)], 1)


def fit_filters(low: np.ndarray, high: np.ndarray, size: int, rows: slice = slice(None)) -> dict:
    """Least-squares filter per output phase mapping ``low`` to ``high`` (2x its shape), on the rows ``rows`` of ``low``."""
    design = _design(low, size).reshape(low.shape[0], low.shape[1], -1)[rows].reshape(-1, size * size + 1)
    filters = {}
    for py in range(2):
        for px in range(2):
            target = high[py::2, px::2][: low.shape[0], : low.shape[1]][rows].ravel()
            filters[py, px] = np.linalg.lstsq(design, target, rcond=None)[0]
    return filters


def apply_filters(filters: dict, low: np.ndarray, size: int) -> np.ndarray:
    design = _design(low, size)
    out = np.empty((low.shape[0] * 2, low.shape[1] * 2))
    for (py, px), w in filters.items():
        out[py::2, px::2] = (design @ w).reshape(low.shape)
    return out


def psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    err = np.mean((estimate[: reference.shape[0], : reference.shape[1]] - reference) ** 2)
    return float(10.0 * np.log10(float(np.ptp(reference)) ** 2 / err))


def band_energy(image: np.ndarray) -> list[float]:
    """Mean squared value of ``image`` per frequency band (Parseval: the bands add up to the mean square)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None]
    radius = np.maximum(np.abs(fy), np.abs(fx))
    power = np.abs(np.fft.fft2(image)) ** 2 / image.size**2
    return [float(power[(radius >= a) & (radius < b)].sum()) for a, b in zip(BAND_EDGES[:-1], BAND_EDGES[1:])]


def headroom(clean: np.ndarray) -> dict:
    ref = _even(clean.astype(np.float64))
    low = _down(ref)
    bicubic = bench.run_bicubic(low.astype(np.float32)).astype(np.float64)
    back = bench.run_back_projection(low.astype(np.float32)).astype(np.float64)
    base = psnr(bicubic, ref)
    result = {"bicubic": round(base, 3), "back_projection": round(psnr(back, ref) - base, 3),
              "oracle_linear": {}, "oracle_linear_split": {}, "zero_shot_linear": {}}
    half = low.shape[0] // 2
    for size in SIZES:
        oracle = apply_filters(fit_filters(low, ref, size), low, size)
        result["oracle_linear"][size] = round(psnr(oracle, ref) - base, 3)
        split = apply_filters(fit_filters(low, ref, size, slice(0, half)), low, size)
        result["oracle_linear_split"][size] = round(psnr(split[2 * half :], ref[2 * half :]) - psnr(bicubic[2 * half :], ref[2 * half :]), 3)
        pairs = fit_filters(_down(low), _even(low), size)
        result["zero_shot_linear"][size] = round(psnr(apply_filters(pairs, low, size), ref) - base, 3)
        if size == max(SIZES):
            best = oracle
    result["bands"] = {"edges": list(BAND_EDGES), "reference": band_energy(ref - ref.mean()),
                       **{name: band_energy(est[: ref.shape[0], : ref.shape[1]] - ref)
                          for name, est in (("bicubic", bicubic), ("back_projection", back), ("oracle_linear", best))}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=list(bench.IMAGES), choices=list(bench.IMAGES),
                        help="default: every image of the restoration benchmark, the held-out ones too")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "superres_headroom.json")
    args = parser.parse_args()
    rows = {}
    for name in args.images:
        rows[name] = headroom(bench.load_clean(name))
        r = rows[name]
        print(f"{name}: bicubic {r['bicubic']:.2f} dB; gains over it: back_projection {r['back_projection']:+.2f}, "
              f"oracle_linear {r['oracle_linear'][max(SIZES)]:+.2f}, "
              + ", ".join(f"zero_shot_linear K{k} {v:+.2f}" for k, v in r["zero_shot_linear"].items()), flush=True)
    args.out.write_text(json.dumps({
        "images": {k: bench.IMAGES[k][1] for k in args.images}, "held_out": [k for k in args.images if k in bench.HELD_OUT],
        "sizes": list(SIZES), "rows": rows,
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores (numpy only)",
        "command": " ".join(["python", "benchmarks/superres_headroom.py"] + [shlex.quote(a) for a in sys.argv[1:]]),
    }, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
