"""The Live tab (ui/tab_live.py): the handler on tiny models (students made from a tiny pixel-cond, untrained: valid,
if poor, images), its validation, its fallback to the teacher without student weights, and the /live endpoint
through gradio_client on the app of conftest.py (which ships tiny students)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import app
import gradio as gr
import diffusion.pipeline as dp
from diffusion.pipeline import Pipeline
from diffusion.registry import DISTILLED_NAMES
from factories import tiny_model, tiny_students
from ui import build_demo
from ui.pictures import SENT_PX, sent_grid
from ui.tab_live import BUILD_COMMAND, FALLBACK_GUIDANCE_RANGE, FALLBACK_STEPS, student_messages

LIVE = dict(api_name="/live")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    return Pipeline(tiny_model("pixel-cond"), name="pixel-cond")


def _live_tab(teacher, students=DISTILLED_NAMES, with_teacher=True):
    made = tiny_students(teacher.score_model, names=students) if students else {}
    demo = build_demo({"pixel-cond": teacher} if with_teacher else {}, [], calibrate=False,
                      students={n: Pipeline(s, name=n) for n, s in made.items()})
    return demo.tabs["LiveTab"]


@pytest.fixture(scope="module")
def live(teacher):
    return _live_tab(teacher)


def count_calls(pipe):
    """Batch sizes of every network call of a pipeline's score model (a removable hook)."""
    calls = []
    return calls, pipe.score_model.net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))


def run(tab, digit=3, steps=4, guidance=2.0, seed=0, num_images=16):
    outputs = list(tab.live(digit, steps, guidance, seed, num_images))
    return outputs[-1]


# ---------------------------------------------------------------- with students

@pytest.mark.parametrize("steps", [1, 2, 4])
def test_each_student_takes_one_network_call_per_step_on_the_images_alone(live, steps):
    runner = live.runners[steps]
    calls, hook = count_calls(runner.pipe)
    try:
        picture, summary, timing = run(live, steps=steps, num_images=6)
    finally:
        hook.remove()
    assert calls == [6] * steps                       # 1 NFE per step, w an input: no doubled batch
    assert timing["nfe"] == steps and timing["batch"] == 6 and timing["model"] == runner.name
    assert timing["sampler"] == dp.defaults_for(timing["model"]).sampler and timing["student"] is True
    assert f"**{steps} NFE**" in summary and "seed 0" in summary and "guidance w = 2" in summary
    assert "wall time" in summary and timing["server_s"] > 0
    assert f"load_pipeline('{runner.name}')" in summary


@pytest.mark.parametrize("n", [1, 5, 16])
def test_the_grid_holds_the_number_of_images_asked_for(live, n):
    picture, _, timing = run(live, num_images=n)
    assert picture.shape == sent_grid(torch.zeros(n, 28, 28)).shape      # ceil(sqrt(n)) columns, nearest-upscaled
    assert timing["num_images"] == n
    assert 160 <= picture.shape[1] <= SENT_PX       # sent at most SENT_PX; the page upscales it to its fixed box


def test_same_settings_same_grid_and_every_control_changes_it(live):
    base = run(live)[0]
    assert np.array_equal(base, run(live)[0])
    for change in (dict(seed=1), dict(digit=7), dict(steps=2), dict(guidance=0.5)):
        assert not np.array_equal(base, run(live, **change)[0]), change


def test_all_digits_draws_zero_to_nine_in_turn(live):
    runner = live.runners[4]
    seen = []
    hook = runner.pipe.score_model.net.register_forward_hook(lambda mod, args, out: seen.append(args[2].tolist()))
    try:
        _, summary, timing = run(live, digit="all", num_images=12)
    finally:
        hook.remove()
    assert seen[0] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and timing["digit"] is None
    assert "0–9 in turn" in summary


def test_the_page_offers_the_students_present(teacher):
    tab = _live_tab(teacher, students=("pixel-cond-distilled-2step",))
    assert sorted(tab.runners) == [2] and tab.default_steps == 2 and not tab.fallback
    assert "pixel-cond-distilled-2step (2 steps)" in tab.banner() and "Not present" in tab.banner()
    with pytest.raises(gr.Error, match=r"steps \(Steps\) must be one of 2 \(the distilled"):
        run(tab, steps=4)


