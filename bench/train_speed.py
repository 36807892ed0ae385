"""Training throughput of the pixel-cond score model on this machine: images/s per optimizer-step configuration.

Configurations (batch, memory format, precision, compile) are measured interleaved (A B C A B C ...) so a change
of machine load hits every configuration alike; the median of the repeats is reported with the CPU and thread
count. Writes bench/results/train_speed.{json,md}.

    python -m bench.train_speed [--threads 2] [--steps 15] [--repeats 3] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from diffusion.losses import dsm_loss, dsm_noise
from diffusion.score import ScoreModel

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {  # name: (batch, channels_last, autocast bf16, torch.compile)
    "b64 fp32 contiguous": (64, False, False, False),
    "b64 fp32 channels_last (shipped)": (64, True, False, False),
    "b64 bf16 autocast channels_last": (64, True, True, False),
    "b128 fp32 channels_last": (128, True, False, False),
    "b256 fp32 channels_last": (256, True, False, False),
}


class Stepper:
    def __init__(self, batch: int, channels_last: bool, bf16: bool, compile_: bool):
        torch.manual_seed(0)
        self.model = ScoreModel(num_classes=10, precond="edm")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.call = torch.compile(self.model) if compile_ else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
        self.g, self.bf16, self.batch = g, bf16, batch

    def step(self):
        noise = dsm_noise(self.x, self.g, 1e-3, 0.1, "edm", self.model.sde)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = dsm_loss(_Bound(self.call, self.model), self.x, self.y, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class _Bound:
    """The (possibly compiled) callable with the bare model's attributes (sde, null_label, loss_weight)."""

    def __init__(self, call, model):
        self._call, self._model = call, model

    def __call__(self, *a, **k):
        return self._call(*a, **k)

    def __getattr__(self, name):
        return getattr(self._model, name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compilation)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    configs = dict(CONFIGS)
    if a.compile:
        configs["b64 fp32 channels_last compiled"] = (64, True, False, True)
    steppers, warm = {}, {}
    for name, cfg in configs.items():
        steppers[name] = Stepper(*cfg)
        t0 = time.perf_counter()
        for _ in range(3):
            steppers[name].step()
        warm[name] = time.perf_counter() - t0
    rates: dict = {name: [] for name in configs}
    for _ in range(a.repeats):
        for name, s in steppers.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                s.step()
            rates[name].append(a.steps * s.batch / (time.perf_counter() - t0))
    base = statistics.median(rates["b64 fp32 channels_last (shipped)"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    rows = [{"config": n, "images_per_s": statistics.median(r), "speedup": statistics.median(r) / base,
             "warmup_s": warm[n], "repeats": r} for n, r in rates.items()]
    load = os.getloadavg()[0]
    lines = ["# Training throughput, pixel-cond (0.68 M parameters), EDM loss", "",
             f"{cpu}, {a.threads} threads, load average {load:.1f} during the run (other jobs running makes every row "
             f"slower alike: compare rows, not runs). Median of {a.repeats} interleaved repeats of {a.steps} steps.", "",
             "| configuration | images/s | vs shipped | first 3 steps (s) |", "|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | {r['warmup_s']:.1f} |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "train_speed.json").write_text(json.dumps({"cpu": cpu, "threads": a.threads, "load": load, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
