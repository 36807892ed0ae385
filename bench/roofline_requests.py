"""Where one request's wall time goes, for bench/roofline.py: Generate (the flagship's defaults, 16 images), Live
(the 4-step student, 16 images) and Pixel vs latent (the Compare tab at the same defaults).

The app is built as `python app.py` builds it (`app.create_demo`: every model, precision "auto", calibrated, so
warm), its three handlers wrapped by timers before it is built (so gradio serves the wrapped ones), and run two ways:
in-process (the handler generator drained here) and end to end through gradio_client against the same app launched
on loopback. Each part is timed where it happens:

  network       forward pre/post hooks (perf_counter) around every score-network (U-Net) call
  decode        hooks around the autoencoder's decoder (latent previews and the final decode)
  bookkeeping   the pipeline's stream (sampler arithmetic, guidance's combination, preconditioning, the step's
                images as tensors) minus network and decode
  images        the handler's image work: ui/pictures.py's show_grid and captioned, as the tab modules call them
  gif           Lab.write_gif (the trajectory GIF, Generate only)
  classifier    Lab.classifier_line (Generate's reading of the grid by the evaluation classifier)
  handler other the handler's own time (inside its generator) minus all of the above
  png           every image the handler yields encoded as gradio's postprocess does (its encoder, PNG), timed
                in-process; inside gradio's share in the end-to-end run
  gradio        end-to-end seconds through gradio_client (queue, postprocess, transfer, the client's downloads)
                minus the same request's handler time, minus png
Figures are medians over the repetitions (in-process and gradio requests interleaved, one warm-up of each first).
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

PARTS = ("network", "decode", "bookkeeping", "images", "gif", "classifier", "handler other", "png", "gradio")
LABELS = {"network": "network (score U-Net forward)", "decode": "autoencoder decode",
          "bookkeeping": "sampler + guidance bookkeeping", "images": "preview images (ui/pictures.py)",
          "gif": "GIF", "classifier": "classifier check", "handler other": "handler, other",
          "png": "PNG encoding (gradio's encoder)", "gradio": "gradio (queue, transfer, client)"}
HANDLERS = {"Generate": ("GenerateTab", "generate"), "Live": ("LiveTab", "live"),
            "Pixel vs latent": ("CompareTab", "compare")}


class Timers:
    """Seconds per named part, summed since `begin()`; `take()` returns them and starts over."""

    def __init__(self):
        self.parts: dict[str, float] = defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] += seconds

    def begin(self) -> None:
        self.parts = defaultdict(float)

    def take(self) -> dict[str, float]:
        parts, self.parts = dict(self.parts), defaultdict(float)
        return parts


def timed_generator(gen, timers: Timers, name: str):
    """Yield what `gen` yields, adding the seconds spent inside it (not in the consumer) to timers[name]."""
    while True:
        start = time.perf_counter()
        try:
            item = next(gen)
        except StopIteration:
            timers.add(name, time.perf_counter() - start)
            return
        timers.add(name, time.perf_counter() - start)
        yield item


def timed_function(fn, timers: Timers, name: str):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers.add(name, time.perf_counter() - start)
    return run


@contextlib.contextmanager
def timed_handlers(timers: Timers):
    """The tabs' handler methods (HANDLERS) replaced, on their classes, by generators that add their own time to
    timers["handler"]; a demo built inside this block registers those with gradio. Restored on exit."""
    import functools

    import ui

    def timed_method(original):
        @functools.wraps(original)            # gradio reads the original's signature (inspect follows __wrapped__)
        def wrapper(self, *args, **kwargs):
            yield from timed_generator(original(self, *args, **kwargs), timers, "handler")
        return wrapper

    saved = []
    for cls_name, method in HANDLERS.values():
        cls = getattr(ui, cls_name)
        saved.append((cls, method, cls.__dict__[method]))
        setattr(cls, method, timed_method(cls.__dict__[method]))
    try:
        yield
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)


@contextlib.contextmanager
def instrument(lab, timers: Timers):
    """Timers on every part of the module docstring's list, for every pipeline of `lab` (the students too)."""
    import ui.tab_compare
    import ui.tab_generate
    import ui.tab_live
    from diffusion.score import networks

    handles, patched, started = [], [], {}

    def hook_pair(module, name):
        def pre(mod, args):
            started[id(mod)] = time.perf_counter()

        def post(mod, args, output):
            timers.add(name, time.perf_counter() - started.pop(id(mod)))
        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    def patch(owner, attr, value):
        patched.append((owner, attr, owner.__dict__.get(attr, _ABSENT)))
        setattr(owner, attr, value)

    decoders = set()
    for pipe in {**lab.pipelines, **getattr(lab, "students", {})}.values():
        for net in networks(pipe.score_model):
            hook_pair(net, "network")
        if pipe.is_latent and id(pipe.autoencoder) not in decoders:
            decoders.add(id(pipe.autoencoder))
            hook_pair(pipe.autoencoder.decoder, "decode")
        stream = pipe.stream
        patch(pipe, "stream", lambda *a, _s=stream, **k: timed_generator(_s(*a, **k), timers, "stream"))
    for module, names in ((ui.tab_generate, ("show_grid", "captioned")), (ui.tab_live, ("show_grid",)),
                          (ui.tab_compare, ("show_grid",))):
        for name in names:
            patch(module, name, timed_function(getattr(module, name), timers, "images"))
    patch(lab, "write_gif", timed_function(lab.write_gif, timers, "gif"))
    patch(lab, "classifier_line", timed_function(lab.classifier_line, timers, "classifier"))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, attr, old in reversed(patched):
            if old is _ABSENT:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)


