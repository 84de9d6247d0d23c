#!/usr/bin/env bash
# The GPU figures in one run, for a machine lent for minutes (see the README's
# "On a GPU"): `trainer bench --backend wgpu` at batch 256 and 1024 for each
# trainer build given (training and sampling images/s; dispatches, distinct
# kernels and host reads per step and per batch), the authors' PyTorch on the
# same GPU through CUDA at the same batches, and a short training run on the
# face data with the first build. Each part has its own time limit, so one
# that hangs costs only its share; everything printed also goes to $OUT (or
# ./gpu-out).
#
# Usage: bench/gpu.sh AUTHORS_CODE CELEBA_DIR LABEL=TRAINER [LABEL=TRAINER ...]
#   AUTHORS_CODE  the `code/` folder of hongyehu/RG-Flow (skipped if missing)
#   CELEBA_DIR    a CelebA folder for the training run (skipped if missing)
#   LABEL=TRAINER a name and a trainer binary built with the `wgpu` feature,
#                 e.g. fusion=target/debug/trainer
# PARTS=sampling times sampling only, with the first build: burn ops against
# the fused GPU decoder at batch 1024, the fused decoder alone at 256, 4096
# and 16384, and the authors' PyTorch at 1024 and 4096.
set -uo pipefail

AUTHORS=${1:?usage: bench/gpu.sh AUTHORS_CODE CELEBA_DIR LABEL=TRAINER ...}
CELEBA=${2:?usage: bench/gpu.sh AUTHORS_CODE CELEBA_DIR LABEL=TRAINER ...}
shift 2
[ $# -ge 1 ] || { echo "give at least one LABEL=TRAINER" >&2; exit 2; }
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }
# Runs a part with a time limit, its output to the terminal and to $OUT/NAME.txt.
part() {
    local name=$1 limit=$2
    shift 2
    log "$name: $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || log "$name: exit $rc"
}
torch() {
    [ -d "$AUTHORS" ] || return 0
    part "torch-$1" 45 env PYTHONUNBUFFERED=1 python3 bench/pytorch_reference.py "$AUTHORS" --cuda 0 \
        --batch "$1" --steps "$2" --sample-batches "$3"
}

log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi missing')"
log "CPU: $(nproc) cores;$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

if [ "${PARTS:-all}" = sampling ]; then
    first=${1#*=}
    part sample-1024 150 "$first" bench --backend wgpu --sample-only --batch 1024 --sample-batches 5
    for batch in 256 4096 16384; do
        part "fused-$batch" 60 "$first" bench --backend wgpu --sample-only --fused-sampling-only \
            --batch "$batch" --sample-batches 5
    done
    torch 1024 1 5
    torch 4096 1 5
    log "done"
    exit 0
fi

for batch in 256 1024; do
    for build in "$@"; do
        label=${build%%=*} trainer=${build#*=}
        part "$label-$batch" 90 "$trainer" bench --backend wgpu --batch "$batch" --steps 5 --sample-batches 3
    done
    if [ "$batch" = 256 ]; then torch 256 20 10; else torch 1024 10 5; fi
done

if [ -d "$CELEBA" ]; then
    # From the shipped weights, so the run's bits/dim mean something after a
    # minute (with a short warm-up: the optimiser's moments start at zero, and
    # AdamW's first full-rate steps would throw the trained flow off); its log
    # comes back in $OUT.
    first=${1#*=}
    part train 90 "$first" train --backend wgpu --data "celeba:$CELEBA,test-last=500" \
        --init-from models/celeba32.rgflow --batch 256 --lr 2e-4 --warmup-steps 20 --minutes 0.75 \
        --eval-images 500 --workers 12 --out /tmp/gpu-run
    cp /tmp/gpu-run/*.jsonl "$OUT/" 2>/dev/null
fi
log "done"
