"""Every function of ui/gradio_seam.py, exercised against the installed gradio: an upgrade that moves or changes one
of gradio's private pieces the app relies on fails here, by name, instead of in a visitor's request. requirements.txt
pins gradio to the range these tests were run on."""
from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app_helpers import http_request, post_json, wait_until
from ui import gradio_seam

FWD = ["test digit", 0, None, 0.5, 0, "none"]


def test_current_event_names_the_running_event_and_session(live):
    seen = {}

    def probe():
        seen["inside"] = gradio_seam.current_event()
        return "ok"
    assert gradio_seam.current_event() == (None, None)                       # outside any handler
    with gr.Blocks() as demo:
        out = gr.Textbox()
        gr.Button().click(probe, None, out, api_name="probe")
    demo.queue()
    from app_helpers import free_port

    port = free_port()
    demo.launch(prevent_thread_lock=True, quiet=True, server_port=port)
    try:
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert client.predict(api_name="/probe") == "ok"
        event_id, session = seen["inside"]
        assert isinstance(event_id, str) and len(event_id) >= 16 and session == client.session_hash
    finally:
        demo.close()


def test_current_block_is_the_container_being_laid_out():
    with gr.Blocks():
        assert gradio_seam.current_block() is not None
        with gr.Tab("t") as tab:
            assert gradio_seam.current_block() is tab
    assert gradio_seam.current_block() is None


def test_folders_follow_gradios_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path / "cache"))
    assert gradio_seam.upload_folder() == tmp_path / "uploads"
    assert Path(gradio_seam.cache_folder()).resolve() == (tmp_path / "cache").resolve()


def test_event_functions_and_their_inputs(app_demo):
    fns = gradio_seam.event_functions(app_demo)
    generate = gradio_seam.function_for(app_demo, api_name="generate")
    assert generate in fns.values() and generate.queue and len(generate.inputs) == 8   # 7 + the session's State
    index = next(i for i, fn in fns.items() if fn is generate)
    assert gradio_seam.function_for(app_demo, fn_index=index) is generate
    assert gradio_seam.function_for(app_demo, api_name="nonexistent") is None
    assert gradio_seam.function_for(app_demo, fn_index=True) is None                 # a bool is not an index
    assert isinstance(generate.inputs[-1], gr.State)                                 # "Where w applies"
    assert gradio_seam.api_inputs(generate) == list(generate.inputs)[:7]             # a State is not sent
    assert [i for i, _ in gradio_seam.checked_inputs(generate)] == list(range(7))
    with gr.Blocks() as demo:
        state, box = gr.State(1), gr.Textbox()
        box.submit(lambda s, t: t, [state, box], box, api_name="echo")
    echo = gradio_seam.function_for(demo, api_name="echo")
    assert gradio_seam.api_inputs(echo) == [box]                                     # gr.State is not sent
    assert gradio_seam.checked_inputs(echo) == [(1, box)]
    assert gradio_seam.checked_inputs(echo, api_only=True) == [(0, box)]


def test_payload_error_uses_the_components_own_data_model():
    pad = gr.Sketchpad()
    assert gradio_seam.payload_error(pad, None) is None
    assert "not a valid Sketchpad value" in gradio_seam.payload_error(pad, "abc")
    assert "'meta' field" in gradio_seam.payload_error(pad, {"background": None, "layers": [{"path": "x"}],
                                                             "composite": None})
    ok = {"background": None, "layers": [], "composite": {"path": "x.png", "meta": {"_type": "gradio.FileData"}}}
    assert gradio_seam.payload_error(pad, ok) is None
    presets = gr.Dataset(components=[gr.Textbox()], samples=[["a"], ["b"]], type="index")
    assert gradio_seam.payload_error(presets, 1) is None
    for bad in (2, -1, "x", 2**63, True):
        assert gradio_seam.payload_error(presets, bad) == "must be a preset index from 0 to 1"
    assert gradio_seam.payload_error(gr.Slider(0, 10), "anything") is None            # no data model: the handler's


def test_error_payload_is_what_a_client_shows():
    payload = gradio_seam.error_payload("Replaced by a newer request.", "Replaced")
    assert payload["error"] == "Replaced by a newer request." and payload["title"] == "Replaced"


