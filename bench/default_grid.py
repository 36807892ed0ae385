"""Generate's default grid, then and now (issue 24's first target): each code tree samples the grid *it* ships as the
default (pixel-cond, its own default sampler, steps, guidance and precision; digit 3, 16 images), so the figure is
what a visitor pressing Generate waits for, in each version.

    python -m bench.default_grid --before /tmp/before-24 [--after .] [--rounds 3] [--repeats 5] [--e2e 8]
    python -m bench.default_grid --tab live --before /tmp/before-24      # Live's default grid, the same way

- network: in-process `load_pipeline("pixel-cond").generate([3] * 16, seed=k)` at the tree's defaults, its own
  weights folder; wall time of the whole call (sampler, network, images), the fastest of `repeats` per round, the
  rounds interleaved (before, after, before, ...), one subprocess per tree and round (PYTHONPATH = the tree);
- end to end: `python app.py` of each tree on loopback, `/generate` through gradio_client with the tree's default
  settings, submit to complete result (files not downloaded), fastest and median of `e2e` requests after a warm-up.

`--tab live`: the grid the Live tab opens on, in each tree: the app of the tree is built in-process (`create_demo`,
with its start-up timing), its Live tab names the student, steps, w and precision it opens on, and that student's
stream (the handler's network work) is timed; end to end is `/live` with those settings.

Targets (issue 24): network >= 2.5x faster, end to end >= 2x faster than the issue's tree; Live: network <= 1/2. The trees' defaults
differ (the issue's tree: w = 1.375, two guidance branches per step; rule v3 chose w = 1, one branch): both effects
are in the ratio, and the table says which settings each tree ran.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.app_server import Server
from diffusion.pipeline import cpu_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIGIT, IMAGES = 3, 16

# run inside a tree (PYTHONPATH = the tree): its defaults, its pipeline, its precision path
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
from diffusion.hub import load_pipeline
from diffusion.pipeline import defaults_for
repeats, weights = int(sys.argv[1]), sys.argv[2]
pipe = load_pipeline("pixel-cond", weights_dir=weights)
d = defaults_for("pixel-cond")
pipe.generate([3] * 16, seed=0)                                     # warm-up
times = []
for k in range(repeats):
    t = time.perf_counter()
    pipe.generate([3] * 16, seed=k + 1)
    times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "sampler": d.sampler, "steps": d.steps, "guidance": d.guidance,
                  "precision": getattr(pipe, "compute_precision", "?")}))
"""

# Live: the tree's own app decides (its start-up timing included) which student, steps and w the tab opens on
CHILD_LIVE = r"""
import json, sys, time
from ui.server import create_demo        # first, as app.py does: the app package's settings precede torch's loading
import torch
torch.set_num_threads(2)
repeats, weights = int(sys.argv[1]), sys.argv[2]
tab = create_demo(weights_dir=weights).tabs["LiveTab"]
steps, w = tab.default_steps, tab.default_guidance
r = tab.runners[steps]

def once(seed):
    t = time.perf_counter()
    for _ in r.pipe.stream([3] * 16, num_images=16, sampler=r.sampler, num_steps=r.steps, guidance=w, seed=seed,
                           preview_every=1):
        pass
    return time.perf_counter() - t
once(0)                                                             # warm-up
times = [once(k + 1) for k in range(repeats)]
print(json.dumps({"times": times, "model": r.name, "sampler": r.sampler, "steps": steps, "guidance": w,
                  "precision": getattr(r.pipe, "compute_precision", "?")}))
"""
SETTINGS = {"generate": ("sampler", "steps", "guidance", "precision"),
            "live": ("model", "sampler", "steps", "guidance", "precision")}


