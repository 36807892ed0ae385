"""Matplotlib figures: labelled axes, a colour scale, a title that says what is plotted."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from diffusion.sde import VESDE  # noqa: E402


def similarity_figure(pipelines: dict) -> Figure | None:
    """Cosine similarity of the 10 digit embeddings, one heatmap per conditional model."""
    conds = [(n, p) for n, p in pipelines.items() if p.conditional]
    if not conds:
        return None
    fig = Figure(figsize=(5.2 * len(conds) + 1.2, 5.2), layout="constrained")
    axes = fig.subplots(1, len(conds), squeeze=False)[0]
    sims = {}
    for name, pipe in conds:
        e = pipe.score_model.label_embeddings()[:10].float().cpu()          # (10, D)
        e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims[name] = (e @ e.T).numpy()
    off = ~np.eye(10, dtype=bool)
    vmax = max(0.1, math.ceil(max(np.abs(s[off]).max() for s in sims.values()) * 20) / 20)  # one shared scale
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    image = None
    for ax, (name, pipe) in zip(axes, conds):
        sim = sims[name]
        shown = np.ma.masked_where(~off, sim)          # the diagonal (always 1) is left out of the colours
        image = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax)
        for i in range(10):
            for j in range(10):
                if i != j:
                    ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(sim[i, j]) > 0.6 * vmax else "black")
                else:
                    ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="#555")
        ax.set_xticks(range(10))
        ax.set_yticks(range(10))
        ax.set_xlabel("digit")
        ax.set_ylabel("digit")
        ax.set_title(f"{name} ({pipe.score_model.label_embeddings().shape[1]}-d embeddings)", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="cosine similarity")
    fig.suptitle("Cosine similarity between the learned digit embeddings\n(the diagonal, always 1, is greyed out)",
                 fontsize=11)
    return fig


def std_figure(sde: VESDE, t: float) -> Figure:
    """The noise level std(t) over t in [0, 1], the current t marked."""
    ts = np.linspace(0, 1, 201)
    stds = sde.marginal_std(torch.from_numpy(ts)).numpy()
    cur = sde.marginal_std(float(t))
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(ts, stds, color="#1f77b4", label="std(t)")
    ax.axhline(1.0, color="#999", lw=0.8, ls="--", label="pixel range (1)")
    ax.plot([t], [cur], "o", color="#d62728", ms=8, label=f"t = {t:.2f}: std = {cur:.3g}")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("noise std(t)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, stds[-1] * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"VE SDE noise level: std(t) = sqrt((σ^(2t) − 1) / (2 ln σ)), σ = {sde.sigma:g}", fontsize=10)
    return fig
