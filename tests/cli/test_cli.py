"""The ``emssl`` command line: round trips, exit codes, one-line errors, Ctrl-C, demo.

Most tests call :func:`napari_emssl.cli.main` in-process (fast); the ones about what a
user sees in a terminal (tracebacks, SIGINT, ``--help``) run ``python -m napari_emssl.cli``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_emssl import api, cli
from napari_emssl.config import PredictConfig
from napari_emssl.engine.model_dir import TrainedModel, load_model
from napari_emssl.errors import InputError
from napari_emssl.io import read_image, write_image

from cli_helpers import assert_one_line_error, run  # tests/cli/cli_helpers.py

TINY = ["--arch", "resunet_b2_rf44", "--arch-kwargs", '{"base_channels": 4}', "--patch-size", "32", "--batch-size", "2",
        "--device", "cpu", "--init", "random"]
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.fixture
def files(tmp_path, disks):
    """Tiny TIFFs: a 2D image with a pixel size, its strokes, and a 3D stack."""
    image, _, labels = disks(0)
    paths = {"image": tmp_path / "cells.tif", "labels": tmp_path / "cells_labels.tif", "stack": tmp_path / "stack.ome.tif"}
    write_image(paths["image"], image.astype(np.uint16), scale=(0.005, 0.004))
    write_image(paths["labels"], labels)
    stack = np.stack([disks(s)[0] for s in (1, 2, 3)]).astype(np.float32)
    write_image(paths["stack"], stack, scale=(0.05, 0.004, 0.004))
    return {k: str(v) for k, v in paths.items()}


def python_cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "napari_emssl.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=SUBPROCESS_ENV)


# ---------------------------------------------------------------------------------------------- help, models


def test_help_lists_commands():
    proc = python_cli("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("finetune", "predict", "models", "demo"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["finetune", "predict", "models", "demo"])
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: emssl " + command in capsys.readouterr().out


def test_finetune_help_documents_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    out = capsys.readouterr().out
    for option in ("--task", "--image", "--labels", "--target", "--out", "--init", "--steps", "--epochs", "--device",
                   "--factor", "--arch", "--arch-kwargs", "--debug"):
        assert option in out, option


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "--image", "x.tif"])  # --out missing
    assert exit_info.value.code == 2


def test_models_lists_architectures(capsys, tiny_model_dir, tmp_path):
    from napari_emssl.models import list_models

    code, out, _ = run(capsys, "models")
    assert code == 0
    for info in list_models():
        assert info.name in out
    assert "resunet_b2_rf44" in out and "bundled pretrained weights" in out
    from napari_emssl import zoo

    for entry in zoo.list_bundled():  # every bundled entry, with its method and pretraining length
        line = next(x for x in out.splitlines() if x.strip().startswith(entry.name))
        assert entry.method in line and f"{entry.card['steps']} steps" in line

    shutil.copytree(tiny_model_dir, tmp_path / "zoo" / "good")
    (tmp_path / "zoo" / "bad").mkdir(parents=True)
    (tmp_path / "zoo" / "bad" / "model.json").write_text("{}")
    code, out, _ = run(capsys, "models", "--dir", tmp_path / "zoo")
    assert code == 0
    good = [line for line in out.splitlines() if str(tmp_path / "zoo" / "good") in line]
    bad = [line for line in out.splitlines() if str(tmp_path / "zoo" / "bad") in line]
    assert good and "segment" in good[0] and "resunet_b2_rf44" in good[0]
    assert bad and "unreadable" in bad[0]


# ---------------------------------------------------------------------------------------------- round trip


def test_finetune_then_predict(capsys, files, tmp_path):
    model = tmp_path / "model"
    code, out, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out", model,
                         "--steps", 4, "--quiet", *TINY)
    assert code == 0, err
    assert f"model written to {model}" in out and "4 steps" in out and "Dice" in out
    meta = json.loads((model / "model.json").read_text())
    assert meta["arch"] == "resunet_b2_rf44" and meta["arch_kwargs"]["base_channels"] == 4
    assert meta["lineage"]["finetune"]["source"] == files["image"] and meta["lineage"]["finetune"]["completed"]
    assert meta["config"]["patch_size"] == 32 and meta["config"]["batch_size"] == 2
    assert (model / "model.safetensors").is_file() and (model / "log.csv").is_file()

    out_dir = tmp_path / "pred"
    code, out, err = run(capsys, "predict", "--model", model, "--input", files["image"], files["stack"], "--out", out_dir,
                         "--device", "cpu", "--probabilities", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["cells.tif", "cells_probabilities.tif", "stack.tif",
                                                         "stack_probabilities.tif"]

    labels, meta2d = read_image(out_dir / "cells.tif")
    image, in_meta = read_image(files["image"])
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {1, 2}
    expected = api.predict(str(model), image, PredictConfig(device="cpu")).labels
    np.testing.assert_array_equal(labels, expected)  # the file holds exactly the prediction
    # the input's pixel size is kept
    assert meta2d.scale == pytest.approx(in_meta.scale) and meta2d.scale == pytest.approx((0.005, 0.004))

    stack_labels, meta3d = read_image(out_dir / "stack.tif")
    assert stack_labels.shape == (3, 64, 64) and stack_labels.dtype == np.uint8
    assert meta3d.scale == pytest.approx((0.05, 0.004, 0.004))

    probs = tifffile.imread(out_dir / "cells_probabilities.tif")
    assert probs.shape == (2, 64, 64) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    probs3d = tifffile.imread(out_dir / "stack_probabilities.tif")  # ImageJ hyperstack order: (Z, K, Y, X)
    assert probs3d.shape == (3, 2, 64, 64) and probs3d.dtype == np.float32
    np.testing.assert_array_equal(probs3d.argmax(axis=1) + 1, stack_labels)
    with tifffile.TiffFile(out_dir / "stack_probabilities.tif") as tif:
        assert tif.series[0].axes == "ZCYX"

    code, _, err = run(capsys, "predict", "--model", model, "--input", files["stack"], "--out", tmp_path / "zavg",
                       "--device", "cpu", "--z-average", "0.25", "--quiet")
    assert code == 0, err
    stack, _ = read_image(files["stack"])
    expected = api.predict(str(model), stack, PredictConfig(device="cpu", z_average=0.25)).labels
    np.testing.assert_array_equal(read_image(tmp_path / "zavg" / "stack.tif")[0], expected)
    code, _, err = run(capsys, "predict", "--model", model, "--input", files["stack"], "--out", tmp_path / "zbad",
                       "--device", "cpu", "--z-average", "2")
    assert code == 1
    assert_one_line_error(err, "z_average must be between 0")


def test_finetune_from_model_dir(capsys, files, tmp_path, tiny_model_dir):
    """--init DIR without --arch continues the directory's own architecture."""
    code, out, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                         tmp_path / "m2", "--init", tiny_model_dir, "--steps", 1, "--patch-size", 32, "--batch-size", 2,
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    meta = json.loads((tmp_path / "m2" / "model.json").read_text())
    assert meta["arch"] == "resunet_b2_rf44" and meta["lineage"]["init"]["init"] == str(tiny_model_dir)


