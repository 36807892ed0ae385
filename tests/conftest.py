"""Shared fixtures. App fixtures: tiny, randomly initialised models saved in save_pretrained layout into a
temporary weights folder, and the Gradio app built from them, launched on a free port."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from hub_helpers import hub  # noqa: F401  (the fake Hub fixture, for every test module)

TINY_CARD = """---
library_name: mnist-diffusion-lab
---
# {name} (tiny test model)

Randomly initialised, for tests only.

## Training

Nothing to see.

## Evaluation

| metric | value |
|---|---|
| FID (classifier features) | 123.4 |

![sample grid](grid.png)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def examples_cache(tmp_path_factory):
    """Cached presets (gr.Examples, ui/presets.py) go to a temporary folder, never into the repository's .gradio/.
    Session-wide: the app's file route reads the same variable while it serves them."""
    folder = tmp_path_factory.mktemp("gradio-examples")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_EXAMPLES_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """weights/<name>/ for every model the app loads, tiny and random (seeded), pixel-uncond with its autoguidance
    guide (another seed); a model card for pixel-cond; the distilled 4-, 2- and 1-step students of the tiny pixel-cond (untrained: valid, if poor, images)."""
    from factories import tiny_model, tiny_score, tiny_students

    root = tmp_path_factory.mktemp("weights")
    models = {name: tiny_model(name) for name in ("pixel-cond", "pixel-uncond", "latent-cond", "autoencoder",
                                                  "classifier")}
    models["pixel-uncond"] = tiny_score(0, autoguide="pixel-uncond-guide")   # guided, as the shipped one is
    models["pixel-uncond-guide"] = tiny_model("pixel-uncond", seed=1)
    for name, model in models.items():
        model.save_pretrained(root / name)
    for name, student in tiny_students(models["pixel-cond"]).items():
        student.save_pretrained(root / name)
    (root / "pixel-cond" / "README.md").write_text(TINY_CARD.format(name="pixel-cond"))
    return root


@pytest.fixture(scope="session")
def app_demo(tiny_weights):
    import app

    return app.create_demo(weights_dir=tiny_weights, device=torch.device("cpu"), max_seconds=60)


@pytest.fixture(scope="session")
def app_url(app_demo):
    """The tiny app launched in this process (server thread), with the same settings as `python app.py`."""
    import app

    port = _free_port()
    app_demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app_demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(os.environ.get("TMPDIR", "/tmp")))


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest, and stays fast on a machine busy with training runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
