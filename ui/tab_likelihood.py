"""How likely? Exact likelihood in bits/dim through the probability-flow ODE (diffusion/likelihood.py; Song et al.
2021, sec. 4.3): a test digit or a drawing beside the same digit shifted, inverted and rotated, and pure noise; for
a class-conditional model also log p(x | c) for every digit c. A fixed number of Heun steps bounds the cost, shown
before the run; the guard on every network evaluation (ui/lab.py's forward pre-hook) stops a cancelled or over-time
run."""
from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr
import torch
from matplotlib.figure import Figure

from diffusion.likelihood import VARIANTS, bits_per_dim_ode, conditional_bits_per_dim, image_variants

from .controls import IMG, PLUMBING, Page, note
from .lab import Lab, fmt_s
from .pictures import labelled_strip
from .run_loop import admit
from .tab_which_digit import SOURCES, digit_input, sketchpad, use_drawing
from .validation import LABELS, MAX_SEED, bad, check_int

LABELS.update({"ode_steps": "ODE steps"})
MIN_STEPS, MAX_ODE_STEPS, DEFAULT_ODE_STEPS = 2, 60, 24
VJP_COST = 3          # one right-hand side = a forward and a vector-Jacobian product ~ 3 forwards' time
BENCH = Path(__file__).resolve().parents[1] / "bench" / "results" / "likelihood.json"


def bench_figure() -> str:
    """The benchmark's bits/dim of real test digits (bench/likelihood.py), for comparison."""
    try:
        d = json.loads(BENCH.read_text())
        return (f"{d['bpd_mean']:.2f} ± {d['bpd_se']:.2f} bits/dim ({d['model']}, {d['n']} test digits, adaptive "
                "solver: bench/results/likelihood.md)")
    except (OSError, KeyError, ValueError):
        return "(no benchmark figure found)"


def conditional_figure(bpd: torch.Tensor, model: str) -> Figure:
    """Bars of bits/dim under each digit c (and the null label, the model's unconditional p(x))."""
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    names = [str(c) for c in range(len(bpd) - 1)] + ["none"]
    values = bpd.numpy()
    best = int(values[:-1].argmin())
    ax.bar(names, values, color=["tab:green" if i == best else "tab:blue" for i in range(len(values) - 1)] + ["grey"])
    lo, hi = float(values.min()), float(values.max())
    ax.set(ylim=(lo - 0.2 * (hi - lo) - 0.05, hi + 0.1 * (hi - lo) + 0.05), xlabel="label c (none = null label)",
           ylabel="bits/dim  (−log₂ p(x | c) / 784 + 8)",
           title=f"{model}: how likely this image is under each digit (lower = likelier)")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    return fig


