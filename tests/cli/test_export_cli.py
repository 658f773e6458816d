"""``emssl export``: every format from a model directory, packages back into ``emssl predict``, one-line errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from napari_emssl import cli
from napari_emssl.export import load_any
from napari_emssl.export.graph import example_input, graph_spec, reference_output
from napari_emssl.export.onnx import run_onnx
from napari_emssl.io import write_image

from cli_helpers import assert_one_line_error, run  # tests/cli/cli_helpers.py


def test_onnx_and_torchscript(tiny_model_dir, tmp_path, capsys):
    model = load_any(tiny_model_dir)
    x = example_input(graph_spec(model), batch=2, side=48, seed=2)
    expected = reference_output(model, x)

    code, out, err = run(capsys, "export", "--model", tiny_model_dir, "--format", "onnx", "--out", tmp_path / "seg.onnx")
    assert code == 0, err
    assert "seg.onnx" in out and "max |difference| to PyTorch: onnx" in out
    assert np.abs(run_onnx(tmp_path / "seg.onnx", x.numpy()) - expected).max() < 1e-4

    folder = tmp_path / "exports"
    folder.mkdir()
    code, out, err = run(capsys, "export", "--model", tiny_model_dir, "--format", "torchscript", "--out", folder)
    assert code == 0, err
    written = folder / f"{tiny_model_dir.name}.pt"
    assert written.is_file()
    with torch.inference_mode():
        got = torch.jit.load(str(written))(x).numpy()
    assert np.abs(got - expected).max() < 1e-4


@pytest.fixture
def package(tiny_model_dir, disks, tmp_path, capsys, offline):
    """``emssl export --format bioimageio`` with every package option; returns (package, test image path)."""
    image, _, _ = disks(3)
    test_image = tmp_path / "mine.tif"
    write_image(test_image, image.astype(np.uint16))
    package = tmp_path / "mito.zip"
    code, out, err = run(capsys, "export", "--model", tiny_model_dir, "--format", "bioimageio", "--out", package,
                         "--name", "Mito segmentation", "--author", "Ada Lovelace", "--license", "MIT", "--test-image", test_image)
    assert code == 0, err
    assert "bioimage.io validation: " in out and ("passed" in out or "valid-format" in out)
    assert package.is_file()
    return package, test_image


def test_bioimageio_package(package):
    path, _ = package
    model = load_any(path)
    assert model.task == "segment"


def test_predict_applies_a_package(package, tmp_path, capsys):
    path, test_image = package
    code, out, err = run(capsys, "predict", "--model", path, "--input", test_image, "--out", tmp_path / "pred",
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    assert (tmp_path / "pred" / "mine.tif").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--model", "{tmp}/missing", "--format", "onnx", "--out", "{tmp}/m.onnx"], ["does not exist"]),
    (["--model", "{model}", "--format", "tflite", "--out", "{tmp}/m.onnx"], ["unknown export format 'tflite'", "onnx"]),
    (["--model", "{model}", "--format", "onnx", "--out", "{tmp}/file.txt/m.onnx"], ["cannot write", "is a file, not a folder"]),
    (["--model", "{model}", "--format", "bioimageio", "--out", "{tmp}/full"], ["not an empty folder"]),
    (["--model", "{model}", "--format", "bioimageio", "--out", "{tmp}/p.zip", "--name", "a/b"], ["not allowed"]),
    (["--model", "{model}", "--format", "bioimageio", "--out", "{tmp}/p.zip", "--license", "my-own"], ["unknown licence 'my-own'"]),
])
def test_bad_input_is_one_line_and_exit_1(tiny_model_dir, tmp_path, capsys, argv, words):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in argv]
    code, out, err = run(capsys, "export", *argv)
    assert code == 1
    assert_one_line_error(err, *words)


def test_help_lists_the_formats(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "{bioimageio,onnx,torchscript}" in out and "--license" in out
