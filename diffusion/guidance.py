"""Guidance schedules: the guidance weight as a function of the noise level.

Classifier-free guidance (and autoguidance) mixes two denoisers, D_w = D_u + w (D_c - D_u). Applied at every
noise level, a large w pulls samples toward the class's mode early, while the image is still being laid out, and
costs diversity; Kynkaanniemi et al. (2024, "Applying guidance in a limited interval improves sample and
distribution quality") apply it only on an interval of sigma. A `GuidanceSchedule` says where w applies:

    interval:  w(sigma) = w   for sigma_lo < sigma <= sigma_hi,   1 (no guidance) elsewhere
    ramp:      w(sigma) = 1 + (w - 1) * r(sigma),  r = 0 at sigma >= sigma_hi, 1 at sigma <= sigma_lo,
               linear in log sigma between (guidance fading in as the noise falls)

A weight of exactly 1 costs one network call on B images instead of two on 2B (ScoreModel._guided skips the
unconditional branch), so guidance only at low sigma is also cheaper. `GuidanceSchedule()` (the whole range) is
plain guidance, bit for bit.

`scheduled(score_model, schedule)` wraps a score model (or any wrapper of one: the pipeline's autocast and backend
wrappers) so that the samplers, which pass one w, see the schedule's w(sigma) at each call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceSchedule:
    sigma_lo: float = 0.0          # w applies above this noise level (interval) / in full below it (ramp)
    sigma_hi: float = math.inf     # ...and up to this one (interval) / not at all above it (ramp)
    ramp: bool = False

    def __post_init__(self):
        lo, hi = float(self.sigma_lo), float(self.sigma_hi)
        if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo < hi:
            raise ValueError(f"a guidance schedule needs 0 <= sigma_lo < sigma_hi, got sigma_lo={self.sigma_lo!r}, "
                             f"sigma_hi={self.sigma_hi!r}")
        if self.ramp and not (lo > 0 and math.isfinite(hi)):
            raise ValueError(f"a guidance ramp is linear in log sigma: it needs 0 < sigma_lo < sigma_hi < inf, "
                             f"got sigma_lo={self.sigma_lo!r}, sigma_hi={self.sigma_hi!r}")

    def __repr__(self) -> str:
        """Python that builds this schedule, naming only what differs from the defaults (the dataclass's own repr
        would print sigma_hi=inf, which is not Python): what the app's Reproduce line shows."""
        args = [f"sigma_lo={self.sigma_lo:g}"] if self.sigma_lo != 0.0 else []
        args += [f"sigma_hi={self.sigma_hi:g}"] if math.isfinite(self.sigma_hi) else []
        args += ["ramp=True"] if self.ramp else []
        return f"GuidanceSchedule({', '.join(args)})"

    @property
    def constant(self) -> bool:
        """True when w applies at every noise level (plain guidance)."""
        return not self.ramp and self.sigma_lo == 0.0 and self.sigma_hi == math.inf

    def fraction(self, sigma: float) -> float:
        """r(sigma) in [0, 1]: how much of (w - 1) applies at noise level sigma."""
        if not self.ramp:
            return 1.0 if self.sigma_lo < sigma <= self.sigma_hi else 0.0
        if sigma <= self.sigma_lo:
            return 1.0
        if sigma >= self.sigma_hi:
            return 0.0
        return math.log(self.sigma_hi / sigma) / math.log(self.sigma_hi / self.sigma_lo)

    def weight(self, guidance, sigma):
        """w(sigma) = 1 + (guidance - 1) r(sigma). `guidance` a float or a (B,) tensor; `sigma` a float, a scalar
        tensor or a (B,) tensor (then r is taken per sample and the result is a (B,) tensor)."""
        if torch.is_tensor(sigma) and sigma.ndim > 0:
            fractions = [self.fraction(float(s)) for s in sigma.reshape(-1)]
            if len(set(fractions)) > 1:          # noise levels differ within the batch: one w per sample
                r = torch.tensor(fractions, dtype=torch.float64)
                return 1.0 + (torch.as_tensor(guidance, dtype=torch.float64) - 1.0) * r
            sigma = sigma.reshape(-1)[0]
        r = self.fraction(float(sigma))
        if r == 1.0:
            return guidance
        if r == 0.0:
            return 1.0                          # exactly 1: the guided call falls back to one branch
        return 1.0 + (guidance - 1.0) * r

    def describe(self, short: bool = False) -> str:
        """A label for tables: 'all sigma', 'sigma in (0, 0.5]', 'ramp sigma 5 -> 0.3'; short=True says where w
        applies in words a status line can carry: 'at sigma <= 1', 'at sigma > 0.5', 'ramped in from sigma 5 to 0.3'."""
        if self.constant:
            return "at every sigma" if short else "all sigma"
        if self.ramp:
            return (f"ramped in from sigma {self.sigma_hi:g} to {self.sigma_lo:g}" if short
                    else f"ramp sigma {self.sigma_hi:g} -> {self.sigma_lo:g}")
        if short and self.sigma_lo == 0.0:
            return f"at sigma <= {self.sigma_hi:g}"
        if short and self.sigma_hi == math.inf:
            return f"at sigma > {self.sigma_lo:g}"
        return f"{'at ' if short else ''}sigma in ({self.sigma_lo:g}, {self.sigma_hi:g}]"

    @classmethod
    def from_setting(cls, setting: dict) -> "GuidanceSchedule":
        """The schedule a sweep setting names with w_lo / w_hi / w_ramp keys (bench.defaults_v3 queue lines such as
        `pixel-cond dpmpp_2m_sde 10 2 w_lo=0 w_hi=0.5`); the whole range when it names none."""
        return cls(float(setting.get("w_lo", 0.0)), float(setting.get("w_hi", math.inf)),
                   bool(setting.get("w_ramp", 0.0)))


SCHEDULE_KEYS = ("w_lo", "w_hi", "w_ramp")    # the setting keys `GuidanceSchedule.from_setting` reads


class _Scheduled:
    """A score model (or wrapper) whose guidance weight follows a schedule in sigma; everything else delegated."""

    def __init__(self, score_model, schedule: GuidanceSchedule):
        self.inner, self.sde, self.schedule = score_model, score_model.sde, schedule

    def __getattr__(self, name):
        return getattr(self.inner, name)        # the samplers read `distilled`, `guidance_embed`, ...

    def __call__(self, x, t, labels=None, guidance=1.0, **kwargs):
        sigma = self.sde.marginal_std(torch.as_tensor(t, dtype=torch.float64))
        return self.inner(x, t, labels, guidance=self.schedule.weight(guidance, sigma), **kwargs)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        return self.inner.denoise(x, sigma, labels, self.schedule.weight(guidance, sigma))


def scheduled(score_model, schedule: GuidanceSchedule | None):
    """`score_model` with its guidance following `schedule`; the model itself for None or the whole range."""
    if schedule is None or schedule.constant:
        return score_model
    return _Scheduled(score_model, schedule)
