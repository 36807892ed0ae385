"""Roofline of the app's networks on this CPU, and where a request's wall time goes (issue 24, item 1).

Part 1, machine rates, measured in the same run as everything else: fp32 and bf16 matmul GFLOP/s (n x n @ n x n,
2 n^3 FLOP; the best of a few at the start and a few at the end of the run, torch's threads as the app runs them),
the CPU, torch, threads, load average at start and end.

Part 2, achieved GFLOP/s of every shipped network at the app's batch sizes. FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` on one image (convolutions, matmuls: 2 x MACs; the single-token
cross-attention's SDPA is not counted and is negligible), and an evaluation of B images costs B times that.
Time: best and median of `--reps` calls after two warm-up calls, under `torch.inference_mode`, the columns of a
row interleaved call by call; achieved GFLOP/s = flops_per_image x B / best seconds, beside the matmul rate of the
same precision. Networks: the score
models the app samples (pixel-cond, latent-cond, pixel-uncond and its autoguidance guide), the 4-step student
pixel-cond-distilled, the autoencoder's decoder. Batches 16 / 32 (Generate's 16-image grid without / with the
doubled guidance batch), 64, 128. Columns: fp32, bf16 autocast, and with `--backends` (when `diffusion/backends.py`
exists; bench/roofline_backends.py, import-guarded) each backend in fp32 and bf16 (ONNX Runtime: fp32), as the
pipeline runs it. torch.compile is offered too but compiles for about a minute per network and precision.

Part 3 (bench/roofline_requests.py, bench/roofline_gradio.py): the wall time of one Generate, Live and
Pixel-vs-latent request split into network, autoencoder decode, sampler/guidance bookkeeping, preview images, GIF,
classifier check, PNG encoding and gradio, the app in a server process of its own and requests sent through
gradio_client.

    python -m bench.roofline [--reps 5] [--quick] [--batches 16 32 64 128] [--backends all | NAME ...]
                             [--skip-requests] [--skip-gradio]
Writes bench/results/roofline.md and roofline.json. Run it under `flock /tmp/bench.lock`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.roofline_backends import backend_columns, choose_backends

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (16, 32, 64, 128)
QUICK_BATCHES = (16, 32)
PRECISIONS = ("fp32", "bf16")
MATMUL_N = 2048
MATMUL_REPS = 8               # per probe; one probe at the start of the run, one at the end
PROBE_TIME = 0.5              # t at which score networks are timed (their cost does not depend on t)
STUDENT_GUIDANCE = 2.0        # the w a guidance-embedded student is called with (Live's default)


# ---------------------------------------------------------------- arithmetic

def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of fn(*args, **kwargs) as torch's FlopCounterMode counts them (2 x MACs for matmul and convolution)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def gflops(flops: float, seconds: float) -> float:
    """Achieved rate in GFLOP/s: flops / seconds / 1e9."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if flops < 0:
        raise ValueError(f"flops must be >= 0, got {flops!r}")
    return flops / seconds / 1e9


def percent_of(rate: float, peak: float) -> float:
    """rate as a percentage of peak (both GFLOP/s)."""
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak!r}")
    return 100.0 * rate / peak


def precision_context(precision: str):
    """fp32: nothing; bf16: CPU autocast to bfloat16, as diffusion.pipeline runs the score network."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def time_call(fn: Callable[[], object], reps: int, warmup: int = 2) -> tuple[float, float]:
    """(best, median) seconds of fn() over `reps` calls after `warmup` untimed ones, under inference_mode."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps!r}")
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def matmul_rate(precision: str, n: int = MATMUL_N, reps: int = 5) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul in fp32 or bf16 (bf16 tensors, oneDNN's bf16 GEMM): 2 n^3 FLOP / best."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    best, _ = time_call(lambda: a @ b, reps, warmup=1)
    return gflops(2.0 * n ** 3, best)


def machine(stage: str) -> dict:
    """What every figure is read against: the CPU, torch, threads, and the load average now."""
    from diffusion.pipeline import cpu_name

    return {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), f"load_{stage}": [round(v, 2) for v in os.getloadavg()], "commit": git_commit()}


