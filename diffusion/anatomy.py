"""Inside the network: what a score model computes for one noisy input, and where across noise levels it errs.

For one x_t at noise level sigma (and a digit c):
- the Gaussian Fourier time features gamma(c_noise) = [sin 2 pi W c_noise, cos 2 pi W c_noise] (Tancik et al. 2020;
  Song et al. 2021, app. H) over a grid of t, where c_noise is what the network is given for sigma(t)
  (t itself for precond="song", ln(sigma) / 4 for "edm": diffusion/score.py);
- the U-Net's feature maps at every resolution level (forward hooks on the encoder, middle and decoder blocks);
- the denoiser's output D(x_t; sigma, c) = c_skip x_t + c_out F and the raw network output F itself;
- the label pathway: cross-attention over ONE context token has softmax weights identically 1, so its output is
  W_out W_v e_c + b_out, the same vector at every pixel and for every x_t and t: a learned linear map of the label
  embedding e_c. Per attention level and digit we report that vector's size beside the size of the features it
  is added to.

Across noise levels: the training loss lambda(sigma) ||D(x + sigma z; sigma, c) - x||^2 (the DSM loss of
diffusion/losses.py, lambda = 1 / c_out^2) per level per digit on held-out digits, beside the density of ln sigma
that training drew from (t_sampling in train/diffusion_models.py), so it shows where the model is good and where
it was rarely trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .batching import exclusive
from .layers import SpatialTransformer


def time_features(score_model, t_grid: torch.Tensor) -> torch.Tensor:
    """(T, E) the network's Gaussian Fourier features of its time input c_noise(sigma(t)) for each t in t_grid."""
    sigma = score_model.sde.marginal_std(torch.as_tensor(t_grid, dtype=torch.float64))
    c_noise = score_model.coefficients(sigma)[3]
    fourier = score_model.net.time_embed[0]                              # GaussianFourierProjection
    with torch.no_grad():
        return fourier(c_noise.to(torch.float32)).cpu()


