"""The public API: ``iter_finetune`` / ``iter_predict`` event streams, learning, cancellation, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_emssl import api
from napari_emssl.config import FinetuneConfig, PredictConfig
from napari_emssl.engine.cancel import CancelToken
from napari_emssl.engine.events import PredictionTile, Preview, RunCancelled, RunFinished, RunStarted, StepEnd
from napari_emssl.engine.model_dir import TrainedModel, load_model
from napari_emssl.errors import InputError, ModelFormatError
from napari_emssl.tasks.segmentation import dice_per_class

CPU = PredictConfig(device="cpu")


def kinds(events):
    return [type(e).__name__ for e in events]


# ---------------------------------------------------------------------------------------------- fine-tune events


def test_finetune_event_sequence(tiny_config, disks):
    image, _, labels = disks(0)
    events = list(api.iter_finetune(image, labels, tiny_config(steps=5)))

    assert kinds(events) == ["RunStarted"] + ["StepEnd"] * 5 + ["RunFinished"]
    started = events[0]
    assert started.kind == "finetune" and started.total_steps == 5 and started.device == "cpu"
    assert started.info["classes"] == [1, 2]
    assert started.info["painted_slices"] == [0]
    assert started.info["painted_pixels"] == {1: int((labels == 1).sum()), 2: int((labels == 2).sum())}

    steps = events[1:-1]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5]
    assert all(e.total_steps == 5 for e in steps)
    for e in steps:
        assert {"loss", "ce", "dice"} <= set(e.losses)
        assert all(math.isfinite(v) for v in e.losses.values())
    seconds = [e.seconds for e in steps]
    assert seconds == sorted(seconds) and seconds[0] >= 0

    result = events[-1].result
    assert isinstance(result, api.FinetuneResult)
    assert isinstance(result.model, TrainedModel)
    assert result.steps == 5 and result.model_dir is None
    meta = result.model.meta
    assert meta["task"] == "segment" and meta["classes"] == [1, 2] and meta["out_channels"] == 2
    assert meta["lineage"]["finetune"]["completed"] is True and meta["lineage"]["finetune"]["steps"] == 5
    assert set(meta["metrics"]["train_painted_dice"]) == {"1", "2"}
    assert [row["step"] for row in result.model.log] == [1, 2, 3, 4, 5]
    assert [row["loss"] for row in result.model.log] == pytest.approx([e.losses["loss"] for e in steps])
    assert not result.model.net.training  # handed back in eval mode


def test_finetune_writes_model_dir(tiny_config, disks, tmp_path):
    image, _, labels = disks(0)
    result = api.finetune(image, labels, tiny_config(steps=2), out_dir=str(tmp_path / "m"), source="toy.tif")
    assert result.model_dir == str(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["lineage"]["finetune"]["source"] == "toy.tif"
    assert meta["lineage"]["finetune"]["completed"] is True
    assert meta["config"]["steps"] == 2 and meta["seed"] == 0


def test_previews_2d(tiny_config, disks):
    image, _, labels = disks(0, shape=(48, 40))
    events = list(api.iter_finetune(image, labels, tiny_config(steps=3, preview_every_s=1e-6)))
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews, kinds(events)
    assert previews[-1].step == 3  # always one at the end
    for p in previews:
        assert p.z is None
        assert p.data.shape == image.shape and p.data.dtype == np.uint8
        assert set(np.unique(p.data)) <= {1, 2}
    # a preview follows the StepEnd of its step
    for i, e in enumerate(events):
        if isinstance(e, Preview):
            assert isinstance(events[i - 1], StepEnd) and events[i - 1].step == e.step


def test_no_previews_when_disabled(tiny_config, disks):
    image, _, labels = disks(0)
    events = list(api.iter_finetune(image, labels, tiny_config(steps=2, preview_every_s=0)))
    assert not any(isinstance(e, Preview) for e in events)


def _stack(disks, painted=(1, 3), z=4, shape=(40, 40)):
    planes = [disks(s, shape=shape) for s in range(z)]
    image = np.stack([p[0] for p in planes])
    labels = np.zeros(image.shape, np.uint8)
    for k in painted:
        labels[k] = planes[k][2]
    return image, labels


def test_previews_stack_z(tiny_config, disks):
    image, labels = _stack(disks, painted=(2,), z=3)
    events = list(api.iter_finetune(image, labels, tiny_config(steps=2, preview_every_s=1e-6)))
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and all(p.z == 2 for p in previews)  # default: the first painted slice
    assert all(p.data.shape == image.shape[1:] for p in previews)

    events = list(api.iter_finetune(image, labels, tiny_config(steps=1, preview_every_s=1e-6), preview_z=0))
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and all(p.z == 0 for p in previews)


def test_stack_uses_only_painted_slices(tiny_config, disks, monkeypatch):
    image, labels = _stack(disks, painted=(1, 3), z=5)
    drawn = []

    class SpySampler(api.PatchSampler):
        def _corner(self):
            corner = super()._corner()
            drawn.append(corner[0])
            return corner

    monkeypatch.setattr(api, "PatchSampler", SpySampler)
    events = list(api.iter_finetune(image, labels, tiny_config(steps=6, batch_size=4)))
    assert events[0].info["painted_slices"] == [1, 3]
    assert len(drawn) == 24
    assert set(drawn) <= {1, 3}
    assert events[-1].result.model.meta["lineage"]["finetune"]["painted_slices"] == [1, 3]


def test_epochs_count_painted_slices_only(tiny_config, disks):
    image, labels = _stack(disks, painted=(1, 3), z=5, shape=(64, 64))
    config = tiny_config(steps=None, epochs=1, batch_size=2)
    started = next(api.iter_finetune(image, labels, config))
    # one epoch = patches covering the 2 painted slices once: ceil(2 * 64 * 64 / (2 * 32 * 32)) = 4
    assert started.total_steps == 4


def test_finetune_learns_disks(tiny_config, disks):
    """Strokes inside bright disks (2) and on the dark background (1) -> the disks of an unseen image."""
    image, _, labels = disks(0)
    assert (labels > 0).mean() < 0.15  # sparse strokes
    result = api.finetune(image, labels, tiny_config(steps=100, seed=0))
    losses = [row["loss"] for row in result.model.log]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])  # measured 0.2-0.35 over seeds 0-5

    unseen, truth, _ = disks(1234)
    pred = api.predict(result.model, unseen, CPU).labels
    dice = dice_per_class(pred, truth, [1, 2])
    # measured with seed 0: 0.98 / 0.91; seeds 0-5: >= 0.92 / >= 0.70
    assert dice[1] > 0.9, dice
    assert dice[2] > 0.75, dice
    assert result.model.meta["metrics"]["train_painted_dice"]["2"] > 0.8


def test_seed_makes_runs_repeatable(tiny_config, disks):
    image, _, labels = disks(0)

    def losses(seed):
        events = api.iter_finetune(image, labels, tiny_config(steps=4, seed=seed))
        return [e.losses["loss"] for e in events if isinstance(e, StepEnd)]

    first = losses(7)
    assert losses(7) == first
    assert losses(8) != first


# ---------------------------------------------------------------------------------------------- cancel


def test_cancel_mid_finetune_keeps_model(tiny_config, disks, tmp_path):
    image, _, labels = disks(0)
    token = CancelToken()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, StepEnd) and event.step == 3:
            token.cancel()

    out = tmp_path / "model"
    last = api.run_to_end(api.iter_finetune(image, labels, tiny_config(steps=50), cancel=token, out_dir=str(out)), on_event)

    assert isinstance(last, RunCancelled)
    assert not any(isinstance(e, RunFinished) for e in seen)
    assert [e.step for e in seen if isinstance(e, StepEnd)] == [1, 2, 3]
    assert last.step == 3
    assert isinstance(last.result.model, TrainedModel) and last.result.steps == 3
    assert last.result.model_dir == str(out)
    meta = json.loads((out / "model.json").read_text())
    assert meta["lineage"]["finetune"]["completed"] is False
    assert meta["lineage"]["finetune"]["steps"] == 3
    # the kept model is usable
    reloaded = load_model(out)
    assert len(reloaded.log) == 3
    assert api.predict(reloaded, image, CPU).labels.shape == image.shape


def test_cancel_during_preview_stops_run(tiny_config, disks):
    """A token set while a preview is being computed ends the run as cancelled, not with an error."""
    image, _, labels = disks(0)
    token = CancelToken()

    def on_event(event):
        if isinstance(event, Preview):
            token.cancel()

    last = api.run_to_end(api.iter_finetune(image, labels, tiny_config(steps=20, preview_every_s=1e-6), cancel=token),
                          on_event)
    assert isinstance(last, RunCancelled) and last.step == 1


# ---------------------------------------------------------------------------------------------- predict


def _check_prediction(events, image, k):
    assert isinstance(events[0], RunStarted) and events[0].kind == "predict"
    total = events[0].total_steps
    tiles = [e for e in events if isinstance(e, PredictionTile)]
    assert tiles, kinds(events)
    done = [t.done for t in tiles]
    assert done == sorted(done) and len(set(done)) == len(done)  # strictly increasing
    assert all(t.total == total for t in tiles)
    assert done[-1] == total
    assert isinstance(events[-1], RunFinished)
    result = events[-1].result
    labels, probs = result.labels, result.probabilities
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert labels.min() >= 1 and labels.max() <= k
    assert probs.shape == (k,) + image.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, probs.argmax(axis=0) + 1)
    return result


@pytest.mark.parametrize(
    "shape, dtype",
    [((37, 300), np.float32), ((64, 64), np.uint8), ((5, 5), np.uint16), ((1, 40), np.float32), ((3, 37, 30), np.uint16),
     ((2, 70, 41), np.int32)],
)
def test_predict_shapes(tiny_model, shape, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 200).astype(dtype)
    events = list(api.iter_predict(tiny_model, image, PredictConfig(device="cpu", tile=32, probabilities=True)))
    _check_prediction(events, image, k=2)


def test_predict_3d_is_slice_by_slice(tiny_model, disks):
    a, _, _ = disks(1)
    b, _, _ = disks(2)
    res = api.predict(tiny_model, np.stack([a, b, a]), PredictConfig(device="cpu", probabilities=True))
    assert res.probabilities.shape == (2, 3) + a.shape
    np.testing.assert_array_equal(res.probabilities[:, 0], res.probabilities[:, 2])  # same slice, same answer
    assert not np.array_equal(res.probabilities[:, 0], res.probabilities[:, 1])


def test_predict_without_probabilities(tiny_model, disks):
    image, _, _ = disks(0)
    result = api.predict(tiny_model, image, CPU)
    assert result.probabilities is None and result.labels.shape == image.shape


def test_predict_from_model_dir_path(tiny_model, tiny_model_dir, disks):
    image, _, _ = disks(3)
    a = api.predict(tiny_model, image, PredictConfig(device="cpu", probabilities=True))
    b = api.predict(str(tiny_model_dir), image, PredictConfig(device="cpu", probabilities=True))
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_cancel_during_predict(tiny_model):
    image = np.random.default_rng(0).random((3, 100, 100)).astype(np.float32)
    token = CancelToken()
    events = []
    for event in api.iter_predict(tiny_model, image, PredictConfig(device="cpu", tile=32, batch_size=1), cancel=token):
        events.append(event)
        if isinstance(event, PredictionTile) and event.done == 2:
            token.cancel()
    assert isinstance(events[-1], RunCancelled)
    assert not any(isinstance(e, RunFinished) for e in events)
    assert events[-1].step < events[0].total_steps
    assert next(tiny_model.net.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------------------------- init from a model directory


def test_init_from_model_dir_matches_tensors(tiny_config, disks, tiny_model, tiny_model_dir):
    image, _, labels = disks(5)
    started = next(api.iter_finetune(image, labels, tiny_config(steps=1, init=str(tiny_model_dir))))
    assert started.info["init"] == str(tiny_model_dir)
    assert started.info["matched_tensors"] == started.info["total_tensors"] == len(tiny_model.net.state_dict())

    # a third class: everything but the output head is carried over
    labels3 = labels.copy()
    labels3[0, :5] = 3
    events = list(api.iter_finetune(image, labels3, tiny_config(steps=1, init=str(tiny_model_dir))))
    info = events[0].info
    assert info["total_tensors"] - 2 <= info["matched_tensors"] < info["total_tensors"]
    assert events[-1].result.model.meta["out_channels"] == 3


def test_init_from_model_dir_really_loads_weights(tiny_config, disks, tiny_model, tiny_model_dir, monkeypatch):
    image, _, labels = disks(5)
    captured = {}
    real = api._initial_network

    def spy(config, k):
        net, info = real(config, k)
        captured["state"] = {n: t.clone() for n, t in net.state_dict().items()}
        return net, info

    monkeypatch.setattr(api, "_initial_network", spy)
    list(api.iter_finetune(image, labels, tiny_config(steps=1, init=str(tiny_model_dir))))
    for name, tensor in tiny_model.net.state_dict().items():
        assert np.array_equal(captured["state"][name].numpy(), tensor.numpy()), name


def test_init_from_model_dir_takes_its_architecture(disks, tiny_model_dir):
    """With no architecture asked for, fine-tuning from a model directory uses the directory's."""
    image, _, labels = disks(5)
    config = FinetuneConfig(init=str(tiny_model_dir), patch_size=32, batch_size=2, steps=1, preview_every_s=0, device="cpu")
    events = list(api.iter_finetune(image, labels, config))
    meta = events[-1].result.model.meta
    assert meta["arch"] == "resunet_b2_rf44" and meta["arch_kwargs"]["base_channels"] == 4
    assert events[0].info["matched_tensors"] == events[0].info["total_tensors"]


