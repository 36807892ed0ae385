"""Which digit? The conditional diffusion model as a zero-shot classifier (diffusion/zero_shot.py; Li et al. 2023,
Clark & Jaini 2023): a test digit or a drawing is noised at a fixed set of levels, with the same noise for every
label, and denoised once per label; the label whose denoiser errs least, summed with the ELBO's weights, wins.
Here: inputs, the cost shown before the run, admission, and the curves and the ranking (the guard on every network
evaluation, ui/lab.py's forward pre-hook, stops a cancelled or over-time run)."""
from __future__ import annotations

import time

import gradio as gr
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from diffusion.images import grid
from diffusion.zero_shot import StopEarly, classify_images, evaluations_needed

from .controls import IMG, PLUMBING, Page, note
from .gradio_seam import upload_folder
from .lab import Lab, fmt_s
from .pictures import sketch_to_digit
from .run_loop import admit
from .validation import LABELS, MAX_SEED, check_choice, check_int

LABELS.update({"levels": "Noise levels", "stop_early": "Stop early"})
SOURCES = ["test digit", "drawing"]
# Defaults by the rule in docs/windows.md, written before the last figures were in: the cheapest setting within 1 point
# of the all-levels accuracy at 20 levels for both models, on 1000 test digits (bench/results/zero_shot_levels20_*):
# 20 levels, every label on 5, the best 3 on the other 15 = 95 evaluations per digit
MIN_LEVELS, MAX_LEVELS, DEFAULT_LEVELS = 2, 40, 20
STOP_EARLY = StopEarly(5, 3)


def digit_input(lab: Lab, source, test_index, sketch) -> tuple[torch.Tensor, str]:
    """(28, 28) image in [0, 1] and its description, from a test digit or the drawing (validated)."""
    source = check_choice("source", source, SOURCES)
    index = check_int("test_index", test_index, 0, len(lab.test_images) - 1)
    if source == "drawing":       # the Forward tab's decoder: one drawing -> 28 x 28 conversion for the whole app
        return sketch_to_digit(sketch, root=upload_folder()), "your drawing"
    return lab.test_images[index], f"test image #{index} (a {lab.test_labels[index]})"


def use_drawing(sketch):
    """A stroke on the sketchpad switches the source to the drawing (an empty canvas leaves it alone)."""
    try:
        sketch_to_digit(sketch, root=upload_folder())
    except gr.Error:
        return gr.skip()
    return "drawing"


def sketchpad(elem_id: str) -> gr.Sketchpad:
    return gr.Sketchpad(elem_id=elem_id, label="…or draw (white on black)",
                        value={"background": np.zeros((280, 280, 3), np.uint8), "layers": [], "composite": None},
                        canvas_size=(280, 280), fixed_canvas=True, image_mode="RGB",
                        brush=gr.Brush(default_size=20, colors=["#ffffff"], color_mode="fixed"),
                        layers=False, transforms=(), height=320, format="png")


