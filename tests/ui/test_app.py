"""The Gradio app, end to end through gradio_client, on tiny random models (see conftest.py), plus the
app's pure helpers. Real-weight checks are marked slow."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
import diffusion.pipeline as dp
import gradio as gr
from app_helpers import wait_until, wait_until_quiet
from diffusion.cards_read import card_metrics, pinned_revision
from ui.lab import PREVIEW_INTERVAL
from ui.pictures import FrameBuffer, sent_grid, sketch_to_digit
from ui.plots import similarity_figure
from ui.validation import MAX_SEED, check_int

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

GEN = dict(api_name="/generate")


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _gen_args(**over):
    args = dict(model="pixel-cond", digit=3, sampler="dpmpp_2m", steps=4, guidance=2.0, seed=0, num_images=4)
    args.update(over)
    return list(args.values())


# ---------------------------------------------------------------- API surface and security

def test_every_tab_has_a_named_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/compare", "/interpolate", "/forward_diffusion"):   # plumbing: test_visitor.py
        assert name in api, name
    params = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    # "Where w applies" is a session State, not an API parameter: /generate keeps its 7 inputs for every client
    assert params == ["model", "digit", "sampler", "steps", "guidance", "seed", "num_images"]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_weights_and_monitoring_are_not_served(app_url, tiny_weights):
    weights = tiny_weights / "pixel-cond" / "model.safetensors"
    assert _status(f"{app_url}gradio_api/file={weights}") in (403, 404)
    assert _status(f"{app_url}file={weights}") in (403, 404)
    assert _status(f"{app_url}monitoring") in (403, 404)
    assert _status(f"{app_url}gradio_api/monitoring") in (403, 404)
    assert _status(app_url) == 200


def _raw_call(app_url: str, api_name: str, data: list) -> str:
    """POST /gradio_api/call/<api>, then read the event stream: what a hand-made HTTP client gets (a request refused
    at the door, 4xx, reads as "event: error" with the refusal's text)."""
    base = f"{app_url}gradio_api/call/{api_name}"
    req = urllib.request.Request(base, data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            event_id = json.loads(r.read())["event_id"]
    except urllib.error.HTTPError as e:
        if not 400 <= e.code < 500:
            raise
        return f"event: error\ndata: {e.read().decode()}"
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=60) as r:
        return r.read().decode()


def test_a_drawing_cannot_name_a_server_file(app_url, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(secret)
    for sketch in ({"composite": {"path": str(secret), "meta": {"_type": "gradio.FileData"}}, "layers": []},
                   {"composite": {"path": str(secret)}, "layers": []},
                   {"composite": None, "layers": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}]}):
        out = _raw_call(app_url, "forward_diffusion", ["drawing", 0, sketch, 0.0, 0, "none"])
        assert "event: error" in out and "your drawing" not in out
    with pytest.raises(gr.Error, match="sketch"):             # and the handler's own check
        sketch_to_digit({"composite": {"path": str(secret)}}, root=tmp_path / "uploads")


# ---------------------------------------------------------------- Generate

def test_generate_streams_previews_then_final_grid_and_gif(client):
    start = time.perf_counter()
    job = client.submit(*_gen_args(steps=6, num_images=4, seed=7), **GEN)
    outputs = list(job)
    took = time.perf_counter() - start
    previews = [o for o in outputs if isinstance(o[0], str) and not isinstance(o[3], str)]
    assert previews, "no streamed preview before the final grid"
    assert len(previews) <= took / PREVIEW_INTERVAL + 1      # throttled: at most ~10 updates a second
    status, gif = outputs[-1][2], outputs[-1][4]
    final = next(o[3] for o in outputs if isinstance(o[3], str))
    assert _size(previews[0][0]) == _size(previews[0][1])
    w, h = _size(final)
    assert (h, w) == sent_grid(torch.zeros(4, 28, 28)).shape  # 2 x 2 grid, x4 (the page shows it at ~x8)
    assert Path(gif).suffix == ".gif" and "seed7" in Path(gif).name
    assert Path(outputs[-1][5]).suffix == ".gif"             # also shown, animated, on the page
    with Image.open(gif) as im:
        assert im.n_frames >= 3                              # a frame per step (+ the final one)
    assert "NFE" in status and "wall time" in status and "seed 7" in status and "dpmpp_2m" in status
    assert "6 NFE" in status