@pytest.mark.parametrize("change", [{"arch": "resunet_b3_rf96"}, {"arch_kwargs": {"base_channels": 8}}])
def test_init_architecture_mismatch(tiny_config, disks, tiny_model_dir, change):
    image, _, labels = disks(5)
    with pytest.raises(ModelFormatError, match="same architecture") as err:
        list(api.iter_finetune(image, labels, tiny_config(init=str(tiny_model_dir), **change)))
    assert "resunet_b2_rf44" in str(err.value)


def test_init_from_missing_dir(tiny_config, disks, tmp_path):
    image, _, labels = disks(0)
    with pytest.raises(ModelFormatError, match="does not exist"):
        list(api.iter_finetune(image, labels, tiny_config(init=str(tmp_path / "nope"))))


# ---------------------------------------------------------------------------------------------- bad input


def _image_and_labels():
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.uint8)
    labels[:4] = 1
    labels[-4:] = 2
    return image, labels


def _bad_finetune_cases():
    image, labels = _image_and_labels()
    rgb = np.zeros((40, 40, 3), np.uint8)
    nan = image.copy()
    nan[3, 3] = np.nan
    inf = image.copy()
    inf[0, 0] = np.inf
    one_class = np.where(labels == 2, 2, 0).astype(np.uint8)
    return {
        "rgb": (rgb, np.zeros((40, 40, 3), np.uint8), "RGB"),
        "4d": (np.zeros((2, 2, 16, 16), np.float32), np.zeros((2, 2, 16, 16), np.uint8), "4 dimensions"),
        "labels-shape": (image, labels[:30], "same size"),
        "nothing-painted": (image, np.zeros_like(labels), "Nothing is painted"),
        "one-class": (image, one_class, "Only class 2"),
        "nan": (nan, labels, "NaN"),
        "inf": (inf, labels, "infinite"),
        "negative-labels": (image, labels.astype(np.int16) - 1, "negative"),
        "fractional-labels": (image, labels.astype(np.float32) + 0.5, "whole"),
    }


