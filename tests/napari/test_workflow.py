"""Fine-tune and Apply widgets driven for real: workers, events, layers, stopping, closing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_emssl._napari._apply_widget import ApplyWidget
from napari_emssl._napari._finetune_widget import FinetuneWidget
from napari_emssl.engine.model_dir import TrainedModel

SCALE, TRANSLATE = (0.05, 0.0046, 0.0046), (0.0, 0.2, 0.3)  # as in conftest.viewer_widgets


def _world_z(z: int) -> float:
    return TRANSLATE[0] + z * SCALE[0]


def test_finetune_then_apply(qtbot, viewer_widgets, notes, wait_idle):
    viewer, finetune, apply = viewer_widgets
    assert isinstance(finetune, FinetuneWidget) and isinstance(apply, ApplyWidget)
    assert finetune.image_combo.layer().name == "crop"
    assert finetune.labels_combo.layer().name == "crop strokes"
    viewer.dims.set_point(0, _world_z(1))  # the preview follows the slice shown when training starts
    strokes_before = viewer.layers["crop strokes"].data.copy()

    steps_seen = []
    assert finetune.start()
    assert finetune.controls.stop_button.isEnabled() and not finetune.controls.start_button.isEnabled()
    worker = finetune.bridge.worker
    worker.yielded.connect(lambda e: steps_seen.append(type(e).__name__))
    wait_idle(finetune)

    assert "StepEnd" in steps_seen and steps_seen[-1] == "RunFinished"
    assert finetune.loss_plot.points == 20
    assert finetune.controls.progress.value() == 20 and "20 / 20 steps" in finetune.controls.progress.format()
    assert finetune.controls.status.text().startswith("Done: 20 steps")
    assert finetune.controls.start_button.isEnabled() and not finetune.controls.stop_button.isEnabled()
    assert isinstance(finetune.trained_model, TrainedModel) and finetune.save_button.isEnabled()

    preview = viewer.layers["crop preview"]
    assert isinstance(preview, Labels) and preview.data.shape == (2, 96, 96)
    assert np.allclose(preview.scale, SCALE) and np.allclose(preview.translate, TRANSLATE)
    assert preview.data[1].min() >= 1 and not preview.data[0].any()  # only the slice shown was predicted
    np.testing.assert_array_equal(viewer.layers["crop strokes"].data, strokes_before)
    assert not notes.errors()

    # Apply the model just trained (found through the viewer's docked widgets)
    assert "fine-tuned 20 steps on crop" in apply.model_info.text()
    assert [layer.name for layer in apply.images.selected_layers()] == ["crop"]
    apply.probabilities.setChecked(True)
    assert apply.start()
    wait_idle(apply)
    result = viewer.layers["crop segmentation"]
    assert isinstance(result, Labels) and result.data.shape == (2, 96, 96)
    assert set(np.unique(result.data)) <= {1, 2}
    assert np.allclose(result.scale, SCALE) and np.allclose(result.translate, TRANSLATE)
    assert [str(u) for u in result.units] == ["micrometer"] * 3
    probs = [viewer.layers[f"crop p(class {k})"] for k in (1, 2)]
    assert all(isinstance(p, Image) and p.data.shape == (2, 96, 96) for p in probs)
    np.testing.assert_allclose(probs[0].data + probs[1].data, 1.0, atol=1e-4)
    assert "Segmented 1 of 1 image" in apply.controls.status.text()

    # re-running replaces the data of the result layers instead of adding new ones
    count = len(viewer.layers)
    assert apply.start()
    wait_idle(apply)
    assert len(viewer.layers) == count and viewer.layers["crop segmentation"] is result
    assert not notes.errors()


def test_stop_keeps_partial_model(qtbot, viewer_widgets, wait_idle):
    viewer, finetune, _ = viewer_widgets
    finetune.steps_spin.setValue(100_000)
    finetune.preview_spin.setValue(0.0)
    assert finetune.start()
    qtbot.waitUntil(lambda: finetune.loss_plot.points >= 3, timeout=20_000)
    stopped_at = time.perf_counter()
    finetune.controls.stop_button.click()
    assert "Stopping" in finetune.controls.status.text()
    wait_idle(finetune, timeout=5_000)
    assert time.perf_counter() - stopped_at < 1.0
    model = finetune.trained_model
    assert isinstance(model, TrainedModel)
    lineage = model.meta["lineage"]["finetune"]
    assert lineage["completed"] is False and 3 <= lineage["steps"] < 100_000
    assert finetune.controls.status.text().startswith(f"Stopped at step {lineage['steps']} of 100000")
    assert "kept" in finetune.controls.status.text()
    assert finetune.controls.start_button.isEnabled()


def test_painting_while_training(qtbot, viewer_widgets, wait_idle):
    viewer, finetune, _ = viewer_widgets
    labels = viewer.layers["crop strokes"]
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    finetune.steps_spin.setValue(200)
    assert finetune.start()
    qtbot.waitUntil(lambda: "crop preview" in viewer.layers, timeout=20_000)
    assert viewer.layers.selection.active is labels and labels.mode == "paint"  # the preview does not take over
    labels.paint((1, 50, 50), 2)  # the user keeps painting; the run trains on its snapshot
    labels.data[1, :5, :5] = 1
    labels.refresh()
    finetune.stop()
    wait_idle(finetune)
    assert labels.data[1, 50, 50] == 2 and (labels.data[1, :5, :5] == 1).all()


def test_save_model(qtbot, viewer_widgets, wait_idle, tmp_path):
    viewer, finetune, apply = viewer_widgets
    finetune.steps_spin.setValue(5)
    finetune.out_folder.set_path(str(tmp_path / "run"))
    assert finetune.start()
    wait_idle(finetune)
    assert (tmp_path / "run" / "model.json").is_file()
    assert "Saved in" in finetune.controls.status.text()
    path = finetune.save_model(str(tmp_path / "again"))
    assert (path / "model.safetensors").is_file()
    # the saved folder is a model source for Apply and for continuing the fine-tuning
    apply.source_combo.setCurrentIndex(apply.source_combo.findData("folder"))
    apply.folder.set_path(str(path))
    assert "resunet_b2_rf44" in apply.model_info.text()
    assert apply.start()
    wait_idle(apply)
    assert "crop segmentation" in viewer.layers
    finetune.init_combo.setCurrentIndex(finetune.init_combo.findData("folder"))
    finetune.init_folder.set_path(str(path))
    finetune.config_overrides = {}
    assert finetune.config().arch_kwargs["base_channels"] == 4  # taken from the folder's model.json
    assert finetune.start()
    wait_idle(finetune)
    assert finetune.trained_model.meta["lineage"]["init"]["init"] == str(path)


def test_removing_the_dock_widget_stops_the_run(qtbot, viewer_widgets):
    viewer, finetune, _ = viewer_widgets
    finetune.steps_spin.setValue(100_000)
    assert finetune.start()
    qtbot.waitUntil(lambda: finetune.loss_plot.points >= 2, timeout=20_000)
    token, worker = finetune.bridge.token, finetune.bridge.worker
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer.window.remove_dock_widget(finetune)  # what the dock's close button does
    assert token.cancelled
    finetune.deleteLater()


def test_closing_the_viewer_stops_the_run(qtbot, viewer_widgets):
    viewer, finetune, apply = viewer_widgets
    finetune.steps_spin.setValue(100_000)
    assert finetune.start()
    qtbot.waitUntil(lambda: finetune.loss_plot.points >= 2, timeout=20_000)
    token, worker = finetune.bridge.token, finetune.bridge.worker
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        viewer.close()
    assert token.cancelled


@pytest.mark.parametrize("shape", [(24, 20), (2, 40, 30)])
def test_images_smaller_than_a_patch_and_a_tile(qtbot, make_napari_viewer, shrink, wait_idle, notes, shape):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random(shape, dtype=np.float32), name="small")
    labels = np.zeros(shape, np.uint8)
    labels[..., 2:6, 2:6], labels[..., 10:14, 10:14] = 1, 2
    viewer.add_labels(labels, name="small strokes")
    finetune = FinetuneWidget(viewer)
    apply = ApplyWidget(viewer)
    viewer.window.add_dock_widget(finetune)
    viewer.window.add_dock_widget(apply)
    shrink(finetune, apply, steps=3)
    assert finetune.start()
    wait_idle(finetune)
    assert finetune.trained_model is not None, notes.errors()
    assert apply.start()
    wait_idle(apply)
    assert viewer.layers["small segmentation"].data.shape == shape
    assert not notes.errors()


def test_apply_several_images_then_stop(qtbot, viewer_widgets, wait_idle, crop):
    viewer, finetune, apply = viewer_widgets
    finetune.steps_spin.setValue(2)
    assert finetune.start()
    wait_idle(finetune)
    second = viewer.add_image(crop[0][0], name="second", scale=SCALE[1:], translate=TRANSLATE[1:], units="um")
    apply.images.select_layers([viewer.layers["crop"], second])
    assert apply.start()
    wait_idle(apply)
    assert viewer.layers["second segmentation"].data.shape == (96, 96)
    assert np.allclose(viewer.layers["second segmentation"].scale, SCALE[1:])
    assert "Segmented 2 of 2 images" in apply.controls.status.text()

    big = viewer.add_image(np.random.default_rng(0).random((6, 400, 400), dtype=np.float32), name="big", units="um")
    apply.images.select_layers([big])
    assert apply.start()
    apply.bridge.worker.yielded.connect(lambda item: apply.stop())  # stop at the first event (and try again later)
    wait_idle(apply, timeout=10_000)
    assert apply.controls.status.text().startswith("Stopped: 0 of 1 image segmented")
    assert "big segmentation" not in viewer.layers
    assert apply.controls.start_button.isEnabled()


def test_loss_plot_draws(qtbot):
    from napari_emssl._napari._loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 120)
    assert not plot.grab().isNull()  # empty: a hint text
    plot.reset(5000)
    for step in range(1, 5001):
        plot.add(step, 1.0 / step ** 0.3)
    plot.add(5001, float("nan"))  # ignored
    assert plot.points == 5000
    image = plot.grab().toImage()
    assert image.width() == 300


def test_viewer_stays_responsive_while_training(qtbot, viewer_widgets, wait_idle):
    from qtpy.QtCore import QTimer

    viewer, finetune, _ = viewer_widgets
    finetune.steps_spin.setValue(100_000)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    assert finetune.start()
    qtbot.waitUntil(lambda: finetune.loss_plot.points >= 2, timeout=20_000)
    timer.start(10)
    qtbot.wait(1500)
    timer.stop()
    finetune.stop()
    wait_idle(finetune)
    gaps = np.diff(ticks)
    assert len(ticks) > 20 and gaps.max() < 0.5, (len(ticks), gaps.max())  # the event loop never stalls
    assert finetune.loss_plot.points > 10
