"""Pixel vs latent's handler, in process: the latent lane decodes only the previews the page can show (as often as
the run loop streams, by the cost model's estimate of the run), grids are sent at SENT_PX, the last update is whole."""
from __future__ import annotations

import pytest
import torch

from diffusion.pipeline import Pipeline
from factories import tiny_model
from ui import build_demo
from ui.pictures import sent_grid
from ui.tab_compare import decode_every

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.mark.parametrize("every, steps, seconds, expected", [
    (1, 10, 0.25, 4),        # 25 ms a step: one preview per 100 ms is every 4th step
    (1, 10, 1.0, 1),         # 100 ms a step: every step is seen
    (1, 10, 0.001, 10),      # an instant run: the first step and the final one only
    (3, 100, 100.0, 3),      # slow: never more often than the frame budget's `every`
    (1, 10, None, 1),        # never timed: as before
    (2, 0, 1.0, 2),
])
def test_decode_every(every, steps, seconds, expected):
    assert decode_every(every, steps, seconds, interval=0.1) == expected


@pytest.fixture(scope="module")
def compare():
    pipes = {"pixel-cond": Pipeline(tiny_model("pixel-cond"), name="pixel-cond"),
             "latent-cond": Pipeline(tiny_model("latent-cond"), autoencoder=tiny_model("autoencoder"),
                                     name="latent-cond")}
    return build_demo(pipes, [], calibrate=False).tabs["CompareTab"]


def decoder_calls(compare, rate, monkeypatch, steps=10):
    lab = compare.lab
    monkeypatch.setattr(lab.cost, "rates", {} if rate is None else {"pixel-cond": rate, "latent-cond": rate})
    calls = []
    hook = lab.pipelines["latent-cond"].autoencoder.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        outs = list(compare.compare(3, "dpmpp_2m", steps, 2.0, 0, 16))
    finally:
        hook.remove()
    return len(calls), outs


def test_the_latent_lane_decodes_only_what_can_be_seen(compare, monkeypatch):
    fast, outs = decoder_calls(compare, 1e-9, monkeypatch)         # estimated instant: nothing between is seen
    assert fast == 3                                                # x and x0 at step 1, the final x (= x0)
    untimed, _ = decoder_calls(compare, None, monkeypatch)          # no estimate: every step, as before
    assert untimed == 2 * 10 - 1
    last = outs[-1]
    shape = sent_grid(torch.zeros(16, 28, 28)).shape
    assert all(img.shape == shape for img in last[:4])
    assert "| progress | done | done |" in last[4]