@pytest.mark.parametrize("case", sorted(_bad_finetune_cases()))
def test_finetune_refuses_bad_input(tiny_config, case):
    image, labels, words = _bad_finetune_cases()[case]
    gen = api.iter_finetune(image, labels, tiny_config())
    with pytest.raises(InputError, match=words):
        next(gen)  # before any training starts


def test_finetune_refuses_labels_for_restoration_and_target_for_segmentation(tiny_config):
    image, labels = _image_and_labels()
    with pytest.raises(InputError, match="labels are for segmentation"):
        list(api.iter_finetune(image, labels, tiny_config(task="denoise")))
    with pytest.raises(InputError, match="target image is for restoration"):
        list(api.iter_finetune(image, labels, tiny_config(), target=image))
    with pytest.raises(InputError, match="needs painted labels"):
        list(api.iter_finetune(image, None, tiny_config()))


def test_finetune_refuses_unknown_arch(tiny_config):
    image, labels = _image_and_labels()
    with pytest.raises(ModelFormatError, match="unknown model architecture 'nope'"):
        list(api.iter_finetune(image, labels, tiny_config(arch="nope", arch_kwargs={})))


@pytest.mark.parametrize(
    "image, words",
    [(np.zeros((40, 40, 3), np.uint8), "RGB"), (np.zeros((1, 2, 8, 8)), "dimensions"),
     (np.full((8, 8), np.nan, np.float32), "NaN"), (np.zeros((8, 8), np.complex64), "complex"),
     (np.zeros((0, 8)), "empty")],
)
def test_predict_refuses_bad_images(tiny_model, image, words):
    with pytest.raises(InputError, match=words):
        list(api.iter_predict(tiny_model, image, CPU))


def test_predict_refuses_model_of_an_unknown_task_or_wrong_channels(tiny_model, tmp_path):
    meta = dict(tiny_model.meta, task="classify")
    TrainedModel(net=tiny_model.net, meta=meta).save(tmp_path / "classifier")
    assert json.loads((tmp_path / "classifier" / "model.json").read_text())["task"] == "classify"
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    with pytest.raises(ModelFormatError, match="'classify', which this napari-emssl"):
        list(api.iter_predict(str(tmp_path / "classifier"), image, CPU))
    two_channel_denoiser = dict(tiny_model.meta, task="denoise")  # a segmentation net relabelled: 2 outputs
    TrainedModel(net=tiny_model.net, meta=two_channel_denoiser).save(tmp_path / "denoiser")
    with pytest.raises(ModelFormatError, match="one output channel"):
        list(api.iter_predict(str(tmp_path / "denoiser"), image, CPU))
    with pytest.raises(ModelFormatError, match="one output channel"):
        list(api.iter_predict(TrainedModel(net=tiny_model.net, meta=two_channel_denoiser), image, CPU))
