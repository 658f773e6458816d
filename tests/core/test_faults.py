"""Nothing lost under faults: kill -9 while saving, out of GPU memory, device memory given back, inputs never modified."""

from __future__ import annotations

import fnmatch
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _toy_pretext import ToyDenoiser

from napari_emssl import api
from napari_emssl.config import PredictConfig, PretrainConfig
from napari_emssl.engine import device as device_mod
from napari_emssl.engine import pretrainer as pretrainer_mod
from napari_emssl.engine import trainer as trainer_mod
from napari_emssl.engine.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from napari_emssl.engine.events import StepEnd
from napari_emssl.engine.model_dir import load_model
from napari_emssl.engine.trainer import TrainState, train
from napari_emssl.errors import DeviceMemoryError

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=SRC)
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------- kill -9 while saving

_CHECKPOINT_WRITER = """
import sys, torch
from napari_emssl.engine.checkpoint import save_checkpoint
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3), torch.nn.Conv2d(64, 256, 3))  # ~0.6 MB of weights, ~2 MB with Adam
opt = torch.optim.AdamW(net.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
step = 0
while True:
    step += 1
    opt.zero_grad()
    net(torch.randn(1, 1, 8, 8)).mean().backward()
    opt.step()
    sched.step()
    save_checkpoint(sys.argv[1], pretext=net, optimisers={"main": opt}, schedulers={"main": sched}, step=step,
                    total_steps=10**9, info={"method": "toy", "arch": "toy", "arch_kwargs": {}}, rng={"cpu": torch.get_rng_state()})
    if step == 1:
        print("ready", flush=True)
"""

_MODEL_WRITER = """
import sys, torch
from napari_emssl.engine.model_dir import TrainedModel, build_meta
from napari_emssl.models import create_model
net = create_model("resunet_b2_rf44", out_channels=2, base_channels=16)
meta = build_meta(net, task="segment", out_channels=2, classes=[1, 2])
i = 0
while True:
    i += 1
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float(i))
    TrainedModel(net=net, meta=dict(meta, seed=i), log=[{"step": float(k), "loss": 1.0 / k} for k in range(1, i + 1)]).save(sys.argv[1])
    if i == 1:
        print("ready", flush=True)
"""


def _kill_while_writing(script: str, folder: Path, seed: int) -> None:
    """Start a child that saves into ``folder`` in a loop; SIGKILL it at a random moment after its first save."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        time.sleep(random.Random(seed).uniform(0.0, 0.6))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _final_names_are_complete(folder: Path) -> None:
    """Every file under a final (non-temporary) name is complete; temporary files are hidden: ours ``.<name>.<random>.tmp``,
    safetensors' own ``.tmpXXXXXX``."""
    from safetensors.torch import load_file

    for path in folder.iterdir():
        if path.name.startswith("."):
            assert path.suffix == ".tmp" or fnmatch.fnmatch(path.name, ".tmp??????"), path
            continue
        if path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.name == "log.csv", path


@pytest.mark.parametrize("attempt", range(4))
def test_kill_9_while_saving_checkpoints_always_leaves_a_loadable_resumable_checkpoint(tmp_path, attempt):
    out = tmp_path / "run"
    _kill_while_writing(_CHECKPOINT_WRITER, out, seed=attempt)
    _final_names_are_complete(out)
    ckpt = load_checkpoint(out)  # the old or the new save, never a mixture
    assert ckpt.step >= 1
    # resume: restore into the same network and go on saving
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3), torch.nn.Conv2d(64, 256, 3))
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    restore_checkpoint(ckpt, pretext=net, optimisers={"main": opt}, schedulers={"main": sched})
    assert sched.last_epoch == ckpt.step
    save_checkpoint(out, pretext=net, optimisers={"main": opt}, schedulers={"main": sched}, step=ckpt.step + 1,
                    total_steps=10**9, info={"method": "toy", "arch": "toy", "arch_kwargs": {}})
    assert load_checkpoint(out).step == ckpt.step + 1
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-%08d.safetensors" % (ckpt.step + 1), "checkpoint.json"], names  # stale files cleaned


@pytest.mark.parametrize("attempt", range(4))
def test_kill_9_while_saving_a_model_directory_always_leaves_a_loadable_model(tmp_path, attempt):
    out = tmp_path / "model"
    _kill_while_writing(_MODEL_WRITER, out, seed=100 + attempt)
    _final_names_are_complete(out)
    model = load_model(out)
    value = float(next(model.net.parameters()).detach().flatten()[0])
    saved_at = model.meta["seed"]
    assert value in (saved_at, saved_at + 1)  # weights of the save of model.json, or of the next one (written first)
    assert all(float(p.detach().flatten()[0]) == value for p in model.net.parameters())  # never a half-written weights file
    model.save(out)  # saving again cleans what the killed save left
    assert sorted(p.name for p in out.iterdir()) == ["log.csv", "model.json", "model.safetensors"]


