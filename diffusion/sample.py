"""Sampling CLI.

    python -m diffusion.sample --model pixel-cond --digits 0-9 --per-digit 50 --out samples.npz [--grid grid.png]
    python -m diffusion.sample --model pixel-uncond --n 1000 --out samples.npz

Writes `images` (N, 28, 28) float32 in [0, 1] and `labels` (N,) int64 (-1 for unconditional).
Leaving out --sampler/--steps/--guidance gives the project's recommended defaults. Same seed and
arguments give the same images on the same machine.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from .guidance import GuidanceSchedule
from .hub import WeightsNotFound, load_pipeline
from .images import save_grid
from .pipeline import BACKENDS, MODEL_DEFAULTS, PRECISIONS
from .registry import FLAGSHIP, SAMPLEABLE_NAMES, defaults_for, model_names
from .samplers import SAMPLERS


def parse_digits(spec: str) -> list[int]:
    """'0-9' -> [0..9]; '3' -> [3]; '1,4,7' -> [1, 4, 7]; '0-2,7' -> [0, 1, 2, 7]."""
    digits: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                digits += list(range(lo, hi + 1))
            else:
                digits.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--digits: {spec!r} is not like '0-9', '3' or '1,4,7'") from None
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"--digits: {spec!r} must name digits between 0 and 9")
    return digits


def positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    samplers = "\n".join(f"  {name:<20} {spec.description}" for name, spec in SAMPLERS.items())
    defaults = "\n".join(f"  {name:<13} --sampler {d.sampler} --steps {d.steps}"
                         + f" --guidance {d.guidance:g}"
                         + ("" if d.schedule.constant else
                            f" --guidance-interval {d.schedule.sigma_lo:g} {d.schedule.sigma_hi:g}")
                         for name, d in MODEL_DEFAULTS.items())
    p = argparse.ArgumentParser(
        prog="python -m diffusion.sample", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample MNIST digits from a trained score model.",
        epilog=f"samplers:\n{samplers}\n\ndefaults per model (from bench/samplers.py):\n{defaults}")
    p.add_argument("--model", choices=tuple(SAMPLEABLE_NAMES), default=FLAGSHIP)
    p.add_argument("--digits", type=parse_digits, default=None, help="conditional models: e.g. 0-9, 3, 1,4,7")
    p.add_argument("--per-digit", type=positive_int, default=10, help="images per digit (conditional)")
    p.add_argument("--n", type=positive_int, default=None, help="number of images (unconditional)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="default: the model's (below)")
    p.add_argument("--steps", type=positive_int, default=None, help="default: the model's (below)")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"guidance weight w (classifier-free; {', '.join(model_names(guidance='autoguidance'))}: "
                        "autoguidance by its guide); "
                        "default: the model's (below)")
    p.add_argument("--guidance-interval", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="apply w only at noise levels LO < sigma <= HI (Kynkaanniemi et al. 2024; 0 inf: everywhere); "
                        "default: the model's (below)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--out", default="samples.npz")
    p.add_argument("--grid", default=None, help="also write a PNG grid of the samples")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--hub-repo", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="score network precision: auto = bf16 autocast on a CPU with bf16 hardware, else fp32")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what evaluates the score network (diffusion/backends.py): auto = the measured winner for "
                        "this CPU and precision (bench/results/backends.md), eager = plain PyTorch, the reference")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = defaults_for(args.model)
    args.sampler = defaults.sampler if args.sampler is None else args.sampler
    args.steps = defaults.steps if args.steps is None else args.steps
    args.guidance = defaults.guidance if args.guidance is None else args.guidance
    if not np.isfinite(args.guidance) or args.guidance < 0:
        parser.error(f"--guidance must be a finite number >= 0, got {args.guidance}")
    try:
        schedule = defaults.schedule if args.guidance_interval is None else GuidanceSchedule(*args.guidance_interval)
    except ValueError as e:
        parser.error(f"--guidance-interval: {e}")
    try:
        pipe = load_pipeline(args.model, weights_dir=args.weights_dir, hub_repo=args.hub_repo,
                             revision=args.revision, device=args.device)
    except WeightsNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pipe.precision, pipe.backend = args.precision, args.backend
    if pipe.conditional:
        if args.n is not None:
            parser.error(f"--n is for unconditional models; {args.model} takes --digits and --per-digit")
        digits = args.digits if args.digits is not None else list(range(10))
        labels = torch.tensor(digits).repeat_interleave(args.per_digit)
    else:
        if args.digits is not None:
            parser.error(f"{args.model} is unconditional: use --n instead of --digits")
        labels = None
    total = len(labels) if labels is not None else (args.n or 100)
    images, t0, nfe = [], time.perf_counter(), 0
    for b, start in enumerate(range(0, total, args.batch_size)):
        stop = min(start + args.batch_size, total)
        chunk = labels[start:stop] if labels is not None else None
        try:
            imgs, last = pipe.generate(chunk, num_images=stop - start, sampler=args.sampler, num_steps=args.steps,
                                       guidance=args.guidance, seed=args.seed + b, guidance_schedule=schedule)
        except ValueError as e:   # e.g. a step count or guidance a distilled student was not trained for
            parser.error(str(e))
        images.append(imgs.numpy())
        nfe = last.nfe
    images = np.concatenate(images).astype(np.float32)
    out_labels = labels.numpy().astype(np.int64) if labels is not None else np.full(total, -1, dtype=np.int64)
    np.savez(args.out, images=images, labels=out_labels)
    if args.grid:
        nrow = args.per_digit if labels is not None and args.per_digit <= 20 else None
        save_grid(torch.from_numpy(images), args.grid, nrow=nrow)
    print(f"wrote {total} images to {args.out} ({args.model}, {args.sampler}, {args.steps} steps, NFE {nfe}/batch, "
          f"guidance {args.guidance if pipe.guided else 'n/a'}"
          f"{'' if schedule.constant or not pipe.guided else ' ' + schedule.describe(short=True)}, seed {args.seed}, {pipe.compute_precision}, "
          f"{pipe.compute_backend}, "
          f"{time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
