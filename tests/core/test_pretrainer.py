"""The pretraining loop, checkpoints, resume, the pretrain API and fine-tuning from a pretrain directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _toy_pretext import TINY_ARCH, TINY_KWARGS, ToyDenoiser, ToyTwoPhase

from napari_emssl import api
from napari_emssl.config import PretrainConfig
from napari_emssl.engine.cancel import CancelToken
from napari_emssl.engine.checkpoint import load_checkpoint, read_pretrained, restore_checkpoint
from napari_emssl.engine.events import Checkpointed, Preview, RunCancelled, RunFinished, RunStarted, StepEnd
from napari_emssl.engine.model_dir import load_model
from napari_emssl.engine.pretrainer import DivergedError, make_optimisers
from napari_emssl.errors import InputError, ModelFormatError


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    base = 100 + 60 * np.sin(yy / 7.0) * np.cos(xx / 5.0)
    return [(base + rng.normal(0, 5, base.shape)).astype(np.float32), (255 - base).astype(np.uint8)]


def _config(**changes) -> PretrainConfig:
    kw = dict(method="gan", steps=8, batch_size=2, patch=32, device="cpu", preview_every_s=0, log_every=2, seed=3)
    kw.update(changes)
    return PretrainConfig(**kw)


def _cancel_at(step: int):
    token = CancelToken()

    def on_event(event):
        if isinstance(event, StepEnd) and event.step == step:
            token.cancel()

    return token, on_event


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_config_validation():
    assert PretrainConfig(method="mae").total_steps() == PretrainConfig.DEFAULT_STEPS
    assert PretrainConfig(method="mae", epochs=2, batch_size=16, samples_per_epoch=100).total_steps(world_size=2) == 2 * 4
    for bad, words in [(dict(method="simclr"), "method"), (dict(method="gan", patch=100), "multiple of 16"),
                       (dict(method="gan", steps=3, epochs=2), "either"), (dict(method="gan", lr=2.0), "lr"),
                       (dict(method="gan", batch_size=0), "batch_size"), (dict(method="gan", device="tpu"), "device"),
                       (dict(method="gan", num_workers=-1), "num_workers")]:
        with pytest.raises(InputError, match=words):
            PretrainConfig(**bad)
    cfg = _config()
    assert PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_toy_loss_falls_and_run_writes_model_dir(tmp_path):
    events = list(api.iter_pretrain(_images(), _config(steps=24, preview_every_s=1e-6), tmp_path / "run", pretext=ToyDenoiser()))
    started, finished = events[0], events[-1]
    assert isinstance(started, RunStarted) and started.kind == "pretrain" and started.info["images"] == 2
    assert started.info["world_size"] == 1 and started.total_steps == 24
    assert isinstance(finished, RunFinished) and finished.result.steps == 24
    steps = [e for e in events if isinstance(e, StepEnd)]
    assert [e.step for e in steps] == list(range(1, 25))
    losses = [e.losses["loss"] for e in steps]
    assert all(np.isfinite(losses)) and np.mean(losses[-4:]) < 0.7 * losses[0]
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and previews[0].data.dtype == np.float32 and previews[0].data.shape == (32, 32)
    assert any(isinstance(e, Checkpointed) for e in events)
    out = tmp_path / "run"
    assert {"checkpoint-00000024.safetensors", "checkpoint.json", "model.safetensors", "model.json", "log.csv"} <= {p.name for p in out.iterdir()}
    assert len(list(out.glob("checkpoint*.safetensors"))) == 1  # earlier saves' weights are gone
    assert _no_temp_files(out)
    meta, state = read_pretrained(out)
    assert meta["task"] == "pretrain" and meta["arch"] == TINY_ARCH and meta["arch_kwargs"]["base_channels"] == 4
    assert meta["lineage"]["pretrain"]["steps"] == 24 and meta["lineage"]["pretrain"]["completed"]
    assert set(state) == set(ToyDenoiser().pretrained_state())
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "lr", "seconds", "images_per_s"} <= set(header)
    with pytest.raises(ModelFormatError, match="pretrained weights"):
        load_model(out)  # not a model to apply


def test_two_phases_run_in_order_each_step(tmp_path):
    pretext = ToyTwoPhase()
    last = api.run_to_end(api.iter_pretrain(_images(), _config(steps=5), tmp_path / "two", pretext=pretext))
    assert pretext.calls == [(p, s) for s in range(1, 6) for p in ("d", "g")]
    assert pretext.after == [1, 2, 3, 4, 5]
    assert {"d_loss", "g_loss", "g_l1", "loss"} <= set(last.result.losses)
    assert last.result.losses["loss"] == pytest.approx(last.result.losses["d_loss"] + last.result.losses["g_loss"], rel=1e-5)
    header = (tmp_path / "two" / "log.csv").read_text().splitlines()[0].split(",")
    assert "lr_d" in header and "lr_g" in header


def test_cancel_keeps_a_loadable_model(tmp_path):
    token, on_event = _cancel_at(3)
    last = api.run_to_end(api.iter_pretrain(_images(), _config(steps=50), tmp_path / "c", token, pretext=ToyDenoiser()), on_event)
    assert isinstance(last, RunCancelled) and last.step == 3 and last.result.steps == 3
    meta, state = read_pretrained(last.result.model_dir)
    assert meta["lineage"]["pretrain"]["steps"] == 3 and not meta["lineage"]["pretrain"]["completed"]
    assert load_checkpoint(tmp_path / "c").step == 3


def test_checkpoint_round_trip_restores_optimiser_state(tmp_path):
    pretext = ToyTwoPhase()
    api.run_to_end(api.iter_pretrain(_images(), _config(steps=4), tmp_path / "r", pretext=pretext))
    _, optimisers, schedulers = make_optimisers(pretext, None, 4)  # fresh ones, then loaded
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt.step == 4 and ckpt.meta["method"] == "toy2"
    fresh = ToyTwoPhase()
    _, fresh_opts, fresh_scheds = make_optimisers(fresh, None, 4)
    restore_checkpoint(ckpt, pretext=fresh, optimisers=fresh_opts, schedulers=fresh_scheds)
    for k, v in pretext.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    for phase, opt in fresh_opts.items():
        sd = opt.state_dict()
        assert len(sd["state"]) == len(list(getattr(fresh, phase).parameters()))
        assert all(int(s["step"]) == 4 for s in sd["state"].values())
        assert all(s["exp_avg"].abs().sum() > 0 for s in sd["state"].values())
        assert fresh_scheds[phase].last_epoch == 4
        assert isinstance(sd["param_groups"][0]["betas"], tuple)


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    """Exactly equal on CPU: data crops depend on (seed, epoch, index), RNG and optimiser state are restored."""
    cfg = _config(steps=10, samples_per_epoch=8)  # epochs of 4 steps: the resume point (6) is inside epoch 2
    torch.manual_seed(0)
    whole = ToyDenoiser()
    api.run_to_end(api.iter_pretrain(_images(), cfg, tmp_path / "whole", pretext=whole))

    token, on_event = _cancel_at(6)
    torch.manual_seed(0)  # the same initial weights as `whole`
    first = api.run_to_end(api.iter_pretrain(_images(), cfg, tmp_path / "split", token, pretext=ToyDenoiser()), on_event)
    assert isinstance(first, RunCancelled) and first.result.steps == 6
    resumed = ToyDenoiser()
    events = list(api.iter_pretrain(_images(), cfg, tmp_path / "split", resume=True, pretext=resumed))
    steps = [e.step for e in events if isinstance(e, StepEnd)]
    assert steps == [7, 8, 9, 10] and events[0].info["resumed_from_step"] == 6
    assert isinstance(events[-1], RunFinished) and events[-1].result.steps == 10
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    logged = [float(line.split(",")[0]) for line in (tmp_path / "split" / "log.csv").read_text().splitlines()[1:]]
    assert logged == sorted(logged) and logged[-1] == 10 and 6 in logged
    assert _no_temp_files(tmp_path / "split")


def test_resume_refuses_missing_corrupt_or_mismatched_checkpoints(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(InputError, match="no pretraining checkpoint"):
        list(api.iter_pretrain(_images(), _config(), out, resume=True, pretext=ToyDenoiser()))
    api.run_to_end(api.iter_pretrain(_images(), _config(steps=2), out, pretext=ToyDenoiser()))
    with pytest.raises(InputError, match="already holds"):
        list(api.iter_pretrain(_images(), _config(steps=2), out, pretext=ToyDenoiser()))
    with pytest.raises(InputError, match="method"):
        list(api.iter_pretrain(_images(), _config(steps=4), out, resume=True, pretext=ToyTwoPhase()))
    with pytest.raises(InputError, match="options"):
        list(api.iter_pretrain(_images(), _config(steps=4), out, resume=True, pretext=ToyDenoiser(arch_kwargs={"base_channels": 8})))
    weights = out / json.loads((out / "checkpoint.json").read_text())["weights_file"]
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(InputError, match="damaged"):
        list(api.iter_pretrain(_images(), _config(steps=4), out, resume=True, pretext=ToyDenoiser()))
    (out / "checkpoint.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(out)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    class Exploding(ToyDenoiser):
        def forward(self, batch, phase="main"):
            losses = super().forward(batch, phase)
            return {"loss": losses["loss"] * float("nan")}

    with pytest.raises(DivergedError, match="became nan at step 1"):
        list(api.iter_pretrain(_images(), _config(), tmp_path / "nan", pretext=Exploding()))


def test_finetune_init_from_pretrain_dir_reports_matched_tensors(tmp_path, disks, tiny_config):
    api.run_to_end(api.iter_pretrain(_images(), _config(steps=2), tmp_path / "pre", pretext=ToyDenoiser()))
    image, _, labels = disks(0)
    events = list(api.iter_finetune(image, labels, tiny_config(init=str(tmp_path / "pre"), arch=None, arch_kwargs={}, steps=2)))
    info = events[0].info
    assert info["init_kind"] == "pretrain" and info["pretrain_method"] == "toy"
    assert 0 < info["matched_tensors"] < info["total_tensors"]  # the 2-class head differs from the 1-channel one
    assert events[-1].result.model.meta["arch"] == TINY_ARCH
    with pytest.raises(ModelFormatError, match="same architecture"):
        list(api.iter_finetune(image, labels, tiny_config(init=str(tmp_path / "pre"), arch_kwargs={"base_channels": 8})))


def test_finetune_init_refuses_pretrain_dir_with_no_matching_tensors(tmp_path, disks, tiny_config):
    class Renamed(ToyDenoiser):
        def pretrained_state(self):
            return {f"other.{k}": v for k, v in self.net.state_dict().items()}

    api.run_to_end(api.iter_pretrain(_images(), _config(steps=1), tmp_path / "pre", pretext=Renamed()))
    image, _, labels = disks(0)
    with pytest.raises(ModelFormatError, match="none of the"):
        list(api.iter_finetune(image, labels, tiny_config(init=str(tmp_path / "pre"), arch=None, arch_kwargs={})))


def test_gan_pretrains_end_to_end_with_a_tiny_resunet(tmp_path, disks, tiny_config):
    pytest.importorskip("napari_emssl.pretext.gan")
    cfg = _config(steps=3, arch=TINY_ARCH, arch_kwargs=dict(TINY_KWARGS))
    result = api.pretrain(_images(), cfg, tmp_path / "gan")
    assert result.steps == 3 and np.isfinite(result.losses["loss"]) and {"d_loss", "g_loss"} <= set(result.losses)
    meta, _ = read_pretrained(tmp_path / "gan")
    assert meta["method"] == "gan" and meta["arch"] == TINY_ARCH
    image, _, labels = disks(0)
    info = list(api.iter_finetune(image, labels, tiny_config(init=str(tmp_path / "gan"), steps=1)))[0].info
    assert info["matched_tensors"] > 0


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from napari_emssl.engine import checkpoint as ckpt

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    info = {"method": "toy", "arch": "toy", "arch_kwargs": {}}
    save = lambda step: ckpt.save_checkpoint(tmp_path, pretext=net, optimisers={"main": opt}, schedulers={"main": sched},  # noqa: E731
                                             step=step, total_steps=10, info=info)
    save(3)
    with torch.no_grad():
        net.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the new weights file, before the JSON

    monkeypatch.setattr(ckpt, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save(7)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 3 and not torch.equal(loaded.tensors["model.weight"], net.weight.detach())
    monkeypatch.undo()
    save(8)  # the next save commits and clears both older weights files
    assert ckpt.load_checkpoint(tmp_path).step == 8
    assert [p.name for p in tmp_path.glob("checkpoint*.safetensors")] == ["checkpoint-00000008.safetensors"]
