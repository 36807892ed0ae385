"""Tab Live: every control regenerates at once, no button, with a distilled few-step student of pixel-cond
(diffusion/distill.py: 1, 2 or 4 network calls, guidance w an input of the network). Only the latest setting runs:
the events use trigger_mode="always_last" (while a run is in flight the browser keeps just the newest setting and
sends it when that run ends) in the one "sampling" concurrency group, so a drag of the slider costs at most one run
in flight plus one waiting. Without student weights the teacher runs instead, at a few steps, and the page says so."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from diffusion.cost import seconds_per_nfe, work_batch
from diffusion.registry import DISTILLED_NAMES, LIVE_PREFERENCE, defaults_for, model_spec
from diffusion.samplers import sampler_spec

from .controls import DEFAULT_DIGIT, DEFAULT_SEED, GUIDANCE_STEP, IMG, Page, note
from .gradio_seam import current_block
from .lab import Lab, fmt_s
from .pictures import GRID_PX, sent_grid, upscaled
from .validation import MAX_SEED, bad, check_float, check_int

MAX_LIVE_IMAGES, DEFAULT_LIVE_IMAGES = 16, 16
LIVE_TARGET_S = 0.25                  # network seconds for DEFAULT_LIVE_IMAGES: what "live" means (issue 16)
ALL_DIGITS = "all"                    # the digit choice that draws 0-9 in turn
TEACHER = model_spec(DISTILLED_NAMES[0]).teacher     # the students' teacher: what runs when they are missing
FALLBACK_SAMPLER, FALLBACK_STEPS = "dpmpp_2m", 5   # FD 7.94 at w = 2 (bench/results/samplers.md)
FALLBACK_GUIDANCE_RANGE = (1.0, 3.0)  # the shipped students' common w range (the 1-step's since its DMD fine-tune):
                                      # the page is the same once students arrive (tests/ui/test_live.py)
BUILD_COMMAND = ("python -m train.distill --teacher weights/pixel-cond --out runs/pixel-cond-distilled "
                 "--weights-dir weights/pixel-cond-distilled")
EXPLAINED = (Path(__file__).resolve().parent / "live.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Runner:
    """One way to answer a live request: a model, its sampler and step count, and the w range it accepts."""
    name: str
    pipe: object                       # diffusion.pipeline.Pipeline
    sampler: str
    steps: int
    guidance_range: tuple[float, float]
    student: bool

    @property
    def nfe(self) -> int:
        return sampler_spec(self.sampler).nfe_for(self.steps)

    def batch(self, n: int, guidance: float) -> int:
        """Images per network call: a student takes w as an input (one call); the teacher doubles for guidance."""
        return n if self.student else work_batch(n, True, guidance)


def student_runners(students: dict) -> dict[int, Runner]:
    """{steps: Runner} for the loaded students that were distilled for a fixed step count (first name wins)."""
    runners = {}
    for name in DISTILLED_NAMES:
        pipe = students.get(name)
        info = getattr(pipe.score_model, "distilled", None) if pipe is not None else None
        if not info or info.get("steps") is None or int(info["steps"]) in runners:
            continue
        lo, hi = (float(v) for v in info["guidance_range"])
        sampler = defaults_for(name).sampler          # the student's own default (rule v3's pick), ddim or ancestral
        runners[int(info["steps"])] = Runner(name, pipe, sampler, int(info["steps"]), (lo, hi), True)
    return dict(sorted(runners.items()))


def student_messages(messages: list[str], students: dict) -> list[str]:
    """The loading messages with the students' "unavailable" lines (one per missing folder, pointing at a training
    script that does not exist) folded into one line that says what Live does without them and how to build them."""
    missing = [n for n in DISTILLED_NAMES if n not in students]
    if not missing:
        return list(messages)
    kept = [m for m in messages if not any(m.startswith(f"{n}: unavailable (WeightsNotFound") for n in missing)]
    dropped = len(messages) - len(kept)
    if not dropped:
        return kept
    what = ("the Live tab runs the teacher instead" if not students else
            f"Live offers {', '.join(students)} only")
    return kept + [f"{', '.join(missing)}: no distilled student weights found — {what}. "
                   f"Build them with `{BUILD_COMMAND}` (docs/distillation.md)"]


class LiveTab:
    title = "Live"

    def __init__(self, lab: Lab):
        self.lab = lab
        self.runners = student_runners(getattr(lab, "students", {}) or {})
        self.fallback = not self.runners
        teacher = lab.pipelines.get(TEACHER)
        if self.fallback and teacher is not None and teacher.conditional and not teacher.is_latent:
            self.runners = {FALLBACK_STEPS: Runner(TEACHER, teacher, FALLBACK_SAMPLER, FALLBACK_STEPS,
                                                   FALLBACK_GUIDANCE_RANGE, False)}
        ranges = [r.guidance_range for r in self.runners.values()] or [FALLBACK_GUIDANCE_RANGE]
        self.guidance_range = (max(lo for lo, _ in ranges), min(hi for _, hi in ranges))   # what every runner takes
        if getattr(lab, "calibrated", False) and not self.fallback:
            for r in self.runners.values():     # seconds per NFE per image at the live batch (also a warm-up)
                lab.cost.rates[r.name] = seconds_per_nfe(r.pipe.score_model, DEFAULT_LIVE_IMAGES, reps=3)

    # -- handlers ----------------------------------------------------------------------------------
    def check(self, digit, steps, guidance, seed, num_images):
        """Validate raw values (every check before any network evaluation); the runner and the converted values."""
        if not self.runners:
            raise gr.Error(f"Live mode is unavailable: neither distilled student weights (weights/pixel-cond-"
                           f"distilled*) nor the teacher {TEACHER} were loaded. Build the students with "
                           f"`{BUILD_COMMAND}`.", title="Model unavailable", print_exception=False)
        if isinstance(digit, str) and digit.strip().lower() == ALL_DIGITS:
            digit = None
        else:
            try:
                digit = check_int("digit", digit, 0, 9)
            except gr.Error:
                raise bad("digit", f"must be a whole number from 0 to 9, or '{ALL_DIGITS}'", digit) from None
        offered = sorted(self.runners)
        try:
            steps = check_int("steps", steps, 1, max(offered))
            if steps not in offered:
                raise ValueError
        except (gr.Error, ValueError):
            what = "the distilled students loaded" if not self.fallback else f"the teacher fallback, {TEACHER}"
            raise bad("steps", f"must be one of {', '.join(map(str, offered))} ({what})", steps) from None
        runner = self.runners[steps]
        lo, hi = runner.guidance_range
        g = check_float("guidance", guidance, -float("inf"), float("inf"))
        if not lo <= g <= hi:
            why = (f"the range {runner.name} was distilled on" if runner.student
                   else "the range of the students this page is made for")
            raise bad("guidance", f"must be from {lo:g} to {hi:g}, {why}", guidance)
        seed = check_int("seed", seed, 0, MAX_SEED)
        n = check_int("num_images", num_images, 1, MAX_LIVE_IMAGES)
        labels = [digit] * n if digit is not None else [k % 10 for k in range(n)]
        return runner, digit, labels, g, seed, n

    def live(self, digit, steps, guidance, seed, num_images):
        """The grid for these settings, its description, and its timing (server wall time measured here)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        lab = self.lab
        runner, digit, labels, guidance, seed, n = self.check(digit, steps, guidance, seed, num_images)
        shown_digit = f"digit {digit}" if digit is not None else "digits 0–9 in turn"
        what = (f"**{runner.name}** · {shown_digit} · guidance w = {guidance:g} · seed {seed} · {n} image"
                f"{'s' if n > 1 else ''}")
        step = None
        stream = runner.pipe.stream(labels, num_images=n, sampler=runner.sampler, num_steps=runner.steps,
                                    guidance=guidance, seed=seed, preview_every=1)
        for step, due in lab.run(stream, lead=False):
            if due and not step.final:      # slow (busy CPU, teacher): a point where a cancel takes effect; the page
                yield gr.skip(), gr.skip(), gr.skip()       # keeps the last grid and its text
        picture = sent_grid(step.x)                  # ~230 px: the page upscales it (crisp, ui/style.css)
        server = time.perf_counter() - start
        batch = runner.batch(n, guidance)
        calls = (f"one network call per step on a batch of {batch}"
                 + (" (images × 2 for guidance)" if batch == 2 * n else ""))      # ddim, dpmpp_2m: 1 NFE/step
        kind = (f"{runner.steps}-step student, {runner.sampler}" if runner.student
                else f"the teacher at {runner.steps} steps of {runner.sampler} — no student weights")
        label_arg = f"[{digit}] * {n}" if digit is not None else f"[k % 10 for k in range({n})]"
        summary = (f"{what} · {kind}\n\n"
                   f"{runner.steps} step{'s' if runner.steps > 1 else ''} = **{step.nfe} NFE**: {calls} · "
                   f"server **{fmt_s(server)}** wall time (sampling {fmt_s(step.elapsed)})\n\n"
                   f"Reproduce: `load_pipeline('{runner.name}').generate({label_arg}, sampler='{runner.sampler}', "
                   f"num_steps={runner.steps}, guidance={guidance:g}, seed={seed})`")
        # (no evaluation-classifier reading here, unlike Generate: on 16 images it costs about as much as 4 student
        # steps, and live mode is about speed)
        timing = dict(model=runner.name, sampler=runner.sampler, steps=runner.steps, nfe=step.nfe, batch=batch,
                      num_images=n, digit=digit, guidance=guidance, seed=seed, student=runner.student,
                      server_s=round(server, 6), sampling_s=round(step.elapsed, 6),
                      cpu_s=round(time.process_time() - cpu_start, 6), threads=torch.get_num_threads())
        yield picture, summary, timing

    @property
    def default_steps(self) -> int:
        """The best student (registry.LIVE_PREFERENCE: measured quality at each one's default) whose DEFAULT_LIVE_IMAGES
        images take at most LIVE_TARGET_S of network time on this machine, by the start-up timing (a student never
        timed counts as fast enough); the fewest steps when none is. The shipped students: the 2-step one, which
        beats the 4-step one by every evaluator at half its calls (bench/results/live_latency.md)."""
        if not self.runners:
            return FALLBACK_STEPS
        if self.fallback:
            return max(self.runners)

        def fast_enough(r: Runner) -> bool:
            est = self.lab.cost.estimate(r.name, r.nfe, r.batch(DEFAULT_LIVE_IMAGES, defaults_for(r.name).guidance))
            return est is None or est <= LIVE_TARGET_S

        def rank(r: Runner) -> int:
            return LIVE_PREFERENCE.index(r.name) if r.name in LIVE_PREFERENCE else len(LIVE_PREFERENCE)
        fast = sorted((r for r in self.runners.values() if fast_enough(r)), key=lambda r: (rank(r), r.steps))
        return fast[0].steps if fast else min(self.runners)

    @property
    def default_guidance(self) -> float:
        """The default runner's own default w (rule v3's pick for a student; the teacher's for the fallback), inside
        the range every runner takes."""
        lo, hi = self.guidance_range
        runner = self.runners.get(self.default_steps) if self.runners else None
        w = defaults_for(runner.name).guidance if runner is not None else defaults_for(TEACHER).guidance
        return min(max(w, lo), hi)

    def banner(self) -> str:
        """What runs here: the students found, or the fallback and how to build the students."""
        if not self.runners:
            return (f"⚠️ **Live mode is off: no model to run.** Neither the distilled students "
                    f"(weights/pixel-cond-distilled, -2step, -1step) nor the teacher {TEACHER} were loaded. "
                    f"Build the students with `{BUILD_COMMAND}` (see docs/distillation.md), then restart the app.")
        if self.fallback:
            r = self.runners[FALLBACK_STEPS]
            est = self.lab.cost.estimate(TEACHER, r.nfe, r.batch(DEFAULT_LIVE_IMAGES, 2.0))
            cost = f", about {fmt_s(est)} here for {DEFAULT_LIVE_IMAGES} images" if est is not None else ""
            return (f"⚠️ **The distilled student weights are missing** (weights/pixel-cond-distilled, -2step, "
                    f"-1step), so Live runs the teacher **{TEACHER}** with {r.sampler} at {r.steps} steps instead: "
                    f"{r.nfe} network calls per grid, each on a doubled batch for guidance — "
                    f"{2 * r.nfe} image-evaluations per image against 4, 2 or 1 for a student{cost}. "
                    f"Build the students with `{BUILD_COMMAND}` (see docs/distillation.md and train/distill.py), "
                    f"then restart the app.")
        found = ", ".join(f"{r.name} ({s} step{'s' if s > 1 else ''})" for s, r in self.runners.items())
        absent = [n for n in DISTILLED_NAMES if n not in {r.name for r in self.runners.values()}]
        more = (f" Not present: {', '.join(absent)} (build with `{BUILD_COMMAND}`)." if absent else "")
        return f"Students loaded: {found}.{more}"

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("No button here: change the digit, the guidance, the seed, the number of images or the steps and the "
             "grid is drawn again at once, by a *distilled student* of pixel-cond that needs only 1, 2 or 4 "
             "network calls (Generate's default takes 10 steps of two calls each). While a run is in flight only "
             "your latest setting waits; the ones in between are skipped.")
        gr.Markdown(self.banner(), elem_id="live-banner")
        lo, hi = self.guidance_range
        offered = sorted(self.runners) or [FALLBACK_STEPS]
        steps_label = "Steps (= network calls)" if not self.fallback else "Steps (teacher fallback)"
        usable = bool(self.runners)
        with gr.Row():
            digit = gr.Radio([*range(10), ALL_DIGITS], value=DEFAULT_DIGIT, label="Digit", elem_id="live-digit",
                             info=f"'{ALL_DIGITS}': 0–9 in turn", interactive=usable)
            steps = gr.Radio([(str(s), s) for s in offered], value=self.default_steps if usable else offered[0],
                             label=steps_label, elem_id="live-steps", interactive=usable)
        with gr.Row():
            guidance = gr.Slider(lo, hi, self.default_guidance, step=GUIDANCE_STEP, label="Guidance w",
                                 info=f"{lo:g}–{hi:g}: the range the students were distilled on; 1 = plain "
                                      f"conditional", elem_id="live-guidance", interactive=usable)
            seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED,
                             elem_id="live-seed", interactive=usable)
            dice = gr.Button("Random seed", scale=0, min_width=130, interactive=usable)
            n = gr.Slider(1, MAX_LIVE_IMAGES, DEFAULT_LIVE_IMAGES, step=1, label="Number of images",
                          elem_id="live-n", interactive=usable)
        out = gr.Image(None, label="Samples (updated live)", height=GRID_PX + 10, elem_id="live-grid",
                       **upscaled(IMG))
        status = gr.Markdown("Opening this tab or moving any control draws the grid." if usable else "",
                             elem_id="live-status")
        info = gr.JSON(None, visible=False, label="timing")          # for gradio_client: server time, NFE, batch
        note(EXPLAINED)

        inputs = [digit, steps, guidance, seed, n]
        # .change fires while the slider is dragged as well as on release (and when the seed button sets the seed);
        # the first grid is drawn when the tab is opened (the tab being laid out), so a visitor who never opens it
        # costs nothing and the app starts without sampling
        tab = current_block()
        opened = [tab.select] if isinstance(tab, gr.Tab) and usable else []
        gr.on([*opened, *(c.change for c in inputs)], self.live, inputs, [out, status, info], api_name="live",
              trigger_mode="always_last", show_progress="hidden", **page.heavy)
        dice.click(None, None, seed, js=f"() => Math.floor(Math.random() * {MAX_SEED})", queue=False,
                   api_visibility="private")
