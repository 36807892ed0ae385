"""Issue 15's tabs end to end through gradio_client on the tiny app (see conftest.py), plus their handlers' guards
(bad input named, time limit) called directly. Small inputs: a few seconds each on a busy 2-core CPU."""
from __future__ import annotations

import time

import numpy as np
import torch
import pytest
from PIL import Image

import gradio as gr

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- score field

def test_score_field_draws_density_and_arrows(client):
    view, status = client.predict("ring of 8", 0.1, api_name="/score_field")
    img = _img(view)
    assert img.shape[0] > 400 and img.shape[1] > 400
    assert "std(t) = 0.375" in status and "score" in status
    view1, status1 = client.predict("ring of 8", 1.0, api_name="/score_field")
    assert "std(t) = 9.85" in status1 and not np.array_equal(_img(view1), img)


def test_score_particles_stream_and_match_the_mixture(client):
    start = time.perf_counter()
    outs = list(client.submit("two blobs", 200, 40, 3, api_name="/score_particles"))
    took = time.perf_counter() - start
    assert len(outs) >= 3                                   # the prior, some steps, the end
    assert len(outs) <= took * 15 + 2                       # <= 15 updates a second
    final = outs[-1][1]
    assert "Done" in final and "SDE (Euler-Maruyama)" in final and "ODE (Heun)" in final
    assert "40 steps" in final and "39 NFE" in final        # heun at the same budget: 20 steps, 2 * 20 - 1 NFE
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:-1]]
            for line in final.splitlines() if line.startswith("| ") and line[2] != "-" and "mean" not in line}
    exact = rows["the mixture (exact)"]
    for name in ("SDE (Euler-Maruyama)", "ODE (Heun)"):
        assert np.allclose(rows[name][:2], exact[:2], atol=0.12), (name, rows)      # means, 200 particles
        assert np.allclose(rows[name][2:4], exact[2:4], rtol=0.35), (name, rows)    # variances


@pytest.mark.parametrize("api, args, param", [
    ("/score_field", ["digit 3", 0.1], "dataset"), ("/score_field", ["ring of 8", 1.5], "t"),
    ("/score_field", ["ring of 8", "nan"], "t"),
    ("/score_particles", ["two blobs", 0, 40, 0], "num_particles"),
    ("/score_particles", ["two blobs", 100, 5000, 0], "nfe"), ("/score_particles", ["two blobs", 100, 2.5, 0], "nfe"),
    ("/score_particles", ["two blobs", 100, 40, -1], "seed"),
])
def test_score_field_rejects_bad_input(client, api, args, param):
    with pytest.raises(AppError, match=param):
        client.predict(*args, api_name=api)


def test_score_particles_honour_the_time_limit(app_demo, monkeypatch):
    tab = app_demo.tabs["ScoreFieldTab"]
    monkeypatch.setattr(app_demo.lab, "max_seconds", 0.0)
    run = tab.particles("digit 2", 50, 500, 0)
    next(run)                                               # the prior is shown before any step
    with pytest.raises(gr.Error, match="limit"):
        next(run)


# ---------------------------------------------------------------- training time-lapse

@pytest.fixture
def recorded(app_demo, tmp_path, monkeypatch):
    """A 3-checkpoint time-lapse of pixel-cond (40 digits: 4 of each) under a temporary weights root."""
    from diffusion import timelapse

    labels = torch.arange(10).repeat_interleave(4)
    (tmp_path / "pixel-cond").mkdir()
    for k, step in enumerate((100, 200, 300)):
        images = torch.full((40, 28, 28), k / 2.0)                  # frame k: every pixel k / 2
        timelapse.record(tmp_path / "pixel-cond" / timelapse.FILENAME, images, labels, step, 60.0 * (k + 1),
                         50.0 - 10 * k)
    monkeypatch.setattr(app_demo.tabs["TimelapseTab"], "root", tmp_path)
    return tmp_path


def test_timelapse_shows_a_checkpoint_with_its_numbers(client, recorded):
    pic, chart, status = client.predict("pixel-cond", 1, api_name="/timelapse_frame")
    assert "checkpoint 2/3" in status and "step **200**" in status and "2.0 min" in status and "loss **40**" in status
    img = _img(pic)
    assert img.shape[1] >= 10 * 56 and img[5, 5, 0] in (127, 128)       # 10 columns x 2x upscaled, pixels 0.5
    assert _img(chart).shape[1] >= 400
    slider, pic, chart, status = client.predict("pixel-cond", api_name="/timelapse_open")
    assert "checkpoint 3/3" in status


def test_timelapse_plays_every_frame_in_order(client, recorded):
    outs = list(client.submit("pixel-cond", 0, api_name="/timelapse_play"))
    steps = [o[3].split("step **")[1].split("**")[0] for o in outs if o[3]]
    assert steps == ["100", "200", "300"] and [o[0] for o in outs] == [0, 1, 2]


def test_timelapse_missing_recording_says_how_to_make_one(client, recorded):
    slider, pic, chart, status = client.predict("pixel-uncond", api_name="/timelapse_open")
    assert pic is None and "no training time-lapse" in status and "python -m train.pixel_uncond" in status


@pytest.mark.parametrize("args, param", [(["pixel-cond", 3], "frame"), (["pixel-cond", -1], "frame"),
                                         (["pixel-cond", 0.5], "frame"), (["autoencoder", 0], "model")])
def test_timelapse_rejects_bad_input(client, recorded, args, param):
    with pytest.raises(AppError, match=param):
        client.predict(*args, api_name="/timelapse_frame")