class LikelihoodTab:
    title = "How likely?"

    def __init__(self, lab: Lab):
        self.lab = lab

    def models(self) -> list[str]:
        """Pixel models only: a latent model's likelihood is that of its latents, not of the 784 pixels."""
        return [n for n, p in self.lab.pipelines.items() if not p.is_latent]

    def _pipe(self, model):
        pipe = self.lab.pipeline(model)
        if pipe.is_latent:
            raise bad("model", "must be a pixel model (pixel-uncond or pixel-cond): latent-cond diffuses autoencoder "
                      "latents, so its likelihood is that of the latents, not bits per pixel", model)
        return pipe

    def seconds(self, model: str, steps: int) -> tuple[int, int, float | None]:
        """(NFE, rows per evaluation, estimated seconds): 2 x steps evaluations on the variants, and on every label
        of a conditional model."""
        conditional = self.lab.pipelines[model].conditional
        rows = len(VARIANTS) + (11 if conditional else 0)
        nfe = 2 * steps * (2 if conditional else 1)          # two solves for a conditional model
        est = self.lab.cost.estimate(model, 2 * steps * VJP_COST, rows)
        return nfe, rows, est

    def estimate(self, model, ode_steps) -> str:
        try:
            self._pipe(model)
            steps = check_int("ode_steps", ode_steps, MIN_STEPS, MAX_ODE_STEPS)
        except gr.Error as e:
            return f"⚠️ {e.message}"
        nfe, rows, est = self.seconds(model, steps)
        return (f"Cost: {steps} Heun steps = {2 * steps} evaluations of the ODE (each a forward pass and a "
                f"vector–Jacobian product) on {rows} images" + (f" ≈ {fmt_s(est)} here." if est is not None else "."))

    def likelihood(self, source, test_index, sketch, model, ode_steps, seed):
        """The variants with their bits/dim, per-digit bits/dim for a conditional model, and a summary."""
        lab = self.lab
        image, what_in = digit_input(lab, source, test_index, sketch)
        pipe = self._pipe(model)
        steps = check_int("ode_steps", ode_steps, MIN_STEPS, MAX_ODE_STEPS)
        seed = check_int("seed", seed, 0, MAX_SEED)
        nfe, rows, est = self.seconds(model, steps)
        admit(est, lab.max_seconds, params="ode_steps", what="this likelihood", advice="Use fewer ODE steps.")
        generator = torch.Generator().manual_seed(seed)
        variants = image_variants(image, generator)
        batch = torch.stack(list(variants.values()))[:, None].to(pipe.device)         # (5, 1, 28, 28)
        start = time.perf_counter()
        bpd, _ = bits_per_dim_ode(pipe.score_model, batch, None, generator=generator, method="heun", num_steps=steps)
        cond_fig, cond_text = None, ""
        if pipe.conditional:
            cbpd, _ = conditional_bits_per_dim(pipe.score_model, batch[0], generator=generator, method="heun",
                                               num_steps=steps)
            cond_fig = conditional_figure(cbpd.float(), model)
            best = int(cbpd[:-1].argmin())
            cond_text = (f" Under each digit c, the image is likeliest as a **{best}** ({float(cbpd[best]):.2f} "
                         f"bits/dim; with the null label {float(cbpd[-1]):.2f}).")
        wall = time.perf_counter() - start
        figures = {name: float(b) for name, b in zip(variants, bpd)}
        strip = labelled_strip(torch.stack(list(variants.values())), [f"{figures[n]:.2f}" for n in variants], scale=5)
        table = ["| image | bits/dim |", "|---|---|"] + [f"| {n} | {figures[n]:.3f} |" for n in variants]
        label_note = "null label (the model's unconditional p(x))" if pipe.conditional else "unconditional"
        summary = (f"**{model}**, {label_note}, {what_in}: **{figures['as given']:.2f} bits/dim**; real test digits "
                   f"average {bench_figure()}.{cond_text}\n\n" + "\n".join(table) +
                   f"\n\n{steps} Heun steps of the probability-flow ODE, {nfe} evaluations in {fmt_s(wall)}, "
                   f"dequantised (x = (k + u)/256) and one Rademacher probe per image, seed {seed}. Few steps read "
                   "low: on the shipped pixel-uncond, 10 / 20 / 40 Heun steps came out 0.86 / 0.21 / 0.05 bits/dim "
                   "below the adaptive solver (docs/windows.md).")
        return strip, cond_fig, summary

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("How probable is an image under the model? The probability-flow ODE maps every image to a point of the "
             "Gaussian prior, and the change-of-variables formula turns that map into an exact log-likelihood, "
             "reported in bits per pixel (lower = likelier). A real digit should score far better than the same "
             "digit inverted, or pure noise.")
        models = self.models()
        default = "pixel-cond" if "pixel-cond" in models else (models[0] if models else None)
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(SOURCES, value="test digit", label="Source")
                index = gr.Slider(0, len(self.lab.test_images) - 1, 3, step=1, label="Test image (0–99)")
                model = gr.Radio(models, value=default, label="Model", info="pixel models (bits per pixel)")
                steps = gr.Slider(MIN_STEPS, MAX_ODE_STEPS, DEFAULT_ODE_STEPS, step=1, label="ODE steps")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            with gr.Column(scale=1):
                sketch = sketchpad("lk-sketch")
        cost = gr.Markdown(self.estimate(default, DEFAULT_ODE_STEPS) if default else "No pixel model is loaded.",
                           elem_classes=["panel-note"])
        with gr.Row():
            run = gr.Button("Measure", variant="primary", elem_id="lk-run", interactive=bool(models))
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="lk-status")
        strip = gr.Image(label="the image, shifted, inverted, rotated, pure noise: bits/dim under each", height=190,
                         elem_id="lk-strip", **IMG)
        note("Each picture with its bits/dim. Shifting or rotating keeps the strokes but puts them where digits "
             "rarely are; inverting makes the background white, which no training digit has; noise is the "
             "least likely of all. 8 bits/dim is what a uniform guess over 256 grey levels would cost.")
        plot = gr.Plot(label="log p(x | c) for each digit c", elem_id="lk-plot")
        note("For a class-conditional model: the same image's bits/dim under each digit label (the same "
             "dequantisation noise and probe for every label, so the bars compare like with like). The lowest bar "
             "is the label the model finds likeliest — the same question the “Which digit?” tab answers.")
        go = run.click(self.likelihood, [source, index, sketch, model, steps, seed], [strip, plot, status],
                       api_name="how_likely", **page.heavy)
        stop.click(None, cancels=[go])
        gr.on([model.change, steps.change], self.estimate, [model, steps], cost, api_name="how_likely_cost",
              queue=False, preprocess=False, show_progress="hidden", **PLUMBING)
        sketch.input(use_drawing, sketch, source, api_name="how_likely_use_drawing", queue=False, preprocess=False,
                     **PLUMBING)
