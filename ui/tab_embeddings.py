"""Tab 3, Digit embeddings: how alike the learned digit vectors are (cosine-similarity heatmap), and what a
conditional model draws from a blend (1 − α)·e_A + α·e_B of two of them."""
from __future__ import annotations

import time

import gradio as gr
import numpy as np
import torch

from .controls import DEFAULT_SEED, IMG, Page, note, sampling_controls
from .lab import Lab, fmt_s
from .pictures import labelled_strip, show_grid
from .plots import similarity_figure
from .validation import MAX_IMAGES, MAX_SEED, check_float, check_int

STRIP_ALPHAS = 9              # images in the interpolation strip (alpha = 0 .. 1)


class EmbeddingsTab:
    title = "Digit embeddings"

    def __init__(self, lab: Lab):
        self.lab = lab

    def interpolate(self, model, digit_a, digit_b, alpha, seed, num_images, sampler, steps, guidance):
        """Generate from (1 - alpha) e_a + alpha e_b; then the strip alpha = 0 .. 1 for the first noise."""
        lab = self.lab
        pipe = lab.pipeline(model, conditional=True)
        a, b = check_int("digit_a", digit_a, 0, 9), check_int("digit_b", digit_b, 0, 9)
        alpha = check_float("alpha", alpha, 0.0, 1.0)
        sampler, steps, guidance, seed = lab.check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        lab.refuse_runaway(model, sampler, steps, n, guidance, runs_of_one=STRIP_ALPHAS)   # the grid, then the strip
        emb = pipe.score_model.label_embeddings()                                   # (11, D), null last
        kw = dict(sampler=sampler, num_steps=steps, guidance=guidance, seed=seed)
        start = time.perf_counter()
        try:
            mix = ((1 - alpha) * emb[a] + alpha * emb[b]).expand(n, -1).clone()    # (B, D)
            images, last = pipe.generate(mix, **kw)
            head = (f"**{model}** · (1 − α)·e_{a} + α·e_{b}, α = {alpha:.2f} · {sampler} · {steps} steps · "
                    f"guidance {guidance:g} · seed {seed}")
            status = f"{head}\n\n{n} images in {fmt_s(last.elapsed)}, {last.nfe} NFE."
            picture_grid = show_grid(images)
            yield picture_grid, None, status + " Now the strip α = 0 … 1…"
            alphas = np.linspace(0, 1, STRIP_ALPHAS)
            strip = []
            for al in alphas:      # batch of one per alpha: the same seed gives the same starting noise
                lab.check_time(time.perf_counter() - start)
                e = ((1 - al) * emb[a] + al * emb[b])[None].clone()
                strip.append(pipe.generate(e, **kw)[0][0])
        except gr.Error:                  # the guard before a network evaluation (a ValueError too): as it is
            raise
        except (ValueError, RuntimeError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        total = time.perf_counter() - start
        picture = labelled_strip(torch.stack(strip), [f"{al:.3g}" for al in alphas])
        yield picture_grid, picture, f"{status} Strip: {STRIP_ALPHAS} more runs; {fmt_s(total)} in all."

    def layout(self, page: Page) -> None:
        note("Each conditional model learns one vector per digit (plus a 'null' one for guidance); it reaches "
             "the U-Net through cross-attention. The heatmap compares the ten digit vectors by cosine "
             "similarity (colours scaled to the largest off-diagonal value): red pairs point the same way, blue "
             "pairs opposite ways. Digits the model finds alike "
             "(4/9 or 3/5/8, say) may sit closer.")
        gr.Plot(similarity_figure(self.lab.pipelines), label="Embedding similarity", format="png")
        note("Below, the model is given a blend of two digit vectors, (1 − α)·e_A + α·e_B, instead of a digit. "
             "The grid uses your α; the strip under it walks α from 0 to 1 for the first image's noise, so you "
             "can see where one digit turns into the other.")
        conditional = page.conditional
        with gr.Row():
            model = gr.Radio(conditional, value=conditional[0] if conditional else None, label="Model")
            digit_a = gr.Radio(list(range(10)), value=1, label="Digit A")
            digit_b = gr.Radio(list(range(10)), value=7, label="Digit B")
        with gr.Row():
            alpha = gr.Slider(0, 1, 0.5, step=0.05, label="alpha (0 = digit A, 1 = digit B)")
            seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            n = gr.Slider(1, MAX_IMAGES, 8, step=1, label="Number of images")
        with gr.Accordion("Sampler settings", open=False):
            sampler, steps, guidance = sampling_controls(page, "emb")
        with gr.Row():
            run = gr.Button("Generate from the blend", variant="primary", interactive=bool(conditional),
                            elem_id="emb-run")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("")
        with gr.Row():
            grid = gr.Image(label="Samples at this α", height=360, scale=1, **IMG)
            strip = gr.Image(label="α = 0 (digit A) … 1 (digit B), the same starting noise", height=160, scale=2,
                             elem_id="emb-strip", **IMG)

        emb = run.click(self.interpolate, [model, digit_a, digit_b, alpha, seed, n, sampler, steps, guidance],
                        [grid, strip, status], api_name="interpolate", **page.heavy)
        stop.click(None, cancels=[emb])