@pytest.mark.parametrize("param, value", [
    ("digit", 10), ("digit", -1), ("digit", 2.5), ("digit", "seven"), ("digit", None),
    ("steps", 3), ("steps", 0), ("steps", 8), ("steps", "two"), ("steps", 1.5),
    ("guidance", 4.5), ("guidance", -0.1), ("guidance", "nan"), ("guidance", None),
    ("seed", -1), ("seed", 2**31), ("seed", 0.5),
    ("num_images", 0), ("num_images", 17), ("num_images", True), ("num_images", "many"),
])
def test_bad_input_is_refused_by_name_before_any_evaluation(live, param, value):
    hooks = [count_calls(r.pipe) for r in live.runners.values()]
    try:
        with pytest.raises(gr.Error, match=param):
            run(live, **{param: value})
    finally:
        for _, hook in hooks:
            hook.remove()
    assert all(calls == [] for calls, _ in hooks)


def test_guidance_outside_the_students_range_names_the_range(live):
    with pytest.raises(gr.Error, match=r"from 0 to 4, the range pixel-cond-distilled was distilled on"):
        run(live, guidance=6)


def test_the_time_limit_stops_a_run(live, monkeypatch):
    monkeypatch.setattr(live.lab, "max_seconds", -1.0)
    with pytest.raises(gr.Error, match="limit per request"):
        run(live)


# ---------------------------------------------------------------- without students

def test_the_default_is_the_best_measured_student_that_meets_the_speed_target_here(teacher):
    """Live opens at the first student of registry.LIVE_PREFERENCE (measured quality) whose 16 images take <=
    LIVE_TARGET_S of network time by the start-up timing; untimed students count as fast; the fewest steps when none
    is fast enough."""
    from ui import tab_live

    assert tab_live.LIVE_PREFERENCE[0] == "pixel-cond-distilled-2step"
    tab = _live_tab(teacher)                                   # calibrate=False: nothing timed
    assert sorted(tab.runners) == [1, 2, 4] and tab.default_steps == 2
    rates = tab.lab.cost.rates                                 # s per NFE per image, 16 images, LIVE_TARGET_S = 0.25
    assert tab_live.LIVE_TARGET_S == 0.25
    rates.update({"pixel-cond-distilled-2step": 0.01, "pixel-cond-distilled-1step": 0.01,
                  "pixel-cond-distilled": 0.001})              # 2 x 16 x 0.01 = 0.32 s: too slow; 1 x 16 x 0.01 = 0.16
    assert tab.default_steps == 1
    rates.update({"pixel-cond-distilled-1step": 0.02})         # 0.32 s: the 4-step one (4 x 16 x 0.001 = 0.064 s) is left
    assert tab.default_steps == 4
    rates.update({n: 0.05 for n in list(rates)})               # none fast enough: the fewest steps
    assert tab.default_steps == 1
    rates.update({n: 0.001 for n in list(rates)})
    assert tab.default_steps == 2
    assert tab.default_guidance == tab_live.defaults_for("pixel-cond-distilled-2step").guidance


def test_a_calibrated_app_times_its_students_at_start(teacher):
    made = tiny_students(teacher.score_model, names=("pixel-cond-distilled",))
    demo = build_demo({"pixel-cond": teacher}, [], calibrate=True,
                      students={n: Pipeline(s, name=n) for n, s in made.items()})
    rate = demo.lab.cost.rates.get("pixel-cond-distilled")
    assert rate is not None and 0 < rate < 1.0


def test_without_students_the_teacher_runs_and_the_page_says_so(teacher):
    tab = _live_tab(teacher, students=())
    banner = tab.banner()
    assert "student weights are missing" in banner and BUILD_COMMAND in banner and "teacher" in banner
    assert tab.fallback and list(tab.runners) == [FALLBACK_STEPS]
    calls, hook = count_calls(teacher)
    try:
        picture, summary, timing = run(tab, steps=FALLBACK_STEPS, num_images=3)
    finally:
        hook.remove()
    assert calls == [6] * FALLBACK_STEPS                 # the guided teacher: a doubled batch per step
    assert timing["student"] is False and timing["nfe"] == FALLBACK_STEPS and timing["batch"] == 6
    assert "no student weights" in summary and "images × 2 for guidance" in summary
    with pytest.raises(gr.Error, match=rf"steps \(Steps\) must be one of {FALLBACK_STEPS} \(the teacher"):
        run(tab, steps=4)


def test_the_fallbacks_guidance_range_is_the_shipped_students_common_range():
    """Without students Live offers the w range it will offer once the shipped students load: the page does not
    change under a visitor when they arrive (their configs in weights/, not the tiny ones)."""
    import json
    from diffusion.hub import DEFAULT_WEIGHTS_DIR
    ranges = [json.loads((DEFAULT_WEIGHTS_DIR / n / "config.json").read_text())["distilled"]["guidance_range"]
              for n in DISTILLED_NAMES]
    assert FALLBACK_GUIDANCE_RANGE == (max(lo for lo, _ in ranges), min(hi for _, hi in ranges)) == (1.0, 3.0)


