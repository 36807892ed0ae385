"""What a narrower pixel U-Net would buy (issue 24): parameters, counted FLOPs and measured time per forward pass
of the conditional pixel U-Net at several channel widths, untrained (speed does not depend on the weights).

The shipped U-Net already runs near the fp32 matmul rate the roofline measures (bench/results/roofline.md), so the
network-time target of 2.5x is a question of fewer FLOPs: this table says which width gets there, before anything is
trained at it. Times: torch eager, fp32, batch --batch, --threads threads, the widths interleaved in each round
(`bench.roofline.time_interleaved`), best and median of --reps.

    python -m bench.widths [--widths 16,32,64 12,24,48 10,20,40 8,16,32] [--batch 32] [--threads 1] [--reps 15]
Writes bench/results/widths.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.roofline import count_flops, time_interleaved
from diffusion.pipeline import cpu_name
from diffusion.score import ScoreModel

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = (16, 32, 64)


def parse_width(text: str) -> tuple[int, ...]:
    """"12,24,48" -> (12, 24, 48); the U-Net has one attention level (the third), whose channels split into 4 heads."""
    try:
        width = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise ValueError(f"a width is comma-separated channel counts (e.g. 12,24,48), got {text!r}") from None
    if len(width) != 3 or any(c < 4 for c in width) or width[2] % 4:
        raise ValueError(f"a width is three channel counts of at least 4, the third (the attention level's) a "
                         f"multiple of 4 (the heads), got {text!r}")
    return width


def unet(width: tuple[int, ...]) -> ScoreModel:
    torch.manual_seed(0)
    return ScoreModel(channels=width, attention_levels=(2,), num_classes=10, embed_dim=128, context_dim=64).eval()


def measure(widths: list[tuple[int, ...]], batch: int, reps: int) -> list[dict]:
    """One row per width: parameters, MFLOP per image (torch's FlopCounterMode), best / median seconds per call."""
    x, labels = torch.randn(batch, 1, 28, 28), torch.arange(batch) % 10
    sigma = torch.ones(batch)
    models = {w: unet(w) for w in widths}
    calls = {w: (lambda m=m: m.denoise(x, sigma, labels)) for w, m in models.items()}
    with torch.inference_mode():
        flops = {w: count_flops(fn) / batch for w, fn in calls.items()}
    times, errors = time_interleaved(calls, reps)
    if errors:
        raise RuntimeError(f"widths that failed: {errors}")
    return [{"width": list(w), "params": sum(p.numel() for p in models[w].parameters()), "mflop": flops[w] / 1e6,
             "best_s": times[w][0], "median_s": times[w][1]} for w in widths]


def report(rows: list[dict], batch: int, threads: int, cpu: str) -> str:
    base = next((r for r in rows if tuple(r["width"]) == SHIPPED), rows[0])
    lines = ["# Narrower pixel U-Nets: FLOPs and time (bench/widths.py)", "",
             f"Conditional pixel U-Net, attention at the third level, untrained; fp32 eager, batch {batch}, "
             f"{threads} thread(s), {cpu}. Speed-ups against {','.join(map(str, base['width']))}, from the best of "
             "the interleaved rounds.", "",
             "| channels | parameters | MFLOP / image | best ms | median ms | FLOPs fewer | speed-up (best) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {','.join(map(str, r['width']))} | {r['params'] / 1e6:.3f} M | {r['mflop']:.1f} | "
                     f"{1e3 * r['best_s']:.1f} | {1e3 * r['median_s']:.1f} | {base['mflop'] / r['mflop']:.2f}x | "
                     f"{base['best_s'] / r['best_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", nargs="+", default=["16,32,64", "12,24,48", "10,20,40", "8,16,32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", type=Path, default=RESULTS / "widths.md")
    a = p.parse_args(argv)
    try:
        widths = [parse_width(w) for w in a.widths]
    except ValueError as e:
        raise SystemExit(str(e))
    if a.batch < 1 or a.reps < 1 or a.threads < 1:
        raise SystemExit("--batch, --reps and --threads must be positive")
    torch.set_num_threads(a.threads)
    text = report(measure(widths, a.batch, a.reps), a.batch, a.threads, cpu_name())
    a.out.write_text(text)
    print(text + f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
