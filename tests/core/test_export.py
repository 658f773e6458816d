"""Exports (ONNX, TorchScript, bioimage.io) compute what napari-emssl computes, and packages come back as models.

Tiny models on the CPU: a segmentation model (the session's ``tiny_model``), a x2
super-resolution model fine-tuned for two steps, and a denoising model built directly.
bioimage.io validation runs with every socket connection refused: it must need no network.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_ARCH, TINY_ARCH_KWARGS, make_disks
from napari_emssl import api
from napari_emssl.config import FinetuneConfig, PredictConfig
from napari_emssl.data.normalize import percentile_normalize
from napari_emssl.engine.model_dir import TrainedModel, build_meta
from napari_emssl.errors import EmsslError, InputError, ModelFormatError
from napari_emssl.export import check_export, export, export_model, load_any, output_path
from napari_emssl.export.bioimageio import check_name, validate_package
from napari_emssl.export.graph import example_input, graph_spec, reference_output
from napari_emssl.export.onnx import onnx_bytes, run_onnx
from napari_emssl.export.torchscript import run_torchscript
from napari_emssl.tasks import superres
from napari_emssl.models import create_model

TOLERANCE = 1e-4  # measured: <= 3e-7 for these models


@pytest.fixture(scope="module")
def superres_model():
    image, _, _ = make_disks(1)
    config = FinetuneConfig(task="superres", factor=2, arch=TINY_ARCH, arch_kwargs=dict(TINY_ARCH_KWARGS), steps=2,
                            batch_size=2, patch_size=32, init="random", device="cpu", preview_every_s=0)
    return api.finetune(image, None, config).model


@pytest.fixture(scope="module")
def denoise_model():
    torch.manual_seed(0)
    net = create_model(TINY_ARCH, in_channels=1, out_channels=1, **TINY_ARCH_KWARGS).eval()
    meta = build_meta(net, task="denoise", out_channels=1, factor=1, normalization={"method": "percentile", "low": 1.0, "high": 99.8},
                      tile=64, overlap=24, seed=0, lineage={"init": {"init": "random"}}, metrics={}, mean_correction=16.0, leak_correction=0.5)
    return TrainedModel(net=net, meta=meta)


@pytest.fixture
def models(tiny_model, superres_model, denoise_model):
    return {"segment": tiny_model, "superres": superres_model, "denoise": denoise_model}


def _random_batch(model, seed=3):
    spec = graph_spec(model)
    side = spec.sample_side + 3 * spec.step  # not the traced size
    return example_input(spec, batch=2, side=side, seed=seed)


@pytest.mark.parametrize("task", ["segment", "superres", "denoise"])
def test_onnx_matches_pytorch(models, task, tmp_path):
    model = models[task]
    path = export_model(model, "onnx", tmp_path / "m.onnx")
    x = _random_batch(model)
    expected = reference_output(model, x)
    got = run_onnx(path, x.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE
    if task == "superres":
        assert got.shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1])
    if task == "segment":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # probabilities, the softmax is in the graph


@pytest.mark.parametrize("task", ["segment", "superres", "denoise"])
def test_torchscript_matches_pytorch(models, task, tmp_path):
    model = models[task]
    path = export_model(model, "torchscript", tmp_path / "m.pt")
    x = _random_batch(model)
    module = torch.jit.load(str(path))
    with torch.inference_mode():
        got = module(x).numpy()
    assert np.abs(got - reference_output(model, x)).max() < TOLERANCE
    diff, tolerance = check_export(path, "torchscript", model)
    assert diff <= tolerance


@pytest.mark.parametrize("task", ["segment", "superres"])
def test_exported_graph_is_what_predict_computes(models, task):
    """On one tile, the graph on the normalised image equals api.predict (probabilities / normalised restoration); a
    super-resolution model's back-projection is added after the graph as the package's docs say."""
    model = models[task]
    image, _, _ = make_disks(4, shape=(64, 64))
    factor = graph_spec(model).factor
    result = api.predict(model, image, PredictConfig(device="cpu", tile=64 * factor, overlap=0, amp=False, probabilities=True, tta=False))
    norm, stats = percentile_normalize(image, 1.0, 99.8)
    graph = run_torchscript_bytes(model, norm)
    if task == "segment":
        ours = result.probabilities
    else:
        ours = (result.image - stats.p_low) / (stats.p_high - stats.p_low)
        assert model.meta["back_projection"] == 5
        graph = superres.back_project(graph[0, 0], norm, factor, model.meta["back_projection"])[None]
    assert np.abs(graph[0] - ours).max() < 1e-4


def run_torchscript_bytes(model, norm):
    from napari_emssl.export.torchscript import torchscript_bytes

    return run_torchscript(torchscript_bytes(model), norm[None, None])


def _read_rdf(package: Path) -> str:
    if package.is_dir():
        return (package / "rdf.yaml").read_text()
    with zipfile.ZipFile(package) as archive:
        return archive.read("rdf.yaml").decode()


def _package_file(package: Path, name: str) -> bytes:
    if package.is_dir():
        return (package / name).read_bytes()
    with zipfile.ZipFile(package) as archive:
        return archive.read(name)


@pytest.mark.parametrize("task, zipped", [("segment", True), ("superres", False), ("denoise", False)])
def test_bioimageio_package_validates_and_reproduces(models, task, zipped, tmp_path, offline):
    model = models[task]
    out = tmp_path / ("model.zip" if zipped else "package")
    report = export(model, "bioimageio", out)
    assert report.path == out and report.status in ("passed", "valid-format")
    assert validate_package(out, run_model=False) == "valid-format"  # bioimageio.spec alone: every static check passed
    rdf = _read_rdf(out)
    for needle in ("format_version: 0.5", "license: CC-BY-4.0", "napari-emssl user", "scale_range", "max_percentile: 99.8",
                   "model.safetensors", "model.json", "cover.png", "README.md", "torchscript", "onnx", "napari_emssl"):
        assert needle in rdf, needle
    # the test output is reproduced by every weights format from the test input (what bioimage.io's model test does)
    import io

    raw = np.load(io.BytesIO(_package_file(out, "test_input.npy")))
    expected = np.load(io.BytesIO(_package_file(out, "test_output.npy")))
    low, high = np.percentile(raw, [1.0, 99.8])
    x = ((raw - low) / (high - low + 1e-6)).astype(np.float32)
    assert expected.shape[-2:] == tuple(s * graph_spec(model).factor for s in raw.shape[-2:])
    assert np.abs(run_onnx(_package_file(out, "weights.onnx"), x) - expected).max() < TOLERANCE
    assert np.abs(run_torchscript(_package_file(out, "weights_torchscript.pt"), x) - expected).max() < TOLERANCE
    readme = _package_file(out, "README.md").decode()
    assert TINY_ARCH in readme and "Training lineage" in readme
    # the graph is the network alone: the whole-image mean correction of a denoiser is described, not exported
    assert ("Mean correction" in readme and "sigma 16 px" in readme) == (task == "denoise")
    assert ("Leak correction" in readme and "f = 0.5" in readme) == (task == "denoise")
    from PIL import Image

    cover = Image.open(io.BytesIO(_package_file(out, "cover.png")))
    assert cover.size[0] == 2 * cover.size[1]


def test_bioimageio_model_test_passes_when_core_is_installed(tiny_model, tmp_path, offline):
    pytest.importorskip("bioimageio.core")
    out = export(tiny_model, "bioimageio", tmp_path / "m.zip").path
    assert validate_package(out) == "passed"


def test_package_options_and_reimport(tiny_model, tmp_path, offline):
    out = export(tiny_model, "bioimageio", tmp_path / "named.zip", name="Mito model (x)", authors=["Ada Lovelace", "Alan Turing"],
                 license="MIT", description="Mitochondria in ssTEM.").path
    rdf = _read_rdf(out)
    assert "Mito model (x)" in rdf and "Ada Lovelace" in rdf and "Alan Turing" in rdf and "license: MIT" in rdf
    back = load_any(out)
    assert back.meta["task"] == "segment" and back.meta["arch_kwargs"] == tiny_model.meta["arch_kwargs"]
    for key, value in tiny_model.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[key], value), key
    image, _, _ = make_disks(5)
    config = PredictConfig(device="cpu", amp=False)
    assert np.array_equal(api.predict(back, image, config).labels, api.predict(tiny_model, image, config).labels)


def test_unpacked_package_loads(superres_model, tmp_path, offline):
    folder = export_model(superres_model, "bioimageio", tmp_path / "pkg")
    back = load_any(folder)
    assert back.task == "superres" and back.meta["factor"] == 2


def test_foreign_packages_and_zips_are_refused(tmp_path):
    foreign = tmp_path / "other.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
        archive.writestr("weights.onnx", b"\0")
    with pytest.raises(ModelFormatError, match="not made by napari-emssl"):
        load_any(foreign)
    folder = tmp_path / "unpacked"
    folder.mkdir()
    (folder / "rdf.yaml").write_text("type: model\n")
    with pytest.raises(ModelFormatError, match="not made by napari-emssl"):
        load_any(folder)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("a.txt", "x")
    with pytest.raises(ModelFormatError, match="not a bioimage.io package"):
        load_any(plain)
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_any(tmp_path / "missing")


def test_load_any_passes_model_directories_through(tiny_model_dir, tiny_model):
    assert load_any(tiny_model_dir).meta["arch"] == tiny_model.meta["arch"]
    assert load_any(tiny_model) is tiny_model


def test_bad_requests(tiny_model, tmp_path):
    with pytest.raises(InputError, match="unknown export format 'tflite'"):
        export_model(tiny_model, "tflite", tmp_path / "x")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        output_path(blocker / "m.onnx", "onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        output_path(tmp_path / "full", "bioimageio")
    assert output_path(f"{tmp_path / 'new'}/", "onnx", "seg") == tmp_path / "new" / "seg.onnx"  # "DIR/": a folder
    with pytest.raises(InputError, match="not allowed"):
        check_name("bad/name")
    with pytest.raises(ModelFormatError, match="does not exist"):
        export_model(str(tmp_path / "missing"), "onnx", tmp_path / "m.onnx")


def test_missing_onnx_package_is_one_clear_error(tiny_model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(EmsslError, match="pip install 'napari-emssl\\[export\\]'"):
        onnx_bytes(tiny_model)


def test_export_leaves_the_model_unchanged(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    training = tiny_model.net.training
    export_model(tiny_model, "torchscript", tmp_path / "m.pt")
    assert tiny_model.net.training == training
    assert all(torch.equal(before[k], v) for k, v in tiny_model.net.state_dict().items())
    assert json.dumps(tiny_model.meta, default=str)  # meta still plain data


def test_load_model_hook(tiny_model, tiny_model_dir, tmp_path, offline):
    """``load_package_or_none``: a model for zipped packages, None for what load_model handles itself."""
    from napari_emssl.export.importer import load_package_or_none

    package = export_model(tiny_model, "bioimageio", tmp_path / "p.zip")
    assert load_package_or_none(package).task == "segment"
    assert load_package_or_none(tiny_model_dir) is None
    assert load_package_or_none(tiny_model_dir / "model.json") is None
    assert load_package_or_none(tmp_path / "missing") is None
    folder = export_model(tiny_model, "bioimageio", tmp_path / "unpacked")
    assert load_package_or_none(folder) is None  # an unpacked package is a model directory as well
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "rdf.yaml").write_text("type: model\n")
    with pytest.raises(ModelFormatError, match="not made by napari-emssl"):
        load_package_or_none(tmp_path / "foreign")


def test_onnx_fallback_exporter_matches_pytorch(tiny_model):
    """The torch.export-based exporter, used where the TorchScript-based one is unavailable."""
    import io

    from napari_emssl.export.graph import exported_network
    from napari_emssl.export.onnx import _export_dynamo

    spec = graph_spec(tiny_model)
    buffer = io.BytesIO()
    _export_dynamo(exported_network(tiny_model), example_input(spec), buffer, spec.dynamic)
    x = _random_batch(tiny_model)
    assert np.abs(run_onnx(buffer.getvalue(), x.numpy()) - reference_output(tiny_model, x)).max() < TOLERANCE


def test_package_export_leaves_the_model_in_training_mode(tiny_model, tmp_path, offline):
    before = tiny_model.net.training
    tiny_model.net.train()
    try:
        export_model(tiny_model, "bioimageio", tmp_path / "p.zip")
        assert tiny_model.net.training
    finally:
        tiny_model.net.train(before)
