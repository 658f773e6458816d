"""The model directory: model.safetensors + model.json + log.csv; refusals with clear messages."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_emssl import __version__
from napari_emssl.engine import model_dir
from napari_emssl.engine.model_dir import FORMAT_VERSION, TrainedModel, load_model
from napari_emssl.errors import ModelFormatError
from napari_emssl.models import create_model


@pytest.fixture
def saved(tiny_model_dir, tmp_path):
    """A private copy of the tiny model directory, free to damage."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def _edit_meta(directory, **changes):
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del meta[key]
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


_DELETE = object()


def test_files_and_metadata(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["log.csv", "model.json", "model.safetensors"]
    meta = json.loads((saved / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["package_version"] == __version__
    assert meta["arch"] == "resunet_b2_rf44" and meta["arch_kwargs"]["base_channels"] == 4
    assert meta["task"] == "segment" and meta["classes"] == [1, 2] and meta["out_channels"] == 2
    for key in ("normalization", "input_axes", "seed", "lineage", "metrics", "receptive_field", "size_multiple", "config"):
        assert key in meta, key
    header, *rows = (saved / "log.csv").read_text().splitlines()
    assert header.split(",")[:2] == ["step", "ce"] and "loss" in header and "seconds" in header
    assert [int(float(r.split(",")[0])) for r in rows] == [1, 2, 3]
    # weights only: a plain safetensors file that loads without pickle
    assert set(load_file(str(saved / "model.safetensors"))) == set(create_model(
        "resunet_b2_rf44", out_channels=2, base_channels=4).state_dict())


def test_save_load_identical_outputs(tiny_model, saved):
    loaded = load_model(saved)
    assert loaded.meta["arch"] == tiny_model.meta["arch"] and loaded.classes == [1, 2] and loaded.task == "segment"
    assert len(loaded.log) == 3 and loaded.log[0]["step"] == 1.0
    assert not loaded.net.training
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        tiny_model.net.eval()
        np.testing.assert_array_equal(tiny_model.net(x).numpy(), loaded.net(x).numpy())
    # also from the path of a file inside the directory
    assert load_model(saved / "model.json").meta == loaded.meta


def test_save_is_atomic_and_leaves_no_temp_files(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "m"
    tiny_model.save(target)
    tiny_model.save(target)  # overwriting is fine
    assert sorted(p.name for p in target.iterdir()) == ["log.csv", "model.json", "model.safetensors"]
    before = (target / "model.safetensors").read_bytes()

    def failing_save_file(state, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model_dir, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save(target)
    assert (target / "model.safetensors").read_bytes() == before  # the old weights survive
    assert sorted(p.name for p in target.iterdir()) == ["log.csv", "model.json", "model.safetensors"]
    load_model(target)


def test_unknown_format_version_refused(saved):
    _edit_meta(saved, format_version=99)
    with pytest.raises(ModelFormatError, match=r"format version 99.*reads version 1"):
        load_model(saved)


@pytest.mark.parametrize("key", ["arch", "task", "out_channels", "format_version"])
def test_missing_keys_named(saved, key):
    _edit_meta(saved, **{key: _DELETE})
    with pytest.raises(ModelFormatError, match=f"lacks required field.*{key}"):
        load_model(saved)


def test_invalid_json_refused(saved):
    (saved / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(saved)


def test_unknown_architecture_refused(saved):
    _edit_meta(saved, arch="no_such_net")
    with pytest.raises(ModelFormatError, match="unknown model architecture 'no_such_net'"):
        load_model(saved)


def test_arch_kwargs_must_be_an_object(saved):
    _edit_meta(saved, arch_kwargs=[4])
    with pytest.raises(ModelFormatError, match="arch_kwargs"):
        load_model(saved)


def test_missing_files_refused(saved, tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="not a model directory.*model.safetensors"):
        load_model(saved)


def test_task_checked_when_asked(saved):
    assert load_model(saved, task="segment").task == "segment"
    with pytest.raises(ModelFormatError, match="trained for task 'segment', not 'denoise'"):
        load_model(saved, task="denoise")


def test_weights_of_another_shape_refused_naming_tensors(saved):
    other = create_model("resunet_b2_rf44", out_channels=3, base_channels=4)  # 3 classes, meta says 2
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(saved / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="do not fit") as err:
        load_model(saved)
    message = str(err.value)
    assert "wrong shape" in message and "(3," in message and "(2," in message
    wrong = [k for k, v in other.state_dict().items()
             if v.shape != create_model("resunet_b2_rf44", out_channels=2, base_channels=4).state_dict()[k].shape]
    assert any(name in message for name in wrong)


def test_missing_and_unexpected_tensors_refused(saved):
    state = load_file(str(saved / "model.safetensors"))
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=f"1 missing \\(e.g. {dropped}\\).*1 unexpected \\(e.g. extra.weight\\)"):
        load_model(saved)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a safetensors file at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1", "truncated"],
    ids=["empty", "text", "bad-header", "truncated"],
)
def test_corrupt_weights_refused(saved, content):
    weights = saved / "model.safetensors"
    if content == "truncated":
        content = weights.read_bytes()[: weights.stat().st_size // 2]
    weights.write_bytes(content)
    with pytest.raises(ModelFormatError, match="model.safetensors"):
        load_model(saved)


class _Payload:
    """Unpickling this creates the marker file: proof that the pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_named_safetensors_is_refused_unexecuted(saved, tmp_path, writer):
    marker = tmp_path / "pwned"
    weights = saved / "model.safetensors"
    if writer == "pickle":
        weights.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    else:
        torch.save({"weight": _Payload(marker)}, str(weights))

    # the payload is live: unpickling it elsewhere would create a marker
    probe = tmp_path / "probe"
    if writer == "pickle":
        pickle.loads(pickle.dumps(_Payload(probe)))
        assert probe.exists()

    with pytest.raises(ModelFormatError, match="not a readable safetensors file"):
        load_model(saved)
    assert not marker.exists()


def test_damaged_log_does_not_block_loading(saved):
    (saved / "log.csv").write_text("step,loss\n1,0.5\n2,garbage\n")
    loaded = load_model(saved)
    assert loaded.log == [{"step": 1.0, "loss": 0.5}, {"step": 2.0}]


def test_save_without_log(tiny_model, tmp_path):
    TrainedModel(net=tiny_model.net, meta=dict(tiny_model.meta)).save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    assert load_model(tmp_path / "m").log == []


def test_unjsonable_meta_refused_on_save(tiny_model, tmp_path):
    meta = dict(tiny_model.meta, extra=object())
    with pytest.raises(TypeError, match="cannot store object"):
        TrainedModel(net=tiny_model.net, meta=meta).save(tmp_path / "m")
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())
