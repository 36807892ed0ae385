"""Editing an existing image with a score model: SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing
with Stochastic Differential Equations") and inpainting by replacement (Song et al. 2021, app. I.2).

SDEdit: noise the input to a chosen time t0 and run the reverse process from there,

    x(t0) = x_in + std(t0) z,   then reverse from sigma_0 = std(t0) down to 0.

Small t0 keeps the input's layout (the noise hides only detail); t0 = 1 forgets it (x(1) is almost pure noise).
The reverse steps are the sampler diffusion.samplers.dpmpp_2m_sde itself (eta = 1, the Gaussian posterior step
given the denoiser plus the multistep 2nd-order correction), run on a Karras grid of `edit_sigmas` from std(t0) to
std(eps), then 0: one network evaluation per step, the last step x = D. No solver step is written here.

Inpainting (mask m = 1 on the known pixels): after every step the known region is replaced by the input noised to
the new level, x' <- m (x_in + sigma' z') + (1 - m) x', so the regenerated region is always denoised next to a
consistent, equally noisy copy of the known one; at sigma' = 0 the known region is exactly x_in. The replacement is
written into the sample the sampler yielded, which is the sampler's running state (its next step starts from it).

`SDEDIT` is SDEdit's cost, kept beside its code like a registered sampler's (`SamplerSpec`, one NFE per step) but not
in `SAMPLERS`: it is not a way to sample from noise, so the sampler pickers do not list it. diffusion.pipeline's
`Pipeline.edit` runs it for pixel and latent models alike.
"""
from __future__ import annotations

import math

import torch

from .samplers import SamplerSpec, Step, _check_steps, _randn_like, dpmpp_2m_sde, karras_sigmas


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
    num_steps = _check_steps(num_steps)
    if not (isinstance(t0, (int, float)) and math.isfinite(t0) and 0.0 <= t0 <= 1.0):
        raise ValueError(f"t0 must be a number in [0, 1], got {t0!r}")
    x_in = x
    m = None if mask is None else torch.as_tensor(mask, dtype=x.dtype, device=x.device).expand_as(x)
    if t0 == 0:
        yield Step(0, 0.0, x_in, x_in, 0, True)
        return
    sigmas = edit_sigmas(score_model.sde, t0, num_steps)
    x = x_in + sigmas[0] * _randn_like(x_in, generator)                   # x(t0) ~ N(x_in, std(t0)^2 I)
    steps = dpmpp_2m_sde(score_model, x, labels, num_steps=len(sigmas) - 1, generator=generator, guidance=guidance,
                         sigmas=sigmas, eta=1.0)
    for step in steps:
        if m is not None:                                                   # known region: the input at sigma'
            sigma_next = sigmas[step.i + 1]
            known = x_in + sigma_next * _randn_like(x_in, generator) if sigma_next > 0 else x_in
            if step.final:           # the last x is the sampler's D itself: a new tensor, D stays the estimate
                step = Step(step.i, step.t, m * known + (1 - m) * step.x, step.x0, step.nfe, True)
            else:                    # in place: the sampler's next step starts from the replaced sample
                step.x.copy_(m * known + (1 - m) * step.x)
        yield step


SDEDIT = SamplerSpec("sdedit", sdedit, "SDEdit / inpainting: DPM-Solver++(2M) SDE from std(t0), 1 NFE/step",
                     nfe=lambda n: n)


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
