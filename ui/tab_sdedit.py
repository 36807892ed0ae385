"""Draw and denoise: SDEdit (Meng et al. 2022) from a drawing or a test digit, noised to t0 and brought back by a
model towards a chosen digit; and inpainting (keep half of the input, regenerate the rest). The library part is
diffusion/editing.py, run by the model's Pipeline (`Pipeline.edit`: pixels or latents, decoding, precision); here:
inputs, streaming x_t and x̂0 through the run loop, and the classifier's reading of each result."""
from __future__ import annotations

import math

import gradio as gr
import numpy as np
import torch

from diffusion.editing import SDEDIT, half_mask
from diffusion.images import grid

from . import presets
from .controls import DEFAULT_DIGIT, GUIDANCE_STEP, IMG, PLUMBING, Page, follow_recommended_guidance, note
from .gradio_seam import upload_folder
from .lab import Lab, fmt_s
from .tab_forward import ForwardTab
from .pictures import PREVIEW_FRAMES, labelled_strip, show_grid, sketch_to_digit
from .validation import LABELS, MAX_GUIDANCE, MAX_SEED, check_choice, check_float, check_int

LABELS.update({"t0": "t0 (how much noise)", "region": "Inpainting", "num_images": "Number of images"})
REGIONS = ["none (SDEdit)", "keep top half", "keep bottom half", "keep left half", "keep right half"]
MAX_EDIT_STEPS, MAX_EDIT_IMAGES = 200, 8


