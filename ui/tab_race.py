"""Sampler race: one model, digit, seed and budget of network evaluations (NFE); every fixed-step sampler at the
most steps the budget allows, and rk45 capped at the budget, all from the same prior noise, advanced in lockstep by
NFE (the one that has spent least goes next). Each panel: x_t over x̂0, NFE, its own wall time, and the benchmark's
quality figure at that setting (bench/results/samplers.json); the finishing order in a table."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from diffusion.samplers import SAMPLERS, sampler_spec

from .controls import DEFAULT_DIGIT, DEFAULT_SEED, GUIDANCE_STEP, IMG, Page, follow_recommended_guidance, note
from .lab import Lab, fmt_s
from .pictures import _font, show_grid
from .run_loop import Lane, admit, lockstep
from .validation import LABELS, MAX_GUIDANCE, MAX_SEED, check_float, check_int

LABELS.update({"nfe": "Network evaluations (NFE)"})
BENCH = Path(__file__).resolve().parent.parent / "bench" / "results" / "samplers.json"
MAX_RACE_NFE, MAX_RACE_IMAGES = 200, 9
RK45_TOL = 1e-2                      # the benchmark's looser rk45 point (bench/results/samplers.md)
CELL = 150                           # px per image grid in a panel


@functools.lru_cache(maxsize=1)
def bench_runs(path: Path = BENCH) -> tuple[dict, ...]:
    """The sampler benchmark's runs (empty when the file is absent or unreadable)."""
    try:
        return tuple(json.loads(path.read_text())["runs"])
    except (OSError, ValueError, KeyError):
        return ()


def bench_quality(model: str, sampler: str, steps: int | None, guidance: float | None) -> dict | None:
    """The benchmark's run of this model / sampler / steps (rk45: tolerance RK45_TOL) / guidance, or None.
    Unconditional models were benchmarked without guidance (None)."""
    for r in bench_runs():
        same_setting = r.get("tol") == RK45_TOL if sampler == "rk45" else r.get("steps") == steps
        if (r.get("model") == model and r.get("sampler") == sampler and same_setting
                and r.get("guidance") == guidance):
            return r
    return None


def quality_text(run: dict | None, short: bool = False) -> str:
    if run is None:
        return "not measured"
    fd = run.get("fd_at", {}).get("1000", run["fd"])
    n = 1000 if "1000" in run.get("fd_at", {}) else run["n"]
    acc = run.get("accuracy")
    if short:
        return f"FD {fd:.3g}" + (f", acc {acc:.0%}" if acc is not None else "")
    return f"FD {fd:.2f} (N={n})" + (f" · accuracy {acc:.1%}" if acc is not None else "")