def test_progress_bar_on_stderr(capsys, files, tmp_path):
    code, out, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                         tmp_path / "m", "--steps", 2, *TINY)
    assert code == 0
    assert "fine-tune [cpu]" in err and "2/2" in err
    assert "emssl: starting from random weights" in err  # where the weights came from is said once
    assert "fine-tune [cpu]" not in out  # stdout stays clean for scripts


def test_finetune_says_which_pretrained_weights_it_loaded(capsys, files, tmp_path, tiny_model_dir):
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out", tmp_path / "m",
                       "--init", tiny_model_dir, "--steps", 1, "--patch-size", 32, "--batch-size", 2, "--device", "cpu")
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("emssl: starting from"))
    assert str(tiny_model_dir) in line and "tensors loaded" in line


# ---------------------------------------------------------------------------------------------- errors: exit 1, one line


def _truncated(path, tmp_path):
    data = open(path, "rb").read()
    target = tmp_path / "truncated.tif"
    target.write_bytes(data[: len(data) // 2])
    return str(target)


def _rgb(tmp_path):
    target = tmp_path / "colour.tif"
    tifffile.imwrite(target, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), photometric="rgb")
    return str(target)


def test_missing_file(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--image", tmp_path / "nope.tif", "--labels", files["labels"], "--out",
                       tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "nope.tif", "does not exist")


def test_truncated_tiff(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--image", _truncated(files["image"], tmp_path), "--labels", files["labels"],
                       "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "truncated")


def test_rgb_tiff(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--image", _rgb(tmp_path), "--labels", files["labels"], "--out",
                       tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "RGB")


def test_labels_shape_mismatch(capsys, files, tmp_path):
    small = tmp_path / "small_labels.tif"
    write_image(small, np.ones((32, 64), np.uint8))
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", small, "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "(32, 64)", "(64, 64)")
    assert not (tmp_path / "m").exists()


def test_nothing_painted(capsys, files, tmp_path):
    empty = tmp_path / "empty_labels.tif"
    write_image(empty, np.zeros((64, 64), np.uint8))
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", empty, "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "Nothing is painted")


