"""Generate's handler, in process: what each update holds (grids sent at SENT_PX, the final update complete, in one
piece, GIF included), previews throttled by wall time (an injected clock), GIF frames rendered only for the frames
the GIF keeps."""
from __future__ import annotations

import itertools
import re

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import ui.tab_generate as tab_generate
from diffusion.pipeline import Pipeline
from factories import tiny_model
from ui import build_demo
from ui.pictures import sent_grid
from ui.run_loop import run as run_steps

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def tab():
    pipe = Pipeline(tiny_model("pixel-cond"), name="pixel-cond")
    return build_demo({"pixel-cond": pipe}, [], calibrate=False).tabs["GenerateTab"]


def fake_clock(tab, monkeypatch, tick: float = 1 / 16, interval: float = 1 / 4):
    """The run loop reads its clock twice per step (time limit, throttle): each read advances `tick` seconds."""
    clock = itertools.count(0.0, tick).__next__
    lab = tab.lab
    monkeypatch.setattr(lab, "run", lambda steps, **kw: run_steps(steps, lab.max_seconds, clock=clock,
                                                                  interval=interval, **kw))


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def test_previews_follow_the_wall_clock_and_the_final_update_is_whole(tab, monkeypatch):
    fake_clock(tab, monkeypatch)                          # 1/8 s per step, one update per 1/4 s: every 2nd step
    outs = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 16))
    start, previews, final = outs[0], outs[1:-1], outs[-1]
    assert start[:2] == (None, None) and start[2].endswith("starting…")
    steps = [int(re.search(r"step (\d+)/10", p[2]).group(1)) for p in previews]
    assert steps == [1, 3, 5, 7, 9]                       # due at once, then every 2 steps; step 10 is the final
    shape = sent_grid(torch.zeros(16, 28, 28)).shape
    for p in previews:
        assert p[0].shape == p[1].shape == shape and p[0].dtype == np.uint8
        assert all(is_skip(v) for v in p[3:])             # the final grid and the GIF only at the end
    grid, again, status, final_grid, gif, anim = final
    assert grid.shape == shape and grid is again is final_grid
    assert status.startswith("**pixel-cond**") and "**Done**" in status and "writing" not in status
    assert gif == anim and gif.endswith("_seed0.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 10                          # one frame per step, the final one included


def test_without_a_clock_tick_only_the_first_preview_and_the_final_update_are_sent(tab, monkeypatch):
    fake_clock(tab, monkeypatch, tick=0.0)                # an instant run: nobody could see more than that
    outs = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 4))
    assert len(outs) == 3 and "step 1/10" in outs[1][2] and "**Done**" in outs[2][2]


def test_gif_frames_are_rendered_only_for_the_frames_the_gif_keeps(tab, monkeypatch):
    made = []
    render = tab_generate.gif_frame
    monkeypatch.setattr(tab_generate, "gif_frame", lambda step, total: made.append(step.i) or render(step, total))
    outs = list(tab.generate("pixel-cond", 3, "euler_maruyama", 100, 2.0, 0, 1))
    with Image.open(outs[-1][4]) as im:
        frames = im.n_frames
    assert made[0] == 0 and made[-1] == 99 and len(made) == frames <= 41   # first, every k-th, final; no others
    assert len(set(np.diff(made[:-1]))) == 1                                # evenly spaced along the trajectory


def test_bad_input_is_refused_before_any_update(tab):
    with pytest.raises(gr.Error, match="num_images"):
        next(tab.generate("pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 1000))


def test_a_default_guidance_schedule_is_named_in_the_status_and_the_summary(tab):
    """A model whose defaults apply w only at low sigma: the status line says where, the summary which calls doubled."""
    import dataclasses

    from diffusion.guidance import GuidanceSchedule
    from diffusion.registry import model_spec, registered

    spec = model_spec("pixel-cond")
    low = dataclasses.replace(spec.defaults, schedule=GuidanceSchedule(sigma_hi=1.0))
    with registered(dataclasses.replace(spec, defaults=low)):
        *_, (_, _, summary, _, _, _) = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 3, 2.0, 0, 2))
        *_, (_, _, plain, _, _, _) = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 3, 1.0, 0, 2))
    assert "guidance 2 (at sigma <= 1)" in summary
    assert "on a batch of 4 (images × 2 for guidance) where w applies (at sigma <= 1), of 2 elsewhere" in summary
    assert "each on a batch of 2" in plain and "where w applies" not in plain      # w = 1: nothing doubled anywhere


def test_where_w_applies_is_a_choice_that_reaches_the_sampler_and_the_summary(tab):
    """"Where w applies": the model's own recipe (pixel-cond's: every step), every step, only at sigma <= 1; the
    images follow the choice, the summary and the Reproduce line say it; a bad choice is refused by name."""
    from diffusion.guidance import GuidanceSchedule

    def run(where, w=2.0):
        *_, final = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 4, w, 0, 2, where))
        return final[3], final[2]
    own, own_text = run("model")
    every, _ = run("all")
    low, low_text = run("low")
    assert np.array_equal(own, every) and not np.array_equal(low, every)
    assert "guidance 2 (at sigma <= 1)" in low_text and "where w applies (at sigma <= 1)" in low_text
    assert f"guidance_schedule={GuidanceSchedule(sigma_hi=1.0)!r})`" in low_text
    assert "guidance_schedule" not in own_text and "where w applies" not in own_text
    with pytest.raises(gr.Error, match="where"):
        next(tab.generate("pixel-cond", 3, "dpmpp_2m", 4, 2.0, 0, 2, "sometimes"))


def test_every_step_overrides_a_models_own_schedule(tab):
    import dataclasses

    from diffusion.guidance import GuidanceSchedule
    from diffusion.registry import model_spec, registered

    spec = model_spec("pixel-cond")
    low = dataclasses.replace(spec.defaults, schedule=GuidanceSchedule(sigma_hi=1.0))
    with registered(dataclasses.replace(spec, defaults=low)):
        *_, (_, _, own, _, _, _) = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 3, 2.0, 0, 2))
        *_, (_, _, every, _, _, _) = list(tab.generate("pixel-cond", 3, "dpmpp_2m", 3, 2.0, 0, 2, "all"))
    assert "where w applies (at sigma <= 1)" in own and "guidance_schedule" not in own
    assert "each on a batch of 4 (images × 2 for guidance)" in every and "where w applies" not in every
    assert f"guidance_schedule={GuidanceSchedule()!r})`" in every
