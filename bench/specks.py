"""Where the specks come from: a score model's speck rate on its deterministic path (ddim, heun: the probability-flow
ODE at several step counts) beside its stochastic sampler, on the same noise, and the same for a training run's
newest checkpoint as it trains (issue 27, item 6).

A speck is `diffusion.metrics.speck_mask`'s: a lone ink blob of <= 2 pixels, >= 3 pixels from the digit. If the
ODE's specks fell with its step count they would be discretisation error, and a student distilled from a finer grid
would lose them; if they stay, they belong to the learned probability flow itself, and only a stochastic sampler
(or a better score model) removes them.

    python -m bench.specks --source weights/pixel-cond --w 1.0 --runs ddim:16 ddim:32 ddim:64 heun:32 dpmpp_2m_sde:10
    python -m bench.specks --source ~/.cache/mnist-diffusion-lab/runs/pixel-cond-long --w 1.0 --runs ddim:16
    python -m bench.specks --report-only

`--source` is a weights folder (model.safetensors) or a training run folder (its newest checkpoint's EMA weights; for a
`train.dmd` run, its EMA generator).
Every image of a row starts from the same noise (seed --seed) and labels i % 10, so rows differ only by sampler,
steps, w and weights. Rows are added to bench/results/specks.json (a row already there is measured again and
replaced) and the report bench/results/specks.md is rewritten; real test digits' own rate is its first line.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffusion.metrics import speck_mask
from diffusion.pipeline import cpu_name
from diffusion.samplers import sample, sampler_spec

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "specks.json"
CHUNK = 100


def parse_run(spec: str) -> tuple[str, int]:
    """"ddim:16" -> ("ddim", 16); a sampler the project does not have, or a bad count, is refused by name."""
    sampler, sep, steps = spec.partition(":")
    if not sep or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"--runs takes SAMPLER:STEPS with STEPS a positive integer (e.g. ddim:16), got {spec!r}")
    sampler_spec(sampler)                                  # raises, naming the samplers there are
    return sampler, int(steps)


def load_source(source: Path):
    """(score model, checkpoint name or "weights", training step or None) from a weights or run folder."""
    if (source / "model.safetensors").is_file():
        from diffusion.score import ScoreModel
        return ScoreModel.from_pretrained(str(source)).eval(), "weights", None
    ckpts = sorted(p for p in source.glob("ckpt-*") if (p / "state.json").is_file())
    if not ckpts or not (source / "config.json").is_file():
        raise SystemExit(f"--source {source}: neither a weights folder (model.safetensors) nor a training run "
                         "folder (config.json and ckpt-*/state.json)")
    step = int(ckpts[-1].name.split("-")[-1])
    if "fake_updates" in json.loads((source / "config.json").read_text()):       # a train.dmd run: its generator
        from train.dmd import generator_from_checkpoint
        return generator_from_checkpoint(source, ckpts[-1]), ckpts[-1].name, step
    from train.diffusion_models import ema_from_checkpoint
    return ema_from_checkpoint(source, ckpts[-1]).eval(), ckpts[-1].name, step


@torch.no_grad()
def speck_row(model, sampler: str, steps: int, guidance: float, n: int, seed: int = 1234) -> dict:
    """One row: n images of `sampler` at `steps`, guidance w, from seeded noise (N, C, H, W) * sigma_max."""
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, model.in_channels, model.image_size, model.image_size, generator=g) * model.sde.std_max
    labels = torch.arange(n) % 10 if model.num_classes else None
    start, images, nfe = time.perf_counter(), [], 0
    for i in range(0, n, CHUNK):
        x, nfe = sample(sampler, model, x_T[i:i + CHUNK].clone(), None if labels is None else labels[i:i + CHUNK],
                        num_steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(seed + 1 + i))
        images.append(x.clamp(0, 1))
    rate = float(speck_mask(torch.cat(images)).double().mean())
    return {"sampler": sampler, "steps": steps, "nfe": nfe, "guidance": guidance, "n": n, "seed": seed,
            "speck_rate": rate, "sd": math.sqrt(rate * (1 - rate) / n), "wall_s": round(time.perf_counter() - start, 1)}


def real_row(n: int | None = None) -> dict:
    """Real test digits' own speck rate (all 10k, or the first n)."""
    from train.data import load_mnist
    images = load_mnist("test", limit=n)[0]                  # (N, 1, 28, 28) in [0, 1]
    rate = float(speck_mask(images).double().mean())
    return {"source": "real test digits", "n": len(images), "speck_rate": rate,
            "sd": math.sqrt(rate * (1 - rate) / len(images))}


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("source", "checkpoint", "sampler", "steps", "guidance", "n", "seed"))


