"""The Pretrain widget driven for real: worker, events, preview layer, stop, resume, bad input,
and fine-tuning from its result."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from napari.layers import Image

from napari_emssl._napari._pretrain_widget import PretrainWidget
from napari_emssl.engine.checkpoint import load_checkpoint, read_pretrained

SCALE, TRANSLATE = (0.05, 0.0046, 0.0046), (0.0, 0.2, 0.3)  # as in conftest
TINY_ARCH = "resunet_b2_rf44"


def _tiny(widget: PretrainWidget, out_dir, method: str = "gan", steps: int = 10) -> None:
    """Tiny settings through the widget's own controls (plus the model width override)."""
    widget.method_combo.setCurrentText(method)
    widget.arch_combo.setCurrentText(TINY_ARCH)
    widget.steps_spin.setValue(steps)
    widget.batch_spin.setValue(2)
    widget.patch_spin.setValue(32)
    widget.preview_spin.setValue(0.05)
    widget.device_combo.setCurrentText("cpu")
    widget.out_folder.set_path(str(out_dir) if out_dir else "")
    widget.config_overrides = {"arch_kwargs": {"base_channels": 4}}


@pytest.fixture
def pretrain_viewer(make_napari_viewer, crop):
    """A viewer with the image crop and the Pretrain widget docked from the manifest."""
    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="crop", scale=SCALE, translate=TRANSLATE, units="um")
    _, widget = viewer.window.add_plugin_dock_widget("napari-emssl", "Pretrain")
    return viewer, widget


def _image(shape) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def test_pretrain_start_to_finish(qtbot, pretrain_viewer, notes, wait_idle, tmp_path, crop):
    viewer, widget = pretrain_viewer
    assert isinstance(widget, PretrainWidget)
    assert [layer.name for layer in widget.layers.checked_layers()] == ["crop"]
    _tiny(widget, tmp_path / "run")
    crop_layer = viewer.layers["crop"]
    viewer.layers.selection.active = crop_layer

    formats: list[str] = []
    assert widget.start()
    assert widget.controls.stop_button.isEnabled() and not widget.controls.start_button.isEnabled()
    widget.bridge.worker.yielded.connect(lambda e: formats.append(widget.controls.progress.format()))
    qtbot.waitUntil(lambda: "gan preview" in viewer.layers, timeout=20_000)
    preview = viewer.layers["gan preview"]
    assert isinstance(preview, Image) and preview.data.shape == (32, 32) and preview.data.dtype == np.float32
    assert np.allclose(preview.scale, SCALE[1:]) and np.allclose(preview.translate, TRANSLATE[1:])
    assert viewer.layers.selection.active is crop_layer  # the preview does not take over
    wait_idle(widget)

    assert widget.loss_plot.points == 10
    assert widget.controls.progress.value() == 10 and "10 / 10 steps" in widget.controls.progress.format()
    assert any("steps/s" in f or "s/step" in f for f in formats) and any(" left" in f for f in formats)
    assert widget.controls.status.text().startswith("Done: 10 steps")
    assert widget.controls.start_button.isEnabled() and not widget.controls.stop_button.isEnabled()
    assert widget.result_dir == str(tmp_path / "run")
    meta, weights = read_pretrained(widget.result_dir)
    assert meta["task"] == "pretrain" and meta["method"] == "gan" and meta["arch"] == TINY_ARCH and weights
    assert meta["lineage"]["pretrain"]["steps"] == 10 and meta["lineage"]["pretrain"]["completed"] is True
    # the preview layer is not pretrained on by default, the source layer is unchanged
    assert [layer.name for layer in widget.layers.checked_layers()] == ["crop"]
    np.testing.assert_array_equal(crop_layer.data, crop[0])
    assert not notes.errors()


