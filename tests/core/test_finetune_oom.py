"""Fine-tuning when the device runs out of memory: steps split when the loss allows, else the model so far is saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emssl import api
from napari_emssl.engine.model_dir import load_model
from napari_emssl.errors import DeviceMemoryError


class _Budget:
    """Makes every network forward with more than ``fits`` images (from step ``after`` on) run out of memory."""

    def __init__(self, monkeypatch, fits: int, after: int = 0) -> None:
        from napari_emssl.models import resunet

        self.fits, self.after, self.calls = fits, after, 0
        original = resunet.ResUNet.forward

        def forward(net, x):
            self.calls += 1
            if net.training and self.calls > self.after and len(x) > self.fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return original(net, x)

        monkeypatch.setattr(resunet.ResUNet, "forward", forward)


def test_segmentation_steps_are_split_when_the_batch_does_not_fit(monkeypatch, tiny_config, disks, tmp_path):
    image, truth, _ = disks(0)
    labels = np.where(np.random.default_rng(0).random(truth.shape) < 0.1, truth, 0).astype(np.uint8)
    _Budget(monkeypatch, fits=1)
    result = api.finetune(image, labels, tiny_config(steps=3, batch_size=2), out_dir=str(tmp_path / "m"))
    assert result.steps == 3
    assert [row.get("micro_batch_size") for row in result.model.log] == [1, 1, 1]


def test_restoration_out_of_memory_saves_the_model_so_far(monkeypatch, tiny_config, disks, tmp_path):
    image, _, _ = disks(1)
    _Budget(monkeypatch, fits=0, after=4)  # two steps fit (two forward passes each: re-visible loss), the third does not
    with pytest.raises(DeviceMemoryError, match="lower --batch-size") as info:
        api.finetune(image, config=tiny_config(task="denoise", steps=5), out_dir=str(tmp_path / "dn"))
    assert "saved in" in str(info.value) and info.value.step == 2
    model = load_model(tmp_path / "dn")
    assert model.meta["lineage"]["finetune"]["steps"] == 2 and model.meta["lineage"]["finetune"]["completed"] is False
