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

`ddim` is the sampler for such a student (and plain DDIM on the Karras grid for any other score model).
"""
from __future__ import annotations

import torch

from .samplers import Step, _check_steps, karras_sigmas, register_sampler

DEFAULT_RHO = 7.0


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x' = D + (sigma'/sigma)(x - D): the Euler step of dx/dsigma = (x - D)/sigma. sigma, sigma_next: floats or (B,)."""
    ratio = _ratio(sigma_next, sigma, x)
    return x0 + ratio * (x - x0)


def progressive_target(x: torch.Tensor, x_next2: torch.Tensor, sigma, sigma_next2) -> torch.Tensor:
    """x0~ = (x'' - r x) / (1 - r), r = sigma''/sigma: the denoised estimate whose DDIM step from (x, sigma) to sigma''
    lands exactly on x'' (x0~ = x'' when sigma'' = 0)."""
    r = _ratio(sigma_next2, sigma, x)
    return (x_next2 - r * x) / (1 - r)


def _ratio(num, den, x: torch.Tensor):
    """num / den as a float or a (B, 1, 1, 1) tensor in x's dtype."""
    if torch.is_tensor(num) or torch.is_tensor(den):
        r = torch.as_tensor(num, dtype=torch.float64) / torch.as_tensor(den, dtype=torch.float64)
        return r.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1))) if r.ndim else float(r)
    return float(num) / float(den)


def teacher_sigmas(sde, grid_steps: int, rho: float = DEFAULT_RHO) -> torch.Tensor:
    """(grid_steps + 1,) float64: the first round's teacher grid, Karras rho-schedule std(1) -> std(eps), then 0."""
    return karras_sigmas(sde.std_min, sde.std_max, _check_steps(grid_steps), rho)


def student_sigmas(sde, grid_steps: int, steps: int, rho: float = DEFAULT_RHO) -> torch.Tensor:
    """(steps + 1,) float64: an N-step student's grid, every (grid_steps / N)-th point of the teacher grid."""
    grid_steps, steps = _check_steps(grid_steps), _check_steps(steps)
    if grid_steps % steps:
        raise ValueError(f"a {steps}-step student does not fit a {grid_steps}-step teacher grid "
                         f"({steps} must divide {grid_steps})")
    return teacher_sigmas(sde, grid_steps, rho)[::grid_steps // steps].clone()


def distilled_config(steps: int | None, grid_steps: int, guidance_range, rho: float = DEFAULT_RHO, **extra) -> dict:
    """The `distilled` constructor argument of a student (travels in config.json). steps=None: guidance distillation
    only (stage 1), a full denoiser that any sampler can run at any step count."""
    lo, hi = (float(v) for v in guidance_range)
    if not 0 <= lo <= hi:
        raise ValueError(f"guidance range must satisfy 0 <= w_min <= w_max, got {guidance_range!r}")
    if steps is not None and (_check_steps(grid_steps) % _check_steps(steps)):
        raise ValueError(f"a {steps}-step student does not fit a {grid_steps}-step teacher grid")
    return {"steps": steps, "grid_steps": int(grid_steps), "rho": float(rho), "guidance_range": [lo, hi], **extra}


def sampling_sigmas(score_model, num_steps: int) -> torch.Tensor:
    """The sigma grid `ddim` runs: a progressively distilled student's own grid (and only its own step count), else
    the Karras grid of num_steps (Karras et al. 2022, rho = 7)."""
    sde, info = score_model.sde, getattr(score_model, "distilled", None)
    num_steps = _check_steps(num_steps)
    if not info or info.get("steps") is None:
        rho = info.get("rho", DEFAULT_RHO) if info else DEFAULT_RHO
        return karras_sigmas(sde.std_min, sde.std_max, num_steps, rho)
    if num_steps != info["steps"]:
        raise ValueError(f"this student was distilled for {info['steps']} step(s) only (its grid is every "
                         f"{info['grid_steps'] // info['steps']}th point of a {info['grid_steps']}-step teacher grid); "
                         f"num_steps={num_steps} would run it off the noise levels it learned. Use "
                         f"num_steps={info['steps']}, or a student distilled for {num_steps} step(s).")
    return student_sigmas(sde, info["grid_steps"], info["steps"], info["rho"])


def check_guidance(score_model, guidance) -> None:
    """A student with w as an input knows only the w it was distilled on."""
    info = getattr(score_model, "distilled", None)
    if not getattr(score_model, "guidance_embed", False) or not info:
        return
    lo, hi = info["guidance_range"]
    g = torch.as_tensor(guidance, dtype=torch.float64)
    if not bool(torch.isfinite(g).all()) or float(g.min()) < lo - 1e-9 or float(g.max()) > hi + 1e-9:
        raise ValueError(f"guidance {guidance!r} is outside [{lo:g}, {hi:g}], the range this student was distilled on")


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


@register_sampler("ddim", nfe=lambda steps: steps,
                  description="DDIM: Euler on the probability-flow ODE, 1 NFE/step; a distilled student's sampler "
                              "(on its own 1-4 step grid), plain DDIM on the Karras grid for other models")
@torch.no_grad()
def ddim(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0):
    """DDIM = Euler on the probability-flow ODE, x' = D + (sigma'/sigma)(x - D) (Song et al. 2021 "DDIM"; Karras et al.
    2022 eq. 4), on a distilled student's own grid (Salimans & Ho 2022) or the Karras grid. 1 NFE per step."""
    sigmas = sampling_sigmas(score_model, num_steps).tolist()
    check_guidance(score_model, guidance)
    sde, n = score_model.sde, len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = score_model.denoise(x, sigma, labels, guidance)   # one network call (a student takes w as an input)
        x = ddim_step(x, x0, sigma, sigma_next)             # last step: sigma' = 0, x = D
        yield Step(i, sde.t_from_std(sigma_next), x, x0, i + 1, i == n - 1)
