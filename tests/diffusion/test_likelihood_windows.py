"""What the "How likely?" tab needs from diffusion/likelihood.py: a bounded-cost fixed-step solver, an NFE cap on the
adaptive one, the image variants, and per-label conditional likelihoods with paired noise. Exact Gaussian models
(the score of N(mu_c, s^2 I) under the VE SDE is closed form) stand in for trained ones; the shipped-weights
checks are marked slow."""
import math

import pytest
import torch

from diffusion.likelihood import (NFEBudgetExceeded, bits_per_dim, conditional_bits_per_dim, heun_times,
                                  image_variants, ode_log_likelihood)
from diffusion.sde import VESDE


class ClassGaussians:
    """Class c ~ N(mu_c, s^2 I) (the null label: N(mu_null, s^2 I)); score -(x - mu_c) / (s^2 + std(t)^2)."""

    conditional = True

    def __init__(self, mus, s=0.3):
        self.mus, self.s, self.sde = torch.as_tensor(mus, dtype=torch.float64), s, VESDE(25.0)
        self.num_classes, self.null_label = len(mus) - 1, len(mus) - 1

    def var(self, t):
        return self.s**2 + self.sde.marginal_std(torch.as_tensor(t, dtype=torch.float64)) ** 2

    def __call__(self, x, t, labels=None, guidance=1.0):
        mu = self.mus[labels if labels is not None else torch.full((x.shape[0],), self.null_label)]
        return -(x - mu.view(-1, 1, 1, 1).to(x.dtype)) / self.var(t).to(x.dtype).view(-1, 1, 1, 1)


def exact_bpd(x, mu, var):
    d = x[0].numel()
    logp = -0.5 * d * math.log(2 * math.pi * var) - (x.double() - mu).flatten(1).pow(2).sum(1) / (2 * var)
    return bits_per_dim(logp, d)


def test_heun_is_bounded_and_converges_to_rk45():
    model = ClassGaussians([0.4])
    x = (0.4 + 0.3 * torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))).float()
    exact = ode_log_likelihood(model, x, rtol=1e-7, atol=1e-7, generator=torch.Generator().manual_seed(1))
    gaps = []
    for steps in (5, 10, 20, 40):
        res = ode_log_likelihood(model, x, method="heun", num_steps=steps, generator=torch.Generator().manual_seed(1))
        assert res.nfe == 2 * steps                                   # the cost is known before the run
        gaps.append(float((bits_per_dim(res.logp, 36) - bits_per_dim(exact.logp, 36)).abs().max()))
    # second order: the error shrinks towards 4x per halving of the step (measured 2.5x, 3.1x, 3.6x); 20 steps: 0.06
    assert gaps[2] < 0.1 and gaps[3] < 0.02 and gaps[1] / gaps[2] > 2.5 and gaps[2] / gaps[3] > 3, gaps
    times = heun_times(model.sde, 1e-3, 4)
    assert times[0] == 1e-3 and times[-1] == 1.0
    stds = [model.sde.marginal_std(float(t)) for t in times]
    assert all(abs(stds[i + 1] / stds[i] - stds[1] / stds[0]) < 1e-9 for i in range(4))   # geometric in std


def test_rk45_nfe_cap_and_named_errors():
    model = ClassGaussians([0.4])
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NFEBudgetExceeded, match="more than max_nfe = 5 evaluations"):
        ode_log_likelihood(model, x, max_nfe=5)
    with pytest.raises(ValueError, match="method must be one of rk45, heun"):
        ode_log_likelihood(model, x, method="euler")
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        ode_log_likelihood(model, x, method="heun", num_steps=0)


def test_image_variants():
    img = torch.zeros(28, 28)
    img[10:18, 12:14] = 1.0                                           # a vertical bar
    v = image_variants(img, torch.Generator().manual_seed(0))
    assert list(v) == ["as given", "shifted", "inverted", "rotated", "noise"]
    assert torch.equal(v["shifted"][14:22, 16:18], img[10:18, 12:14]) and v["shifted"].sum() == img.sum()
    assert torch.equal(v["inverted"], 1 - img)
    assert v["rotated"][14:16, 10:18].eq(1).all() and v["rotated"].sum() == img.sum()    # now horizontal
    assert 0.4 < float(v["noise"].mean()) < 0.6 and v["noise"].std() > 0.25
    with pytest.raises(ValueError, match=r"image must be one \(H, W\) picture"):
        image_variants(torch.zeros(1, 28, 28))


