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
