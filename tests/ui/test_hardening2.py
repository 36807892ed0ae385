"""Hardening 2 (GitHub issue 14): memory and CPU under hostile-but-valid traffic. One fast test per defect: drawings
decoded safely, cancelled / abandoned / over-time work stopped within one network evaluation, cost estimates that
bound the worst case, request size, per-session state, uploads and the blob route bounded, event data validated,
unused routes closed, nosniff. The 10-minute soak is bench/soak.py, not a test."""
from __future__ import annotations

import json
import time
import tracemalloc
import types
import urllib.request

import pytest
import torch
from PIL import Image

import app
import gradio as gr
from conftest import _free_port
from diffusion.score import networks
from ui import drawings
from ui.pictures import sketch_to_digit


def _png(path, size, draw=True) -> str:
    img = Image.new("RGB", size, 0)
    if draw:
        w, h = size
        img.paste(255, (w // 3, h // 5, w // 3 + max(1, w // 10), 4 * h // 5))
    img.save(path, format="PNG")
    return str(path)


# ---------------------------------------------------------------- 1. drawings

def test_a_huge_drawing_is_refused_from_its_header_before_decoding(tmp_path):
    big = _png(tmp_path / "big.png", (4000, 4000))            # ~20 KB on disk, 16 Mpx
    assert (tmp_path / "big.png").stat().st_size < 200_000
    tracemalloc.start()
    with pytest.raises(gr.Error, match=r"sketch .*at most 2048x2048"):
        sketch_to_digit({"composite": {"path": big}, "layers": []})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated to refuse a 4000x4000 drawing"


def test_a_drawing_at_the_cap_is_decoded_small(tmp_path):
    at_cap = _png(tmp_path / "cap.png", (2048, 2048))
    tracemalloc.start()
    x = sketch_to_digit({"composite": {"path": at_cap}, "layers": []})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.shape == (28, 28) and float(x.max()) > 0.5
    assert max(drawings.open_drawing(at_cap).shape[:2]) <= drawings.DECODE_EDGE    # never the full canvas in float
    assert peak < 64 * 2**20, f"{peak / 2**20:.1f} MiB at peak for a 2048x2048 drawing"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "PPM"])
def test_only_png_jpeg_and_webp_are_opened(tmp_path, fmt):
    path = tmp_path / "drawing.png"                                       # a .png name does not decide
    Image.new("RGB", (64, 64), 255).save(path, format=fmt)
    with pytest.raises(gr.Error, match=r"sketch .*PNG/JPEG/WEBP"):
        sketch_to_digit({"composite": {"path": str(path)}, "layers": []})


def test_jpeg_is_decoded_in_draft_mode(tmp_path):
    path = tmp_path / "d.jpg"
    img = Image.new("RGB", (2000, 2000), 0)
    img.paste(255, (600, 400, 800, 1600))
    img.save(path, format="JPEG")
    assert max(drawings.open_drawing(str(path)).shape[:2]) <= drawings.DECODE_EDGE


def test_drawing_decodes_run_a_few_at_a_time(tmp_path, monkeypatch):
    """Every caller (queued or not, any tab) shares DECODE_SLOTS; one that cannot get a slot is answered 'busy'."""
    path = _png(tmp_path / "d.png", (280, 280))
    monkeypatch.setattr(drawings, "SLOT_WAIT_S", 0.05)
    held = [drawings._slots.acquire(timeout=1) for _ in range(drawings.DECODE_SLOTS)]
    try:
        assert all(held)
        with pytest.raises(gr.Error, match="busy"):
            sketch_to_digit({"composite": {"path": path}, "layers": []})
    finally:
        for _ in held:
            drawings._slots.release()
    assert sketch_to_digit({"composite": {"path": path}, "layers": []}).shape == (28, 28)


@pytest.mark.parametrize("payload", [{"composite": {"path": ["x"]}, "layers": []}, {"composite": None, "layers": 5},
                                     {"composite": {"path": "a\0b"}}, {"composite": {"path": "x" * 100_000}}])
def test_malformed_drawings_are_named_errors(payload):
    with pytest.raises(gr.Error, match="sketch"):
        sketch_to_digit(payload)


# ---------------------------------------------------------------- the launched app (issue 14, items 2 to 5)

@pytest.fixture(scope="module")
def live(tiny_weights):
    """The tiny app launched as `python app.py` launches it; `calls` logs each score-network evaluation."""
    demo = app.create_demo(weights_dir=tiny_weights, device=torch.device("cpu"), max_seconds=60, max_queue=4)
    calls: list[float] = []
    hooks = [net.register_forward_hook(lambda *a: calls.append(time.perf_counter()))
             for p in demo.lab.pipelines.values() for net in networks(p.score_model)]
    port = _free_port()
    demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port))
    try:
        yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, demo=demo, calls=calls)
    finally:
        demo.close()
        for h in hooks:
            h.remove()


