#!/usr/bin/env bash
# Train the bundled model further on a lent GPU for a fixed number of seconds, and leave the result
# where a short-lived machine can hand it back.
#
#   bash benchmarks/gpu_train.sh OUTDIR SECONDS [extra model.training flags...]
#
# Starts from the bundled checkpoint, trains with the GPU recipe of docs/model-card.md (8 collections
# per step, 14 rendering workers, bf16) until SECONDS have passed, then writes to OUTDIR: train.log,
# log.csv and the final weights in float16, split into parts of 15 MB (w.part00, w.part01, ...: some
# machines return files of at most 16 MiB). Rebuild them with `cat w.part* > weights.safetensors`.
set -u
out=${1:?usage: gpu_train.sh OUTDIR SECONDS [flags...]}
seconds=${2:?usage: gpu_train.sh OUTDIR SECONDS [flags...]}
shift 2
py=${PYTHON:-python3}
run=${RUN_DIR:-/tmp/zipmap-gpu-run}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" -m model.training --out "$run" --preset city --init-from model/checkpoints/zipmap_city_small.safetensors \
    --camera-weight 5 --device cuda --batch 8 --workers 14 --echo 2 --steps 1000000 --time-limit-s "$seconds" \
    --warmup 100 --min-frames 2 --max-frames 16 --sizes 84x126 112x168 --lr 4e-4 --log-every 20 \
    --checkpoint-every 1000000 --snapshot-every 1000000 "$@" >>"$out/train.log" 2>&1
echo "training exited with $?" >>"$out/train.log"
cp "$run/log.csv" "$out/" 2>/dev/null
"$py" - "$run" "$out" <<'EOF' >>"$out/train.log" 2>&1 || exit 1
import glob, sys
import torch
from model.weights import load_zipmap, save_checkpoint
run, out = sys.argv[1:]
last = sorted(glob.glob(f"{run}/weights-*.safetensors"))[-1]
print("packing", last)
save_checkpoint(load_zipmap(last), f"{out}/w.safetensors", dtype=torch.float16)
EOF
split -b 15000000 -d "$out/w.safetensors" "$out/w.part" && rm -f "$out/w.safetensors" "$out/w.json"
