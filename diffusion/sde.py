"""The variance-exploding SDE of Song et al. (2021), "Score-Based Generative Modeling through
Stochastic Differential Equations", section 3.4 / appendix C.

Forward process:   dx = sigma^t dw,   t in [eps, 1]
Perturbation kernel: p_0t(x(t) | x(0)) = N(x(0), std(t)^2 I),
                     std(t)^2 = integral_0^t sigma^(2s) ds = (sigma^(2t) - 1) / (2 ln sigma).

Pure math: device and dtype always come from the inputs.
"""
from __future__ import annotations

import math

import torch


class VESDE:
    """dx = sigma^t dw. `sigma` is the base of the exponential noise schedule (25 for MNIST)."""

    def __init__(self, sigma: float = 25.0, eps: float = 1e-3):
        if not (math.isfinite(sigma) and sigma > 1.0):
            raise ValueError(f"sigma must be a finite number > 1, got {sigma!r}")
        self.sigma = float(sigma)
        self.eps = float(eps)
        self._log_sigma = math.log(self.sigma)

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)); 0 at t=0, 0.0317 at 1e-3, 9.85 at 1."""
        t = torch.as_tensor(t)
        # expm1 keeps precision for small t, where sigma^(2t) - 1 ~ 2t ln sigma.
        return torch.sqrt(torch.expm1(2.0 * t * self._log_sigma) / (2.0 * self._log_sigma))

    def diffusion_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = sigma^t."""
        t = torch.as_tensor(t)
        return torch.exp(t * self._log_sigma)

    def t_from_std(self, std: torch.Tensor) -> torch.Tensor:
        """Inverse of marginal_std: t = ln(1 + 2 ln(sigma) std^2) / (2 ln sigma)."""
        std = torch.as_tensor(std)
        return torch.log1p(2.0 * self._log_sigma * std**2) / (2.0 * self._log_sigma)

    @property
    def std_max(self) -> float:
        """std(1), the prior's standard deviation."""
        return float(self.marginal_std(torch.tensor(1.0, dtype=torch.float64)))

    @property
    def std_min(self) -> float:
        """std(eps), the smallest noise level the score model is trained on."""
        return float(self.marginal_std(torch.tensor(self.eps, dtype=torch.float64)))

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x(1) ~ N(0, std(1)^2 I). Noise is drawn on CPU from `generator`, then moved, so a seed
        gives the same tensor on every device."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
        return (z * self.std_max).to(device if device is not None else "cpu")

    def __repr__(self) -> str:
        return f"VESDE(sigma={self.sigma}, eps={self.eps})"
