#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run (about 10 minutes on one H100/H200):
# prediction throughput end to end against the naive forward and the bf16 roofline, then
# pretraining throughput of every method and network. Results land in benchmarks/results/
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
    exit 0
fi

DEVICE="${DEVICE:-cuda}"
SLICES="${SLICES:-64}"
SIDE="${SIDE:-2048}"
STEPS="${STEPS:-80}"
PEAK="${PEAK_TFLOPS:-989}"  # dense bf16 peak of an H100 SXM / H200
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EMSSL_DATA="${EMSSL_DATA:-../shared/data}"

python3 - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
PY
python3 benchmarks/prediction_throughput.py --device "$DEVICE" --slices "$SLICES" --side "$SIDE" --peak-tflops "$PEAK"
python3 benchmarks/pretrain_throughput.py --device "$DEVICE" --steps "$STEPS" --warmup $((STEPS / 4)) --peak-tflops "$PEAK"
if [[ -n "${OUT:-}" ]]; then
    cp benchmarks/results/prediction_throughput_"$DEVICE".json benchmarks/results/pretrain_throughput.json "$OUT"/
fi
