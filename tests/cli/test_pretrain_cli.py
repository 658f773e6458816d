"""``emssl pretrain``: success, one-line errors, --resume, Ctrl-C (exit 130, checkpoint kept)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile

from napari_emssl.engine.checkpoint import load_checkpoint, read_pretrained

from cli_helpers import run  # tests/cli/cli_helpers.py

pytest.importorskip("napari_emssl.pretext.gan")

TINY = ["--method", "gan", "--arch", "resunet_b2_rf44", "--arch-kwargs", '{"base_channels": 4}', "--patch", "32",
        "--batch-size", "2", "--device", "cpu"]
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.random((3, 64, 64)) * 255).astype(np.uint8), photometric="minisblack")
    return str(path)


def one_line_error(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emssl: error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, err)


def test_pretrain_in_a_subprocess_writes_the_model_dir(stack, tmp_path):
    out = tmp_path / "pre"
    proc = subprocess.run([sys.executable, "-m", "napari_emssl.cli", "pretrain", "--data", stack, "--out", str(out),
                           "--steps", "3", *TINY], capture_output=True, text=True, timeout=120, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "pretrained model written to" in proc.stdout and "3 steps" in proc.stdout
    assert "pretrain [cpu]" in proc.stderr  # the progress bar
    meta, _ = read_pretrained(out)
    assert meta["method"] == "gan" and meta["lineage"]["pretrain"]["steps"] == 3
    assert meta["lineage"]["pretrain"]["data"] == [stack]


@pytest.mark.parametrize("argv, words", [
    (["--data", "missing.tif"], ["does not exist"]),
    (["--patch", "40"], ["multiple of 16"]),
    (["--arch-kwargs", "{bad"], ["--arch-kwargs", "JSON"]),
    (["--steps", "0"], ["steps"]),
    (["--resume"], ["no pretraining checkpoint"]),
    (["--arch", "no_such_net"], ["no_such_net"]),
])
def test_bad_inputs_exit_1_with_one_line(capsys, stack, tmp_path, argv, words):
    base = ["pretrain", "--data", stack, "--out", tmp_path / "o", "--steps", "2", *TINY, "--quiet"]
    code, _, err = run(capsys, *base, *argv)
    assert code == 1
    one_line_error(err, *words)


def test_resume_continues_the_step_count(capsys, stack, tmp_path):
    out = tmp_path / "r"
    assert run(capsys, "pretrain", "--data", stack, "--out", out, "--steps", "2", *TINY, "--quiet")[0] == 0
    code, _, err = run(capsys, "pretrain", "--data", stack, "--out", out, "--steps", "4", *TINY, "--quiet")
    assert code == 1
    one_line_error(err, "already holds", "--resume")
    code, stdout, err = run(capsys, "pretrain", "--data", stack, "--out", out, "--steps", "4", *TINY, "--quiet", "--resume")
    assert code == 0, err
    assert load_checkpoint(out).step == 4
    code, _, err = run(capsys, "pretrain", "--data", stack, "--out", out, "--steps", "6", "--quiet", "--resume",
                       *[a if a != "gan" else "mae" for a in TINY])
    assert code == 1
    one_line_error(err, "method", "'gan'")


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(stack, tmp_path):
    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "napari_emssl.cli", "pretrain", "--data", stack, "--out", str(out),
                             "--steps", "100000", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV)
    chunks: list[bytes] = []

    def pump():
        while data := os.read(proc.stderr.fileno(), 4096):
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while b"loss=" not in b"".join(chunks):
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
    assert "Traceback" not in err and "cancelled at step" in err and "--resume" in err
    step = load_checkpoint(out).step
    assert step >= 1
    meta = json.loads((out / "model.json").read_text())
    assert meta["lineage"]["pretrain"]["completed"] is False and meta["lineage"]["pretrain"]["steps"] == step
