"""What sampling costs: seconds per network evaluation (NFE) per image, measured, and estimates built on it.

A sampler's wall time is close to NFE x (one score-model call on the batch): every solver here spends its time in
the network. A guided call on a conditional model runs a doubled batch (classifier-free guidance, Ho & Salimans
2022, both halves in one call), and a latent pipeline decodes its previews with the autoencoder. One timing rule
for the app's up-front estimate and the benchmarks' plans.
"""
from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def seconds_per_nfe(score_model, batch: int = 8, *, guidance: float = 1.0, decoder=None, reps: int = 1,
                    warmup: int = 1) -> float:
    """Median over `reps` timed calls of the seconds one network evaluation takes per image: a score-model call on
    `batch` inputs at t = 0.5 (guided, on 2 x batch, when the model is conditional and guidance != 1), plus one
    `decoder` call on them when given, divided by `batch`. `warmup` untimed calls go first (they also warm the
    model up for a first request)."""
    device = next(score_model.parameters()).device
    x = torch.randn(batch, *score_model.sample_shape, device=device)             # (B, C, H, W)
    labels = (torch.arange(batch, device=device) % 10) if score_model.conditional else None
    w = guidance if score_model.conditional or getattr(score_model, "autoguided", False) else 1.0
    t = torch.full((batch,), 0.5, device=device)

    def call():
        score_model(x, t, labels, guidance=w)
        if decoder is not None:
            decoder(x)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, reps)):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def work_batch(n: int, guided: bool, guidance: float) -> int:
    """Images per network evaluation: n, doubled by guidance (w != 1) on a model that has it: classifier-free on a
    conditional model (one call on 2n), autoguidance on an unconditional one (two networks' calls on n)."""
    return n * (2 if guided and guidance != 1.0 else 1)


class CostModel:
    """Seconds per NFE per image for each named model: measured once (`measure`), refined by every finished run
    (`learn`, an exponential moving average), and turned into estimates (`estimate`)."""

    def __init__(self, rates: dict[str, float] | None = None, weight: float = 0.3):
        self.rates, self.weight = dict(rates or {}), float(weight)

    def measure(self, name: str, score_model, decoder=None, batch: int = 8) -> float:
        self.rates[name] = seconds_per_nfe(score_model, batch, decoder=decoder)
        return self.rates[name]

    def estimate(self, name: str, nfe: int, images: int) -> float | None:
        """Seconds for `nfe` evaluations on `images` images per evaluation (None: `name` was never timed)."""
        rate = self.rates.get(name)
        return None if rate is None else nfe * images * rate

    def learn(self, name: str, nfe: int, images: int, seconds: float) -> None:
        """Fold a finished run (seconds of network time for nfe x images) into the rate."""
        if nfe and images and name in self.rates:
            self.rates[name] = (1 - self.weight) * self.rates[name] + self.weight * seconds / (nfe * images)
