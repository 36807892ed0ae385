"""The variance-exploding SDE of Song et al. (2021), "Score-Based Generative Modeling through
Stochastic Differential Equations", section 3.4 / appendix C.

Forward process:   dx = sigma^t dw,   t in [eps, 1]
Perturbation kernel: p_0t(x(t) | x(0)) = N(x(0), std(t)^2 I),
                     std(t)^2 = integral_0^t sigma^(2s) ds = (sigma^(2t) - 1) / (2 ln sigma).

Reverse time (Anderson 1982; Song et al. 2021, eq. 6 and 13), with f = 0 for the VE SDE:
    reverse SDE:        dx = [f - g(t)^2 s(x, t)] dt + g(t) dw_bar
    probability flow:   dx/dt = f - g(t)^2 s(x, t) / 2

Pure math: device and dtype always come from the inputs. Every method takes a Python float (and returns a
float, computed in double precision) or a tensor (and returns a tensor).
"""
from __future__ import annotations

import math

import torch

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class VESDE:
    """dx = sigma^t dw. `sigma` is the base of the exponential noise schedule (25 for MNIST)."""

    def __init__(self, sigma: float = 25.0, eps: float = 1e-3):
        if not (math.isfinite(sigma) and sigma > 1.0):
            raise ValueError(f"sigma must be a finite number > 1, got {sigma!r}")
        self.sigma = float(sigma)
        self.eps = float(eps)
        self._log_sigma = math.log(self.sigma)

    def marginal_std(self, t):
        """std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)); 0 at t=0, 0.0317 at 1e-3, 9.85 at 1."""
        # expm1 keeps precision for small t, where sigma^(2t) - 1 ~ 2t ln sigma.
        if _is_number(t):
            return math.sqrt(math.expm1(2.0 * t * self._log_sigma) / (2.0 * self._log_sigma))
        t = torch.as_tensor(t)
        return torch.sqrt(torch.expm1(2.0 * t * self._log_sigma) / (2.0 * self._log_sigma))

    def diffusion_coeff(self, t):
        """g(t) = sigma^t."""
        if _is_number(t):
            return math.exp(t * self._log_sigma)
        return torch.exp(torch.as_tensor(t) * self._log_sigma)

    def t_from_std(self, std):
        """Inverse of marginal_std: t = ln(1 + 2 ln(sigma) std^2) / (2 ln sigma)."""
        if _is_number(std):
            return math.log1p(2.0 * self._log_sigma * std**2) / (2.0 * self._log_sigma)
        std = torch.as_tensor(std)
        return torch.log1p(2.0 * self._log_sigma * std**2) / (2.0 * self._log_sigma)

    def reverse_drift(self, score, t, probability_flow: bool = False):
        """Drift of the reverse-time SDE, f - g(t)^2 s, or of the probability-flow ODE, f - g(t)^2 s / 2 (f = 0).
        `score` (B, C, H, W); `t` a float or a tensor that broadcasts against it."""
        g2 = self.diffusion_coeff(t) ** 2
        if not _is_number(g2):
            g2 = g2.to(score.dtype)
        return -(0.5 if probability_flow else 1.0) * g2 * score

    @property
    def std_max(self) -> float:
        """std(1), the prior's standard deviation."""
        return self.marginal_std(1.0)

    @property
    def std_min(self) -> float:
        """std(eps), the smallest noise level the score model is trained on."""
        return self.marginal_std(self.eps)

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x(1) ~ N(0, std(1)^2 I). Noise is drawn on CPU from `generator`, then moved, so a seed
        gives the same tensor on every device."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
        return (z * self.std_max).to(device if device is not None else "cpu")

    def __repr__(self) -> str:
        return f"VESDE(sigma={self.sigma}, eps={self.eps})"