def curves_figure(res, title: str) -> Figure:
    """Left: each label's weighted error e_k / sigma_k^2 against sigma (log axes); right: p(c | x)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=[3, 2])
    sig = res.sigmas.numpy()
    order = res.ranking[0].tolist()
    cmap = colormaps["tab10"]
    for c in reversed(order):
        i = res.labels.index(c)
        err = res.errors[0, i].numpy()
        kept = bool(res.kept[0, i])
        ax.plot(sig, err / sig**2, marker="o", ms=3, lw=2.2 if c == order[0] else 1.0,
                ls="-" if kept else ":", color=cmap(c % 10), label=f"{c}" + ("" if kept else " (dropped)"))
    ax.set(xscale="log", yscale="log", xlabel="noise level σ", ylabel="‖D(x+σz; σ, c) − x‖² / σ²",
           title="denoising error per label (lower = fits x better)")
    ax.legend(title="label", fontsize=7, ncol=2)
    probs = res.probs[0].numpy()
    bars.bar([str(c) for c in res.labels], probs, color=[cmap(c % 10) for c in res.labels])
    bars.set(ylim=(0, 1), xlabel="label c", ylabel="p(c | x)", title=title)
    for i, p in enumerate(probs):
        if p > 0.005:
            bars.text(i, p + 0.02, f"{p:.2f}", ha="center", fontsize=8)
    return fig


class WhichDigitTab:
    title = "Which digit?"

    def __init__(self, lab: Lab):
        self.lab = lab

    def _settings(self, model, levels, stop_early, seed):
        pipe = self.lab.pipeline(model, conditional=True)
        levels = check_int("levels", levels, MIN_LEVELS, MAX_LEVELS)
        if not isinstance(stop_early, bool):
            raise gr.Error(f"stop_early ({LABELS['stop_early']}) must be true or false; got {stop_early!r:.80}.",
                           title="Invalid input", print_exception=False)
        seed = check_int("seed", seed, 0, MAX_SEED)
        return pipe, levels, (STOP_EARLY if stop_early else None), seed

    def seconds(self, model: str, levels: int, stop_early) -> tuple[int, float | None]:
        """(network evaluations on one image, estimated seconds) for one classification."""
        evals = evaluations_needed(1, 10, levels, 1, stop_early)
        return evals, self.lab.cost.estimate(model, evals, 1)

    def estimate(self, model, levels, stop_early) -> str:
        """The cost line shown before a run (never raises: shown inline)."""
        try:
            _, levels, se, _ = self._settings(model, levels, stop_early, 0)
        except gr.Error as e:
            return f"⚠️ {e.message}"
        evals, est = self.seconds(model, levels, se)
        how = (f"10 labels × {min(se.first_levels, levels)} levels, then the best {se.keep} × the other "
               f"{max(0, levels - se.first_levels)}" if se else f"10 labels × {levels} levels")
        return (f"Cost: {how} = {evals} network evaluations (one image each)"
                + (f" ≈ {fmt_s(est)} here." if est is not None else "."))

    def classify(self, source, test_index, sketch, model, levels, stop_early, seed):
        """The input, the error curves with p(c | x), and a ranking with what it cost."""
        lab = self.lab
        image, what_in = digit_input(lab, source, test_index, sketch)
        pipe, levels, se, seed = self._settings(model, levels, stop_early, seed)
        evals, est = self.seconds(model, levels, se)
        admit(est, lab.max_seconds, params="levels", what="this classification",
              advice="Use fewer noise levels or stop early.")
        start = time.perf_counter()
        res = classify_images(pipe, image[None], num_levels=levels, stop_early=se,
                              generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - start
        ranking = res.ranking[0].tolist()
        probs = {c: float(p) for c, p in zip(res.labels, res.probs[0])}
        best = ranking[0]
        rows = " · ".join(f"{c}: {probs[c]:.3f}" for c in ranking[1:4])
        space = "latents (encoded by the autoencoder)" if pipe.is_latent else "pixels"
        summary = (f"**{model}** reads {what_in} as a **{best}** (p = {probs[best]:.3f}); next: {rows}. "
                   f"{levels} noise levels from σ = {float(res.sigmas[0]):.3g} to {float(res.sigmas[-1]):.3g}, "
                   f"one noise draw each, the same for all ten labels, in {space}"
                   + (f"; stop early: all labels on {se.first_levels} levels, the best {se.keep} on the rest"
                      if se else "")
                   + f". {res.evaluations} network evaluations in {fmt_s(wall)} · seed {seed}.\n\n"
                   f"Reproduce: `classify_images(load_pipeline('{model}'), image[None], num_levels={levels}"
                   + (f", stop_early=StopEarly({se.first_levels}, {se.keep})" if se else "")
                   + f", generator=torch.Generator().manual_seed({seed}))`")
        fig = curves_figure(res, "p(c | x) = softmax(−ELBO)")
        return grid(image[None], scale=8), fig, summary

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("A class-conditional diffusion model can classify without ever being trained to: noise the image, ask "
             "the model to denoise it once for each label, and see which label's denoiser lands closest to the "
             "image. Summed over noise levels with the right weights this is the model's own estimate of "
             "log p(x | c), so Bayes' rule gives p(c | x) (Li et al. 2023, “Your diffusion model is secretly a "
             "zero-shot classifier”).")
        models = page.conditional
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(SOURCES, value="test digit", label="Source")
                index = gr.Slider(0, len(self.lab.test_images) - 1, 7, step=1, label="Test image (0–99)")
                model = gr.Radio(models, value=models[0] if models else None, label="Model",
                                 info="class-conditional models only")
                levels = gr.Slider(MIN_LEVELS, MAX_LEVELS, DEFAULT_LEVELS, step=1, label="Noise levels")
                stop_early = gr.Checkbox(True, label="Stop early",
                                         info=f"all labels on {STOP_EARLY.first_levels} levels, then only the "
                                              f"best {STOP_EARLY.keep} (Li et al.'s adaptive mode)")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            with gr.Column(scale=1):
                sketch = sketchpad("wd-sketch")
        cost = gr.Markdown(self.estimate(models[0], DEFAULT_LEVELS, True) if models else
                           "No class-conditional model is loaded.", elem_classes=["panel-note"])
        with gr.Row():
            run = gr.Button("Classify", variant="primary", elem_id="wd-run", interactive=bool(models))
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="wd-status")
        with gr.Row():
            shown = gr.Image(label="input", height=240, elem_id="wd-input", scale=1, **IMG)
            plot = gr.Plot(label="error per label and p(c | x)", elem_id="wd-plot", scale=3)
        note("Left curves: for each label c, the denoiser's squared error divided by σ², at each noise level σ; the "
             "area under a curve (in log σ) is the label's −ELBO, so the lowest curve wins. At very small σ every "
             "label just returns the image and at very large σ none can see it: the labels differ in between.")
        note("Right: p(c | x) = softmax of −ELBO. It is often very sure, because the ELBO sums over 784 pixels; "
             "the accuracy of this classifier on 1000 test digits is in docs/windows.md (bench/zero_shot.py).")
        go = run.click(self.classify, [source, index, sketch, model, levels, stop_early, seed], [shown, plot, status],
                       api_name="which_digit", **page.heavy)
        stop.click(None, cancels=[go])
        gr.on([model.change, levels.change, stop_early.change], self.estimate, [model, levels, stop_early], cost,
              api_name="which_digit_cost", queue=False, preprocess=False, show_progress="hidden", **PLUMBING)
        sketch.input(use_drawing, sketch, source, api_name="which_digit_use_drawing", queue=False,
                     preprocess=False, **PLUMBING)
