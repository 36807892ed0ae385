"""Guided progressive distillation in the VE SDE's denoiser terms (Meng et al. 2023, "On Distillation of Guided
Diffusion Models", two stages; Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models").

With D(x; sigma) the denoiser (diffusion.score), the probability-flow ODE of the VE SDE is dx/dsigma = (x - D) / sigma,
and its Euler step from sigma to sigma' is DDIM (Song et al. 2021, "DDIM", with alpha = 1):

    x' = D + (sigma' / sigma) (x - D)                                                  (ddim_step)

Stage 1, guidance distillation: a student D_s(x; sigma, c, w) with the guidance weight w as a network input learns the
teacher's guided denoiser D_T(x; sigma, c, w) = D_u + w (D_c - D_u) (two network halves) for x = x0 + sigma z,
ln sigma ~ N(P_mean, P_std^2), w ~ U[w_min, w_max]:   L = lambda(sigma) || D_s - D_T ||^2,  lambda = 1 / c_out^2.

Stage 2, progressive rounds T -> T/2 -> ... : on the teacher's T-step grid (Karras et al. 2022 rho-schedule from std(1)
to std(eps), then 0) the student takes ONE DDIM step from sigma_i to sigma_{i+2} and must land where TWO teacher
steps land, x'' (teacher = the previous round's student). The x0 that makes one DDIM step land on x'' is

    x0~ = (x'' - (sigma''/sigma) x) / (1 - sigma''/sigma)          (= x'' when sigma'' = 0)   (progressive_target)

and the student regresses D_s(x; sigma_i, c, w) onto x0~ with the same lambda(sigma). Each round starts from the
previous student; the N-step student's grid is every (T/N)-th point of the first round's grid (student_sigmas).

`ddim` (diffusion/samplers.py, with ddim_step and the grids) is the sampler for such a student (and plain DDIM on the
Karras grid for any other score model); this module holds the training side: configs, students, targets, the loss.
"""
from __future__ import annotations

import torch

# the DDIM step, the students' grids and the `ddim` sampler are samplers (diffusion/samplers.py); re-exported here,
# beside the training targets built from them
from .samplers import (DEFAULT_RHO, _check_steps, _ratio, check_guidance, ddim, ddim_step,  # noqa: F401
                       sampling_sigmas, student_sigmas, teacher_sigmas)

def progressive_target(x: torch.Tensor, x_next2: torch.Tensor, sigma, sigma_next2) -> torch.Tensor:
    """x0~ = (x'' - r x) / (1 - r), r = sigma''/sigma: the denoised estimate whose DDIM step from (x, sigma) to sigma''
    lands exactly on x'' (x0~ = x'' when sigma'' = 0)."""
    r = _ratio(sigma_next2, sigma, x)
    return (x_next2 - r * x) / (1 - r)


def distilled_config(steps: int | None, grid_steps: int, guidance_range, rho: float = DEFAULT_RHO, **extra) -> dict:
    """The `distilled` constructor argument of a student (travels in config.json). steps=None: guidance distillation
    only (stage 1), a full denoiser that any sampler can run at any step count."""
    lo, hi = (float(v) for v in guidance_range)
    if not 0 <= lo <= hi:
        raise ValueError(f"guidance range must satisfy 0 <= w_min <= w_max, got {guidance_range!r}")
    if steps is not None and (_check_steps(grid_steps) % _check_steps(steps)):
        raise ValueError(f"a {steps}-step student does not fit a {grid_steps}-step teacher grid")
    return {"steps": steps, "grid_steps": int(grid_steps), "rho": float(rho), "guidance_range": [lo, hi], **extra}


def make_student(model, distilled: dict, seed: int = 0):
    """A copy of `model` (a teacher, or the previous round's student) with w as a network input and `distilled` in its
    config. From a teacher, the new w-embedding's last layer is zero, so the student starts as the teacher's
    conditional denoiser D_c at every w; from a student, the weights carry over exactly."""
    config = {**dict(model._hub_mixin_config), "guidance_embed": True, "distilled": distilled}
    with torch.random.fork_rng(devices=[]):      # the w-MLP's first layer: seeded, the global RNG left alone
        torch.manual_seed(seed)
        student = type(model)(**config)
    missing, unexpected = student.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("net.guidance_embed.") for k in missing):
        raise ValueError(f"cannot initialise a student from this model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    p = next(model.parameters())
    return student.to(p.device, p.dtype)


def guidance_target(teacher, x, sigma, labels, w) -> torch.Tensor:
    """Stage 1's target, the teacher's guided denoiser D_T(x; sigma, c, w) (w (B,) per sample)."""
    with torch.no_grad():
        return teacher.denoise(x, sigma, labels, guidance=w)


def two_step_target(teacher, x, sigma, sigma_mid, sigma_next2, labels, w) -> torch.Tensor:
    """Stage 2's target: two teacher DDIM steps sigma -> sigma_mid -> sigma'' from x, turned into the x0~ that one DDIM
    step sigma -> sigma'' needs to land on the same point. sigmas (B,) float64."""
    with torch.no_grad():
        d1 = teacher.denoise(x, sigma, labels, guidance=w)
        x1 = ddim_step(x, d1, sigma, sigma_mid)
        d2 = teacher.denoise(x1, sigma_mid, labels, guidance=w)
        x2 = ddim_step(x1, d2, sigma_mid, sigma_next2)
        return progressive_target(x, x2, sigma, sigma_next2)


def weighted_error(model, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """mean over the batch of lambda(sigma) ||pred - target||^2 (summed over pixels), lambda = model.loss_weight."""
    per_image = (pred - target).square().flatten(1).sum(dim=1)
    return (per_image * model.loss_weight(sigma).to(per_image.dtype)).mean()
