"""What sampling costs: seconds per network evaluation (NFE) per image, measured, and estimates built on it.

A sampler's wall time is close to NFE x (one score-model call on the batch): every solver here spends its time in
the network. A guided call on a conditional model runs a doubled batch (classifier-free guidance, Ho & Salimans
2022, both halves in one call), and a latent pipeline decodes its previews with the autoencoder. One timing rule
for the app's up-front estimate and the benchmarks' plans.

Load from other work (another tab's training, another process) only ever makes a timing *longer*, never shorter: the
fastest of several timings is the least polluted one. So the app's rates come from the fastest of a few calibration
calls, and finished runs may lower a rate (the fastest recent run) but never raise it: a busy minute on a shared CPU
cannot inflate the next visitor's estimate and refuse a request that an idle machine would have admitted (issue 26).
"""
from __future__ import annotations

import statistics
import time
from collections import deque

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def seconds_per_nfe(score_model, batch: int = 8, *, guidance: float = 1.0, decoder=None, reps: int = 1,
                    warmup: int = 1, fastest: bool = False) -> float:
    """Median (fastest=True: minimum) over `reps` timed calls of the seconds one network evaluation takes per image:
    a score-model call on `batch` inputs at t = 0.5 (guided, on 2 x batch, when the model is conditional and
    guidance != 1), plus one `decoder` call on them when given, divided by `batch`. `warmup` untimed calls go first
    (they also warm the model up for a first request)."""
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
    return (min(times) if fastest else statistics.median(times)) / batch


def work_batch(n: int, guided: bool, guidance: float) -> int:
    """Images per network evaluation: n, doubled by guidance (w != 1) on a model that has it: classifier-free on a
    conditional model (one call on 2n), autoguidance on an unconditional one (two networks' calls on n)."""
    return n * (2 if guided and guidance != 1.0 else 1)


class CostModel:
    """Seconds per NFE per image for each named model (`rates`, read by every estimate): a calibration (`measure`,
    the fastest of `reps` timed calls), lowered by the fastest of the last `window` finished runs (`learn`) and never
    raised by them; `estimate` turns a rate into seconds. Setting `rates[name]` directly is a new calibration."""

    def __init__(self, rates: dict[str, float] | None = None, window: int = 16, reps: int = 5):
        if window < 1 or reps < 1:
            raise ValueError(f"window and reps must be >= 1, got window={window}, reps={reps}")
        self.rates: dict[str, float] = dict(rates or {})
        self.window, self.reps = int(window), int(reps)
        self.calibration: dict[str, float] = dict(self.rates)     # the rate each model was calibrated at
        self.recent: dict[str, deque] = {}                        # name -> observed rates of recent runs

    def measure(self, name: str, score_model, decoder=None, batch: int = 8) -> float:
        """Calibrate `name`: the fastest of `reps` timed calls (load from others can only slow a call down)."""
        self._calibrate(name, seconds_per_nfe(score_model, batch, decoder=decoder, reps=self.reps, fastest=True))
        return self.rates[name]

    def estimate(self, name: str, nfe: int, images: int) -> float | None:
        """Seconds for `nfe` evaluations on `images` images per evaluation (None: `name` was never timed)."""
        rate = self.rates.get(name)
        return None if rate is None else nfe * images * rate

    def learn(self, name: str, nfe: int, images: int, seconds: float) -> None:
        """Fold a finished run (seconds of network time for nfe x images) into the rate: the rate becomes the
        smallest of the calibration and the last `window` runs' rates, so a fast run corrects a calibration taken
        on a busy machine and a slow run (the machine busy with other work) changes nothing."""
        if not (nfe and images and seconds > 0) or name not in self.rates:
            return
        if self.rates[name] != self._effective(name):       # set directly since: that is the new calibration
            self._calibrate(name, self.rates[name])
        self.recent.setdefault(name, deque(maxlen=self.window)).append(seconds / (nfe * images))
        self.rates[name] = self._effective(name)

    def _calibrate(self, name: str, rate: float) -> None:
        self.calibration[name] = self.rates[name] = float(rate)
        self.recent.pop(name, None)

    def _effective(self, name: str) -> float | None:
        base = self.calibration.get(name)
        runs = self.recent.get(name)
        return base if base is None or not runs else min(base, min(runs))
