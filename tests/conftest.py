"""Shared fixtures. App fixtures: tiny, randomly initialised models saved in save_pretrained layout into a
temporary weights folder, and the Gradio app built from them, launched on a free port."""
from __future__ import annotations

import os
import time

import pytest

from app_helpers import free_port, launched, wait_until  # noqa: F401  (the one launcher, port finder and poller)
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
def launched_app(tiny_weights):
    """The tiny app launched in this process (server thread), with the same settings as `python app.py`
    (tests/app_helpers.py's `launched`)."""
    with launched(tiny_weights) as served:
        yield served


@pytest.fixture(scope="session")
def app_demo(launched_app):
    return launched_app.demo


@pytest.fixture(scope="session")
def app_url(launched_app):
    return launched_app.url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(os.environ.get("TMPDIR", "/tmp")))


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest, and stays fast on a machine busy with training runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def live(tiny_weights):
    """The tiny app launched as `python app.py` launches it, with a queue of 4 (so that overflow really happens);
    `calls` logs the time of each score-network evaluation. One per test module."""
    with launched(tiny_weights, log_calls=True, max_queue=4) as served:
        yield served


@pytest.fixture(scope="module")
def hard(tiny_weights, tmp_path_factory):
    """`live`, launched after HF_HOME (with a token file) and secret env vars are set, with a gradio_client;
    `calls` logs (time, output finite) for every score-network evaluation, in any pipeline. One per test module."""
    import types

    import torch

    from diffusion.score import networks

    mp = pytest.MonkeyPatch()
    hf_home = tmp_path_factory.mktemp("hf_home")
    token = hf_home / "token"
    token.write_text(TOKEN_SECRET)
    mp.setenv("HF_HOME", str(hf_home))
    for k, v in ENV_SECRETS.items():
        mp.setenv(k, v)
    try:
        # one sampling job at a time: the bounded-queue tests count 1 running + max_queue waiting
        with launched(tiny_weights, client=True, max_queue=4, concurrency=1) as served:
            calls: list[tuple[float, bool]] = []

            def log(module, inputs, output):
                calls.append((time.perf_counter(), bool(torch.isfinite(output).all())))

            hooks = [net.register_forward_hook(log) for p in served.demo.lab.pipelines.values()
                     for net in networks(p.score_model)]
            downloads = tmp_path_factory.mktemp("downloads")
            yield types.SimpleNamespace(url=served.url, port=served.port, demo=served.demo, client=served.client,
                                        calls=calls, hf_home=hf_home, token=token, downloads=str(downloads))
            for h in hooks:
                h.remove()
    finally:
        mp.undo()


ENV_SECRETS = {"HF_TOKEN": "hf_secret_test_value", "SECRET_TEST_VALUE": "secret-env-7f3a9c0d1e"}
TOKEN_SECRET = "hf_tokenfile_secret_5b8e2d"     # the content of $HF_HOME/token, in the `hard` fixture
