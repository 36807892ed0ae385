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


def test_cost_model_estimates_and_learns_only_downwards():
    cost = CostModel({"m": 0.01}, window=2)
    assert cost.estimate("m", 10, 4) == pytest.approx(0.4)
    assert cost.estimate("unknown", 10, 4) is None
    cost.learn("m", 10, 4, 1.2)                 # observed 0.03 s per image-NFE (a busy machine): no change
    assert cost.rates["m"] == pytest.approx(0.01)
    cost.learn("m", 10, 4, 0.2)                 # 0.005: a calibration taken under load is corrected
    assert cost.rates["m"] == pytest.approx(0.005)
    cost.learn("m", 10, 4, 0.36)                # 0.009 and 0.03 ...
    cost.learn("m", 10, 4, 1.2)                 # ... the fast run left the window: the calibration is the ceiling
    assert cost.rates["m"] == pytest.approx(0.009)
    cost.learn("m", 0, 4, 1.0)                  # no work: nothing to learn
    cost.learn("unknown", 10, 4, 1.0)           # never timed: nothing to refine
    assert "unknown" not in cost.rates and cost.rates["m"] == pytest.approx(0.009)


def test_setting_a_rate_directly_is_a_new_calibration():
    cost = CostModel({"m": 0.01})
    cost.learn("m", 1, 1, 0.004)
    cost.rates["m"] = 0.02                      # e.g. the Live tab times its students at their own batch
    cost.learn("m", 1, 1, 0.05)
    assert cost.rates["m"] == pytest.approx(0.02) and cost.calibration["m"] == pytest.approx(0.02)


def test_cost_model_refuses_a_bad_window():
    with pytest.raises(ValueError, match="window and reps must be >= 1"):
        CostModel(window=0)


def test_measure_takes_the_fastest_call():
    cost = CostModel(reps=3)
    rate = cost.measure("n", tiny_model("pixel-cond"))
    assert rate > 0 and cost.rates["n"] == rate == cost.calibration["n"]


def _busy(seconds: float):
    """Burn one CPU core in another process for `seconds` (bounded: it ends by itself)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\n"
                             "while time.time() < end: pass"])


def test_load_from_others_does_not_inflate_the_estimate_or_refuse_an_admitted_request(one_thread):
    """Calibrate on a quiet moment, then sample while two other processes keep both cores busy (bounded, ~3 s) and
    feed those slow runs to `learn`: the estimate changes by <= 1.5x (here: not at all) and a request admitted when
    idle (its estimate just under the limit) is still admitted."""
    from diffusion.pipeline import Pipeline

    model = tiny_model("pixel-cond")
    cost = CostModel(reps=3)
    cost.measure("m", model)
    idle = cost.estimate("m", 5, 2)
    limit = 1.05 * idle                                          # the request is admitted: idle < limit
    hogs = [_busy(3.0) for _ in range(2)]
    try:
        pipe = Pipeline(model)
        slow = []
        for _ in range(2):
            _, step = pipe.generate([1] * 2, sampler="ddim", num_steps=5, guidance=1.0, seed=0)
            slow.append(step.elapsed)
            cost.learn("m", step.nfe, 2, step.elapsed)
    finally:
        for hog in hogs:
            hog.wait(timeout=10)
    loaded = cost.estimate("m", 5, 2)
    assert loaded <= 1.5 * idle and loaded <= limit
