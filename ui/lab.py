"""The state the tabs share: loaded pipelines and where they came from, the evaluation classifier, the time limit per
request, the cost model and the worst-case estimates admission reads, the shipped MNIST test digits, a temp dir. The
run loop, the stop guard and admission's message are ui/run_loop.py's; `Lab.run` is that loop under this app's time
limit, and `Lab.guard_nfe` puts its guard before every network evaluation."""
from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from diffusion.batching import NetworkBroker
from diffusion.cost import CostModel, seconds_per_nfe, work_batch
from diffusion.hub import PIPELINE_NAMES
from diffusion.images import gif_bytes
from diffusion.samplers import SAMPLERS, SamplerSpec, sampler_spec
from diffusion.score import networks
from diffusion.sde import VESDE

from .gradio_seam import current_event
from .pictures import PREVIEW_FRAMES
from .run_loop import PREVIEW_INTERVAL, admit, check_time, guard  # noqa: F401  (PREVIEW_INTERVAL: read here too)
from .run_loop import run as run_steps
from .validation import MAX_GUIDANCE, MAX_SEED, MAX_STEPS, bad, check_choice, check_float, check_int

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_PATH = ASSETS / "mnist_test_sample.npz"
MODEL_NAMES = PIPELINE_NAMES                   # the registry's score models, a live view (diffusion/registry.py)
DEFAULT_MAX_SECONDS = 120.0   # a request that runs longer is stopped (bounded work on a shared CPU)
BROKER_MAX_ROWS = 256         # the largest batched pass (rows): bf16 per-row cost is flat from ~128 rows (2-core EPYC)


