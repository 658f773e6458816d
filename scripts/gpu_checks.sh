#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run (about 8 minutes on one H100/H200):
# prediction throughput end to end against the naive forward and the bf16 roofline, fine-tuning
# times (segmentation on the sample crop, self-supervised denoising of a STEM image), pretraining
# throughput of every method and network, and a torchrun (DDP, NCCL) pretraining run. Results land in benchmarks/results/
# and, when $OUT is set, are copied there; `python benchmarks/report.py` turns them into docs.
#
# Needs python3 with torch (CUDA), timm, scikit-image, tifffile, safetensors and scipy; the
# package is used from src/ (nothing is installed). The pretraining corpus is read from
# $EMSSL_DATA; for a machine where the full data folder does not fit, prepare a small copy
# (a few ssTEM sections and every materials image, about 15 MB) first:
#
#     scripts/gpu_checks.sh --prepare ../shared/data       # writes .gpu-data/
#     EMSSL_DATA=.gpu-data scripts/gpu_checks.sh            # on the GPU machine
#
# DEVICE=cpu SLICES=2 SIDE=256 STEPS=6 runs the same steps small on the CPU (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    src="${2:?give the data folder, e.g. ../shared/data}"
    rm -rf .gpu-data && mkdir -p .gpu-data/drosophila_vnc_sstem/stack2/raw
    ls "$src/drosophila_vnc_sstem/stack2/raw" | sort | head -n 6 | while read -r f; do
        cp "$src/drosophila_vnc_sstem/stack2/raw/$f" .gpu-data/drosophila_vnc_sstem/stack2/raw/
    done
    cp -r "$src/nanowires_sem" "$src/aquami_sem" "$src/stem_atomic" .gpu-data/
    du -sh .gpu-data
    if [[ -d .bench-site/bm3d ]]; then  # BM3D for scripts/gpu_denoise_seeds.sh (pip install --target .bench-site bm3d)
        rm -rf .gpu-site && mkdir -p .gpu-site
        cp -r .bench-site/bm3d .bench-site/bm4d .bench-site/pywt .gpu-site/
        du -sh .gpu-site
    fi
    exit 0
fi

DEVICE="${DEVICE:-cuda}"
SLICES="${SLICES:-32}"
SIDE="${SIDE:-2048}"
STEPS="${STEPS:-40}"
PEAK="${PEAK_TFLOPS:-989}"  # dense bf16 peak of an H100 SXM / H200
RES="${OUT:-benchmarks/results}"
mkdir -p "$RES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EMSSL_DATA="${EMSSL_DATA:-../shared/data}"
step() { echo "== $1 ($(date -u +%T))"; }

step "device"
python3 - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
PY
step "prediction throughput"
timeout "${T_PREDICT:-200}" python3 benchmarks/prediction_throughput.py --device "$DEVICE" --slices "$SLICES" --side "$SIDE" \
    --peak-tflops "$PEAK" --out "$RES/prediction_throughput_$DEVICE.json" || echo "prediction throughput: exit $?"
step "fine-tuning times"
tmp="$(mktemp -d)"
timeout "${T_FINETUNE:-80}" python3 - "$DEVICE" "$tmp" "$RES/finetune_times_$DEVICE.json" <<'PY' || echo "fine-tuning times: exit $?"
import json, subprocess, sys, time
device, tmp, out = sys.argv[1:]
rows = []
sample = "src/napari_emssl/sample_data/"
runs = {"segment_sample_crop": ["finetune", "--task", "segment", "--image", sample + "sstem_crop.tif",
                                "--labels", sample + "sstem_strokes.tif"]}
for name, args in runs.items():
    cmd = [sys.executable, "-m", "napari_emssl.cli", *args, "--device", device, "--out", f"{tmp}/{name}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows.append({"name": name, "command": "emssl " + " ".join(args + ["--device", device]),
                 "wall_s": round(time.perf_counter() - t0, 2), "rc": proc.returncode,
                 "tail": (proc.stdout + proc.stderr).strip().splitlines()[-3:]})
    print(json.dumps(rows[-1]), flush=True)
    json.dump(rows, open(out, "w"), indent=2)
PY
timeout "${T_DENOISE:-90}" python3 benchmarks/restoration.py --task denoise --images stem_adf --methods ours --tta \
    --device "$DEVICE" --out "$RES/restoration_denoise_$DEVICE.json" || echo "denoise fine-tuning: exit $?"
step "pretraining throughput"
rm -f benchmarks/results/pretrain_throughput.json
timeout "${T_PRETRAIN:-130}" python3 benchmarks/pretrain_throughput.py --device "$DEVICE" --steps "$STEPS" \
    --warmup $((STEPS / 4)) --peak-tflops "$PEAK" || echo "pretraining throughput: exit $?"
cp benchmarks/results/pretrain_throughput.json "$RES/pretrain_throughput_$DEVICE.json" 2>/dev/null || true
step "torchrun (DDP)"
timeout "${T_DDP:-50}" python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m napari_emssl.cli pretrain \
    --method mae --arch resunet_b3_rf96 --data "$EMSSL_DATA/stem_atomic" --out "$tmp/ddp" --steps 30 --batch-size 32 \
    --patch 128 --device "$DEVICE" > "$RES/ddp_$DEVICE.log" 2>&1 || echo "torchrun: exit $?"
tail -n 5 "$RES/ddp_$DEVICE.log"; ls "$tmp/ddp" 2>/dev/null | head
step "done"
