"""Guidance schedules (diffusion/guidance.py): w(sigma) by hand, the network calls they save, the pipeline's wiring."""
import math

import pytest
import torch
from factories import tiny_score

from diffusion.guidance import GuidanceSchedule, scheduled
from diffusion.pipeline import Pipeline
from diffusion.samplers import dpmpp_2m_sde


def test_interval_weights_by_hand():
    low = GuidanceSchedule(sigma_hi=0.5)                     # w only at sigma <= 0.5
    assert [low.weight(2.0, s) for s in (25.0, 0.51, 0.5, 0.1)] == [1.0, 1.0, 2.0, 2.0]
    band = GuidanceSchedule(0.3, 5.0)                        # (0.3, 5]
    assert [band.weight(3.0, s) for s in (5.01, 5.0, 1.0, 0.3, 0.2)] == [1.0, 3.0, 3.0, 1.0, 1.0]


def test_ramp_is_linear_in_log_sigma():
    ramp = GuidanceSchedule(0.1, 10.0, ramp=True)
    assert ramp.weight(3.0, 20.0) == 1.0 and ramp.weight(3.0, 10.0) == 1.0
    assert ramp.weight(3.0, 1.0) == pytest.approx(2.0)      # log-midpoint of (0.1, 10): half of w - 1
    assert ramp.weight(3.0, 10 ** -0.5) == pytest.approx(2.5)
    assert ramp.weight(3.0, 0.1) == 3.0 and ramp.weight(3.0, 0.01) == 3.0


def test_per_sample_sigmas_give_per_sample_weights():
    low = GuidanceSchedule(sigma_hi=0.5)
    w = low.weight(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 0.1]))
    assert torch.equal(w, torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert low.weight(2.0, torch.tensor([0.2, 0.2])) == 2.0   # one noise level: a plain float


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma_lo=1.0, sigma_hi=1.0), "sigma_lo < sigma_hi"),
    (dict(sigma_lo=-1.0), "0 <= sigma_lo"),
    (dict(sigma_hi=float("nan")), "sigma_hi=nan"),
    (dict(sigma_lo=0.0, sigma_hi=5.0, ramp=True), "linear in log sigma"),
    (dict(sigma_lo=0.3, ramp=True), "linear in log sigma"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSchedule(**kwargs)


def test_setting_keys_and_labels():
    assert GuidanceSchedule.from_setting({"guidance": 2.0}).constant
    s = GuidanceSchedule.from_setting({"w_lo": 0.3, "w_hi": 5.0, "w_ramp": 1.0})
    assert s == GuidanceSchedule(0.3, 5.0, True) and s.describe() == "ramp sigma 5 -> 0.3"
    assert GuidanceSchedule.from_setting({"w_hi": 0.5}).describe() == "sigma in (0, 0.5]"


class Counting:
    """A conditional tiny score model that records the batch size of every denoiser call."""

    def __init__(self):
        self.model, self.batches = tiny_score(0, num_classes=10), []
        self.sde = self.model.sde

    def __getattr__(self, name):
        return getattr(self.model, name)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        self.batches.append((float(sigma), guidance))
        return self.model.denoise(x, sigma, labels, guidance)


def test_the_sampler_sees_w_only_where_the_schedule_applies():
    inner, labels = Counting(), torch.arange(4)
    x = inner.sde.prior_sample((4, 1, 28, 28), torch.Generator().manual_seed(0))
    list(dpmpp_2m_sde(scheduled(inner, GuidanceSchedule(sigma_hi=0.5)), x, labels, num_steps=6,
                      generator=torch.Generator().manual_seed(1), guidance=2.0))
    assert [w for s, w in inner.batches] == [2.0 if s <= 0.5 else 1.0 for s, _ in inner.batches]
    assert {w for _, w in inner.batches} == {1.0, 2.0}


def test_whole_range_schedule_is_plain_guidance_bit_for_bit():
    model = tiny_score(0, num_classes=10)
    assert scheduled(model, GuidanceSchedule()) is model and scheduled(model, None) is model
    pipe = Pipeline(model, name="pixel-cond")
    plain, _ = pipe.generate([3, 7], num_steps=3, guidance=2.0, seed=5)
    same, _ = pipe.generate([3, 7], num_steps=3, guidance=2.0, seed=5, guidance_schedule=GuidanceSchedule())
    assert torch.equal(plain, same)


def test_pipeline_schedule_matches_guidance_applied_by_hand():
    """Guidance only at sigma <= 1 equals a sampler fed w(sigma) by a hand-written wrapper."""
    model = tiny_score(0, num_classes=10)
    pipe = Pipeline(model, name="pixel-cond", precision="fp32")
    got, _ = pipe.generate([1, 2], num_steps=4, guidance=3.0, seed=2, guidance_schedule=GuidanceSchedule(sigma_hi=1.0))

    class ByHand:
        sde = model.sde

        def __getattr__(self, name):
            return getattr(model, name)

        def denoise(self, x, sigma, labels=None, guidance=1.0):
            return model.denoise(x, sigma, labels, 3.0 if sigma <= 1.0 else 1.0)

    g = torch.Generator().manual_seed(2)
    x = model.sde.prior_sample((2, 1, 28, 28), g)
    *_, last = dpmpp_2m_sde(ByHand(), x, torch.tensor([1, 2]), num_steps=4, generator=g, guidance=3.0)
    assert torch.allclose(got, last.x.clamp(0, 1)[:, 0], atol=1e-6)
    assert not torch.allclose(got, pipe.generate([1, 2], num_steps=4, guidance=3.0, seed=2)[0], atol=1e-3)


def test_score_calls_take_sigma_from_t():
    model = tiny_score(0, num_classes=10)
    wrapped = scheduled(model, GuidanceSchedule(sigma_hi=0.5))
    x, labels = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    t_high = torch.tensor(1.0)                                     # sigma = std(1) = 25: no guidance there
    assert torch.equal(wrapped(x, t_high, labels, guidance=3.0), model(x, t_high, labels, guidance=1.0))
    t_low = model.sde.t_from_std(torch.tensor(0.1, dtype=torch.float64))
    assert math.isclose(float(model.sde.marginal_std(t_low)), 0.1, rel_tol=1e-6)
    assert torch.allclose(wrapped(x, t_low, labels, guidance=3.0), model(x, t_low, labels, guidance=3.0))


def test_repr_is_python_that_builds_the_same_schedule():
    """The app's Reproduce line prints a schedule: it must run as written (no `inf`), naming only what differs."""
    import math

    from diffusion.guidance import GuidanceSchedule
    cases = {GuidanceSchedule(): "GuidanceSchedule()", GuidanceSchedule(sigma_hi=1.0): "GuidanceSchedule(sigma_hi=1)",
             GuidanceSchedule(sigma_lo=0.5): "GuidanceSchedule(sigma_lo=0.5)",
             GuidanceSchedule(0.3, 5.0, True): "GuidanceSchedule(sigma_lo=0.3, sigma_hi=5, ramp=True)"}
    for schedule, text in cases.items():
        assert repr(schedule) == text and eval(text, {"GuidanceSchedule": GuidanceSchedule, "math": math}) == schedule