def visitor_of_this_event():
    """Who a network call works for, as the broker shares passes between visitors: the event's browser session (a
    plain /call has none: the event itself); None outside an event."""
    event_id, session = current_event()
    return session or event_id


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def param_count(module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def preview_every(sampler: str, steps: int) -> int:
    """Decode every k-th step so a run shows at most PREVIEW_FRAMES previews (every step of an adaptive solver)."""
    return 1 if sampler_spec(sampler).adaptive else max(1, math.ceil(steps / PREVIEW_FRAMES))


def new_broker() -> NetworkBroker:
    """The app's broker: its network calls batched and shared between visitors (diffusion/batching.py), owned by the
    event's browser session and accounted per event."""
    return NetworkBroker(owner=visitor_of_this_event, account=lambda: current_event()[0], max_rows=BROKER_MAX_ROWS)


class Lab:
    """Shared state (see the module docstring); `calibrate` times each model once (which also warms it up).
    `broker`: the app's (`new_broker()`, made here if not given; ui/server.py builds the app on its thread)."""

    def __init__(self, pipelines: dict, messages=(), *, classifier=None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 sample_path: Path = SAMPLE_PATH, calibrate: bool = True, broker: NetworkBroker | None = None):
        self.pipelines, self.messages, self.classifier = dict(pipelines), list(messages), classifier
        self.max_seconds = float(max_seconds)
        any_model = next(iter(self.pipelines.values()), None)
        self.sde = any_model.score_model.sde if any_model is not None else VESDE(25.0)
        with np.load(sample_path, allow_pickle=False) as d:
            self.test_images = torch.from_numpy(d["images"].astype(np.float32) / 255.0)   # (100, 28, 28)
            self.test_labels = d["labels"].astype(int)
        self.tmp = Path(tempfile.mkdtemp(prefix="mnist-diffusion-lab-"))
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.cost = CostModel()
        self.call_floor: dict[str, float] = {}    # images a batch-of-one call costs as (per-call overhead)
        self.calibrated = bool(calibrate)         # the Live tab times its students too
        # concurrent jobs' network calls are batched and shared fairly between visitors (diffusion/batching.py); the
        # app's other torch work runs on the broker's thread too (broker.run): one OpenMP team, never throttled
        self.running, self._running_lock = 0, threading.Lock()     # jobs inside `run` now (the preview throttle)
        self.broker = broker or new_broker()
        if calibrate:
            self.broker.run(self._calibrate)
        self.serve(self.pipelines)

    def _calibrate(self) -> None:
        for name, pipe in self.pipelines.items():
            decode = pipe.autoencoder.decode if pipe.is_latent else None
            rate = self.cost.measure(name, pipe.score_model, decode)
            # the same rule as the rate's (the fastest of a few calls: load can only slow a call down), so a
            # busy CPU at start-up cannot inflate the per-call overhead that worst-case admission adds
            one = seconds_per_nfe(pipe.score_model, 1, decoder=decode, reps=self.cost.reps, fastest=True)
            self.call_floor[name] = max(1.0, one / rate)

    def serve(self, pipelines: dict) -> None:
        """Put every score network of `pipelines` (both of an autoguided pair) behind the guard, which then runs
        before every network evaluation in every handler, and on the broker."""
        for pipe in pipelines.values():
            for net in networks(pipe.score_model):
                self.broker.install(net)
                net.register_forward_pre_hook(self.guard_nfe)
            autoencoder = pipe.autoencoder if pipe.is_latent else None
            if autoencoder is not None and "decode" not in vars(autoencoder):     # once per (shared) autoencoder
                autoencoder.decode = functools.partial(self.broker.run, autoencoder.decode)

    # -- guards ------------------------------------------------------------------------------------
    def pipeline(self, name: str, *, conditional: bool | None = None, param: str = "model"):
        check_choice(param, name, MODEL_NAMES)
        if name not in self.pipelines:
            why = next((m for m in self.messages if m.startswith(name + ":")), "no weights were loaded")
            raise gr.Error(f"{param}: {name} is not available in this app ({why}).", title="Model unavailable",
                           print_exception=False)
        pipe = self.pipelines[name]
        if conditional and not pipe.conditional:
            raise bad(param, "must be a class-conditional model (pixel-cond or latent-cond)", name)
        return pipe

    @staticmethod
    def check_sampling(sampler, steps, guidance, seed):
        return (check_choice("sampler", sampler, list(SAMPLERS)), check_int("steps", steps, 1, MAX_STEPS),
                check_float("guidance", guidance, 0.0, MAX_GUIDANCE), check_int("seed", seed, 0, MAX_SEED))

    def work_batch(self, pipe, n: int, guidance: float) -> int:
        return work_batch(n, pipe.guided, guidance)

    @staticmethod
    def guidance_note(pipe, guidance: float, schedule=None) -> str:
        """How a status line names w: classifier-free guidance, autoguidance (an unconditional model with a guide,
        diffusion.autoguidance), or n/a; and where along sigma it applies (`schedule`, default: the model's own)."""
        schedule = pipe.defaults.schedule if schedule is None else schedule
        where = "" if schedule.constant or guidance == 1 else f" ({schedule.describe(short=True)})"
        if pipe.conditional:
            return f"guidance {guidance:g}{where}"
        return f"autoguidance {guidance:g}{where}" if pipe.guided else f"guidance {guidance:g} (n/a)"

    def estimate_seconds(self, name: str, sampler: str | SamplerSpec, steps: int, n: int, guidance: float, *,
                         worst: bool = False, runs_of_one: int = 0) -> float | None:
        """Seconds for sampling `n` images (plus `runs_of_one` more runs of one image each, e.g. a strip), guidance's
        doubled batch included. worst=True: an adaptive solver at its NFE cap, each small call at least its
        per-call overhead (`call_floor`); else the typical NFE, as shown beside the controls. `sampler`: a name in
        SAMPLERS, or a spec kept elsewhere (diffusion.editing.SDEDIT)."""
        spec = sampler if isinstance(sampler, SamplerSpec) else sampler_spec(sampler)
        nfe = ((spec.max_nfe or spec.typical_nfe) if worst else spec.typical_nfe) if spec.adaptive else \
            spec.nfe_for(steps)
        pipe = self.pipelines[name]
        floor = self.call_floor.get(name, 1.0) if worst else 1.0
        images = max(self.work_batch(pipe, n, guidance), floor) + \
            runs_of_one * max(self.work_batch(pipe, 1, guidance), floor)
        return self.cost.estimate(name, nfe, images)

    def refuse_runaway(self, name, sampler, steps, n, guidance, *, runs_of_one: int = 0,
                       also_seconds: float = 0.0) -> float:
        """Admission (ui/run_loop.py's `admit`): refuse a request whose worst case (see estimate_seconds; plus
        `also_seconds` of other work in the same request) exceeds the time limit. Returns the worst-case seconds
        (0 when never timed)."""
        est = self.estimate_seconds(name, sampler, steps, n, guidance, worst=True, runs_of_one=runs_of_one)
        spec = sampler if isinstance(sampler, SamplerSpec) else sampler_spec(sampler)
        why = f" ({spec.name} may take up to {spec.max_nfe} network evaluations)" if spec.adaptive and spec.max_nfe \
            else ""
        return admit((est or 0.0) + also_seconds, self.max_seconds, worst=f" at worst{why}")

    def check_time(self, elapsed: float):
        check_time(elapsed, self.max_seconds)

    def run(self, steps, **kwargs):
        """ui/run_loop.py's `run` under this app's time limit (a job's own work: not its waits for other visitors'
        network rows): yields (step, due). Streamed updates are throttled to PREVIEW_INTERVAL times the number of
        jobs in this loop at the moment (unless the tab sets its own `interval`): the app as a whole streams ~10
        updates a second, however many visitors share it, since each update costs the server Python time (PNG
        encoding, gradio's messages) that the jobs would otherwise spend waiting for each other."""
        kwargs.setdefault("interval", lambda: PREVIEW_INTERVAL * max(1, self.running))
        with self._running_lock:
            self.running += 1
        try:
            yield from run_steps(steps, self.max_seconds, excused=self.waited_for_others, **kwargs)
        finally:
            with self._running_lock:
                self.running -= 1

    def waited_for_others(self) -> float:
        """Seconds the running event has waited on the broker for other visitors' rows (0 outside an event)."""
        event_id = current_event()[0]
        return self.broker.waited_for_others(event_id) if event_id is not None else 0.0

    def guard_nfe(self, module=None, args=None):
        """Before every network evaluation (a forward pre-hook on every score network): the run loop's `guard`
        (cancelled, client gone, result never read, past the time limit since the event's first guarded step, its
        waits for others excused). So a job stops within one evaluation, whichever handler or tab runs it, between
        its loop's steps too."""
        guard(self.max_seconds, self.waited_for_others)
        return None

    # -- shared outputs ----------------------------------------------------------------------------
    def write_gif(self, frames, stem: str) -> str:
        for old in self.tmp.iterdir():                      # keep the temp dir small: drop files > 1 h old
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.tmp / uuid.uuid4().hex
        folder.mkdir()
        path = folder / f"{stem}.gif"
        path.write_bytes(gif_bytes(frames, duration_ms=100, final_hold_ms=1500))
        return str(path)

    def classifier_line(self, images: torch.Tensor, digit: int | None) -> str:
        if self.classifier is None:
            return ""
        from diffusion.metrics import classify
        preds, _ = self.broker.run(classify, self.classifier, images[:, None])
        if digit is None:
            counts = np.bincount(preds.numpy(), minlength=10)
            return " · evaluation classifier reads: " + ", ".join(f"{d}×{c}" for d, c in enumerate(counts) if c)
        hits = int((preds == digit).sum())
        return f" · evaluation classifier reads {hits}/{len(preds)} as a {digit}"
