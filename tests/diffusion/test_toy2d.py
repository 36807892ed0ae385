"""The 2-D toy world (diffusion/toy2d.py): the closed-form score against autograd, the library's samplers against
the mixture's moments, and the tiny MLP learning the field by DSM."""
import pytest
import torch

from diffusion.samplers import sample
from diffusion.sde import VESDE
from diffusion.toy2d import (DATASETS, GaussianMixture2D, MixtureScore, ToyScoreMLP, digit_two, to_points,
                             train_toy, two_blobs)


@pytest.mark.parametrize("make", list(DATASETS.values()))
@pytest.mark.parametrize("std", [0.0, 0.05, 0.5, 3.0])
def test_closed_form_score_is_the_gradient_of_the_log_density(make, std):
    mixture = make()
    x = (2 * torch.rand(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 1).requires_grad_()
    logp = mixture.log_prob(x, std)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.allclose(mixture.score(x.detach(), std), grad, rtol=1e-8, atol=1e-8)


def test_density_integrates_to_one_and_moments_match_draws():
    mixture = two_blobs()
    g = torch.linspace(-4, 4, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = mixture.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1), 0.3).exp()
    assert float(p.sum() * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=1e-4)
    draws = mixture.sample(200_000, torch.Generator().manual_seed(0))
    mean, cov = mixture.moments()
    assert torch.allclose(draws.mean(0), mean, atol=0.01)
    assert torch.allclose(torch.cov(draws.T), cov, atol=0.01)


@pytest.mark.parametrize("sampler,steps", [("euler_maruyama", 400), ("dpmpp_2m", 40), ("heun", 30)])
def test_library_samplers_reach_the_mixture(sampler, steps):
    """Reverse SDE and probability-flow ODE with the exact score land on p_0: moments within Monte Carlo error."""
    mixture = two_blobs()
    model = MixtureScore(mixture, VESDE(25.0))
    g = torch.Generator().manual_seed(0)
    x = model.sde.prior_sample((4000, *model.sample_shape), generator=g)
    out, _ = sample(sampler, model, x, num_steps=steps, generator=g)
    pts = to_points(out).double()
    mean, cov = mixture.moments()
    assert torch.allclose(pts.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(pts.T), cov, atol=0.06)
    # most points end within 3 component stds of a component centre
    d = torch.cdist(pts, mixture.means).min(dim=1).values
    assert float((d < 3 * mixture.stds.max()).double().mean()) > 0.97


def test_denoiser_is_tweedie_and_tends_to_the_nearest_mean_at_low_noise():
    mixture = GaussianMixture2D([[0.0, 0.0], [2.0, 0.0]], 0.01)
    model = MixtureScore(mixture)
    x = torch.tensor([[0.1, 0.0], [1.9, 0.1]], dtype=torch.float32).reshape(2, 2, 1, 1)
    t = model.sde.t_from_std(torch.tensor(0.05, dtype=torch.float64))
    d = model.denoise(x, 0.05)
    assert torch.allclose(d, x + 0.05**2 * model(x, t), atol=1e-6)
    assert torch.allclose(to_points(d), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), atol=0.01)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture2D([[0, 0], [1, 1]], 0.1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="stds positive"):
        GaussianMixture2D([[0, 0]], 0.0)


def test_mlp_learns_the_field_by_dsm():
    torch.manual_seed(0)
    mixture = two_blobs()
    model = ToyScoreMLP(hidden=64)
    g = torch.Generator().manual_seed(0)
    losses = [loss for _, loss in train_toy(model, mixture, steps=600, batch_size=256, generator=g)]
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    # at a moderate noise level the learned field points the same way as the exact one almost everywhere
    x = (2 * torch.rand(500, 2, generator=g) - 1)
    t = torch.full((500,), 0.3)
    std = float(model.sde.marginal_std(torch.tensor(0.3)))
    exact = mixture.score(x, std).float()
    with torch.no_grad():
        learned = model(x, t)
    cos = torch.nn.functional.cosine_similarity(exact, learned, dim=1)
    assert float(cos.median()) > 0.9


def test_training_stops_when_asked():
    model = ToyScoreMLP(hidden=16)
    calls = iter(range(100))
    steps = [s for s, _ in train_toy(model, digit_two(), steps=50, should_stop=lambda: next(calls) >= 3)]
    assert steps == [0, 1, 2]
