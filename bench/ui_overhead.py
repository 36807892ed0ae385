"""The UI's own overhead (issue 24 item 3): for Generate (default, 16 images), Live (4-step student, 16 images) and
Pixel vs latent (default, 16 images), where a request's wall time goes and how many image bytes it sends.

In-process (the demo built as `python app.py` builds it, each handler iterated as gradio would):
- handler wall time, split into the score networks (forward hooks on every score U-Net), the autoencoder's decoder
  and the evaluation classifier (hooks too) and the rest (previews, grids, GIF frames, the GIF, text);
- gradio's postprocessing of every update (each output component's `postprocess`: numpy -> PNG in gradio's cache);
- updates per request, and the bytes of the image files those updates point at (all of them / distinct files).
End to end: `python app.py` launched on a free port, each event called through gradio_client (files downloaded, as a
browser fetches them), time to the complete result.

Several code trees in one run, interleaved round by round (variants are compared only within one run):

    flock /tmp/bench.lock python -m bench.ui_overhead --repo /tmp/before-ui --repo . [--rounds 3] [--repeats 5]

Each --repo is run in its own process with that tree first on sys.path (and its app.py for the end-to-end part);
the weights come from --weights-dir (default: this tree's weights/). Prints a table, writes
bench/results/ui_overhead.{md,json}. The CPU is named and the load average printed beside every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TABS = ("generate", "live", "compare")


# ---------------------------------------------------------------- worker: one code tree, in its own process

class Timer:
    """Seconds spent inside the hooked modules' forward (outermost calls only)."""

    def __init__(self):
        self.total, self._depth, self._t = 0.0, 0, 0.0

    def pre(self, *_):
        if self._depth == 0:
            self._t = time.perf_counter()
        self._depth += 1

    def post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.total += time.perf_counter() - self._t

    def hook(self, module) -> None:
        module.register_forward_pre_hook(self.pre)
        module.register_forward_hook(self.post)


def _requests(demo, dp):
    """{tab: (handler, args, api_name)} at the app's defaults, 16 images of digit 3, seed 0."""
    d = dp.defaults_for("pixel-cond")
    tabs = demo.tabs
    live = tabs["LiveTab"]
    return {"generate": (tabs["GenerateTab"].generate, ("pixel-cond", 3, d.sampler, d.steps, d.guidance, 0, 16),
                         "generate"),
            "live": (live.live, (3, 4, live.default_guidance, 0, 16), "live"),
            "compare": (tabs["CompareTab"].compare, (3, d.sampler, d.steps, d.guidance, 0, 16), "compare")}


def _outputs(demo, api_name: str) -> list:
    fn = next(f for f in demo.fns.values() if getattr(f, "api_name", None) == api_name)
    return list(fn.outputs)


def _postprocess(components, values) -> tuple[float, list[tuple[str, int]]]:
    """gradio's postprocessing of one update; (seconds, [(file path, bytes)] of the image/file outputs)."""
    import gradio as gr

    seconds, files = 0.0, []
    for comp, value in zip(components, values):
        if value is None or (isinstance(value, dict) and value.get("__type__") == "update"):
            continue
        t = time.perf_counter()
        out = comp.postprocess(value)
        seconds += time.perf_counter() - t
        if isinstance(comp, (gr.Image, gr.File)) and out is not None and getattr(out, "path", None):
            files.append((out.path, os.path.getsize(out.path)))
    return seconds, files


