"""SDEdit and inpainting (diffusion/editing.py) against exact answers for Gaussian data N(mu, s^2 I)."""
import pytest
import torch

from diffusion.editing import half_mask, sdedit
from test_samplers import MU, S, GaussianScore


def _run(model, x, **kw):
    steps = list(sdedit(model, x, **kw))
    assert steps[-1].final and all(not s.final for s in steps[:-1])
    return steps


def test_t0_zero_returns_the_input_without_a_network_call():
    model, x = GaussianScore(), torch.randn(4, 1, 4, 4)
    steps = _run(model, x, num_steps=10, t0=0.0)
    assert len(steps) == 1 and steps[0].nfe == 0 and torch.equal(steps[0].x, x) and model.calls == 0


def test_the_output_tends_to_the_input_as_t0_goes_to_zero():
    model = GaussianScore()
    x = MU + S * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    gaps = [(_run(model, x, num_steps=5, t0=t0, generator=torch.Generator().manual_seed(1))[-1].x - x).abs().mean()
            for t0 in (0.3, 1e-2, 1e-3, 1e-5)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[2] < 0.03 and gaps[3] < 0.005


@pytest.mark.parametrize("t0", [0.3, 1.0])
def test_output_has_the_data_moments(t0):
    """Inputs drawn from the data, noised to t0 and brought back: still distributed as the data."""
    model, g = GaussianScore(), torch.Generator().manual_seed(0)
    x = MU + S * torch.randn(2000, 1, 4, 4, generator=g)
    out = _run(model, x, num_steps=30, t0=t0, generator=g)[-1].x
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, rel=0.08)
    corr = torch.corrcoef(torch.stack([x.flatten(), out.flatten()]))[0, 1].item()
    assert (corr > 0.15) if t0 == 0.3 else (abs(corr) < 0.05)     # s^2 / (s^2 + std(0.3)^2) = 0.21; t0 = 1 forgets


@pytest.mark.parametrize("region", ["top", "bottom", "left", "right"])
def test_inpainting_keeps_the_known_region_and_regenerates_the_rest(region):
    model, g = GaussianScore(), torch.Generator().manual_seed(0)
    x = torch.full((500, 1, 4, 4), 5.0)                                    # far from the data: easy to tell apart
    mask = half_mask(region, (4, 4))
    steps = _run(model, x, num_steps=20, t0=1.0, generator=g, mask=mask)
    out = steps[-1].x
    known, free = mask.bool().expand_as(out), ~mask.bool().expand_as(out)
    assert torch.equal(out[known], x[known])
    assert out[free].mean().item() == pytest.approx(MU, abs=0.05)        # the data's mean, not the input's 5
    assert steps[-1].nfe == 20


def test_bad_t0_and_region_are_refused():
    with pytest.raises(ValueError, match="t0"):
        next(sdedit(GaussianScore(), torch.zeros(1, 1, 4, 4), num_steps=3, t0=1.5))
    with pytest.raises(ValueError, match="region"):
        half_mask("middle")


# ---------------------------------------------------------------- through the sampler and the Pipeline

def _hand_written_sdedit(model, x_in, labels, *, num_steps, t0, generator, guidance=1.0, mask=None):
    """The DPM-Solver++(2M) SDE step as editing.py wrote it by hand before it ran the sampler itself: the oracle."""
    import math

    from diffusion.editing import edit_sigmas
    from diffusion.samplers import _randn_like

    m = None if mask is None else mask.expand_as(x_in)
    sigmas = edit_sigmas(model.sde, t0, num_steps)
    x = x_in + sigmas[0] * _randn_like(x_in, generator)
    old_d, h_last, out = None, None, []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = model.denoise(x, sigma, labels, guidance)
        if sigma_next == 0:
            x = d
        else:
            h = math.log(sigma / sigma_next)
            r2 = math.exp(-2 * h)
            x = r2 * x + (1 - r2) * d + sigma_next * math.sqrt(1 - r2) * _randn_like(x, generator)
            if old_d is not None:
                x = x + 0.5 * (1 - r2) * (h / h_last) * (d - old_d)
            h_last = h
        old_d = d
        if m is not None:
            known = x_in + sigma_next * _randn_like(x, generator) if sigma_next > 0 else x_in
            x = m * known + (1 - m) * x
        out.append((x, d))
    return out


