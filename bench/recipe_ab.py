"""Training-recipe A/B at equal compute: the v1 recipe against EDM's, plus a third arm, on pixel-cond.

Arms (same network, batch, optimizer, LR schedule, seed and step count, so equal steps = equal compute; the
wall time of each arm is recorded as well, all on the same machine, one after another with 1 thread each):
  v1         precond=song (s = F / std), t ~ U(eps, 1)              the shipped v1 weights' recipe
  log_sigma  precond=song,  log std(t) ~ U                            more low-noise training, same network output
  edm        precond=edm (c_skip/c_out/c_in/c_noise), ln std ~ N(-1.2, 1.2^2), lambda = 1/c_out^2   (Karras et al. 2022)
Every `--ckpt-every` steps the EMA weights are kept; `--eval` samples each checkpoint (dpmpp_2m, 10 steps, the
given guidance weights, the same seeds) and scores it in both evaluators' feature spaces (diffusion.metrics.Evaluator).

    python -m bench.recipe_ab --train --steps 2000        # runs under ~/.cache/mnist-diffusion-lab/runs/ab-*
    python -m bench.recipe_ab --eval --samples 1000       # bench/results/recipe_ab.{json,md,png}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.tables import cell
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(os.environ.get("MDL_RUNS", Path.home() / ".cache" / "mnist-diffusion-lab" / "runs"))
ARMS = {
    "v1": ["--precond", "song", "--t-sampling", "uniform"],
    "log_sigma": ["--precond", "song", "--t-sampling", "log_sigma"],
    "edm": ["--precond", "edm", "--t-sampling", "edm"],
}


def train(arms, steps: int, ckpt_every: int, threads: int) -> None:
    for arm in arms:
        out = RUNS / f"ab-{arm}"
        cmd = [sys.executable, "-m", "train.pixel_cond", "--out", str(out), "--weights-dir", str(out / "weights"),
               "--steps", str(steps), "--ckpt-every", str(ckpt_every), "--keep", str(steps // ckpt_every + 1),
               "--sample-every", str(ckpt_every), "--threads", str(threads), "--resume", *ARMS[arm]]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def ema_model(run_dir: Path, ckpt: Path) -> ScoreModel:
    """The EMA weights of a training checkpoint in the run's architecture."""
    from train.diffusion_models import ema_from_checkpoint
    return ema_from_checkpoint(run_dir, ckpt)


def evaluate(arms, samples: int, guidances, steps: int = 10, at_steps=None) -> list[dict]:
    from train.evaluate import load_evaluator
    evaluator = load_evaluator()
    path = RESULTS / "recipe_ab.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["arm"], r["step"], r["guidance"], r["samples"]) for r in rows}
    labels = torch.arange(samples) % 10
    for arm in arms:
        run_dir = RUNS / f"ab-{arm}"
        for ckpt in sorted(run_dir.glob("ckpt-*")):
            meta = json.loads((ckpt / "state.json").read_text())
            step = int(meta["step"])
            if at_steps and step not in at_steps:
                continue
            for w in guidances:
                if (arm, step, w, samples) in done:
                    continue
                pipe = Pipeline(ema_model(run_dir, ckpt), name=f"ab-{arm}")
                images = torch.cat([pipe.generate(labels[i:i + 500], sampler="dpmpp_2m", num_steps=steps,
                                                  guidance=w, seed=1234 + i // 500)[0] for i in range(0, samples, 500)])
                m = evaluator.evaluate(images[:, None], labels)
                rows.append({"arm": arm, "step": step, "wall_s": meta.get("wall_s"), "guidance": w, "samples": samples,
                             "sampler": "dpmpp_2m", "steps": steps, "metrics": m})
                ev = m["evaluators"]
                print(arm, step, w, {k: round(v["frechet_ratio"], 2) for k, v in ev.items()},
                      f"speck {m['speck_rate']:.3f} confident {m['confident_rate']:.3f}", flush=True)
                path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def report(rows: list[dict]) -> None:
    """bench/results/recipe_ab.md (a table per guidance weight) and recipe_ab.png (FD ratio vs training step)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = ["# Training recipe A/B (pixel-cond architecture, equal steps = equal compute)", "",
             "FD ratio = Frechet distance / the same-N real floor, in each evaluator's feature space "
             "(c = weights/classifier, r = classifier-resnet). Samples: dpmpp_2m, 10 steps. Produced by "
             "`python -m bench.recipe_ab --eval`; wall time per arm is the training time up to the checkpoint, "
             f"recorded on this machine ({_cpu()}).", ""]
    for w in sorted({r["guidance"] for r in rows}):
        lines += [f"## guidance w = {w}", "", "| arm | step | train wall (s) | FD ratio c | FD ratio r | KID c (x1e3) | "
                  "KID r (x1e3) | precision c / r | recall c / r | accuracy c / r | confident | speck |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["guidance"] == w), key=lambda r: (r["arm"], r["step"])):
            m = r["metrics"]
            c, rr = m["evaluators"]["classifier"], m["evaluators"].get("classifier-resnet", {})
            lines.append(f"| {r['arm']} | {r['step']} | {r['wall_s'] or 0:.0f} | {cell(c, 'frechet_ratio')} | "
                         f"{cell(rr, 'frechet_ratio')} | {cell(c, 'kid_mean', 1e3)} +- {cell(c, 'kid_std', 1e3)} | "
                         f"{cell(rr, 'kid_mean', 1e3)} +- {cell(rr, 'kid_std', 1e3)} | {cell(c, 'precision')} / {cell(rr, 'precision')} | "
                         f"{cell(c, 'recall')} / {cell(rr, 'recall')} | {cell(c, 'conditional_accuracy', 100, '.1f')} / "
                         f"{cell(rr, 'conditional_accuracy', 100, '.1f')} | {100 * m.get('confident_rate', float('nan')):.1f}% | "
                         f"{100 * m['speck_rate']:.1f}% |")
        lines.append("")
    (RESULTS / "recipe_ab.md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("classifier", "classifier-resnet")):
        for arm in ARMS:
            for w in sorted({r["guidance"] for r in rows}):
                pts = sorted((r["step"], r["metrics"]["evaluators"][name]["frechet_ratio"]) for r in rows
                             if r["arm"] == arm and r["guidance"] == w and name in r["metrics"]["evaluators"])
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{arm}, w={w}")
        ax.set(title=f"FD / same-N floor in {name} features", xlabel="training step (batch 64)", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FD ratio (1 = real digits)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "recipe_ab.png", dpi=110)


def _cpu() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true")
    p.add_argument("--eval", action="store_true")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    p.add_argument("--at-steps", type=int, nargs="+", default=None, help="evaluate only these checkpoints")
    a = p.parse_args(argv)
    if a.train:
        t0 = time.time()
        train(a.arms, a.steps, a.ckpt_every, a.threads)
        print(f"trained {a.arms} in {time.time() - t0:.0f} s")
    if a.eval:
        report(evaluate(a.arms, a.samples, a.guidance, at_steps=a.at_steps))
    elif (RESULTS / "recipe_ab.json").is_file():
        report(json.loads((RESULTS / "recipe_ab.json").read_text()))


if __name__ == "__main__":
    main()
