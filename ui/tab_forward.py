"""Tab 4, Forward diffusion: x(t) = x(0) + std(t)·z for a test digit or a drawing, as t slides; the std(t) curve;
and a network's one-step denoised estimate D(x(t); std(t))."""
from __future__ import annotations

import gradio as gr
import numpy as np
import torch

from diffusion.images import grid

from . import presets
from .controls import IMG, PLUMBING, Page, note
from .gradio_seam import upload_folder
from .lab import MODEL_NAMES, Lab
from .pictures import sketch_to_digit
from .plots import std_figure
from .validation import MAX_SEED, bad, check_choice, check_float, check_int


class ForwardTab:
    title = "Forward diffusion"
    grid_scale = 2                    # the clickable 10 x 10 grid of test digits
    grid_cell = 28 * grid_scale + 1   # pixels per digit, gap included

    def __init__(self, lab: Lab):
        self.lab = lab
        self.presets = None                 # the gr.Examples, once laid out

    def denoisers(self) -> list[str]:
        """'none' and the loaded pixel-space models (a latent model's D works on codes, not on these pixels)."""
        pipes = self.lab.pipelines
        return ["none"] + [n for n in MODEL_NAMES if n in pipes and not pipes[n].is_latent]

    def pick_test_digit(self, evt: gr.EventData):
        """A click on the grid of test digits -> its index (the grid is 10 x 10, see test_grid). The event data is
        checked here (gr.EventData: gradio does not parse it): index = [x, y], pixel coordinates, finite numbers;
        a click outside the grid picks the nearest digit."""
        data = getattr(evt, "_data", None)
        xy = data.get("index") if isinstance(data, dict) else None
        if not isinstance(xy, (list, tuple)) or len(xy) != 2:
            raise bad("index", "must be the [x, y] pixel position of a click on the grid", xy)
        x, y = (check_float("index", v, -1e6, 1e6) for v in xy)
        cell, last = self.grid_cell, 9
        row, col = (min(max(int(v // cell), 0), last) for v in (y, x))
        return row * 10 + col, "test digit"

    @staticmethod
    def use_drawing(sketch):
        """A stroke on the sketchpad ('input' fires for strokes, and once when the editor starts, empty):
        switch the source to the drawing when there is ink. Only gradio's upload folder is read; the drawing is
        decoded under ui/drawings.py's concurrency limit and pixel cap."""
        try:
            sketch_to_digit(sketch, root=upload_folder())
        except gr.Error:
            return gr.skip()
        return "drawing"

    def test_grid(self) -> np.ndarray:
        return grid(self.lab.test_images, nrow=10, scale=self.grid_scale, gap=1)

    def forward(self, source, test_index, sketch, t, noise_seed, denoiser):
        """x(t) = x(0) + std(t) z for a fixed z, the std(t) curve, and a one-step Tweedie estimate."""
        lab, sde = self.lab, self.lab.sde
        source = check_choice("source", source, ["test digit", "drawing"])
        index = check_int("test_index", test_index, 0, len(lab.test_images) - 1)
        t = check_float("t", t, 0.0, 1.0)
        noise_seed = check_int("noise_seed", noise_seed, 0, MAX_SEED)
        denoiser = check_choice("denoiser", denoiser, self.denoisers())
        if source == "drawing":
            x0, what = sketch_to_digit(sketch, root=upload_folder()), "your drawing"
        else:
            x0, what = lab.test_images[index], f"test image #{index} (a {lab.test_labels[index]})"
        std = sde.marginal_std(t)
        z = torch.randn((28, 28), generator=torch.Generator().manual_seed(noise_seed))
        xt = x0 + std * z
        lo, hi = float(xt.min()), float(xt.max())
        rescaled = (xt - lo) / max(hi - lo, 1e-8)
        up = lambda img: grid(img[None], scale=8)  # noqa: E731  (one 28x28 digit -> 224 px)
        tweedie, note_text = None, ""
        if denoiser != "none":
            pipe = lab.pipelines[denoiser]
            se = sde.marginal_std(max(t, sde.eps))            # the score model is trained on t >= eps
            x_in = (x0 + se * z)[None, None].to(pipe.device)  # (1, 1, 28, 28)
            labels = torch.tensor([pipe.score_model.null_label], device=pipe.device) if pipe.conditional else None
            with torch.inference_mode():
                est = pipe.score_model.denoise(x_in, se, labels)[0, 0].float().cpu()
            mse = float(((est.clamp(0, 1) - x0) ** 2).mean())
            tweedie = up(est.clamp(0, 1))
            note_text = (f" The {denoiser} network's one-step estimate x̂0 = x + std²·s(x, t)"
                         f"{' (null label: it is not told the digit)' if pipe.conditional else ''} has MSE {mse:.4f} "
                         f"against the clean image.")
        ratio = "well below" if std < 0.3 else ("about" if std < 3 else "far above")
        status = (f"{what}, t = {t:.3f}: std(t) = {std:.3g}, {ratio} the pixel range [0, 1]; x(t) spans "
                  f"[{lo:.2f}, {hi:.2f}].{note_text}")
        return up(x0), up(xt.clamp(0, 1)), up(rescaled), tweedie, std_figure(sde, t), status

    def layout(self, page: Page) -> None:
        note("The forward process adds Gaussian noise: x(t) = x(0) + std(t)·z, with one fixed noise image z. "
             "Slide t to see how fast the digit drowns: by t ≈ 0.5 the noise is already twice the pixel "
             "range. The network's one-step denoised estimate shows how much of the digit is still recoverable.")
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(["test digit", "drawing"], value="test digit", label="Source")
                index = gr.Slider(0, len(self.lab.test_images) - 1, 70, step=1,
                                  label="Test image (0–99: ten MNIST test digits of each class, in order)")
                t = gr.Slider(0, 1, 0.3, step=0.01, label="t (diffusion time)")
                seed = gr.Number(0, label="Noise seed", precision=0, minimum=0, maximum=MAX_SEED)
                denoisers = self.denoisers()
                denoiser = gr.Radio(denoisers, value=denoisers[-1] if len(denoisers) > 1 else "none",
                                    label="Denoiser (one network evaluation)")
                # not cached: setting the controls redraws the tab (a few ms)
                self.presets = presets.examples(
                    page, "forward", [presets.Preset(p.label, {**p.values, "denoiser": denoiser.value})
                                      for p in presets.FORWARD],
                    dict(source=source, test_index=index, t=t, noise_seed=seed, denoiser=denoiser))
            with gr.Column(scale=1):
                picker = gr.Image(self.test_grid(), label="Click a test digit", height=400, elem_id="fwd-grid",
                                  **{**IMG, "buttons": []})
            with gr.Column(scale=1):
                sketch = gr.Sketchpad(elem_id="fwd-sketch", label="…or draw a digit (white on black)",
                                      value={"background": np.zeros((280, 280, 3), np.uint8), "layers": [],
                                             "composite": None},
                                      canvas_size=(280, 280), fixed_canvas=True, image_mode="RGB",
                                      brush=gr.Brush(default_size=20, colors=["#ffffff"], color_mode="fixed"),
                                      layers=False, transforms=(), height=400, format="png")
        with gr.Row():
            x0 = gr.Image(label="x(0): clean", height=234, **IMG)
            xt = gr.Image(label="x(t), shown clipped to [0, 1]", height=234, **IMG)
            xr = gr.Image(label="x(t), rescaled to its own range", height=234, **IMG)
            tw = gr.Image(label="one-step denoised estimate x̂0", height=234, **IMG)
        status = gr.Markdown("", elem_id="fwd-status")
        plot = gr.Plot(label="std(t)", format="png")
        note("The clipped view is what the numbers look like as pixels; the rescaled view stretches x(t) to its "
             "own min–max so that the digit is visible for longer. The red dot marks the current t on the noise "
             "schedule; the dashed line is the size of the data itself.")

        inputs, outputs = [source, index, sketch, t, seed, denoiser], [x0, xt, xr, tw, plot, status]
        fwd = dict(preprocess=False, concurrency_id="forward", concurrency_limit=2, trigger_mode="always_last",
                   show_progress="minimal")
        gr.on([source.change, index.change, t.change, seed.change, denoiser.change, sketch.input],
              self.forward, inputs, outputs, api_name="forward_diffusion", **fwd)
        picker.select(self.pick_test_digit, None, [index, source], api_name="pick_test_digit", queue=False,
                      **PLUMBING)
        sketch.input(self.use_drawing, sketch, source, api_name="use_drawing", queue=False, preprocess=False,
                     **PLUMBING)
        page.demo.load(self.forward, inputs, outputs, api_name="forward_initial", **fwd, **PLUMBING)
