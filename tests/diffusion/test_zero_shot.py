"""The zero-shot diffusion classifier on a Gaussian mixture, where the exact class-conditional denoiser is closed
form: class c ~ N(mu_c, s^2 I), so D(y; sigma, c) = mu_c + s^2 / (s^2 + sigma^2) (y - mu_c), and the true
posterior p(c | x) = softmax_c log N(x; mu_c, s^2 I) under a uniform prior."""
import math

import pytest
import torch

from diffusion.sde import VESDE
from diffusion.zero_shot import (StopEarly, ZeroShotResult, classify, classify_images, evaluations_needed,
                                 first_level_indices, noise_levels)


class MixtureDenoiser:
    """The exact denoiser of each class of a Gaussian mixture; records what it was called with."""

    def __init__(self, means: torch.Tensor, s: float):
        self.means, self.s, self.num_classes = means.double(), s, len(means)   # means (L, C, H, W)
        self.calls = []
        self.sde = VESDE(25.0)                # the noise range by default: [std(eps), std(1)] = [0.0317, 9.85]

    def denoise(self, y, sigma, labels, guidance=1.0):
        self.calls.append((y.clone(), float(sigma), labels.clone()))
        mu = self.means[labels]
        return mu + self.s**2 / (self.s**2 + sigma**2) * (y.double() - mu)

    def log_posterior(self, x):
        """(B, L) log p(c | x), uniform prior."""
        d2 = (x.double()[:, None] - self.means[None]).flatten(2).square().sum(2)     # (B, L)
        return torch.log_softmax(-d2 / (2 * self.s**2), dim=1)


def two_classes(s=0.5):
    means = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.6)])          # |mu_1 - mu_0| = 1.2
    return MixtureDenoiser(means, s)


def test_noise_levels_are_the_midpoint_rule_in_log_sigma():
    sigmas, weights = noise_levels(0.01, 100.0, 4)           # ln-range 9.21, 4 bins of 2.30
    delta = math.log(1e4) / 4
    assert torch.allclose(sigmas.log(), math.log(0.01) + delta * torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64))
    assert torch.allclose(weights, delta / sigmas**2)
    # int_{a}^{b} sigma^-2 d ln sigma = (a^-2 - b^-2) / 2: the quadrature converges to it
    s, w = noise_levels(0.5, 4.0, 2000)
    assert float((w).sum()) == pytest.approx((0.5**-2 - 4.0**-2) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="num_levels must be an integer >= 1"):
        noise_levels(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        noise_levels(1.0, 0.1, 4)


def expected_errors(model, x, sigmas):
    """(B, L, K) E_z ||D(x + sigma z; sigma, c) - x||^2 in closed form: with a = s^2 / (s^2 + sigma^2),
    D - x = (a - 1)(x - mu_c) + a sigma z, so E||D - x||^2 = (a - 1)^2 ||x - mu_c||^2 + a^2 sigma^2 d."""
    d2 = (x.double()[:, None] - model.means[None]).flatten(2).square().sum(2)       # (B, L)
    a = model.s**2 / (model.s**2 + sigmas**2)                                       # (K,)
    return (a - 1) ** 2 * d2[..., None] + (a**2 * sigmas**2 * x[0].numel())


POINTS = torch.tensor([[0.1, 0.2, 0.3, 0.25], [0.5, 0.6, 0.4, 0.7], [0.3, 0.3, 0.3, 0.3]],
                      dtype=torch.float64).view(3, 1, 2, 2)


def test_the_elbo_quadrature_is_the_log_likelihood_ratio():
    """The weights are right: with the exact expected errors, sum_k weights_k E_k(c) differs between classes by
    exactly log p(x | c') - log p(x | c) (the I-MMSE identity; the range [1e-4, 1e4] loses nothing here)."""
    model = two_classes()
    sigmas, weights = noise_levels(1e-4, 1e4, 400)
    neg_elbo = expected_errors(model, POINTS, sigmas) @ weights                       # (B, L)
    log_post = model.log_posterior(POINTS)
    assert torch.allclose(neg_elbo[:, 0] - neg_elbo[:, 1], log_post[:, 1] - log_post[:, 0], atol=1e-4)


def test_posterior_matches_the_analytic_one():
    """Monte Carlo: the measured error curves converge to the closed form, softmax(-L) to the true p(c | x)."""
    model = two_classes()
    res = classify(model, POINTS, num_levels=40, sigma_min=1e-3, sigma_max=1e3, noise_per_level=400,
                   generator=torch.Generator().manual_seed(0), max_batch=100_000)
    exact = expected_errors(model, POINTS, res.sigmas)
    assert torch.allclose(res.errors, exact, rtol=0.25, atol=1e-5)                  # 400 draws: ~7% per level
    true = model.log_posterior(POINTS).exp()
    assert torch.allclose(res.probs, true, atol=0.03), (res.probs, true)
    assert res.predicted[:2].tolist() == [0, 1]
    assert res.ranking[:, 0].tolist() == res.predicted.tolist()


def test_same_noise_for_every_label():
    model = two_classes()
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(1)).double()
    classify(model, x, num_levels=3, noise_per_level=2, generator=torch.Generator().manual_seed(2), max_batch=3)
    # per (level, draw), the noisy inputs y - x seen for label 0 and label 1 of the same image are identical
    seen = {}
    for y, sigma, labels in model.calls:
        for yi, c in zip(y, labels.tolist()):
            seen.setdefault((sigma, c), []).append(yi)
    for sigma in {k[0] for k in seen}:
        assert torch.equal(torch.stack(seen[(sigma, 0)]), torch.stack(seen[(sigma, 1)]))
    assert len(seen) == 2 * 3                               # 3 levels x 2 labels, chunks of 3 pairs joined up


