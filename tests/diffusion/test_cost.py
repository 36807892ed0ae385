"""diffusion/cost.py: the one timing rule the app and the benchmarks share."""
import pytest

from diffusion.cost import CostModel, seconds_per_nfe, work_batch
from factories import tiny_model


def test_seconds_per_nfe_times_the_network_and_the_decoder():
    score, ae = tiny_model("latent-cond"), tiny_model("autoencoder")
    calls = []
    hook = score.net.register_forward_hook(lambda m, inputs, out: calls.append(out.shape[0]))
    try:
        rate = seconds_per_nfe(score, 4, guidance=2.0, reps=3, warmup=1)
    finally:
        hook.remove()
    assert 0 < rate < 1.0
    assert calls == [8] * 4                  # guided: one call on a doubled batch, per warm-up and rep
    decodes = []
    ae.decoder.register_forward_hook(lambda *a: decodes.append(1))
    seconds_per_nfe(score, 4, decoder=ae.decode, reps=2, warmup=0)
    assert len(decodes) == 2


def test_work_batch_doubles_only_for_guided_conditional_models():
    assert work_batch(16, True, 2.0) == 32
    assert work_batch(16, True, 1.0) == 16
    assert work_batch(16, False, 2.0) == 16


def test_cost_model_estimates_and_learns():
    cost = CostModel({"m": 0.01}, weight=0.5)
    assert cost.estimate("m", 10, 4) == pytest.approx(0.4)
    assert cost.estimate("unknown", 10, 4) is None
    cost.learn("m", 10, 4, 1.2)                 # observed 0.03 s per image-NFE: halfway there
    assert cost.rates["m"] == pytest.approx(0.02)
    cost.learn("unknown", 10, 4, 1.0)           # never timed: nothing to refine
    assert "unknown" not in cost.rates
    assert cost.measure("n", tiny_model("pixel-cond")) > 0 and "n" in cost.rates
