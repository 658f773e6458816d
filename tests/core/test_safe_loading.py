"""Safe loading: weights only from safetensors; pickles refused unread; model.json checked against its schema.

Every malicious file here is a pickle whose ``__reduce__`` would create a marker file when
unpickled. Each test asserts the load is refused with a :class:`ModelFormatError` that says
what is wrong, and that the marker file was never created.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_emssl import api, cli
from napari_emssl.engine import checkpoint as ckpt
from napari_emssl.engine.model_dir import load_model
from napari_emssl.engine.model_schema import json_schema, validate_model_meta
from napari_emssl.errors import ModelFormatError

SRC = Path(__file__).resolve().parents[2] / "src" / "napari_emssl"


class _Evil:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"conv.weight": _Evil(marker)}, protocol=4))
    return path


def _torch_save(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": _Evil(marker)}, path)  # the zip format of torch.save, pickle inside
    return path


WRITERS = {"pickle": _raw_pickle, "torch.save": _torch_save}
PICKLE_WORDS = r"pickle.*never unpickles"


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER_code_ran"
    yield path
    assert not path.exists(), "a pickle was unpickled: its code ran"


def test_the_malicious_pickle_does_run_code_when_unpickled(tmp_path):
    """The fixture is real: plain unpickling creates the marker (so its absence below means something)."""
    marker = tmp_path / "proof"
    pickle.loads(_raw_pickle(tmp_path / "x.pkl", marker).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_pickle_saved_as_model_safetensors_is_refused(tiny_model_dir, tmp_path, marker, writer):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    WRITERS[writer](model / "model.safetensors", marker)
    with pytest.raises(ModelFormatError, match=r"model.safetensors is not a readable safetensors file: .*" + PICKLE_WORDS):
        load_model(model)
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ModelFormatError, match=PICKLE_WORDS):
        api.predict(str(model), image)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_pickle_file_as_model_or_init_is_refused(tmp_path, marker, tiny_config, disks, writer, suffix):
    evil = WRITERS[writer](tmp_path / f"weights{suffix}", marker)
    with pytest.raises(ModelFormatError, match=r"is a file, not a model directory: .*" + PICKLE_WORDS):
        load_model(evil)
    with pytest.raises(ModelFormatError, match=PICKLE_WORDS):
        api.predict(str(evil), np.zeros((16, 16), np.float32))
    image, _, labels = disks(0)
    with pytest.raises(ModelFormatError, match=PICKLE_WORDS):
        api.finetune(image, labels, tiny_config(init=str(evil)))


def test_pickle_file_refused_by_the_command_line(tmp_path, marker, capsys):
    evil = _torch_save(tmp_path / "model.pth", marker)
    image = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(image, np.zeros((16, 16), np.uint8))
    assert cli.main(["predict", "--model", str(evil), "--input", str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert re.search(PICKLE_WORDS, err) and "Traceback" not in err


def test_folder_with_only_a_pickle_says_so(tmp_path, marker):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    _torch_save(folder / "model.pt", marker)
    with pytest.raises(ModelFormatError, match=r"not a model directory.*model.pt: pickle files are never loaded"):
        load_model(folder)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_pickle_as_pretrained_weights_is_refused(tiny_model_dir, tmp_path, marker, tiny_config, disks, writer):
    """A pretrain model directory (``--init DIR`` with task ``pretrain``) whose weights file is a pickle."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    meta.update(task="pretrain", method="gan")
    (folder / "model.json").write_text(json.dumps(meta))
    WRITERS[writer](folder / "model.safetensors", marker)
    with pytest.raises(ModelFormatError, match=PICKLE_WORDS):
        ckpt.read_pretrained(folder)
    image, _, labels = disks(0)
    with pytest.raises(ModelFormatError, match=PICKLE_WORDS):
        api.finetune(image, labels, tiny_config(init=str(folder)))


