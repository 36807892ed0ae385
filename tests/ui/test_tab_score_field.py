"""Score field tab (ui/tab_score_field.py) end to end through gradio_client on the tiny app (tests/conftest.py): the
exact field, particles by the reverse SDE and the ODE, the tiny MLP trained live; bad input named; the time limit."""
from __future__ import annotations

import time

import gradio as gr
import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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


def test_score_train_mlp_honours_the_time_limit_within_one_step(app_demo, monkeypatch):
    from diffusion.toy2d import ToyScoreMLP

    tab = app_demo.tabs["ScoreFieldTab"]
    calls = []
    forward = ToyScoreMLP.forward
    monkeypatch.setattr(ToyScoreMLP, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    monkeypatch.setattr(app_demo.lab, "max_seconds", 0.0)
    run = tab.train_mlp("two blobs", 5000, 0.1, 0)
    next(run)                                               # the untrained field is shown before any step
    shown = len(calls)
    with pytest.raises(gr.Error, match="limit per request is 0 s"):
        next(run)
    assert len(calls) - shown <= 1                          # at most one optimizer step's forward ran
