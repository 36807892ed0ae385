"""Issue 26 item 3, work nobody reads stops (the three windows included): a POST /call/<api> whose result stream is never opened, for every
endpoint that computes (on the tiny app of tests/conftest.py). Each job would run for minutes on this shared CPU; it
must stop once the read grace (ui/stops.py, 1 s) has passed, at its next step: one network evaluation, one MLP
optimizer step (score_train_mlp) or one particle batch (score_particles). Counted here: score-network evaluations
(forward hooks), the exact mixture score's evaluations and the tiny MLP's forward calls.

A client that goes away mid-job (its result stream closed) stops the handlers that evaluate no score network too.

Not here: /live (at most 4 evaluations per job by design: it ends before the grace), /forward_diffusion and
/score_field (one picture each, no loop), /timelapse_play (replays stored pictures)."""
from __future__ import annotations

import http.client
import json
import time
import urllib.request

import pytest

from diffusion.score import networks
from diffusion.toy2d import MixtureScore, ToyScoreMLP
from ui import stops
from ui.stops import READ_GRACE_S

# api -> (data, the evaluations the whole job would take)
JOBS = {
    "generate": (["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 16], 1000),
    "compare": ([3, "euler_maruyama", 1000, 2.0, 0, 16], 2000),
    "interpolate": (["pixel-cond", 1, 7, 0.5, 0, 16, "euler_maruyama", 1000, 2.0], 10 * 1000),
    "race": (["pixel-cond", 3, 200, 2.0, 0, 9], 6 * 200),
    "sdedit": (["test digit", 30, None, "pixel-cond", 3, 2.0, 1.0, 200, 0, 8, "none (SDEdit)"], 200),
    "score_particles": (["two blobs", 2000, 1000, 0], 2 * 999),
    "score_train_mlp": (["two blobs", 5000, 0.1, 0], 5000),
}
QUIET_S = 3.0          # no evaluation for this long: the job has stopped (one evaluation here can take ~1 s)
# the three windows (Which digit?, How likely?, Inside the network): short jobs on the tiny app, so each network
# evaluation is slowed to SLOW_S (fixture `slowed`) and every job outlasts the grace several times over
SLOW_S = 0.1
WINDOW_JOBS = {
    "which_digit": (["test digit", 7, None, "pixel-cond", 40, False, 0], 40),            # 40 calls of 10 labels
    "how_likely": (["test digit", 3, None, "pixel-cond", 60, 0], 2 * 2 * 60),           # two solves of 120
    "loss_by_level": (["pixel-cond", 30, 10, 0], 30),                                   # 30 levels, one call each
}


@pytest.fixture
def evaluations(app_demo, monkeypatch):
    """Timestamps of every evaluation any handler of the tiny app makes; no time limit in the way."""
    calls: list[float] = []
    lab = app_demo.lab
    pipes = [*lab.pipelines.values(), *(getattr(lab, "students", {}) or {}).values()]
    hooks = [net.register_forward_hook(lambda *_: calls.append(time.monotonic()))
             for p in pipes for net in networks(p.score_model)]

    def counted(method):
        def wrapper(self, *args, **kwargs):
            calls.append(time.monotonic())
            return method(self, *args, **kwargs)
        return wrapper
    monkeypatch.setattr(MixtureScore, "denoise", counted(MixtureScore.denoise))
    monkeypatch.setattr(ToyScoreMLP, "forward", counted(ToyScoreMLP.forward))
    monkeypatch.setattr(lab, "max_seconds", 10_000.0)
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture
def slowed(app_demo):
    """Every score-network evaluation of the tiny app takes SLOW_S longer."""
    hooks = [net.register_forward_hook(lambda *_: time.sleep(SLOW_S))
             for p in app_demo.lab.pipelines.values() for net in networks(p.score_model)]
    try:
        yield SLOW_S
    finally:
        for h in hooks:
            h.remove()


def _post_unread(app_url: str, api: str, data: list) -> str:
    """POST /call/<api> and never open its result: the event id."""
    req = urllib.request.Request(f"{app_url}gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["event_id"]


def _wait_until_quiet(calls: list, quiet_s: float, timeout: float) -> bool:
    """Poll until no new call for `quiet_s` seconds (True; at once when none came), or `timeout` passes with calls
    still coming (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not calls or time.monotonic() - calls[-1] >= quiet_s:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("api", list(JOBS))
def test_a_job_nobody_reads_stops_within_one_step_after_the_grace(evaluations, app_url, api):
    data, whole_job = JOBS[api]
    assert _wait_until_quiet(evaluations, 0.5, 120)                        # an earlier test's job has ended
    start_n = len(evaluations)
    posted = time.monotonic()
    event_id = _post_unread(app_url, api, data)
    deadline = time.monotonic() + 60
    while len(evaluations) == start_n and time.monotonic() < deadline:      # it starts ...
        time.sleep(0.05)
    assert len(evaluations) > start_n, f"/{api} never started"
    assert _wait_until_quiet(evaluations, QUIET_S, 60), f"/{api}: nobody reads it, yet it is still computing"
    done = len(evaluations) - start_n
    assert done < whole_job, f"/{api} ran to its end ({done} evaluations)"
    # ... and stops at its first step after the grace: generous slack for one evaluation on a loaded shared CPU
    assert evaluations[-1] - posted < READ_GRACE_S + 5.0, f"/{api} stopped {evaluations[-1] - posted:.1f} s late"
    # read now, the job says why it stopped, in the guard's own words
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{api}/{event_id}", timeout=30) as r:
        stream = r.read().decode()
    assert '"error": "Stopped: result never read."' in stream and '"title": "Stopped"' in stream, stream[-300:]


@pytest.mark.parametrize("api", ["score_particles", "score_train_mlp"])
def test_a_client_that_goes_away_stops_a_handler_without_a_score_network(evaluations, app_url, api, monkeypatch):
    monkeypatch.setattr(stops, "GONE_GRACE_S", 0.2)
    data, whole_job = JOBS[api]
    assert _wait_until_quiet(evaluations, 0.5, 120)
    start_n = len(evaluations)
    event_id = _post_unread(app_url, api, data)
    port = int(app_url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/gradio_api/call/{api}/{event_id}")               # the client reads its result ...
    resp = conn.getresponse()
    deadline = time.monotonic() + 60
    while len(evaluations) - start_n < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(evaluations) - start_n >= 20, f"/{api} did not get going"
    resp.close()
    conn.close()                                                           # ... and goes away mid-job
    gone = time.monotonic()
    assert _wait_until_quiet(evaluations, QUIET_S, 60), f"/{api}: its client left, yet it is still computing"
    assert len(evaluations) - start_n < whole_job, f"/{api} ran to its end"
    assert evaluations[-1] - gone < stops.GONE_GRACE_S + 5.0


@pytest.mark.parametrize("api", list(WINDOW_JOBS))
def test_a_window_nobody_reads_stops_after_the_grace(evaluations, slowed, app_url, api):
    """The windows' jobs stop through the same guard (run before every network evaluation by ui/lab.py's hook)."""
    data, whole_job = WINDOW_JOBS[api]
    assert _wait_until_quiet(evaluations, 0.5, 120)
    start_n = len(evaluations)
    posted = time.monotonic()
    event_id = _post_unread(app_url, api, data)
    deadline = time.monotonic() + 120             # a loaded shared CPU: the first call can be slow to come
    while len(evaluations) == start_n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(evaluations) > start_n, f"/{api} never started"
    assert _wait_until_quiet(evaluations, QUIET_S, 60), f"/{api}: nobody reads it, yet it is still computing"
    done = len(evaluations) - start_n
    assert done < whole_job, f"/{api} ran to its end ({done} evaluations)"
    assert evaluations[-1] - posted < READ_GRACE_S + 8.0, f"/{api} stopped {evaluations[-1] - posted:.1f} s late"
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{api}/{event_id}", timeout=30) as r:
        stream = r.read().decode()
    assert '"error": "Stopped: result never read."' in stream, stream[-300:]