@pytest.mark.parametrize("region, t0", [(None, 0.5), (None, 1.0), ("left", 0.7), ("top", 1e-4)])
def test_sdedit_through_the_sampler_takes_the_hand_written_steps(region, t0):
    """Same seed, same noise draws in the same order: every x and x0 as the hand-written solver step gave them."""
    model = GaussianScore()
    x = MU + S * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    mask = half_mask(region, (4, 4)) if region else None
    got = _run(model, x, num_steps=12, t0=t0, generator=torch.Generator().manual_seed(7), mask=mask)
    want = _hand_written_sdedit(model, x, None, num_steps=12, t0=t0, generator=torch.Generator().manual_seed(7),
                                mask=mask)
    assert len(got) == len(want) == (1 if t0 == 1e-4 else 12)                # std(1e-4) < std(eps): one step to 0
    for step, (x_ref, d_ref) in zip(got, want):
        torch.testing.assert_close(step.x, x_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step.x0, d_ref, rtol=1e-5, atol=1e-5)
    assert [s.nfe for s in got] == list(range(1, len(got) + 1))


def test_sdedit_cost_is_registered_like_a_samplers_and_not_offered_as_one():
    from diffusion.editing import SDEDIT
    from diffusion.samplers import SAMPLERS

    assert SDEDIT.nfe_for(20) == 20 and not SDEDIT.adaptive and SDEDIT.fn is sdedit
    assert "sdedit" not in SAMPLERS                      # a picker of samplers does not list it


def _pipelines():
    from factories import tiny_model

    from diffusion.pipeline import Pipeline

    pixel = Pipeline(tiny_model("pixel-cond"), name="pixel-cond", precision="fp32")
    latent = Pipeline(tiny_model("latent-cond"), tiny_model("autoencoder"), name="latent-cond", precision="fp32")
    return pixel, latent


def test_pipeline_edit_is_sdedit_on_the_score_model_with_images_in_and_out():
    pixel, _ = _pipelines()
    images = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    steps = list(pixel.edit(images, [1, 2, 3], t0=0.5, num_steps=4, guidance=2.0, seed=5, preview_every=2))
    assert [s.i for s in steps] == [0, 2, 3] and steps[-1].final and steps[-1].nfe == 4    # every 2nd + the last
    direct = _run(pixel.score_model, images[:, None], labels=torch.tensor([1, 2, 3]), num_steps=4, t0=0.5,
                  generator=torch.Generator().manual_seed(5), guidance=2.0)[-1].x
    assert steps[-1].x.shape == (3, 28, 28)
    torch.testing.assert_close(steps[-1].x, direct.clamp(0, 1)[:, 0])
    assert 0.0 < steps[0].sigma < pixel.score_model.sde.marginal_std(0.5)                 # below std(t0)


def test_pipeline_edit_runs_latent_models_on_their_latents_and_refuses_a_mask_there():
    _, latent = _pipelines()
    images = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0))
    last = list(latent.edit(images, [4, 4], t0=0.3, num_steps=3, seed=0))[-1]
    assert last.x.shape == (2, 28, 28) and last.nfe == 3 and last.decode_time > 0
    with pytest.raises(ValueError, match="mask"):
        next(latent.edit(images, [4, 4], t0=0.3, num_steps=3, mask=half_mask("top")))
    with pytest.raises(ValueError, match="labels"):
        next(latent.edit(images, [4, 4, 4], t0=0.3, num_steps=3))
