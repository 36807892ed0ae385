"""The three windows into the model (ui/tab_which_digit.py, ui/tab_likelihood.py, ui/tab_inside.py) through
gradio_client on the tiny app (tests/conftest.py): each named endpoint answers with its pictures and a summary that
says what it cost; bad input is refused with an error naming the parameter; the cost lines follow the settings."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _wd_args(**over):
    args = dict(source="test digit", test_index=7, sketch=None, model="pixel-cond", levels=4, stop_early=True, seed=0)
    args.update(over)
    return list(args.values())


def _lk_args(**over):
    args = dict(source="test digit", test_index=3, sketch=None, model="pixel-cond", steps=2, seed=0)
    args.update(over)
    return list(args.values())


def test_which_digit_ranks_ten_labels(client):
    shown, plot, status = client.predict(*_wd_args(), api_name="/which_digit")
    assert _img(shown).shape[:2] == (224, 224)
    assert plot is not None
    # stop early on 5 levels of 4: all 4 are the first stage, so 10 labels x 4 levels
    assert "reads test image #7" in status and "40 network evaluations" in status and "p = " in status
    *_, status = client.predict(*_wd_args(model="latent-cond", stop_early=False, levels=3), api_name="/which_digit")
    assert "latents (encoded by the autoencoder)" in status and "30 network evaluations" in status


@pytest.mark.parametrize("param, value, match", [
    ("levels", 1, "levels (Noise levels) must be a whole number from 2 to 40"),
    ("model", "pixel-uncond", "must be a class-conditional model"),
    ("stop_early", "yes", "stop_early (Stop early) must be true or false"),
    ("source", "camera", "source (Source) must be one of test digit, drawing"),
    ("seed", -1, "seed (Seed) must be a whole number"),
])
def test_which_digit_rejects_bad_input(client, param, value, match):
    with pytest.raises(AppError, match=match.replace("(", r"\(").replace(")", r"\)")):
        client.predict(*_wd_args(**{param: value}), api_name="/which_digit")


def test_how_likely_scores_the_variants_and_every_label(client):
    strip, plot, status = client.predict(*_lk_args(), api_name="/how_likely")
    assert _img(strip).shape[1] >= 5 * 140
    assert plot is not None
    for variant in ("as given", "shifted", "inverted", "rotated", "noise"):
        assert f"| {variant} |" in status
    assert "null label" in status and "likeliest as a" in status and "2 Heun steps" in status
    _, plot, status = client.predict(*_lk_args(model="pixel-uncond"), api_name="/how_likely")
    assert plot is None and "unconditional" in status


@pytest.mark.parametrize("param, value, match", [
    ("model", "latent-cond", "diffuses autoencoder latents"),
    ("steps", 0, "ode_steps (ODE steps) must be a whole number from 2 to 60"),
    ("test_index", 100, "test_index (Test image) must be a whole number from 0 to 99"),
])
def test_how_likely_rejects_bad_input(client, param, value, match):
    with pytest.raises(AppError, match=match.replace("(", r"\(").replace(")", r"\)")):
        client.predict(*_lk_args(**{param: value}), api_name="/how_likely")


@pytest.mark.parametrize("model", ["pixel-cond", "latent-cond", "pixel-uncond"])
def test_inside_the_network(client, model):
    *plots, status = client.predict(model, 0, 3, 0.3, 0, api_name="/inside_network")
    outputs, times, features, labels = plots
    assert outputs is not None and times is not None and features is not None
    assert (labels is None) == (model == "pixel-uncond")
    assert "1 network evaluation" in status and "t = 0.300" in status
    plot, text = client.predict(model, 3, 1, 0, api_name="/loss_by_level")
    assert plot is not None and "3 noise levels" in text and "30 network evaluations" in text


def test_inside_rejects_bad_input(client):
    with pytest.raises(AppError, match=r"t \(t\) must be a number from 0.001 to 1"):
        client.predict("pixel-cond", 0, 3, 0.0, 0, api_name="/inside_network")
    with pytest.raises(AppError, match=r"loss_levels \(Noise levels \(loss\)\) must be a whole number from 3 to 30"):
        client.predict("pixel-cond", 100, 1, 0, api_name="/loss_by_level")
    with pytest.raises(AppError, match=r"per_digit \(Held-out digits per class\) must be a whole number from 1 to 10"):
        client.predict("pixel-cond", 3, 11, 0, api_name="/loss_by_level")


def test_cost_lines_follow_the_settings(client):
    assert "10 labels × 5 levels, then the best 3 × the other 15 = 95 network evaluations" in \
        client.predict("pixel-cond", 20, True, api_name="/which_digit_cost")
    assert "⚠️" in client.predict("pixel-cond", 99, True, api_name="/which_digit_cost")
    assert "12 Heun steps = 24 evaluations" in client.predict("pixel-cond", 12, api_name="/how_likely_cost")
    assert "12 levels × 20 held-out digits = 240 evaluations" in client.predict("latent-cond", 12, 2,
                                                                                 api_name="/inside_cost")


def test_which_digit_and_how_likely_from_a_drawing(client, tmp_path):
    from gradio_client import handle_file

    canvas = np.zeros((280, 280, 3), np.uint8)
    canvas[60:220, 130:150] = 255                                      # a one
    path = tmp_path / "one.png"
    Image.fromarray(canvas).save(path)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path)), "id": None}
    *_, status = client.predict(*_wd_args(source="drawing", sketch=sketch), api_name="/which_digit")
    assert "reads your drawing as a" in status
    *_, status = client.predict(*_lk_args(source="drawing", sketch=sketch), api_name="/how_likely")
    assert "your drawing" in status and "| inverted |" in status
    with pytest.raises(AppError, match="Drawing"):                      # an empty canvas is refused, named
        client.predict(*_wd_args(source="drawing"), api_name="/which_digit")
