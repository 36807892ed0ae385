"""VESDE against its closed forms: std(t)^2 = int_0^t g(s)^2 ds, the inverse map, the prior."""
import math

import pytest
import torch
from scipy.integrate import quad

from diffusion.sde import VESDE

SIGMA = 25.0


@pytest.fixture
def sde():
    return VESDE(SIGMA)


@pytest.mark.parametrize("t", [1e-3, 0.05, 0.3, 0.7, 1.0])
def test_marginal_variance_is_integral_of_g_squared(sde, t):
    # the perturbation kernel of dx = g(t) dw has variance int_0^t g(s)^2 ds
    integral, _ = quad(lambda s: float(sde.diffusion_coeff(torch.tensor(s, dtype=torch.float64))) ** 2, 0.0, t,
                       epsabs=1e-13, epsrel=1e-12)
    std = sde.marginal_std(torch.tensor(t, dtype=torch.float64))
    assert float(std) ** 2 == pytest.approx(integral, rel=1e-9)


def test_diffusion_coeff_is_sigma_to_the_t(sde):
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.diffusion_coeff(t), torch.tensor([1.0, SIGMA**0.25, SIGMA**0.5, SIGMA], dtype=torch.float64))


def test_known_values(sde):
    # the values quoted in DESIGN.md, and the closed form evaluated independently in plain math
    assert float(sde.marginal_std(torch.tensor(1.0))) == pytest.approx(9.8454, abs=1e-3)
    assert float(sde.marginal_std(torch.tensor(1e-3))) == pytest.approx(0.03167, abs=1e-4)
    assert sde.std_max == pytest.approx(math.sqrt((SIGMA**2 - 1) / (2 * math.log(SIGMA))), rel=1e-12)
    assert sde.std_min == pytest.approx(math.sqrt((SIGMA**2e-3 - 1) / (2 * math.log(SIGMA))), rel=1e-9)
    assert float(sde.marginal_std(torch.tensor(0.0))) == 0.0


def test_std_min_follows_eps():
    sde = VESDE(SIGMA, eps=0.01)
    assert sde.std_min == pytest.approx(float(sde.marginal_std(torch.tensor(0.01, dtype=torch.float64))), rel=1e-12)
    assert sde.std_min > VESDE(SIGMA).std_min


def test_small_t_is_accurate_in_float32(sde):
    # std(t)^2 = t + O(t^2 ln sigma) for small t; expm1 keeps this in float32 where sigma^(2t) - 1 would not
    t = torch.tensor([1e-7, 1e-6, 1e-5], dtype=torch.float32)
    std = sde.marginal_std(t)
    assert std.dtype == torch.float32 and std.shape == (3,)
    assert torch.allclose(std**2 / t, torch.ones(3), rtol=1e-3)


def test_t_from_std_inverts_marginal_std(sde):
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(sde.t_from_std(sde.marginal_std(t)), t, rtol=0, atol=1e-12)
    std = torch.tensor([0.01, 0.5, 3.0, 9.8], dtype=torch.float64)
    assert torch.allclose(sde.marginal_std(sde.t_from_std(std)), std, rtol=1e-12)


def test_prior_sample_has_std_max(sde):
    n = 400_000
    x = sde.prior_sample((n,), torch.Generator().manual_seed(0))
    assert x.shape == (n,) and x.dtype == torch.float32
    # sample std has relative standard error 1/sqrt(2n) ~ 0.11%: 1% is ~9 standard errors
    assert float(x.std()) == pytest.approx(sde.std_max, rel=0.01)
    assert abs(float(x.mean())) < 6 * sde.std_max / math.sqrt(n)


def test_prior_sample_seeded_and_dtype(sde):
    a = sde.prior_sample((3, 1, 4, 4), torch.Generator().manual_seed(7))
    b = sde.prior_sample((3, 1, 4, 4), torch.Generator().manual_seed(7))
    c = sde.prior_sample((3, 1, 4, 4), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = sde.prior_sample([3, 1, 4, 4], torch.Generator().manual_seed(7), device="cpu", dtype=torch.float64)
    assert d.dtype == torch.float64 and d.device.type == "cpu" and d.shape == a.shape


@pytest.mark.parametrize("sigma", [1.0, 0.5, 0.0, -25.0, float("nan"), float("inf")])
def test_bad_sigma_raises(sigma):
    with pytest.raises(ValueError, match="sigma"):
        VESDE(sigma)


def test_other_sigma_changes_schedule():
    assert VESDE(50.0).std_max == pytest.approx(math.sqrt((50.0**2 - 1) / (2 * math.log(50.0))))
    assert "25.0" in repr(VESDE(25.0))


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.3, 1.0])
def test_floats_in_floats_out(sde, t):
    """A Python float gives a float (double precision), equal to the float64 tensor path."""
    for fn, arg in ((sde.marginal_std, t), (sde.diffusion_coeff, t), (sde.t_from_std, 0.5 + t)):
        out = fn(arg)
        assert type(out) is float
        assert out == pytest.approx(float(fn(torch.tensor(arg, dtype=torch.float64))), rel=1e-12, abs=1e-15)
    assert sde.t_from_std(sde.marginal_std(t)) == pytest.approx(t, abs=1e-12)


def test_reverse_drift(sde):
    # reverse SDE: f - g^2 s; probability flow: f - g^2 s / 2; f = 0 for the VE SDE (Song et al. 2021, eq. 6, 13)
    score = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    g2 = SIGMA ** (2 * 0.4)
    assert torch.allclose(sde.reverse_drift(score, 0.4), -g2 * score)
    assert torch.allclose(sde.reverse_drift(score, 0.4, probability_flow=True), -0.5 * g2 * score)
    t = torch.tensor([0.1, 0.4, 0.9])[:, None, None, None]                      # per-sample times broadcast
    assert torch.allclose(sde.reverse_drift(score, t), -(SIGMA ** (2 * t)) * score)
    assert sde.reverse_drift(score.double(), 0.4).dtype == torch.float64