def measure_in_process(demo, dp, repeats: int) -> dict:
    lab = demo.lab
    net, dec, cls = Timer(), Timer(), Timer()                 # cls: seconds in lab.classifier_line
    from diffusion.score import networks
    for pipe in [*lab.pipelines.values(), *getattr(lab, "students", {}).values()]:
        for m in networks(pipe.score_model):
            net.hook(m)
        if pipe.is_latent:
            dec.hook(pipe.autoencoder.decoder)
    line = lab.classifier_line                                 # the evaluation classifier's reading (Generate)

    def timed_line(*a, **k):
        t = time.perf_counter()
        try:
            return line(*a, **k)
        finally:
            cls.total += time.perf_counter() - t
    lab.classifier_line = timed_line
    out = {}
    for tab, (handler, args, api) in _requests(demo, dp).items():
        comps = _outputs(demo, api)
        list(handler(*args))                                   # warm-up
        rows = []
        for _ in range(repeats):
            for t in (net, dec, cls):
                t.total = 0.0
            handler_s = post_s = 0.0
            updates, files = 0, []
            it = handler(*args)
            while True:
                t0 = time.perf_counter()
                try:
                    values = next(it)
                except StopIteration:
                    handler_s += time.perf_counter() - t0
                    break
                handler_s += time.perf_counter() - t0
                updates += 1
                s, f = _postprocess(comps, values)
                post_s += s
                files += f
            rows.append(dict(handler_s=handler_s, network_s=net.total, decoder_s=dec.total, classifier_s=cls.total,
                             rest_s=handler_s - net.total - dec.total - cls.total, postprocess_s=post_s,
                             updates=updates, image_bytes=sum(b for _, b in files),
                             distinct_image_bytes=sum(dict(files).values())))
        out[tab] = {k: (min if k.endswith("_s") else statistics.median)(r[k] for r in rows) for k in rows[0]}
    return out


def measure_end_to_end(repo: Path, weights: str, args_of: dict, repeats: int) -> dict:
    """Each event through gradio_client against `python app.py` of `repo`: seconds to the complete result, with the
    image files downloaded (as a browser fetches them; gradio_client fetches one after another) and without."""
    from gradio_client import Client

    from ui.server import free_port
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tempfile.NamedTemporaryFile("w+", prefix="ui_overhead_", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, str(repo / "app.py"), "--port", str(port), "--weights-dir", weights],
                            cwd=repo, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        from bench.app_latency import wait_ready   # here, not at the top: it imports this tree's diffusion package,
        wait_ready(url, proc)                       # which a worker measuring another tree must not load first
        clients = {"end_to_end_s": Client(url, verbose=False),
                   "end_to_end_no_download_s": Client(url, verbose=False, download_files=False)}
        out = {tab: {} for tab in args_of}
        for tab, (args, api) in args_of.items():
            for key, client in clients.items():
                client.predict(*args, api_name=f"/{api}")      # warm-up
            times = {key: [] for key in clients}
            for _ in range(repeats):                           # the two clients interleaved
                for key, client in clients.items():
                    t = time.perf_counter()
                    client.predict(*args, api_name=f"/{api}")
                    times[key].append(time.perf_counter() - t)
            out[tab] = {key: min(v) for key, v in times.items()}
        return out
    finally:
        from bench.soak import stop   # here, not at the top: the worker runs this file with another tree on sys.path
        stop(proc, timeout=20)


def worker(repo: Path, weights: str, repeats: int, e2e_repeats: int) -> dict:
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    import torch

    import diffusion.pipeline as dp
    from ui.server import create_demo
    load = os.getloadavg()[0]
    demo = create_demo(weights_dir=weights)
    args_of = {tab: (args, api) for tab, (_, args, api) in _requests(demo, dp).items()}
    inproc = measure_in_process(demo, dp, repeats)            # first: gradio_client's threads would compete
    e2e = measure_end_to_end(repo, weights, args_of, e2e_repeats) if e2e_repeats else {}
    for tab in inproc:
        for key in ("end_to_end_s", "end_to_end_no_download_s"):
            inproc[tab][key] = e2e.get(tab, {}).get(key, float("nan"))
    return dict(tabs=inproc, load_before=load, load_after=os.getloadavg()[0], threads=torch.get_num_threads(),
                cpu=dp.cpu_name())


# ---------------------------------------------------------------- driver: interleave trees, aggregate, report

COLUMNS = [("handler_s", "handler", 1000), ("network_s", "network", 1000), ("decoder_s", "decoder", 1000),
           ("classifier_s", "classifier", 1000), ("rest_s", "rest", 1000), ("postprocess_s", "PNG/gradio pp", 1000),
           ("updates", "updates", 1), ("image_bytes", "image kB sent", 1e-3),
           ("distinct_image_bytes", "distinct kB", 1e-3), ("end_to_end_s", "end to end", 1000),
           ("end_to_end_no_download_s", "e2e, no download", 1000)]


