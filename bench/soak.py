"""Soak (issue 14): `python app.py` on loopback under mixed normal and hostile-but-valid traffic at the queue's
limit for a bounded time, while one normal generation is timed every `--probe-every` seconds.

    python -m bench.soak [--minutes 10] [--port 7899] [--weights-dir weights] [--out bench/results/soak.json]

Hostile traffic, in rounds: the queue filled with long generations and interpolations that are then cancelled (a
cancel storm), drawings at the pixel cap and over it, oversized and chunked bodies, uploads with too many files,
blob-route spam, malformed grid clicks and drawings, closed routes, and a stream of new sessions. After each
round's cancels, the server's CPU seconds over a quiet window are recorded (work that outlived its cancel).
Prints and writes: idle RSS baseline, peak and final RSS, normal-request latency idle vs during the soak, CPU
after cancels, refusals by kind, the machine's load. Loopback only; every request has a timeout.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NORMAL = ["pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 16]                      # the app's defaults
LONG = ["pixel-cond", 3, "euler_maruyama", 100, 2.0, 0, 1]                  # long; admitted unless the CPU is slow
INTERP = ["pixel-cond", 1, 7, 0.5, 0, 1, "euler_maruyama", 3, 2.0]          # the grid, then the 9-run strip


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a launched app, and kill it if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def request(url, data=None, headers=None, timeout=30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # noqa: BLE001 - a soak counts failures, it does not stop on them
        return -1, repr(e).encode()


def multipart(parts) -> tuple[bytes, dict]:
    b = "soakboundary"
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{b}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


def png(size) -> bytes:
    img = Image.new("RGB", size, 0)
    img.paste(255, (size[0] // 3, size[1] // 5, size[0] // 3 + size[0] // 10, 4 * size[1] // 5))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Soak:
    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.refused: Counter = Counter()
        self.errors: Counter = Counter()
        self.lock = threading.Lock()
        self.at_cap, self.over_cap = png((2048, 2048)), png((4000, 4000))

    def count(self, kind: str, status: int, body: bytes = b"") -> None:
        with self.lock:
            if status in (413, 404) or b"error" in body[:2000].lower() or status >= 400:
                self.refused[f"{kind} ({status})"] += 1
            elif status < 0:
                self.errors[kind] += 1

    def post_json(self, path, payload, kind):
        status, body = request(self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        self.count(kind, status, body)
        return status, body

    def call(self, api, data, kind, read=True):
        status, body = request(self.url + f"gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                               {"Content-Type": "application/json"})
        if status == 200 and read:
            status2, out = request(self.url + f"gradio_api/call/{api}/{json.loads(body)['event_id']}", timeout=120)
            refused = b"event: error" in out
            with self.lock:
                if refused:
                    self.refused[f"{kind}: named error"] += 1
            return out
        self.count(kind, status, body)
        return body

    def upload(self, content: bytes, name="drawing.png") -> str | None:
        body, headers = multipart([("files", name, content)])
        status, out = request(self.url + "gradio_api/upload", body, headers)
        return json.loads(out)[0] if status == 200 else None

    # -- hostile kinds -----------------------------------------------------------------------------
    def drawings(self):
        for content, kind in ((self.at_cap, "drawing at the cap"), (self.over_cap, "drawing over the cap")):
            path = self.upload(content)
            if path:
                sketch = {"background": None, "layers": [], "composite": {"path": path, "meta": {"_type": "gradio.FileData"}}}
                self.call("forward_diffusion", ["drawing", 0, sketch, 0.5, 0, "none"], kind)
                self.post_json("gradio_api/run/use_drawing", {"data": [sketch]}, f"{kind} (use_drawing)")

    def oversized(self):
        self.post_json("gradio_api/call/generate", {"data": [*NORMAL[:-1], "x" * 40_000_000]}, "oversized body")
        body, headers = multipart([("files", f"f{k}.png", b"x" * 1000) for k in range(200)])
        self.count("too many files", *request(self.url + "gradio_api/upload", body, headers))

    def malformed(self):
        for event in ({"index": "x"}, {"index": [10**9, -10**9]}, "junk", {"index": ["nan", 1]}):
            self.post_json("gradio_api/run/pick_test_digit", {"data": [], "event_data": event}, "malformed click")
        layers = [{"path": 1, "meta": {"_type": "gradio.FileData"}}] * 2000
        self.call("forward_diffusion", ["drawing", 0, {"background": None, "layers": layers, "composite": None},
                                         0.5, 0, "none"], "malformed drawing")
        self.post_json("gradio_api/run/recommended_settings", {"data": ["m" * 100_000]}, "long bad value")
        for path in ("gradio_api/deep_link?session_hash=x", "gradio_api/runs"):
            self.count("closed route", *request(self.url + path))

    def blobs(self, sketch_id: int):
        for index in ("50000000", "0"):
            fields = {"type": "layer", "index": index, "id": f"soak-{time.monotonic_ns()}",
                      "component_id": str(sketch_id), "session_hash": "soak", "fn_name": "accept_blobs"}
            body, headers = multipart([*[(k, None, v.encode()) for k, v in fields.items()],
                                       ("file", "layer.png", b"x" * 1_000_000)])
            request(self.url + "gradio_api/component_server", body, headers)

    def sessions(self, n=50):
        for k in range(n):
            self.post_json("gradio_api/run/recommended_settings",
                           {"data": ["pixel-cond"], "session_hash": f"soak{time.monotonic_ns()}{k}"}, "new session")

    def cancel_storm(self, clients: list) -> int:
        """Fill the queue with long jobs, then cancel every one; returns how many were submitted."""
        jobs = []
        for k, c in enumerate(clients):
            try:
                jobs.append(c.submit(*(LONG if k % 2 else INTERP), api_name="/generate" if k % 2 else "/interpolate"))
            except Exception:  # noqa: BLE001
                self.refused["cancel storm submit"] += 1
        time.sleep(1.5)
        for job in jobs:
            try:
                job.cancel()
            except Exception:  # noqa: BLE001
                pass
        for job in jobs:
            try:
                job.result(timeout=5)
            except Exception as e:  # noqa: BLE001 - cancelled, refused by cost, or queue full
                msg = str(e).lower()
                kind = ("queue full" if "queue is full" in msg else "too much work" if "too much work" in msg
                        else "visitor's share" if "429" in msg else "cancelled")
                with self.lock:
                    self.refused[f"cancel storm: {kind}"] += 1
        return len(jobs)


def timed_generate(client) -> float:
    start = time.perf_counter()
    out = client.predict(*NORMAL, api_name="/generate")      # NORMAL[-1]: --images
    assert "**Done**" in out[2], out[2][:200]
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--probe-every", type=float, default=10.0)
    parser.add_argument("--storm", type=int, default=18, help="jobs per cancel storm (queue 16 + 1 running + 1)")
    parser.add_argument("--images", type=int, default=16, help="images in the timed normal generation (default: the "
                        "app's default, 16; fewer on a loaded machine, where 16 may pass the time limit)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2 (allocator A/B)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    NORMAL[-1] = args.images
    from gradio_client import Client

    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(args.port)]
    if args.weights_dir:
        cmd += ["--weights-dir", args.weights_dir]
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **extra_env})
    url = f"http://127.0.0.1:{args.port}/"
    log_bytes = [0]
    threading.Thread(target=lambda: [log_bytes.__setitem__(0, log_bytes[0] + len(line)) for line in server.stderr],
                     daemon=True).start()
    try:
        deadline = time.time() + 600
        while request(url, timeout=5)[0] != 200:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the app did not start")
            time.sleep(1)
        probe = Client(url, verbose=False)
        config = json.loads(request(url + "config")[1])
        sketch_id = next(c["id"] for c in config["components"] if c.get("type") in ("imageeditor", "sketchpad"))
        timed_generate(probe)                                           # warm-up
        idle = [timed_generate(probe) for _ in range(3)]
        time.sleep(2)
        baseline = rss_mib(server.pid)
        soak = Soak(url, server.pid)
        # each storm client is its own visitor behind a proxy: the app's per-address share (ui/fair_queue.py)
        # would otherwise refuse all but a few of them, as it should one visitor's flood
        storm_clients = [Client(url, verbose=False, headers={"X-Forwarded-For": f"5.5.7.{k + 1}"})
                         for k in range(args.storm)]
        rss, during, after_cancel, rounds = [baseline], [], [], 0
        stop = time.time() + args.minutes * 60
        next_probe = time.time()
        load_start = os.getloadavg()
        while time.time() < stop:
            threads = [threading.Thread(target=f, daemon=True) for f in
                       (soak.drawings, soak.oversized, soak.malformed, lambda: soak.blobs(sketch_id), soak.sessions)]
            for t in threads:
                t.start()
            soak.cancel_storm(storm_clients)
            for t in threads:
                t.join(timeout=120)
            cpu0 = cpu_s(server.pid)                                    # quiet window after the cancels
            time.sleep(3.0)
            after_cancel.append(cpu_s(server.pid) - cpu0)
            rss.append(rss_mib(server.pid))
            if time.time() >= next_probe:
                during.append(timed_generate(probe))
                next_probe = time.time() + args.probe_every
                rss.append(rss_mib(server.pid))
            rounds += 1
        time.sleep(5)
        final = rss_mib(server.pid)
        report = dict(
            minutes=args.minutes, rounds=rounds, server_env=extra_env, normal_request=dict(zip(
                ("model", "digit", "sampler", "steps", "guidance", "seed", "num_images"), NORMAL)), load_avg_start=load_start, load_avg_end=os.getloadavg(),
            cpu_count=os.cpu_count(), rss_baseline_mib=round(baseline, 1), rss_peak_mib=round(max(rss), 1),
            rss_final_mib=round(final, 1), final_vs_baseline_pct=round(100 * (final - baseline) / baseline, 1),
            peak_minus_baseline_mib=round(max(rss) - baseline, 1), rss_series_mib=[round(r, 1) for r in rss],
            latency_idle_s=dict(median=round(statistics.median(idle), 2), max=round(max(idle), 2)),
            latency_during_s=dict(n=len(during), median=round(statistics.median(during), 2) if during else None,
                                  max=round(max(during), 2) if during else None),
            cpu_s_in_3s_after_cancels=dict(median=round(statistics.median(after_cancel), 2),
                                           max=round(max(after_cancel), 2), rounds=len(after_cancel)),
            refused=dict(sorted(soak.refused.items())), transport_errors=dict(soak.errors),
            server_log_bytes=log_bytes[0])
    finally:
        stop(server)
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
