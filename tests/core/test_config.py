"""Run configurations: validation with messages that name the field, JSON round trip, unknown keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from napari_emssl.config import TASKS, FinetuneConfig, PredictConfig
from napari_emssl.errors import InputError


def test_defaults_are_valid():
    config = FinetuneConfig()
    assert config.task == "segment" and config.init == "bundled" and config.device == "auto"
    assert config.steps is None and config.epochs is None
    assert PredictConfig().probabilities is False
    assert set(TASKS) == {"segment", "denoise", "bgremove", "superres"}


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"task": "classify"}, "task must be one of"),
        ({"steps": 0}, "steps must be a positive whole number"),
        ({"steps": -5}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"epochs": 0}, "epochs"),
        ({"steps": 10, "epochs": 2}, "either steps or epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patch_size": 8}, "patch_size must be at least 16"),
        ({"patch_size": "128"}, "patch_size"),
        ({"tile": 0}, "tile"),
        ({"lr": 0}, "lr must be between 0 and 1"),
        ({"lr": 1.5}, "lr must be between 0 and 1"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": float("nan")}, "lr must be a number"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"dice_weight": -1}, "dice_weight"),
        ({"preview_every_s": -1}, "preview_every_s"),
        ({"preview_every_s": None}, "preview_every_s must be a number"),
        ({"arch_kwargs": [4]}, "arch_kwargs must be a dictionary"),
        ({"arch": 3}, "arch must be an architecture name"),
        ({"init": ""}, "init must be"),
        ({"device": "tpu"}, "device must be one of"),
        ({"device": None}, "device must be one of"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"seed": 1.5}, "seed"),
        ({"schema_version": 2}, "unknown configuration schema version 2"),
        ({"mask_replace": "median"}, "mask_replace must be one of mean, neighbour"),
        ({"mask_replace": None}, "mask_replace must be one of"),
        ({"denoise_loss": "n2v"}, "denoise_loss must be one of re-visible, blind-spot"),
        ({"mean_correction": -1.0}, "mean_correction must be a low-pass sigma"),
        ({"mean_correction": 1e6}, "mean_correction must be a low-pass sigma"),
        ({"mean_correction": float("nan")}, "mean_correction must be a number"),
        ({"mean_correction": "16"}, "mean_correction must be a number"),
        ({"leak_correction": -0.1}, "leak_correction must be a share between 0"),
        ({"leak_correction": 1.5}, "leak_correction must be a share between 0"),
        ({"leak_correction": float("nan")}, "leak_correction must be a number"),
        ({"leak_correction": "0.5"}, "leak_correction must be a number or 'auto'"),
        ({"leak_correction": "Auto"}, "leak_correction must be a number or 'auto'"),
    ],
)
def test_finetune_config_rejects_bad_values(changes, words):
    with pytest.raises(InputError, match=words):
        FinetuneConfig(**changes)


@pytest.mark.parametrize(
    "changes, words",
    [({"device": "gpu"}, "device"), ({"tile": 0}, "tile"), ({"batch_size": -1}, "batch_size"),
     ({"overlap": -1}, "overlap"), ({"overlap": 1.5}, "overlap"), ({"leak_correction": 1.2}, "leak_correction must be a share"),
     ({"leak_correction": -0.5}, "leak_correction must be a share"), ({"leak_correction": "1"}, "leak_correction must be a number or 'auto'")],
)
def test_predict_config_rejects_bad_values(changes, words):
    with pytest.raises(InputError, match=words):
        PredictConfig(**changes)


def test_accepted_values():
    FinetuneConfig(device="cuda:1", steps=1, patch_size=16, lr=1e-5, preview_every_s=0, weight_decay=0, dice_weight=0)
    FinetuneConfig(epochs=3, arch="resunet_b2_rf44", arch_kwargs={"base_channels": 4}, init="random")
    PredictConfig(device="cpu", overlap=0, tile=64, batch_size=1, probabilities=True)
    assert FinetuneConfig(init=Path("/some/model")).init == "/some/model"  # a Path is stored as a string


def test_round_trip_through_json():
    config = FinetuneConfig(arch="resunet_b2_rf44", arch_kwargs={"base_channels": 4}, steps=7, lr=1e-3, seed=3,
                            device="cpu", preview_every_s=0.5, init="random")
    data = json.loads(json.dumps(config.to_dict()))
    assert FinetuneConfig.from_dict(data) == config
    assert data["schema_version"] == 1 and data["steps"] == 7


def test_from_dict_refuses_unknown_keys():
    data = FinetuneConfig().to_dict()
    data.update(stpes=10, colour="red")
    with pytest.raises(InputError, match="unknown fine-tuning setting\\(s\\): colour, stpes"):
        FinetuneConfig.from_dict(data)


def test_from_dict_validates_values():
    with pytest.raises(InputError, match="batch_size"):
        FinetuneConfig.from_dict({"batch_size": 0})


def test_configs_are_frozen_and_replace_validates():
    config = FinetuneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]
    assert config.replace(steps=3).steps == 3 and config.steps is None
    with pytest.raises(InputError, match="steps"):
        config.replace(steps=0)


def test_prediction_tile_is_bigger_on_cuda_unless_given():
    from napari_emssl.config import PredictConfig

    assert PredictConfig().tile is None
    assert PredictConfig().tile_on("cuda") == 512 and PredictConfig().tile_on("cpu") == PredictConfig().tile_on("mps") == 256
    assert PredictConfig(tile=128).tile_on("cuda") == PredictConfig(tile=128).tile_on("cpu") == 128
    assert PredictConfig().tile_on("cuda", preferred=224) == 224 and PredictConfig(tile=128).tile_on("cuda", 224) == 128
    from napari_emssl.models import create_model

    assert create_model("vit_tiny_p16", in_channels=1, out_channels=1).preferred_tile == 256  # its trained token grid
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="tile"):
            PredictConfig(tile=bad)
