"""Two-process DDP pretraining on the CPU (gloo), launched like a cluster run: torchrun -m napari_emssl.cli."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_emssl.engine.pretrainer import HASH_DIR_ENV

pytest.importorskip("napari_emssl.pretext.gan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    data = tmp_path / "stack.tif"
    tifffile.imwrite(data, (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8), photometric="minisblack")
    out, hashes = tmp_path / "pre", tmp_path / "hashes"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **{HASH_DIR_ENV: str(hashes)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "napari_emssl.cli", "pretrain", "--method", "gan",
           "--data", str(data), "--out", str(out), "--arch", "resunet_b2_rf44", "--arch-kwargs", '{"base_channels": 4}',
           "--steps", "4", "--batch-size", "2", "--patch", "32", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("pretrained model written to") == 1  # rank 0 reports, rank 1 stays silent
    rank0, rank1 = (hashes / "rank0.sha256").read_text(), (hashes / "rank1.sha256").read_text()
    assert rank0 == rank1  # DDP kept the parameters in step
    meta = json.loads((out / "model.json").read_text())
    assert meta["lineage"]["pretrain"]["world_size"] == 2 and meta["lineage"]["pretrain"]["global_batch"] == 4
    assert meta["lineage"]["pretrain"]["steps"] == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left by either rank