def git_commit() -> str:
    """The repository's HEAD (short), or "?" outside a git checkout."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent.parent, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---------------------------------------------------------------- the networks

@dataclass
class Network:
    """One network as the app calls it: `method` of `module` on `inputs(batch)` = (args, kwargs)."""
    name: str
    role: str                              # "score" | "student" | "guide" | "decoder"
    module: torch.nn.Module
    inputs: Callable[[int], tuple[tuple, dict]]
    method: str = "__call__"

    def call(self, batch: int, module: torch.nn.Module | None = None) -> Callable[[], torch.Tensor]:
        """A zero-argument function that runs one evaluation of `batch` inputs (built once, so that timing sees the
        network only) on `module` (default: this network's own; a backend's copy of it)."""
        args, kwargs = self.inputs(batch)
        fn = getattr(module if module is not None else self.module, self.method)
        return lambda: fn(*args, **kwargs)

    def flops_per_image(self) -> int:
        """FLOPs of one evaluation of one image (an evaluation of B images costs B times this)."""
        return count_flops(self.call(1))


def score_network(name: str, role: str, score_model) -> Network:
    """A ScoreModel's evaluation at t = PROBE_TIME on x (B, C, H, W): digits as labels for a conditional model, w as a
    network input for a guidance-embedded student (one call, no doubled batch)."""
    def inputs(batch: int):
        x = torch.randn(batch, *score_model.sample_shape, generator=torch.Generator().manual_seed(batch))
        t = torch.full((batch,), PROBE_TIME)
        labels = torch.arange(batch) % score_model.num_classes if score_model.conditional else None
        return (x, t, labels), ({"guidance": STUDENT_GUIDANCE} if score_model.guidance_embed else {})
    return Network(name, role, score_model, inputs)


def decoder_network(name: str, autoencoder) -> Network:
    """The autoencoder's decode of unit-variance latents z (B, 4, 10, 10) -> (B, 1, 28, 28)."""
    def inputs(batch: int):
        return (torch.randn(batch, *autoencoder.latent_shape, generator=torch.Generator().manual_seed(batch)),), {}
    return Network(name, "decoder", autoencoder, inputs, method="decode")


def networks_of(pipelines: dict) -> list[Network]:
    """The networks behind {name: Pipeline}: each score model (both halves of an autoguided pair, the guide under
    its own name), and each latent pipeline's decoder once."""
    out, seen = [], set()
    for name, pipe in pipelines.items():
        sm = pipe.score_model
        role = "student" if getattr(sm, "distilled", None) else "score"
        if getattr(sm, "autoguided", False):
            out.append(score_network(name, role, sm.good))
            out.append(score_network(sm.good.autoguide or f"{name} guide", "guide", sm.bad))
        else:
            out.append(score_network(name, role, sm))
        if pipe.is_latent and id(pipe.autoencoder) not in seen:
            seen.add(id(pipe.autoencoder))
            out.append(decoder_network(f"{name} decoder", pipe.autoencoder))
    return out


def shipped_pipelines(weights_dir) -> tuple[dict, list[str]]:
    """{name: Pipeline} for the score models the app samples and the 4-step student (registry order), and a message
    for each that could not be loaded."""
    from diffusion.hub import load_pipeline
    from diffusion.registry import DISTILLED_NAMES, PIPELINE_NAMES

    pipes, missing = {}, []
    for name in (*PIPELINE_NAMES, DISTILLED_NAMES[0]):
        try:
            pipes[name] = load_pipeline(name, weights_dir=weights_dir)
        except Exception as e:  # noqa: BLE001 - a missing model is a row left out, said in the report
            missing.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return pipes, missing


# ---------------------------------------------------------------- measuring