_ABSENT = object()


def png_seconds(outputs: list) -> float:
    """Seconds to encode every image array in every update (a tuple of outputs) as gradio's postprocess does."""
    from PIL import Image

    from ui.gradio_seam import pil_cache_tools

    encode, _ = pil_cache_tools()
    arrays = [o for update in outputs for o in (update if isinstance(update, tuple) else (update,))
              if isinstance(o, np.ndarray)]
    start = time.perf_counter()
    for a in arrays:
        encode(Image.fromarray(a), "png")
    return time.perf_counter() - start


def split(parts: dict) -> dict:
    """Raw timers of one request -> the module docstring's parts (bookkeeping and handler other by difference)."""
    get = parts.get
    stream, handler = get("stream", 0.0), get("handler", 0.0)
    out = {k: get(k, 0.0) for k in ("network", "decode", "images", "gif", "classifier")}
    out["bookkeeping"] = stream - out["network"] - out["decode"]
    out["handler other"] = handler - stream - out["images"] - out["gif"] - out["classifier"]
    out["handler"] = handler
    return out


@dataclass
class Request:
    name: str                     # "Generate" | "Live" | "Pixel vs latent"
    args: list                    # the handler's arguments, as a person's default settings give them
    api_name: str
    settings: str                 # what runs, in words

    def handler(self, demo):
        cls_name, method = HANDLERS[self.name]
        return getattr(demo.tabs[cls_name], method)


def default_requests(demo) -> list[Request]:
    """The three requests at a person's defaults, for the models this app loaded."""
    import diffusion.pipeline as dp
    from diffusion.registry import FLAGSHIP, pixel_and_latent
    from ui.controls import DEFAULT_DIGIT, DEFAULT_IMAGES, DEFAULT_SEED
    from ui.tab_live import DEFAULT_LIVE_IMAGES

    lab, d = demo.lab, dp.defaults_for(FLAGSHIP)
    out = []
    if FLAGSHIP in lab.pipelines:
        pipe = lab.pipelines[FLAGSHIP]
        out.append(Request("Generate", [FLAGSHIP, DEFAULT_DIGIT, d.sampler, d.steps, d.guidance, DEFAULT_SEED,
                                        DEFAULT_IMAGES], "/generate",
                           f"{FLAGSHIP}, {d.sampler} {d.steps} steps, w = {d.guidance:g}, {DEFAULT_IMAGES} images, "
                           f"{pipe.compute_precision}"))
    live = demo.tabs["LiveTab"]
    if live.runners:
        steps = 4 if 4 in live.runners else max(live.runners)
        r = live.runners[steps]
        out.append(Request("Live", [DEFAULT_DIGIT, steps, live.default_guidance, DEFAULT_SEED, DEFAULT_LIVE_IMAGES],
                           "/live", f"{r.name}, {r.sampler} {steps} steps, w = {live.default_guidance:g}, "
                                    f"{DEFAULT_LIVE_IMAGES} images, {r.pipe.compute_precision}"))
    if set(pixel_and_latent()) <= set(lab.pipelines):
        out.append(Request("Pixel vs latent", [DEFAULT_DIGIT, d.sampler, d.steps, d.guidance, DEFAULT_SEED,
                                               DEFAULT_IMAGES], "/compare",
                           f"{' and '.join(pixel_and_latent())} in lockstep, {d.sampler} {d.steps} steps, "
                           f"w = {d.guidance:g}, {DEFAULT_IMAGES} images each, "
                           + " / ".join(lab.pipelines[n].compute_precision for n in pixel_and_latent())))
    return out


