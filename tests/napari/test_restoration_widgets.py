"""Restoration through the real Fine-tune and Apply widgets: denoise, super-resolution with a target, bad input."""

from __future__ import annotations

import numpy as np
from napari.layers import Image

from napari_emssl.config import FinetuneConfig

SCALE, TRANSLATE = (0.05, 0.0046, 0.0046), (0.0, 0.2, 0.3)  # as in conftest.viewer_widgets


def _choose_task(finetune, task: str, steps: int = 6) -> None:
    finetune.task_rows.set_task(task)
    finetune.steps_spin.setValue(steps)  # a task change resets the steps to the task's default


def test_denoise_in_the_widgets(qtbot, viewer_widgets, notes, wait_idle):
    viewer, finetune, apply = viewer_widgets
    viewer.layers["crop"].metadata["source_file"] = "crop.tif"
    finetune.task_rows.set_task("denoise")
    assert finetune.steps_spin.value() == FinetuneConfig(task="denoise").default_steps == 1200  # the task's default
    assert not finetune.labels_combo.isVisible() or not finetune.labels_combo.isVisibleTo(finetune)
    assert finetune.task_rows.target_combo.isVisibleTo(finetune)
    assert not finetune.task_rows.factor_combo.isVisibleTo(finetune)
    mask = finetune.task_rows.mask_combo
    assert mask.isVisibleTo(finetune) and finetune.config().mask_replace == "mean"  # the default
    mask.setCurrentIndex(mask.findData("neighbour"))
    loss = finetune.task_rows.loss_combo
    assert loss.isVisibleTo(finetune) and finetune.config().denoise_loss == "re-visible"  # the default
    loss.setCurrentIndex(loss.findData("blind-spot"))
    mean = finetune.task_rows.mean_spin
    assert mean.isVisibleTo(finetune) and finetune.config().mean_correction == 16.0  # the default
    mean.setValue(0.0)
    assert mean.text() == "off" and finetune.config().mean_correction == 0.0
    mean.setValue(8.0)
    leak = finetune.task_rows.leak_combo
    assert leak.isVisibleTo(finetune) and finetune.config().leak_correction == "auto"  # the default: chosen per slice
    assert leak.currentText().startswith("auto")
    leak.setCurrentIndex(leak.findData(0.0))
    assert leak.currentText() == "off" and finetune.config().leak_correction == 0.0
    leak.setCurrentIndex(leak.findData(0.25))
    finetune.steps_spin.setValue(6)
    strokes_before = viewer.layers["crop strokes"].data.copy()
    assert finetune.start()
    wait_idle(finetune)
    assert not notes.errors(), notes.errors()
    assert finetune.controls.status.text().startswith("Done: 6 steps")
    assert finetune.trained_model.task == "denoise"
    assert finetune.trained_model.meta["lineage"]["finetune"]["mask_replace"] == "neighbour"
    assert finetune.trained_model.meta["lineage"]["finetune"]["denoise_loss"] == "blind-spot"
    assert finetune.trained_model.meta["mean_correction"] == 8.0
    assert finetune.trained_model.meta["leak_correction"] == 0.25
    preview = viewer.layers["crop preview"]
    assert isinstance(preview, Image) and preview.data.shape == (2, 96, 96) and preview.data.dtype == np.float32
    np.testing.assert_array_equal(viewer.layers["crop strokes"].data, strokes_before)

    assert "denoised" in apply.model_info.text() and "mean correction 8 px" in apply.model_info.text()
    apply.images.select_layers([viewer.layers["crop"]])
    assert apply.start()
    wait_idle(apply)
    result = viewer.layers["crop denoised"]
    assert isinstance(result, Image) and result.data.shape == (2, 96, 96) and result.data.dtype == np.float32
    assert np.allclose(result.scale, SCALE) and np.allclose(result.translate, TRANSLATE)
    assert result.metadata.get("source_file") == "crop.tif"
    assert "Restored 1 of 1 image" in apply.controls.status.text()
    assert apply.config().tta is None  # automatic: the 8-view average for single images, 2 views for stacks
    assert apply.config().z_average == 0.0
    apply.z_average.setChecked(True)
    assert apply.config().z_average == 0.25
    apply.z_average.setChecked(False)
    apply.tta.setCurrentIndex(apply.tta.findData(True))
    assert apply.config().tta is True
    apply.tta.setCurrentIndex(apply.tta.findData(False))
    assert apply.leak.currentText() == "as trained" and apply.config().leak_correction is None  # the model's share
    apply.leak.setCurrentIndex(apply.leak.findData(0.0))
    assert apply.config().leak_correction == 0.0
    apply.leak.setCurrentIndex(apply.leak.findData(0.25))
    assert apply.config().leak_correction == 0.25
    apply.leak.setCurrentIndex(apply.leak.findData("auto"))
    assert apply.config().leak_correction == "auto"
    apply.keep_dtype.setChecked(True)
    assert apply.start()
    wait_idle(apply)
    assert viewer.layers["crop denoised"].data.dtype == viewer.layers["crop"].data.dtype
    assert "leak correction share" in apply.controls.status.text()  # chosen per slice, and said which
    assert not notes.errors(), notes.errors()