def test_generate_other_models_and_samplers(client):
    out = client.predict(*_gen_args(model="pixel-uncond", sampler="heun", steps=3, num_images=1), **GEN)
    assert "5 NFE" in out[2] and "unconditional" in out[2]   # heun: 2 N - 1
    assert _size(out[3]) == (224, 224)                       # one digit, x8 (the page shows it at its box size)
    out = client.predict(*_gen_args(model="latent-cond", sampler="euler_maruyama", steps=3, num_images=2), **GEN)
    assert "autoencoder decoding" in out[2] and "3 NFE" in out[2]


def test_where_w_applies_is_the_sessions_choice(client):
    """The radio's choice lives in the session (a State): the same client's next /generate follows it, and /generate
    itself keeps its 7 inputs."""
    out = client.predict(*_gen_args(steps=3, num_images=1), **GEN)
    assert "(at sigma <= 1)" not in out[2]
    client.predict("low", api_name="/generate_where")
    out = client.predict(*_gen_args(steps=3, num_images=1), **GEN)
    assert "guidance 2 (at sigma <= 1)" in out[2] and "guidance_schedule=GuidanceSchedule(" in out[2]
    client.predict("model", api_name="/generate_where")


def test_generate_is_reproducible(client):
    a = client.predict(*_gen_args(seed=11, num_images=2, steps=3), **GEN)
    b = client.predict(*_gen_args(seed=11, num_images=2, steps=3), **GEN)
    assert np.array_equal(np.asarray(Image.open(a[3])), np.asarray(Image.open(b[3])))


@pytest.mark.parametrize("param, value", [
    ("model", "pixel-huge"), ("model", 3), ("digit", 10), ("digit", 2.5), ("digit", -1), ("sampler", "ddpm"),
    ("steps", 0), ("steps", 1001), ("steps", 2.5), ("steps", "nan"), ("guidance", -0.5), ("guidance", 20.5),
    ("guidance", "inf"), ("seed", -1), ("seed", 2**31), ("seed", 1.5), ("num_images", 0), ("num_images", 65),
    ("num_images", True), ("num_images", "many"),
])
def test_generate_rejects_bad_input_naming_it(client, param, value):
    with pytest.raises(AppError, match=param):
        client.predict(*_gen_args(**{param: value}), **GEN)


def test_cancel_stops_the_sampler(client, app_demo, monkeypatch):
    """A cancelled generator is not resumed: the network stops being evaluated."""
    # a long job must be admitted even when a loaded machine makes the up-front cost estimate pessimistic
    monkeypatch.setattr(app_demo.lab, "max_seconds", 10_000.0)
    calls = []
    hook = app_demo.lab.pipelines["pixel-cond"].score_model.net.register_forward_hook(lambda *a: calls.append(1))
    try:
        job = client.submit(*_gen_args(steps=1000, num_images=2, sampler="euler_maruyama"), **GEN)
        wait_until(lambda: len(calls) >= 30 or job.done(), 60, what="the job's first 30 evaluations")
        assert len(calls) >= 30, f"the job did not run: {job.status()}"
        job.cancel()
        assert wait_until_quiet(lambda: len(calls), quiet_s=1.0) < 1000, "sampling went on after cancel"
    finally:
        hook.remove()


def test_estimate_cost_and_random_seed(client):
    text = client.predict("pixel-cond", "heun", 10, 16, 2.0, api_name="/estimate_cost")
    assert "19 network evaluations" in text and "batch of 32" in text
    text = client.predict("pixel-cond", "heun", 0, 16, 2.0, api_name="/estimate_cost")
    assert "steps" in text and "⚠" in text                  # shown inline, not raised
    seed = client.predict(api_name="/random_seed")
    assert 0 <= int(seed) <= MAX_SEED


