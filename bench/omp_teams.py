"""Why the app's networks run slower than the same network alone: OpenMP teams and libgomp's spin throttling.

PyTorch's CPU build here parallelises with OpenMP (libgomp). Every Python thread that runs a parallel torch op gets
its own OpenMP team; between two parallel regions a team's threads spin briefly before they sleep, and a network
call on 16 small images is a chain of short regions, so that spinning is what makes it fast. libgomp throttles the
spin (GOMP_SPINCOUNT's default 300000 -> 100) as soon as it manages more threads than there are CPUs: one more
thread that has run torch ops - even an idle one - is enough on 2 cores. The app has several such threads (the
broker's worker that runs the networks, the request handlers, start-up), so its networks run as with
OMP_WAIT_POLICY=PASSIVE.

    python -m bench.omp_teams [--model pixel-cond-distilled-2step] [--out bench/results/omp_teams]

Each case runs in a fresh subprocess with the environment named: the model's 16-image grid (its own defaults),
fastest of 7, first alone, then while a second Python thread that has generated once is alive and idle; and the
process's CPU seconds over 1 s of idling after each (spinning threads would show there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from diffusion.pipeline import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
         "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
         "the app's: ACTIVE, GOMP_SPINCOUNT=300000": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"},
         "1 torch thread": {"OMP_NUM_THREADS": "1"}}

CHILD = r"""
import json, sys, threading, time, torch
from diffusion.hub import load_pipeline
pipe = load_pipeline(sys.argv[1])

def best():
    pipe.generate([3] * 16, seed=0)
    times = []
    for k in range(7):
        t = time.perf_counter()
        pipe.generate([3] * 16, seed=k + 1)
        times.append(time.perf_counter() - t)
    return min(times)

alone = best()
c = time.process_time(); time.sleep(1); idle = time.process_time() - c
release = threading.Event()

def second():
    pipe.generate([3] * 16, seed=0)         # this thread's OpenMP team now exists
    release.wait()
t = threading.Thread(target=second)
t.start()
time.sleep(0.5)
beside = best()
c = time.process_time(); time.sleep(1); idle_beside = time.process_time() - c
release.set()
t.join()
print(json.dumps({"alone": alone, "beside_idle_thread": beside, "threads": torch.get_num_threads(),
                  "idle_cpu_s": max(idle, idle_beside)}))
"""


def run_case(model: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: dict, model: str, machine: str) -> str:
    lines = [f"# OpenMP teams: {model}'s 16-image grid alone and beside an idle second torch thread "
             "(bench/omp_teams.py)", "", f"{machine}; fastest of 7, each case a fresh process.", "",
             "| case | torch threads | alone ms | beside an idle torch thread ms | slowdown | idle CPU-s per s |",
             "|---|---:|---:|---:|---:|---:|"]
    for case, r in rows.items():
        lines.append(f"| {case} | {r['threads']} | {1000 * r['alone']:.1f} | {1000 * r['beside_idle_thread']:.1f} | "
                     f"{r['beside_idle_thread'] / r['alone']:.2f}x | {r.get('idle_cpu_s', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pixel-cond-distilled-2step")
    p.add_argument("--out", default=str(RESULTS / "omp_teams"))
    a = p.parse_args(argv)
    rows = {case: run_case(a.model, env) for case, env in CASES.items()}
    text = report(rows, a.model, cpu_name())
    Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    Path(a.out + ".md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
