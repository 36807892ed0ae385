"""The Gradio UI: one module per tab, each owning its layout, its handlers and its wiring (a class with a `title`,
`__init__(lab)` and `layout(page)`); shared pieces beside them: `lab` (state and guards), `validation`,
`pictures`, `plots`, `controls`; long prose in .md files. Adding a tab is one new module and one line in TABS."""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads libgomp (python -m bench.omp_teams, docs/performance.md): the server always holds more OpenMP
# threads than a 2-core machine has CPUs (each thread that runs torch ops has a team), and libgomp then cuts its spin
# between parallel regions to 100 iterations, which makes every 16-image network call ~1.5x slower. ACTIVE raises
# that throttled spin to 1000 and GOMP_SPINCOUNT keeps the unthrottled one at libgomp's default (so idle threads
# still sleep). A variable already set wins; no effect once torch is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300000")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from .controls import Page
from .lab import DEFAULT_MAX_SECONDS, Lab
from .image_cache import write_images_once
from .sketch_blobs import cap_editor_blobs
from .tab_about import AboutTab
from .tab_compare import CompareTab
from .tab_embeddings import EmbeddingsTab
from .tab_forward import ForwardTab
from .tab_generate import GenerateTab
from .tab_live import LiveTab
from .tab_race import RaceTab
from .tab_score_field import ScoreFieldTab
from .tab_sdedit import SDEditTab
from .tab_timelapse import TimelapseTab
from .tab_inside import InsideTab
from .tab_likelihood import LikelihoodTab
from .tab_which_digit import WhichDigitTab

TABS = [GenerateTab, LiveTab, CompareTab, EmbeddingsTab, ForwardTab, ScoreFieldTab, TimelapseTab, RaceTab, SDEditTab,
        WhichDigitTab, LikelihoodTab, InsideTab, AboutTab]
# The tabs as a path a learner can follow (ui/intro.md names it): a group's tab, then the tabs inside it. Every
# class of TABS is in exactly one group (tests/ui/test_tab_groups.py); no group name contains a tab title.
TAB_GROUPS = [("1 · Make digits", [GenerateTab, LiveTab, CompareTab]),
              ("2 · Watch the process", [ForwardTab, ScoreFieldTab, TimelapseTab, EmbeddingsTab]),
              ("3 · Look inside", [WhichDigitTab, LikelihoodTab, InsideTab]),
              ("4 · Experiment", [RaceTab, SDEditTab]),
              ("5 · Background", [AboutTab])]

HERE = Path(__file__).resolve().parent
INTRO = (HERE / "intro.md").read_text(encoding="utf-8")
CSS = (HERE / "style.css").read_text(encoding="utf-8")


# sampling jobs run at once (the "sampling" concurrency group): their network calls meet on the lab's broker, which
# batches them into shared passes and gives every visitor its turn by rows (diffusion/batching.py), so a visitor
# waits for a share of the CPU rather than for whole jobs queued ahead (bench/results/load.md)
SAMPLING_CONCURRENCY = 8


def _models_panel(lab: Lab, device, concurrency: int, max_queue: int, max_seconds: float) -> None:
    """Where each model came from (or why it is missing), the device and precision, the queue limits."""
    messages, pipelines = lab.messages, lab.pipelines
    problems = [m for m in messages if any(w in m for w in ("unavailable", "not loaded from the Hub", "could not"))]
    with gr.Accordion("Models: where they came from" + (" — some are missing" if problems else ""),
                      open=bool(problems) or not pipelines):
        lines = [f"- {m}" for m in messages] or ["- no models were loaded"]
        precision = " / ".join(sorted({p.compute_precision for p in pipelines.values()})) or "fp32"
        if "bf16" in precision:
            precision += " (autocast; `python app.py --precision fp32` turns it off)"
        backend = " / ".join(sorted({p.compute_backend for p in pipelines.values()})) or "eager"
        lines.append(f"- device: `{torch.device(device)}`, score network in {precision} on {backend} "
                     f"(diffusion/backends.py); {concurrency} "
                     f"generation(s) at a time, up to "
                     f"{max_queue} more waiting; each is stopped after {max_seconds:.0f} s")
        if lab.classifier is not None:
            lines.append("- the evaluation classifier (weights/classifier) checks generated digits")
        gr.Markdown("\n".join(lines))


def build_demo(pipelines: dict, messages=(), *, classifier=None, cards: dict | None = None,
               max_seconds: float = DEFAULT_MAX_SECONDS, concurrency: int | None = None, max_queue: int = 16,
               device: torch.device | str | None = None, calibrate: bool = True,
               students: dict | None = None, broker=None) -> gr.Blocks:
    """The app, for already loaded pipelines {name: Pipeline}; `messages` say where models came from; `students`:
    the distilled few-step students of pixel-cond {name: Pipeline} (the Live tab's; kept apart from the models
    the other tabs offer, as `lab.students`).
    The Blocks carry `.lab` (the shared state) and `.tabs` ({tab class name: tab}) for tests and benchmarks."""
    lab = Lab(pipelines, messages, classifier=classifier, max_seconds=max_seconds, calibrate=calibrate, broker=broker)
    lab.students = dict(students or {})
    lab.serve(lab.students)
    for name, pipe in lab.students.items() if calibrate else ():     # timed once, which also warms them up
        lab.cost.measure(name, pipe.score_model)
    device = device or (next(iter(pipelines.values())).device if pipelines else "cpu")
    if concurrency is not None and (isinstance(concurrency, bool) or int(concurrency) != concurrency or concurrency < 1):
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    concurrency = int(concurrency or SAMPLING_CONCURRENCY)
    tabs = {cls.__name__: cls(lab) for cls in TABS}
    with gr.Blocks(title="MNIST diffusion lab", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        _models_panel(lab, device, concurrency, max_queue, max_seconds)
        page = Page(lab, demo, concurrency, dict(cards or {}))
        with gr.Tabs(elem_id="tab-groups"):
            for group, members in TAB_GROUPS:
                with gr.Tab(group), gr.Tabs():
                    for cls in members:
                        with gr.Tab(cls.title):
                            tabs[cls.__name__].layout(page)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue,
               api_open=False)               # a queued handler runs only through the queue (its /run/ route: 404)
    cap_editor_blobs(demo)                     # every Sketchpad's blob route, whichever tab made it
    write_images_once()                        # a re-sent image is never rewritten while a browser reads it
    demo.lab, demo.tabs = lab, tabs
    return demo


__all__ = ["CSS", "TABS", "AboutTab", "CompareTab", "EmbeddingsTab", "ForwardTab", "GenerateTab", "Lab", "LiveTab",
           "Page", "build_demo"]
