"""The three windows' jobs stop through the shared guard (ui/run_loop.py's guard, run before every network
evaluation by ui/lab.py's forward pre-hook): a POST /call/<api> whose result is never opened stops within one
evaluation after the read grace (ui/stops.py), and says why when read at last. Each evaluation of the tiny app's
networks is slowed to 100 ms here, so every job would outlast the grace several times over."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from diffusion.score import networks
from ui.stops import READ_GRACE_S

SLOW_S = 0.1            # loss_by_level, the shortest job: 30 calls = 3 s, three times the grace
# api -> (data, the evaluations the whole job would take)
JOBS = {
    "which_digit": (["test digit", 7, None, "pixel-cond", 40, False, 0], 40),            # 40 calls of 10 labels
    "how_likely": (["test digit", 3, None, "pixel-cond", 60, 0], 2 * 2 * 60),           # two solves of 120
    "loss_by_level": (["pixel-cond", 30, 10, 0], 30),                                   # 30 levels, one call each
}


@pytest.fixture
def evaluations(app_demo, monkeypatch):
    calls: list[float] = []
    lab = app_demo.lab

    def slow(*_):
        time.sleep(SLOW_S)
        calls.append(time.monotonic())
    hooks = [net.register_forward_hook(slow) for p in lab.pipelines.values() for net in networks(p.score_model)]
    monkeypatch.setattr(lab, "max_seconds", 10_000.0)
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def _quiet(calls: list, quiet_s: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not calls or time.monotonic() - calls[-1] >= quiet_s:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("api", list(JOBS))
def test_a_window_nobody_reads_stops_after_the_grace(evaluations, app_url, api):
    data, whole_job = JOBS[api]
    assert _quiet(evaluations, 0.5, 120)
    start_n = len(evaluations)
    posted = time.monotonic()
    req = urllib.request.Request(f"{app_url}gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    deadline = time.monotonic() + 120             # a loaded shared CPU: the first call can be slow to come
    while len(evaluations) == start_n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(evaluations) > start_n, f"/{api} never started"
    assert _quiet(evaluations, 3.0, 60), f"/{api}: nobody reads it, yet it is still computing"
    done = len(evaluations) - start_n
    assert done < whole_job, f"/{api} ran to its end ({done} evaluations)"
    assert evaluations[-1] - posted < READ_GRACE_S + 8.0, f"/{api} stopped {evaluations[-1] - posted:.1f} s late"
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{api}/{event_id}", timeout=30) as r:
        stream = r.read().decode()
    assert '"error": "Stopped: result never read."' in stream, stream[-300:]
