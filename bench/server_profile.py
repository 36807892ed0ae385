"""Where the app's CPU goes under load (issue 24): N visitors (bench.load's phase) against `python app.py` while py-spy
samples every thread of the server and /proc gives each thread's CPU time over the same window.

    pip install py-spy
    python -m bench.server_profile [--visitors 1,8] [--seconds 20] [--endpoint generate] [--rate 50]

Per visitor count: the phase runs for --seconds plus a lead and a tail of LEAD_S; the window is the middle, steady
part. Each Python thread's CPU-seconds over it are split over its busy samples (idle ones: a leaf waiting in select, a
lock, a queue) by category (CATEGORIES: the first whose function names or paths appear in the stack). Threads that
py-spy never sees are native: OpenMP's workers, the network's other core, so "network". The table gives core-ms per
image and the share of the server's CPU. Since the server is CPU-bound under load, its throughput could rise at most
by (server CPU) / (network CPU) if every other part cost nothing: `ceiling`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.load import ENDPOINTS, _load, commit_of, launch, parse_visitors, run_phase
from bench.tables import write_results
from diffusion.pipeline import cpu_name

ROOT = Path(__file__).resolve().parent.parent
LEAD_S = 4.0                      # s of each phase before and after the window (ramp-up, the last answers)
NETWORK = "network (score U-Net)"
IDLE_LEAVES = {"EpollSelector.select", "select", "poll", "Condition.wait", "Event.wait", "Queue.get", "sleep",
               "Thread._wait_for_tstate_lock", "_worker", "SimpleQueue.get", "BaseSelector.select"}
# (category, function names, path parts): the first category with a frame whose name or path matches
CATEGORIES = [
    (NETWORK, ("NetworkBroker._run_pass", "UNet.forward"), ()),
    ("classifier check", ("Lab.classifier_line", "classify"), ()),
    ("GIF", ("gif_frame", "Lab.write_gif", "gif_bytes"), ()),
    ("preview grids (ui/pictures.py)", ("sent_grid", "show_grid", "captioned"), ()),
    ("PNG encoding (gradio's, through ui/image_cache.py)", ("save_pil_to_cache", "save_img_array_to_cache"), ()),
    ("gradio: unchanged outputs (gr.skip)", ("SessionState._update_config",), ()),
    ("gradio: files to its cache", ("async_move_files_to_cache",), ()),
    ("sampler, guidance, handler", (), ("diffusion/", "ui/")),
    ("gradio: queue, HTTP, events", (), ("gradio/", "gradio_client/", "uvicorn/", "starlette/", "anyio/",
                                         "fastapi/", "asyncio/", "h11/", "httpx/", "pydantic/")),
]
OTHER = "other Python"
NATIVE = "network: OpenMP workers (threads py-spy never sees)"


# ---------------------------------------------------------------- pure pieces (tested by hand values)

def parse_raw(text: str) -> dict[int, Counter]:
    """py-spy's `--threads --format raw` lines ("thread (TID): name;frame;frame... COUNT") -> {tid: Counter of stacks
    (tuples of frames, root first)}."""
    per_thread: dict[int, Counter] = defaultdict(Counter)
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack.startswith("thread (") or not count.isdigit():
            continue
        head, _, frames = stack.partition(";")
        tid = int(head[len("thread ("):head.index(")")])
        per_thread[tid][tuple(frames.split(";")) if frames else ()] += int(count)
    return dict(per_thread)


def _name(frame: str) -> str:
    return frame.split(" (", 1)[0]


def category(stack: tuple[str, ...]) -> str | None:
    """The stack's category, None for an idle one (its leaf waits)."""
    if not stack or _name(stack[-1]) in IDLE_LEAVES:
        return None
    names = {_name(f) for f in stack}
    for label, funcs, paths in CATEGORIES:
        if names.intersection(funcs) or any(p in f for f in stack for p in paths):
            return label
    return OTHER


def attribute(samples: dict[int, Counter], cpu_s: dict[int, float]) -> dict[str, float]:
    """CPU-seconds per category: each sampled thread's CPU split over its busy samples' categories (a thread with CPU
    but no busy sample: OTHER), every thread py-spy never sampled counted as NATIVE."""
    out: Counter = Counter()
    for tid, seconds in cpu_s.items():
        if tid not in samples:
            out[NATIVE] += seconds
            continue
        busy = Counter()
        for stack, n in samples[tid].items():
            label = category(stack)
            if label is not None:
                busy[label] += n
        total = sum(busy.values())
        for label, n in (busy.items() if total else [(OTHER, 1)]):
            out[label] += seconds * n / (total or 1)
    return dict(out)


def summary(by_category: dict[str, float], images: float, process_cpu_s: float) -> dict:
    """Rows (category, core-ms per image, share of the attributed CPU), the network's share and the ceiling."""
    total = sum(by_category.values())
    network = by_category.get(NETWORK, 0.0) + by_category.get(NATIVE, 0.0)
    rows = [{"part": k, "core_ms_per_image": round(1e3 * v / images, 2) if images else None,
             "share": round(v / total, 4) if total else None}
            for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])]
    return {"rows": rows, "attributed_cpu_s": round(total, 2), "process_cpu_s": round(process_cpu_s, 2),
            "network_share": round(network / total, 4) if total else None,
            "ceiling": round(total / network, 2) if network else None}


