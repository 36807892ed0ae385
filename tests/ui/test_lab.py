"""ui/lab.py: the worst-case estimate that admission reads is calibrated like the cost model's rates (the fastest of a
few calls), so a CPU busy at start-up cannot inflate it."""
from __future__ import annotations

import statistics

import pytest

from diffusion.cost import CostModel
from diffusion.pipeline import Pipeline
from factories import tiny_model
from ui import lab as lab_module


def test_the_per_call_overhead_is_calibrated_on_the_fastest_call(monkeypatch):
    def busy_machine(score_model, batch, *, decoder=None, reps=1, fastest=False, **kw):
        """Seconds per image of a batch-of-one call: one quiet call (0.01 s), the others slowed 10x by load."""
        times = [0.01] + [0.1] * (reps - 1)
        return min(times) if fastest else statistics.median(times)

    monkeypatch.setattr(lab_module, "seconds_per_nfe", busy_machine)
    monkeypatch.setattr(CostModel, "measure", lambda self, name, *a, **k: self.rates.setdefault(name, 0.001))
    lab = lab_module.Lab({"pixel-cond": Pipeline(tiny_model("pixel-cond"), name="pixel-cond")})
    assert lab.call_floor["pixel-cond"] == pytest.approx(0.01 / 0.001)       # not 0.1 / 0.001: load left out
    # worst case of one image by euler_maruyama, 10 steps, unguided: 10 NFE x the floor's 10 images x the rate
    assert lab.estimate_seconds("pixel-cond", "euler_maruyama", 10, 1, 1.0, worst=True) == pytest.approx(0.1)
