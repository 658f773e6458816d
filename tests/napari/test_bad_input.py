"""Bad input in the GUI: one notification (no traceback dialog), nothing crashes, no layer
data changes, and the buttons are usable again afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_emssl._napari._apply_widget import ApplyWidget
from napari_emssl._napari._finetune_widget import FinetuneWidget


def _strokes(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[..., 2:8, 2:8], labels[..., 20:26, 20:26] = 1, 2
    return labels


def _image(shape) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _nan(shape):
    image = _image(shape)
    image[0, 3] = np.nan
    return image


def _inf(shape):
    image = _image(shape)
    image[5, 5] = np.inf
    return image


def _one_class(shape):
    labels = np.zeros(shape, np.uint8)
    labels[2:8, 2:8] = 2
    return labels


# (image data, image kwargs, labels data, expected words in the message)
CASES = {
    "rgb": (np.zeros((40, 40, 3), np.uint8), {"rgb": True}, _strokes((40, 40)), "RGB"),
    "multichannel": (_image((40, 40, 4)), {"rgb": False}, _strokes((40, 40, 4)), "multichannel"),
    "4d": (_image((2, 2, 40, 40)), {}, _strokes((2, 2, 40, 40)), "4 dimensions"),
    "shape mismatch": (_image((40, 40)), {}, _strokes((40, 48)), "same size"),
    "nothing painted": (_image((40, 40)), {}, np.zeros((40, 40), np.uint8), "Nothing is painted"),
    "one class": (_image((40, 40)), {}, _one_class((40, 40)), "Only class 2"),
    "nan": (_nan((40, 40)), {}, _strokes((40, 40)), "NaN"),
    "inf": (_inf((40, 40)), {}, _strokes((40, 40)), "infinite"),
}


def _assert_refused(widget, notes, words: str) -> None:
    errors = notes.errors()
    assert len(errors) == 1 and words in errors[0], errors
    assert all(type(n).__name__ == "Notification" for n in notes.all())  # not an ErrorNotification (traceback)
    assert not widget.bridge.running
    assert widget.controls.start_button.isEnabled() and not widget.controls.stop_button.isEnabled()
    assert words in widget.controls.status.text()


@pytest.mark.parametrize("case", list(CASES))
def test_finetune_refuses_bad_input(qtbot, make_napari_viewer, shrink, notes, case):
    image, kwargs, labels, words = CASES[case]
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image.copy(), name="img", **kwargs)
    labels_layer = viewer.add_labels(labels.copy(), name="img strokes")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    shrink(widget)
    widget.image_combo.set_layer(image_layer)
    widget.labels_combo.set_layer(labels_layer)
    count = len(viewer.layers)
    assert widget.start() is False
    _assert_refused(widget, notes, words)
    np.testing.assert_array_equal(image_layer.data, image)
    np.testing.assert_array_equal(labels_layer.data, labels)
    assert len(viewer.layers) == count


def test_finetune_without_layers(qtbot, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.start() is False
    _assert_refused(widget, notes, "Open an EM image first")
    viewer.add_image(_image((40, 40)), name="img")
    notes.clear()
    assert widget.start() is False
    _assert_refused(widget, notes, "Add a Labels layer")
    layer = widget.add_labels_layer()  # the + button: an empty labels layer that fits the image
    assert layer.name == "img labels" and layer.data.shape == (40, 40) and widget.labels_combo.layer() is layer


def test_unexpected_error_in_the_worker(qtbot, viewer_widgets, notes, wait_idle, monkeypatch):
    viewer, finetune, _ = viewer_widgets

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr("napari_emssl.api.iter_finetune", broken)
    assert finetune.start()
    wait_idle(finetune)
    _assert_refused(finetune, notes, "Unexpected error while fine-tuning: RuntimeError: boom")


def test_apply_without_a_model_or_image(qtbot, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    widget = ApplyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert "No model trained yet" in widget.model_info.text()
    assert widget.start() is False
    _assert_refused(widget, notes, "No model has been trained")


def _model_folder(tmp_path, name: str, meta: dict | None, weights: bytes = b"not safetensors") -> str:
    folder = tmp_path / name
    folder.mkdir()
    if meta is not None:
        (folder / "model.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


META = {"format_version": 1, "arch": "resunet_b2_rf44", "arch_kwargs": {"base_channels": 4}, "in_channels": 1,
        "out_channels": 2, "task": "segment", "receptive_field": 44, "size_multiple": 4}


@pytest.mark.parametrize("case, words, in_worker", [
    ("missing", "does not exist", False),
    ("no files", "is not a model folder", False),
    ("other task", "trained for 'classify'", False),
    ("bad json", "not readable JSON", False),
    ("bad weights", "not a readable safetensors file", True),
    ("future format", "format version 99", True),
])
def test_apply_refuses_bad_model_folders(qtbot, make_napari_viewer, notes, wait_idle, tmp_path, case, words, in_worker):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image((40, 40)), name="img")
    folders = {
        "missing": str(tmp_path / "nowhere"),
        "no files": str(tmp_path),
        "other task": _model_folder(tmp_path, "classify", dict(META, task="classify")),
        "bad json": _model_folder(tmp_path, "json", None),
        "bad weights": _model_folder(tmp_path, "weights", META),
        "future format": _model_folder(tmp_path, "future", dict(META, format_version=99)),
    }
    if case == "bad json":
        (tmp_path / "json" / "model.json").write_text("{not json")
    widget = ApplyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.source_combo.setCurrentIndex(widget.source_combo.findData("folder"))
    widget.folder.set_path(folders[case])
    started = widget.start()
    assert started is in_worker
    wait_idle(widget)
    _assert_refused(widget, notes, words)
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert image.data.dtype == np.float32


def test_apply_refuses_rgb_images(qtbot, viewer_widgets, notes, wait_idle):
    viewer, finetune, apply = viewer_widgets
    finetune.steps_spin.setValue(2)
    assert finetune.start()
    wait_idle(finetune)
    rgb = viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="photo", rgb=True)
    apply.images.select_layers([viewer.layers["crop"], rgb])
    notes.clear()
    assert apply.start() is False
    _assert_refused(apply, notes, "RGB")
    assert "crop segmentation" not in viewer.layers
    apply.images.select_layers([])
    notes.clear()
    assert apply.start() is False
    _assert_refused(apply, notes, "Choose at least one image layer")