class RaceTab:
    title = "Sampler race"

    def __init__(self, lab: Lab):
        self.lab = lab

    @staticmethod
    def entrants(nfe: int) -> list[tuple[str, int | None]]:
        """(sampler, steps) for each fixed-step sampler at the most steps within `nfe`, then rk45 (steps None)."""
        out = [(name, spec.steps_for(nfe)) for name, spec in SAMPLERS.items() if not spec.adaptive]
        return [(n, s) for n, s in out if sampler_spec(n).nfe_for(s) <= nfe] + [("rk45", None)]

    @staticmethod
    def bench_for(model, name, steps, w, budget) -> dict | None:
        """The benchmark figure for this entrant; rk45's only when its measured NFE fits the budget."""
        run = bench_quality(model, name, steps, w)
        return None if run is not None and name == "rk45" and run["nfe"] > budget else run

    # -- the race ----------------------------------------------------------------------------------
    def race(self, model, digit, nfe, guidance, seed, num_images):
        lab = self.lab
        pipe = lab.pipeline(model)
        digit = check_int("digit", digit, 0, 9)
        budget = check_int("nfe", nfe, 2, MAX_RACE_NFE)
        guidance = check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
        seed = check_int("seed", seed, 0, MAX_SEED)
        n = check_int("num_images", num_images, 1, MAX_RACE_IMAGES)
        entrants = self.entrants(budget)
        # every entrant spends at most `budget` NFE on a batch of n (x 2 for guidance); one admission rule for all tabs
        admit(lab.cost.estimate(model, budget * len(entrants), lab.work_batch(pipe, n, guidance)), lab.max_seconds,
              params="nfe / num_images", what="this race", worst="", advice="Use a smaller budget or fewer images.")
        labels = [digit] * n if pipe.conditional else None
        w = guidance if pipe.guided else None       # the bench records an unguided model's runs at w = None
        runs = []
        for name, steps in entrants:
            extras = dict(rtol=RK45_TOL, atol=RK45_TOL, max_nfe=budget) if name == "rk45" else {}
            stream = pipe.stream(labels, num_images=n, sampler=name, num_steps=steps, guidance=guidance, seed=seed,
                                 preview_every=1, **extras)
            runs.append(Lane(name, stream, dict(steps=steps, bench=self.bench_for(model, name, steps, w, budget))))
        what = (f"**{model}** · {f'digit {digit}' if pipe.conditional else 'unconditional'} · budget {budget} NFE · "
                f"{lab.guidance_note(pipe, guidance)} · seed {seed} · {n} image(s) each, "
                f"the same prior noise for every sampler")
        yield self.board(runs, budget), self.table(runs, budget) + "\n\nstarting…", what
        # own sampling time: the previews' autoencoder decoding (latent models) left out; rk45 past its NFE cap
        # (a RuntimeError) leaves the race with its last state kept
        race = lockstep(runs, overhead=lambda step: step.decode_time, dropouts=(RuntimeError,))
        for lane, due in lab.run(race, lead=False, final=lambda _: all(q.done for q in runs)):
            if "max_nfe" in lane.error:
                lane.error = f"did not finish within {budget} NFE"
            if due and not all(q.done for q in runs):
                yield self.board(runs, budget), self.table(runs, budget), what
        yield self.board(runs, budget), self.table(runs, budget, final=True), what

    # -- pictures and the table --------------------------------------------------------------------
    @staticmethod
    def board(runs, budget) -> np.ndarray:
        """One panel per sampler, side by side: name, x_t (top), x̂0 (bottom), NFE, own time, benchmark figure."""
        head, foot, gap = 20, 46, 10
        w = len(runs) * (CELL + gap) - gap
        canvas = Image.new("L", (w, head + 2 * CELL + 6 + foot), 255)
        draw = ImageDraw.Draw(canvas)
        for k, r in enumerate(runs):
            x = k * (CELL + gap)
            draw.text((x, 3), r.name, fill=0, font=_font(13))
            s = r.step
            if s is not None:
                canvas.paste(Image.fromarray(show_grid(s.x, CELL)).resize((CELL, CELL), Image.Resampling.NEAREST),
                             (x, head))
                canvas.paste(Image.fromarray(show_grid(s.x0, CELL)).resize((CELL, CELL), Image.Resampling.NEAREST),
                             (x, head + CELL + 6))
            nfe = s.nfe if s else 0
            state = r.error or ("done" if r.done else "")
            lines = [f"NFE {nfe}/{budget}  {fmt_s(r.own)}", f"{state}",
                     quality_text(r.info["bench"], short=True)]
            draw.multiline_text((x, head + 2 * CELL + 9), "\n".join(lines), fill=0, font=_font(11), spacing=2)
        return np.asarray(canvas)

    @staticmethod
    def table(runs, budget, final: bool = False) -> str:
        """Markdown, ranked by each sampler's own wall time when finished (unfinished and DNF last)."""
        def key(r):
            return (0 if r.done and not r.error else 1, r.own if r.done else float("inf"))
        rows = ["| place | sampler | steps | NFE | wall time (own) | benchmark at this setting | |",
                "|---:|---|---:|---:|---:|---|---|"]
        place = 0
        for r in sorted(runs, key=key):
            s = r.step
            finished = r.done and not r.error
            place += finished
            steps = "adaptive" if r.info["steps"] is None else str(r.info["steps"])
            rows.append(f"| {place if finished else '—'} | {r.name} | {steps} | {s.nfe if s else 0} | "
                        f"{fmt_s(r.own)} | {quality_text(r.info['bench'])} | "
                        f"{r.error or ('done' if r.done else 'running')} |")
        tail = ("\n\nFD: Fréchet distance on the project classifier's features against MNIST test images "
                "(lower is better), measured over 1000 samples in bench/results/samplers.md; it is a property of "
                "the sampler at that setting, not of these few images." if final else "")
        return "\n".join(rows) + tail

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("Every sampler gets the same starting noise, the same digit and the same budget of network evaluations "
             "(NFE, the real cost). A 1-NFE-per-step sampler takes as many steps as the budget; a 2-NFE one half as "
             "many; rk45 picks its own steps and is stopped if it needs more. They advance in lockstep by NFE.")
        with gr.Row():
            model = gr.Radio(page.available, value=page.default_model, label="Model")
            digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit", info="ignored by pixel-uncond")
        with gr.Row():
            nfe = gr.Slider(2, MAX_RACE_NFE, 10, step=1, label="Network evaluations (NFE)")
            guidance = gr.Slider(0, MAX_GUIDANCE, page.defaults.guidance, step=GUIDANCE_STEP, label="Guidance w")
            seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            n = gr.Slider(1, MAX_RACE_IMAGES, 4, step=1, label="Number of images")
        with gr.Row():
            run = gr.Button("Race", variant="primary", elem_id="race-run", interactive=bool(page.available))
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="race-what")
        board = gr.Image(label="each sampler: x_t (top), x̂0 (bottom), NFE used / budget, own wall time",
                         height=430, elem_id="race-board", **IMG)
        table = gr.Markdown("", elem_id="race-table")
        note("At the same NFE the higher-order ODE solvers (dpmpp_2m, heun) are already clean where Euler-Maruyama "
             "is still noisy: its steps are too coarse to follow the SDE. The benchmark column says how good each "
             "setting is over 1000 samples; these few images are one draw.")
        go = run.click(self.race, [model, digit, nfe, guidance, seed, n], [board, table, status], api_name="race",
                       **page.heavy)
        stop.click(None, cancels=[go])
        follow_recommended_guidance(model, guidance, "race_recommended_guidance")
