"""Training losses.

Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) for the VE SDE, with
lambda(t) = std(t)^2 weighting:
    t ~ U(eps, 1), z ~ N(0, I), x_t = x + std(t) z
    L = E || std(t) s(x_t, t) + z ||^2          (summed over pixels, averaged over the batch)
With probability `label_dropout` a label is replaced by the null class, so one network learns both the
conditional and unconditional scores (classifier-free guidance, Ho & Salimans 2022).

Autoencoder: MSE + lambda * LPIPS (Zhang et al. 2018) on 3-channel repeats of [0, 1] images
(`normalize=True` maps them to [-1, 1], the range LPIPS expects).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


T_SAMPLINGS = ("uniform", "log_sigma", "edm")


def dsm_noise(x: torch.Tensor, generator: torch.Generator | None, eps: float = 1e-3,
              label_dropout: float = 0.0, t_sampling: str = "uniform", sde=None,
              p_mean: float = -1.2, p_std: float = 1.2) -> dict:
    """The randomness of one DSM batch, drawn on CPU: t (B,), z like x, drop (B,) bool.

    t_sampling="uniform": t ~ U(eps, 1) (Song et al. 2021). Since std(t) ~ sqrt(t) for small t, only ~5% of
    samples then have std < 0.22, and the low-noise end, which removes the last speckles, is undertrained.
    t_sampling="log_sigma": log std(t) ~ U(log std(eps), log std(1)), mapped back to t (each octave of noise
    levels equally often, in the spirit of Karras et al. 2022's noise-level distribution); needs `sde`.
    t_sampling="edm": ln std(t) ~ N(p_mean, p_std^2) (Karras et al. 2022, table 1), clamped to [std(eps), std(1)]
    and mapped back to t; with the defaults the median noise level is 0.30 ~ sigma_data; needs `sde`."""
    b = x.shape[0]
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    if t_sampling == "uniform":
        t = u * (1.0 - eps) + eps
    elif t_sampling == "log_sigma":
        if sde is None:
            raise ValueError("t_sampling='log_sigma' needs the sde")
        lo, hi = math.log(sde.marginal_std(torch.tensor(eps, dtype=torch.float64))), math.log(sde.std_max)
        t = sde.t_from_std(torch.exp(lo + u * (hi - lo))).clamp(eps, 1.0)
    elif t_sampling == "edm":
        if sde is None:
            raise ValueError("t_sampling='edm' needs the sde")
        n = torch.randn(b, generator=generator, dtype=torch.float64)
        std = torch.exp(p_mean + p_std * n).clamp(sde.std_min, sde.std_max)
        t = sde.t_from_std(std).clamp(eps, 1.0)
    else:
        raise ValueError(f"t_sampling must be one of {', '.join(T_SAMPLINGS)}, got {t_sampling!r}")
    return {"t": t.float(),
            "z": torch.randn(x.shape, generator=generator),
            "drop": torch.rand(b, generator=generator) < label_dropout}


def dsm_loss(score_model, x: torch.Tensor, labels: torch.Tensor | None = None, noise: dict | None = None,
             generator: torch.Generator | None = None, label_dropout: float = 0.0, *, model=None,
             teacher=None, teacher_weight: float = 1.0) -> torch.Tensor:
    """E lambda(std) std^2 || std(t) s(x + std(t) z, t) + z ||^2; `noise` from `dsm_noise` (drawn here when None).

    lambda = score_model.loss_weight(std) where the model has one (1 / c_out^2, see diffusion.score), so that
    lambda ||D - x||^2 = lambda std^2 ||std s + z||^2 is the network's own unit-scaled error; for the "song"
    parameterisation (and a model without loss_weight) lambda std^2 = 1, the plain DSM loss above.

    `model` (default: score_model) supplies sde, null_label and loss_weight: under DDP, score_model is the wrapper that
    is called and `model` the bare ScoreModel it wraps.

    `teacher` (a frozen score model of the same space, sde and labels): knowledge distillation on the score. The
    teacher's std s_T(x_t, t) estimates E[-z | x_t], the posterior mean of DSM's regression target, so with
    a = teacher_weight
        L = (1 - a) E lambda std^2 || std s + z ||^2  +  a E lambda std^2 || std s - std s_T ||^2
    has the same minimiser as DSM wherever the teacher is exact, without z's variance in the target: a small network
    learns a large one's score from far fewer images (Hinton et al. 2015, on the denoiser's output)."""
    model = score_model if model is None else model
    if noise is None:
        noise = dsm_noise(x, generator, model.sde.eps, label_dropout)
    t, z = noise["t"].to(x.device), noise["z"].to(x.device, x.dtype)
    std = model.sde.marginal_std(t)[:, None, None, None]
    if labels is not None:
        labels = torch.where(noise["drop"].to(x.device), torch.full_like(labels, model.null_label), labels)
    x_t = x + std * z
    score = score_model(x_t, t, labels)
    per_image = (std * score + z).square().flatten(1).sum(dim=1)
    if teacher is not None:
        if not 0.0 <= teacher_weight <= 1.0:
            raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
        with torch.no_grad():
            teacher_eps = std * teacher(x_t, t, labels)                     # ~ E[-z | x_t]
        per_image_kd = (std * score - teacher_eps).square().flatten(1).sum(dim=1)
        per_image = (1.0 - teacher_weight) * per_image + teacher_weight * per_image_kd
    weight_fn = getattr(model, "loss_weight", None)
    if weight_fn is not None:
        sigma = std.flatten().double()
        per_image = per_image * (sigma ** 2 * weight_fn(sigma)).to(per_image.dtype)
    return per_image.mean()


def autoencoder_loss(autoencoder, x: torch.Tensor, perceptual=None, perceptual_weight: float = 1.0):
    """MSE(x_hat, x) + w * LPIPS(x_hat, x); `perceptual` is an lpips.LPIPS (or any callable with its
    signature) or None for MSE only. Returns (loss, x_hat, parts dict)."""
    x_hat = autoencoder(x)
    mse = F.mse_loss(x_hat, x)
    parts = {"mse": mse.detach()}
    loss = mse
    if perceptual is not None:
        lp = perceptual(x_hat.repeat(1, 3, 1, 1), x.repeat(1, 3, 1, 1), normalize=True).mean()
        parts["lpips"] = lp.detach()
        loss = loss + perceptual_weight * lp
    return loss, x_hat, parts
