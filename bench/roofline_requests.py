"""Where one request's wall time goes, for bench/roofline.py: Generate (the flagship's defaults, 16 images), Live
(the 4-step student, 16 images) and Pixel vs latent (the Compare tab at the same defaults).

The app is built as `python app.py` builds it (`app.create_demo`: every model, precision "auto", calibrated, so
warm), with its three handlers wrapped by timers before it is built (so gradio serves the wrapped ones: every
request is timed, whoever sends it). Each part is timed where it happens:

  network       forward pre/post hooks (perf_counter) around every score-network (U-Net) call
  decode        hooks around the autoencoder's decoder (latent previews and the final decode)
  bookkeeping   the pipeline's stream (sampler arithmetic, guidance's combination, preconditioning, the step's
                images as tensors) minus network and decode
  images        the handler's image work: every ui/pictures.py function a tab module calls (show_grid, captioned)
  gif           Lab.write_gif (the trajectory GIF, Generate only)
  classifier    Lab.classifier_line (Generate's reading of the grid by the evaluation classifier)
  handler other the handler's own time (inside its generator) minus all of the above
  png           every image the handler yields encoded as gradio's postprocess does (its encoder, PNG), timed on
                in-process drains of the same requests; inside gradio's share in an end-to-end request
  gradio        end-to-end seconds through gradio_client (queue, postprocess, transfer, the client's downloads)
                minus the same request's handler time, minus png (bench/roofline_gradio.py)
The table gives means over the repetitions (means add up: each request's parts sum to its end-to-end time), after
one warm-up request of each kind; medians are kept in the JSON.
"""
from __future__ import annotations

import contextlib
import statistics
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
        self.depth: dict[str, int] = defaultdict(int)      # nesting of timed_function calls, per name

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
    """fn, adding its seconds to timers[name]; a call made inside another timed call of the same name (one picture
    helper calling another) is not counted twice."""
    def run(*args, **kwargs):
        timers.depth[name] += 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers.depth[name] -= 1
            if not timers.depth[name]:
                timers.add(name, time.perf_counter() - start)
    return run


def picture_helpers(module) -> list[str]:
    """The names under which a tab module holds ui/pictures.py's functions (show_grid, captioned, ...)."""
    import inspect

    return sorted(n for n, obj in vars(module).items()
                  if inspect.isfunction(obj) and obj.__module__ == "ui.pictures")


@contextlib.contextmanager
def timed_handlers(timers: Timers, on_done):
    """The tabs' handler methods (HANDLERS) replaced, on their classes, by generators that start `timers` afresh,
    add their own time to timers["handler"] and, when drained, call on_done(request name, split(timers.take())):
    one record per request, whoever drives it. A demo built inside this block registers these with gradio (so a
    request through gradio is timed too). Restored on exit."""
    import functools

    import ui

    def timed_method(original, request):
        @functools.wraps(original)            # gradio reads the original's signature (inspect follows __wrapped__)
        def wrapper(self, *args, **kwargs):
            timers.begin()
            yield from timed_generator(original(self, *args, **kwargs), timers, "handler")
            on_done(request, split(timers.take()))
        return wrapper

    saved = []
    for request, (cls_name, method) in HANDLERS.items():
        cls = getattr(ui, cls_name)
        saved.append((cls, method, cls.__dict__[method]))
        setattr(cls, method, timed_method(cls.__dict__[method], request))
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
    for module in (ui.tab_generate, ui.tab_live, ui.tab_compare):
        for name in picture_helpers(module):
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
    """Seconds to encode every image (array or PIL image) in every update (a tuple of outputs) as gradio's
    postprocess does: PIL image, then gradio's own encoder, PNG (the app's gr.Image format)."""
    from PIL import Image

    from ui.gradio_seam import pil_cache_tools

    encode, _ = pil_cache_tools()
    images = [o for update in outputs for o in (update if isinstance(update, tuple) else (update,))
              if isinstance(o, (np.ndarray, Image.Image))]
    start = time.perf_counter()
    for img in images:
        encode(img if isinstance(img, Image.Image) else Image.fromarray(img), "png")
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


def in_process(req: Request, demo, records: list, seed: int) -> dict:
    """Drain the handler here: its parts (the record its timed wrapper appended to `records`), png (its images
    encoded as gradio would) and wall (the whole drain)."""
    start = time.perf_counter()
    outputs = list(req.handler(demo)(*with_seed(req, seed)))
    wall = time.perf_counter() - start
    return {**records[-1][1], "png": png_seconds(outputs), "wall": wall}


def in_process_phase(demo, records: list, reps: int, log=print) -> dict:
    """{request name: {"settings", "api_name", "args", "runs"}}: one warm-up and `reps` drains of each request."""
    out = {}
    for req in default_requests(demo):
        in_process(req, demo, records, seed=10_000)                 # warm-up (first-call costs)
        runs = [in_process(req, demo, records, seed=k) for k in range(reps)]
        out[req.name] = {"settings": req.settings, "api_name": req.api_name, "args": req.args, "runs": runs}
        log(f"{req.name} in-process: handler {statistics.median(r['handler'] for r in runs) * 1e3:.0f} ms")
    return out


def summarise(runs: list[dict], e2e_runs: list[dict]) -> dict:
    """The breakdown, as means (they add up: the parts of each request sum to its end-to-end time): the parts of
    the requests served through gradio (of the in-process ones when there are none), png from the in-process runs,
    gradio = mean(e2e - handler) - png. Also the median end-to-end and in-process handler times."""
    source = e2e_runs or runs
    out = {k: statistics.fmean(r[k] for r in source) for k in split({})}
    out["png"] = statistics.fmean(r["png"] for r in runs)
    out["wall"] = statistics.fmean(r["wall"] for r in runs)
    out["handler_in_process_median"] = statistics.median(r["handler"] for r in runs)
    if e2e_runs:
        out["e2e"] = statistics.fmean(r["e2e"] for r in e2e_runs)
        out["e2e_median"] = statistics.median(r["e2e"] for r in e2e_runs)
        out["gradio"] = statistics.fmean(r["e2e"] - r["handler"] for r in e2e_runs) - out["png"]
    return out


def breakdown_table(requests: dict) -> list[str]:
    """Markdown: one row per part, one column per request, ms and % of the end-to-end time (or of the in-process
    wall time when gradio was skipped)."""
    names = list(requests)
    meds = [requests[n]["summary"] for n in names]
    totals = [m.get("e2e", m["wall"]) for m in meds]
    lines = [f"- **{n}**: {requests[n]['settings']}; mean of {len(requests[n]['e2e_runs'] or requests[n]['runs'])} "
             "requests" + (f" (median end to end {requests[n]['summary']['e2e_median'] * 1e3:.0f} ms)"
                           if requests[n]['e2e_runs'] else "") for n in names]
    lines += ["", "| part | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for part in PARTS:
        if not any(part in m for m in meds):
            continue
        lines.append(f"| {LABELS[part]} | " + " | ".join(
            f"{m[part] * 1e3:.1f} ms ({100 * m[part] / t:.0f}%)" if part in m else "n/a"
            for m, t in zip(meds, totals)) + " |")
    lines.append("| handler, total | " + " | ".join(f"{m['handler'] * 1e3:.1f} ms" for m in meds) + " |")
    lines.append("| **end to end** | " + " | ".join(
        f"**{m['e2e'] * 1e3:.1f} ms**" if "e2e" in m else f"{m['wall'] * 1e3:.1f} ms (in-process)" for m in meds)
        + " |")
    return lines