def test_labels_required_for_segmentation(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "--labels")


def test_denoise_and_superres_round_trip(capsys, files, tmp_path, monkeypatch):
    code, out, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--out", tmp_path / "dn",
                         "--steps", "3", *TINY)
    assert code == 0, err
    assert "self-supervised" in err and "model written to" in out
    assert json.loads((tmp_path / "dn" / "model.json").read_text())["lineage"]["finetune"]["mask_replace"] == "mean"
    code, out, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--out", tmp_path / "dn_nb",
                         "--steps", "2", "--mask-replace", "neighbour", "--denoise-loss", "blind-spot", "--mean-correction", "0",
                         "--leak-correction", "0", *TINY)
    assert code == 0, err
    meta_nb = json.loads((tmp_path / "dn_nb" / "model.json").read_text())
    lineage = meta_nb["lineage"]["finetune"]
    assert lineage["mask_replace"] == "neighbour" and lineage["denoise_loss"] == "blind-spot"
    assert meta_nb["mean_correction"] == 0.0 and meta_nb["leak_correction"] == 0.0
    meta_dn = json.loads((tmp_path / "dn" / "model.json").read_text())
    assert meta_dn["lineage"]["finetune"]["denoise_loss"] == "re-visible" and meta_dn["mean_correction"] == 16.0
    assert meta_dn["leak_correction"] == "auto"  # the default: chosen per slice at prediction
    code, _, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--out", tmp_path / "dn_bad",
                       "--mean-correction", "-3", *TINY)
    assert code == 1 and not (tmp_path / "dn_bad").exists()
    assert_one_line_error(err, "mean_correction must be a low-pass sigma")
    code, _, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--out", tmp_path / "dn_bad",
                       "--leak-correction", "2", *TINY)
    assert code == 1 and not (tmp_path / "dn_bad").exists()
    assert_one_line_error(err, "leak_correction must be a share between 0")
    code, out, err = run(capsys, "predict", "--model", tmp_path / "dn", "--input", files["image"], "--out", tmp_path / "p",
                         "--device", "cpu", "--keep-dtype")
    assert code == 0, err
    result, meta = read_image(tmp_path / "p" / "cells.tif")
    assert result.dtype == np.uint16 and result.shape == (64, 64)
    assert meta.scale == pytest.approx((0.005, 0.004))
    for flag, folder in (("--tta", "p_tta"), ("--no-tta", "p_plain")):  # default for one 2D image: the 8-view average
        code, _, err = run(capsys, "predict", "--model", tmp_path / "dn", "--input", files["image"], "--out",
                           tmp_path / folder, "--device", "cpu", "--keep-dtype", flag)
        assert code == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "p_tta" / "cells.tif")[0], result)
    assert not np.array_equal(read_image(tmp_path / "p_plain" / "cells.tif")[0], result)
    # a network trained for 3 steps gives its pixels no own weight to take out: measure a fixed one instead
    monkeypatch.setattr("napari_emssl.tasks.denoise_corrections.own_pixel_weight", lambda plain, *_: np.full_like(plain, 0.2))
    for folder, extra in (("p_leak", ("--leak-correction", "0.5")), ("p_noleak", ("--leak-correction", "0")),
                          ("p_auto", ("--leak-correction", "auto"))):  # float results
        code, out, err = run(capsys, "predict", "--model", tmp_path / "dn", "--input", files["image"], "--out",
                             tmp_path / folder, "--device", "cpu", *extra)
        assert code == 0, err
        # the share used is said beside each file (none when the correction is off)
        assert ("leak correction share" in out) == (folder != "p_noleak"), out
        assert folder != "p_leak" or "leak correction share 0.50" in out, out
    # the model's share overridden: another result
    leak, no_leak = read_image(tmp_path / "p_leak" / "cells.tif")[0], read_image(tmp_path / "p_noleak" / "cells.tif")[0]
    assert not np.array_equal(leak, no_leak)
    monkeypatch.undo()
    code, _, err = run(capsys, "predict", "--model", tmp_path / "dn", "--input", files["image"], "--out",
                       tmp_path / "p_badleak", "--device", "cpu", "--leak-correction", "1.5")
    assert code == 1 and not (tmp_path / "p_badleak").exists()
    assert_one_line_error(err, "leak_correction must be a share between 0")
    with pytest.raises(SystemExit) as exit_info:  # a usage error
        run(capsys, "predict", "--model", tmp_path / "dn", "--input", files["image"], "--out", tmp_path / "p_badleak",
            "--device", "cpu", "--leak-correction", "most")
    assert exit_info.value.code == 2 and not (tmp_path / "p_badleak").exists()
    assert "expected a share from 0 to 1 or 'auto', got 'most'" in capsys.readouterr().err
    code, out, err = run(capsys, "finetune", "--task", "superres", "--factor", "2", "--image", files["image"], "--out",
                         tmp_path / "sr", "--steps", "2", *TINY)
    assert code == 0, err
    code, out, err = run(capsys, "predict", "--model", tmp_path / "sr", "--input", files["image"], "--out", tmp_path / "q",
                         "--device", "cpu")
    assert code == 0, err
    result, meta = read_image(tmp_path / "q" / "cells.tif")
    assert result.dtype == np.float32 and result.shape == (128, 128)
    assert meta.scale == pytest.approx((0.0025, 0.002))  # half the source pixel size: it overlays the source
    assert json.loads((tmp_path / "sr" / "model.json").read_text())["back_projection"] == 5
    code, out, err = run(capsys, "finetune", "--task", "superres", "--factor", "2", "--image", files["image"], "--out",
                         tmp_path / "sr0", "--steps", "1", "--back-projection", "0", *TINY)
    assert code == 0, err
    assert json.loads((tmp_path / "sr0" / "model.json").read_text())["back_projection"] == 0
    code, _, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--out", tmp_path / "sr_bad",
                       "--lattice-pairs", *TINY)
    assert code == 1 and not (tmp_path / "sr_bad").exists()
    assert_one_line_error(err, "lattice pairs are for super-resolution")
    from napari_emssl.data.synthetic import Lattice, render_columns

    lattice = Lattice(a1=(0.0, 11.0), a2=(11.0, 0.0), sigmas=(1.6,))
    write_image(tmp_path / "lattice.tif", (1000 * render_columns((96, 96), *lattice.columns((96, 96), 4.0))).astype(np.uint16))
    code, _, err = run(capsys, "finetune", "--task", "superres", "--image", tmp_path / "lattice.tif", "--out",
                       tmp_path / "sr_lattice", "--steps", "1", "--lattice-pairs", *TINY)
    assert code == 0, err
    meta = json.loads((tmp_path / "sr_lattice" / "model.json").read_text())
    assert meta["lineage"]["finetune"]["mode"] == "synthetic lattice pairs" and meta["config"]["lattice_pairs"] is True
    write_image(tmp_path / "noise.tif", np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32))
    code, _, err = run(capsys, "finetune", "--task", "superres", "--image", tmp_path / "noise.tif", "--out",
                       tmp_path / "sr_bad", "--lattice-pairs", *TINY)
    assert code == 1 and not (tmp_path / "sr_bad").exists()
    assert_one_line_error(err, "No atomic lattice was found")
    code, _, err = run(capsys, "finetune", "--task", "superres", "--image", files["image"], "--out", tmp_path / "sr_bad",
                       "--back-projection", "-2", *TINY)
    assert code == 1 and not (tmp_path / "sr_bad").exists()
    assert_one_line_error(err, "back_projection must be a whole number")


