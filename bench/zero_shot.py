"""Accuracy of the conditional diffusion models as zero-shot classifiers (diffusion/zero_shot.py) on MNIST test
digits, beside the two evaluation classifiers' accuracy on the same digits, and the time per digit.

Each digit is scored on every label at all K noise levels (one shared noise draw per level). Because the noise
does not depend on which labels are still being scored, the stop-early variants (every label on a few levels, the
best `keep` on the rest) are replayed exactly from the same error curves; so is "every other level", which keeps
the K-grid's even-numbered levels with doubled weight (a coarser midpoint-like rule over the same range).
`--stop-early F KEEP` runs the stop-early classifier itself instead (its own row only: dropped labels' curves are
missing), timing it.

Digits: the first N of a seeded permutation of the 10k test set (the same permutation as bench/likelihood.py).
Rows are written after every batch, so a run stopped early still leaves its table (with its n).

    python -m bench.zero_shot [--models pixel-cond latent-cond] [--n 1000] [--levels 20] [--batch 50]
Writes bench/results/zero_shot.json and zero_shot.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusion.pipeline import cpu_name
from diffusion.zero_shot import StopEarly, classify_images, first_level_indices

RESULTS = Path(__file__).resolve().parent / "results"
STOP_EARLY_VARIANTS = (StopEarly(4, 3), StopEarly(5, 3), StopEarly(5, 2), StopEarly(10, 3))


def predictions_from(errors: torch.Tensor, weights: torch.Tensor, stop_early: StopEarly | None = None,
                     levels: list[int] | None = None) -> torch.Tensor:
    """(B,) predicted label (index) from full error curves (B, L, K): all levels, a sub-grid `levels` (weights
    rescaled to the full range), or the stop-early rule replayed (rank on the first levels, keep the best)."""
    if levels is not None:
        w = torch.zeros_like(weights)
        w[levels] = weights[levels] * (len(weights) / len(levels))
        return (errors @ w).argmin(dim=1)
    full = errors @ weights                                               # (B, L)
    if stop_early is None:
        return full.argmin(dim=1)
    first = first_level_indices(errors.shape[2], stop_early.first_levels)
    partial = errors[:, :, first] @ weights[first]
    dropped = partial.argsort(dim=1)[:, stop_early.keep:]
    return full.scatter(1, dropped, torch.inf).argmin(dim=1)


def evaluation_classifiers(images: torch.Tensor) -> dict[str, torch.Tensor]:
    from diffusion.hub import load_model
    from diffusion.metrics import predict

    out = {}
    for name in ("classifier", "classifier-resnet"):
        try:
            with torch.no_grad():
                out[name] = predict(load_model(name).eval(), images)[0].argmax(dim=1)
        except Exception as e:  # noqa: BLE001 - a missing evaluator is reported, not fatal
            print(f"{name}: not evaluated ({type(e).__name__}: {e})", flush=True)
    return out


def summarise(args, model_runs: dict, labels: torch.Tensor, evaluators: dict) -> dict:
    rows = []
    for name, run in model_runs.items():
        if not run["errors"]:
            continue
        errors, weights = torch.cat(run["errors"]), run["weights"]
        n = errors.shape[0]
        truth = labels[:n]
        k = errors.shape[2]
        per_eval = run["wall"] / run["evaluations"]
        if args.stop_early:
            se = StopEarly(*args.stop_early)
            rows.append({"model": name, "variant": f"stop early: all labels on {se.first_levels} levels, best "
                         f"{se.keep} on the rest", "n": n, "accuracy": float(torch.cat(run["predicted"]).eq(truth).float().mean()),
                         "evaluations_per_digit": run["evaluations"] / n, "seconds_per_digit": run["wall"] / n})
            continue
        variants = [("all labels, all levels", None, None)] + \
                   [(f"stop early: all labels on {s.first_levels} levels, best {s.keep} on the rest", s, None)
                    for s in STOP_EARLY_VARIANTS] + \
                   [(f"every other level ({k // 2} of {k})", None, list(range(0, k, 2)))]
        for what, se, levels in variants:
            pred = predictions_from(errors, weights, se, levels)
            evals = 10 * (len(levels) if levels else k) if se is None else \
                10 * min(se.first_levels, k) + se.keep * (k - min(se.first_levels, k))
            rows.append({"model": name, "variant": what, "n": n, "accuracy": float((pred == truth).float().mean()),
                         "evaluations_per_digit": evals, "seconds_per_digit": per_eval * evals})
    for name, pred in evaluators.items():
        n = max((sum(len(e) for e in r["errors"]) for r in model_runs.values()), default=0)
        rows.append({"model": name, "variant": "evaluation classifier", "n": n,
                     "accuracy": float((pred[:n] == labels[:n]).float().mean())})
    out = {"n_requested": args.n, "levels": args.levels, "stop_early": args.stop_early, "seed": args.seed, "cpu": cpu_name(),
           "threads": torch.get_num_threads(), "rows": rows,
           "note": "timings on a shared 2-core machine with other jobs running: noisy, an upper bound"}
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "zero_shot.json").write_text(json.dumps(out, indent=1))
    md = ["# The diffusion models as zero-shot classifiers (diffusion/zero_shot.py)", "",
          f"MNIST test digits (the first n of a seeded permutation, seed {args.seed}); p(c | x) = softmax of minus "
          f"the ELBO estimate over {args.levels} noise levels spaced evenly in ln sigma over [std(eps), std(1)] = "
          "[0.0317, 9.85], one noise draw per level shared by all ten labels, fp32. Seconds per digit = measured "
          f"seconds per network evaluation x evaluations per digit, on {out['cpu']} with {out['threads']} threads, "
          "while other jobs shared the machine (noisy; an upper bound).", "",
          "Stop-early rows replayed from the full curves are exact (the noise does not depend on which labels are "
          "still scored); a run made with --stop-early times itself.", "",
          "| model | variant | n | accuracy | evaluations / digit | s / digit |", "|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"{r['seconds_per_digit']:.2f}" if "seconds_per_digit" in r else "—"
        evals = format(r["evaluations_per_digit"], "g") if "evaluations_per_digit" in r else "—"
        md.append(f"| {r['model']} | {r['variant']} | {r['n']} | {100 * r['accuracy']:.1f}% | {evals} | {secs} |")
    (outdir / "zero_shot.md").write_text("\n".join(md) + "\n")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["pixel-cond", "latent-cond"])
    p.add_argument("--n", type=int, default=1000, help="test digits")
    p.add_argument("--levels", type=int, default=20, help="noise levels K")
    p.add_argument("--batch", type=int, default=50, help="digits per classify call")
    p.add_argument("--stop-early", nargs=2, type=int, metavar=("FIRST_LEVELS", "KEEP"), default=None,
                   help="run the stop-early classifier itself (its rows only: the dropped labels' curves are missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    from diffusion.hub import load_pipeline
    from train.data import load_mnist
    x_test, y_test = load_mnist("test")
    idx = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    images, labels = x_test[idx], y_test[idx]
    evaluators = evaluation_classifiers(images)
    stop_early = StopEarly(*args.stop_early) if args.stop_early else None
    pipes = {name: load_pipeline(name) for name in args.models}   # classify calls the score model itself: fp32
    runs = {name: {"errors": [], "weights": None, "wall": 0.0, "evaluations": 0, "predicted": []} for name in args.models}
    for start in range(0, args.n, args.batch):          # the models in turn, batch by batch: equal n at any stop
        for name, pipe in pipes.items():
            run = runs[name]
            g = torch.Generator().manual_seed(args.seed * 100_003 + start)
            t0 = time.perf_counter()
            res = classify_images(pipe, images[start:start + args.batch], num_levels=args.levels, generator=g,
                                  stop_early=stop_early)
            run["wall"] += time.perf_counter() - t0
            run["evaluations"] += res.evaluations
            run["errors"].append(res.errors)
            run["predicted"].append(res.predicted)
            run["weights"] = res.weights
            done = sum(len(e) for e in run["errors"])
            acc = float(torch.cat(run["predicted"]).eq(labels[:done]).float().mean())
            print(f"{name}: {done} digits, accuracy {acc:.4f}, {run['wall'] / done:.2f} s/digit", flush=True)
            summarise(args, runs, labels, evaluators)

if __name__ == "__main__":
    main()
