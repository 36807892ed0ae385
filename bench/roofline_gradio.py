"""The end-to-end half of bench/roofline.py's request breakdown (bench/roofline_requests.py has the timers): the
app built and timed in a server process of its own, launched on loopback, and requests sent to it through
gradio_client from the benchmark's process, as a visitor's browser would (the client never shares a process, nor
its GIL, with the server).

The server process (`python -m bench.roofline_gradio --serve ...`, started by `measure_requests`): builds the app
as app.py does with every part timed, drains each request's handler in-process (warm-up + reps: the in-process
phase, written to a JSON file), then launches and appends one JSON line of parts per request served through gradio.
The benchmark's process waits for the app (bench/app_latency.py's `wait_ready`), sends each request (warm-up +
reps), reads the server's record of the same request, and stops the server.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.soak import stop
from bench.roofline_requests import (Request, Timers, in_process_phase, instrument, summarise, timed_handlers,
                                     with_seed)


def serve(weights_dir, reps: int, port: int, phase_json: str, log_path: str) -> None:
    """The server process: build the app as app.py does with every part timed, run the in-process phase (written to
    `phase_json`), launch on 127.0.0.1:`port`, and append one JSON line per request served through gradio to
    `log_path` ({"request", parts...}) until killed."""
    import app

    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", tempfile.mkdtemp(prefix="roofline-examples-"))  # not the repo's
    timers, records, served = Timers(), [], {"log": None}

    def on_done(request, parts):
        records.append((request, parts))
        if served["log"] is not None:
            served["log"].write(json.dumps({"request": request, **parts}) + "\n")
            served["log"].flush()

    with timed_handlers(timers, on_done):
        demo = app.create_demo(weights_dir=weights_dir)
        with instrument(demo.lab, timers):
            phase = in_process_phase(demo, records, reps)
            Path(phase_json).write_text(json.dumps(phase))
            served["log"] = open(log_path, "a", encoding="utf-8")   # noqa: SIM115 - open until killed
            demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port))
            print("READY", flush=True)
            while True:
                time.sleep(3600)


def read_new_record(log_path: Path, seen: int, timeout: float = 60.0) -> tuple[dict, int]:
    """The first record after the `seen` lines of the server's log (waiting for it), and the new line count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_path.read_text(encoding="utf-8").splitlines() if log_path.exists() else []
        if len(lines) > seen:
            return json.loads(lines[seen]), seen + 1
        time.sleep(0.02)
    raise TimeoutError(f"the server logged no request within {timeout:.0f} s ({log_path})")


def gradio_phase(phase: dict, url: str, log_path: Path, reps: int, log=print) -> dict:
    """{request name: e2e runs}: one warm-up and `reps` requests each through gradio_client, each with the server's
    parts of the same request and its end-to-end seconds."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="roofline-dl-"))
    seen, out = 0, {}
    for name, info in phase.items():
        req = Request(name, info["args"], info["api_name"], info["settings"])
        runs = []
        for k in [10_000, *range(reps)]:                                # the first: warm-up
            start = time.perf_counter()
            client.submit(*with_seed(req, k), api_name=req.api_name).result()
            e2e = time.perf_counter() - start
            record, seen = read_new_record(log_path, seen)
            if record.pop("request") != name:
                raise RuntimeError(f"the server logged another request than {name}")
            runs.append({**record, "e2e": e2e})
        out[name] = runs[1:]
        log(f"{name} through gradio: end to end {statistics.median(r['e2e'] for r in out[name]) * 1e3:.0f} ms")
    return out


def measure_requests(weights_dir, reps: int = 5, gradio: bool = True, log=print) -> dict:
    """{request name: {"settings", "runs", "e2e_runs", "summary"}} for default_requests on the app built from
    `weights_dir`: in a server process of its own (`python -m bench.roofline_gradio --serve`, launched on a free
    loopback port) that runs the in-process phase, then serves gradio_client requests from this process; with
    gradio=False the in-process phase only, here."""
    import subprocess
    import sys

    from bench.app_latency import ROOT, wait_ready
    from ui.server import free_port

    if not gradio:
        import app

        timers, records = Timers(), []
        with timed_handlers(timers, lambda request, parts: records.append((request, parts))):
            demo = app.create_demo(weights_dir=weights_dir)
            with instrument(demo.lab, timers):
                phase = in_process_phase(demo, records, reps, log)
        return {n: {"settings": p["settings"], "runs": p["runs"], "e2e_runs": [], "summary": summarise(p["runs"], [])}
                for n, p in phase.items()}
    work = Path(tempfile.mkdtemp(prefix="roofline-serve-"))
    port = free_port()
    cmd = [sys.executable, "-m", "bench.roofline_gradio", "--serve", "--port", str(port), "--reps", str(reps),
           "--weights-dir", str(weights_dir), "--phase-json", str(work / "phase.json"), "--log", str(work / "log.jsonl")]
    with open(work / "server.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}/", proc, timeout=900)
        except (RuntimeError, TimeoutError) as e:
            tail = "\n".join((work / "server.out").read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"the benchmark's app server did not come up ({e}); {work / 'server.out'} ends:\n"
                               f"{tail}") from None
        phase = json.loads((work / "phase.json").read_text())
        e2e = gradio_phase(phase, f"http://127.0.0.1:{port}/", work / "log.jsonl", reps, log)
    finally:
        stop(proc, timeout=20)
    return {n: {"settings": p["settings"], "runs": p["runs"], "e2e_runs": e2e[n],
                "summary": summarise(p["runs"], e2e[n])} for n, p in phase.items()}


def main(argv=None) -> None:
    """`--serve`: the server process of measure_requests (not for people: run python -m bench.roofline)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.roofline_gradio", description=main.__doc__)
    p.add_argument("--serve", action="store_true", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--phase-json", required=True)
    p.add_argument("--log", required=True)
    args = p.parse_args(argv)
    serve(args.weights_dir, args.reps, args.port, args.phase_json, args.log)


if __name__ == "__main__":
    main()