def test_restoration_target_errors_are_one_line(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--target", files["stack"],
                       "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "target has shape")
    code, _, err = run(capsys, "finetune", "--task", "denoise", "--image", files["image"], "--labels", files["labels"],
                       "--out", tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "--labels is for segmentation")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("value, words", [("[4]", "JSON object"), ("{base", "not valid JSON"),
                                          ('{"colour": 1}', "colour")])
def test_bad_arch_kwargs(capsys, files, tmp_path, value, words):
    argv = TINY.copy()
    argv[argv.index("--arch-kwargs") + 1] = value
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                       tmp_path / "m", *argv)
    assert code == 1
    assert_one_line_error(err, words)


def test_out_that_is_a_file_fails_before_training(capsys, files, tmp_path, monkeypatch):
    (tmp_path / "occupied").write_text("not a folder")

    def no_training(*args, **kwargs):
        raise AssertionError("training started although --out cannot be written")

    monkeypatch.setattr(api, "iter_finetune", no_training)
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                       tmp_path / "occupied", *TINY)
    assert code == 1
    assert_one_line_error(err, "occupied", "is a file")


def test_bad_config_value(capsys, files, tmp_path):
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                       tmp_path / "m", "--steps", 0, *TINY)
    assert code == 1
    assert_one_line_error(err, "steps")