def test_conditional_bits_per_dim_matches_each_class_density():
    """Three classes and a null 'class'; each label's figure is that Gaussian's exact bits/dim at the same
    dequantized x (paired: one dequantization, one probe); the nearest class is the likeliest."""
    model = ClassGaussians([0.2, 0.5, 0.8, 0.5], s=0.3)
    image = (0.5 + 0.3 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    bpd, res = conditional_bits_per_dim(model, image, generator=torch.Generator().manual_seed(3), rtol=1e-5, atol=1e-5)
    assert bpd.shape == (4,)
    assert int(bpd[:3].argmin()) == 1                                 # mu = 0.5 is the nearest class
    assert float(bpd[1]) == pytest.approx(float(bpd[3]), abs=1e-6)    # the null label is the same Gaussian here
    # against the exact density of each class at the dequantized image (same generator: same u); the only gap is
    # the prior N(0, std(1)^2 I) standing in for p_1 = N(mu_c, var_1 I), computed at the ODE's own x(1)
    from diffusion.likelihood import dequantize, prior_logp
    xq = dequantize(image[None], torch.Generator().manual_seed(3)).double()
    var_eps, var_1, d = float(model.var(model.sde.eps)), float(model.var(1.0)), image.numel()
    for c, mu in enumerate([0.2, 0.5, 0.8]):
        z = res.z[c:c + 1].double()
        gap = (bits_per_dim(prior_logp(z, model.sde.std_max), d, 0.0)
               - bits_per_dim(prior_logp(z - mu, math.sqrt(var_1)), d, 0.0))
        assert float(bpd[c]) == pytest.approx(float(exact_bpd(xq, mu, var_eps) + gap), abs=2e-3)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        model.conditional = False
        conditional_bits_per_dim(model, image)


@pytest.mark.slow
def test_shipped_pixel_models_rank_real_digits_above_noise_and_inverted():
    """Shipped weights, 8 of the app's real test digits: bits/dim within 0.6 of bench/results/likelihood.json's
    mean (per-digit std ~0.35, so a mean of 8 has a standard error ~0.12; 40 Heun steps read ~0.05 low), and noise
    and inverted digits far worse (> 2 bits/dim more than the worst real one) under both pixel models."""
    import json
    from pathlib import Path

    import numpy as np

    from diffusion.hub import load_model
    from diffusion.likelihood import bits_per_dim_ode
    from ui.lab import SAMPLE_PATH

    with np.load(SAMPLE_PATH) as d:
        digits = torch.from_numpy(d["images"][:8].astype(np.float32) / 255.0)
    bench = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results" / "likelihood.json").read_text())
    model = load_model(bench["model"]).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    real, _ = bits_per_dim_ode(model, digits[:, None], generator=g, method="heun", num_steps=40)
    assert abs(float(real.mean()) - bench["bpd_mean"]) < 0.6, (real, bench["bpd_mean"])
    variants = [image_variants(img, g) for img in digits[:2]]
    for name in ("noise", "inverted"):
        batch = torch.stack([v[name] for v in variants])[:, None]
        worse, _ = bits_per_dim_ode(model, batch, generator=g, method="heun", num_steps=20)
        assert float(worse.min()) > float(real.max()) + 2.0, (name, worse, real)
    cond = load_model("pixel-cond").eval().requires_grad_(False)
    bpd, _ = conditional_bits_per_dim(cond, digits[0][None], generator=g, method="heun", num_steps=20)
    noise_bpd, _ = conditional_bits_per_dim(cond, variants[0]["noise"][None], generator=g, method="heun", num_steps=20)
    assert float(noise_bpd.min()) > float(bpd.max()) + 2.0
