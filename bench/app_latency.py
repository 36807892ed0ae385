"""Latency of the app as a user feels it: time to the first streamed preview and to the final grid for
16 images of one digit at the default settings, through gradio_client against `python app.py` running
in its own process with the real weights (weights/pixel-cond). Prints every repeat and the medians.

    python bench/app_latency.py [--repeats 7] [--model pixel-cond] [--digit 3] [--num-images 16]
    python bench/app_latency.py --url http://127.0.0.1:7860/     # an app that is already running

Targets (2 CPU cores): first preview <= 0.5 s, final grid <= 3 s. Numbers are inflated when something
else (training) is using the CPU at the same time.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusion.pipeline as dp  # noqa: E402
from ui.server import free_port  # noqa: E402


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def one_run(client, args) -> dict:
    """Submit one generation; note when the first preview, the final grid and the GIF arrive."""
    start = time.perf_counter()
    job = client.submit(args.model, args.digit, dp.DEFAULT_SAMPLER, dp.DEFAULT_STEPS, dp.DEFAULT_GUIDANCE,
                        args.seed, args.num_images, api_name="/generate")
    first = final = gif = None
    updates, status = 0, ""
    for out in job:
        now = time.perf_counter() - start
        updates += 1
        if first is None and isinstance(out[0], str) and out[0]:
            first = now
        if final is None and isinstance(out[3], str) and out[3]:
            final = now
        if isinstance(out[4], str) and out[4]:
            gif = now
        if isinstance(out[2], str):
            status = out[2]
    m = re.search(r"Done\*\* in ([\d.]+) (ms|s) wall time", status)
    server = (float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)) if m else float("nan")
    return dict(first=first, final=final, gif=gif, server=server, updates=updates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="benchmark an app that is already running at this URL")
    p.add_argument("--weights-dir", default=None, help="passed to app.py (default: weights/)")
    p.add_argument("--model", default="pixel-cond")
    p.add_argument("--digit", type=int, default=3)
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--precision", default="auto", choices=dp.PRECISIONS, help="passed to app.py")
    args = p.parse_args()

    from gradio_client import Client

    proc = None
    url = args.url
    if url is None:
        if not (Path(args.weights_dir or ROOT / "weights") / args.model / "model.safetensors").is_file():
            sys.exit(f"no trained weights for {args.model}: train them first (python -m train.{args.model.replace('-', '_')})")
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--precision", args.precision]
        if args.weights_dir:
            cmd += ["--weights-dir", args.weights_dir]
        log = tempfile.NamedTemporaryFile("w+", prefix="app_latency_", suffix=".log", delete=False)
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        wait_ready(url, proc)
        print(f"app ready at {url} after {time.perf_counter() - t0:.1f} s" + (f" (log: {log.name})" if proc else ""))
        client = Client(url, verbose=False)
        print(f"{args.num_images} images of digit {args.digit} with {args.model}: {dp.DEFAULT_SAMPLER}, "
              f"{dp.DEFAULT_STEPS} steps, guidance {dp.DEFAULT_GUIDANCE}; {os.cpu_count()} CPU cores")
        one_run(client, args)                                   # warm-up (first-call overheads)
        runs = []
        print(f"{'run':>4} {'first preview':>14} {'final grid':>11} {'GIF':>7} {'server compute':>15} {'updates':>8}")
        for k in range(args.repeats):
            r = one_run(client, args)
            runs.append(r)
            print(f"{k:>4} {r['first']:>13.3f}s {r['final']:>10.3f}s {r['gif']:>6.2f}s {r['server']:>14.3f}s "
                  f"{r['updates']:>8}")
        med = {k: statistics.median(r[k] for r in runs) for k in ("first", "final", "gif", "server")}
        print(f"{'median':>4} {med['first']:>11.3f}s {med['final']:>10.3f}s {med['gif']:>6.2f}s {med['server']:>14.3f}s")
        print(f"targets: first preview <= 0.5 s ({'met' if med['first'] <= 0.5 else 'MISSED'}), "
              f"final grid <= 3 s ({'met' if med['final'] <= 3 else 'MISSED'})")
        load = os.getloadavg()[0]
        if load > 1.5:
            print(f"note: load average {load:.1f} on {os.cpu_count()} cores: other work was running, "
                  "so these numbers are inflated")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
