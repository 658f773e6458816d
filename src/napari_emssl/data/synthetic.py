"""Synthetic atomic-resolution STEM image pairs for restoration tasks (in the spirit of TEMImageNet).

Lin et al. 2021 (TEMImageNet, "TEMImageNet training library and AtomSegNet deep-learning
models for high-precision atom segmentation, localization, denoising, and deblurring of
atomic-resolution images", Sci. Rep. 11, 5386) train restoration networks on simulated
annular dark-field STEM images: atom columns on crystal lattices, degraded by scan noise,
shot noise and a low-frequency background. This module draws such images from scratch,
with vectorised numpy and a seeded :class:`numpy.random.Generator`:

Scene (the clean image, "unit intensity": the brightest column peaks at about 1)
  - a 2D Bravais lattice (square, rectangular, hexagonal, oblique; lattice constants
    6-20 px; random orientation) with a one- or two-atom basis; the two species differ in
    intensity as Z-contrast does (column intensity ~ Z^1.7), columns vary a little in
    intensity (thickness) and position (strain), a few are missing (vacancies);
  - each column is a 2D Gaussian of random width (a fraction of the nearest-neighbour
    distance);
  - non-lattice structures: a grain boundary between two lattices, and amorphous regions
    (randomly placed columns in a smooth random region, or the whole field).
Degradations (in acquisition order, see :mod:`napari_emssl.data.degrade`)
  - a smooth low-frequency background (random low-order polynomial or heavily smoothed
    noise) added to the columns (e.g. thickness/amorphous-film signal, detector offset);
  - scan jitter (rows shifted along the fast-scan axis), then dose-dependent Poisson shot
    noise, then line-to-line gain drift and offsets and Gaussian read noise.

Targets and normalisation (one affine map per pair, the one inference would use)
  The degraded input is normalised like every user image (percentile 1 -> 0, 99.8 -> 1,
  :func:`~napari_emssl.data.normalize.percentile_normalize`), ``x -> (x - p_low) / s``.
  - ``denoise``: target = clean columns + background (no noise, no scan distortion),
    mapped with the same ``(x - p_low) / s``: the network removes noise, keeps the background.
  - ``bgremove``: target = clean columns only (no background, no noise), mapped with the
    same scale ``x / s`` but no offset, so 0 means "no column signal": the network removes
    noise and the background including its mean level.
  - ``superres``: input = the clean image (columns + background) area-downscaled by
    ``factor`` (noise-free), target = the clean image at full resolution, both mapped
    with the input's ``(x - p_low) / s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .atom_scenes import SCENES, Lattice, SynthSettings, random_lattice, render_columns, smooth_background  # noqa: F401
from .atom_scenes import scene_columns, uniform
from .degrade import downscale_area, poisson_gaussian, scan_distort
from .normalize import percentile_normalize

__all__ = [
    "Lattice",
    "SynthSettings",
    "SyntheticSample",
    "SyntheticPairSampler",
    "TASKS",
    "random_lattice",
    "render_columns",
    "smooth_background",
    "make_sample",
    "make_pair",
    "make_batch",
]

TASKS = ("denoise", "bgremove", "superres")


@dataclass
class SyntheticSample:
    """Every part of one synthetic image (float32 ``(size, size)`` arrays, unit intensity)."""

    columns: np.ndarray  # clean atom columns, no background
    background: np.ndarray  # smooth background
    degraded: np.ndarray  # what the microscope records (scan artefacts + noise), before normalisation
    scene: str
    lattices: list[Lattice]
    dose: float
    read_sigma: float
    scan: dict[str, float] = field(default_factory=dict)

    @property
    def clean(self) -> np.ndarray:
        """Columns plus background, no noise and no scan distortion."""
        return self.columns + self.background


# ---------------------------------------------------------------------------------------------- scene


def make_sample(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 256,
    *,
    settings: SynthSettings | None = None,
    scene: str | None = None,
    dose: float | None = None,
    lattice: Lattice | None = None,
) -> SyntheticSample:
    """Draw one synthetic STEM image with all its parts (see the module docstring).

    ``scene`` (``"crystal"``, ``"grain_boundary"``, ``"amorphous"``) and ``dose`` fix those
    draws; ``lattice`` renders exactly that lattice (a crystal scene, no perturbations).
    """
    s = settings or SynthSettings()
    shape = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if lattice is not None:
        pos, amp, sig = lattice.columns(shape, 4.0 * max(lattice.sigmas))
        lattices, scene = [lattice], "crystal"
    else:
        if scene is None:
            w = np.asarray(s.scene_weights, dtype=np.float64)
            scene = SCENES[int(rng.choice(len(SCENES), p=w / w.sum()))]
        elif scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")
        pos, amp, sig, lattices = scene_columns(rng, shape, scene, s)
    columns = render_columns(shape, pos, amp, sig)
    peak = float(np.percentile(columns, 99.9)) if columns.any() else 1.0
    columns /= np.float32(max(peak, 1e-6))  # brightest columns at about 1

    background = smooth_background(rng, shape) * np.float32(uniform(rng, s.background_amplitude))
    background += np.float32(uniform(rng, s.background_offset))

    if dose is None:
        dose = float(math.exp(rng.uniform(math.log(s.dose[0]), math.log(s.dose[1]))))
    read_sigma = uniform(rng, s.read_sigma)
    signal = columns + background
    scan: dict[str, float] = {}
    if rng.random() < s.scan_prob:
        scan = {k: uniform(rng, getattr(s, k)) for k in ("jitter", "line_offset", "line_gain", "drift")}
        signal = scan_distort(signal, rng, jitter=scan["jitter"])
    degraded = poisson_gaussian(signal, rng, dose, read_sigma)
    if scan:
        degraded = scan_distort(degraded, rng, jitter=0.0, line_offset=scan["line_offset"],
                                line_gain=scan["line_gain"], drift=scan["drift"])
    return SyntheticSample(columns=columns, background=background, degraded=degraded, scene=scene,
                           lattices=lattices, dose=float(dose), read_sigma=read_sigma, scan=scan)


def make_pair(
    rng: np.random.Generator,
    size: int = 256,
    task: str = "denoise",
    *,
    factor: int = 2,
    settings: SynthSettings | None = None,
    sample: SyntheticSample | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(input, target)`` float32 pair for ``task`` in ``("denoise", "bgremove", "superres")``.

    Shapes: ``(size, size)`` both, except ``superres`` whose input is ``(size // factor,
    size // factor)``. Normalisation: see the module docstring (the input's percentile map,
    applied to the target the same way; ``bgremove`` targets without the offset). A
    prepared ``sample`` is used instead of drawing one.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    sample = sample if sample is not None else make_sample(rng, size, settings=settings)
    if task == "superres":
        low = downscale_area(sample.clean, factor)
        norm, st = percentile_normalize(low)
        scale = np.float32(1.0 / (st.p_high - st.p_low))
        target = (sample.clean - np.float32(st.p_low)) * scale
        return norm, target.astype(np.float32)
    norm, st = percentile_normalize(sample.degraded)
    scale = np.float32(1.0 / (st.p_high - st.p_low))
    if task == "denoise":
        target = (sample.clean - np.float32(st.p_low)) * scale
    else:  # bgremove
        target = sample.columns * scale
    return norm, target.astype(np.float32)


def make_batch(
    rng: np.random.Generator,
    batch_size: int,
    size: int,
    task: str = "bgremove",
    *,
    factor: int = 2,
    settings: SynthSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` independent pairs stacked as ``(B, 1, H, W)`` float32 inputs and targets."""
    pairs = [make_pair(rng, size, task, factor=factor, settings=settings) for _ in range(batch_size)]
    x = np.stack([p[0] for p in pairs])[:, None]
    y = np.stack([p[1] for p in pairs])[:, None]
    return x, y


class SyntheticPairSampler:
    """Endless synthetic training pairs with the :class:`~napari_emssl.data.patches.PatchSampler` call shape.

    ``sample(batch_size)`` returns ``(inputs, targets)`` as ``(B, 1, P, P)`` float32 (the
    ``superres`` input is ``(B, 1, P / factor, P / factor)``). The same ``seed`` gives the
    same sequence of batches. Random flips and 90-degree rotations come for free: lattice
    orientations are already uniformly random.
    """

    def __init__(self, patch_size: int, task: str = "bgremove", *, seed: int = 0, factor: int = 2,
                 settings: SynthSettings | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if task == "superres" and patch_size % factor:
            raise ValueError(f"patch size {patch_size} is not a multiple of the factor {factor}")
        self.patch_size = int(patch_size)
        self.task = task
        self.factor = int(factor)
        self.settings = settings or SynthSettings()
        self._rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return make_batch(self._rng, batch_size, self.patch_size, self.task, factor=self.factor, settings=self.settings)