def block_names(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every block whose output is a feature map, in forward order: encoder levels (after their
    attention), the middle, decoder levels."""
    out = []
    for i, (block, attn) in enumerate(zip(net.down_blocks, net.down_attn)):
        out.append((f"encoder level {i}", attn if isinstance(attn, SpatialTransformer) else block))
    out.append(("middle", net.mid_block2))
    levels = len(net.down_blocks)
    for j, (block, attn) in enumerate(zip(net.up_blocks, net.up_attn)):
        out.append((f"decoder level {levels - 1 - j}", attn if isinstance(attn, SpatialTransformer) else block))
    return out


@dataclass
class Inside:
    sigma: float
    features: list[tuple[str, torch.Tensor]]   # (block name, (C, H, W) feature map) in forward order
    denoised: torch.Tensor                     # (C, H, W) D(x_t; sigma, c)
    raw: torch.Tensor                          # (C, H, W) F, the network's own output
    c_skip: float
    c_out: float


@torch.no_grad()
def look_inside(score_model, x_t: torch.Tensor, sigma: float, label: int | None = None) -> Inside:
    """Run D(x_t; sigma, label) once on one x_t (C, H, W), keeping every block's feature map (forward hooks)."""
    if x_t.ndim != 3:
        raise ValueError(f"x_t must be one (C, H, W) input, got shape {tuple(x_t.shape)}")
    if label is not None and not score_model.conditional:
        raise ValueError("this model is unconditional: label must be None")
    captured, hooks = [], []
    with exclusive(score_model.net):          # the hooks see this call only, even beside a batching broker's work
        for name, module in block_names(score_model.net):
            hooks.append(module.register_forward_hook(
                lambda m, a, out, name=name: captured.append((name, out[0].cpu()))))
        try:
            x = x_t[None]
            labels = None if label is None else torch.tensor([int(label)], device=x.device)
            sig = torch.tensor([float(sigma)], dtype=torch.float64, device=x.device)
            c_skip, c_out, raw = score_model._precond(x, sig, labels)
        finally:
            for h in hooks:
                h.remove()
    denoised = c_skip * x + c_out * raw
    return Inside(float(sigma), captured, denoised[0].cpu(), raw[0].cpu(), float(c_skip.flatten()[0]),
                  float(c_out.flatten()[0]))


def strongest_channels(feature: torch.Tensor, k: int = 4) -> torch.Tensor:
    """Indices of the k channels of a (C, H, W) map with the largest spatial variance (the most structured)."""
    return feature.flatten(1).var(dim=1).argsort(descending=True)[:k]


def label_contributions(score_model) -> list[tuple[str, torch.Tensor]]:
    """Per attention block (name, (num_classes + 1, C) vectors): cross-attention's output for each label's embedding,
    W_out W_v e_c + b_out (one context token: softmax weight 1), the null label last. Independent of x_t and t."""
    net = score_model.net
    embeddings = net.class_embed.weight.detach()                          # (L + 1, D)
    out = []
    named = [(name, m) for name, m in block_names(net) if isinstance(m, SpatialTransformer)]
    named.insert(sum(1 for n, _ in named if n.startswith("encoder")), ("middle", net.mid_attn))
    for name, module in named:
        cross = module.block.cross_attn
        with torch.no_grad():
            out.append((name, cross.to_out(cross.to_v(embeddings)).cpu()))   # (L + 1, C)
    return out


# ---------------------------------------------------------------- the loss across noise levels


def loss_by_level(score_model, x: torch.Tensor, labels: torch.Tensor, sigmas: torch.Tensor, *,
                  num_classes: int = 10, generator: torch.Generator | None = None,
                  max_batch: int = 500) -> torch.Tensor:
    """(num_classes, K) mean over the digits of each class of lambda(sigma_k) ||D(x + sigma_k z; sigma_k, y) - x||^2,
    the DSM training loss at each level (z ~ N(0, I) drawn on CPU from `generator`; y the true labels, or None for
    an unconditional model). x (N, C, H, W) in the model's space; nan for a class with no digits."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    out = torch.full((num_classes, len(sigmas)), float("nan"), dtype=torch.float64)
    cond = labels if score_model.conditional else None
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    for k, sigma in enumerate(sigmas.tolist()):
        z = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        per = torch.empty(len(x), dtype=torch.float64)
        for start in range(0, len(x), max_batch):
            sl = slice(start, start + max_batch)
            with torch.no_grad():
                d = score_model.denoise(x[sl] + sigma * z[sl], sigma, None if cond is None else cond[sl])
            per[sl] = (d.float() - x[sl].float()).square().flatten(1).sum(1).double().cpu()
        per = per * float(score_model.loss_weight(torch.tensor(sigma, dtype=torch.float64)))
        sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels.cpu(), per)
        out[:, k] = torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)
    return out


def training_sigma_density(log_sigmas: torch.Tensor, sde, t_sampling: str = "uniform", p_mean: float = -1.2,
                           p_std: float = 1.2) -> torch.Tensor:
    """Density of ln sigma under training's noise-level draw (diffusion.losses.dsm_noise), at each ln sigma:
    "uniform": t ~ U(eps, 1), so p(ln sigma) = (dt / d ln sigma) / (1 - eps) = 2 sigma^2 / (1 + 2 ln(S) sigma^2) / (1 - eps)
    (t = ln(1 + 2 ln(S) sigma^2) / (2 ln S), S the SDE's sigma); "log_sigma": uniform over [ln std(eps), ln std(1)];
    "edm": N(p_mean, p_std^2) (the clamped tails' mass at the ends is left out). Zero outside the trained range."""
    ls = torch.as_tensor(log_sigmas, dtype=torch.float64)
    lo, hi = math.log(sde.std_min), math.log(sde.std_max)
    inside = (ls >= lo) & (ls <= hi)
    if t_sampling == "uniform":
        s2 = torch.exp(2 * ls)
        dens = 2 * s2 / (1 + 2 * math.log(sde.sigma) * s2) / (1 - sde.eps)
    elif t_sampling == "log_sigma":
        dens = torch.full_like(ls, 1.0 / (hi - lo))
    elif t_sampling == "edm":
        dens = torch.exp(-0.5 * ((ls - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
    else:
        raise ValueError(f"t_sampling must be uniform, log_sigma or edm, got {t_sampling!r}")
    return torch.where(inside, dens, torch.zeros_like(dens))