def test_predict_with_model_of_an_unknown_task(capsys, files, tmp_path, tiny_model):
    TrainedModel(net=tiny_model.net, meta=dict(tiny_model.meta, task="classify")).save(tmp_path / "classifier")
    code, _, err = run(capsys, "predict", "--model", tmp_path / "classifier", "--input", files["image"], "--out",
                       tmp_path / "pred", "--device", "cpu")
    assert code == 1
    assert_one_line_error(err, "classify")
    assert not (tmp_path / "pred").exists()


def test_predict_with_missing_model(capsys, files, tmp_path):
    code, _, err = run(capsys, "predict", "--model", tmp_path / "nomodel", "--input", files["image"], "--out",
                       tmp_path / "pred")
    assert code == 1
    assert_one_line_error(err, "nomodel")


@pytest.mark.parametrize("command", ["finetune", "predict"])
def test_cuda_without_cuda(capsys, files, tmp_path, tiny_model_dir, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if command == "finetune":
        argv = ["finetune", "--image", files["image"], "--labels", files["labels"], "--out", tmp_path / "m", *TINY,
                "--device", "cuda"]
    else:
        argv = ["predict", "--model", tiny_model_dir, "--input", files["image"], files["stack"], "--out",
                tmp_path / "pred", "--device", "cuda"]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_line_error(err, "cuda", "no CUDA GPU")
    assert not (tmp_path / "m").exists() and not (tmp_path / "pred").exists()


def test_predict_goes_on_past_a_broken_input(capsys, files, tmp_path, tiny_model_dir):
    broken = _truncated(files["image"], tmp_path)
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((16, 16), np.nan, np.float32))
    out_dir = tmp_path / "pred"
    code, out, err = run(capsys, "predict", "--model", tiny_model_dir, "--input", files["image"], broken, nan,
                         files["stack"], "--out", out_dir, "--device", "cpu", "--quiet")
    assert code == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["cells.tif", "stack.tif"]
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 2 and all(line.startswith("emssl: error: ") for line in errors), err
    assert "truncated" in errors[0] and "NaN" in errors[1]
    assert "Traceback" not in err
    assert f"{files['image']} -> " in out and f"{files['stack']} -> " in out


def test_predict_out_names_the_file_for_one_input(capsys, files, tmp_path, tiny_model_dir):
    target = tmp_path / "results" / "seg.tif"
    code, out, err = run(capsys, "predict", "--model", tiny_model_dir, "--input", files["image"], "--out", target,
                         "--probabilities", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert target.is_file() and (tmp_path / "results" / "seg_probabilities.tif").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.tif", "seg_probabilities.tif"]
    assert read_image(target)[0].shape == read_image(files["image"])[0].shape
    # a file name for several inputs, or one that does not fit the format: refused before anything is read
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--input", files["image"], files["stack"],
                       "--out", tmp_path / "both.tif", "--device", "cpu", "--quiet")
    assert code != 0 and "names one file but there are 2 inputs" in err and "Traceback" not in err
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--input", files["image"], "--out",
                       tmp_path / "seg2.tif", "--format", "zarr", "--device", "cpu", "--quiet")
    assert code != 0 and "--format" in err
    assert not (tmp_path / "both.tif").exists() and not (tmp_path / "seg2.tif").exists()


def test_unexpected_error_is_one_line_without_debug(capsys, files, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke inside")

    monkeypatch.setattr(api, "iter_finetune", boom)
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                       tmp_path / "m", *TINY)
    assert code == 1
    assert_one_line_error(err, "RuntimeError", "something broke inside", "--debug")
    with pytest.raises(RuntimeError, match="something broke inside"):
        cli.main(["finetune", "--image", files["image"], "--labels", files["labels"], "--out", str(tmp_path / "m"),
                  *TINY, "--debug"])