def with_seed(req: Request, seed: int) -> list:
    """The request's arguments with its seed (the same position in every handler: after guidance) set to `seed`."""
    args = list(req.args)
    args[{"Generate": 5, "Live": 3, "Pixel vs latent": 4}[req.name]] = seed
    return args


def in_process(req: Request, demo, timers: Timers, seed: int) -> dict:
    """Drain the handler here: its parts, png (its images encoded), and wall (the whole drain)."""
    timers.begin()
    start = time.perf_counter()
    outputs = list(req.handler(demo)(*with_seed(req, seed)))
    wall = time.perf_counter() - start
    parts = split(timers.take())
    return {**parts, "png": png_seconds(outputs), "wall": wall}


def through_gradio(req: Request, client, timers: Timers, seed: int) -> dict:
    """One end-to-end request through gradio_client: e2e seconds and the same request's handler time."""
    timers.begin()
    start = time.perf_counter()
    client.submit(*with_seed(req, seed), api_name=req.api_name).result()
    e2e = time.perf_counter() - start
    return {"e2e": e2e, "handler": split(timers.take())["handler"]}


def summarise(runs: list[dict], e2e_runs: list[dict]) -> dict:
    """Medians of each part over the in-process runs; gradio = median(e2e - handler) - png."""
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if e2e_runs:
        med["e2e"] = statistics.median(r["e2e"] for r in e2e_runs)
        med["gradio"] = statistics.median(r["e2e"] - r["handler"] for r in e2e_runs) - med["png"]
    return med


def measure_requests(weights_dir, reps: int = 5, gradio: bool = True, log=print) -> dict:
    """{request name: {"settings", "runs", "e2e_runs", "median"}} for default_requests, on the app built from
    `weights_dir` (see the module docstring)."""
    import app
    from ui.server import free_port

    timers = Timers()
    results = {}
    with timed_handlers(timers):
        demo = app.create_demo(weights_dir=weights_dir)
        client = None
        try:
            if gradio:
                from gradio_client import Client

                port = free_port()
                demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs("127.0.0.1", port))
                client = Client(f"http://127.0.0.1:{port}/", verbose=False,
                                download_files=tempfile.mkdtemp(prefix="roofline-dl-"))
            with instrument(demo.lab, timers):
                for req in default_requests(demo):
                    in_process(req, demo, timers, seed=10_000)              # warm-up (first-call costs)
                    if client is not None:
                        through_gradio(req, client, timers, seed=10_000)
                    runs, e2e_runs = [], []
                    for k in range(reps):                                  # interleaved
                        runs.append(in_process(req, demo, timers, seed=k))
                        if client is not None:
                            e2e_runs.append(through_gradio(req, client, timers, seed=k))
                    results[req.name] = {"settings": req.settings, "runs": runs, "e2e_runs": e2e_runs,
                                         "median": summarise(runs, e2e_runs)}
                    m = results[req.name]["median"]
                    log(f"{req.name}: handler {m['handler'] * 1e3:.0f} ms (network {m['network'] * 1e3:.0f} ms)"
                        + (f", end to end {m['e2e'] * 1e3:.0f} ms" if "e2e" in m else ""))
        finally:
            if client is not None:
                demo.close()
    return results


def breakdown_table(requests: dict) -> list[str]:
    """Markdown: one row per part, one column per request, ms and % of the end-to-end time (or of the in-process
    wall time when gradio was skipped)."""
    names = list(requests)
    meds = [requests[n]["median"] for n in names]
    totals = [m.get("e2e", m["wall"]) for m in meds]
    lines = [f"- **{n}**: {requests[n]['settings']}; median of {len(requests[n]['runs'])} requests" for n in names]
    lines += ["", "| part | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for part in PARTS:
        if not any(part in m for m in meds):
            continue
        lines.append(f"| {LABELS[part]} | " + " | ".join(
            f"{m[part] * 1e3:.1f} ms ({100 * m[part] / t:.0f}%)" if part in m else "n/a"
            for m, t in zip(meds, totals)) + " |")
    lines.append("| handler, total (in-process) | " + " | ".join(f"{m['handler'] * 1e3:.1f} ms" for m in meds) + " |")
    lines.append("| **end to end** | " + " | ".join(
        f"**{m['e2e'] * 1e3:.1f} ms**" if "e2e" in m else f"{m['wall'] * 1e3:.1f} ms (in-process)" for m in meds)
        + " |")
    return lines
