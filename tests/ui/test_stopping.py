"""Work that nobody wants stops (issues 14 and 26): a cancel, a disconnect, a result never read and the time limit
stop a job within one network evaluation; admission bounds the worst case up front."""
from __future__ import annotations

import http.client
import json
import time

import gradio as gr
import pytest

from app_helpers import post_json, wait_until, wait_until_quiet


def _interp_args(**over):
    args = dict(model="pixel-cond", digit_a=1, digit_b=7, alpha=0.5, seed=0, num_images=1,
                sampler="euler_maruyama", steps=400, guidance=2.0)
    args.update(over)
    return list(args.values())


def _wait_calls(live, start_n, k, timeout=60):
    wait_until(lambda: len(live.calls) - start_n >= k, timeout, what="the job's network evaluations")


def test_cancelling_the_interpolation_strip_stops_it_within_one_evaluation(live, monkeypatch):
    from gradio_client import Client

    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    client = Client(live.url, verbose=False)
    start_n = len(live.calls)
    job = client.submit(*_interp_args(), api_name="/interpolate")
    _wait_calls(live, start_n, 400 + 50)                     # past the grid: inside the strip (no yields there)
    job.cancel()                                              # returns once the server has handled it
    returned = time.perf_counter()
    wait_until_quiet(lambda: len(live.calls), quiet_s=1.0)
    after = [t for t in live.calls[start_n:] if t > returned]
    assert len(live.calls) - start_n < 400 * 10, "the strip ran to its end"
    assert len(after) <= 1, f"{len(after)} evaluations after the cancel was answered"


def test_the_time_limit_is_checked_inside_the_strip(live, monkeypatch):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(live.demo.lab, "max_seconds", 0.5)
    monkeypatch.setattr(live.demo.lab.cost, "rates", {})     # admit it: never timed, no estimate
    start = time.perf_counter()
    with pytest.raises(AppError, match="Stopped after"):
        Client(live.url, verbose=False).predict(*_interp_args(steps=1000), api_name="/interpolate")
    assert time.perf_counter() - start < 5


def test_a_result_nobody_reads_is_not_computed_to_the_end(live, monkeypatch):
    from ui import stops

    monkeypatch.setattr(stops, "READ_GRACE_S", 0.3)
    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    start_n = len(live.calls)
    status, _, body = post_json(live, "gradio_api/call/generate",
                                 {"data": ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]})
    assert status == 200 and b"event_id" in body                 # ... and the result stream is never opened
    _wait_calls(live, start_n, 1)
    n = wait_until_quiet(lambda: len(live.calls), quiet_s=0.5)
    assert n - start_n < 1000, "an unread job ran on"


def test_a_client_that_disconnects_stops_its_job(live, monkeypatch):
    from ui import stops

    monkeypatch.setattr(stops, "GONE_GRACE_S", 0.2)
    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    start_n = len(live.calls)
    status, _, body = post_json(live, "gradio_api/call/generate",
                                 {"data": ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]})
    event_id = json.loads(body)["event_id"]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", f"/gradio_api/call/generate/{event_id}")
    resp = conn.getresponse()
    _wait_calls(live, start_n, 5)
    resp.close()
    conn.close()                                                   # the client goes away mid-job
    n = wait_until_quiet(lambda: len(live.calls), quiet_s=0.5)
    assert n - start_n < 1000, "a disconnected client's job ran on"


def test_admission_bounds_the_worst_case(live, monkeypatch):
    """rk45 at its NFE cap, the strip's batch-of-one runs at their per-call cost, guidance's doubled batch, and
    compare's two models in one request: refused when the worst case passes the limit."""
    lab = live.demo.lab
    monkeypatch.setattr(lab.cost, "rates", {"pixel-cond": 0.01, "latent-cond": 0.01})
    monkeypatch.setattr(lab, "call_floor", {"pixel-cond": 3.0, "latent-cond": 3.0})
    monkeypatch.setattr(lab, "max_seconds", 50.0)
    assert lab.estimate_seconds("pixel-cond", "rk45", 1, 1, 2.0, worst=True) == pytest.approx(2000 * 3 * 0.01)
    assert lab.estimate_seconds("pixel-cond", "rk45", 1, 1, 2.0) == pytest.approx(200 * 2 * 0.01)
    with pytest.raises(gr.Error, match="up to 2000 network evaluations"):
        lab.refuse_runaway("pixel-cond", "rk45", 1, 1, 2.0)
    strip = lab.estimate_seconds("pixel-cond", "euler_maruyama", 100, 8, 2.0, worst=True, runs_of_one=9)
    assert strip == pytest.approx(100 * (16 + 9 * 3) * 0.01)        # not 100 * (8 + 9) * 2 * 0.01
    lab.refuse_runaway("pixel-cond", "euler_maruyama", 100, 8, 2.0)  # 16 s: admitted
    with pytest.raises(gr.Error, match="Too much work|over the app"):
        lab.refuse_runaway("pixel-cond", "euler_maruyama", 100, 8, 2.0, runs_of_one=9, also_seconds=20.0)
