#!/usr/bin/env bash
# Self-supervised denoising on a GPU (docs/benchmarks.md, "On a GPU: denoising over noise draws and
# longer training"): the restoration benchmark's denoising (ours with the defaults, its 8-view
# average, BM3D with the true noise parameters, all in the same run on the same noisy image) on
# the four main images for several noise draws and once more with longer training, and three
# held-out images for one draw. Jobs run side by side on the one GPU (BM3D on the CPU cores).
# Results: $OUT/gpu/ or benchmarks/results/gpu/
#
# Needs what scripts/gpu_checks.sh needs plus the bm3d package, which `scripts/gpu_checks.sh
# --prepare` copies from .bench-site/ into .gpu-site/ (carry .gpu-data and .gpu-site):
#
#     EMSSL_DATA=.gpu-data scripts/gpu_denoise_seeds.sh
#
# DEVICE=cpu STEPS=20 LONG=40 SEEDS=0 JOBS=2 is a smoke test on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-benchmarks/results}/gpu"
mkdir -p "$RES"
export RES DEVICE="${DEVICE:-cuda}" STEPS="${STEPS:-}" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/.gpu-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export EMSSL_DATA="${EMSSL_DATA:-.gpu-data}"
PY="${PYTHON:-python3}"; export PY
LONG="${LONG:-3600}"
IMAGES="${IMAGES:-stem_detector stem_adf sem_aquami sem_nanowires}"
jobs=()
for image in $IMAGES; do jobs+=("$image 0 $LONG"); done  # the long runs first
for seed in ${SEEDS:-0 1 2}; do for image in $IMAGES; do jobs+=("$image $seed ${STEPS:-default}"); done; done
for image in ${HELD_OUT-stem_abf sem_nanowires_05 sem_nanowires_12}; do jobs+=("$image 0 ${STEPS:-default}"); done  # one draw each
run_one() {
    local image="$1" seed="$2" steps="$3" name
    name="denoise_${image}_seed${seed}_steps${steps}"
    local extra=()
    [[ "$steps" != default ]] && extra=(--steps "$steps")
    timeout "${JOB_TIMEOUT:-540}" "$PY" benchmarks/restoration.py --task denoise --images "$image" --methods noisy bm3d ours \
        --tta --seed "$seed" "${extra[@]}" --device "$DEVICE" --threads 2 --out "$RES/$name.json" > "$RES/$name.log" 2>&1 \
        && echo "done $name" || echo "FAILED $name (rc $?)"
}
export -f run_one
printf '%s\n' "${jobs[@]}" | xargs -P "${JOBS:-8}" -L 1 bash -c 'run_one $0 $1 $2'