def test_stop_keeps_checkpoint_then_resume(qtbot, pretrain_viewer, wait_idle, tmp_path):
    viewer, widget = pretrain_viewer
    _tiny(widget, tmp_path / "run", method="mae", steps=100_000)
    widget.preview_spin.setValue(0.0)
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loss_plot.points >= 3, timeout=20_000)
    stopped_at = time.perf_counter()
    widget.controls.stop_button.click()
    assert "Stopping" in widget.controls.status.text()
    wait_idle(widget, timeout=5_000)
    assert time.perf_counter() - stopped_at < 1.0
    step = load_checkpoint(tmp_path / "run").step
    assert 3 <= step < 100_000
    assert widget.controls.status.text().startswith(f"Stopped at step {step} of 100000")
    assert "kept in" in widget.controls.status.text() and widget.result_dir == str(tmp_path / "run")
    meta, weights = read_pretrained(widget.result_dir)  # a loadable partial model
    assert meta["lineage"]["pretrain"]["completed"] is False and meta["lineage"]["pretrain"]["steps"] == step
    assert weights

    # a new run in the same folder is refused by the core (it holds a checkpoint) ...
    widget.steps_spin.setValue(step + 4)
    widget.preview_spin.setValue(0.05)
    assert widget.start()
    wait_idle(widget)
    assert "already holds a pretraining checkpoint" in widget.controls.status.text()
    # ... Resume continues it: the step count goes on from the checkpoint
    widget.out_folder.set_path("")  # empty: the last run's folder
    widget.method_combo.setCurrentText("gan")  # the checkpoint's method and network win
    widget.resume_check.setChecked(True)
    seen: list[int] = []
    assert widget.start()
    widget.bridge.worker.yielded.connect(lambda e: seen.append(e.step) if type(e).__name__ == "StepEnd" else None)
    wait_idle(widget)
    assert seen and seen[0] == step + 1 and seen[-1] == step + 4, seen
    assert widget.controls.status.text().startswith(f"Done: {step + 4} steps")
    assert widget.loss_plot.points == 4 and "mae preview" in viewer.layers
    meta, _ = read_pretrained(widget.result_dir)
    assert meta["lineage"]["pretrain"]["steps"] == step + 4 and meta["lineage"]["pretrain"]["resumed_from_step"] == step


def test_default_folder_and_small_layers_skipped(qtbot, pretrain_viewer, notes, wait_idle, tmp_path, monkeypatch):
    viewer, widget = pretrain_viewer
    monkeypatch.setenv("HOME", str(tmp_path))
    viewer.add_image(_image((24, 20)), name="tiny")
    assert [layer.name for layer in widget.layers.checked_layers()] == ["crop", "tiny"]
    _tiny(widget, None, method="mae", steps=2)
    assert widget.start()
    wait_idle(widget)
    assert widget.controls.status.text().startswith("Done: 2 steps"), widget.controls.status.text()
    runs = list((tmp_path / ".napari-emssl" / "pretrain").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("mae-") and widget.result_dir == str(runs[0])
    assert (runs[0] / "model.json").is_file()
    warnings = [str(n.message) for n in notes.all() if str(n.severity) == "warning"]
    assert any("layer 'tiny'" in w and "skipped" in w for w in warnings), warnings
    assert not notes.errors()


def _assert_refused(widget, notes, words: str) -> None:
    errors = notes.errors()
    assert len(errors) == 1 and words in errors[0], errors
    assert all(type(n).__name__ == "Notification" for n in notes.all())  # not an ErrorNotification (traceback)
    assert not widget.bridge.running
    assert widget.controls.start_button.isEnabled() and not widget.controls.stop_button.isEnabled()
    assert words in widget.controls.status.text()


@pytest.mark.parametrize("case, words, in_worker", [
    ("nothing", "Open an EM image", False),
    ("rgb", "RGB", False),
    ("too small", "no image is at least 32 x 32 pixels", True),
    ("unknown folder", "does not exist", False),
    ("folder without images", "holds no .tif", True),
    ("nothing to resume", "no run to resume", False),
    ("bad resume folder", "no pretraining checkpoint", True),
])
def test_bad_input_notifies(qtbot, make_napari_viewer, notes, wait_idle, tmp_path, case, words, in_worker):
    viewer = make_napari_viewer()
    widget = PretrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _tiny(widget, tmp_path / "out", steps=2)
    if case == "rgb":
        rgb = viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="photo", rgb=True)
        assert widget.layers.checked_layers() == []  # colour layers are not ticked by default ...
        widget.layers.set_checked([rgb])  # ... and refused when ticked
    elif case == "too small":
        viewer.add_image(_image((24, 20)), name="small")
    elif case == "unknown folder":
        widget.folder.set_path(str(tmp_path / "nowhere"))
    elif case == "folder without images":
        (tmp_path / "empty").mkdir()
        widget.folder.set_path(str(tmp_path / "empty"))
    elif case in ("nothing to resume", "bad resume folder"):
        viewer.add_image(_image((40, 40)), name="img")
        widget.resume_check.setChecked(True)
        widget.out_folder.set_path("" if case == "nothing to resume" else str(tmp_path))
    layers_before = [layer.name for layer in viewer.layers]
    assert widget.start() is in_worker
    wait_idle(widget)
    _assert_refused(widget, notes, words)
    assert [layer.name for layer in viewer.layers] == layers_before
    assert widget.result_dir is None