def test_queue_jobs_capacity_drop_and_reorder(tiny_weights):
    """Against a live queue: jobs are seen waiting and running, a waiting one is dropped with a reason its client
    reads, and waiting lines are reordered in place."""
    from app_helpers import launched

    with launched(tiny_weights, log_calls=True, max_queue=5, concurrency=1) as served:     # one runs, the rest wait
        served.demo.lab.max_seconds = 10_000.0
        blocks = served.demo
        assert gradio_seam.queue_capacity(blocks) == 5 and gradio_seam.event_queue(blocks) is not None
        slow = ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]
        ids = [json.loads(post_json(served, "gradio_api/call/generate", {"data": slow},
                                    headers={"X-Forwarded-For": f"5.5.5.{k}"})[2])["event_id"] for k in range(3)]
        wait_until(lambda: any(running for _, running in gradio_seam.queue_jobs(blocks)), 60, what="a job running")
        jobs = gradio_seam.queue_jobs(blocks)
        assert {e._id for e, _ in jobs} == set(ids) and sum(r for _, r in jobs) == 1
        waiting = [e for e, running in jobs if not running]
        gradio_seam.reorder_waiting(blocks, lambda line: {id(e): -k for k, e in enumerate(line)})   # reverse them
        now_waiting = [e for e, running in gradio_seam.queue_jobs(blocks) if not running]
        assert now_waiting == waiting[::-1]
        dropped = now_waiting[0]
        assert gradio_seam.drop_waiting(blocks, dropped, "Replaced by a newer request.", "Replaced")
        assert not gradio_seam.drop_waiting(blocks, dropped, "again", "Replaced")        # gone already
        stream = http_request(f"{served.url}gradio_api/call/generate/{dropped._id}", timeout=30)[2].decode()
        assert "event: error" in stream and "Replaced by a newer request." in stream
        for event_id in ids:
            post_json(served, "gradio_api/cancel", {"event_id": event_id, "session_hash": event_id, "fn_index": 0})


def test_running_blocks_finds_the_app_of_a_request(live):
    assert gradio_seam.running_blocks({"app": live.demo.server_app}) is live.demo
    assert gradio_seam.running_blocks({}) is None


def test_the_lean_session_store_is_installed_and_bounded(live):
    lean, bounded = gradio_seam.lean_state_classes()
    holder = live.demo.server_app.state_holder
    assert isinstance(holder, bounded)
    state = holder["seam-test-session"]
    assert isinstance(state, lean) and state.config_values == {}
    installed = gradio_seam.install_state_holder(live.demo.server_app, 3, 60.0)
    try:
        assert live.demo.server_app.state_holder is installed and installed.capacity == 3
    finally:
        live.demo.server_app.state_holder = holder


def test_the_blob_route_is_wrapped_and_sized():
    with gr.Blocks() as demo:
        pad = gr.Sketchpad()
    assert gradio_seam.editors(demo) == [pad]
    calls = []

    class Policy:
        def admit(self, upload_id, index):
            calls.append(("admit", upload_id, index))
            return index != 9

        def kept(self, store, upload_id):
            calls.append(("kept", upload_id, len(store)))

    store = gradio_seam.wrap_blob_route(pad, Policy())
    assert isinstance(store, OrderedDict) and pad.blob_storage is store and pad.accept_blobs._is_server_fn

    class Upload:
        def __init__(self, index):
            self.data = {"type": "layer", "index": str(index), "id": "drawing-1"}
            self.files = [("blob", b"\x89PNG" + b"0" * 100)]
    pad.accept_blobs(Upload(0))
    pad.accept_blobs(Upload(9))                                     # refused by the policy: not kept
    assert calls == [("admit", "drawing-1", 0), ("kept", "drawing-1", 1), ("admit", "drawing-1", 9)]
    assert gradio_seam.blob_bytes(store["drawing-1"]) == 104 and len(store["drawing-1"].layers) == 1


def test_the_image_cache_writer_can_be_replaced(tmp_path):
    from ui import image_cache

    encode, hash_bytes = gradio_seam.pil_cache_tools()
    img = Image.fromarray(np.zeros((4, 4), np.uint8))
    data = encode(img, "png")
    assert Image.open(io.BytesIO(data)).size == (4, 4) and len(hash_bytes(data)) >= 16
    before = gradio_seam.pil_cache_writer()
    written = []
    try:
        gradio_seam.replace_pil_cache_writer(lambda img, cache_dir, name="image", format="webp": written.append(1)
                                             or "x")
        from gradio import image_utils

        image_utils.save_image(img, str(tmp_path), format="png")        # gradio's own image path calls it
        assert written == [1]
    finally:
        gradio_seam.replace_pil_cache_writer(before)
    image_cache.write_images_once()
    assert gradio_seam.pil_cache_writer() is image_cache.save_pil_to_cache


def test_seam_functions_are_all_tested():
    """Each public function of the seam is named in this file (a new seam function comes with its test)."""
    import inspect

    source = Path(__file__).read_text()
    public = [n for n, f in inspect.getmembers(gradio_seam, inspect.isfunction)
              if not n.startswith("_") and f.__module__ == gradio_seam.__name__]
    assert len(public) >= 20 and [n for n in public if f"gradio_seam.{n}(" not in source] == []


def test_a_threaded_handler_sees_no_event():
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("event", gradio_seam.current_event()))
    t.start()
    t.join()
    assert box["event"] == (None, None)


@pytest.mark.parametrize("name", ["current_event", "upload_folder", "queue_jobs", "payload_error"])
def test_each_seam_function_says_why_it_is_private(name):
    assert "Why private" in (getattr(gradio_seam, name).__doc__ or "") or name == "queue_jobs"
