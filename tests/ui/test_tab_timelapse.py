"""Training time-lapse tab (ui/tab_timelapse.py) end to end through gradio_client on the tiny app: a recorded run's
checkpoints with their numbers, playback in order, a missing recording explained, bad input named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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
