"""Tab 2, Pixel vs latent: the same digit, seed and sampler through pixel-cond and latent-cond, stepped in turn,
each timed on its own; the table shows what the latent model's autoencoder costs."""
from __future__ import annotations

import math

import gradio as gr

from diffusion.registry import pixel_and_latent
from diffusion.samplers import sampler_spec

from . import presets
from .controls import DEFAULT_DIGIT, DEFAULT_IMAGES, DEFAULT_SEED, IMG, Page, note, sampling_controls
from .lab import Lab, fmt_s, param_count, preview_every
from .pictures import sent_grid, upscaled
from .run_loop import PREVIEW_INTERVAL, Lane, lockstep
from .validation import MAX_IMAGES, MAX_SEED, check_int

NAMES = pixel_and_latent()           # (pixel-cond, latent-cond): the registry's pair


def decode_every(every: int, steps: int, seconds: float | None, interval: float = PREVIEW_INTERVAL) -> int:
    """Decode a latent preview every k-th step, k >= `every`, so that decoded previews come about once per `interval`
    of the run's expected wall time `seconds` for `steps` steps (the run loop streams no more often than that:
    a preview decoded between two updates is never seen). Unknown time (no estimate): `every` as it is."""
    if not seconds or seconds <= 0 or steps <= 0:
        return every
    return max(every, min(steps, math.ceil(interval * steps / seconds)))


class CompareTab:
    title = "Pixel vs latent"

    def __init__(self, lab: Lab):
        self.lab = lab
        self.presets = None                 # the gr.Examples, once laid out

    def compare(self, digit, sampler, steps, guidance, seed, num_images):
        """pixel-cond and latent-cond, same digit/seed/sampler, stepped in lockstep by NFE; each one's own time."""
        lab = self.lab
        pipes = [lab.pipeline(n) for n in NAMES]
        digit = check_int("digit", digit, 0, 9)
        sampler, steps, guidance, seed = lab.check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        worst = 0.0                        # both run in this one request: their worst cases add up
        for name in NAMES:
            worst = lab.refuse_runaway(name, sampler, steps, n, guidance, also_seconds=worst)
        every = preview_every(sampler, steps)
        # both lanes step in turn, so a step of the pair costs both models' step; the latent lane decodes (the
        # autoencoder, a cost of its own) only the previews the page can show; pixel previews are free to make
        estimates = [lab.estimate_seconds(name, sampler, steps, n, guidance) for name in NAMES]
        pair = sum(estimates) if all(estimates) and not sampler_spec(sampler).adaptive else None
        lanes = [Lane(name, p.stream([digit] * n, sampler=sampler, num_steps=steps, guidance=guidance, seed=seed,
                                     preview_every=decode_every(every, steps, pair) if p.is_latent else every))
                 for name, p in zip(NAMES, pipes)]
        yield None, None, None, None, "starting…"
        # each lane's own time: its pipeline's compute (the other's turn excluded)
        for _, due in lab.run(lockstep(lanes), final=lambda _: all(q.done for q in lanes)):
            if due:
                last, own, done = [q.step for q in lanes], [q.own for q in lanes], [q.done for q in lanes]
                imgs = [sent_grid(s.x) if s else gr.skip() for s in last] + \
                       [sent_grid(s.x0) if s else gr.skip() for s in last]
                yield imgs[0], imgs[2], imgs[1], imgs[3], self.table(pipes, last, own, done)

    @staticmethod
    def table(pipes, last, own, done) -> str:
        """Markdown: what each model works on, its size, progress, NFE, time per step, decoder share."""
        rows = ["| | " + " | ".join(NAMES) + " |", "|---|---|---|"]

        def row(label, fn):
            rows.append(f"| {label} | " + " | ".join(fn(k) for k in range(2)) + " |")

        row("works on", lambda k: "×".join(map(str, pipes[k].score_model.sample_shape)) +
            (" latents" if pipes[k].is_latent else " pixels"))
        row("score-model parameters", lambda k: param_count(pipes[k].score_model))
        row("progress", lambda k: ("done" if done[k] else f"step {last[k].i + 1}") if last[k] else "—")
        row("NFE", lambda k: str(last[k].nfe) if last[k] else "—")
        row("time per step", lambda k: fmt_s(own[k] / (last[k].i + 1)) if last[k] else "—")
        row("total time", lambda k: fmt_s(own[k]))
        row("autoencoder decoding", lambda k: "— (none)" if not pipes[k].is_latent else (
            f"{fmt_s(last[k].decode_time)} ({100 * last[k].decode_time / max(own[k], 1e-9):.0f}% of its time)"
            if last[k] else "—"))
        return "\n".join(rows)

    def layout(self, page: Page) -> None:
        note("The same digit, seed and sampler through **pixel-cond** (the SDE runs on 28×28 pixels) and "
             "**latent-cond** (the same SDE on the autoencoder's 4×10×10 codes, decoded to pixels to be seen). "
             "The two are stepped in turn and each is timed on its own; the table shows NFE, time per step, "
             "and how much of the latent model's time went to the autoencoder's decoder.")
        with gr.Row():
            digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit")
            seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            n = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Number of images")
        sampler, steps, guidance = sampling_controls(page, "cmp")
        presets_box = gr.Column()                  # filled below, once the outputs exist
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="cmp-run",
                            interactive=set(NAMES) <= set(page.available))
            stop = gr.Button("Stop", variant="stop")
        with gr.Row():
            with gr.Column():
                gr.Markdown("#### pixel-cond")
                with gr.Row():
                    pix_xt = gr.Image(label="x_t", height=390, elem_id="cmp-pix-xt", **upscaled(IMG))
                    pix_x0 = gr.Image(label="x̂0", height=390, elem_id="cmp-pix-x0", **upscaled(IMG))
            with gr.Column():
                gr.Markdown("#### latent-cond (decoded)")
                with gr.Row():
                    lat_xt = gr.Image(label="decoded z_t", height=390, elem_id="cmp-lat-xt", **upscaled(IMG))
                    lat_x0 = gr.Image(label="decoded ẑ0", height=390, elem_id="cmp-lat-x0", **upscaled(IMG))
        table = gr.Markdown("", elem_id="cmp-table")
        note("A decoded noisy latent does not look like pixel noise: the decoder maps any code to something "
             "smooth. Decoding each preview counts in the autoencoder's share; a run without previews "
             "decodes only once.")

        inputs, outputs = [digit, sampler, steps, guidance, seed, n], [pix_xt, pix_x0, lat_xt, lat_x0, table]
        with presets_box:
            self.presets = presets.examples(
                page, "compare", presets.COMPARE if set(NAMES) <= set(page.available) else (),
                dict(zip(("digit", "sampler", "steps", "guidance", "seed", "num_images"), inputs)), outputs,
                self.compare)
        cmp = run.click(self.compare, inputs, outputs, api_name="compare", **page.heavy)
        stop.click(None, cancels=[cmp])