# ---------------------------------------------------------------------------------------------- out of memory


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))


_DATA = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def _oom(kind: str = "cuda") -> BaseException:
    if kind == "cuda":
        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)")


@pytest.mark.parametrize("kind", ["cuda", "mps"])
def test_out_of_memory_without_batch_override_stops_clearly_and_keeps_the_weights(kind):
    net = _tiny_net()
    calls = []

    def loss_fn(model):
        calls.append(1)
        if len(calls) == 3:
            raise _oom(kind)
        return {"loss": (model(_DATA) - _DATA).pow(2).mean()}

    state, after_step_2 = TrainState(), None
    with pytest.raises(DeviceMemoryError, match=r"out of device memory in training step 3 at batch size 8: "
                                                r"lower --batch-size or --patch-size \(.*weights of step 2\)") as err:
        for event in train(net, loss_fn, total_steps=5, device=CPU, lr=1e-2, state=state, batch_size=8):
            if isinstance(event, StepEnd) and event.step == 2:
                after_step_2 = {k: v.clone() for k, v in net.state_dict().items()}
    assert err.value.step == 2 and err.value.batch_size == 8 and state.step == 2
    for k, v in net.state_dict().items():  # the failed step changed nothing
        assert torch.equal(v, after_step_2[k]), k
    assert all(p.grad is None for p in net.parameters())  # gradients freed


def _batched_loss(log: list[int], fail_above: int | None, from_step_call: int = 0):
    """A loss over a fixed batch of 8 taken in order; raises OOM for micro-batches larger than ``fail_above``."""
    cursor = [0]

    def loss_fn(model, batch_size=8):
        log.append(batch_size)
        if fail_above is not None and len(log) > from_step_call and batch_size > fail_above:
            raise _oom()
        start = cursor[0]
        cursor[0] = (start + batch_size) % 8
        x = _DATA[start:start + batch_size]
        loss = (model(x) - x).pow(2).mean()
        return {"loss": loss, "mse": loss.detach()}

    return loss_fn


def test_out_of_memory_halves_the_batch_and_gives_the_same_update():
    sizes: list[int] = []
    state = TrainState()
    split = _tiny_net()
    list(train(split, _batched_loss(sizes, fail_above=2, from_step_call=1), total_steps=3, device=CPU, lr=1e-2,
               state=state, batch_size=8))
    # step 1 whole; step 2: 8 fails, 4 fails, then 4 x 2; step 3: 4 x 2 straight away
    assert sizes == [8, 8, 4, 2, 2, 2, 2, 2, 2, 2, 2]
    assert state.micro_batch_size == 2 and state.step == 3 and state.log[-1]["micro_batch_size"] == 2
    whole = _tiny_net()
    list(train(whole, _batched_loss([], fail_above=None), total_steps=3, device=CPU, lr=1e-2, batch_size=8))
    for (k, a), b in zip(split.state_dict().items(), whole.state_dict().values()):  # accumulated = full-batch gradients
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


def test_out_of_memory_at_batch_size_one_stops():
    with pytest.raises(DeviceMemoryError, match="at batch size 1"):
        list(train(_tiny_net(), _batched_loss([], fail_above=0), total_steps=2, device=CPU, lr=1e-2, batch_size=8))


def test_a_diverging_loss_stops_with_an_emssl_error():
    """Not a bare FloatingPointError (the command line would print a traceback); the weights stay those of the last step."""
    from napari_emssl.errors import DivergedError, EmsslError

    net = _tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def loss_fn(model):
        return {"loss": model(_DATA).sum() * float("nan")}

    with pytest.raises(DivergedError, match="training loss became nan at step 1") as err:
        list(train(net, loss_fn, total_steps=2, device=CPU, lr=1e-2))
    assert isinstance(err.value, EmsslError) and isinstance(err.value, FloatingPointError)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_other_errors_are_not_taken_for_out_of_memory():
    def loss_fn(model):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        list(train(_tiny_net(), loss_fn, total_steps=2, device=CPU, lr=1e-2, batch_size=8))
    assert device_mod.is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and device_mod.is_out_of_memory(_oom("mps"))
    assert not device_mod.is_out_of_memory(ValueError("out of memory"))


def test_pretraining_out_of_memory_saves_the_last_step_and_resumes(tmp_path):
    class Hungry(ToyDenoiser):
        calls = 0

        def forward(self, batch, phase="main"):
            type(self).calls += 1
            if type(self).calls == 4 and self.training:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return super().forward(batch, phase)

    images = [np.random.default_rng(0).random((64, 64)).astype(np.float32)]
    config = PretrainConfig(method="gan", steps=6, batch_size=2, patch=32, device="cpu", preview_every_s=0, log_every=1, seed=0)
    out = tmp_path / "run"
    with pytest.raises(DeviceMemoryError, match=r"pretraining step 4 at batch size 2 \(patch 32\): lower --batch-size or --patch; "
                                                r"the checkpoint of step 3 is saved .*--resume"):
        list(api.iter_pretrain(images, config, out, pretext=Hungry()))
    assert load_checkpoint(out).step == 3
    result = api.pretrain(images, config, out, resume=True, pretext=ToyDenoiser())
    assert result.steps == 6 and load_checkpoint(out).step == 6


