"""Latency of the Live tab (/live): 16 images at 1, 2 and 4 steps, called N times through gradio_client against
`python app.py` in its own process (or an app already running at --url). Prints, per step count, the server's compute
time (measured inside the handler and returned in its timing output: validation, sampling, the upscaled grid) and the
client's round trip (queue, PNG encoding, transfer included), median and p90, with the CPU model and the load. The
server's CPU time (process time over the handler, all threads) is printed too: on a machine shared with other work it
says what the request cost, where wall time says how long it waited for a core (with 2 threads, waiting OpenMP threads
spin, which inflates both).

    python bench/live_latency.py [--repeats 20] [--steps 1,2,4] [--threads N] [--out bench/results/live_latency.md]
    python bench/live_latency.py --students-from weights/pixel-cond   # no trained students yet: untrained ones
    python bench/live_latency.py --url http://127.0.0.1:7860/         # an app that is already running

--students-from TEACHER makes the 4-, 2- and 1-step students from that teacher (diffusion.distill.make_student, the
start of training: same architecture, same cost per call as trained ones, poor images) in a temporary weights folder
beside links to the other models of --weights-dir. Target: 16 images in <= 0.25 s of server compute on 2 CPU cores.
Numbers are inflated when something else (training) is using the CPU: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.app_latency import free_port, wait_ready  # noqa: E402
from diffusion.pipeline import cpu_name  # noqa: E402
from diffusion.registry import DISTILLED_NAMES  # noqa: E402

STEPS_OF = dict(zip((4, 2, 1), DISTILLED_NAMES))
TARGET_S = 0.25


def make_weights(weights_dir: Path, teacher_dir: Path, out: Path) -> Path:
    """out/: links to every model folder of weights_dir but the students, and untrained students of teacher_dir."""
    import torch

    from diffusion.distill import distilled_config, make_student
    from diffusion.score import ScoreModel

    out.mkdir(parents=True, exist_ok=True)
    for folder in weights_dir.iterdir():
        if folder.is_dir() and folder.name not in DISTILLED_NAMES:
            (out / folder.name).symlink_to(folder.resolve())
    teacher = ScoreModel.from_pretrained(str(teacher_dir), map_location="cpu")
    for steps, name in STEPS_OF.items():
        with torch.no_grad():
            make_student(teacher, distilled_config(steps, 16, (0.0, 4.0), teacher=str(teacher_dir))).save_pretrained(
                out / name)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="benchmark an app that is already running at this URL")
    p.add_argument("--weights-dir", default=str(ROOT / "weights"))
    p.add_argument("--students-from", default=None, metavar="TEACHER_DIR",
                   help="make untrained students from this teacher folder (same cost as trained ones)")
    p.add_argument("--steps", default="1,2,4")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--digit", type=int, default=3)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the launched app (OMP_NUM_THREADS)")
    p.add_argument("--precision", default="auto", help="passed to app.py")
    p.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = p.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]

    from gradio_client import Client

    proc, tmp, url = None, None, args.url
    if url is None:
        weights = Path(args.weights_dir)
        if args.students_from:
            tmp = tempfile.TemporaryDirectory(prefix="live_latency_")
            weights = make_weights(weights, Path(args.students_from), Path(tmp.name) / "weights")
        missing = [STEPS_OF[s] for s in steps_list if not (weights / STEPS_OF[s] / "model.safetensors").is_file()]
        if missing:
            sys.exit(f"no student weights for {', '.join(missing)} in {weights}: train them (python -m train.distill) "
                     f"or pass --students-from weights/pixel-cond to time untrained ones (same cost)")
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        if args.threads:
            env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        log = tempfile.NamedTemporaryFile("w+", prefix="live_latency_", suffix=".log", delete=False)
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--weights-dir",
                                 str(weights), "--precision", args.precision], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        wait_ready(url, proc)
        print(f"app ready at {url} after {time.perf_counter() - t0:.1f} s" + (f" (log: {log.name})" if proc else ""))
        client = Client(url, verbose=False)
        load_before = os.getloadavg()
        rows, threads = [], "?"
        for steps in steps_list:
            call = lambda seed: client.predict(args.digit, steps, args.guidance, seed, args.num_images,  # noqa: E731
                                               api_name="/live")
            for k in range(args.warmup):
                call(10_000 + k)
            server, cpu, trip = [], [], []
            for k in range(args.repeats):
                start = time.perf_counter()
                _, _, timing = call(k)
                trip.append(time.perf_counter() - start)
                server.append(timing["server_s"])
                cpu.append(timing["cpu_s"])
                threads = timing.get("threads", threads)
            rows.append(dict(steps=steps, model=timing["model"], nfe=timing["nfe"], batch=timing["batch"],
                             server_med=statistics.median(server), server_p90=pct(server, 0.9),
                             cpu_med=statistics.median(cpu),
                             trip_med=statistics.median(trip), trip_p90=pct(trip, 0.9)))
            print(f"{steps} step(s): server median {rows[-1]['server_med'] * 1000:.0f} ms, "
                  f"round trip median {rows[-1]['trip_med'] * 1000:.0f} ms")
        load_after = os.getloadavg()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()

    import torch

    lines = [f"{args.num_images} images of digit {args.digit}, guidance {args.guidance:g}, {args.repeats} calls per row "
             f"(after {args.warmup} warm-up calls) through gradio_client; {cpu_name()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {threads} torch thread(s) in the app, precision {args.precision}"
             + (", untrained students made from " + args.students_from + " (same cost per call as trained ones)"
                if args.students_from else ""),
             f"load average (1/5/15 min) before: {' / '.join(f'{v:.1f}' for v in load_before)}, after: "
             f"{' / '.join(f'{v:.1f}' for v in load_after)}",
             "",
             "| steps | model | NFE | batch | server median ms | server p90 ms | server CPU median ms | "
             "round trip median ms | round trip p90 ms | <= 0.25 s (server median) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['model']} | {r['nfe']} | {r['batch']} | {r['server_med'] * 1000:.0f} | "
                     f"{r['server_p90'] * 1000:.0f} | {r['cpu_med'] * 1000:.0f} | {r['trip_med'] * 1000:.0f} | {r['trip_p90'] * 1000:.0f} | "
                     f"{'met' if r['server_med'] <= TARGET_S else 'MISSED'} |")
    text = "\n".join(lines)
    print()
    print(text)
    if max(load_before[0], load_after[0]) > 1.5:
        print(f"\nnote: load average above 1.5 on {os.cpu_count()} cores: other work was running, so these numbers "
              "are inflated")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
