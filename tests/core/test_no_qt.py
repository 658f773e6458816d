"""The core runs with napari, Qt, magicgui and vispy impossible to import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import os
    import sys

    BLOCKED = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy", "npe2",
               "app_model", "pytestqt"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    preloaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not preloaded, preloaded
    sys.meta_path.insert(0, Blocker())
    try:
        import napari  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    import torch

    def settings():
        return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.get_default_dtype(), dict(os.environ))

    before = settings()
    import napari_emssl
    import napari_emssl.api
    import napari_emssl.cli
    import napari_emssl.models
    import napari_emssl.config, napari_emssl.io, napari_emssl.data, napari_emssl.engine, napari_emssl.tasks
    import napari_emssl.zoo, napari_emssl.sample
    assert settings() == before, "importing napari_emssl changed torch or environment settings"
    torch.set_num_threads(1)  # the test's own choice (tiny model), made after the check

    import numpy as np
    from napari_emssl import api
    from napari_emssl.config import FinetuneConfig, PredictConfig

    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.uint8)
    labels[:5] = 1
    labels[-5:] = 2
    config = FinetuneConfig(arch="resunet_b2_rf44", arch_kwargs={"base_channels": 4}, patch_size=32, batch_size=2,
                            steps=2, preview_every_s=1e-6, device="cpu")
    result = api.finetune(image, labels, config, out_dir=sys.argv[1])
    pred = api.predict(sys.argv[1], image, PredictConfig(device="cpu"))
    assert pred.labels.shape == image.shape
    assert napari_emssl.cli.main(["models"]) == 0

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("CORE-WITHOUT-QT-OK")
    """
)


def test_core_imports_and_runs_without_qt(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "model")], capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CORE-WITHOUT-QT-OK" in proc.stdout
    assert (tmp_path / "model" / "model.safetensors").is_file()
