"""Editing an existing image with a score model: SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing
with Stochastic Differential Equations") and inpainting by replacement (Song et al. 2021, app. I.2).

SDEdit: noise the input to a chosen time t0 and run the reverse process from there,

    x(t0) = x_in + std(t0) z,   then reverse from sigma_0 = std(t0) down to 0.

Small t0 keeps the input's layout (the noise hides only detail); t0 = 1 forgets it (x(1) is almost pure noise).
The reverse steps are DPM-Solver++(2M) SDE steps (eta = 1; Lu et al. 2022, as diffusion.samplers.dpmpp_2m_sde):
the Gaussian posterior q(x_sigma' | x_sigma, x0 = D) with D = D(x; sigma) the denoiser, plus the multistep
2nd-order correction, on a Karras grid from std(t0) to std(eps), then 0 (h = log(sigma / sigma')):

    x' = r^2 x + (1 - r^2) D + sigma' sqrt(1 - r^2) z + (1 - r^2) (h / 2 h_prev) (D - D_prev),   r = sigma' / sigma;
    the last step x = D.

Inpainting (mask m = 1 on the known pixels): after every step the known region is replaced by the input noised to
the new level, x' <- m (x_in + sigma' z') + (1 - m) x', so the regenerated region is always denoised next to a
consistent, equally noisy copy of the known one; at sigma' = 0 the known region is exactly x_in.
"""
from __future__ import annotations

import math

import torch

from .samplers import Step, _check_steps, _randn_like, karras_sigmas


def edit_sigmas(sde, t0: float, num_steps: int) -> list[float]:
    """sigma_0 = std(t0) > ... > std(eps) > 0: a Karras grid of num_steps levels (one step to 0 when std(t0) is
    already at or below std(eps))."""
    s0 = sde.marginal_std(float(t0))
    if s0 <= sde.std_min:
        return [s0, 0.0]
    return karras_sigmas(sde.std_min, s0, num_steps).tolist()


@torch.no_grad()
def sdedit(score_model, x, labels=None, *, num_steps, t0, generator=None, guidance=1.0, mask=None):
    """SDEdit from the input `x` (B, C, H, W) at time t0 in [0, 1] (Meng et al. 2022); with `mask` (broadcastable to
    x, 1 = keep) the known region is held to the input noised to each level (inpainting). Yields Step like a sampler;
    t0 = 0 yields the input unchanged (no network call)."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    if not (isinstance(t0, (int, float)) and math.isfinite(t0) and 0.0 <= t0 <= 1.0):
        raise ValueError(f"t0 must be a number in [0, 1], got {t0!r}")
    x_in = x
    m = None if mask is None else torch.as_tensor(mask, dtype=x.dtype, device=x.device).expand_as(x)
    if t0 == 0:
        yield Step(0, 0.0, x_in, x_in, 0, True)
        return
    sigmas = edit_sigmas(sde, t0, num_steps)
    x = x_in + sigmas[0] * _randn_like(x_in, generator)                   # x(t0) ~ N(x_in, std(t0)^2 I)
    n, old_d, h_last = len(sigmas) - 1, None, None
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = score_model.denoise(x, sigma, labels, guidance)                # (B, C, H, W), the Tweedie estimate
        if sigma_next == 0:
            x = d
        else:                                                               # Gaussian posterior step given D
            h = math.log(sigma / sigma_next)
            r2 = math.exp(-2 * h)                                           # (sigma' / sigma)^2
            x = r2 * x + (1 - r2) * d + sigma_next * math.sqrt(1 - r2) * _randn_like(x, generator)
            if old_d is not None:                                           # 2nd order: the slope of D in log sigma
                x = x + 0.5 * (1 - r2) * (h / h_last) * (d - old_d)
            h_last = h
        old_d = d
        if m is not None:                                                   # known region: the input at sigma'
            known = x_in + sigma_next * _randn_like(x, generator) if sigma_next > 0 else x_in
            x = m * known + (1 - m) * x
        yield Step(i, sde.t_from_std(sigma_next), x, d, i + 1, i == n - 1)


def half_mask(region: str, shape=(28, 28)) -> torch.Tensor:
    """(H, W) float mask, 1 on the kept half: region in {"top", "bottom", "left", "right"}."""
    h, w = shape
    m = torch.zeros(h, w)
    if region == "top":
        m[: h // 2] = 1
    elif region == "bottom":
        m[h // 2:] = 1
    elif region == "left":
        m[:, : w // 2] = 1
    elif region == "right":
        m[:, w // 2:] = 1
    else:
        raise ValueError(f"region must be top, bottom, left or right, got {region!r}")
    return m
