"""The one way tests launch the app and wait on it: `free_port`, `launched` (build the tiny app, launch it as
`python app.py` does, close it after) and `wait_until` (poll a condition with a timeout, instead of a fixed sleep).
Imported by tests/conftest.py's fixtures and by test modules that need an app of their own settings."""
from __future__ import annotations

import contextlib
import time
import types

from ui.server import free_port  # noqa: F401  (one free_port, re-exported for the tests)


def wait_until(condition, timeout: float = 30.0, interval: float = 0.01, what: str = "the condition"):
    """Poll `condition()` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


@contextlib.contextmanager
def launched(weights, *, log_calls: bool = False, client: bool = False, launch: dict | None = None, **create):
    """The app built from `weights` (tiny, on CPU, max_seconds=60 unless `create` says otherwise; other `create`
    kwargs go to app.create_demo), launched on a free port with app.launch_kwargs (plus `launch` overrides of
    them), closed on exit. Yields a namespace: url, port, demo, calls (with log_calls: perf_counter time of every
    score-network evaluation, any pipeline), client (with client=True: a gradio_client.Client)."""
    import tempfile

    import torch

    import app
    from diffusion.score import networks

    create = {"device": torch.device("cpu"), "max_seconds": 60, **create}
    demo = app.create_demo(weights_dir=weights, **create)
    calls: list[float] = []
    hooks = [net.register_forward_hook(lambda *a: calls.append(time.perf_counter()))
             for p in demo.lab.pipelines.values() for net in networks(p.score_model)] if log_calls else []
    port = free_port()
    demo.launch(prevent_thread_lock=True, quiet=True, **{**app.launch_kwargs("127.0.0.1", port), **(launch or {})})
    url = f"http://127.0.0.1:{port}/"
    try:
        gradio_client = None
        if client:
            from gradio_client import Client

            gradio_client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="gradio-dl-"))
        yield types.SimpleNamespace(url=url, port=port, demo=demo, calls=calls, client=gradio_client)
    finally:
        demo.close()
        for h in hooks:
            h.remove()


def http_request(url, data: bytes | None = None, headers=None, method=None, timeout: float = 30):
    """(status, headers, body) of one raw HTTP request; an HTTP error status is returned, not raised."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_json(served, path: str, payload, headers=None):
    """POST `payload` as JSON to `path` (relative to the served app's root): (status, headers, body)."""
    import json

    return http_request(served.url + path, json.dumps(payload).encode(),
                        {"Content-Type": "application/json", **(headers or {})})


def wait_until_quiet(read, quiet_s: float = 0.5, timeout: float = 30.0, interval: float = 0.02):
    """Poll `read()` (e.g. how many network evaluations have run) until it has not changed for `quiet_s` seconds;
    returns that value (AssertionError after `timeout`: it never settled)."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while True:
        time.sleep(interval)
        now_value, now = read(), time.monotonic()
        if now_value != value:
            value, since = now_value, now
        elif now - since >= quiet_s:
            return value
        if now > deadline:
            raise AssertionError(f"still changing after {timeout:.0f} s (last value {value!r})")