def merge(rows: list[dict], new: list[dict]) -> list[dict]:
    """Rows with the same key as a new one are replaced by it; order: the old rows' order, then the new ones."""
    fresh = {row_key(r): r for r in new}
    kept = [fresh.pop(row_key(r)) if row_key(r) in fresh else r for r in rows]
    return kept + [r for r in new if row_key(r) in fresh]


def report(store: dict) -> str:
    real = store.get("real")
    lines = ["# Specks: the deterministic path against the stochastic one (bench/specks.py)", "",
             "Speck rate (`diffusion.metrics.speck_mask`) of each source's samples, same noise and labels in every row;",
             "± is the binomial standard error; NFE counts one branch (w != 1 doubles the network calls); wall times are",
             "from a machine shared with training runs. Regenerate: `python -m bench.specks --report-only`.", ""]
    if real:
        lines += [f"Real test digits: **{real['speck_rate']:.2%}** ± {real['sd']:.2%} (n = {real['n']}).", ""]
    lines += ["| source | checkpoint | sampler | steps | NFE | w | n | specks | wall s | CPU |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in store["rows"]:
        lines.append(f"| {r['source']} | {r['checkpoint']} | {r['sampler']} | {r['steps']} | {r['nfe']} | "
                     f"{r['guidance']:g} | {r['n']} | {r['speck_rate']:.2%} ± {r['sd']:.2%} | {r['wall_s']} | "
                     f"{r['cpu']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=Path, help="weights folder or training run folder")
    p.add_argument("--label", default="", help="the source's name in the table (default: the folder's name)")
    p.add_argument("--w", type=float, default=1.0, help="guidance w (1 = none)")
    p.add_argument("--runs", nargs="+", default=["ddim:16", "dpmpp_2m_sde:10"], help="SAMPLER:STEPS ...")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--store", type=Path, default=STORE)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.report_only:
        if not args.store.is_file():
            raise SystemExit(f"--report-only: no store at {args.store}; measure a source first")
    elif args.source is None:
        raise SystemExit("--source is required (a weights folder or a training run folder), or --report-only")
    if args.n < 1:
        raise SystemExit(f"--n must be positive, got {args.n}")
    try:
        runs = [parse_run(s) for s in args.runs]
    except ValueError as e:
        raise SystemExit(str(e))
    store = json.loads(args.store.read_text()) if args.store.is_file() else {"rows": []}
    if not args.report_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        model, checkpoint, step = load_source(args.source.expanduser())
        label = args.label or args.source.expanduser().resolve().name
        new = []
        for sampler, steps in runs:
            row = {"source": label, "checkpoint": checkpoint, "step": step,
                   **speck_row(model, sampler, steps, args.w, args.n, args.seed), "cpu": cpu_name()}
            print(f"{label} {checkpoint} {sampler} {steps} w={args.w:g}: specks {row['speck_rate']:.2%} "
                  f"± {row['sd']:.2%} ({row['wall_s']} s)", flush=True)
            new.append(row)
        store["rows"] = merge(store["rows"], new)
        if "real" not in store:
            store["real"] = real_row()
        args.store.parent.mkdir(parents=True, exist_ok=True)
        args.store.write_text(json.dumps(store, indent=1) + "\n")
    args.store.with_suffix(".md").write_text(report(store))
    print(f"wrote {args.store} and {args.store.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
