"""Fixtures for the napari widget tests: real viewer, real widgets, real workers, tiny models.

They need an X server: run under Xvfb (pytest-xvfb starts one) with QT_QPA_PLATFORM=xcb.
Nothing here skips: without a display the tests fail, they do not pass silently.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")  # before pytest-qt creates the QApplication

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SCALE = (0.05, 0.0046, 0.0046)
TRANSLATE = (0.0, 0.2, 0.3)
TINY_ARCH = "resunet_b2_rf44"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and a busy 2-core CPU makes more threads spin.

    Also keeps triton out, as the widget entries do, for tests that build widgets directly.
    """
    import torch

    from napari_emssl._napari._torch_guard import keep_triton_out

    keep_triton_out()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def crop():
    """A (2, 96, 96) crop of the bundled sample whose strokes (slice 0) hold classes 1 and 2."""
    from napari_emssl.sample import load_sstem_sample

    sample = load_sstem_sample()
    sl = np.s_[:2, 0:96, 128:224]
    image, strokes = sample.image[sl].copy(), sample.strokes[sl].copy()
    assert set(np.unique(strokes[0])) == {0, 1, 2}
    return image, strokes


class Notes:
    """The napari notifications shown since the fixture started."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self._manager = notification_manager
        self._start = len(notification_manager.records)

    def all(self):
        return self._manager.records[self._start:]

    def errors(self) -> list[str]:
        return [str(n.message) for n in self.all() if str(n.severity) == "error"]

    def clear(self) -> None:
        self._start = len(self._manager.records)


@pytest.fixture
def notes():
    return Notes()


@pytest.fixture
def viewer_widgets(make_napari_viewer, crop):
    """A viewer with the image crop and its strokes, and both widgets docked from the manifest."""
    viewer = make_napari_viewer()
    image, strokes = crop
    viewer.add_image(image, name="crop", scale=SCALE, translate=TRANSLATE, units="um")
    viewer.add_labels(strokes.copy(), name="crop strokes", scale=SCALE, translate=TRANSLATE, units="um")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-emssl", "Fine-tune")
    _, apply = viewer.window.add_plugin_dock_widget("napari-emssl", "Apply")
    _shrink(finetune, apply)
    return viewer, finetune, apply


def _shrink(finetune=None, apply=None, steps: int = 20) -> None:
    """Tiny settings through the widgets' own controls (plus the model width override)."""
    if finetune is not None:
        finetune.arch_combo.setCurrentText(TINY_ARCH)
        finetune.init_combo.setCurrentIndex(finetune.init_combo.findData("random"))
        finetune.steps_spin.setValue(steps)
        finetune.batch_spin.setValue(2)
        finetune.patch_spin.setValue(32)
        finetune.preview_spin.setValue(0.05)
        finetune.device_combo.setCurrentText("cpu")
        finetune.config_overrides = {"arch_kwargs": {"base_channels": 4}}
    if apply is not None:
        apply.device_combo.setCurrentText("cpu")
        apply.config_overrides = {"tile": 64}


@pytest.fixture
def shrink():
    """``shrink(finetune=None, apply=None, steps=20)``: tiny settings for a widget."""
    return _shrink


@pytest.fixture
def wait_idle(qtbot):
    """``wait_idle(widget, timeout_ms)``: wait until the widget's run has ended."""

    def wait(widget, timeout: int = 30_000) -> None:
        qtbot.waitUntil(lambda: not widget.bridge.running, timeout=timeout)

    return wait
