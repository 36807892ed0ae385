"""Sampling defaults chosen by a written rule that uses both evaluators.

For one model, sample each candidate setting (sampler, steps, guidance w) with the same seeds, score it in both
feature spaces (diffusion.metrics.Evaluator) and apply `diffusion.setting_rules.choose_setting`: the lowest worse-of-two
Frechet ratio (FD / same-N real floor) among settings whose lower conditional accuracy is >= 99% and, where any
setting reaches it, whose speck rate is within 1 point of real digits'.
The guidance grid is coarse over 0-4 first, then 0.25 around the coarse optimum (`--refine`).
Rows accumulate in bench/results/defaults.json (one per model/setting/N, replaced on rerun); the report is
bench/results/defaults.md. tests/bench/test_bench.py checks that diffusion.pipeline.MODEL_DEFAULTS is the rule's pick.

    python -m bench.defaults --model pixel-cond --weights-dir weights --guidance 0 1 2 3 4 --samples 1000
    python -m bench.defaults --model pixel-cond --refine --samples 1000       # the 0.25 grid around the optimum
    python -m bench.defaults --report-only
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

from bench.tables import EVALUATOR_COLUMNS, EVALUATOR_RULE, evaluator_cells
from diffusion.setting_rules import choose_setting, min_accuracy, worst_ratio

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "defaults.json"


def load_rows(path: Path = STORE) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def setting_key(r: dict) -> tuple:
    """A row's identity: model, sampler, steps, w, N, and any sampler extras (e.g. eta) in the setting."""
    s = r["setting"]
    extras = tuple(sorted((k, v) for k, v in s.items() if k not in ("sampler", "steps", "guidance")))
    return (r["model"], s["sampler"], s["steps"], s["guidance"], r["samples"], *extras)


def store_row(row: dict, path: Path | None = None) -> list[dict]:
    """Add `row` to the store (replacing the same setting at the same N) and return all rows. The read-modify-write
    holds an exclusive lock and the file is replaced atomically, so sweeps run side by side keep each other's rows."""
    path = path or STORE
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in load_rows(path) if setting_key(r) != setting_key(row)] + [row]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, path)
    return rows


def pick(rows: list[dict], model: str, samples: int | None = None) -> dict:
    """The rule's choice for `model` among its rows at the largest N present (or `samples`)."""
    mine = [r for r in rows if r["model"] == model]
    n = samples or max(r["samples"] for r in mine)
    ordered = sorted((r for r in mine if r["samples"] == n),
                     key=lambda r: (r["setting"]["steps"], r["setting"]["sampler"], r["setting"]["guidance"]))
    return choose_setting(ordered)


def run(model: str, weights_dir: Path, settings: list[tuple[str, int, float]], samples: int, seed: int = 1234,
        label: str | None = None, precision: str = "auto") -> list[dict]:
    """Sample and score each setting of `model` (from weights_dir); rows are stored under `label` (default: the
    model name; e.g. "pixel-cond-v1" for superseded weights measured for comparison)."""
    from diffusion.hub import load_pipeline
    from train.evaluate import generate, load_evaluator
    rows = load_rows()
    evaluator = load_evaluator()
    pipe = load_pipeline(model, weights_dir=weights_dir)
    pipe.precision = precision          # "auto": bf16 autocast on a CPU with bf16 hardware (as the app), else fp32
    for sampler, steps, w in settings:
        t0 = time.perf_counter()
        images, labels, nfe, wall = generate(pipe, samples, sampler, steps, w, seed)
        m = evaluator.evaluate(images, labels if pipe.conditional else None)
        row = {"model": label or model, "samples": samples, "seed": seed, "nfe": nfe, "seconds": round(time.perf_counter() - t0, 1),
               "setting": {"sampler": sampler, "steps": steps, "guidance": w}, "metrics": m,
               "weights": str(weights_dir), "precision": pipe.compute_precision}
        rows = store_row(row)
        print(model, sampler, steps, w, f"worst FD ratio {worst_ratio(m):.2f}",
              f"min accuracy {min_accuracy(m):.4f}" if pipe.conditional else "", flush=True)
    return rows


def report(rows: list[dict]) -> str:
    lines = ["# Sampling defaults by rule (both evaluators)", "",
             "Rule (`diffusion.setting_rules.choose_setting`): the lowest worse-of-two FD ratio (FD / same-N real floor, in the "
             "feature spaces of weights/classifier = c and weights/classifier-resnet = r) among settings whose lower "
             "conditional accuracy is >= 99%, and, where any setting reaches it, whose speck rate is within 1 point of real "
             "digits' (0.69%). Same seeds for every setting. Produced by `python -m bench.defaults`.", ""]
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        best = pick(rows, model)
        b = best["setting"]
        lines += [f"## {model}", "", f"**Pick: {b['sampler']}, {b['steps']} steps, w = {b['guidance']:g}** "
                  f"(N = {best['samples']}, worst FD ratio {worst_ratio(best['metrics']):.2f})", "",
                  f"| sampler | steps | w | N | {EVALUATOR_COLUMNS} |", "|---" * 4 + EVALUATOR_RULE + "|"]
        for r in sorted(mine, key=lambda r: (r["samples"], r["setting"]["sampler"], r["setting"]["steps"], r["setting"]["guidance"])):
            s = r["setting"]
            lines.append(f"| {s['sampler']} | {s['steps']} | {s['guidance']:g} | {r['samples']} | "
                         f"{evaluator_cells(r['metrics'])} |")
        lines.append("")
    text = "\n".join(lines)
    (RESULTS / "defaults.md").write_text(text)
    return text


def refine_grid(rows: list[dict], model: str, sampler: str, steps: int, samples: int) -> list[float]:
    """0.25-spaced guidance weights within 0.5 of the coarse optimum, not yet measured."""
    best = pick([r for r in rows if r["setting"]["sampler"] == sampler and r["setting"]["steps"] == steps], model, samples)
    w0 = best["setting"]["guidance"]
    have = {r["setting"]["guidance"] for r in rows if r["model"] == model and r["samples"] == samples
            and r["setting"]["sampler"] == sampler and r["setting"]["steps"] == steps}
    return [w for w in (w0 - 0.5, w0 - 0.25, w0 + 0.25, w0 + 0.5) if 0 <= w <= 4 and w not in have]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pixel-cond")
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, nargs="+", default=[10])
    p.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--refine", action="store_true", help="add the 0.25 grid around the current optimum")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--label", default=None, help="store rows under this name (default: --model)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="sampling precision (rows record the one used; give a --label to keep both)")
    a = p.parse_args(argv)
    if not a.report_only:
        rows = load_rows()
        for steps in a.steps:
            ws = refine_grid(rows, a.label or a.model, a.sampler, steps, a.samples) if a.refine else a.guidance
            rows = run(a.model, Path(a.weights_dir), [(a.sampler, steps, w) for w in ws], a.samples, label=a.label,
                       precision=a.precision)
    print(report(load_rows()))


if __name__ == "__main__":
    main()
