"""bench/ui_overhead.py on tiny models: the in-process split adds up, every tab is measured, image bytes are the
files gradio would serve; the table has a row per tab and tree."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import diffusion.pipeline as dp
from bench import ui_overhead as uo
from diffusion.pipeline import Pipeline
from factories import tiny_model, tiny_students
from ui import build_demo

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_timer_counts_outermost_forward_calls_only():
    inner = nn.Linear(2, 2)
    outer = nn.Sequential(inner, inner)
    timer = uo.Timer()
    timer.hook(outer)
    timer.hook(inner)                                   # nested: counted once, through the outer call
    outer(torch.zeros(1, 2))
    once = timer.total
    assert once > 0 and timer._depth == 0
    inner(torch.zeros(1, 2))                            # on its own: counted
    assert timer.total > once


def test_in_process_measure_splits_each_tab():
    teacher = Pipeline(tiny_model("pixel-cond"), name="pixel-cond")
    pipes = {"pixel-cond": teacher,
             "latent-cond": Pipeline(tiny_model("latent-cond"), autoencoder=tiny_model("autoencoder"),
                                     name="latent-cond")}
    students = {n: Pipeline(s, name=n) for n, s in tiny_students(teacher.score_model).items()}
    demo = build_demo(pipes, [], calibrate=False, students=students)
    out = uo.measure_in_process(demo, dp, repeats=1)
    assert set(out) == set(uo.TABS)
    for tab, row in out.items():
        assert row["network_s"] > 0 and row["updates"] >= 1 and row["image_bytes"] > 0, tab
        parts = row["network_s"] + row["decoder_s"] + row["classifier_s"] + row["rest_s"]
        assert parts == pytest.approx(row["handler_s"]), tab
        assert row["distinct_image_bytes"] <= row["image_bytes"]
    assert out["compare"]["decoder_s"] > 0 and out["generate"]["decoder_s"] == 0
    assert out["generate"]["updates"] >= 3                   # starting, previews, the final one
    summary = {"t": {"tabs": {tab: {**row, "end_to_end_s": 1.0, "end_to_end_no_download_s": 0.5}
                              for tab, row in out.items()}, "load": 1.0}}
    table = uo.table(summary, ["t"])
    assert len(table.splitlines()) == 2 + len(uo.TABS) and "| generate | t |" in table and "| 1000 | 500 |" in table
