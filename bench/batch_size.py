"""Batch size at an equal loss-vs-images curve: is batch 128 (1.56x the images/s of batch 64 on one CPU thread,
bench/results/train_speed.md) as good per image as batch 64? pixel-uncond, EDM recipe, the same seed and number
of training images in every arm:

  b64            batch 64,  lr 2e-3,                  2S steps, warm-up 200   (the recipe before v3)
  b128           batch 128, lr 2e-3,                  S steps,  warm-up 100   (v3's setting)
  b128-sqrt-lr   batch 128, lr 2e-3 * sqrt(2),        S steps,  warm-up 100   (square-root LR scaling for Adam)

Warm-up and checkpoints are counted in images, so every arm is compared at the same images seen. At each
checkpoint the held-out loss is the training objective (EDM-weighted DSM, diffusion.losses.dsm_loss) on 2000 MNIST
*test* images with one fixed draw of noise levels and noise, for the raw weights (the optimiser's curve) and the
EMA weights (decay per step 0.999, i.e. per image the b128 arms average twice as many images: read the raw curve
for the per-image comparison). Training wall time gives each arm's images/s, all arms on the same machine.

    python -m bench.batch_size --train --images 128000     # runs under ~/.cache/mnist-diffusion-lab/runs/bs-*
    python -m bench.batch_size --eval                      # bench/results/batch_size.{json,md,png}
    python -m bench.batch_size --report-only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.recipe_ab import _cpu

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(os.environ.get("MDL_RUNS", Path.home() / ".cache" / "mnist-diffusion-lab" / "runs"))
BASE_LR, BASE_WARMUP_IMAGES = 2e-3, 200 * 64
ARMS = {"b64": (64, BASE_LR), "b128": (128, BASE_LR), "b128-sqrt-lr": (128, BASE_LR * math.sqrt(2))}


def arm_flags(arm: str, images: int, ckpt_images: int) -> list[str]:
    """train.pixel_uncond flags for `arm`: steps, warm-up and checkpoints counted in images."""
    batch, lr = ARMS[arm]
    for total, what in ((images, "--images"), (ckpt_images, "--ckpt-images")):
        if total % batch:
            raise ValueError(f"{what} {total} must be a multiple of every arm's batch size ({batch})")
    steps, every = images // batch, ckpt_images // batch
    return ["--batch-size", str(batch), "--lr", f"{lr:.6g}", "--steps", str(steps),
            "--warmup", str(BASE_WARMUP_IMAGES // batch), "--ckpt-every", str(every), "--keep", str(steps // every + 1),
            "--sample-every", "0", "--guide-step", "0", "--precond", "edm", "--t-sampling", "edm"]


def train(arms, images: int, ckpt_images: int, threads: int) -> None:
    for arm in arms:
        out = RUNS / f"bs-{arm}"
        cmd = [sys.executable, "-m", "train.pixel_uncond", "--out", str(out), "--weights-dir", "",
               "--threads", str(threads), "--resume", *arm_flags(arm, images, ckpt_images)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def held_out_batch(n: int = 2000, seed: int = 0):
    """The first n MNIST test images and one fixed draw of (t, z) for them (EDM noise levels)."""
    from diffusion.losses import dsm_noise
    from diffusion.sde import VESDE
    from train.data import load_mnist
    x, _ = load_mnist("test", limit=n)
    return x, dsm_noise(x, torch.Generator().manual_seed(seed), t_sampling="edm", sde=VESDE(25.0))


@torch.inference_mode()
def held_out_loss(model, x, noise, chunk: int = 500) -> float:
    """dsm_loss on the fixed batch, in chunks (the mean of equal-size chunk means is the batch mean)."""
    from diffusion.losses import dsm_loss
    parts = [dsm_loss(model, x[i:i + chunk], noise={k: v[i:i + chunk] for k, v in noise.items()})
             for i in range(0, len(x), chunk)]
    return float(torch.stack(parts).mean())


def evaluate(arms) -> list[dict]:
    from train.diffusion_models import ema_from_checkpoint
    x, noise = held_out_batch()
    rows = []
    for arm in arms:
        run_dir = RUNS / f"bs-{arm}"
        batch = ARMS[arm][0]
        for ckpt in sorted(run_dir.glob("ckpt-*")):
            meta = json.loads((ckpt / "state.json").read_text())
            step = int(meta["step"])
            row = {"arm": arm, "batch": batch, "lr": ARMS[arm][1], "step": step, "images": step * batch,
                   "wall_s": meta.get("wall_s"),
                   "raw": held_out_loss(ema_from_checkpoint(run_dir, ckpt, "model"), x, noise),
                   "ema": held_out_loss(ema_from_checkpoint(run_dir, ckpt, "ema"), x, noise)}
            rows.append(row)
            print(arm, row["images"], f"raw {row['raw']:.2f} ema {row['ema']:.2f} wall {row['wall_s']}", flush=True)
    (RESULTS / "batch_size.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=1) + "\n")
    return rows


def report(rows: list[dict], cpu: str) -> None:
    """bench/results/batch_size.md (loss and images/s per arm at each checkpoint) and batch_size.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = ["# Batch size at equal images: held-out loss vs images seen (pixel-uncond, EDM recipe)", "",
             "Held-out loss: the EDM-weighted DSM objective on 2000 MNIST test images with one fixed draw of noise "
             "(lower is better), for the raw and the EMA weights. images/s: training images over training wall time "
             f"up to that checkpoint, one thread per arm, arms run one after another on {cpu}. Produced by "
             "`python -m bench.batch_size --train && python -m bench.batch_size --eval`.", "",
             "| arm | batch | lr | images | held-out loss, raw | held-out loss, EMA | train wall (s) | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arm"], r["images"])):
        rate = r["images"] / r["wall_s"] if r.get("wall_s") else float("nan")
        lines.append(f"| {r['arm']} | {r['batch']} | {r['lr']:.2g} | {r['images']:,} | {r['raw']:.2f} | "
                     f"{r['ema']:.2f} | {r['wall_s'] or 0:.0f} | {rate:.0f} |")
    (RESULTS / "batch_size.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in ARMS:
        pts = sorted((r["images"], r["raw"], r["wall_s"] or float("nan")) for r in rows if r["arm"] == arm)
        if pts:
            images, raw, wall = zip(*pts)
            axes[0].plot(images, raw, marker="o", label=arm)
            axes[1].plot([w / 60 for w in wall], raw, marker="o", label=arm)
    axes[0].set(xlabel="training images seen", ylabel="held-out loss (raw weights)", title="per image")
    axes[1].set(xlabel="training wall time (min, 1 thread)", title="per CPU minute")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "batch_size.png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true")
    p.add_argument("--eval", action="store_true")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--images", type=int, default=128_000, help="training images per arm")
    p.add_argument("--ckpt-images", type=int, default=16_000, help="a checkpoint every this many images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="rewrite the table and plot from batch_size.json")
    args = p.parse_args(argv)
    if args.report_only:
        stored = json.loads((RESULTS / "batch_size.json").read_text())
        return report(stored["rows"], stored["cpu"])
    if not (args.train or args.eval):
        p.error("pass --train, --eval or --report-only")
    if args.train:
        train(args.arms, args.images, args.ckpt_images, args.threads)
    if args.eval:
        rows = evaluate(args.arms)
        report(rows, _cpu())


if __name__ == "__main__":
    main()
