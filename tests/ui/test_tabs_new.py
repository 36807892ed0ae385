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


def test_score_train_mlp_streams_loss_and_fields(client):
    outs = list(client.submit("two blobs", 40, 0.2, 0, api_name="/score_train_mlp"))
    pic, chart, status = outs[-1]
    assert "untrained: mean error" in outs[0][2] and "Done" in status and "loss" in status
    assert _img(pic).shape[1] > 3 * 300 and _img(chart).shape[1] >= 400       # learned | exact | error


@pytest.mark.parametrize("args, param", [(["two blobs", 5, 0.2, 0], "train_steps"), (["two blobs", 40, 0.0, 0], "t"),
                                         (["moons", 40, 0.2, 0], "dataset")])
def test_score_train_mlp_rejects_bad_input(client, args, param):
    with pytest.raises(AppError, match=param):
        client.predict(*args, api_name="/score_train_mlp")


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


# ---------------------------------------------------------------- sampler race

def test_race_streams_every_sampler_and_ranks_them(client):
    outs = list(client.submit("pixel-cond", 3, 4, 2.0, 0, 1, api_name="/race"))
    assert len(outs) >= 2
    board, table, what = outs[-1]
    assert "budget 4 NFE" in what and "seed 0" in what
    lines = [line for line in table.splitlines() if line.startswith("| ") and "sampler" not in line]
    names = [line.split("|")[2].strip() for line in lines]
    assert set(names) == {"dpmpp_2m", "dpmpp_2m_sde", "heun", "euler_maruyama", "predictor_corrector", "ddim", "rk45"}
    nfes = {line.split("|")[2].strip(): int(line.split("|")[4]) for line in lines}
    assert nfes["dpmpp_2m"] == 4 and nfes["heun"] == 3 and nfes["predictor_corrector"] == 4   # heun 2 steps, pc 2
    assert all(v <= 4 for v in nfes.values())
    places = [line.split("|")[1].strip() for line in lines]
    assert places[:6] == ["1", "2", "3", "4", "5", "6"]                       # rk45 cannot finish in 4 NFE
    assert "did not finish within 4 NFE" in table and "not measured" in table
    assert _img(board).shape[1] > 7 * 140                                     # seven panels side by side


def test_race_shows_the_benchmark_figure_where_one_exists():
    from ui.tab_race import bench_quality, quality_text

    assert quality_text(bench_quality("pixel-cond", "dpmpp_2m", 10, 2.0)).startswith("FD 5.16 (N=1000)")
    assert quality_text(bench_quality("pixel-cond", "dpmpp_2m", 11, 2.0)) == "not measured"


@pytest.mark.parametrize("param, value", [("model", "pixel-huge"), ("digit", 10), ("nfe", 1), ("nfe", 201),
                                          ("nfe", "x"), ("guidance", -1), ("seed", 1.5), ("num_images", 10)])
def test_race_rejects_bad_input(client, param, value):
    args = dict(model="pixel-cond", digit=3, nfe=4, guidance=2.0, seed=0, num_images=1)
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), api_name="/race")


# ---------------------------------------------------------------- draw and denoise (SDEdit, inpainting)

def _sde_args(**over):
    args = dict(source="test digit", test_index=30, sketch=None, model="pixel-cond", digit=3, guidance=2.0, t0=0.4,
                steps=4, seed=0, num_images=2, region="none (SDEdit)")
    args.update(over)
    return list(args.values())


def test_sdedit_streams_and_reads_each_result(client):
    outs = list(client.submit(*_sde_args(region="keep top half"), api_name="/sdedit"))
    x_in, xt, x0, strip, status = outs[-1]
    assert "Done" in status and "4 NFE" in status and "inpainting: keep top half" in status
    assert "Kept half: RMS 0 (exactly the input)" in status and "classifier's reading" in status
    assert "No evaluation classifier" not in status
    assert _img(x_in).shape[:2] == (224, 224) and _img(strip).shape[1] > 2 * 100


def test_sdedit_t0_zero_gives_back_the_input_and_latent_works(client, tmp_path):
    *_, status = client.predict(*_sde_args(t0=0.0), api_name="/sdedit")
    assert "0 NFE" in status and "Mean d = 0.000" in status
    *_, status = client.predict(*_sde_args(model="latent-cond", steps=3), api_name="/sdedit")
    assert "latent-cond" in status and "3 NFE" in status


def test_sdedit_from_a_drawing(client, tmp_path):
    from gradio_client import handle_file

    canvas = np.zeros((280, 280, 3), np.uint8)
    canvas[60:220, 130:150] = 255
    path = tmp_path / "one.png"
    Image.fromarray(canvas).save(path)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path)), "id": None}
    *_, status = client.predict(*_sde_args(source="drawing", sketch=sketch, t0=0.2, steps=2), api_name="/sdedit")
    assert "your drawing" in status and "Done" in status


@pytest.mark.parametrize("param, value", [("source", "camera"), ("test_index", 100), ("model", "autoencoder"),
                                          ("digit", 10), ("guidance", 21), ("t0", 1.2), ("t0", "nan"),
                                          ("steps", 0), ("seed", -1), ("num_images", 9), ("region", "keep middle")])
def test_sdedit_rejects_bad_input(client, param, value):
    with pytest.raises(AppError, match=param):
        client.predict(*_sde_args(**{param: value}), api_name="/sdedit")


def test_sdedit_refuses_inpainting_on_latents_and_an_empty_drawing(client):
    with pytest.raises(AppError, match="region"):
        client.predict(*_sde_args(model="latent-cond", region="keep left half"), api_name="/sdedit")
    with pytest.raises(AppError, match="sketch"):
        client.predict(*_sde_args(source="drawing"), api_name="/sdedit")