def _request(url, data: bytes | None = None, headers=None, method=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post_json(live, path, payload) -> tuple[int, dict, bytes]:
    return _request(live.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"})


# ---------------------------------------------------------------- 2. cancel, disconnect, time limit, cost

def _interp_args(**over):
    args = dict(model="pixel-cond", digit_a=1, digit_b=7, alpha=0.5, seed=0, num_images=1,
                sampler="euler_maruyama", steps=400, guidance=2.0)
    args.update(over)
    return list(args.values())


def _wait_calls(live, start_n, k, timeout=60):
    deadline = time.time() + timeout
    while len(live.calls) - start_n < k and time.time() < deadline:
        time.sleep(0.01)
    assert len(live.calls) - start_n >= k, "the job did not run"


def test_cancelling_the_interpolation_strip_stops_it_within_one_evaluation(live, monkeypatch):
    from gradio_client import Client

    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    client = Client(live.url, verbose=False)
    start_n = len(live.calls)
    job = client.submit(*_interp_args(), api_name="/interpolate")
    _wait_calls(live, start_n, 400 + 50)                     # past the grid: inside the strip (no yields there)
    job.cancel()                                              # returns once the server has handled it
    returned = time.perf_counter()
    time.sleep(1.0)
    after = [t for t in live.calls[start_n:] if t > returned]
    assert len(live.calls) - start_n < 400 * 10, "the strip ran to its end"
    assert len(after) <= 1, f"{len(after)} evaluations after the cancel was answered"


def test_the_time_limit_is_checked_inside_the_strip(live, monkeypatch):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(live.demo.lab, "max_seconds", 0.5)
    monkeypatch.setattr(live.demo.lab.cost, "rates", {})     # admit it: never timed, no estimate
    start = time.perf_counter()
    with pytest.raises(AppError, match="Stopped after"):
        Client(live.url, verbose=False).predict(*_interp_args(steps=1000), api_name="/interpolate")
    assert time.perf_counter() - start < 5


def test_a_result_nobody_reads_is_not_computed_to_the_end(live, monkeypatch):
    from ui import limits

    monkeypatch.setattr(limits, "READ_GRACE_S", 0.3)
    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    start_n = len(live.calls)
    status, _, body = _post_json(live, "gradio_api/call/generate",
                                 {"data": ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]})
    assert status == 200 and b"event_id" in body                 # ... and the result stream is never opened
    _wait_calls(live, start_n, 1)
    time.sleep(2.0)
    n = len(live.calls)
    time.sleep(0.5)
    assert len(live.calls) == n and n - start_n < 1000, "an unread job ran on"


def test_a_client_that_disconnects_stops_its_job(live, monkeypatch):
    import http.client

    from ui import limits

    monkeypatch.setattr(limits, "GONE_GRACE_S", 0.2)
    monkeypatch.setattr(live.demo.lab, "max_seconds", 10_000.0)
    start_n = len(live.calls)
    status, _, body = _post_json(live, "gradio_api/call/generate",
                                 {"data": ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]})
    event_id = json.loads(body)["event_id"]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", f"/gradio_api/call/generate/{event_id}")
    resp = conn.getresponse()
    _wait_calls(live, start_n, 5)
    resp.close()
    conn.close()                                                   # the client goes away mid-job
    time.sleep(2.0)
    n = len(live.calls)
    time.sleep(0.5)
    assert len(live.calls) == n and n - start_n < 1000, "a disconnected client's job ran on"


def test_admission_bounds_the_worst_case(live, monkeypatch):
    """rk45 at its NFE cap, the strip's batch-of-one runs at their per-call cost, guidance's doubled batch, and
    compare's two models in one request: refused when the worst case passes the limit."""
    lab = live.demo.lab
    monkeypatch.setattr(lab.cost, "rates", {"pixel-cond": 0.01, "latent-cond": 0.01})
    monkeypatch.setattr(lab, "call_floor", {"pixel-cond": 3.0, "latent-cond": 3.0})
    monkeypatch.setattr(lab, "max_seconds", 50.0)
    assert lab.estimate_seconds("pixel-cond", "rk45", 1, 1, 2.0, worst=True) == pytest.approx(2000 * 3 * 0.01)
    assert lab.estimate_seconds("pixel-cond", "rk45", 1, 1, 2.0) == pytest.approx(200 * 2 * 0.01)
    with pytest.raises(gr.Error, match="up to 2000 network evaluations"):
        lab.refuse_runaway("pixel-cond", "rk45", 1, 1, 2.0)
    strip = lab.estimate_seconds("pixel-cond", "euler_maruyama", 100, 8, 2.0, worst=True, runs_of_one=9)
    assert strip == pytest.approx(100 * (16 + 9 * 3) * 0.01)        # not 100 * (8 + 9) * 2 * 0.01
    lab.refuse_runaway("pixel-cond", "euler_maruyama", 100, 8, 2.0)  # 16 s: admitted
    with pytest.raises(gr.Error, match="Too much work|over the app"):
        lab.refuse_runaway("pixel-cond", "euler_maruyama", 100, 8, 2.0, runs_of_one=9, also_seconds=20.0)