def under(precision: str, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run in `precision` (precision_context)."""
    def run():
        with precision_context(precision):
            return fn()
    return run


def variants(extra: dict | None = None) -> dict:
    """{column: (precision of the matmul rate it is read against, make)}: make(network, batch) -> a zero-argument
    evaluation run that way. fp32 and bf16 autocast always; `extra` columns (backends) after them."""
    return {p: (p, lambda net, batch, p=p: under(p, net.call(batch))) for p in PRECISIONS} | dict(extra or {})


def error_cell(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}


def time_interleaved(runs: dict, reps: int, warmup: int = 2) -> tuple[dict, dict]:
    """{name: (best, median)} seconds of each zero-argument run over `reps` rounds, the runs interleaved within each
    round (so that a burst of load hits them alike), after `warmup` calls of each, under inference_mode; and
    {name: error cell} for the runs that raised (dropped from then on)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps!r}")
    times, errors = {name: [] for name in runs}, {}

    def attempt(name, fn, timed):
        try:
            start = time.perf_counter()
            fn()
            if timed:
                times[name].append(time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this network: said in its cell
            errors[name] = error_cell(e)

    with torch.inference_mode():
        for k in range(warmup + reps):
            for name, fn in runs.items():
                if name not in errors:
                    attempt(name, fn, timed=k >= warmup)
    return {n: (min(v), statistics.median(v)) for n, v in times.items() if n not in errors}, errors


def measure_networks(networks: list[Network], batches, reps: int, rates: dict, columns: dict | None = None,
                     log=print) -> list[dict]:
    """One row per (network, batch): per column, best / median seconds (the columns interleaved), GFLOP/s (best) and
    % of the matmul rate of the column's precision. `columns` as `variants()`; a column that fails records its
    error."""
    columns = columns or variants()
    rows = []
    for net in networks:
        per_image = net.flops_per_image()
        for batch in batches:
            row = {"network": net.name, "role": net.role, "batch": batch, "mflop_per_image": per_image / 1e6,
                   "gflop_per_call": per_image * batch / 1e9, "columns": {}}
            runs = {}
            for col, (_, make) in columns.items():
                try:
                    runs[col] = make(net, batch)        # built outside inference_mode (a backend exports here)
                except Exception as e:  # noqa: BLE001 - said in the cell
                    row["columns"][col] = error_cell(e)
            timed, errors = time_interleaved(runs, reps)
            row["columns"].update(errors)
            for col, (best, median) in timed.items():
                row["columns"][col] = {"best_s": best, "median_s": median, "gflops": gflops(per_image * batch, best),
                                       "peak": columns[col][0]}
            row["columns"] = {c: row["columns"][c] for c in columns}          # in column order
            apply_rates([row], rates)
            rows.append(row)
            log(f"{net.name:28s} batch {batch:4d}  " + "  ".join(
                f"{c} {v['best_s'] * 1e3:7.1f} ms {v['gflops']:6.1f} GFLOP/s {v['pct_of_matmul']:5.1f}%"
                if "best_s" in v else f"{c} error" for c, v in row["columns"].items()))
    return rows


# ---------------------------------------------------------------- the report

def cell(v: dict) -> str:
    """One table cell: best ms (median ms) · GFLOP/s · % of matmul, or the column's error (shortened)."""
    if "best_s" in v:
        return (f"{v['best_s'] * 1e3:.1f} ms ({v['median_s'] * 1e3:.1f}) · {v['gflops']:.1f} GFLOP/s · "
                f"{v['pct_of_matmul']:.0f}%")
    error = v.get("error", "n/a")
    return "n/a (score networks only)" if "not the decoder" in error else error[:60]


def network_table(rows: list[dict], columns) -> list[str]:
    """Markdown: one row per (network, batch); per column one cell: best ms (median), GFLOP/s, % of the matmul rate
    of the column's precision."""
    lines = ["| network | batch | MFLOP / image | GFLOP / call | " + " | ".join(columns) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['mflop_per_image']:.1f} | {r['gflop_per_call']:.2f} | "
                     + " | ".join(cell(r["columns"].get(c, {})) for c in columns) + " |")
    return lines


def apply_rates(rows: list[dict], rates: dict) -> None:
    """Set every cell's % of the matmul rate of its precision (`rates`: GFLOP/s by precision)."""
    for r in rows:
        for v in r["columns"].values():
            if "gflops" in v:
                v["pct_of_matmul"] = percent_of(v["gflops"], rates[v["peak"]])