def test_without_any_model_live_is_off_and_says_how_to_build_the_students(teacher):
    tab = _live_tab(teacher, students=(), with_teacher=False)
    assert "Live mode is off" in tab.banner() and BUILD_COMMAND in tab.banner()
    with pytest.raises(gr.Error, match="train.distill"):
        run(tab, steps=FALLBACK_STEPS)


def test_missing_students_are_one_message_with_the_build_command(tmp_path):
    tiny_model("pixel-cond").save_pretrained(tmp_path / "pixel-cond")
    demo = app.create_demo(weights_dir=tmp_path, device=torch.device("cpu"))
    lines = [m for m in demo.lab.messages if "distilled" in m]
    assert len(lines) == 1 and BUILD_COMMAND in lines[0] and "teacher" in lines[0], lines
    assert demo.lab.students == {} and demo.tabs["LiveTab"].fallback
    # a present student keeps its own "loaded from" line; only the missing ones are folded
    msgs = ["pixel-cond-distilled: loaded from weights/pixel-cond-distilled",
            "pixel-cond-distilled-1step: unavailable (WeightsNotFound: no trained weights ...)"]
    folded = student_messages(msgs, {"pixel-cond-distilled": object()})
    assert folded[0] == msgs[0] and "pixel-cond-distilled-2step, pixel-cond-distilled-1step" in folded[1]


# ---------------------------------------------------------------- through the app and gradio_client

def test_app_loads_the_students_apart_from_the_other_tabs_models(app_demo):
    assert sorted(app_demo.lab.students) == sorted(DISTILLED_NAMES)
    assert not set(DISTILLED_NAMES) & set(app_demo.lab.pipelines)     # Generate & co. do not offer them
    assert sorted(app_demo.tabs["LiveTab"].runners) == [1, 2, 4]


def test_live_endpoint_through_gradio_client(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in api["/live"]["parameters"]] == ["digit", "steps", "guidance", "seed",
                                                                          "num_images"]
    path, summary, timing = client.predict(5, 2, 1.5, 42, 9, **LIVE)
    with Image.open(path) as im:
        assert im.size == sent_grid(torch.zeros(9, 28, 28)).shape    # 3 x 3 digits, nearest-upscaled x2
    assert timing["nfe"] == 2 and timing["batch"] == 9 and timing["seed"] == 42 and timing["digit"] == 5
    assert math.isfinite(timing["server_s"]) and "seed 42" in summary and "**2 NFE**" in summary
    again = client.predict(5, 2, 1.5, 42, 9, **LIVE)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again[0])))
    path_all, _, timing = client.predict("all", 1, 0.0, 0, 16, **LIVE)
    assert timing["digit"] is None and timing["nfe"] == 1


@pytest.mark.parametrize("param, value", [("guidance", 9.0), ("steps", 3), ("digit", 11), ("num_images", 64)])
def test_live_endpoint_refuses_bad_input_by_name(client, param, value):
    from gradio_client.exceptions import AppError

    args = dict(digit=3, steps=4, guidance=2.0, seed=0, num_images=4)
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), **LIVE)


# ---------------------------------------------------------------- bench/live_latency.py

def test_live_latency_bench_against_the_running_app(app_url, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "live.md"
    proc = subprocess.run([sys.executable, str(root / "bench" / "live_latency.py"), "--url", app_url, "--repeats", "2",
                           "--warmup", "0", "--steps", "1,4", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "| 1 | pixel-cond-distilled-1step | 1 | 16 |" in table and "| 4 | pixel-cond-distilled | 4 | 16 |" in table
    assert "load average" in table and "cores" in table


def test_live_latency_bench_makes_students_beside_links_to_the_other_models(tiny_weights, tmp_path):
    from bench import live_latency as bench

    src = tmp_path / "src"
    src.mkdir()
    (src / "pixel-cond").symlink_to(tiny_weights / "pixel-cond")
    out = bench.make_weights(src, tiny_weights / "pixel-cond", tmp_path / "out")
    assert (out / "pixel-cond").is_symlink()
    for name in DISTILLED_NAMES:
        assert (out / name / "model.safetensors").is_file() and not (out / name).is_symlink()
    assert bench.pct([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.9) == 9 and bench.pct([1.0], 0.9) == 1.0
