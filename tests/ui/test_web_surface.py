"""The web surface (issue 6): nothing outside the app is served (weights, app.py, the Hugging Face token), no page
or API answer reveals a secret from the environment, monitoring is closed."""
from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from pathlib import Path

import gradio.utils as gradio_utils
import pytest

import app
from app_helpers import post_json
from conftest import ENV_SECRETS, TOKEN_SECRET

gradio_client = pytest.importorskip("gradio_client")
from test_app import _gen_args, _raw_call  # noqa: E402  (shared helpers, not duplicated)






def _get(port: int, path: str) -> tuple[int, bytes]:
    """A raw GET: the path goes out byte for byte (no client-side normalisation of ../ or %2e)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _surface_paths(hard, tiny_weights) -> list[str]:
    weights = str(tiny_weights / "pixel-cond" / "model.safetensors")
    app_py = str(Path(app.__file__).resolve())
    token = str(hard.token)
    cache = str(gradio_utils.get_upload_folder())           # gradio's own cache: served, so traverse out of it
    up = "../" * 12
    q = urllib.parse.quote
    paths = []
    for prefix in ("/gradio_api/file=", "/file="):
        paths += [prefix + p for p in (
            "/etc/passwd", "//etc/passwd", f"{up}etc/passwd", up.replace("/", "%2f") + "etc%2fpasswd",
            "..%2f" * 12 + "etc/passwd", "%2e%2e%2f" * 12 + "etc/passwd", "%252e%252e%252f" * 12 + "etc%252fpasswd",
            "%2fetc%2fpasswd", "/proc/self/environ", "/proc/self/cmdline",
            weights, q(weights, safe=""), f"{cache}/{up}{weights.lstrip('/')}", f"{hard.demo.lab.tmp}/{up}etc/passwd",
            "weights/pixel-cond/model.safetensors", token, q(token, safe=""), f"{cache}/{up}{token.lstrip('/')}",
            app_py, "app.py", "./app.py", f"{cache}/../../{app_py.lstrip('/')}",
        )]
    paths += ["/app.py", "/weights/pixel-cond/model.safetensors", "/static/../app.py", "/static/%2e%2e/app.py",
              "/assets/..%2f..%2fapp.py", "/gradio_api/file=" + str(hard.hf_home), "/favicon.ico/../app.py",
              "/gradio_api/static/" + "..%2f" * 8 + "etc/passwd"]
    return paths


def test_files_outside_the_app_are_not_served(hard, tiny_weights):
    weights = (tiny_weights / "pixel-cond" / "model.safetensors").read_bytes()
    forbidden = {"passwd": b"root:x:0:0", "environ": ENV_SECRETS["SECRET_TEST_VALUE"].encode(),
                 "weights": weights[:64], "weights-tail": weights[-64:], "token": TOKEN_SECRET.encode(),
                 "app.py": b"def create_demo(", "hf_token": ENV_SECRETS["HF_TOKEN"].encode()}
    statuses = {}
    for path in _surface_paths(hard, tiny_weights):
        status, body = _get(hard.port, path)
        statuses[status] = statuses.get(status, 0) + 1
        leaked = [name for name, needle in forbidden.items() if needle in body]
        assert not leaked, f"{path} -> {status} leaked {leaked}"
        assert status in (400, 403, 404), f"{path} -> {status}: {body[:80]!r}"
    print(f"\nweb surface: {sum(statuses.values())} paths refused, none leaked; statuses {statuses}")


def test_a_drawing_cannot_name_the_token_file(hard):
    for sketch in ({"composite": {"path": str(hard.token), "meta": {"_type": "gradio.FileData"}}, "layers": []},
                   {"composite": {"path": str(hard.token)}, "layers": []}):
        status, _, body = post_json(hard, "gradio_api/call/forward_diffusion",
                                    {"data": ["drawing", 0, sketch, 0.0, 0, "none"]})
        out = body.decode() if status != 200 else _raw_call(hard.url, "forward_diffusion",
                                                             ["drawing", 0, sketch, 0.0, 0, "none"])
        assert (status == 422 and "sketch" in out or "event: error" in out) and TOKEN_SECRET not in out


@pytest.mark.parametrize("path", ["/", "/config", "/gradio_api/info", "/gradio_api/openapi.json", "/info",
                                  "/gradio_api/config", "/gradio_api/startup-events", "/theme.css"])
def test_pages_do_not_reveal_secrets(hard, path):
    status, body = _get(hard.port, path)
    text = body.decode(errors="replace")
    for secret in (*ENV_SECRETS.values(), TOKEN_SECRET):
        assert secret not in text, f"{path} ({status}) contains {secret}"


def test_api_responses_do_not_reveal_secrets(hard):
    raw = _raw_call(hard.url, "generate", _gen_args(steps=2, num_images=1))
    assert "**Done**" in raw
    out = hard.client.predict(*_gen_args(steps=2, num_images=1), api_name="/generate")
    texts = [raw, json.dumps(out, default=str), hard.client.view_api(print_info=False, return_format="str") or ""]
    for secret in (*ENV_SECRETS.values(), TOKEN_SECRET):
        assert not any(secret in t for t in texts), secret


@pytest.mark.parametrize("path", ["/monitoring", "/gradio_api/monitoring", "/monitoring/summary",
                                  "/gradio_api/monitoring/summary", "/monitoring/x/y"])
def test_monitoring_is_not_open(hard, path):
    status, body = _get(hard.port, path)
    assert status != 200 or (b"monitoring" not in body.lower() and b"dashboard" not in body.lower()), status