def test_debug_shows_traceback_in_a_terminal(files, tmp_path):
    argv = ["finetune", "--image", tmp_path / "nope.tif", "--labels", files["labels"], "--out", tmp_path / "m", *TINY]
    plain = python_cli(*argv)
    assert plain.returncode == 1
    assert_one_line_error(plain.stderr, "does not exist")
    debug = python_cli(*argv, "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "InputError" in debug.stderr


def test_truncated_tiff_in_a_terminal_is_one_line(files, tmp_path, tiny_model_dir):
    """No warnings or log lines from tifffile leak next to the error."""
    proc = python_cli("predict", "--model", tiny_model_dir, "--input", _truncated(files["image"], tmp_path), "--out",
                      tmp_path / "pred", "--device", "cpu")
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, "truncated")


# ---------------------------------------------------------------------------------------------- Ctrl-C


def test_sigint_during_finetune_exits_130_and_keeps_model(files, tmp_path):
    model = tmp_path / "model"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_emssl.cli", "finetune", "--image", files["image"], "--labels", files["labels"],
         "--out", str(model), "--steps", "100000", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV,
    )
    chunks: list[bytes] = []

    def pump():
        while True:
            data = os.read(proc.stderr.fileno(), 4096)
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while b"loss=" not in b"".join(chunks):  # the progress bar shows a loss once a step is done
            assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
            assert time.monotonic() < deadline, "no progress output within 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    err = b"".join(chunks).decode(errors="replace")
    assert code == 130, err
    assert "Traceback" not in err
    assert "cancelled at step" in err and str(model) in err
    meta = json.loads((model / "model.json").read_text())
    assert meta["lineage"]["finetune"]["completed"] is False
    assert 1 <= meta["lineage"]["finetune"]["steps"] < 100000
    assert load_model(model).task == "segment"


def test_ctrl_c_handler_cancels_then_aborts():
    from napari_emssl._cli_commands import ctrl_c_cancels
    from napari_emssl.engine.cancel import CancelToken

    token = CancelToken()
    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_cancels(token):
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        assert token.cancelled  # first Ctrl-C: stop after this step
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)  # second: abort
    assert signal.getsignal(signal.SIGINT) is before


def test_keyboard_interrupt_exits_130(capsys, files, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "iter_finetune", interrupted)
    code, _, err = run(capsys, "finetune", "--image", files["image"], "--labels", files["labels"], "--out",
                       tmp_path / "m", *TINY)
    assert code == 130 and "cancelled" in err


# ---------------------------------------------------------------------------------------------- demo


def test_demo(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--steps", 3, "--out", out_dir, "--device", "cpu", "--arch", "resunet_b2_rf44",
                         "--arch-kwargs", '{"base_channels": 4}', "--quiet")
    assert code == 0, err
    assert "Dice" in out
    dice = float(out.split("Dice on the 4 unpainted slices:")[1].split()[0])
    assert 0.0 <= dice <= 1.0
    assert load_model(out_dir / "model").meta["lineage"]["finetune"]["steps"] == 3
    pred, meta = read_image(out_dir / "sstem_prediction.tif")
    crop, _ = read_image(out_dir / "sstem_crop.tif")
    assert pred.shape == crop.shape and pred.ndim == 3 and set(np.unique(pred)) <= {1, 2}
    assert meta.scale is not None and len(meta.scale) == 3


def test_output_path_names():
    from napari_emssl.batch import output_paths

    def one(name, suffix=None, fmt="tif"):
        return output_paths([Path(name)], "out", "segment", fmt, suffix)[0].as_posix()

    assert one("/data/a/cells.tif") == "out/cells.tif"
    assert one("stack.ome.tiff") == "out/stack.tif"
    assert one("x.TIF", "_probabilities") == "out/x_probabilities.tif"
    assert one("img.png") == "out/img.tif"
    assert one("vol.zarr", fmt="zarr") == "out/vol.ome.zarr"
    # --out naming the result file itself (one input)
    assert output_paths([Path("a.tif")], "res/den.tiff", "denoise")[0].as_posix() == "res/den.tiff"
    assert output_paths([Path("a.tif")], "den.tif", "segment", "tif", "_probabilities")[0].as_posix() == "den_probabilities.tif"
    assert output_paths([Path("a.tif")], "vol.ome.zarr", "segment", "zarr")[0].as_posix() == "vol.ome.zarr"
    assert output_paths([Path("a.tif")], "vol.ome.zarr", "segment", "tif", "_probabilities")[0].as_posix() == "vol_probabilities.tif"


def test_input_errors_are_emssl_errors():
    assert issubclass(InputError, cli.EmsslError)