class SDEditTab:
    title = "Draw and denoise"

    def __init__(self, lab: Lab):
        self.lab = lab
        self.presets = None                 # the gr.Examples, once laid out

    def _input(self, source, test_index, sketch) -> tuple[torch.Tensor, str]:
        source = check_choice("source", source, ["test digit", "drawing"])
        index = check_int("test_index", test_index, 0, len(self.lab.test_images) - 1)
        if source == "drawing":   # the Forward tab's decoder: one drawing -> 28 x 28 conversion for the whole app
            return sketch_to_digit(sketch, root=upload_folder()), "your drawing"
        return self.lab.test_images[index], f"test image #{index} (a {self.lab.test_labels[index]})"

    def edit(self, source, test_index, sketch, model, digit, guidance, t0, steps, seed, num_images, region):
        """Stream x_t and x̂0 from x(t0) = input + std(t0) z down to t = 0; end with each result's classifier
        reading and its distance to the input."""
        lab = self.lab
        x_in, what_in = self._input(source, test_index, sketch)
        pipe = lab.pipeline(model)
        digit = check_int("digit", digit, 0, 9)
        guidance = check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
        t0 = check_float("t0", t0, 0.0, 1.0)
        steps = check_int("steps", steps, 1, MAX_EDIT_STEPS)
        seed = check_int("seed", seed, 0, MAX_SEED)
        n = check_int("num_images", num_images, 1, MAX_EDIT_IMAGES)
        region = check_choice("region", region, REGIONS)
        if region != REGIONS[0] and pipe.is_latent:
            raise gr.Error("region: inpainting keeps pixels, so it runs on a pixel model (pixel-cond or "
                           "pixel-uncond); latent-cond does SDEdit only.", title="Invalid input", print_exception=False)
        lab.refuse_runaway(model, SDEDIT, steps, n, guidance)               # SDEdit's registered cost: 1 NFE / step
        sde = pipe.score_model.sde
        labels = [digit] * n if pipe.conditional else None
        mask = half_mask(region.split()[1]) if region != REGIONS[0] else None
        what = (f"**{model}** · SDEdit from {what_in} at t0 = {t0:g} (std {sde.marginal_std(t0):.3g}) · "
                f"{f'towards digit {digit}' if pipe.conditional else 'unconditional (digit ignored)'} · "
                f"{lab.guidance_note(pipe, guidance)} · {steps} steps · seed {seed} · {n} image(s)"
                + (f" · inpainting: {region}" if mask is not None else ""))
        up_in = grid(x_in[None], scale=8)
        yield up_in, None, None, None, what + "\n\nstarting…"
        # a latent model decodes each preview: only every k-th step is decoded (pixels: every step, cheap)
        every = max(1, math.ceil(steps / PREVIEW_FRAMES)) if pipe.is_latent else 1
        stream = pipe.edit(x_in[None].repeat(n, 1, 1), labels, t0=t0, num_steps=steps, guidance=guidance, seed=seed,
                           mask=mask, preview_every=every)
        step = None
        for step, due in lab.run(stream):
            if due and not step.final:
                yield (gr.skip(), show_grid(step.x, 300), show_grid(step.x0, 300), gr.skip(),
                       f"{what}\n\nstep {step.i + 1}/{steps} · t = {step.t:.3f} · NFE {step.nfe} · "
                       f"{fmt_s(step.elapsed)}")
        final = step.x                                                        # (n, 28, 28) in [0, 1]
        strip, summary = self.readings(final, x_in, mask)
        yield (up_in, show_grid(final, 300), show_grid(final, 300), strip,
               f"{what}\n\n**Done** in {fmt_s(step.elapsed)}: {step.nfe} NFE. {summary}")

    def edit_preset(self, source, test_index, model, digit, guidance, t0, steps, seed, num_images, region):
        """`edit` for a preset: the same handler and checks, with no drawing (a preset starts from a test digit and
        leaves the visitor's drawing alone; gradio 6.31 cannot cache examples that leave an input out)."""
        yield from self.edit(source, test_index, None, model, digit, guidance, t0, steps, seed, num_images, region)

    def readings(self, final: torch.Tensor, x_in: torch.Tensor, mask) -> tuple[np.ndarray, str]:
        """Each result with the evaluation classifier's reading and its RMS distance to the input."""
        diff = (final - x_in[None]) ** 2                                    # (n, 28, 28)
        rms = diff.flatten(1).mean(1).sqrt()
        if self.lab.classifier is not None:
            from diffusion.metrics import classify
            with torch.inference_mode():
                preds = classify(self.lab.classifier, final[:, None])[0].tolist()
        else:
            preds = None
        labels = [(f"{p} | " if preds else "") + f"{d:.2f}" for p, d in zip(preds or [None] * len(rms), rms)]
        text = (f"Under each result: the evaluation classifier's reading | d, the RMS pixel distance to the input "
                f"(0 = identical, ~0.3 = a different digit). Mean d = {rms.mean():.3f}.")
        if mask is not None:
            m = mask.cpu().bool()
            kept = diff[:, m].mean().sqrt().item()
            text += f" Kept half: RMS {kept:.3g} (exactly the input); regenerated half: RMS {diff[:, ~m].mean().sqrt():.3f}."
        if preds is None:
            text += " (No evaluation classifier is loaded, so no readings.)"
        return labelled_strip(final, labels, scale=5), text

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("SDEdit: take an image, add noise up to time t0, and let a model remove it, asking for a digit. With a "
             "small t0 only detail is redrawn and your strokes survive; with a large t0 little of the input is left "
             "and a clean digit of the requested class appears. Inpainting keeps half of the input and regenerates "
             "the other half to match it.")
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(["test digit", "drawing"], value="test digit", label="Source")
                index = gr.Slider(0, len(self.lab.test_images) - 1, 30, step=1, label="Test image (0–99)")
                model = gr.Radio(page.available, value=page.default_model, label="Model")
                digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit", info="ignored by pixel-uncond")
            with gr.Column(scale=1):
                sketch = gr.Sketchpad(elem_id="sde-sketch", label="…or draw (white on black)",
                                      value={"background": np.zeros((280, 280, 3), np.uint8), "layers": [],
                                             "composite": None},
                                      canvas_size=(280, 280), fixed_canvas=True, image_mode="RGB",
                                      brush=gr.Brush(default_size=20, colors=["#ffffff"], color_mode="fixed"),
                                      layers=False, transforms=(), height=360, format="png")
        with gr.Row():
            t0 = gr.Slider(0, 1, 0.4, step=0.01, label="t0 (how much noise)")
            guidance = gr.Slider(0, MAX_GUIDANCE, page.defaults.guidance, step=GUIDANCE_STEP, label="Guidance w")
            steps = gr.Slider(1, MAX_EDIT_STEPS, 20, step=1, label="Steps")
        with gr.Row():
            region = gr.Radio(REGIONS, value=REGIONS[0], label="Inpainting")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            n = gr.Slider(1, MAX_EDIT_IMAGES, 4, step=1, label="Number of images")
        presets_box = gr.Column()                  # filled below, once the outputs exist
        with gr.Row():
            run = gr.Button("Denoise", variant="primary", elem_id="sde-run", interactive=bool(page.available))
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="sde-status")
        with gr.Row():
            x_in = gr.Image(label="input", height=240, **IMG)
            xt = gr.Image(label="x_t: the noisy sample", height=310, elem_id="sde-xt", **IMG)
            x0 = gr.Image(label="x̂0: denoised estimate", height=310, elem_id="sde-x0", **IMG)
        strip = gr.Image(label="results: classifier reading, distance to the input", height=170,
                         elem_id="sde-strip", **IMG)
        note("x_t starts as the input plus noise of size std(t0) and is denoised step by step; x̂0 is the model's "
             "current guess of the clean result. d is the root-mean-square pixel difference from the input.")
        if page.lab.classifier is None:
            note("(No evaluation classifier is loaded: results are shown without readings.)")
        outputs = [x_in, xt, x0, strip, status]
        with presets_box:
            self.presets = presets.examples(
                page, "sdedit", [p for p in presets.SDEDIT if p.values["model"] in page.available],
                dict(source=source, test_index=index, model=model, digit=digit, guidance=guidance, t0=t0,
                     steps=steps, seed=seed, num_images=n, region=region), outputs, self.edit_preset)
        go = run.click(self.edit, [source, index, sketch, model, digit, guidance, t0, steps, seed, n, region],
                       outputs, api_name="sdedit", **page.heavy)
        stop.click(None, cancels=[go])
        follow_recommended_guidance(model, guidance, "sdedit_recommended_guidance")
        sketch.input(ForwardTab.use_drawing, sketch, source, api_name="sdedit_use_drawing", queue=False,
                     preprocess=False, **PLUMBING)
