"""Shared tiny fixtures for the core and CLI tests (no napari, no Qt).

Everything here is small enough for a 2-core CPU: a 2-level residual U-Net with 4 base
channels, 32-pixel patches, a handful of steps.
"""

from __future__ import annotations

import numpy as np
import pytest

TINY_ARCH = "resunet_b2_rf44"
TINY_ARCH_KWARGS = {"base_channels": 4}


def make_disks(seed: int, shape=(64, 64), n_disks: int = 4, noise: float = 12.0):
    """A toy EM-like image: bright disks (class 2) on a dark background (class 1).

    Returns ``(image float32, truth uint8 with values 1/2, centres [(y, x, r)])``.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    truth = np.ones(shape, np.uint8)
    centres = []
    for _ in range(200):  # rejection sampling of non-overlapping disks
        if len(centres) == n_disks:
            break
        r = int(rng.integers(5, 9))
        cy, cx = int(rng.integers(r + 2, ny - r - 2)), int(rng.integers(r + 2, nx - r - 2))
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + rr + 4) ** 2 for y, x, rr in centres):
            centres.append((cy, cx, r))
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    image = np.where(truth == 2, 190.0, 50.0) + rng.normal(0.0, noise, shape)
    return image.astype(np.float32), truth, centres


def make_strokes(truth: np.ndarray, centres) -> np.ndarray:
    """Sparse painted labels: a short stroke inside every disk (2) and a few background lines (1)."""
    labels = np.zeros(truth.shape, np.uint8)
    for cy, cx, r in centres:
        labels[cy, cx - r // 2 : cx + r // 2 + 1] = 2
    # background strokes: every 8th row, only where far from any disk
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(truth == 2, iterations=3)
    rows = np.zeros(truth.shape, bool)
    rows[4::8] = True
    labels[rows & far] = 1
    return labels


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run ~10x faster on one thread, and do not stall when other work shares the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    """Factory of tiny CPU fine-tuning configs: ``tiny_config(steps=5, seed=1, ...)``."""
    from napari_emssl.config import FinetuneConfig

    def make(**changes):
        kw = dict(
            arch=TINY_ARCH, arch_kwargs=dict(TINY_ARCH_KWARGS), init="random", patch_size=32, batch_size=2,
            steps=3, preview_every_s=0, device="cpu",
        )
        kw.update(changes)
        return FinetuneConfig(**kw)

    return make


@pytest.fixture
def disks():
    """Factory: ``image, truth, labels = disks(seed, shape=(64, 64))``."""

    def make(seed: int = 0, shape=(64, 64), n_disks: int = 4):
        image, truth, centres = make_disks(seed, shape, n_disks)
        return image, truth, make_strokes(truth, centres)

    return make


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny 2-class segmentation model (3 steps: untrained in effect, but a valid model)."""
    from napari_emssl import api
    from napari_emssl.config import FinetuneConfig

    image, truth, centres = make_disks(0)
    labels = make_strokes(truth, centres)
    config = FinetuneConfig(arch=TINY_ARCH, arch_kwargs=dict(TINY_ARCH_KWARGS), init="random", patch_size=32, batch_size=2,
                            steps=3, preview_every_s=0, device="cpu")
    return api.finetune(image, labels, config).model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory):
    """``tiny_model`` saved as a model directory (do not modify it; copy it first)."""
    return tiny_model.save(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def offline(monkeypatch):
    """Refuse every network connection: what runs under it must need no network."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