# ---------------------------------------------------------------- 3. request size, session state, uploads, blobs

def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "testboundary7f3a"
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (b"Content-Type: application/octet-stream\r\n" if filename else b"") + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_large_body_is_answered_413_declared_or_streamed(live):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)       # declared: refused unread
    conn.putrequest("POST", "/gradio_api/call/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(40_000_000))
    conn.endheaders()
    start = time.perf_counter()
    assert conn.getresponse().status == 413 and time.perf_counter() - start < 5
    conn.close()
    big = json.dumps({"data": ["pixel-cond", 3, "dpmpp_2m", 2, 2.0, 0, "x" * 1_100_000]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)       # chunked: no Content-Length
    try:
        conn.request("POST", "/gradio_api/queue/join", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass                                        # refused before the client finished sending
    conn.close()
    assert _request(live.url)[0] == 200


def test_event_data_of_a_hostile_shape_is_refused_by_position(live):
    for data, where in ((["z" * 100_000], "data[0]"), ([{"layers": [{}] * 5000}], "data[0].layers")):
        status, _, body = _post_json(live, "gradio_api/run/recommended_settings", {"data": data})
        assert status == 422 and where in body.decode() and len(body) < 1000, body[:300]


def test_an_upload_request_carries_a_bounded_number_of_files(live):
    body, ctype = _multipart([("files", f"f{k}.png", b"x" * 100) for k in range(20)])
    status, _, _ = _request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 413
    body, ctype = _multipart([("files", "f.png", b"x" * 100)])
    status, _, out = _request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 200 and len(json.loads(out)) == 1


def test_the_blob_route_is_capped(live):
    from gradio.components.image_editor import EditorDataBlobs  # noqa: F401  (the route exists in this gradio)

    sketch = next(b for b in live.demo.blocks.values() if isinstance(b, gr.ImageEditor))
    fields = {"type": "layer", "index": "50000000", "id": "blob-test", "component_id": str(sketch._id),
              "session_hash": "blobtest", "fn_name": "accept_blobs"}
    body, ctype = _multipart([*[(k, None, v.encode()) for k, v in fields.items()], ("file", "layer.png", b"x" * 600)])
    _request(live.url + "gradio_api/component_server", body, {"Content-Type": ctype})
    assert "blob-test" not in sketch.blob_storage                    # no 50-million-entry list
    fields["index"] = "0"
    for k in range(12):                                               # 12 drawings of 4 MB: a 32 MB budget
        fields["id"] = f"blob-{k}"
        body, ctype = _multipart([*[(n, None, v.encode()) for n, v in fields.items()],
                                  ("file", "layer.png", b"x" * 4_000_000)])
        assert _request(live.url + "gradio_api/component_server", body, {"Content-Type": ctype})[0] == 200
    kept = sum(len(v.layers[0]) for v in sketch.blob_storage.values())
    assert "blob-11" in sketch.blob_storage and kept <= 32 * 2**20


def test_session_state_is_bounded_and_keeps_no_raw_inputs(live):
    from ui import limits

    holder = live.demo.server_app.state_holder
    assert isinstance(holder, limits.BoundedStateHolder) and holder.capacity == limits.SESSION_CAPACITY
    value = "m" * 15_000                                          # within the event-data bounds: reaches gradio
    status, _, _ = _post_json(live, "gradio_api/run/recommended_settings",
                              {"data": [value], "session_hash": "bigvalue"})
    assert status in (200, 400, 500)
    assert "bigvalue" in holder.session_data
    kept = json.dumps(holder.session_data["bigvalue"].config_values, default=str)
    assert value not in kept and len(kept) < 50_000
    assert holder.prune(now=time.time() + limits.SESSION_IDLE_S + 1) >= 1 and "bigvalue" not in holder.session_data


# ---------------------------------------------------------------- 4. event data, closed routes, nosniff, logs

@pytest.mark.parametrize("event, expect", [({"index": [10_000, -50], "value": None}, 9),     # clamped: row 0, col 9
                                           ({"index": [30, 130], "value": None}, 20)])
def test_grid_clicks_out_of_range_pick_the_nearest_digit(live, event, expect):
    status, _, body = _post_json(live, "gradio_api/run/pick_test_digit", {"data": [], "event_data": event})
    assert status == 200 and json.loads(body)["data"][0] == expect


@pytest.mark.parametrize("event", [{"index": "x"}, {"index": [1]}, {"index": ["nan", 3]}, "junk", {"index": None}])
def test_malformed_grid_clicks_are_named_errors_without_traceback(live, event):
    status, _, body = _post_json(live, "gradio_api/run/pick_test_digit", {"data": [], "event_data": event})
    text = body.decode()
    assert "index" in text and "Traceback" not in text and len(text) < 2000, (status, text[:300])


def test_recommended_settings_names_a_bad_model_briefly(live):
    status, _, body = _post_json(live, "gradio_api/run/recommended_settings", {"data": ["z" * 5_000]})
    text = body.decode()
    assert "model" in text and len(text) < 2000 and "zzzzzzzzzz" * 20 not in text, text[:300]


@pytest.mark.parametrize("path", ["gradio_api/deep_link?session_hash=x", "gradio_api/stream/x/y/z/playlist.m3u8",
                                  "gradio_api/proxy=http://x", "gradio_api/vibe-code", "gradio_api/runs"])
def test_unused_routes_are_closed(live, path):
    assert _request(live.url + path)[0] == 404


def test_process_recording_is_closed(live):
    body, ctype = _multipart([("files", "a.wav", b"RIFF")])
    assert _request(live.url + "gradio_api/process_recording", body, {"Content-Type": ctype})[0] == 404


def test_uploads_are_served_with_nosniff(live):
    body, ctype = _multipart([("files", "page.png", b"<html><script>alert(1)</script></html>")])
    status, _, out = _request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 200
    status, headers, _ = _request(live.url + "gradio_api/file=" + json.loads(out)[0])
    assert status == 200 and headers.get("x-content-type-options", "").lower() == "nosniff"
    assert _request(live.url)[1].get("x-content-type-options", "").lower() == "nosniff"


def test_a_malformed_drawing_request_logs_a_bounded_excerpt(live, capfd):
    layers = [{"path": 12345, "junk": "j" * 10, "meta": {"_type": "gradio.FileData"}}] * 5_000
    payload = {"data": ["drawing", 0, {"background": None, "layers": layers, "composite": None}, 0.5, 0, "none"]}
    size = len(json.dumps(payload))
    capfd.readouterr()
    status, _, body = _post_json(live, "gradio_api/call/forward_diffusion", payload)
    if status == 200:
        _request(live.url + f"gradio_api/call/forward_diffusion/{json.loads(body)['event_id']}")
    time.sleep(0.5)
    out, err = capfd.readouterr()
    assert len(out) + len(err) < max(20_000, size // 4), f"{len(out) + len(err)} bytes logged for a {size}-byte request"


def test_a_session_keeps_one_slot_per_block_however_often_it_generates(live):
    """gradio answers gr.skip() (an empty prop update) with a fresh component under a fresh id, and files the
    next real value under that id too: without the fix a session grew by one slot per skipped output per event."""
    from gradio_client import Client

    holder = live.demo.server_app.state_holder
    client = Client(live.url, verbose=False)
    args = ["pixel-cond", 3, "euler_maruyama", 4, 1.0, 0, 1]
    slots = []
    for _ in range(4):
        client.predict(*args, api_name="/generate")
        slots.append(len(holder.session_data[client.session_hash].blocks_config.blocks))
    assert slots[-1] == slots[0] <= len(live.demo.blocks), slots


def test_a_dropped_session_leaves_no_undelivered_messages(live):
    from gradio_client import Client

    holder, queue = live.demo.server_app.state_holder, live.demo._queue
    client = Client(live.url, verbose=False)
    client.predict("pixel-cond", 3, "euler_maruyama", 4, 1.0, 0, 1, api_name="/generate")
    assert client.session_hash in holder.session_data
    holder.prune(now=time.time() + 10 * 86400)
    assert client.session_hash not in holder.session_data
    assert client.session_hash not in queue.pending_messages_per_session


def test_the_allocator_settings_are_applied_unless_the_environment_sets_them(monkeypatch):
    from ui import limits

    for env in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(env, raising=False)
    assert limits.tune_allocator() == {"MALLOC_ARENA_MAX": True, "MALLOC_MMAP_THRESHOLD_": True}   # glibc took both
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limits.tune_allocator() == {"MALLOC_ARENA_MAX": False, "MALLOC_MMAP_THRESHOLD_": True}  # operator's stands
