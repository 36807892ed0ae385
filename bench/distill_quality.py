"""Distilled students beside their teacher: FD ratio / KID / accuracy in both evaluators' feature spaces vs NFE and w.

    python -m bench.distill_quality --samples 2000 --guidance 1.5 2     # bench/results/distillation.{json,md}, grids
    python -m bench.distill_quality --samples 2000 --guidance 1.25 1.75 --students-only   # more w, same teacher rows

Rows: the teacher at its default (dpmpp_2m, 10 steps = 20 NFE with guidance's doubled batch, counted as 10 calls),
the teacher's 16-step DDIM (the sampler the students imitate), and every student folder present
(pixel-cond-distilled = 4 NFE, -2step, -1step). Same seeds for every row. Rows accumulate in the JSON keyed by
(model, sampler, steps, w, N); a rerun replaces its own. Sample grids (docs/) are drawn at each model's default w.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.tables import EVALUATOR_COLUMNS, EVALUATOR_RULE, evaluator_cells
from diffusion.images import save_grid
from diffusion.pipeline import defaults_for
from diffusion.registry import DISTILLED_NAMES

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def rows_for(weights_dir: Path, guidances, samples: int, seed: int = 1234, teacher: bool = True) -> list[dict]:
    from diffusion.hub import load_pipeline
    from train.evaluate import generate, load_evaluator
    evaluator = load_evaluator(weights_dir)
    plan = [("pixel-cond", "dpmpp_2m", 10), ("pixel-cond", "ddim", 16)] if teacher else []
    plan += [(n, "ddim", defaults_for(n).steps) for n in DISTILLED_NAMES if (weights_dir / n / "model.safetensors").is_file()]
    rows = []
    for name, sampler, steps in plan:
        pipe = load_pipeline(name, weights_dir=weights_dir)
        for w in guidances:
            t0 = time.perf_counter()
            images, labels, nfe, wall = generate(pipe, samples, sampler, steps, w, seed)
            m = evaluator.evaluate(images, labels)
            calls_per_step = 1 if name in DISTILLED_NAMES or w == 1.0 else 2   # students take w as an input
            rows.append({"model": name, "sampler": sampler, "steps": steps, "guidance": w, "samples": samples,
                         "network_calls": nfe, "image_evaluations_per_sample": nfe * calls_per_step,
                         "seconds_per_image": wall / samples, "metrics": m})
            if name in DISTILLED_NAMES and w == defaults_for(name).guidance:   # the grid at the default w
                order = torch.argsort(labels, stable=True)
                save_grid(images[order][:: max(1, samples // 100)][:100, 0], DOCS / f"samples-{name}.png", nrow=10, scale=2)
            print(name, sampler, steps, w, {k: round(v["frechet_ratio"], 2) for k, v in m["evaluators"].items()},
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows keyed by (model, sampler, steps, w, N): a rerun replaces its own rows and keeps the others."""
    key = lambda r: (r["model"], r["sampler"], r["steps"], r["guidance"], r["samples"])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def report(rows: list[dict]) -> str:
    lines = ["# Distilled students vs the teacher (pixel-cond)", "",
             "FD ratio = FD / same-N real floor; c = weights/classifier, r = weights/classifier-resnet. 'image evals' counts "
             "network evaluations per image (a guided teacher call evaluates a doubled batch: 2 per step). Produced by "
             "`python -m bench.distill_quality`.", "",
             f"| model | sampler | steps | image evals | w | N | {EVALUATOR_COLUMNS} | ms / image |",
             "|---" * 6 + EVALUATOR_RULE + "|---|"]
    order = {n: i for i, n in enumerate(["pixel-cond", *DISTILLED_NAMES])}
    for r in sorted(rows, key=lambda r: (order.get(r["model"], 99), r["steps"], -r["samples"], r["guidance"])):
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['image_evaluations_per_sample']} | "
                     f"{r['guidance']:g} | {r['samples']} | {evaluator_cells(r['metrics'])} | "
                     f"{1000 * r['seconds_per_image']:.1f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "distillation.md").write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--students-only", action="store_true", help="skip the teacher's rows (kept from earlier runs)")
    a = p.parse_args(argv)
    store = RESULTS / "distillation.json"
    old = json.loads(store.read_text()) if store.is_file() else []
    rows = merge(old, rows_for(Path(a.weights_dir), a.guidance, a.samples, teacher=not a.students_only))
    store.write_text(json.dumps(rows, indent=1) + "\n")
    print(report(rows))


if __name__ == "__main__":
    main()
