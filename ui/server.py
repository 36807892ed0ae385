"""Serving the app: load the models (never raising for missing weights), build the UI, launch.

    mnist-diffusion-lab [--weights-dir weights] [--hub-repo USER/REPO [--revision SHA]] [--host H] [--port P]
    python app.py ...            # the same, from a checkout (the Space's entry)

The device is chosen once, in `pick_device`; `launch_kwargs` holds every launch setting (hardening included), so
the console script, `python app.py` and the tests launch the same server.
"""
from __future__ import annotations

import argparse
import os
import socket

import gradio as gr
import torch

import diffusion.pipeline as dp
from diffusion import hub
from diffusion.cards_read import read_model_cards
from diffusion.registry import DISTILLED_NAMES, SAMPLEABLE_NAMES
from . import CSS, SAMPLING_CONCURRENCY, build_demo
from .allocator import tune_allocator
from .fair_queue import MAX_JOBS_PER_CLIENT, MAX_JOBS_PER_SESSION, FairQueue
from .http_limits import app_kwargs
from .sessions import SESSION_CAPACITY
from .lab import DEFAULT_MAX_SECONDS, new_broker
from .tab_about import CARD_NAMES
from .tab_live import student_messages


def pick_device() -> torch.device:
    """The one place the app chooses a device."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for tests, benches and rehearsals that start a server of their own)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch_kwargs(host: str | None = None, port: int | None = None, *, max_jobs_per_session: int = MAX_JOBS_PER_SESSION,
                  max_jobs_per_client: int = MAX_JOBS_PER_CLIENT) -> dict:
    """Launch settings: CSS, and gradio's routes this app does not use switched off (monitoring, MCP, PWA,
    run history); uploads (drawings) capped at 5 MB; nothing extra is served (no allowed_paths: the weights
    stay private). ui/http_limits.py's middleware and ui/sessions.py's lifespan hook: request bodies capped (413),
    unused routes closed, malformed events and queue bypasses refused by name, a fair share of the queue per session
    and per client address, an upload budget, nosniff, bounded session state, cancel and disconnect seen by the
    per-step guard."""
    return dict(server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(port or os.environ.get("GRADIO_SERVER_PORT", 7860)),
                css=CSS, footer_links=["api", "gradio"], run_history=False, enable_monitoring=False,
                mcp_server=False, pwa=False, ssr_mode=False, show_error=False, max_file_size="5mb",
                app_kwargs=app_kwargs(fair=FairQueue(max_jobs_per_session, max_jobs_per_client)),
                state_session_capacity=SESSION_CAPACITY)


def create_demo(weights_dir=None, hub_repo=None, revision=None, device=None, precision: str = "auto",
                **kwargs) -> gr.Blocks:
    """Load whatever models can be loaded (never raising for missing weights) and build the app. precision: "auto"
    (bf16 autocast on a CPU with bf16 hardware, else fp32), "fp32" or "bf16".
    Both run on the thread of the app's broker (ui/lab.py's `new_broker`), the one that later runs every network:
    torch ops on big tensors (copying weights in, start-up timing) give the thread that runs them an OpenMP team for
    the thread's life, and a second team beside the broker's (the main thread's, had it loaded the models) makes
    libgomp throttle both on two cores (bench/omp_teams.py)."""
    broker = new_broker()
    return broker.run(_create_demo, weights_dir, hub_repo, revision, device, precision, broker=broker, **kwargs)


def _create_demo(weights_dir, hub_repo, revision, device, precision, **kwargs) -> gr.Blocks:
    device = device or pick_device()
    dp.resolve_precision(precision, device)                     # a bad value fails here, before any loading
    notes: list[str] = []
    pipelines, messages = hub.load_pipelines(SAMPLEABLE_NAMES, weights_dir=weights_dir, hub_repo=hub_repo,
                                             revision=revision, device=device)  # no revision: the one in hub.json
    students = {name: pipelines.pop(name) for name in DISTILLED_NAMES if name in pipelines}   # the Live tab's
    messages = student_messages(messages, students)
    for pipe in [*pipelines.values(), *students.values()]:
        pipe.precision = precision
    classifier = None
    try:
        classifier = hub.load_model("classifier", weights_dir=weights_dir, hub_repo=hub_repo, revision=revision,
                                    device=device, messages=[])
    except Exception as e:  # noqa: BLE001 - optional: the app works without it
        notes.append(f"classifier: unavailable, generated digits are not checked ({type(e).__name__})")
    cards = read_model_cards(CARD_NAMES, weights_dir, hub_repo, revision)
    return build_demo(pipelines, notes + messages, classifier=classifier, cards=cards, device=device,
                      students=students, **kwargs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-diffusion-lab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MNIST diffusion lab: score-based diffusion (VE SDE, sigma = 25) on MNIST, in a Gradio app.")
    parser.add_argument("--weights-dir", default=None, help=f"local weights folder (default {hub.DEFAULT_WEIGHTS_DIR})")
    parser.add_argument("--hub-repo", default=os.environ.get("HUB_REPO") or None,
                        help="load the models from this Hub repo (env HUB_REPO); local weights are the fallback")
    parser.add_argument("--revision", default=os.environ.get("HUB_REVISION") or None,
                        help="Hub commit to load (env HUB_REVISION; default: the one pinned in weights/hub.json)")
    parser.add_argument("--host", default=None, help="default $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="time limit per request")
    parser.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait in the queue")
    parser.add_argument("--concurrency", type=int, default=SAMPLING_CONCURRENCY,
                        help="sampling requests run at once; their network calls share batched passes, each visitor "
                             "in turn (diffusion/batching.py); 1 = one at a time")
    parser.add_argument("--max-jobs-per-session", type=int, default=MAX_JOBS_PER_SESSION,
                        help="requests one browser session may have waiting or running")
    parser.add_argument("--max-jobs-per-client", type=int, default=MAX_JOBS_PER_CLIENT,
                        help="requests one client address (behind a proxy: the forwarded one) may have waiting or "
                             "running")
    parser.add_argument("--precision", choices=dp.PRECISIONS, default="auto",
                        help="score network precision: auto = bf16 autocast on a CPU with bf16 hardware "
                             "(AVX512-BF16/AMX, measured 1.2-1.5x at equal quality), else fp32")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    tune_allocator()                # before any thread: 2 malloc arenas, 1 MiB mmap threshold (the env wins)
    app = create_demo(args.weights_dir, args.hub_repo, args.revision, max_seconds=args.max_seconds,
                      max_queue=args.max_queue, precision=args.precision, concurrency=args.concurrency)
    app.launch(**launch_kwargs(args.host, args.port, max_jobs_per_session=args.max_jobs_per_session,
                               max_jobs_per_client=args.max_jobs_per_client))