def test_choosing_a_model_sets_its_recommended_settings(client):
    # every score model's default is the SDE solver (bench/results/defaults.md: the ODE keeps specks), and its own w
    for model in ("pixel-uncond", "pixel-cond", "latent-cond"):
        d = dp.MODEL_DEFAULTS[model]
        assert list(client.predict(model, api_name="/recommended_settings")) == [d.sampler, d.steps, d.guidance]
        assert [d.sampler, d.steps] == ["dpmpp_2m_sde", 10]
        for tab in ("race", "sdedit"):                              # the other tabs with a w slider follow the pick
            assert client.predict(model, api_name=f"/{tab}_recommended_guidance") == d.guidance


# ---------------------------------------------------------------- Pixel vs latent

def test_compare_streams_both_models_with_costs(client):
    outs = list(client.submit(5, "dpmpp_2m", 4, 2.0, 1, 4, api_name="/compare"))
    last = outs[-1]
    assert all(isinstance(p, str) and Path(p).is_file() for p in last[:4])
    table = last[4]
    for key in ("pixel-cond", "latent-cond", "NFE", "time per step", "total time", "autoencoder decoding",
                "% of its time"):
        assert key in table, key
    assert table.count("| 4 |") >= 1 or "| NFE | 4 | 4 |" in table


@pytest.mark.parametrize("param, value", [("digit", 11), ("steps", -3), ("guidance", "nan"), ("seed", 0.5),
                                          ("num_images", 100), ("sampler", "plms")])
def test_compare_rejects_bad_input(client, param, value):
    args = dict(digit=5, sampler="dpmpp_2m", steps=4, guidance=2.0, seed=1, num_images=4)
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), api_name="/compare")


# ---------------------------------------------------------------- Digit embeddings

def test_interpolate_grid_and_strip(client):
    grid_path, strip_path, status = client.predict("pixel-cond", 1, 7, 0.25, 0, 4, "dpmpp_2m", 3, 2.0,
                                                   api_name="/interpolate")
    assert _size(grid_path)[0] >= 400
    w, h = _size(strip_path)
    assert w > 4 * h                                         # a row of 9 digits with alpha labels
    assert "α = 0.25" in status and "e_1" in status and "e_7" in status


@pytest.mark.parametrize("param, value", [("model", "pixel-uncond"), ("model", "nope"), ("digit_a", -1),
                                          ("digit_b", 10), ("alpha", 1.5), ("alpha", -0.1), ("alpha", "nan"),
                                          ("num_images", 0), ("steps", 5000)])
def test_interpolate_rejects_bad_input(client, param, value):
    args = dict(model="pixel-cond", digit_a=1, digit_b=7, alpha=0.5, seed=0, num_images=2, sampler="dpmpp_2m",
                steps=3, guidance=2.0)
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), api_name="/interpolate")


def test_similarity_heatmap_has_one_panel_per_conditional_model(app_demo):
    fig = similarity_figure(app_demo.lab.pipelines)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2 and all(ax.get_xlabel() == "digit" for ax in heatmaps)
    assert any("cosine similarity" in ax.get_ylabel() for ax in fig.axes)      # the colour bar
    assert len(heatmaps[0].texts) == 100                                        # numbers + diagonal marks


# ---------------------------------------------------------------- Forward diffusion

FWD = dict(api_name="/forward_diffusion")


def test_forward_diffusion_test_digit(client):
    x0, xt, xr, tw, plot, status = client.predict("test digit", 30, None, 0.5, 0, "pixel-cond", **FWD)
    assert all(_size(p) == (224, 224) for p in (x0, xt, xr, tw))
    assert plot["type"] == "matplotlib"
    assert "std(t) = 1.93" in status and "a 3" in status and "MSE" in status
    x0b, xtb, *_ = client.predict("test digit", 30, None, 0.0, 0, "none", **FWD)
    assert np.array_equal(np.asarray(Image.open(x0b)), np.asarray(Image.open(xtb)))   # t = 0: no noise


