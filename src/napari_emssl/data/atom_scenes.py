"""Clean synthetic atomic-resolution scenes: atom columns on Bravais lattices, grain boundaries, amorphous regions.

The scene part of :mod:`napari_emssl.data.synthetic` (see its docstring for the model and
its sources): random lattices with a one- or two-atom basis, columns rendered as 2D
Gaussians, strain, intensity variation and vacancies, and smooth low-frequency
backgrounds. Everything is drawn from a seeded :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .degrade import resize_cubic

__all__ = ["SCENES", "Lattice", "SynthSettings", "random_lattice", "render_columns", "smooth_background", "scene_columns", "uniform"]

SCENES = ("crystal", "grain_boundary", "amorphous")


@dataclass(frozen=True)
class Lattice:
    """A 2D Bravais lattice with a basis, in pixel units, vectors as ``(dy, dx)``.

    Column ``j`` of cell ``(n1, n2)`` sits at ``origin + (n1 + f1) a1 + (n2 + f2) a2`` with
    ``(f1, f2) = basis[j]``, peak intensity ``amplitudes[j]`` and Gaussian width
    ``sigmas[j]`` (standard deviation in pixels).
    """

    a1: tuple[float, float]
    a2: tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)
    basis: tuple[tuple[float, float], ...] = ((0.0, 0.0),)
    amplitudes: tuple[float, ...] = (1.0,)
    sigmas: tuple[float, ...] = (1.5,)
    kind: str = "custom"

    @property
    def matrix(self) -> np.ndarray:
        """``(2, 2)`` with rows ``a1`` and ``a2``."""
        return np.array([self.a1, self.a2], dtype=np.float64)

    def reciprocal(self) -> np.ndarray:
        """Rows ``b1``, ``b2`` (cycles per pixel, ``(fy, fx)``) with ``a_i . b_j = delta_ij``.

        The Fourier transform of the lattice image has its peaks at ``h b1 + k b2``.
        """
        return np.linalg.inv(self.matrix).T

    def columns(self, shape: tuple[int, int], margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions ``(N, 2)``, amplitudes ``(N,)``, sigmas ``(N,)`` of all columns within ``margin`` of the field."""
        ny, nx = shape
        corners = np.array([[-margin, -margin], [-margin, nx + margin], [ny + margin, -margin], [ny + margin, nx + margin]])
        frac = (corners - np.asarray(self.origin)) @ np.linalg.inv(self.matrix)  # cell coordinates of the corners
        lo = np.floor(frac.min(axis=0)).astype(int) - 1
        hi = np.ceil(frac.max(axis=0)).astype(int) + 1
        n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        cells = np.stack([n1.ravel(), n2.ravel()], axis=1).astype(np.float64)
        basis = np.asarray(self.basis, dtype=np.float64)
        frac_all = (cells[:, None, :] + basis[None, :, :]).reshape(-1, 2)
        pos = np.asarray(self.origin) + frac_all @ self.matrix
        amp = np.tile(np.asarray(self.amplitudes, dtype=np.float64), len(cells))
        sig = np.tile(np.asarray(self.sigmas, dtype=np.float64), len(cells))
        keep = (pos[:, 0] > -margin) & (pos[:, 0] < ny + margin) & (pos[:, 1] > -margin) & (pos[:, 1] < nx + margin)
        return pos[keep], amp[keep], sig[keep]


