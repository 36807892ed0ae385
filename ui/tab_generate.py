"""Tab 1, Generate: a model and a digit in; the noisy sample x_t and the denoised estimate x̂0 streamed side by
side as the sampler runs; the final grid, a GIF of the trajectory, and what it cost."""
from __future__ import annotations

import gradio as gr
import numpy as np

import diffusion.pipeline as dp
from diffusion.registry import model_spec
from diffusion.samplers import SAMPLERS, sampler_spec

from . import presets
from .controls import (DEFAULT_DIGIT, DEFAULT_IMAGES, DEFAULT_SEED, IMG, PLUMBING, Page, guidance_schedule_for,
                       guidance_where_control, note, sampling_controls)
from .lab import MODEL_NAMES, Lab, fmt_s, preview_every
from .pictures import GIF_PX, GRID_PX, FrameBuffer, captioned, sent_grid, show_grid, upscaled
from .validation import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS, check_choice, check_float, check_int


def gif_frame(step, total) -> np.ndarray:
    """One GIF frame: x_t | x̂0 at GIF_PX each, the step written underneath (ASCII: PIL's default font has no
    Greek)."""
    caption = f"x_t | x0-hat   step {step.i + 1}/{total}  t={step.t:.3f}  sigma={step.sigma:.3g}  NFE {step.nfe}"
    return captioned([show_grid(step.x, GIF_PX), show_grid(step.x0, GIF_PX)], caption)