def test_forward_diffusion_from_a_drawing(client, tmp_path):
    canvas = np.zeros((280, 280, 3), np.uint8)
    canvas[60:220, 130:150] = 255                                # a white "1" on black
    path = tmp_path / "one.png"
    Image.fromarray(canvas).save(path)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path)), "id": None}
    x0, *_, status = client.predict("drawing", 0, sketch, 0.1, 0, "pixel-uncond", **FWD)
    img = np.asarray(Image.open(x0).convert("L"))
    assert img.max() > 200 and "your drawing" in status


@pytest.mark.parametrize("param, value", [("t", 1.5), ("t", -0.01), ("t", "nan"), ("test_index", 100),
                                          ("test_index", 3.5), ("source", "camera"), ("denoiser", "latent-cond"),
                                          ("noise_seed", -3)])
def test_forward_diffusion_rejects_bad_input(client, param, value):
    args = dict(source="test digit", test_index=0, sketch=None, t=0.5, noise_seed=0, denoiser="none")
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), **FWD)


def test_forward_diffusion_empty_drawing_is_named(client, tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(np.zeros((280, 280, 3), np.uint8)).save(path)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path)), "id": None}
    with pytest.raises(AppError, match="sketch"):
        client.predict("drawing", 0, sketch, 0.5, 0, "none", **FWD)
    with pytest.raises(AppError, match="sketch"):
        client.predict("drawing", 0, None, 0.5, 0, "none", **FWD)


# ---------------------------------------------------------------- loading, helpers

def test_app_builds_without_any_weights(tmp_path):
    demo = app.create_demo(weights_dir=tmp_path, device=torch.device("cpu"))
    messages = demo.lab.messages
    assert any("pixel-cond: unavailable" in m for m in messages)
    with pytest.raises(Exception, match="model: pixel-cond is not available"):
        next(demo.tabs["GenerateTab"].generate("pixel-cond", 3, "dpmpp_2m", 4, 2.0, 0, 4))
    assert demo.tabs["ForwardTab"].forward("test digit", 0, None, 0.5, 0, "none")[-1].startswith("test image #0")


def test_import_does_not_build_the_demo():
    assert "demo" not in vars(app)          # built on first access of app.demo only


def test_pinned_revision_is_the_pin_for_its_repo(tmp_path):
    (tmp_path / "hub.json").write_text(json.dumps({"repo": "me/lab", "revision": "abc123"}))
    assert pinned_revision("me/lab", None, tmp_path) == "abc123"
    assert pinned_revision("me/lab", "def456", tmp_path) == "def456"
    assert pinned_revision("other/lab", None, tmp_path) is None
    assert pinned_revision(None, None, tmp_path) is None


def test_launch_settings_hide_unused_routes():
    kw = app.launch_kwargs("0.0.0.0", 9999)
    assert kw["server_name"] == "0.0.0.0" and kw["server_port"] == 9999
    assert kw["enable_monitoring"] is False and kw["mcp_server"] is False and kw["run_history"] is False
    assert "allowed_paths" not in kw


def test_model_card_metrics_section(tiny_weights):
    text = (tiny_weights / "pixel-cond" / "README.md").read_text()
    out = card_metrics(text)
    assert "FID" in out and "Evaluation" in out
    assert "Training" not in out and "library_name" not in out and "](grid.png)" not in out


@pytest.mark.parametrize("value, ok", [(3, True), (3.0, True), ("4", True), (3.5, False), (True, False),
                                       (None, False), (float("inf"), False), (65, False), ([1], False)])
def test_check_int(value, ok):
    if ok:
        assert check_int("n", value, 1, 64) in (3, 4)
    else:
        with pytest.raises(gr.Error) as err:
            check_int("n", value, 1, 64)
        assert err.value.message.startswith("n (n) must be")