def write_report(result: dict, out: Path) -> str:
    """roofline.md from the result dict (also written as roofline.json); returns the markdown."""
    from bench.roofline_requests import breakdown_table

    m, rates = result["machine"], result["matmul_gflops"]
    lines = ["# Roofline: the app's networks against this CPU's matmul rate", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} torch threads. Load average "
             f"(1/5/15 min) at start {' / '.join(map(str, m['load_start']))}, at end "
             f"{' / '.join(map(str, m.get('load_end', [])))}. `{' '.join(['python -m bench.roofline', *result['argv']])}`"
             f" ({result['wall_s']:.0f} s" + (f", commit {m['commit']}" if m.get("commit") else "") + ").", "",
             f"Matmul ({MATMUL_N}² @ {MATMUL_N}², the best of {result['matmul_reps']} at the start and "
             f"{result['matmul_reps']} at the end): **fp32 {rates['fp32']:.1f} GFLOP/s**, **bf16 {rates['bf16']:.1f} "
             f"GFLOP/s** (start {result['matmul_start']['fp32']:.1f} / {result['matmul_start']['bf16']:.1f}, end "
             f"{result['matmul_end']['fp32']:.1f} / {result['matmul_end']['bf16']:.1f}).", "",
             "Achieved GFLOP/s = FLOPs (torch's FlopCounterMode, per image per evaluation, times the batch) / best "
             f"time of {result['reps']} calls after 2 warm-ups, under inference_mode; % of the matmul rate in the "
             "same precision (bf16 autocast against the bf16 rate). Backends (diffusion/backends.py, as the pipeline "
             "installs them, fp32 and bf16 each): "
             + (", ".join(result["backends"]) if result["backends"] else "none measured (--backends)") + ".", ""]
    lines += network_table(result["networks"], result["columns"])
    if result.get("missing"):
        lines += ["", "Not measured (no weights): " + "; ".join(result["missing"]) + "."]
    if result.get("requests"):
        lines += ["", "## Where a request's wall time goes", ""] + breakdown_table(result["requests"])
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.md").write_text(text)
    (out / "roofline.json").write_text(json.dumps(result, indent=1))
    return text


# ---------------------------------------------------------------- command line

def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return n


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=positive_int, default=5, help="timed calls per cell / requests per tab (default 5)")
    p.add_argument("--quick", action="store_true",
                   help=f"batches {' '.join(map(str, QUICK_BATCHES))} only, 2 reps, 2 requests per tab")
    p.add_argument("--batches", type=positive_int, nargs="+", default=None,
                   help=f"batch sizes (default {' '.join(map(str, BATCHES))})")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="also time these diffusion.backends backends (fp32 and bf16 columns each), or 'all' the "
                        "installed ones; torch.compile compiles once per network (about a minute each)")
    p.add_argument("--skip-requests", action="store_true", help="networks only, no per-request breakdown")
    p.add_argument("--skip-gradio", action="store_true", help="breakdown in-process only (no app on loopback)")
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.reps = min(args.reps, 2)
        args.batches = args.batches or list(QUICK_BATCHES)
    args.batches = args.batches or list(BATCHES)
    if not Path(args.weights_dir).is_dir():
        p.error(f"--weights-dir: {args.weights_dir} is not a folder")
    try:
        args.backends = choose_backends(args.backends)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> dict:
    import sys

    args = parse_args(argv)
    start = time.perf_counter()
    result = {"argv": list(sys.argv[1:] if argv is None else argv), "reps": args.reps, "batches": args.batches,
              "matmul_reps": MATMUL_REPS, "machine": machine("start")}
    rates = result["matmul_start"] = {p: matmul_rate(p, reps=MATMUL_REPS) for p in PRECISIONS}
    print(f"{result['machine']['cpu']}, {result['machine']['threads']} threads, load "
          f"{result['machine']['load_start']}: matmul fp32 {rates['fp32']:.1f}, bf16 {rates['bf16']:.1f} GFLOP/s")
    pipes, result["missing"] = shipped_pipelines(args.weights_dir)
    result["backends"] = args.backends
    columns = variants(backend_columns(args.backends))
    result["columns"] = list(columns)
    result["networks"] = measure_networks(networks_of(pipes), args.batches, args.reps, rates, columns)
    del pipes
    if not args.skip_requests:
        from bench.roofline_gradio import measure_requests

        result["requests"] = measure_requests(args.weights_dir, reps=args.reps, gradio=not args.skip_gradio)
    result["matmul_end"] = {p: matmul_rate(p, reps=MATMUL_REPS) for p in PRECISIONS}
    # the machine's rate: the better of the two probes (load only ever slows a matmul down)
    result["matmul_gflops"] = {p: max(result["matmul_start"][p], result["matmul_end"][p]) for p in PRECISIONS}
    apply_rates(result["networks"], result["matmul_gflops"])
    result["machine"].update(machine("end"))
    result["wall_s"] = time.perf_counter() - start
    print()
    print(write_report(result, Path(args.out)))
    return result


if __name__ == "__main__":
    main()
