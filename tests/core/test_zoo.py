"""The bundled pretrained weights: intact, documented, small enough, and really loaded by ``--init bundled``."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_emssl import api, zoo
from napari_emssl.config import FinetuneConfig
from napari_emssl.models import DEFAULT_SEGMENT_ARCH, create_model, model_info
from napari_emssl.pretext import PRETEXT_METHODS

ENTRIES = zoo.list_bundled()
IDS = [e.name for e in ENTRIES]
CARD_FIELDS = ("data", "steps", "seconds", "device", "final_losses", "licence_note", "command", "sha256", "batch_size", "patch")


def test_the_default_architecture_and_every_method_ship():
    methods = {e.method for e in ENTRIES}
    assert set(PRETEXT_METHODS) <= methods, f"bundled methods {methods}"
    assert zoo.bundled_for_network(DEFAULT_SEGMENT_ARCH, dict(model_info(DEFAULT_SEGMENT_ARCH).default_kwargs))
    assert {"resunet", "hrnet"} <= {model_info(e.arch).family for e in ENTRIES if e.method == "gan"}
    for entry in ENTRIES:  # a task an entry is not used for says why
        assert set(entry.tasks) <= {"segment", "denoise", "bgremove", "superres"}
        assert "segment" in entry.tasks or entry.card.get("task_note")


def test_total_size_is_within_the_package_limit():
    assert sum(e.path.stat().st_size for e in ENTRIES) <= 60 * 1024 * 1024


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_card_and_checksum(entry):
    for key in CARD_FIELDS:
        assert entry.card.get(key) not in (None, "", [], {}), f"{entry.name}: model card lacks {key}"
    assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.card["sha256"]
    assert entry.card["steps"] > 0 and all(np.isfinite(v) for v in entry.card["final_losses"].values())
    assert all("stack1" not in str(d["path"]) for d in entry.card["data"]), "the benchmark's test stack must not be in the corpus"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_weights_load_into_the_downstream_network(entry):
    state = load_file(str(entry.path))
    net = create_model(entry.arch, in_channels=1, out_channels=3, **entry.arch_kwargs)
    own = net.state_dict()
    before = {k: v.clone() for k, v in own.items()}
    matched, total = api.load_matching(net, state)
    assert matched == entry.card["tensors"] - sum(1 for k in state if k in own and own[k].shape != state[k].shape) - sum(
        1 for k in state if k not in own)
    assert matched >= 0.3 * total
    # the copied tensors are the bundled values, not the random initialisation
    name = next(k for k in state if k in own and own[k].shape == state[k].shape and own[k].is_floating_point() and own[k].numel() > 16)
    after = net.state_dict()[name]
    assert torch.allclose(after, state[name].float()) and not torch.allclose(after, before[name])


def test_tiny_options_get_no_partial_weights():
    assert zoo.bundled_for("segment", DEFAULT_SEGMENT_ARCH, {"base_channels": 4}) is None


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_finetune_with_init_bundled_says_what_it_loaded(entry):
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[5:10, 5:40] = 1
    labels[40:45, 10:50] = 2
    config = FinetuneConfig(arch=entry.arch, steps=1, batch_size=1, patch_size=64, device="cpu", preview_every_s=0)
    events = api.iter_finetune(image, labels, config)
    info = next(e for e in events if type(e).__name__ == "RunStarted").info
    events.close()
    if zoo.bundled_for("segment", entry.arch, entry.arch_kwargs) is entry:
        assert info["init"] == f"bundled:{entry.name}" and info["pretrain_method"] == entry.method
        assert 0 < info["matched_tensors"] < info["total_tensors"]  # everything but the task head (and decoder for encoders)
    elif zoo.bundled_for("segment", entry.arch, entry.arch_kwargs) is None:
        assert info["init"] == "random" and "not used for 'segment'" in info["init_note"]
        assert entry.card["task_note"] in info["init_note"]


def test_restoration_tasks_get_their_bundled_weights():
    kwargs = dict(model_info(DEFAULT_SEGMENT_ARCH).default_kwargs)
    assert zoo.bundled_for("bgremove", DEFAULT_SEGMENT_ARCH, kwargs).name == "bgremove_resunet_b3_rf96"
    assert zoo.bundled_for("denoise", DEFAULT_SEGMENT_ARCH, kwargs).method == "gan"
    assert zoo.bundled_for("superres", DEFAULT_SEGMENT_ARCH, kwargs).method == "gan"


def test_bundled_background_removal_weights_remove_background_from_unseen_synthetic_images():
    from napari_emssl.data.synthetic import make_pair
    from napari_emssl.tasks.metrics import psnr

    entry = zoo.bundled_for("bgremove", DEFAULT_SEGMENT_ARCH, dict(model_info(DEFAULT_SEGMENT_ARCH).default_kwargs))
    net = create_model(entry.arch, in_channels=1, out_channels=1, **entry.arch_kwargs)
    matched, total = api.load_matching(net, load_file(str(entry.path)))
    assert matched == total
    net.eval()
    rng = np.random.default_rng(2024)  # not the training seed
    gains = []
    for _ in range(3):
        x, y = make_pair(rng, 128, "bgremove")
        with torch.inference_mode():
            pred = net(torch.from_numpy(x)[None, None]).float()[0, 0].numpy()
        gains.append(psnr(y, pred) - psnr(y, x))
    assert min(gains) > 5.0, gains  # the card's validation: +19 dB on average