def _checkpoint_dir(tmp_path: Path) -> Path:
    """A real (tiny) pretraining checkpoint."""
    net = torch.nn.Conv2d(1, 2, 3)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.zeros(1, 1, 5, 5)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out = tmp_path / "run"
    ckpt.save_checkpoint(out, pretext=net, optimisers={"main": opt}, schedulers={"main": sched}, step=3, total_steps=9,
                         info={"method": "gan", "arch": "toy", "arch_kwargs": {}})
    assert ckpt.load_checkpoint(out).step == 3
    return out


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_pickle_as_checkpoint_weights_is_refused(tmp_path, marker, writer):
    out = _checkpoint_dir(tmp_path)
    name = json.loads((out / "checkpoint.json").read_text())["weights_file"]
    WRITERS[writer](out / name, marker)
    with pytest.raises(ModelFormatError, match=r"checkpoint .* is not a safetensors file: .*" + PICKLE_WORDS):
        ckpt.load_checkpoint(out)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_checkpoint_naming_a_pickle_file_is_refused(tmp_path, marker, suffix):
    out = _checkpoint_dir(tmp_path)
    meta = json.loads((out / "checkpoint.json").read_text())
    meta["weights_file"] = f"checkpoint{suffix}"
    (out / "checkpoint.json").write_text(json.dumps(meta))
    _torch_save(out / f"checkpoint{suffix}", marker)
    with pytest.raises(ModelFormatError, match=r"names the weights file .*" + PICKLE_WORDS):
        ckpt.load_checkpoint(out)


