"""Sampler benchmark: sample quality against network evaluations (NFE) for every trained score model.

For each model x sampler x NFE (rk45: x tolerance, NFE measured) and guidance weight:
  - conditional accuracy (the project classifier's prediction == the digit asked for; conditional models),
  - Frechet distance on classifier features (diffusion/metrics.py) against the 10k MNIST test images,
  - wall time per image (2-CPU build machine unless stated).
Images come in chunks of CHUNK (CHUNK/10 per digit), chunk k seeded with seed + k, so a run with N=200
holds exactly the first 200 images of a run with N=1000: FD on a common prefix compares runs of any N
(FD is biased upward at small N; compare only figures at the same N). The floor is 10k train images
against the test set, and N train images against it at each N used.

Results accumulate in bench/results/samplers.json (one record per model/sampler/steps/guidance/N/seed,
replaced when re-run); each invocation rewrites samplers.md, guidance.md and quality_vs_nfe.png from it.

    python -m bench.samplers --quick                                   # smoke test, writes bench/results/quick/
    python -m bench.samplers --models pixel-cond --samplers dpmpp_2m heun --nfe 10 20 35 50 --samples 1000
    python -m bench.samplers --models pixel-cond --samplers euler_maruyama --nfe 500 --samples 200
    python -m bench.samplers --models pixel-cond --samplers dpmpp_2m --nfe 20 --guidance 0 1 2 3 5
    python -m bench.samplers ... --dry-run                             # plan + estimated wall time only
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusion.cost import seconds_per_nfe
from diffusion.metrics import Evaluator
from diffusion.pipeline import DEFAULT_GUIDANCE, PRECISIONS, cpu_name
from diffusion.registry import EVALUATOR_NAMES, FLAGSHIP, evaluation_order
from diffusion.samplers import SAMPLERS, sampler_spec
from train.data import load_mnist

from bench.samplers_report import (CHUNK, DEFAULT_NFE, REFERENCE, RESULTS, cheapest_within, grid_nfe,  # noqa: F401
                                   load_store, merge, reference_run, write_reports)


# ---------------------------------------------------------------- data and metrics


def load_evaluator(classifier, n_floor: int = 10_000) -> Evaluator:
    """diffusion.metrics.Evaluator in the project classifier's features: the 10k MNIST test digits as the reference,
    n_floor training digits (a fixed random draw, seed 0) for the floors (FD of N real digits at each N)."""
    x_test, y_test = load_mnist("test")
    x_train, _ = load_mnist("train")
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    return Evaluator({EVALUATOR_NAMES[0]: classifier}, x_test, y_test, x_train[perm[:n_floor]])


def floor(ev: Evaluator, n: int) -> float:
    """FD of n (random) training images against the test set: the best any sampler can score at this n."""
    return ev.floor(EVALUATOR_NAMES[0], n)


def run_metrics(ev: Evaluator, images: torch.Tensor, labels: torch.Tensor | None, prefixes) -> dict:
    """One run's record from Evaluator.evaluate, on all the images and on each shorter prefix (a run of N images
    holds the first n < N of a run with the same seed): fd, fd_at {n: FD}, class_hist, and with labels accuracy,
    per_class and acc_at {n: accuracy}. images (N, 28, 28) or (N, 1, 28, 28) in [0, 1]."""
    name, n = EVALUATOR_NAMES[0], len(images)
    at = {k: ev.evaluate(images[:k], None if labels is None else labels[:k])["evaluators"][name]
          for k in sorted({*(k for k in prefixes if k < n), n})}
    full = at[n]
    out = {"fd": full["frechet_distance"], "fd_at": {str(k): m["frechet_distance"] for k, m in at.items()},
           "class_hist": [round(v, 4) for v in full["class_histogram"]]}
    if labels is not None:
        out.update(accuracy=full["conditional_accuracy"], per_class=[round(v, 4) for v in full["per_digit_accuracy"]],
                   acc_at={str(k): m["conditional_accuracy"] for k, m in at.items()})
    return out


# ---------------------------------------------------------------- generation


def chunk_labels(n: int, conditional: bool):
    return torch.arange(10).repeat(n // 10) if conditional else None


def generate(pipe, sampler: str, steps: int | None, n: int, guidance: float, seed: int, chunk: int, extras: dict):
    """n images in chunks of `chunk` (chunk k seeded seed + k); returns images (n, 28, 28), labels, wall s, mean NFE."""
    images, labels, nfes, wall = [], [], [], 0.0
    generate.cpu_s = 0.0
    for k in range(math.ceil(n / chunk)):
        m = min(chunk, n - k * chunk)
        lab = chunk_labels(m, pipe.conditional)
        t0, c0 = time.perf_counter(), time.process_time()
        imgs, last = pipe.generate(lab, num_images=m, sampler=sampler, num_steps=steps, guidance=guidance,
                                   seed=seed + k, **extras)
        wall += time.perf_counter() - t0
        generate.cpu_s += time.process_time() - c0
        images.append(imgs)
        labels.append(lab if lab is not None else torch.full((m,), -1))
        nfes.append(last.nfe)
        print(f"    chunk {k}: {m} images, NFE {last.nfe}, {time.perf_counter() - t0:.1f} s", flush=True)
    return torch.cat(images), torch.cat(labels), wall, float(np.mean(nfes))


def plan(models, samplers, nfes, tols, guidances):
    """(model, sampler, steps, nominal NFE, guidance, extras) for every point of the grid."""
    for model in models:
        for w in guidances:
            for s in samplers:
                spec = sampler_spec(s)
                if spec.adaptive:
                    for tol in tols:
                        yield model, s, None, None, w, {"rtol": tol, "atol": tol}
                    continue
                seen = set()
                for nfe in nfes:
                    steps = spec.steps_for(nfe)
                    if steps in seen:
                        continue
                    seen.add(steps)
                    yield model, s, steps, spec.nfe_for(steps), w, {}


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(evaluation_order(role="score")))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, default=list(DEFAULT_NFE))
    p.add_argument("--rk45-tol", nargs="+", type=float, default=[1e-2, 1e-3])
    p.add_argument("--samples", type=int, default=1000, help="images per point (a multiple of 10)")
    p.add_argument("--guidance", nargs="+", type=float, default=[DEFAULT_GUIDANCE],
                   help="guidance weights (conditional models; several values make a sweep -> guidance.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=CHUNK, help="images per generate() call")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="score network precision (default fp32, as every stored result; auto: the app's choice)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--note", default="", help="stored with each record and shown in samplers.md (e.g. machine load)")
    p.add_argument("--grids", action="store_true", help="also save a 10x10 grid of each run's first 100 images")
    p.add_argument("--quick", action="store_true", help="smoke test: pixel-cond, 20 images, NFE 10, rk45 tol 1e-2")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated wall time, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite samplers.md, guidance.md and the plot from the stored results, run nothing")
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out)
        write_reports(load_store(out / "samplers.json"), out)
        print(f"wrote {out / 'samplers.md'}, {out / 'quality_vs_nfe.png'}")
        return
    if args.quick:
        args.models, args.nfe, args.samples, args.rk45_tol, args.chunk = [FLAGSHIP], [10], 20, [1e-2], 20
        args.out = str(Path(args.out) / "quick")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples % 10:
        p.error("--samples must be a multiple of 10")
    chunk = min(args.chunk, args.samples)

    from diffusion.hub import load_model, load_pipeline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "samplers.json"
    store = load_store(store_path)
    store["machine"] = (f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}" if not torch.cuda.is_available()
                        else "GPU")

    pipes = {m: load_pipeline(m, weights_dir=args.weights_dir) for m in args.models}
    for pipe in pipes.values():
        pipe.precision = args.precision
    points = list(plan(args.models, args.samplers, args.nfe, args.rk45_tol, args.guidance))
    # dedupe guidance for unguided models (an unconditional model without a guide); an autoguided one takes w
    seen, todo = set(), []
    for m, s, steps, nfe, w, ex in points:
        w = w if pipes[m].guided else None
        key = (m, s, steps, ex.get("rtol"), w)
        if key not in seen:
            seen.add(key)
            todo.append((m, s, steps, nfe, w, ex))

    cost = {(m, w): seconds_per_nfe(pipes[m].score_model, chunk, guidance=1.0 if w is None else w, reps=3)
            for m, _, _, _, w, _ in todo}
    total = 0.0
    print(f"plan: {len(todo)} points, {args.samples} images each (chunks of {chunk}), {torch.get_num_threads()} threads")
    for m, s, steps, nfe, w, ex in todo:
        est = cost[(m, w)] * args.samples * (nfe or sampler_spec(s).typical_nfe)
        total += est
        print(f"  {m:12s} {s:20s} steps {steps!s:>5} NFE {nfe or '~?':>4} w {w!s:>4}  ~{est:7.0f} s"
              + (f"  ({s}: NFE assumed {sampler_spec(s).typical_nfe})" if nfe is None else ""))
    print(f"estimated total: {total / 60:.1f} min ({', '.join(f'{k[0]} w={k[1]}: {1e3 * v:.2f} ms/img-NFE' for k, v in cost.items())})")
    if args.dry_run:
        return

    classifier = load_model(EVALUATOR_NAMES[0], weights_dir=args.weights_dir)
    t0 = time.perf_counter()
    ev = load_evaluator(classifier)
    prefixes = sorted({200, 400, 1000, args.samples} | {chunk})
    for n in sorted({10_000, *prefixes}):
        store["floor"][str(n)] = floor(ev, n)
    print("floor (train vs test): " + ", ".join(f"N={n}: {v:.2f}" for n, v in store["floor"].items())
          + f"  [{time.perf_counter() - t0:.0f} s]")

    t_all = time.perf_counter()
    for m, s, steps, nfe, w, ex in todo:
        print(f"{m} {s} steps={steps} tol={ex.get('rtol')} guidance={w} N={args.samples}", flush=True)
        images, labels, wall, nfe_used = generate(pipes[m], s, steps, args.samples, 1.0 if w is None else w,
                                                  args.seed, chunk, ex)
        res = run_metrics(ev, images, labels if pipes[m].conditional else None, prefixes)
        if args.grids:
            from diffusion.images import save_grid
            (out / "grids").mkdir(exist_ok=True)
            tag = f"tol{ex['rtol']:g}" if sampler_spec(s).adaptive else f"{steps}steps"
            save_grid(images[:100], out / "grids" / f"{m}_{s}_{tag}_w{w if w is not None else 1:g}.png", nrow=10)
        rec = {"model": m, "sampler": s, "steps": steps, "tol": ex.get("rtol"), "nfe": nfe_used, "guidance": w,
               "n": args.samples, "seed": args.seed, "chunk": chunk, "wall_s": wall,
               "ms_per_image": 1e3 * wall / args.samples, "cpu_ms_per_image": 1e3 * generate.cpu_s / args.samples,
               "ms_per_image_nfe": 1e3 * wall / args.samples / nfe_used,
               "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "note": args.note,
               "cpu": cpu_name() if not torch.cuda.is_available() else torch.cuda.get_device_name(),
               "precision": pipes[m].compute_precision, **res}
        merge(store, rec)
        store_path.write_text(json.dumps(store, indent=1))
        write_reports(store, out)
        print(f"  -> NFE {nfe_used:.0f}  FD {res['fd']:.2f}  acc {res.get('accuracy', float('nan')):.3f}  "
              f"{rec['ms_per_image']:.1f} ms/image  (run total {time.perf_counter() - t_all:.0f} s)", flush=True)
    write_reports(store, out)
    print(f"wrote {out / 'samplers.md'}, {out / 'quality_vs_nfe.png'}, {store_path}")


if __name__ == "__main__":
    main()