def test_seeded_and_ranked():
    model = two_classes()
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(3)).double()
    a = classify(model, x, num_levels=8, generator=torch.Generator().manual_seed(5))
    b = classify(model, x, num_levels=8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.errors, b.errors)
    assert torch.allclose(a.probs.sum(1), torch.ones(4, dtype=torch.float64))
    assert a.errors.shape == (4, 2, 8) and a.evaluations == 4 * 2 * 8 == evaluations_needed(4, 2, 8)


def ten_classes(s=0.35):
    g = torch.Generator().manual_seed(7)
    return MixtureDenoiser(torch.rand(10, 1, 4, 4, generator=g), s)


def test_stop_early_keeps_the_winner_and_saves_work():
    model = ten_classes()
    g = torch.Generator().manual_seed(8)
    truth = torch.arange(10).repeat(2)
    x = (model.means[truth] + model.s * torch.randn(20, 1, 4, 4, generator=g, dtype=torch.float64))
    full = classify(model, x, num_levels=12, generator=torch.Generator().manual_seed(9))
    early = classify(model, x, num_levels=12, stop_early=StopEarly(4, 3), generator=torch.Generator().manual_seed(9))
    # the winner survives the first stage wherever the full run is sure of it (here: all but one ambiguous point),
    # and the kept labels' figures are the full run's, so the winner is then the same
    sure = full.probs.max(1).values > 0.9
    assert sure.sum() >= 15
    winner_kept = early.kept.gather(1, full.probs.argmax(1, keepdim=True)).squeeze(1)
    assert winner_kept[sure].all()
    assert torch.equal(early.predicted[winner_kept], full.predicted[winner_kept])
    assert (full.predicted == truth).float().mean() > 0.8 and (early.predicted == truth).float().mean() > 0.8
    assert early.kept.sum(1).tolist() == [3] * 20
    assert (early.probs[~early.kept] == 0).all() and torch.isinf(early.neg_elbo[~early.kept]).all()
    # the kept labels' figures are exactly the full run's (same noise): only the dropped ones differ
    assert torch.allclose(early.neg_elbo[early.kept], full.neg_elbo[early.kept])
    assert early.evaluations == evaluations_needed(20, 10, 12, 1, StopEarly(4, 3)) == 20 * (10 * 4 + 3 * 8)
    assert early.evaluations < full.evaluations
    assert (early.ranking[:, :3].sort(1).values == torch.nonzero(early.kept)[:, 1].view(20, 3)).all()


def test_first_level_indices_spread():
    assert first_level_indices(20, 4) == [2, 7, 12, 17]
    assert first_level_indices(3, 5) == [0, 1, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_levels=0), "num_levels must be an integer >= 1"),
    (dict(noise_per_level=0), "noise_per_level must be an integer >= 1"),
    (dict(labels=[1, 1]), "labels must be distinct"),
    (dict(max_batch=0), "max_batch must be an integer >= 1"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classify(two_classes(), torch.zeros(1, 1, 2, 2), **kwargs)
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        StopEarly(3, 0)


def test_pipelines_pixel_and_latent():
    """Tiny random models: shapes, the latent path encodes with the scaled autoencoder, unconditional refused."""
    from factories import tiny_model

    from diffusion import Pipeline

    images = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0))
    pixel = Pipeline(tiny_model("pixel-cond"), name="pixel-cond")
    res = classify_images(pixel, images, num_levels=3, stop_early=StopEarly(1, 2),
                          generator=torch.Generator().manual_seed(0))
    assert isinstance(res, ZeroShotResult) and res.probs.shape == (2, 10) and res.errors.shape == (2, 10, 3)
    assert torch.allclose(res.probs.sum(1), torch.ones(2, dtype=torch.float64))
    latent = Pipeline(tiny_model("latent-cond"), tiny_model("autoencoder"), name="latent-cond")
    res = classify_images(latent, images, num_levels=2, generator=torch.Generator().manual_seed(0))
    assert res.errors.shape == (2, 10, 2)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        classify_images(Pipeline(tiny_model("pixel-uncond"), name="pixel-uncond"), images)
    with pytest.raises(ValueError, match=r"images must be \(B, 28, 28\)"):
        classify_images(pixel, torch.zeros(2, 3, 28, 28))