def test_superres_with_a_target_layer_shows_psnr_and_overlays(qtbot, viewer_widgets, notes, wait_idle):
    viewer, finetune, apply = viewer_widgets
    image = viewer.layers["crop"].data
    high = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2).astype(np.float32)  # stands in for a finer scan
    target = viewer.add_image(high, name="crop fine", scale=(SCALE[0], SCALE[1] / 2, SCALE[2] / 2))
    _choose_task(finetune, "superres")
    finetune.image_combo.set_layer(viewer.layers["crop"])
    finetune.task_rows.target_combo.set_layer(target)
    assert finetune.task_rows.factor_combo.isVisibleTo(finetune)
    assert not finetune.task_rows.mask_combo.isVisibleTo(finetune)  # denoising only
    assert not finetune.task_rows.loss_combo.isVisibleTo(finetune)
    assert not finetune.task_rows.mean_spin.isVisibleTo(finetune)
    assert not finetune.task_rows.leak_combo.isVisibleTo(finetune)
    assert finetune.task_rows.pairs_combo.isVisibleTo(finetune) and finetune.config().lattice_pairs is False
    assert finetune.start()
    wait_idle(finetune)
    assert not notes.errors(), notes.errors()
    status = finetune.controls.status.text()
    assert "PSNR" in status and "bicubic" in status
    assert viewer.layers["crop preview"].data.shape == (2, 192, 192)

    apply.images.select_layers([viewer.layers["crop"]])
    apply.target_combo.set_layer(target)
    assert apply.start()
    wait_idle(apply)
    result = viewer.layers["crop superres x2"]
    assert result.data.shape == (2, 192, 192)
    assert np.allclose(result.scale, (SCALE[0], SCALE[1] / 2, SCALE[2] / 2))
    # the centres of the 2 x 2 output pixels of source pixel 0 sit a quarter source pixel around it
    assert np.allclose(result.translate, (TRANSLATE[0], TRANSLATE[1] - SCALE[1] / 4, TRANSLATE[2] - SCALE[2] / 4))
    assert "PSNR" in apply.controls.status.text()


def test_restoration_bad_input_is_refused_before_training(qtbot, viewer_widgets, notes):
    viewer, finetune, _ = viewer_widgets
    _choose_task(finetune, "denoise")
    wrong = viewer.add_image(np.zeros((2, 50, 50), np.float32) + np.arange(50), name="wrong")
    finetune.image_combo.set_layer(viewer.layers["crop"])
    finetune.task_rows.target_combo.set_layer(wrong)
    assert finetune.start() is False
    assert any("target has shape" in e for e in notes.errors())
    finetune.task_rows.target_combo.set_layer(viewer.layers["crop"])
    assert finetune.start() is False
    assert any("another image layer" in e for e in notes.errors())
    flat = viewer.add_image(np.full((2, 64, 64), 9, np.uint8), name="flat")
    finetune.image_combo.set_layer(flat)
    finetune.task_rows.target_combo.set_layer(None)
    assert finetune.start() is False
    assert any("constant" in e for e in notes.errors())
    _choose_task(finetune, "superres")
    finetune.task_rows.factor_combo.setCurrentIndex(finetune.task_rows.factor_combo.findData(4))
    small = viewer.add_image(np.random.default_rng(0).random((40, 40)).astype(np.float32), name="small")
    finetune.image_combo.set_layer(small)
    assert finetune.start() is False
    assert any("at least 64 x 64" in e for e in notes.errors())
    finetune.task_rows.factor_combo.setCurrentIndex(finetune.task_rows.factor_combo.findData(2))
    finetune.task_rows.pairs_combo.setCurrentIndex(finetune.task_rows.pairs_combo.findData(True))
    noise = viewer.add_image(np.random.default_rng(1).normal(100, 10, (96, 96)).astype(np.float32), name="no lattice")
    finetune.image_combo.set_layer(noise)
    assert finetune.start() is False
    assert any("No atomic lattice was found" in e for e in notes.errors())
    assert not finetune.bridge.running


def test_superres_from_synthetic_lattice_pairs_in_the_widget(qtbot, viewer_widgets, notes, wait_idle):
    from napari_emssl.data.synthetic import Lattice, render_columns

    viewer, finetune, _ = viewer_widgets
    lattice = Lattice(a1=(0.0, 11.0), a2=(11.0, 0.0), sigmas=(1.6,))
    columns = render_columns((96, 96), *lattice.columns((96, 96), 4.0))
    layer = viewer.add_image((1000 * columns).astype(np.uint16), name="lattice")
    _choose_task(finetune, "superres", steps=3)
    finetune.image_combo.set_layer(layer)
    finetune.task_rows.pairs_combo.setCurrentIndex(finetune.task_rows.pairs_combo.findData(True))
    assert finetune.config().lattice_pairs is True
    _choose_task(finetune, "denoise")
    assert finetune.config().lattice_pairs is False  # a super-resolution setting only
    _choose_task(finetune, "superres", steps=3)
    assert finetune.start()
    wait_idle(finetune)
    assert not notes.errors(), notes.errors()
    lineage = finetune.trained_model.meta["lineage"]["finetune"]
    assert lineage["mode"] == "synthetic lattice pairs" and lineage["steps"] == 3