def table(summary: dict, labels: list[str]) -> str:
    head = "| tab | tree | " + " | ".join(f"{name}{' (ms)' if scale == 1000 else ''}" for _, name, scale in COLUMNS)
    lines = [head + " | load |", "|" + "---|" * (len(COLUMNS) + 3)]
    for tab in TABS:
        for label in labels:
            row = summary[label]["tabs"][tab]
            cells = [f"{row[k] * scale:.0f}" if scale != 1 else f"{row[k]:.0f}" for k, _, scale in COLUMNS]
            lines.append(f"| {tab} | {label} | " + " | ".join(cells) + f" | {summary[label]['load']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", action="append", help="a code tree to measure (repeat: interleaved; default: this one)")
    p.add_argument("--label", action="append", help="a name per --repo (default: the folder names)")
    p.add_argument("--weights-dir", default=str(ROOT / "weights"))
    p.add_argument("--rounds", type=int, default=3, help="each tree is measured once per round, trees interleaved")
    p.add_argument("--repeats", type=int, default=5, help="in-process requests per tab per round (median)")
    p.add_argument("--e2e-repeats", type=int, default=5, help="gradio_client requests per tab per round (0: skip)")
    p.add_argument("--out", default=str(RESULTS / "ui_overhead"), help="writes OUT.md and OUT.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker).resolve(), args.weights_dir, args.repeats, args.e2e_repeats)))
        return
    repos = [Path(r).resolve() for r in (args.repo or [ROOT])]
    labels = args.label or [r.name if r != ROOT else "this tree" for r in repos]
    if len(labels) != len(repos) or len(set(labels)) != len(labels):
        p.error("--label: give one distinct name per --repo")
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for k in range(args.rounds):
        for repo, label in zip(repos, labels):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(repo), "--weights-dir",
                   args.weights_dir, "--repeats", str(args.repeats), "--e2e-repeats", str(args.e2e_repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
            if done.returncode:
                sys.exit(f"{label}: the worker failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs[label].append(run)
            g = run["tabs"]["generate"]
            print(f"round {k} {label:>12}: generate handler {g['handler_s'] * 1000:.0f} ms, end to end "
                  f"{g['end_to_end_s'] * 1000:.0f} ms, load {run['load_before']:.2f}", flush=True)
    summary = {}
    for label, rs in runs.items():
        tabs = {tab: {k: (min if k.endswith("_s") else statistics.median)(r["tabs"][tab][k] for r in rs)
                      for k in rs[0]["tabs"][tab]} for tab in TABS}
        summary[label] = dict(tabs=tabs, load=statistics.mean(r["load_before"] for r in rs), rounds=len(rs),
                              repo=str(repos[labels.index(label)]))
    first = runs[labels[0]][0]
    header = (f"# The UI's own overhead (bench/ui_overhead.py)\n\n{first['cpu']}, {first['threads']} torch threads, "
              f"{os.cpu_count()} CPU cores; {args.rounds} rounds (trees interleaved) x {args.repeats} in-process and "
              f"{args.e2e_repeats} end-to-end requests per tab; times: the fastest request over all rounds (load only "
              f"slows a request down; the machine is shared), the split columns each their own fastest; counts and "
              f"bytes: medians; load = 1-min load average at each round's start (mean).\n\nGenerate: pixel-cond at its default sampling, digit 3, "
              f"16 images. Live: the 4-step student, 16 images. Compare: pixel-cond and latent-cond at pixel-cond's "
              f"default sampling, 16 images. handler = in-process wall time of iterating the handler = network + "
              f"decoder + classifier + rest; PNG/gradio pp = each output component's postprocess over all updates "
              f"(outside the handler); image kB sent = bytes of the image files the updates point at; end to end = "
              f"gradio_client against `python app.py`, to the complete result, files downloaded (one after another, as "
              f"gradio_client does); e2e, no download: the same without fetching the files.\n")
    text = header + "\n" + table(summary, labels) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(dict(cpu=first["cpu"], threads=first["threads"], summary=summary,
                                                         runs=runs), indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
