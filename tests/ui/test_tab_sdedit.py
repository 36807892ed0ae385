"""Draw-and-denoise tab (ui/tab_sdedit.py) end to end through gradio_client on the tiny app: SDEdit and inpainting
from a test digit or a drawing, pixel and latent models, each result read; bad input named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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