def test_method_filters_architectures_and_layer_list_follows(qtbot, make_napari_viewer):
    from napari_emssl.pretext import default_arch, supported_archs

    viewer = make_napari_viewer()
    widget = PretrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert [widget.method_combo.itemText(i) for i in range(widget.method_combo.count())] == ["gan", "mae", "mocov3", "mff"]
    for method in ("mff", "gan", "mocov3"):
        widget.method_combo.setCurrentText(method)
        archs = [widget.arch_combo.itemText(i) for i in range(widget.arch_combo.count())]
        assert archs == supported_archs(method) and widget.arch_combo.currentText() == default_arch(method)
        assert widget.config().method == method and widget.config().arch == default_arch(method)
    assert all(a.startswith("vit") for a in supported_archs("mff"))
    a = viewer.add_image(_image((40, 40)), name="a")
    viewer.add_image(_image((40, 40)), name="b")
    assert [layer.name for layer in widget.layers.checked_layers()] == ["a", "b"]
    widget.layers.set_checked([a])
    viewer.add_image(_image((40, 40)), name="c")  # new layers are ticked, earlier choices kept
    a.name = "renamed"
    assert [layer.name for layer in widget.layers.checked_layers()] == ["renamed", "c"]
    assert widget.layers.item(0).text() == "renamed"
    del viewer.layers["c"]
    assert [layer.name for layer in widget.layers.checked_layers()] == ["renamed"]

    from napari.utils.theme import get_theme

    viewer.theme = "light"  # the loss plot follows the viewer's theme
    assert widget.loss_plot.background.name() == get_theme("light").background.as_hex()


def test_unexpected_error_in_the_worker(qtbot, pretrain_viewer, notes, wait_idle, monkeypatch, tmp_path):
    _, widget = pretrain_viewer
    _tiny(widget, tmp_path / "run", steps=2)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr("napari_emssl.api.iter_pretrain", broken)
    assert widget.start()
    wait_idle(widget)
    _assert_refused(widget, notes, "Unexpected error while pretraining: RuntimeError: boom")
    assert widget.result_dir is None


def test_finetune_starts_from_the_pretrained_folder(qtbot, viewer_widgets, wait_idle, tmp_path):
    viewer, finetune, _ = viewer_widgets
    _, pretrain = viewer.window.add_plugin_dock_widget("napari-emssl", "Pretrain")
    assert finetune.init_combo.findData("pretrained") < 0  # nothing pretrained yet
    assert [layer.name for layer in pretrain.layers.checked_layers()] == ["crop"]
    _tiny(pretrain, tmp_path / "pre", steps=4)
    assert pretrain.start()
    wait_idle(pretrain)
    assert pretrain.result_dir == str(tmp_path / "pre")

    index = finetune.init_combo.findData("pretrained")
    assert index >= 0 and finetune.init_combo.currentIndex() == index
    assert finetune.init_combo.itemText(index) == f"pretrained: {tmp_path / 'pre'}"
    finetune.config_overrides = {}
    config = finetune.config()
    assert config.init == str(tmp_path / "pre") and config.arch == TINY_ARCH
    assert config.arch_kwargs["base_channels"] == 4  # from the pretrained model.json
    assert finetune.arch_combo.currentText() == TINY_ARCH

    statuses: list[str] = []
    finetune.steps_spin.setValue(3)
    assert finetune.start()
    finetune.bridge.worker.yielded.connect(lambda e: statuses.append(finetune.controls.status.text()))
    wait_idle(finetune)
    assert any("tensors matched" in s for s in statuses), statuses
    init = finetune.trained_model.meta["lineage"]["init"]
    assert init["init"] == str(tmp_path / "pre") and init["matched_tensors"] > 0
    assert "Apply it with" in finetune.controls.status.text()
    lineage = json.dumps(finetune.trained_model.meta["lineage"])
    assert "gan" in lineage


def test_removing_the_dock_widget_stops_the_run(qtbot, pretrain_viewer, tmp_path):
    viewer, widget = pretrain_viewer
    _tiny(widget, tmp_path / "run", method="mae", steps=100_000)
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loss_plot.points >= 2, timeout=20_000)
    token, worker = widget.bridge.token, widget.bridge.worker
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    assert token.cancelled
    widget.deleteLater()


def test_closing_the_viewer_stops_the_run(qtbot, pretrain_viewer, tmp_path):
    viewer, widget = pretrain_viewer
    _tiny(widget, tmp_path / "run", method="mae", steps=100_000)
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loss_plot.points >= 2, timeout=20_000)
    token, worker = widget.bridge.token, widget.bridge.worker
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer.close()
    assert token.cancelled
