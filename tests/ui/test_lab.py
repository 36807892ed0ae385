"""ui/lab.py: the worst-case estimate that admission reads is calibrated like the cost model's rates (the fastest of a
few calls), so a CPU busy at start-up cannot inflate it."""
from __future__ import annotations

import statistics

import pytest

from diffusion.cost import CostModel
from diffusion.pipeline import Pipeline
from factories import tiny_model
from ui import lab as lab_module
from ui.run_loop import Throttle


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


def test_streamed_updates_thin_out_while_more_jobs_share_the_app():
    """Lab.run counts the jobs inside it, and its throttle's interval is PREVIEW_INTERVAL times that count: with two
    loops running, each is due at most every 2 x PREVIEW_INTERVAL; the count drops back when a loop ends."""
    lab = lab_module.Lab({"pixel-cond": Pipeline(tiny_model("pixel-cond"), name="pixel-cond")}, calibrate=False)
    first, second = lab.run(iter(range(3))), lab.run(iter(range(3)))
    next(first)
    assert lab.running == 1
    next(second)
    assert lab.running == 2
    intervals = []
    third = lab.run(iter(range(2)), interval=0.5)          # a tab's own interval is kept
    next(third)
    intervals.append(lab.running)
    for loop in (first, second, third):
        list(loop)
    assert intervals == [3] and lab.running == 0
    clock = iter([0.0, 0.15, 0.25, 10.0]).__next__
    throttle = Throttle(lambda: lab_module.PREVIEW_INTERVAL * 2, clock=clock)     # a callable interval
    assert [throttle.due() for _ in range(3)] == [True, False, True] and throttle.due(final=True)