# ---------------------------------------------------------------- threads' CPU, py-spy, one phase

def thread_cpu_s(pid: int) -> dict[int, float]:
    """{tid: user + system CPU-seconds} of every thread of `pid` (/proc/PID/task/TID/stat)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:          # the thread ended between the listing and the read
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def profile_phase(srv, n: int, endpoint: str, seconds: float, rate: int, work: Path) -> dict:
    phase: dict = {}
    runner = threading.Thread(target=lambda: phase.update(run_phase(srv, n, endpoint, requests=None,
                                                                    duration=seconds + 2 * LEAD_S,
                                                                    timeout=seconds + 2 * LEAD_S + 120)))
    runner.start()
    time.sleep(LEAD_S)
    raw = work / f"x{n}.raw"
    before, cpu0, t0 = thread_cpu_s(srv.proc.pid), srv.cpu(), time.perf_counter()
    subprocess.run(["py-spy", "record", "-p", str(srv.proc.pid), "-d", str(int(seconds)), "-r", str(rate), "--threads",
                    "--idle", "--nonblocking", "--format", "raw", "-o", str(raw)], check=True,
                   capture_output=True)
    after, cpu1, window = thread_cpu_s(srv.proc.pid), srv.cpu(), time.perf_counter() - t0
    runner.join()
    cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    images = phase["images_per_s"] * window
    result = summary(attribute(parse_raw(raw.read_text()), cpu), images, cpu1 - cpu0)
    return {"visitors": n, "window_s": round(window, 1), "images_per_s": phase["images_per_s"],
            "latency_s": phase["latency_s"], "images_in_window": round(images, 1),
            "server_cores_busy": round((cpu1 - cpu0) / window, 2), **result}


def report(results: dict) -> str:
    phases = results["phases"]
    parts = [r["part"] for r in max(phases, key=lambda p: len(p["rows"]))["rows"]]
    head = ["part"] + [f"{p['visitors']} visitor{'s' if p['visitors'] > 1 else ''}: core-ms / image (share)"
                       for p in phases]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(phases)]
    for part in parts:
        cells = []
        for p in phases:
            row = next((r for r in p["rows"] if r["part"] == part), None)
            cells.append(f"{row['core_ms_per_image']:.2f} ({row['share']:.0%})" if row else "-")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(f"**{1e3 * p['attributed_cpu_s'] / p['images_in_window']:.2f}**"
                                              for p in phases) + " |")
    lines += ["", "| visitors | images/s | p50 / p95 s | server cores busy | network's share | ceiling |",
              "|---:|---:|---|---:|---:|---:|"]
    for p in phases:
        lines.append(f"| {p['visitors']} | {p['images_per_s']:.1f} | {p['latency_s']['p50']} / "
                     f"{p['latency_s']['p95']} | {p['server_cores_busy']:.2f} | {p['network_share']:.0%} | "
                     f"{p['ceiling']:.2f}x |")
    m = results["machine"]
    lines += ["", "- ceiling: the server's CPU over the network's, the most its throughput could rise (it is "
                  "CPU-bound) if everything but the network cost nothing",
              f"- {results['settings']}; machine: {m['cpu']} ({m['cores']} cores), load average {m['load_avg_start']} "
              f"at the start, {m['when']}; commit {results['commit']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visitors", default="1,8", help="visitor counts, comma-separated (1 is always run)")
    p.add_argument("--seconds", type=float, default=20.0, help="the sampled window of each phase")
    p.add_argument("--rate", type=int, default=50, help="py-spy's samples per second")
    p.add_argument("--endpoint", default="generate", choices=ENDPOINTS)
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "server_profile.json")
    args = p.parse_args(argv)
    try:
        visitors = parse_visitors(args.visitors)
    except ValueError as e:
        p.error(str(e))
    if not 5 <= args.seconds <= 600:
        p.error(f"--seconds must be in [5, 600], got {args.seconds:g}")
    if shutil.which("py-spy") is None:
        p.error("py-spy is not installed: pip install py-spy")
    results = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_start": _load(),
                           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
               "settings": f"{args.endpoint}, back to back, a {args.seconds:g} s window sampled at {args.rate}/s",
               "commit": commit_of(ROOT), "phases": []}
    work = Path(tempfile.mkdtemp(prefix="server-profile-"))
    srv = launch(ROOT, args.weights_dir.resolve(), work / "server")
    try:
        run_phase(srv, 1, args.endpoint, requests=1, duration=None, timeout=120)       # warm-up
        for n in visitors:
            srv.quiet(timeout=30)
            results["phases"].append(profile_phase(srv, n, args.endpoint, args.seconds, args.rate, work))
            print(json.dumps(results["phases"][-1]), flush=True)
    finally:
        srv.close()
        shutil.rmtree(work, ignore_errors=True)
    write_results(results, args.out, "Where the server's CPU goes under load", report(results))
    return results


if __name__ == "__main__":
    main()