class GenerateTab:
    title = "Generate"

    def __init__(self, lab: Lab):
        self.lab = lab
        self.presets = None                 # the gr.Examples, once laid out

    # -- handlers ----------------------------------------------------------------------------------
    def generate(self, model, digit, sampler, steps, guidance, seed, num_images, where="model"):
        """Stream x_t and the denoised estimate x0 side by side; end with the final grid and a GIF. `where`: a key
        of ui.controls.GUIDANCE_WHERE, where along sigma w applies ("model": the model's own recipe)."""
        lab = self.lab
        pipe = lab.pipeline(model)
        digit = check_int("digit", digit, 0, 9)
        sampler, steps, guidance, seed = lab.check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        schedule = guidance_schedule_for(pipe, where)
        lab.refuse_runaway(model, sampler, steps, n, guidance)
        adaptive = sampler_spec(sampler).adaptive
        labels = [digit] * n if pipe.conditional else None
        what = (f"**{model}** · {f'digit {digit}' if pipe.conditional else 'unconditional (digit ignored)'} · "
                f"{sampler} · {'adaptive steps' if adaptive else f'{steps} steps'} · "
                f"{lab.guidance_note(pipe, guidance, schedule)} · seed {seed} · {n} images")
        frames, step = FrameBuffer(), None
        yield None, None, what + "\n\nstarting…", None, None, None
        # pixel models: every step comes back here (x and x0 are cheap to copy), so that the time limit and the stop
        # guard (ui/run_loop.py, before each step) act within a step, not k steps; latent models decode each
        # preview, so only every k-th step is decoded (the GIF's frames: it needs them all)
        every = preview_every(sampler, steps) if pipe.is_latent else 1
        stream = pipe.stream(labels, num_images=n, sampler=sampler, num_steps=steps, guidance=guidance,
                             seed=seed, preview_every=every, guidance_schedule=schedule)
        for step, due in lab.run(stream):
            total = "?" if adaptive else step.num_steps
            # a GIF frame per kept step, rendered only at the end and only if the GIF keeps it (FrameBuffer)
            frames.add(lambda s=step, total=total: gif_frame(s, total), final=step.final)
            if due and not step.final:                       # <= 10 updates/s; the final one below
                progress = (f"step {step.i + 1}/{total} · t = {step.t:.3f} · σ(t) = {step.sigma:.3g} · "
                            f"NFE {step.nfe} · {fmt_s(step.elapsed)}")
                yield (sent_grid(step.x), sent_grid(step.x0), f"{what}\n\n{progress}", gr.skip(), gr.skip(),
                       gr.skip())
        batch = lab.work_batch(pipe, n, guidance)
        lab.cost.learn(model, step.nfe, batch, step.elapsed - step.decode_time)
        final = sent_grid(step.x)
        decode = f" (autoencoder decoding: {fmt_s(step.decode_time)})" if pipe.is_latent else ""
        label_arg = f"[{digit}] * {n}" if pipe.conditional else f"None, num_images={n}"
        schedule_arg = "" if schedule == pipe.defaults.schedule else f", guidance_schedule={schedule!r}"
        partial = batch != n and not schedule.constant     # w on part of the sigma range: doubled calls only there
        each, where_text = ("", f" where w applies ({schedule.describe(short=True)})") if partial else ("each ", "")
        if batch == n:
            per_nfe = f"each on a batch of {batch}"
        elif pipe.conditional:
            per_nfe = f"{each}on a batch of {batch} (images × 2 for guidance){where_text}" + (f", of {n} elsewhere"
                                                                                         if partial else "")
        else:
            per_nfe = (f"{each}two network calls on {n} images (the model and its guide){where_text}"
                       + (", one elsewhere" if partial else ""))
        summary = (f"{what}\n\n**Done** in {fmt_s(step.elapsed)} wall time{decode}: {step.nfe} NFE, {per_nfe}"
                   f"{lab.classifier_line(step.x, digit if pipe.conditional else None)}.\n\n"
                   f"Reproduce: `load_pipeline('{model}').generate({label_arg}, sampler='{sampler}', "
                   f"num_steps={steps}, guidance={guidance:g}, seed={seed}{schedule_arg})`")
        stem = f"{model}_{f'digit{digit}_' if pipe.conditional else ''}{sampler}_{steps}steps_seed{seed}"
        gif = lab.write_gif(frames.frames, stem)             # ~11 small frames: a few ms, so one final update
        yield final, final, summary, final, gif, gif       # complete, so that predict() returns everything

    def estimate(self, model, sampler, steps, num_images, guidance) -> str:
        """A one-line cost estimate for the Generate settings (never raises: shown inline)."""
        lab = self.lab
        try:
            pipe = lab.pipeline(model)
            sampler = check_choice("sampler", sampler, list(SAMPLERS))
            steps = check_int("steps", steps, 1, MAX_STEPS)
            n = check_int("num_images", num_images, 1, MAX_IMAGES)
            guidance = check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
        except gr.Error as e:
            return f"⚠️ {e.message}"
        spec = sampler_spec(sampler)
        batch = lab.work_batch(pipe, n, guidance)
        nfe = spec.nfe_for(steps)
        est = lab.estimate_seconds(model, sampler, steps, n, guidance)
        cost = (f"{steps} steps × {nfe // steps if nfe % steps == 0 else '≈2'} = {nfe} network evaluations"
                if nfe is not None else "adaptive: typically 100–300 network evaluations")
        when = f" ≈ {fmt_s(est)} here" if est is not None else ""
        slow = " — slow: fewer steps or images, or dpmpp_2m, are quicker" if est is not None and est > 5 else ""
        return f"Cost: {cost} on a batch of {batch}{when}{slow}. {spec.description}."

    @staticmethod
    def recommended_settings(model) -> tuple[str, int, float]:
        """The model's default sampler, step count and guidance weight (the registry's, rule v3's picks), set when a
        person picks a model (not when a preset sets one along with its own settings)."""
        d = dp.defaults_for(check_choice("model", model, MODEL_NAMES))   # named, never echoing a long value
        return d.sampler, d.steps, d.guidance

    @staticmethod
    def random_seed() -> int:
        return int(np.random.default_rng().integers(0, MAX_SEED))

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("Pick a model and a digit and press **Generate**. Left: the noisy sample x_t as the sampler "
             "walks back from t = 1 (pure noise, std 9.85) to t ≈ 0; right: the network's current guess of "
             "the clean image (the Tweedie estimate x̂0). Both stream as they are computed; the final grid "
             "and an animated GIF of the whole trajectory follow.")
        d = page.defaults
        with gr.Row():
            model = gr.Radio([(f"{n} ({model_spec(n).blurb})", n) for n in page.available], value=page.default_model,
                             label="Model")
            digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit", info="ignored by pixel-uncond")
        sampler, steps, guidance = sampling_controls(page, "gen")
        where_choice = guidance_where_control("gen")
        # a session's choice, kept in a State: /generate's API keeps its 7 inputs (a State is no API parameter), and a
        # call through the API runs the model's own recipe
        where = gr.State("model")
        where_choice.change(lambda choice: choice, where_choice, where, queue=False, show_progress="hidden",
                            api_name="generate_where", **PLUMBING)
        with gr.Row():
            seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            dice = gr.Button("Random seed", scale=0, min_width=130)
            n = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Number of images")
        cost = gr.Markdown(self.estimate(page.default_model, d.sampler, d.steps, DEFAULT_IMAGES, d.guidance)
                           if page.default_model else "", elem_classes=["panel-note"])
        presets_box = gr.Column()                  # filled below, once the outputs exist
        with gr.Row():
            run = gr.Button("Generate", variant="primary", interactive=bool(page.available), elem_id="gen-run")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="status-line")
        with gr.Row():
            xt = gr.Image(label="x_t: the noisy sample", height=GRID_PX + 10, elem_id="gen-xt", **upscaled(IMG))
            x0 = gr.Image(label="x̂0: denoised estimate (Tweedie)", height=GRID_PX + 10, elem_id="gen-x0",
                          **upscaled(IMG))
        note("When sampling ends, x_t and x̂0 coincide: the last step jumps to the denoised estimate (no noise "
             "is added at the end). The GIF shows every k-th step, at most 40 frames, x_t left and x̂0 right.")
        with gr.Row():
            final = gr.Image(label="Final samples", height=GRID_PX + 10, elem_id="gen-final", **upscaled(IMG))
            with gr.Column():
                anim = gr.Image(label="The whole trajectory (x_t | x̂0), replayed", height=GRID_PX - 110,
                                elem_id="gen-anim", interactive=False, elem_classes=["pixelated"],
                                buttons=["fullscreen"])
                gif = gr.File(label="Trajectory GIF (download)", interactive=False, elem_id="gen-gif")

        inputs, outputs = [model, digit, sampler, steps, guidance, seed, n, where], [xt, x0, status, final, gif, anim]
        with presets_box:
            self.presets = presets.examples(
                page, "generate", [p for p in presets.GENERATE if p.values["model"] in page.available],
                dict(zip(("model", "digit", "sampler", "steps", "guidance", "seed", "num_images"), inputs[:-1])),
                outputs, self.generate)
        gen = run.click(self.generate, inputs, outputs, api_name="generate", **page.heavy)
        stop.click(None, cancels=[gen])
        # .input: a person's pick only; a preset setting the model (and its own sampler and steps) does not fire it
        model.input(self.recommended_settings, model, [sampler, steps, guidance], api_name="recommended_settings",
                    queue=False, show_progress="hidden", preprocess=False, **PLUMBING)
        gr.on([model.change, sampler.change, steps.change, n.change, guidance.change], self.estimate,
              [model, sampler, steps, n, guidance], cost, api_name="estimate_cost", queue=False,
              preprocess=False, show_progress="hidden", **PLUMBING)
        dice.click(self.random_seed, None, seed, api_name="random_seed", queue=False, **PLUMBING)
