"""Train the bundled noise-and-background-removal weights on synthetic STEM pairs, and ship them.

    PYTHONPATH=src python scripts/train_bgremove_weights.py --steps 2000 --out runs/bundled/bgremove_resunet_b3_rf96 --ship

The network is the default architecture (``resunet_b3_rf96``) started from the bundled
GAN-pretrained generator. Training pairs are drawn on the fly by
:mod:`napari_emssl.data.synthetic` (atom-column lattices, grain boundaries and amorphous
regions; smooth backgrounds; scan distortions, shot and read noise; TEMImageNet-like), so
no image data is involved and the weights carry no data licence. Loss: L1 + L2 to the
background-free clean columns; AdamW with warm-up and cosine decay (the fine-tuning loop).

``--ship`` stores the weights in half precision in ``src/napari_emssl/zoo`` and puts their
model card first in ``index.json`` (used by ``--init bundled`` for ``bgremove`` only), keeping
the other entries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "src" / "napari_emssl" / "zoo"
NAME = "bgremove_resunet_b3_rf96"
ARCH = "resunet_b3_rf96"
INIT = "gan_resunet_b3_rf96"


def validation_psnr(net: torch.nn.Module, n: int = 16, size: int = 256, seed: int = 12345) -> dict[str, float]:
    """Mean PSNR (data range of each target) of the network and of the raw input on ``n`` fresh synthetic pairs."""
    from napari_emssl.data.synthetic import make_pair
    from napari_emssl.tasks.metrics import psnr

    rng = np.random.default_rng(seed)
    ours, raw = [], []
    net.eval()
    for _ in range(n):
        x, y = make_pair(rng, size, "bgremove")
        with torch.inference_mode():
            pred = net(torch.from_numpy(x)[None, None]).float()[0, 0].numpy()
        ours.append(psnr(y, pred))
        raw.append(psnr(y, x))
    return {"psnr": float(np.mean(ours)), "input_psnr": float(np.mean(raw)), "pairs": n, "size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bundled" / NAME)
    parser.add_argument("--ship", action="store_true", help="store the weights and card in the package's zoo")
    parser.add_argument("--ship-only", action="store_true",
                        help="no training: ship the model already saved in --out by an earlier run of this script")
    args = parser.parse_args()
    if args.ship_only:
        ship_saved(args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_emssl import zoo
    from napari_emssl.engine.device import resolve_device
    from napari_emssl.engine.model_dir import TrainedModel, build_meta
    from napari_emssl.engine.trainer import TrainState, train
    from napari_emssl.engine.transfer import load_matching
    from napari_emssl.models import create_model
    from napari_emssl.tasks.bgremove import make_bgremove_loss_fn

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    net = create_model(ARCH, in_channels=1, out_channels=1)
    init = next(e for e in zoo.list_bundled() if e.name == INIT)
    matched, total = load_matching(net, load_file(str(init.path)))
    print(f"init from {INIT}: {matched}/{total} tensors", flush=True)
    net.to(device)
    loss_fn = make_bgremove_loss_fn(args.batch_size, device, patch_size=args.patch, seed=args.seed)
    state = TrainState()
    started = time.perf_counter()
    for event in train(net, loss_fn, total_steps=args.steps, device=device, lr=args.lr, state=state):
        if event.step % 100 == 0 or event.step == args.steps:
            print(f"step {event.step}/{args.steps} loss {event.losses['loss']:.4f} {event.seconds:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    net.cpu().eval()
    val = validation_psnr(net)
    print(f"validation on fresh synthetic pairs: PSNR {val['psnr']:.2f} dB (input {val['input_psnr']:.2f} dB)", flush=True)
    tail = state.log[-50:]
    final = {k: float(np.mean([r[k] for r in tail])) for k in ("loss", "l1", "l2")}
    command = " ".join(["python", "scripts/train_bgremove_weights.py"] + sys.argv[1:])
    kind = str(device)
    device_name = torch.cuda.get_device_name(0) if kind.startswith("cuda") else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    meta = build_meta(net, task="bgremove", out_channels=1, factor=1, normalization={"method": "percentile", "low": 1.0, "high": 99.8},
                      lineage={"init": {"init": f"bundled:{INIT}", "matched_tensors": matched, "total_tensors": total},
                               "finetune": {"source": "synthetic STEM pairs (napari_emssl.data.synthetic)", "steps": state.step,
                                            "completed": True, "mode": "synthetic pairs"}},
                      metrics={"synthetic_validation": val})
    meta["train"] = {"seconds": round(seconds, 1), "batch_size": args.batch_size, "patch": args.patch, "device": device_name,
                     "command": command, "final_losses": final}
    TrainedModel(net=net, meta=meta, log=state.log).save(args.out)
    print(f"saved {args.out}", flush=True)
    if args.ship:
        ship_saved(args.out)


def ship_saved(run: Path) -> None:
    """Half-precision weights and the model card of the run saved in ``run``, first in the zoo's index."""
    from napari_emssl.engine.model_dir import load_model

    model = load_model(run)
    net, meta = model.net, model.meta
    train, steps = meta["train"], meta["lineage"]["finetune"]["steps"]
    val = meta["metrics"]["synthetic_validation"]
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    target = ZOO / f"{NAME}.safetensors"
    save_file(half, str(target), metadata={"name": NAME, "arch": ARCH, "method": "synthetic-bgremove"})
    card = {
        "name": NAME, "file": target.name, "arch": ARCH, "arch_kwargs": dict(net.arch_kwargs), "method": "synthetic-bgremove",
        "tasks": ["bgremove"], "task_note": "trained for noise and background removal only",
        "steps": steps, "completed": True, "seconds": train["seconds"], "batch_size": train["batch_size"], "patch": train["patch"],
        "patches_per_s": steps * train["batch_size"] / train["seconds"], "device": train["device"],
        "final_losses": train["final_losses"], "validation": val, "init": INIT,
        "data": [{"path": "synthetic (napari_emssl.data.synthetic, seeded)", "licence": "none: generated"}],
        "data_note": "synthetic atomic-resolution STEM pairs only, plus the GAN-pretrained generator it started from",
        "command": train["command"], "driver": train["command"],
        "budget_note": "trained on a GPU" if "CPU" not in train["device"] else "trained without a GPU, on the CPU",
        "licence_note": f"the starting weights ({INIT}) derive from the data in their card",
        "stored_as": "float16", "sha256": hashlib.sha256(target.read_bytes()).hexdigest(), "bytes": target.stat().st_size,
        "tensors": len(half),
    }
    index = ZOO / "index.json"
    entries = [e for e in json.loads(index.read_text()) if e["name"] != NAME]
    index.write_text(json.dumps([card] + entries, indent=2) + "\n")
    print(f"shipped {target} ({card['bytes'] / 1e6:.1f} MB); {index} has {len(entries) + 1} entries", flush=True)


if __name__ == "__main__":
    main()
