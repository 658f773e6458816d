"""The generic training loop: schedule, events, cancellation, non-finite losses, previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emssl import api
from napari_emssl.engine.cancel import CancelToken
from napari_emssl.engine.events import Preview, StepEnd
from napari_emssl.engine.model_dir import load_model
from napari_emssl.engine.trainer import TrainState, train, warmup_cosine
from napari_emssl.errors import DivergedError

CPU = torch.device("cpu")


def test_warmup_cosine_shape():
    total, warm = 100, 10
    f = warmup_cosine(total, warm)
    values = [f(s) for s in range(total + 20)]
    assert values[0] == pytest.approx(1 / warm)
    assert values[:warm] == sorted(values[:warm])  # rises linearly ...
    assert np.allclose(np.diff(values[:warm]), 1 / warm)
    assert values[warm - 1] == pytest.approx(1.0) and values[warm] == pytest.approx(1.0)  # ... to the peak
    after = values[warm:total + 1]
    assert all(a >= b for a, b in zip(after, after[1:]))  # then decays monotonically
    assert f(warm + (total - warm) // 2) == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-9)  # half-way: half
    assert values[total] == pytest.approx(0.01)  # to 1 % of the peak
    assert all(v == pytest.approx(0.01) for v in values[total:])  # and stays there
    assert min(values) >= 0.01 - 1e-12 and max(values) <= 1.0 + 1e-12


def _regression(seed=0):
    """A linear model learning y = 3x - 1: the simplest thing the loop can optimise."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(1, 1)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model):
        x = torch.rand(16, 1, generator=gen)
        loss = ((model(x) - (3 * x - 1)) ** 2).mean()
        return {"loss": loss, "mse": loss.detach()}

    return net, loss_fn


def test_objective_is_optimised_and_loss_is_what_is_shown():
    """A loss dict with ``objective``: the loop follows its gradient and reports ``loss`` as given."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    gen = torch.Generator().manual_seed(0)

    def loss_fn(model):
        x = torch.rand(16, 1, generator=gen)
        fit = ((model(x) - (3 * x - 1)) ** 2).mean()
        return {"objective": fit, "loss": torch.tensor(7.0)}  # a shown value without gradient: only the objective trains

    state = TrainState()
    events = list(train(net, loss_fn, total_steps=150, device=CPU, lr=0.1, state=state))
    assert all(e.losses["loss"] == 7.0 for e in events)
    assert state.log[-1]["objective"] < 0.05 * state.log[0]["objective"]
    assert net.weight.item() == pytest.approx(3.0, abs=0.3)

    def diverging(model):
        return {"objective": model.weight.sum() * float("nan"), "loss": torch.tensor(1.0)}

    with pytest.raises(DivergedError, match="nan"):
        list(train(net, diverging, total_steps=2, device=CPU, lr=0.1))


def test_train_yields_steps_and_learns():
    net, loss_fn = _regression()
    state = TrainState()
    events = list(train(net, loss_fn, total_steps=150, device=CPU, lr=0.1, state=state))
    assert [type(e) for e in events] == [StepEnd] * 150
    assert [e.step for e in events] == list(range(1, 151))
    assert state.step == 150 and not state.cancelled and len(state.log) == 150
    assert events[-1].losses["loss"] < 0.05 * events[0].losses["loss"]
    # the logged learning rate follows the schedule (peak 0.1, warm-up 15 steps)
    lrs = [row["lr"] for row in state.log]
    f = warmup_cosine(150, 15)
    assert lrs == pytest.approx([0.1 * f(s) for s in range(1, 151)])
    assert not net.training


def test_cancel_before_first_step():
    net, loss_fn = _regression()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    token = CancelToken()
    token.cancel()
    state = TrainState()
    events = list(train(net, loss_fn, total_steps=10, device=CPU, lr=0.1, cancel=token, state=state))
    assert events == [] and state.cancelled and state.step == 0 and state.log == []
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_cancel_before_first_step_api(tiny_config, disks, tmp_path):
    """A run cancelled before it starts still ends with RunCancelled and writes the (untrained) model."""
    image, _, labels = disks(0)
    token = CancelToken()
    token.cancel()
    events = list(api.iter_finetune(image, labels, tiny_config(steps=5), cancel=token, out_dir=str(tmp_path / "m")))
    assert [type(e).__name__ for e in events] == ["RunStarted", "RunCancelled"]
    assert events[-1].step == 0
    meta = load_model(tmp_path / "m").meta
    assert meta["lineage"]["finetune"] == {**meta["lineage"]["finetune"], "completed": False, "steps": 0}


def test_cancel_between_steps():
    net, loss_fn = _regression()
    token = CancelToken()
    state = TrainState()
    steps = []
    for event in train(net, loss_fn, total_steps=100, device=CPU, lr=0.1, cancel=token, state=state):
        steps.append(event.step)
        if event.step == 4:
            token.cancel()
    assert steps == [1, 2, 3, 4] and state.cancelled and state.step == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_clearly(bad):
    net, good_loss = _regression()
    calls = {"n": 0}

    def loss_fn(model):
        calls["n"] += 1
        losses = good_loss(model)
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * bad
        return losses

    state = TrainState()
    seen = []
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf) at step 3.*lower learning rate"):
        for event in train(net, loss_fn, total_steps=10, device=CPU, lr=0.1, state=state):
            seen.append(event.step)
            after_two = {k: v.clone() for k, v in net.state_dict().items()}
    assert seen == [1, 2] and state.step == 2
    # the bad step did not reach the weights: they are still finite and as they were after step 2
    for k, v in net.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, after_two[k])


def test_nan_in_finetune_surfaces_as_floating_point_error(tiny_config, disks, monkeypatch):
    image, _, labels = disks(0)

    def nan_loss(logits, target, *, dice_weight=1.0):
        return {"loss": logits.float().mean() * float("nan")}

    monkeypatch.setattr(api, "segmentation_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="at step 1"):
        list(api.iter_finetune(image, labels, tiny_config(steps=3)))


def test_previews_timed_and_at_end():
    net, loss_fn = _regression()
    asked = []

    def preview_fn(step):
        assert not net.training  # previews run in eval mode
        asked.append(step)
        return Preview(step=step, data=np.zeros((2, 2), np.uint8))

    # never due by time (an hour): only the final preview
    events = list(train(net, loss_fn, total_steps=5, device=CPU, lr=0.1, preview_fn=preview_fn, preview_every_s=3600))
    assert asked == [5] and isinstance(events[-1], Preview) and events[-1].step == 5
    # always due: one after every step, right after its StepEnd
    asked.clear()
    events = list(train(net, loss_fn, total_steps=3, device=CPU, lr=0.1, preview_fn=preview_fn, preview_every_s=1e-9))
    assert asked == [1, 2, 3]
    assert [type(e).__name__ for e in events] == ["StepEnd", "Preview"] * 3
    # a preview function may decline (None): nothing is yielded
    events = list(train(net, loss_fn, total_steps=2, device=CPU, lr=0.1, preview_fn=lambda s: None, preview_every_s=1e-9))
    assert all(isinstance(e, StepEnd) for e in events)