def test_sketch_to_digit_is_centred_and_scaled(tmp_path):
    canvas = np.full((280, 280, 4), 255, np.uint8)               # black ink on white, off-centre
    canvas[20:100, 20:60, :3] = 0
    path = tmp_path / "ink.png"
    Image.fromarray(canvas).save(path)
    x = sketch_to_digit({"composite": {"path": str(path)}, "layers": []})
    assert x.shape == (28, 28) and x.max() > 0.9
    ys, xs = np.nonzero(x.numpy() > 0.5)
    assert abs(ys.mean() - 13.5) < 1.5 and abs(xs.mean() - 13.5) < 1.5
    assert ys.max() - ys.min() + 1 <= 21                          # fitted into 20 px like MNIST


def test_frame_buffer_is_bounded_and_keeps_the_last_frame():
    buf = FrameBuffer(limit=10)
    for i in range(100):
        buf.add(lambda i=i: i, final=i == 99)
    assert len(buf.frames) <= 10 and buf.frames[0] == 0 and buf.frames[-1] == 99


# ---------------------------------------------------------------- real weights

REAL = Path(__file__).resolve().parents[2] / "weights"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "pixel-cond" / "model.safetensors").is_file(), reason="no trained pixel-cond")
def test_real_pixel_cond_defaults_are_fast_and_look_like_the_digit():
    demo = app.create_demo()
    lab = demo.lab
    for out in demo.tabs["GenerateTab"].generate("pixel-cond", 7, dp.DEFAULT_SAMPLER, dp.DEFAULT_STEPS, dp.DEFAULT_GUIDANCE,
                            0, 16):
        pass
    assert "Done" in out[2]
    if lab.classifier is not None:
        hits = int(out[2].split("reads ")[1].split("/")[0])
        assert hits >= 12, out[2]


@pytest.mark.slow
def test_python_app_py_listens_on_the_env_port(tiny_weights):
    """`python app.py` honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT and serves the page."""
    import os
    import subprocess
    import sys

    from app_helpers import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    root = Path(app.__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, str(root / "app.py"), "--weights-dir", str(tiny_weights)], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, code = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                code = _status(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.5)
        assert code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unreachable_hub_falls_back_to_local_weights_and_says_so(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")           # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    demo = app.create_demo(weights_dir=tiny_weights, hub_repo="someone/mnist-diffusion-lab",
                           device=torch.device("cpu"), calibrate=False)
    assert set(demo.lab.pipelines) == {"pixel-uncond", "pixel-cond", "latent-cond"}
    assert any("not loaded from the Hub" in m and "local weights" in m for m in demo.lab.messages)


def test_the_app_is_loaded_and_built_on_its_brokers_thread(tiny_weights, monkeypatch):
    """create_demo loads the weights and builds the app on the thread of the broker that then runs every network (the
    process keeps one OpenMP team), start-up timing included; the main thread runs no network."""
    import threading

    from diffusion import hub
    from diffusion.score import networks
    from ui import server
    seen, load = [], hub.load_pipelines

    def loading(*args, **kwargs):
        seen.append(threading.current_thread())
        return load(*args, **kwargs)

    monkeypatch.setattr(server.hub, "load_pipelines", loading)
    calls = []
    monkeypatch.setattr(server.gr.Blocks, "__enter__", lambda self, real=server.gr.Blocks.__enter__: (
        calls.append(threading.current_thread()), real(self))[1])
    demo = app.create_demo(weights_dir=tiny_weights, device=torch.device("cpu"), max_seconds=60)
    worker = demo.lab.broker._worker
    assert worker is not None and worker.name == "network-broker" and worker is not threading.current_thread()
    assert seen == [worker] and calls and all(t is worker for t in calls)
    assert demo.lab.cost.rates                                   # start-up timing ran (there, through the broker)
    net = next(iter(networks(demo.lab.pipelines["pixel-cond"].score_model)))
    assert getattr(net, "_batching_broker")[0] is demo.lab.broker
