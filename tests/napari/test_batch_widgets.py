"""The Apply widget on many inputs: every layer, lazily held layers streamed to disk, folders of files."""

from __future__ import annotations

import numpy as np
import tifffile
from napari.layers import Labels

from napari_emssl import api
from napari_emssl.config import PredictConfig

SCALE, TRANSLATE = (0.05, 0.0046, 0.0046), (0.0, 0.2, 0.3)  # as in conftest.viewer_widgets


def _train(finetune, wait_idle, steps: int = 2):
    finetune.steps_spin.setValue(steps)
    assert finetune.start()
    wait_idle(finetune)
    return finetune.trained_model


def test_all_layers_lazy_ones_streamed_and_a_failing_one_does_not_stop_the_others(qtbot, viewer_widgets, notes,
                                                                                   wait_idle, crop, tmp_path):
    da = __import__("dask.array").array
    viewer, finetune, apply = viewer_widgets
    model = _train(finetune, wait_idle)
    image = crop[0]
    broken = image.astype(np.float32)
    broken[1, 5, 5] = np.nan  # found only when slice 1 is read
    viewer.add_image(da.from_array(broken, chunks=(1, 96, 96)), name="broken lazy", scale=SCALE, translate=TRANSLATE)
    viewer.add_image(da.from_array(image, chunks=(1, 48, 96)), name="lazy", scale=SCALE, translate=TRANSLATE, units="um")
    apply.results_folder = tmp_path / "results"
    apply.all_button.click()
    assert [layer.name for layer in apply.images.selected_layers()] == ["crop", "broken lazy", "lazy"]
    notes.clear()
    assert apply.start()
    wait_idle(apply)

    expected = api.predict(model, image, PredictConfig(device="cpu", tile=64)).labels
    np.testing.assert_array_equal(viewer.layers["crop segmentation"].data, expected)  # in memory, as before
    streamed = viewer.layers["lazy segmentation"]
    assert isinstance(streamed, Labels) and not isinstance(streamed.data, np.ndarray)  # shown from the zarr on disk
    np.testing.assert_array_equal(np.asarray(streamed.data), expected)
    assert np.allclose(streamed.scale, SCALE) and np.allclose(streamed.translate, TRANSLATE)
    assert (tmp_path / "results" / "lazy segmentation.ome.zarr").is_dir()
    status = apply.controls.status.text()
    assert "Segmented 2 of 3 images" in status and "1 failed" in status and "NaN" in status, status
    assert len(notes.errors()) == 1 and "NaN" in notes.errors()[0]
    assert apply.controls.start_button.isEnabled()


def test_files_mode_applies_to_a_folder_and_reports_a_summary(qtbot, viewer_widgets, notes, wait_idle, crop, tmp_path):
    viewer, finetune, apply = viewer_widgets
    model = _train(finetune, wait_idle)
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"s{i}.tif", crop[0][i])
    (folder / "broken.tif").write_bytes((folder / "s0.tif").read_bytes()[:500])
    apply.mode_combo.setCurrentIndex(apply.mode_combo.findData("files"))
    assert not apply.files.inputs.isHidden() and apply.images_row.isHidden()
    apply.files.inputs.set_path(str(folder))
    apply.files.out_dir.set_path(str(tmp_path / "out"))
    count = len(viewer.layers)
    notes.clear()
    assert apply.start()
    wait_idle(apply)
    status = apply.controls.status.text()
    assert status.startswith("Batch done: 2 done, 0 skipped, 1 failed") and "broken.tif" in status, status
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0.tif", "s1.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "s1.tif"),
                                  api.predict(model, crop[0][1], PredictConfig(device="cpu", tile=64)).labels)
    assert len(viewer.layers) == count  # files mode writes to disk, it adds no layers
    assert len(notes.errors()) == 1

    # again: everything exists, so everything is skipped
    assert apply.start()
    wait_idle(apply)
    assert apply.controls.status.text().startswith("Batch done: 0 done, 2 skipped, 1 failed")

    # a pattern that matches nothing is refused before anything starts
    apply.files.inputs.set_path(str(tmp_path / "*.png"))
    notes.clear()
    assert apply.start() is False
    assert "No image matches" in apply.controls.status.text() and len(notes.errors()) == 1


def test_export_button_writes_a_checked_onnx_file(qtbot, viewer_widgets, notes, wait_idle, tmp_path):
    viewer, finetune, _ = viewer_widgets
    assert not finetune.export_button.isEnabled()  # nothing trained yet
    _train(finetune, wait_idle)
    assert finetune.export_button.isEnabled()
    notes.clear()
    assert finetune.export_button.export("onnx", str(tmp_path / "m.onnx"))
    qtbot.waitUntil(lambda: finetune.export_button.worker is None, timeout=60_000)
    report = finetune.export_button.last_report
    assert report is not None and report.path.is_file() and report.path.suffix == ".onnx"
    assert max(report.max_abs_diff.values()) < 1e-4
    assert not notes.errors() and any("exported" in str(n.message) for n in notes.all())
    assert finetune.export_button.isEnabled()


def test_apply_a_bioimageio_package(qtbot, viewer_widgets, wait_idle, crop, tmp_path):
    from napari_emssl.export import export_model

    viewer, finetune, apply = viewer_widgets
    model = _train(finetune, wait_idle)
    package = export_model(model, "bioimageio", tmp_path / "model.zip")
    apply.source_combo.setCurrentIndex(apply.source_combo.findData("folder"))
    apply.folder.set_path(str(package))
    assert "resunet_b2_rf44" in apply.model_info.text()
    apply.images.select_layers([viewer.layers["crop"]])
    assert apply.start()
    wait_idle(apply)
    expected = api.predict(model, crop[0], PredictConfig(device="cpu", tile=64)).labels
    np.testing.assert_array_equal(viewer.layers["crop segmentation"].data, expected)


def test_closing_the_viewer_mid_batch_leaves_complete_files_only(qtbot, viewer_widgets, wait_idle, crop, tmp_path):
    viewer, finetune, apply = viewer_widgets
    _train(finetune, wait_idle)
    folder = tmp_path / "scans"
    folder.mkdir()
    stack = np.concatenate([crop[0]] * 6)  # 12 slices each: long enough to close the viewer in the middle
    for i in range(3):
        tifffile.imwrite(folder / f"s{i}.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    apply.mode_combo.setCurrentIndex(apply.mode_combo.findData("files"))
    apply.files.inputs.set_path(str(folder))
    apply.files.out_dir.set_path(str(tmp_path / "out"))
    apply.config_overrides = {"tile": 64, "batch_size": 1}
    slices = []
    assert apply.start()
    worker = apply.bridge.worker
    worker.yielded.connect(lambda e: slices.append(e) if type(e).__name__ == "PredictionSlice" else None)
    qtbot.waitUntil(lambda: len(slices) >= 14, timeout=60_000)  # the first file done, the second begun
    token = apply.bridge.token
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        viewer.close()
    assert token.cancelled
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written and all(not name.startswith(".") for name in written)  # no temporary file left behind
    for name in written:  # every result there is complete
        assert tifffile.imread(tmp_path / "out" / name).shape == stack.shape
    assert len(written) < 3