# ---------------------------------------------------------------------------------------------- device memory released


class _Spy:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)


@pytest.fixture
def spies(monkeypatch):
    release, cache = _Spy(), _Spy()
    monkeypatch.setattr(trainer_mod, "release", release)
    monkeypatch.setattr(trainer_mod, "release_device_memory", cache)
    return release, cache


def _loss(model):
    return {"loss": (model(_DATA) - _DATA).pow(2).mean()}


def test_memory_released_after_a_finished_run(spies):
    release, cache = spies
    net = _tiny_net()
    list(train(net, _loss, total_steps=2, device=CPU, lr=1e-2))
    assert cache.calls == [(CPU,)] and release.calls == []  # cache emptied; the network stays for the caller


@pytest.mark.parametrize("how", ["error", "closed", "out of memory"])
def test_network_moved_off_the_device_after_a_failed_or_closed_run(spies, how):
    release, cache = spies
    net = _tiny_net()

    calls = []

    def loss_fn(model):
        calls.append(1)
        if len(calls) == 2 and how != "closed":
            raise ValueError("bad batch") if how == "error" else _oom()
        return _loss(model)

    run = train(net, loss_fn, total_steps=5, device=CPU, lr=1e-2)
    if how == "closed":
        next(run)
        run.close()
    else:
        with pytest.raises((ValueError, DeviceMemoryError)):
            list(run)
    assert release.calls == [(net, CPU)]


def test_release_moves_to_cpu_and_empties_the_cuda_cache(monkeypatch):
    emptied = _Spy()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", emptied)
    net = _tiny_net()
    moved = []
    original = net.to
    net.to = lambda *a, **k: (moved.append(a), original(*a, **k))[1]
    device_mod.release(net, torch.device("cuda"))
    assert moved == [("cpu",)] and len(emptied.calls) == 1
    device_mod.release(net, CPU)  # nothing to give back on the CPU
    assert moved == [("cpu",)] and len(emptied.calls) == 1


@pytest.mark.parametrize("how", ["finished", "cancelled", "error"])
def test_pretraining_releases_the_network_however_it_ends(monkeypatch, tmp_path, how):
    release = _Spy()
    monkeypatch.setattr(pretrainer_mod, "release", release)
    images = [np.random.default_rng(0).random((64, 64)).astype(np.float32)]
    config = PretrainConfig(method="gan", steps=3, batch_size=2, patch=32, device="cpu", preview_every_s=0, seed=0)
    pretext = ToyDenoiser()
    if how == "error":
        pretext.forward = lambda batch, phase="main": (_ for _ in ()).throw(ValueError("boom"))
        with pytest.raises(ValueError):
            list(api.iter_pretrain(images, config, None, pretext=pretext))
    elif how == "cancelled":
        run = api.iter_pretrain(images, config, None, pretext=pretext)
        next(e for e in run if isinstance(e, StepEnd))
        run.close()
    else:
        api.pretrain(images, config, None, pretext=pretext)
    assert [call[0] for call in release.calls] == [pretext]


# ---------------------------------------------------------------------------------------------- inputs never modified


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


def test_finetune_never_modifies_painted_labels_and_takes_read_only_arrays(disks, tiny_config):
    image, _, labels = disks(0)
    labels = labels.astype(np.uint16)
    before_labels, before_image = labels.copy(), image.copy()
    result = api.finetune(image, labels, tiny_config(steps=2))
    assert labels.dtype == before_labels.dtype and labels.tobytes() == before_labels.tobytes()
    assert image.tobytes() == before_image.tobytes()
    ro_image, ro_labels = _read_only(image), _read_only(labels)
    api.finetune(ro_image, ro_labels, tiny_config(steps=2))
    assert ro_labels.tobytes() == before_labels.tobytes() and not ro_labels.flags.writeable
    stack_labels = _read_only(np.stack([labels, np.zeros_like(labels)]))
    api.finetune(_read_only(np.stack([image, image])), stack_labels, tiny_config(steps=1))
    out = api.predict(result.model, ro_image, PredictConfig(device="cpu"))
    assert out.labels.shape == image.shape and ro_image.tobytes() == before_image.tobytes()


def test_restoration_takes_read_only_arrays(tiny_config):
    rng = np.random.default_rng(0)
    image = _read_only((100 + 20 * rng.standard_normal((64, 64))).astype(np.float32))
    before = image.tobytes()
    model = api.finetune(image, None, tiny_config(task="denoise", steps=2)).model
    out = api.predict(model, image, PredictConfig(device="cpu"))
    assert out.image.shape == image.shape and image.tobytes() == before
