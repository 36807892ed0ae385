"""The benchmarks' harness around a running app: `python app.py` of any checkout on a free loopback port (`Server`),
plain HTTP to it (`http`), threads in parallel (`parallel`), and the tests' tiny random models saved as the app loads
them (`tiny_weights`). Used by bench/reliability.py, bench/load.py and bench/default_grid.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.soak import cpu_s, request, rss_mib
from ui.server import free_port

ROOT = Path(__file__).resolve().parent.parent
MAX_SECONDS = 60.0                                   # the app's time limit per request, in these benchmarks


# ---------------------------------------------------------------- the server and the wire

def http(url, payload=None, headers=None, timeout=60, raw: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST of `payload` as JSON (or of `raw` bytes); -1 for a failure."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})} if payload is not None else dict(headers or {})
    return request(url, data, hdrs, timeout)


class Server:
    """`python app.py` from `repo` on a free loopback port, its log in a file, its own temp folders."""

    def __init__(self, repo: Path, weights: Path, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/gradio_api/"
        work.mkdir(parents=True, exist_ok=True)
        self.uploads = work / "gradio-tmp"
        self.log_path = work / "server.log"
        env = {**os.environ, "GRADIO_TEMP_DIR": str(self.uploads), "GRADIO_EXAMPLES_CACHE": str(work / "examples"),
               "PYTHONPATH": str(repo), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(repo / "app.py"), "--weights-dir", str(weights),
                                      "--port", str(self.port), "--max-seconds", str(MAX_SECONDS)],
                                     cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited: {self.log_path.read_text()[-2000:]}")
            if http(self.url + "info", timeout=5)[0] == 200:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the app did not start within 600 s")

    def cpu(self) -> float:
        return cpu_s(self.proc.pid)

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def log_bytes(self) -> int:
        self.log.flush()
        return self.log_path.stat().st_size

    def call(self, api, data, headers=None, timeout=120) -> tuple[int, str]:
        """POST /call/<api> then read its stream: (status of the POST, the stream or the refusal's body)."""
        status, body = http(self.url + f"call/{api}", {"data": data}, headers)
        if status != 200:
            return status, body.decode("utf-8", "replace")
        event_id = json.loads(body)["event_id"]
        return status, http(self.url + f"call/{api}/{event_id}", timeout=timeout)[1].decode("utf-8", "replace")

    def post(self, api, data, headers=None) -> tuple[int, str | None]:
        """POST /call/<api> without reading the result: (status, event id)."""
        status, body = http(self.url + f"call/{api}", {"data": data}, headers)
        return status, (json.loads(body).get("event_id") if status == 200 else None)

    def quiet(self, window_s: float = 1.0, timeout: float = 90.0) -> float:
        """Wait until the server uses < 5% of a core over `window_s`; returns the seconds waited."""
        start = time.time()
        while time.time() - start < timeout:
            before = self.cpu()
            time.sleep(window_s)
            if self.cpu() - before < 0.05 * window_s:
                break
        return time.time() - start

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def parallel(fn, args_list, timeout=180) -> list:
    out = [None] * len(args_list)

    def run(k):
        out[k] = fn(*args_list[k])
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(args_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out


def tiny_weights(folder: Path) -> Path:
    """The tests' tiny random models (tests/factories.py), saved as the app loads them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from factories import tiny_model, tiny_score, tiny_students

    models = {name: tiny_model(name) for name in ("pixel-cond", "pixel-uncond", "latent-cond", "autoencoder",
                                                  "classifier")}
    models["pixel-uncond"] = tiny_score(0, autoguide="pixel-uncond-guide")
    models["pixel-uncond-guide"] = tiny_model("pixel-uncond", seed=1)
    for name, model in models.items():
        model.save_pretrained(folder / name)
    for name, student in tiny_students(models["pixel-cond"]).items():
        student.save_pretrained(folder / name)
    return folder
