"""The manifest, the sample data, the widget entries and the triton guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import resources

import numpy as np
import pytest
from npe2 import PluginManifest
from npe2.manifest.utils import import_python_name

from napari_emssl.io import read_image
from napari_emssl.sample import CITATION, sample_path


def _manifest() -> PluginManifest:
    return PluginManifest.from_file(str(resources.files("napari_emssl._napari") / "napari.yaml"))


def test_manifest_contributions_resolve():
    manifest = _manifest()
    assert manifest.name == "napari-emssl" and manifest.display_name == "EM SSL"
    commands = {c.id: c for c in manifest.contributions.commands}
    for command in commands.values():  # `npe2 validate` without --imports misses bad python_names
        assert callable(import_python_name(command.python_name)), command.python_name
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert set(widgets) == {"Pretrain", "Fine-tune", "Apply"}
    samples = {s.display_name: s.command for s in manifest.contributions.sample_data}
    assert set(samples) == {"ssTEM crop with strokes"}
    assert set(widgets.values()) | set(samples.values()) <= set(commands)


def test_widgets_open_from_the_plugin_menu(qtbot, make_napari_viewer):
    from napari_emssl._napari._apply_widget import ApplyWidget
    from napari_emssl._napari._finetune_widget import FinetuneWidget

    viewer = make_napari_viewer()
    _, finetune = viewer.window.add_plugin_dock_widget("napari-emssl", "Fine-tune")
    _, apply = viewer.window.add_plugin_dock_widget("napari-emssl", "Apply")
    assert isinstance(finetune, FinetuneWidget) and isinstance(apply, ApplyWidget)
    assert finetune.arch_combo.currentText() == "resunet_b3_rf96"
    assert finetune.steps_spin.value() == 600
    from napari_emssl.config import FinetuneConfig

    widget_config, defaults = finetune.config(), FinetuneConfig()
    for name in ("steps", "batch_size", "patch_size", "lr", "preview_every_s", "init", "device"):
        expected = defaults.DEFAULT_STEPS if name == "steps" else getattr(defaults, name)
        assert getattr(widget_config, name) == pytest.approx(expected), name
    assert finetune.labels_combo.count() == 0

    from napari_emssl._napari._pretrain_widget import PretrainWidget
    from napari_emssl.config import PretrainConfig
    from napari_emssl.pretext import default_arch

    _, pretrain = viewer.window.add_plugin_dock_widget("napari-emssl", "Pretrain")
    assert isinstance(pretrain, PretrainWidget)
    widget_config, defaults = pretrain.config(), PretrainConfig(method="gan")
    assert widget_config.method == "gan" and widget_config.arch == default_arch("gan")
    for name in ("batch_size", "patch", "preview_every_s", "device", "lr"):
        assert getattr(widget_config, name) == getattr(defaults, name), name
    assert widget_config.steps == PretrainConfig.DEFAULT_STEPS
    viewer.add_image(np.zeros((20, 20), np.float32), name="a")
    viewer.add_labels(np.zeros((20, 20), np.uint8), name="a strokes")
    assert finetune.image_combo.layer().name == "a" and finetune.labels_combo.layer().name == "a strokes"
    viewer.layers["a"].name = "b"
    assert finetune.image_combo.currentText() == "b" and apply.images.item(0).text() == "b"
    assert [layer.name for layer in pretrain.layers.checked_layers()] == ["b"]
    del viewer.layers["a strokes"]
    assert finetune.labels_combo.count() == 0


def test_sample_data_opens(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-emssl", "sstem_crop")
    image, strokes = viewer.layers["sstem_crop"], viewer.layers["sstem_crop strokes"]
    data, meta = read_image(sample_path("sstem_crop.tif"))
    assert image.data.shape == data.shape == strokes.data.shape == (5, 512, 512)
    assert np.allclose(image.scale, meta.scale) and np.allclose(strokes.scale, meta.scale)
    assert meta.unit == "um" and [str(u) for u in image.units] == ["micrometer"] * 3
    assert type(strokes).__name__ == "Labels" and set(np.unique(strokes.data)) == {0, 1, 2}
    assert image.metadata["citation"] == CITATION and "CC BY-NC-SA" in strokes.metadata["licence"]


GUARD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)              # a real canvas on the software OpenGL driver
    viewer.add_image(np.random.rand(64, 64))
    QApplication.processEvents()
    _, widget = viewer.window.add_plugin_dock_widget("napari-emssl", "Fine-tune")   # runs the guard
    blocked = sys.modules.get("triton", 0) is None
    assert blocked == (not torch.cuda.is_available()), blocked
    import timm, torchvision, segmentation_models_pytorch                           # would load triton
    from napari_emssl.models import create_model
    for arch in ("unet_resnet18", "hrnet_w18_small"):
        net = create_model(arch, in_channels=1, out_channels=2).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert torchvision.ops.nms(torch.tensor([[0., 0, 1, 1]]), torch.tensor([1.]), 0.5).tolist() == [0]
    viewer.add_image(np.random.rand(64, 64))
    viewer.screenshot()
    viewer.close()
    print("guard ok, triton blocked:", blocked)
""")


def test_triton_guard_keeps_napari_alive():
    """With the CUDA torch build and no GPU this process segfaulted without the guard."""
    done = subprocess.run([sys.executable, "-c", GUARD_SCRIPT], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "guard ok" in done.stdout


def test_guard_is_idempotent_and_only_without_cuda(monkeypatch):
    import torch

    from napari_emssl._napari._torch_guard import keep_triton_out

    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert keep_triton_out() is False and "triton" not in sys.modules
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert keep_triton_out() is True and sys.modules["triton"] is None
    assert keep_triton_out() is True
    with pytest.raises(ImportError):
        import triton  # noqa: F401


def test_make_run_script_opens_the_sample_and_widgets(qtbot, monkeypatch):
    """`make run` runs scripts/run_napari.py: every name it uses must exist in the manifest."""
    import runpy
    from pathlib import Path

    import napari

    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    script = Path(__file__).resolve().parents[2] / "scripts" / "run_napari.py"
    try:
        runpy.run_path(str(script), run_name="__main__")
        viewer = napari.current_viewer()
        assert viewer is not None and len(viewer.layers) >= 2
        assert {"Pretrain", "Fine-tune", "Apply"} <= {name.split(" (")[0] for name in viewer.window.dock_widgets}
    finally:
        napari.Viewer.close_all()