def test_no_unpickling_call_anywhere_in_the_package():
    """Audit: nothing under src/ calls torch.load (without weights_only=True), pickle.load(s), np.load with pickles, joblib or dill."""
    bad = re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)|pickle\.loads?\(|cPickle|allow_pickle\s*=\s*True|"
                     r"joblib\.load|dill\.load|torch\.hub\.load")
    hits = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
            for path in SRC.rglob("*.py") for n, line in enumerate(path.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits


# ---------------------------------------------------------------------------------------------- model.json schema


def _good_meta() -> dict:
    return {
        "format_version": 1, "package_version": "0.1.0", "arch": "resunet_b2_rf44", "arch_kwargs": {"base_channels": 4},
        "in_channels": 1, "out_channels": 2, "receptive_field": 44, "size_multiple": 4, "task": "segment",
        "input_axes": "YX", "classes": [1, 2], "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
        "tile": 256, "overlap": 32, "seed": 0, "config": {}, "lineage": {}, "metrics": {}, "future_field": [1, 2, 3],
    }


def _with(**changes) -> dict:
    meta = copy.deepcopy(_good_meta())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


_DROP = object()

GOOD = {
    "full": _good_meta(),
    "minimal": {k: _good_meta()[k] for k in ("format_version", "arch", "arch_kwargs", "in_channels", "out_channels", "task")},
    "superres": _with(task="superres", out_channels=1, factor=4, classes=_DROP),
    "superres back-projected": _with(task="superres", out_channels=1, factor=2, classes=_DROP, back_projection=5),
    "denoise": _with(task="denoise", out_channels=1, classes=_DROP, mean_correction=16.0, leak_correction=0.5),
    "denoise factor 1": _with(task="denoise", out_channels=1, factor=1, classes=_DROP),
    "denoise auto leak share": _with(task="denoise", out_channels=1, classes=_DROP, leak_correction="auto"),
    "seed null": _with(seed=None),
    "no classes": _with(classes=[]),
}
# (meta, the field the message names): both the validator and the JSON Schema refuse these
BAD = {
    "not an object": ([1, 2], "JSON object"),
    "no arch": (_with(arch=_DROP), "arch"),
    "no task": (_with(task=_DROP), "task"),
    "version is a string": (_with(format_version="1"), "format_version"),
    "version is a bool": (_with(format_version=True), "format_version"),
    "arch is a number": (_with(arch=3), "arch"),
    "arch is empty": (_with(arch=""), "arch"),
    "arch_kwargs is a list": (_with(arch_kwargs=[4]), "arch_kwargs"),
    "in_channels zero": (_with(in_channels=0), "in_channels"),
    "out_channels negative": (_with(out_channels=-2), "out_channels"),
    "out_channels a string": (_with(out_channels="2"), "out_channels"),
    "unknown task": (_with(task="classify"), "task"),
    "classes not ints": (_with(classes=["a", "b"]), "classes"),
    "class zero": (_with(classes=[0, 1]), "classes"),
    "classes repeated": (_with(classes=[1, 1]), "classes"),
    "normalization a list": (_with(normalization=[1, 99]), "normalization"),
    "normalization lacks high": (_with(normalization={"low": 1.0}), "normalization"),
    "normalization low a string": (_with(normalization={"low": "1", "high": 99.0}), "normalization.low"),
    "normalization above 100": (_with(normalization={"low": 1.0, "high": 150.0}), "normalization.high"),
    "factor 3": (_with(factor=3), "factor"),
    "factor a string": (_with(factor="2"), "factor"),
    "tile zero": (_with(tile=0), "tile"),
    "tile a string": (_with(tile="256"), "tile"),
    "overlap negative": (_with(overlap=-1), "overlap"),
    "seed a string": (_with(seed="0"), "seed"),
    "lineage a string": (_with(lineage="x"), "lineage"),
    "receptive_field a float": (_with(receptive_field=44.5), "receptive_field"),
    "mean_correction negative": (_with(task="denoise", out_channels=1, classes=_DROP, mean_correction=-1.0), "mean_correction"),
    "mean_correction a string": (_with(task="denoise", out_channels=1, classes=_DROP, mean_correction="16"), "mean_correction"),
    "leak_correction above 1": (_with(task="denoise", out_channels=1, classes=_DROP, leak_correction=1.5), "leak_correction"),
    "leak_correction a string": (_with(task="denoise", out_channels=1, classes=_DROP, leak_correction="0.5"), "leak_correction"),
    "back_projection negative": (_with(task="superres", out_channels=1, factor=2, classes=_DROP, back_projection=-1), "back_projection"),
    "back_projection a float": (_with(task="superres", out_channels=1, factor=2, classes=_DROP, back_projection=2.5), "back_projection"),
}
# rules that JSON Schema cannot say: refused by the validator only
VALIDATOR_ONLY = {
    "low not below high": (_with(normalization={"low": 50.0, "high": 50.0}), "normalization"),
    "classes vs channels": (_with(classes=[1, 2, 3]), "classes"),
    "integral float": (_with(in_channels=1.0), "in_channels"),
}


def _schema_errors(meta) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    return [e.message for e in validator.iter_errors(meta)]


def test_schema_file_is_valid_json_schema_and_knows_the_tasks():
    from napari_emssl.config import TASKS

    schema = json_schema()
    assert schema["properties"]["task"]["enum"] == list(TASKS)
    assert schema["required"] == ["format_version", "arch", "arch_kwargs", "in_channels", "out_channels", "task"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_file_is_package_data():
    text = (SRC.parents[1] / "pyproject.toml").read_text()
    assert "engine/*.json" in text and (SRC / "engine" / "model.schema.json").is_file()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_validator_and_schema_accept(name):
    assert validate_model_meta(GOOD[name]) is GOOD[name]
    assert _schema_errors(GOOD[name]) == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_validator_and_schema_refuse_naming_the_field(name):
    meta, field = BAD[name]
    with pytest.raises(ModelFormatError) as err:
        validate_model_meta(meta, source="m/model.json")
    assert field in str(err.value) and str(err.value).startswith("m/model.json")
    assert _schema_errors(meta), f"the JSON Schema accepts {name!r}"


@pytest.mark.parametrize("name", sorted(VALIDATOR_ONLY))
def test_validator_only_rules(name):
    meta, field = VALIDATOR_ONLY[name]
    with pytest.raises(ModelFormatError, match=re.escape(field)):
        validate_model_meta(meta)


def test_saved_models_pass_the_schema(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    validate_model_meta(meta)
    assert _schema_errors(meta) == []


@pytest.mark.parametrize("field, value, words", [
    ("normalization", {"low": 99.0, "high": 1.0}, "low < high"),
    ("classes", [1, "x"], "field 'classes' must be a list of integers"),
    ("in_channels", "1", "field 'in_channels' must be an integer >= 1"),
    ("tile", -5, "field 'tile'"),
])
def test_load_model_runs_the_validator(tiny_model_dir, tmp_path, field, value, words):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    meta[field] = value
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=re.escape(words)):
        load_model(model)


def test_model_json_asking_for_a_huge_network_is_refused_before_building_it(tiny_model_dir, tmp_path):
    """base_channels 1024 on a 4-level U-Net is billions of weights (tens of GB): checked against the weights file first."""
    import time

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    meta.update(arch="resunet_b4_rf424", arch_kwargs={"base_channels": 1024})
    (model / "model.json").write_text(json.dumps(meta))
    started = time.perf_counter()
    with pytest.raises(ModelFormatError, match="do not fit the architecture"):
        load_model(model)
    assert time.perf_counter() - started < 10
