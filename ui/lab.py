"""The state the tabs share and the guards every handler runs: loaded pipelines and where they came from, the
evaluation classifier, the time limit per request, the cost model, the shipped MNIST test digits, a temp dir."""
from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from diffusion.cost import CostModel, work_batch
from diffusion.hub import PIPELINE_NAMES
from diffusion.images import gif_bytes
from diffusion.samplers import SAMPLERS, sampler_spec
from diffusion.sde import VESDE

from .pictures import PREVIEW_FRAMES
from .validation import MAX_GUIDANCE, MAX_SEED, MAX_STEPS, bad, check_choice, check_float, check_int

ASSETS = Path(__file__).resolve().parent.parent / "app_assets"
SAMPLE_PATH = ASSETS / "mnist_test_sample.npz"
MODEL_NAMES = PIPELINE_NAMES                   # ("pixel-uncond", "pixel-cond", "latent-cond")
DEFAULT_MAX_SECONDS = 120.0   # a request that runs longer is stopped (bounded work on a shared CPU)
PREVIEW_INTERVAL = 0.1        # s between streamed updates: at most ~10 a second, the last one always


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def param_count(module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def preview_every(sampler: str, steps: int) -> int:
    """Decode every k-th step so a run shows at most PREVIEW_FRAMES previews (every step of an adaptive solver)."""
    return 1 if sampler_spec(sampler).adaptive else max(1, math.ceil(steps / PREVIEW_FRAMES))


class Lab:
    """Shared state (see the module docstring); `calibrate` times each model once (which also warms it up)."""

    def __init__(self, pipelines: dict, messages=(), *, classifier=None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 sample_path: Path = SAMPLE_PATH, calibrate: bool = True):
        self.pipelines, self.messages, self.classifier = dict(pipelines), list(messages), classifier
        self.max_seconds = float(max_seconds)
        any_model = next(iter(self.pipelines.values()), None)
        self.sde = any_model.score_model.sde if any_model is not None else VESDE(25.0)
        with np.load(sample_path, allow_pickle=False) as d:
            self.test_images = torch.from_numpy(d["images"].astype(np.float32) / 255.0)   # (100, 28, 28)
            self.test_labels = d["labels"].astype(int)
        self.tmp = Path(tempfile.mkdtemp(prefix="mnist-diffusion-lab-"))
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.cost = CostModel()
        if calibrate:
            for name, pipe in self.pipelines.items():
                self.cost.measure(name, pipe.score_model, pipe.autoencoder.decode if pipe.is_latent else None)

    # -- guards ------------------------------------------------------------------------------------
    def pipeline(self, name: str, *, conditional: bool | None = None, param: str = "model"):
        check_choice(param, name, MODEL_NAMES)
        if name not in self.pipelines:
            why = next((m for m in self.messages if m.startswith(name + ":")), "no weights were loaded")
            raise gr.Error(f"{param}: {name} is not available in this app ({why}).", title="Model unavailable",
                           print_exception=False)
        pipe = self.pipelines[name]
        if conditional and not pipe.conditional:
            raise bad(param, "must be a class-conditional model (pixel-cond or latent-cond)", name)
        return pipe

    @staticmethod
    def check_sampling(sampler, steps, guidance, seed):
        return (check_choice("sampler", sampler, list(SAMPLERS)), check_int("steps", steps, 1, MAX_STEPS),
                check_float("guidance", guidance, 0.0, MAX_GUIDANCE), check_int("seed", seed, 0, MAX_SEED))

    def work_batch(self, pipe, n: int, guidance: float) -> int:
        return work_batch(n, pipe.conditional, guidance)

    def estimate_seconds(self, name: str, sampler: str, steps: int, n: int, guidance: float) -> float | None:
        spec = sampler_spec(sampler)
        nfe = spec.typical_nfe if spec.adaptive else spec.nfe_for(steps)
        return self.cost.estimate(name, nfe, self.work_batch(self.pipelines[name], n, guidance))

    def refuse_runaway(self, name, sampler, steps, n, guidance):
        est = self.estimate_seconds(name, sampler, steps, n, guidance)
        if est is not None and est > 3 * self.max_seconds:
            raise gr.Error(f"steps / num_images: this request would take about {est:.0f} s here, over the "
                           f"app's {self.max_seconds:.0f} s limit per request. Use fewer steps or images, "
                           f"or a sampler with fewer NFE per step.", title="Too much work", print_exception=False)

    def check_time(self, elapsed: float):
        if elapsed > self.max_seconds:
            raise gr.Error(f"Stopped after {elapsed:.0f} s: the app's limit per request is {self.max_seconds:.0f} s. "
                           "Use fewer steps or images.", title="Time limit", print_exception=False)

    # -- shared outputs ----------------------------------------------------------------------------
    def write_gif(self, frames, stem: str) -> str:
        for old in self.tmp.iterdir():                      # keep the temp dir small: drop files > 1 h old
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.tmp / uuid.uuid4().hex
        folder.mkdir()
        path = folder / f"{stem}.gif"
        path.write_bytes(gif_bytes(frames, duration_ms=100, final_hold_ms=1500))
        return str(path)

    def classifier_line(self, images: torch.Tensor, digit: int | None) -> str:
        if self.classifier is None:
            return ""
        from diffusion.metrics import classify
        preds, _ = classify(self.classifier, images[:, None])
        if digit is None:
            counts = np.bincount(preds.numpy(), minlength=10)
            return " · evaluation classifier reads: " + ", ".join(f"{d}×{c}" for d, c in enumerate(counts) if c)
        hits = int((preds == digit).sum())
        return f" · evaluation classifier reads {hits}/{len(preds)} as a {digit}"