@dataclass(frozen=True)
class SynthSettings:
    """Ranges the generator draws from (uniform unless said otherwise).

    Set a range to a single value (e.g. ``jitter=(0.0, 0.0)``) to switch a part off;
    ``scene_weights`` picks crystal / grain boundary / amorphous scenes.
    """

    spacing: tuple[float, float] = (6.0, 20.0)  # lattice constants, px
    width_frac: tuple[float, float] = (0.12, 0.24)  # column sigma / nearest-neighbour distance
    min_sigma: float = 0.7  # px
    two_atom_prob: float = 0.7
    z_range: tuple[int, int] = (6, 83)  # atomic numbers of the species (C .. Bi)
    z_exponent: float = 1.7  # ADF-STEM Z-contrast, intensity ~ Z^1.7
    column_variation: float = 0.06  # relative column intensity scatter (thickness)
    displacement: tuple[float, float] = (0.0, 0.25)  # px, column position scatter (strain)
    vacancy: tuple[float, float] = (0.0, 0.04)  # fraction of missing columns
    scene_weights: tuple[float, float, float] = (0.55, 0.25, 0.20)
    amorphous_patch_prob: float = 0.3  # a crystal scene gets an amorphous region
    background_amplitude: tuple[float, float] = (0.1, 1.2)  # peak-to-peak, unit intensity
    background_offset: tuple[float, float] = (0.0, 0.3)
    dose: tuple[float, float] = (10.0, 1000.0)  # electrons per unit intensity, drawn log-uniformly
    read_sigma: tuple[float, float] = (0.0, 0.03)
    scan_prob: float = 0.7  # probability of scan artefacts
    jitter: tuple[float, float] = (0.0, 0.6)  # px
    line_offset: tuple[float, float] = (0.0, 0.02)
    line_gain: tuple[float, float] = (0.0, 0.03)
    drift: tuple[float, float] = (0.0, 0.06)


def uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(r[0], r[1]))


def _nearest_distance(lat_matrix: np.ndarray, basis: np.ndarray) -> float:
    """Smallest distance between two different columns of the lattice (checks neighbouring cells)."""
    shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)
    best = np.inf
    for f in basis:
        d = (basis[None, :, :] + shifts[:, None, :] - f) @ lat_matrix  # (9, nb, 2)
        dist = np.linalg.norm(d, axis=-1)
        dist[dist < 1e-9] = np.inf
        best = min(best, float(dist.min()))
    return best


def random_lattice(rng: np.random.Generator, settings: SynthSettings | None = None) -> Lattice:
    """A random lattice: type, constants, orientation, basis, Z-contrast intensities and widths."""
    s = settings or SynthSettings()
    kind = ("square", "rectangular", "hexagonal", "oblique")[int(rng.integers(4))]
    a = uniform(rng, s.spacing)
    if kind == "square":
        b, gamma = a, 90.0
    elif kind == "rectangular":
        b, gamma = uniform(rng, s.spacing), 90.0
    elif kind == "hexagonal":
        b, gamma = a, 120.0
    else:
        b, gamma = uniform(rng, s.spacing), float(rng.uniform(65.0, 85.0))
    theta = float(rng.uniform(0.0, math.pi))
    g = math.radians(gamma)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    a1 = rot @ np.array([0.0, a])  # (dy, dx): a1 along x before rotation
    a2 = rot @ np.array([b * math.sin(g), b * math.cos(g)])
    matrix = np.array([a1, a2])

    basis = np.zeros((1, 2))
    if rng.random() < s.two_atom_prob:
        candidates = [(0.5, 0.5), (0.5, 0.0), (1 / 3, 2 / 3)] if kind == "hexagonal" else [(0.5, 0.5), (0.5, 0.0)]
        for _ in range(10):
            f = candidates[int(rng.integers(len(candidates)))] if rng.random() < 0.7 else tuple(rng.uniform(0.25, 0.75, 2))
            trial = np.array([(0.0, 0.0), f])
            if _nearest_distance(matrix, trial) >= 0.35 * min(a, b):
                basis = trial
                break
    nn = _nearest_distance(matrix, basis)
    z = np.sort(rng.integers(s.z_range[0], s.z_range[1] + 1, size=len(basis)))[::-1]
    amplitudes = (z / z.max()) ** s.z_exponent
    widths = np.maximum(s.min_sigma, nn * rng.uniform(*s.width_frac, size=len(basis)))
    origin = tuple(rng.uniform(0.0, 1.0, 2) @ matrix)
    return Lattice(
        a1=tuple(a1), a2=tuple(a2), origin=origin, basis=tuple(map(tuple, basis)),
        amplitudes=tuple(float(v) for v in amplitudes), sigmas=tuple(float(v) for v in widths), kind=kind,
    )


