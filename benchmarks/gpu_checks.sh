#!/usr/bin/env bash
# The checks and timings that need a CUDA GPU, in one go (a lent GPU machine is short-lived).
#
#   bash benchmarks/gpu_checks.sh OUTDIR
#
# Writes OUTDIR/checks.log: the GPU, the CUDA-only tests, the end-to-end benchmark of one collection
# on CUDA and on the CPU of the same machine (timing and TSDF-to-surface distance, so the bf16 zip
# pass and the CUDA fusion are checked against the float32 CPU path), and TSDF fusion speed on both.
# Every step has its own time limit; a failing step is logged and the next one runs.
set -u
out=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$out"
log="$out/checks.log"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() {  # step SECONDS TITLE COMMAND...
    local limit=$1 title=$2; shift 2
    echo "### $title ($(date -u +%H:%M:%S), limit ${limit}s): $*" >>"$log"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "### exit $? after $((SECONDS - t0)) s" >>"$log"
}
step 20 "machine" bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; \
$py -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))'"
step 90 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider -o addopts= tests/model/test_fusion.py \
    tests/model/test_inference.py -k "cuda or sampling or plane or chunk or zip_pass"
step 120 "end to end, cuda" "$py" benchmarks/reconstruct.py --device cuda --kinds street orbit aerial handheld \
    --repeats 5 --out /tmp/zipmap-bench
step 60 "end to end, cpu of the same machine" "$py" benchmarks/reconstruct.py --device cpu --kinds street orbit \
    --repeats 3 --out /tmp/zipmap-bench
step 40 "fusion speed, cuda" "$py" benchmarks/fusion_speed.py --device cuda --repeats 5
step 40 "fusion speed, 256^3, cuda" "$py" benchmarks/fusion_speed.py --device cuda --voxels 256 --repeats 3
step 40 "fusion speed, cpu" "$py" benchmarks/fusion_speed.py --device cpu --repeats 3