def network_round(tree: Path, repeats: int, tab: str = "generate") -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    child = CHILD_LIVE if tab == "live" else CHILD
    out = subprocess.run([sys.executable, "-c", child, str(repeats), str(tree / "weights")], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:                       # what the child said, not only its exit status
        raise RuntimeError(f"{tab} network round in {tree} exited with {out.returncode}:\n{out.stderr[-3000:]}\nstdout: {out.stdout[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def end_to_end(tree: Path, settings: dict, requests: int, work: Path, tab: str = "generate") -> list[float]:
    from gradio_client import Client

    srv = Server(tree, tree / "weights", work)
    try:
        client = Client(srv.url.removesuffix("gradio_api/"), verbose=False, download_files=False)
        if tab == "live":                                               # digit, steps, w, seed, images
            args, seed_at, api = [DIGIT, settings["steps"], settings["guidance"], 0, IMAGES], 3, "/live"
        else:
            args = ["pixel-cond", DIGIT, settings["sampler"], settings["steps"], settings["guidance"], 0, IMAGES]
            seed_at, api = 5, "/generate"
        client.predict(*args, api_name=api)                             # warm-up
        times = []
        for k in range(requests):
            args[seed_at] = k + 1
            t = time.perf_counter()
            client.predict(*args, api_name=api)
            times.append(time.perf_counter() - t)
        client.close()
        return times
    finally:
        srv.close()


def report(rows: dict, before: str, after: str) -> str:
    b, a = rows[before], rows[after]
    live = rows.get("tab") == "live"
    what = ("the student Live opens on, its steps and w, digit 3" if live else "pixel-cond, digit 3")
    lines = [f"# {'Live' if live else 'Generate'}'s default grid: the issue's tree against this one "
             f"(bench/default_grid.py{' --tab live' if live else ''})", "",
             f"{rows['machine']}, 2 torch threads; each tree samples its own default grid ({what}, "
             f"{IMAGES} images); network = in-process {'stream' if live else 'pipeline call'}, fastest of "
             f"{rows['repeats']} per round over "
             f"{rows['rounds']} interleaved rounds (median of the rounds' fastest in brackets); end to end = "
             f"gradio_client /{'live' if live else 'generate'} against `python app.py` of the tree, fastest "
             f"(median) of {rows['e2e']}.", "",
             "| tree | default (sampler, steps, w, precision) | network s | end to end s |", "|---|---|---:|---:|"]
    for name, r in ((before, b), (after, a)):
        s = r["settings"]
        model = f"{s['model']}: " if live else ""
        lines.append(f"| {name} | {model}{s['sampler']}, {s['steps']}, w = {s['guidance']:g}, {s['precision']} | "
                     f"{r['network_best']:.3f} ({r['network_median']:.3f}) | "
                     + (f"{r['e2e_best']:.3f} ({r['e2e_median']:.3f})" if r.get("e2e_best") else "—") + " |")
    net = b["network_best"] / a["network_best"]
    target = 2.0 if live else 2.5
    lines += ["", f"Network: **{net:.2f}x** faster (target >= {target:g}x: {'met' if net >= target else 'MISSED'})."]
    if a.get("e2e_best") and b.get("e2e_best"):
        e2e = b["e2e_best"] / a["e2e_best"]
        verdict = "" if live else f" (target >= 2x: {'met' if e2e >= 2 else 'MISSED'})"
        lines.append(f"End to end: **{e2e:.2f}x** faster{verdict}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="a checkout of the issue's tree (e.g. a git worktree)")
    p.add_argument("--after", default=str(ROOT))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--e2e", type=int, default=8, help="end-to-end requests per tree (0: skip)")
    p.add_argument("--tab", choices=sorted(SETTINGS), default="generate", help="whose default grid")
    p.add_argument("--out", default=None, help="default: bench/results/default_grid (live: live_default_grid)")
    a = p.parse_args(argv)
    a.out = a.out or str(RESULTS / ("live_default_grid" if a.tab == "live" else "default_grid"))
    trees = {"before": Path(a.before).resolve(), "after": Path(a.after).resolve()}
    rows: dict = {"machine": cpu_name(), "tab": a.tab, "rounds": a.rounds, "repeats": a.repeats, "e2e": a.e2e,
                  "trees": {k: str(v) for k, v in trees.items()}}
    best = {k: [] for k in trees}
    for _ in range(a.rounds):
        for name, tree in trees.items():
            r = network_round(tree, a.repeats, a.tab)
            best[name].append(min(r["times"]))
            rows.setdefault(name, {})["settings"] = {k: r[k] for k in SETTINGS[a.tab]}
    for name, tree in trees.items():
        rows[name].update(network_best=min(best[name]), network_median=statistics.median(best[name]))
        if a.e2e:
            times = end_to_end(tree, rows[name]["settings"], a.e2e, Path(f"/tmp/default-grid-{name}"), a.tab)
            rows[name].update(e2e_best=min(times), e2e_median=statistics.median(times))
    text = report(rows, "before", "after")
    Path(a.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(a.out + ".md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
