"""Probability-flow likelihood on Gaussian data, where everything is known in closed form.

Data N(mu, s^2 I) under the VE SDE has p_t = N(mu, (s^2 + std(t)^2) I) and the exact score
-(x - mu) / (s^2 + std(t)^2), so the ODE's log p_eps(x) must equal log N(x; mu, (s^2 + std(eps)^2) I)
up to (a) the ODE tolerance and (b) the prior N(0, std(1)^2 I) standing in for p_1 (a small, known gap).
"""
import math

import pytest
import torch

from diffusion.likelihood import bits_per_dim, bits_per_dim_ode, dequantize, ode_log_likelihood, prior_logp
from diffusion.sde import VESDE


class GaussianScore:
    """The exact score of N(mu, s^2 I) diffused by the VE SDE; a stand-in for a trained ScoreModel."""

    def __init__(self, mu: float, s: float, sigma: float = 25.0, eps: float = 1e-3):
        self.mu, self.s, self.sde = mu, s, VESDE(sigma, eps)

    def var(self, t):
        return self.s**2 + self.sde.marginal_std(torch.as_tensor(t, dtype=torch.float64)) ** 2

    def __call__(self, x, t, labels=None, guidance=1.0):
        return -(x - self.mu) / self.var(t).to(x.dtype)[:, None, None, None]


def gaussian_logp(x, mu, var):
    d = x[0].numel()
    return -0.5 * d * math.log(2 * math.pi * var) - (x.double() - mu).flatten(1).pow(2).sum(1) / (2 * var)


def test_ode_likelihood_matches_exact_gaussian():
    mu, s = 0.4, 0.3
    model = GaussianScore(mu, s)
    g = torch.Generator().manual_seed(0)
    x = (mu + s * torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)).float()
    res = ode_log_likelihood(model, x, rtol=1e-6, atol=1e-6, probe="rademacher", generator=g)
    d = x[0].numel()
    var_eps, var_1 = float(model.var(model.sde.eps)), float(model.var(1.0))

    # (a) the flow is linear: x(1) = mu + (x - mu) sqrt(var_1 / var_eps), and int div f = D/2 log(var_1 / var_eps)
    # (a Rademacher probe is exact for this diagonal Jacobian)
    z_exact = mu + (x.double() - mu) * math.sqrt(var_1 / var_eps)
    assert torch.allclose(res.z.double(), z_exact, rtol=1e-4, atol=1e-4)
    exact_delta = 0.5 * d * math.log(var_1 / var_eps)
    assert torch.allclose(res.delta_logp, torch.full((4,), exact_delta, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(res.logp, prior_logp(z_exact, model.sde.std_max) + exact_delta, rtol=1e-5)

    # (b) against the true Gaussian log-likelihood in bits/dim; the only gap is the prior N(0, std(1)^2 I)
    # standing in for p_1 = N(mu, var_1 I): a few 1e-3 bits/dim here
    bpd = bits_per_dim(res.logp, d)
    bpd_exact = bits_per_dim(gaussian_logp(x, mu, var_eps), d)
    prior_gap = (gaussian_logp(z_exact, mu, var_1) - prior_logp(z_exact, model.sde.std_max)) / (d * math.log(2))
    assert torch.allclose(bpd - bpd_exact, prior_gap, atol=1e-5)
    assert (bpd - bpd_exact).abs().max() < 0.01, (bpd, bpd_exact)


def test_gaussian_probe_is_unbiased():
    """A Gaussian probe is exact only on average: 32 copies of one image, mean within a few standard errors."""
    mu, s = 0.4, 0.3
    model = GaussianScore(mu, s)
    x = (mu + s * torch.randn(1, 1, 14, 14, generator=torch.Generator().manual_seed(3))).expand(32, -1, -1, -1)
    res = ode_log_likelihood(model, x.contiguous(), rtol=1e-5, atol=1e-5, probe="gaussian",
                             generator=torch.Generator().manual_seed(4))
    d = x[0].numel()
    var_eps, var_1 = float(model.var(model.sde.eps)), float(model.var(1.0))
    exact_delta = 0.5 * d * math.log(var_1 / var_eps)
    # estimate = exact * |v|^2 / D, |v|^2 / D has std sqrt(2 / D); mean of 32 -> relative std 0.018
    rel = res.delta_logp / exact_delta
    assert rel.std() > 0.03                      # it really is random
    assert abs(float(rel.mean()) - 1.0) < 0.06   # ~3.5 standard errors


def test_bits_per_dim_formula_and_dequantization():
    # a uniform density on [0, 1]^D (log p = 0) is 8 bits/dim on 256 levels
    assert torch.allclose(bits_per_dim(torch.zeros(3, dtype=torch.float64), 784), torch.full((3,), 8.0, dtype=torch.float64))
    # log p = -D ln 2 (density 1/2 per dim) -> 9 bits/dim
    assert float(bits_per_dim(torch.tensor([-784 * math.log(2)]), 784)) == pytest.approx(9.0)
    levels = torch.arange(256, dtype=torch.float32) / 255
    xq = dequantize(levels.view(1, 1, 16, 16), torch.Generator().manual_seed(0))
    k = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    assert ((xq >= k / 256) & (xq < (k + 1) / 256)).all()  # each level lands in its own bin


def test_bits_per_dim_ode_runs_on_images():
    model = GaussianScore(0.5, 0.3)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    bpd, res = bits_per_dim_ode(model, images, generator=torch.Generator().manual_seed(2), rtol=1e-4, atol=1e-4)
    assert bpd.shape == (2,) and torch.isfinite(bpd).all() and res.nfe > 0
