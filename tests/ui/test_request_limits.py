"""HTTP limits (issue 14, ui/http_limits.py): request bodies, event-data shapes, upload parts, the Sketchpad's blob
route, closed routes, nosniff, and a bounded log excerpt for a malformed request."""
from __future__ import annotations

import http.client
import json
import time

import gradio as gr
import pytest

from app_helpers import http_request, post_json


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "testboundary7f3a"
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (b"Content-Type: application/octet-stream\r\n" if filename else b"") + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_large_body_is_answered_413_declared_or_streamed(live):

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
    assert http_request(live.url)[0] == 200


def test_event_data_of_a_hostile_shape_is_refused_by_position(live):
    for data, where in ((["z" * 100_000], "data[0]"), ([{"layers": [{}] * 5000}], "data[0].layers")):
        status, _, body = post_json(live, "gradio_api/run/recommended_settings", {"data": data})
        assert status == 422 and where in body.decode() and len(body) < 1000, body[:300]


def test_an_upload_request_carries_a_bounded_number_of_files(live):
    body, ctype = _multipart([("files", f"f{k}.png", b"x" * 100) for k in range(20)])
    status, _, _ = http_request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 413
    body, ctype = _multipart([("files", "f.png", b"x" * 100)])
    status, _, out = http_request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 200 and len(json.loads(out)) == 1


def test_the_blob_route_is_capped(live):
    from gradio.components.image_editor import EditorDataBlobs  # noqa: F401  (the route exists in this gradio)

    sketch = next(b for b in live.demo.blocks.values() if isinstance(b, gr.ImageEditor))
    fields = {"type": "layer", "index": "50000000", "id": "blob-test", "component_id": str(sketch._id),
              "session_hash": "blobtest", "fn_name": "accept_blobs"}
    body, ctype = _multipart([*[(k, None, v.encode()) for k, v in fields.items()], ("file", "layer.png", b"x" * 600)])
    http_request(live.url + "gradio_api/component_server", body, {"Content-Type": ctype})
    assert "blob-test" not in sketch.blob_storage                    # no 50-million-entry list
    fields["index"] = "0"
    for k in range(12):                                               # 12 drawings of 4 MB: a 32 MB budget
        fields["id"] = f"blob-{k}"
        body, ctype = _multipart([*[(n, None, v.encode()) for n, v in fields.items()],
                                  ("file", "layer.png", b"x" * 4_000_000)])
        assert http_request(live.url + "gradio_api/component_server", body, {"Content-Type": ctype})[0] == 200
    kept = sum(len(v.layers[0]) for v in sketch.blob_storage.values())
    assert "blob-11" in sketch.blob_storage and kept <= 32 * 2**20


@pytest.mark.parametrize("path", ["gradio_api/deep_link?session_hash=x", "gradio_api/stream/x/y/z/playlist.m3u8",
                                  "gradio_api/proxy=http://x", "gradio_api/vibe-code", "gradio_api/runs"])
def test_unused_routes_are_closed(live, path):
    assert http_request(live.url + path)[0] == 404


def test_process_recording_is_closed(live):
    body, ctype = _multipart([("files", "a.wav", b"RIFF")])
    assert http_request(live.url + "gradio_api/process_recording", body, {"Content-Type": ctype})[0] == 404


def test_uploads_are_served_with_nosniff(live):
    body, ctype = _multipart([("files", "page.png", b"<html><script>alert(1)</script></html>")])
    status, _, out = http_request(live.url + "gradio_api/upload", body, {"Content-Type": ctype})
    assert status == 200
    status, headers, _ = http_request(live.url + "gradio_api/file=" + json.loads(out)[0])
    assert status == 200 and headers.get("x-content-type-options", "").lower() == "nosniff"
    assert http_request(live.url)[1].get("x-content-type-options", "").lower() == "nosniff"


def test_a_malformed_drawing_request_logs_a_bounded_excerpt(live, capfd):
    layers = [{"path": 12345, "junk": "j" * 10, "meta": {"_type": "gradio.FileData"}}] * 5_000
    payload = {"data": ["drawing", 0, {"background": None, "layers": layers, "composite": None}, 0.5, 0, "none"]}
    size = len(json.dumps(payload))
    capfd.readouterr()
    status, _, body = post_json(live, "gradio_api/call/forward_diffusion", payload)
    if status == 200:
        http_request(live.url + f"gradio_api/call/forward_diffusion/{json.loads(body)['event_id']}")
    out, err = capfd.readouterr()
    assert len(out) + len(err) < max(20_000, size // 4), f"{len(out) + len(err)} bytes logged for a {size}-byte request"
