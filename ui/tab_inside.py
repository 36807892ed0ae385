"""Inside the network (diffusion/anatomy.py): for one noisy input x_t at a chosen t, the Gaussian Fourier time
features, the U-Net's feature maps at every resolution level, D(x_t; sigma) and the raw output F, and the size of the
label pathway's contribution per level and digit; below, the training (DSM) loss per noise level for each digit on
held-out digits with the training noise-level distribution overlaid. Cost shown before each run; the guard on every
network evaluation (ui/lab.py's forward pre-hook) stops a cancelled or over-time run."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from diffusion.anatomy import (label_contributions, look_inside, loss_by_level, strongest_channels, time_features,
                               training_sigma_density)
from diffusion.zero_shot import noise_levels, pipeline_inputs

from .controls import DEFAULT_DIGIT, PLUMBING, Page, note
from .lab import Lab, fmt_s
from .run_loop import admit
from .validation import LABELS, MAX_SEED, check_float, check_int

LABELS.update({"loss_levels": "Noise levels (loss)", "per_digit": "Held-out digits per class"})
RECORDS = Path(__file__).resolve().parents[1] / "train" / "records"
CHANNELS_SHOWN, T_GRID = 4, 120
MIN_LOSS_LEVELS, MAX_LOSS_LEVELS, DEFAULT_LOSS_LEVELS = 3, 30, 12
MAX_PER_DIGIT = 10                     # the app ships 10 test digits of each class (ui/assets/mnist_test_sample.npz)


def bare(score_model):
    """The ScoreModel itself (an autoguided pair's good model: what the tab looks inside)."""
    return getattr(score_model, "good", score_model)


def training_draw(model_name: str) -> dict:
    """How training drew noise levels for a model (train/records/<name>.json's config), uniform t when unknown."""
    try:
        cfg = json.loads((RECORDS / f"{model_name}.json").read_text())["config"]
        return {"t_sampling": cfg.get("t_sampling") or "uniform", "p_mean": cfg.get("p_mean") or -1.2,
                "p_std": cfg.get("p_std") or 1.2}
    except (OSError, KeyError, ValueError):
        return {"t_sampling": "uniform", "p_mean": -1.2, "p_std": 1.2}


def _show(ax, img: np.ndarray, title: str, cmap="gray"):
    im = ax.imshow(img, cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
    return im


def outputs_figure(x_t, inside, decoded, t: float, model: str) -> Figure:
    """x_t, D(x_t; sigma) (decoded to pixels for a latent model) and F (first channel for latents)."""
    fig = Figure(figsize=(9, 3), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [(x_t[0].numpy(), f"x_t at t = {t:.3f} (σ = {inside.sigma:.3g})" + (" · latent ch. 0" if x_t.shape[0] > 1 else "")),
              (decoded.numpy(), "D(x_t; σ): the denoised estimate" + (" (decoded)" if x_t.shape[0] > 1 else "")),
              (inside.raw[0].numpy(), f"F: the network's raw output (D = {inside.c_skip:.3g}·x_t + {inside.c_out:.3g}·F)")]
    for ax, (img, title) in zip(axes, panels):
        fig.colorbar(_show(ax, img, title, "gray" if "D(" in title else "RdBu_r"), ax=ax, shrink=0.8)
    fig.suptitle(f"{model}: input and outputs", fontsize=10)
    return fig


def features_figure(inside) -> Figure:
    """Per block (rows), the CHANNELS_SHOWN channels with the largest spatial variance."""
    rows = len(inside.features)
    fig = Figure(figsize=(1.6 * CHANNELS_SHOWN + 1.5, 1.5 * rows), layout="constrained")
    axes = fig.subplots(rows, CHANNELS_SHOWN, squeeze=False)
    for r, (name, fmap) in enumerate(inside.features):
        for col, ch in enumerate(strongest_channels(fmap, CHANNELS_SHOWN).tolist()):
            _show(axes[r, col], fmap[ch].numpy(), f"{name} · ch {ch} ({fmap.shape[1]}×{fmap.shape[2]})", "viridis")
    fig.suptitle("feature maps at every resolution level (the most structured channels; colour: activation)",
                 fontsize=10)
    return fig


def time_figure(model, t: float) -> Figure:
    t_grid = torch.linspace(model.sde.eps, 1.0, T_GRID, dtype=torch.float64)
    feats = time_features(model, t_grid).numpy()                      # (T, E)
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(feats.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                   extent=(float(t_grid[0]), 1.0, feats.shape[1], 0))
    ax.axvline(t, color="black", lw=2, ls="--", label=f"current t = {t:.3f}")
    ax.set(xlabel="diffusion time t", ylabel="feature (sin | cos halves)",
           title="Gaussian Fourier features of the network's time input, over t")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=ax, label="sin / cos value")
    return fig


def label_figure(model, inside) -> Figure | None:
    """Per attention level and digit: ‖W_out W_v e_c + b_out‖ relative to the RMS size of that level's features."""
    if not model.conditional:
        return None
    contributions = label_contributions(model)
    rms = {name: float(f.square().sum(0).mean().sqrt()) for name, f in inside.features}
    names = [n for n, _ in contributions]
    sizes = np.stack([c.norm(dim=1).numpy() / max(rms.get(n, rms.get("middle", 1.0)), 1e-8) for n, c in contributions])
    fig = Figure(figsize=(8, 0.7 * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(sizes, cmap="magma", aspect="auto")
    ax.set_xticks(range(sizes.shape[1]), [str(c) for c in range(sizes.shape[1] - 1)] + ["null"])
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(sizes):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < sizes.max() / 2 else "black")
    ax.set(xlabel="digit label", title="label pathway: size of the cross-attention's output ‖W_out W_v e_c + b_out‖\n"
           "per level, relative to the RMS size of the features it is added to")
    fig.colorbar(im, ax=ax)
    return fig


def loss_figure(sigmas, losses, draw: dict, sde, model: str) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    sig = sigmas.numpy()
    for c in range(losses.shape[0]):
        if not torch.isnan(losses[c]).all():
            ax.plot(sig, losses[c].numpy(), marker="o", ms=3, color=cmap(c), label=str(c))
    ax.set(xscale="log", yscale="log", xlabel="noise level σ", ylabel="DSM loss λ(σ)‖D − x‖²",
           title=f"{model}: training loss per noise level and digit (held-out digits)")
    ax.legend(title="digit", fontsize=7, ncol=2, loc="upper left")
    twin = ax.twinx()
    grid = torch.linspace(math.log(sde.std_min), math.log(sde.std_max), 200, dtype=torch.float64)
    dens = training_sigma_density(grid, sde, **draw)
    twin.fill_between(grid.exp().numpy(), dens.numpy(), color="grey", alpha=0.2)
    twin.set_ylabel(f"training density of ln σ ({draw['t_sampling']})", color="grey")
    twin.set_ylim(0, float(dens.max()) * 1.1 + 1e-9)
    return fig


class InsideTab:
    title = "Inside the network"

    def __init__(self, lab: Lab):
        self.lab = lab

    def held_out(self, per_digit: int) -> list[int]:
        """Indices of the first `per_digit` app test digits of each class (the app ships 10 of each)."""
        seen, out = {}, []
        for i, c in enumerate(self.lab.test_labels.tolist()):
            if seen.get(c, 0) < per_digit:
                seen[c] = seen.get(c, 0) + 1
                out.append(i)
        return out

    def estimate(self, model, loss_levels, per_digit) -> str:
        try:
            self.lab.pipeline(model)
            levels = check_int("loss_levels", loss_levels, MIN_LOSS_LEVELS, MAX_LOSS_LEVELS)
            n = len(self.held_out(check_int("per_digit", per_digit, 1, MAX_PER_DIGIT)))
        except gr.Error as e:
            return f"⚠️ {e.message}"
        est = self.lab.cost.estimate(model, levels, n)
        return (f"Cost: a look inside is 1 network evaluation; the loss curves are {levels} levels × "
                f"{n} held-out digits = {levels * n} evaluations" + (f" ≈ {fmt_s(est)} here." if est is not None else "."))

    def inside(self, model, test_index, digit, t, seed):
        """x_t from a test digit at time t; one denoiser call with every level's features kept."""
        lab = self.lab
        pipe = lab.pipeline(model)
        index = check_int("test_index", test_index, 0, len(lab.test_images) - 1)
        digit = check_int("digit", digit, 0, 9)
        t = check_float("t", t, 0.001, 1.0)
        seed = check_int("seed", seed, 0, MAX_SEED)
        model_ = bare(pipe.score_model)
        start = time.perf_counter()
        x0 = pipeline_inputs(pipe, lab.test_images[index][None])[0]              # (C, H, W) pixels or latents
        sigma = model_.sde.marginal_std(t)
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
        x_t = x0 + sigma * z
        inside = look_inside(model_, x_t, sigma, digit if model_.conditional else None)
        decoded = inside.denoised[None]
        if pipe.is_latent:
            with torch.no_grad():
                decoded = pipe.autoencoder.decode(decoded.to(pipe.device)).cpu()
        decoded = decoded[0, 0].clamp(0, 1)
        wall = time.perf_counter() - start
        label = f"digit {digit}" if model_.conditional else "no label (unconditional)"
        summary = (f"**{model}** · test image #{index} (a {lab.test_labels[index]}) noised to t = {t:.3f} "
                   f"(σ = {sigma:.3g}), seed {seed} · asked for {label} · 1 network evaluation in {fmt_s(wall)}.")
        return (outputs_figure(x_t.cpu(), inside, decoded, t, model), time_figure(model_, t), features_figure(inside),
                label_figure(model_, inside), summary)

    def losses(self, model, loss_levels, per_digit, seed):
        """The DSM loss per level per digit on the app's 100 held-out test digits, training density overlaid."""
        lab = self.lab
        pipe = lab.pipeline(model)
        levels = check_int("loss_levels", loss_levels, MIN_LOSS_LEVELS, MAX_LOSS_LEVELS)
        seed = check_int("seed", seed, 0, MAX_SEED)
        rows = self.held_out(check_int("per_digit", per_digit, 1, MAX_PER_DIGIT))
        n = len(rows)
        admit(lab.cost.estimate(model, levels, n), lab.max_seconds, params="loss_levels",
              what="these loss curves", advice="Use fewer noise levels.")
        model_ = bare(pipe.score_model)
        sigmas, _ = noise_levels(model_.sde.std_min, model_.sde.std_max, levels)
        start = time.perf_counter()
        x = pipeline_inputs(pipe, lab.test_images[rows])
        labels = torch.as_tensor(lab.test_labels[rows], dtype=torch.long)
        losses = loss_by_level(model_, x, labels.to(x.device), sigmas, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - start
        draw = training_draw(model)
        worst = int(losses.nanmean(1).argmax())
        text = (f"**{model}** · DSM loss on {n} held-out test digits ({n // 10} per digit) at {levels} noise levels, "
                f"one noise draw each (seed {seed}) · {levels * n} network evaluations in {fmt_s(wall)} · training drew "
                f"noise levels by “{draw['t_sampling']}” (train/records/{model}.json). Hardest digit on average: "
                f"{worst}.")
        return loss_figure(sigmas, losses, draw, model_.sde, model), text

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("One noisy input, one network evaluation, everything kept: what the network is told about time, what "
             "its layers compute at each resolution, and what it returns. The denoiser D is the network's raw "
             "output F scaled and added to a share of the input (the preconditioning of diffusion/score.py).")
        default = page.default_model
        with gr.Row():
            model = gr.Radio(page.available, value=default, label="Model")
            index = gr.Slider(0, len(self.lab.test_images) - 1, 0, step=1, label="Test image (0–99)")
        with gr.Row():
            digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit",
                             info="the label the network is given (ignored by pixel-uncond)")
            t = gr.Slider(0.001, 1.0, 0.3, step=0.001, label="t")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
        with gr.Row():
            loss_levels = gr.Slider(MIN_LOSS_LEVELS, MAX_LOSS_LEVELS, DEFAULT_LOSS_LEVELS, step=1,
                                    label="Noise levels (loss)")
            per_digit = gr.Slider(1, MAX_PER_DIGIT, MAX_PER_DIGIT, step=1, label="Held-out digits per class")
        cost = gr.Markdown(self.estimate(default, DEFAULT_LOSS_LEVELS, MAX_PER_DIGIT) if default else "",
                           elem_classes=["panel-note"])
        with gr.Row():
            run = gr.Button("Look inside", variant="primary", elem_id="in-run", interactive=bool(page.available))
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="in-status")
        outputs = gr.Plot(label="x_t, D and F", elem_id="in-outputs")
        note("Left, the noisy input; middle, the denoiser's estimate of the clean image; right, the raw network output "
             "F, which for the EDM-preconditioned pixel-cond is a correction to the input and for the Song-"
             "parameterised models a scaled noise estimate.")
        times = gr.Plot(label="time features", elem_id="in-time")
        note("The network never sees t directly: it sees sin and cos of 2π·W·c_noise for fixed random frequencies W "
             "(Gaussian Fourier features). Each row is one feature across all t; the dashed line is the t chosen "
             "above. Low-frequency rows tell coarse time, high-frequency rows fine differences.")
        features = gr.Plot(label="feature maps", elem_id="in-features")
        note("The four most varied channels of each block, from the full-resolution encoder down to the "
             "coarsest level and back up the decoder. Coarse levels see the digit's layout; fine levels its edges "
             "and the noise.")
        labels = gr.Plot(label="label pathway", elem_id="in-labels")
        note("Cross-attention over a single token is not attention at all: the softmax over one key is always 1, so "
             "the layer adds the same vector W_out W_v e_c + b_out to every pixel — a learned linear map of the "
             "label embedding e_c. Shown: its size per level and digit, next to the size of the features it is added "
             "to (the same for every x_t and t). Empty for pixel-uncond.")
        with gr.Row():
            loss_run = gr.Button("Loss per noise level", elem_id="in-loss-run", interactive=bool(page.available))
            loss_stop = gr.Button("Stop", variant="stop")
        loss_status = gr.Markdown("", elem_id="in-loss-status")
        loss_plot = gr.Plot(label="loss per noise level", elem_id="in-loss")
        note("The training loss λ(σ)‖D(x + σz; σ, c) − x‖² on held-out digits at each noise level, one curve per "
             "digit, and in grey how often training drew each noise level. Where the grey is thin the model had "
             "little practice; where one digit's curve stands above the others, that digit is harder to denoise.")
        go = run.click(self.inside, [model, index, digit, t, seed], [outputs, times, features, labels, status],
                       api_name="inside_network", **page.heavy)
        stop.click(None, cancels=[go])
        go_loss = loss_run.click(self.losses, [model, loss_levels, per_digit, seed], [loss_plot, loss_status],
                                 api_name="loss_by_level", **page.heavy)
        loss_stop.click(None, cancels=[go_loss])
        gr.on([model.change, loss_levels.change, per_digit.change], self.estimate, [model, loss_levels, per_digit], cost,
              api_name="inside_cost", queue=False, preprocess=False, show_progress="hidden", **PLUMBING)