def render_columns(
    shape: tuple[int, int], positions: np.ndarray, amplitudes: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """Sum of 2D Gaussians ``amp * exp(-r^2 / (2 sigma^2))`` at sub-pixel ``positions`` ``(N, 2)`` (y, x).

    Each Gaussian is evaluated exactly on a window of radius ``ceil(3.5 sigma_max)`` pixels
    (separable outer product) and accumulated with one ``np.bincount``.
    """
    ny, nx = shape
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if len(positions) == 0:
        return np.zeros(shape, np.float32)
    amplitudes = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (len(positions),))
    sigmas = np.broadcast_to(np.asarray(sigmas, dtype=np.float64), (len(positions),))
    r = int(math.ceil(3.5 * float(sigmas.max())))
    offs = np.arange(-r, r + 1)
    cy = np.round(positions[:, 0]).astype(np.int64)
    cx = np.round(positions[:, 1]).astype(np.int64)
    yy = cy[:, None] + offs  # (N, K)
    xx = cx[:, None] + offs
    inv = 1.0 / (2.0 * sigmas[:, None] ** 2)
    gy = np.exp(-((yy - positions[:, :1]) ** 2) * inv) * amplitudes[:, None]
    gx = np.exp(-((xx - positions[:, 1:]) ** 2) * inv)
    vals = gy[:, :, None] * gx[:, None, :]  # (N, K, K)
    iy = np.broadcast_to(yy[:, :, None], vals.shape)
    ix = np.broadcast_to(xx[:, None, :], vals.shape)
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    flat = (iy * nx + ix)[inside]
    out = np.bincount(flat, weights=vals[inside], minlength=ny * nx)
    return out.reshape(shape).astype(np.float32)


