"""Autoguidance for the unconditional model (diffusion.autoguidance): which early checkpoint to guide with, and w.

The good model is a run's final EMA weights (or a weights folder), the bad one an earlier checkpoint of the same run.
Every (bad checkpoint, w) is sampled with the same seeds and scored in both feature spaces
(diffusion.metrics.Evaluator); the rule is the project's (`diffusion.setting_rules.choose_setting`: lowest worse-of-two
FD ratio; an unconditional model has no accuracy bar). Rows accumulate in bench/results/autoguidance.json, the
report is bench/results/autoguidance.md.

    python -m bench.autoguidance --run ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3 \
        --good ckpt-00009000 --bad ckpt-00001000 ckpt-00002000 --guidance 1 1.5 2 2.5 --samples 1000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.recipe_ab import _cpu, ema_model
from bench.tables import EVALUATOR_COLUMNS, EVALUATOR_RULE, evaluator_cells
from diffusion.setting_rules import choose_setting, worst_ratio

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "autoguidance.json"


def _key(r: dict) -> tuple:
    return (r["label"], r["good"], r["bad"], r["sampler"], r["steps"], r["guidance"], r["samples"])


def _model(run: Path, name: str):
    """A checkpoint of `run` (ckpt-NNNNNNNN, EMA weights) or a weights folder (from_pretrained)."""
    path = Path(name).expanduser()
    if (path / "model.safetensors").is_file():
        from diffusion.score import ScoreModel
        return ScoreModel.from_pretrained(str(path)).eval()
    ckpt = path if path.is_dir() else run / name
    if not (ckpt / "state.safetensors").is_file():
        raise SystemExit(f"{name}: neither a weights folder nor a checkpoint of {run}")
    return ema_model(run, ckpt)


def run_sweep(run: Path, good: str, bads: list[str], guidances: list[float], samples: int, sampler: str, steps: int,
              label: str, seed: int = 1234) -> list[dict]:
    from diffusion.autoguidance import AutoGuided
    from diffusion.pipeline import Pipeline
    from train.evaluate import generate, load_evaluator
    rows = json.loads(STORE.read_text()) if STORE.is_file() else []
    evaluator = load_evaluator()
    good_model = _model(run, good)
    for k, bad in enumerate(bads):
        bad_model = _model(run, bad)
        pipe = Pipeline(AutoGuided(good_model, bad_model), name=label)
        for w in guidances:
            if w == 1.0 and k:                          # w = 1 is the good model alone, whichever the guide
                continue
            t0 = time.perf_counter()
            images, _, nfe, _ = generate(pipe, samples, sampler, steps, w, seed)
            m = evaluator.evaluate(images, None)
            row = {"label": label, "good": good, "bad": bad, "sampler": sampler, "steps": steps, "guidance": w,
                   "samples": samples, "seed": seed, "nfe": nfe, "seconds": round(time.perf_counter() - t0, 1),
                   "cpu": _cpu(), "metrics": m}
            rows = [r for r in rows if _key(r) != _key(row)] + [row]
            STORE.write_text(json.dumps(rows, indent=1) + "\n")
            print(label, bad, w, f"worst FD ratio {worst_ratio(m):.2f}", f"confident {m['confident_rate']:.3f}",
                  flush=True)
    return rows


def report(rows: list[dict], out: Path | None = RESULTS / "autoguidance.md") -> str:
    lines = ["# Autoguidance for the unconditional model", "",
             "D_w = D_bad + w (D_good - D_bad) (Karras et al. 2024), the bad model an early checkpoint of the good "
             "model's own run; w = 1 is the good model alone. FD ratio = FD / same-N real floor in the feature spaces "
             "of weights/classifier (c) and weights/classifier-resnet (r). Same seeds in every row. Produced by "
             "`python -m bench.autoguidance`.", ""]
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        n = max(r["samples"] for r in mine)
        best = choose_setting([dict(r, setting={"guidance": r["guidance"]}) for r in mine if r["samples"] == n])
        lines += [f"## {label}", "", f"Good model: `{Path(mine[0]['good']).name}`; {mine[0]['cpu']}. "
                  f"**Pick at N = {n}: guide {Path(best['bad']).name}, w = {best['guidance']:g}** "
                  f"(worst FD ratio {worst_ratio(best['metrics']):.2f})", "",
                  f"| guide (bad) | sampler | steps | w | N | {EVALUATOR_COLUMNS} |", "|---" * 5 + EVALUATOR_RULE + "|"]
        seen = set()
        for r in sorted(mine, key=lambda r: (r["samples"], r["guidance"] != 1.0, r["bad"], r["guidance"])):
            if r["guidance"] == 1.0 and (r["samples"], r["sampler"]) in seen:
                continue                                 # the same images under every guide
            if r["guidance"] == 1.0:
                seen.add((r["samples"], r["sampler"]))
            guide = "(none: w = 1 is the model alone)" if r["guidance"] == 1.0 else Path(r["bad"]).name
            lines.append(f"| {guide} | {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['samples']} | "
                         f"{evaluator_cells(r['metrics'])} |")
        lines.append("")
    text = "\n".join(lines)
    if out is not None:
        out.write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3").expanduser())
    p.add_argument("--good", default="", help="a checkpoint name of --run or a weights folder")
    p.add_argument("--bad", nargs="+", default=[])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler", default="dpmpp_2m_sde")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--label", default="pixel-uncond")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    if not a.report_only:
        if not a.good or not a.bad:
            raise SystemExit("give --good and at least one --bad")
        run_sweep(a.run.expanduser(), a.good, a.bad, a.guidance, a.samples, a.sampler, a.steps, a.label)
    print(report(json.loads(STORE.read_text())))


if __name__ == "__main__":
    main()