def smooth_background(rng: np.random.Generator, shape: tuple[int, int], kind: str | None = None) -> np.ndarray:
    """A smooth random field scaled to 0..1: a low-order polynomial or heavily smoothed noise.

    ``kind`` is ``"polynomial"`` (random degree 1-3 in y and x) or ``"smooth_noise"`` (white
    noise on a coarse 3-6 cell grid, interpolated bicubically: nothing finer than about a
    quarter of the field survives); ``None`` picks one at random.
    """
    ny, nx = shape
    kind = kind or ("polynomial" if rng.random() < 0.5 else "smooth_noise")
    if kind == "polynomial":
        deg = int(rng.integers(1, 4))
        y = np.linspace(-1.0, 1.0, ny)
        x = np.linspace(-1.0, 1.0, nx)
        coef = rng.standard_normal((deg + 1, deg + 1)) / (1.0 + np.add.outer(np.arange(deg + 1), np.arange(deg + 1)))
        coef[np.add.outer(np.arange(deg + 1), np.arange(deg + 1)) > deg] = 0.0  # total degree <= deg
        field_ = np.vander(y, deg + 1, increasing=True) @ coef @ np.vander(x, deg + 1, increasing=True).T
    elif kind == "smooth_noise":
        cells = int(rng.integers(3, 7))
        coarse = rng.standard_normal((cells, cells))
        field_ = resize_cubic(coarse, (ny, nx)).astype(np.float64)
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected 'polynomial' or 'smooth_noise'")
    lo, hi = field_.min(), field_.max()
    return ((field_ - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def _amorphous_columns(
    rng: np.random.Generator, shape: tuple[int, int], settings: SynthSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly placed columns: a rotated grid with strong Gaussian jitter (no long-range order)."""
    ny, nx = shape
    d = uniform(rng, (max(settings.spacing[0], 6.0), max(settings.spacing[0], 6.0) * 1.6))
    theta = rng.uniform(0.0, math.pi)
    half = 0.75 * math.hypot(ny, nx)
    g = np.arange(-half, half, d)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([gy.ravel(), gx.ravel()], 1)
    c, s = math.cos(theta), math.sin(theta)
    pts = pts @ np.array([[c, s], [-s, c]]) + (ny / 2, nx / 2)
    pts += rng.normal(0.0, 0.3 * d, pts.shape)
    keep = (pts[:, 0] > -d) & (pts[:, 0] < ny + d) & (pts[:, 1] > -d) & (pts[:, 1] < nx + d)
    pts = pts[keep]
    level = rng.uniform(0.2, 0.7)  # mixed light elements, dimmer than the heaviest crystal columns
    amp = level * rng.uniform(0.6, 1.0, len(pts))
    sig = np.full(len(pts), max(settings.min_sigma, d * uniform(rng, settings.width_frac)))
    return pts, amp, sig


def _perturb(
    rng: np.random.Generator, pos: np.ndarray, amp: np.ndarray, settings: SynthSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strain displacements, thickness variation and vacancies of lattice columns; returns the kept mask too."""
    pos = pos + rng.normal(0.0, uniform(rng, settings.displacement), pos.shape)
    amp = amp * (1.0 + settings.column_variation * rng.standard_normal(len(amp)))
    keep = rng.random(len(amp)) >= uniform(rng, settings.vacancy)
    return pos, np.clip(amp, 0.0, None), keep


def scene_columns(
    rng: np.random.Generator, shape: tuple[int, int], scene: str, settings: SynthSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Lattice]]:
    ny, nx = shape
    if scene == "amorphous" and rng.random() < 0.5:  # the whole field is amorphous
        pos, amp, sig = _amorphous_columns(rng, shape, settings)
        return pos, amp, sig, []
    lattices = [random_lattice(rng, settings)]
    if scene == "grain_boundary":
        lattices.append(random_lattice(rng, settings))
    parts = []
    margin = 4.0 * max(max(lat.sigmas) for lat in lattices)
    if scene == "grain_boundary":
        phi = rng.uniform(0.0, math.pi)
        normal = np.array([math.sin(phi), math.cos(phi)])
        point = np.array([ny, nx]) * rng.uniform(0.3, 0.7, 2)
        gap = rng.uniform(0.0, 3.0)
        for sign, lat in zip((1.0, -1.0), lattices):
            pos, amp, sig = lat.columns(shape, margin)
            side = sign * ((pos - point) @ normal) > gap / 2
            parts.append((pos[side], amp[side], sig[side]))
    else:
        parts.append(lattices[0].columns(shape, margin))
    pos = np.concatenate([p[0] for p in parts])
    amp = np.concatenate([p[1] for p in parts])
    sig = np.concatenate([p[2] for p in parts])
    pos, amp, keep = _perturb(rng, pos, amp, settings)
    pos, amp, sig = pos[keep], amp[keep], sig[keep]
    if scene == "amorphous" or rng.random() < settings.amorphous_patch_prob:
        region = smooth_background(rng, shape, "smooth_noise") > rng.uniform(0.45, 0.75)

        def inside(p: np.ndarray) -> np.ndarray:
            iy = np.clip(np.round(p[:, 0]).astype(int), 0, ny - 1)
            ix = np.clip(np.round(p[:, 1]).astype(int), 0, nx - 1)
            return region[iy, ix]

        out = ~inside(pos)
        apos, aamp, asig = _amorphous_columns(rng, shape, settings)
        ain = inside(apos)
        pos = np.concatenate([pos[out], apos[ain]])
        amp = np.concatenate([amp[out], aamp[ain]])
        sig = np.concatenate([sig[out], asig[ain]])
    return pos, amp, sig, lattices


# ---------------------------------------------------------------------------------------------- samples and pairs
