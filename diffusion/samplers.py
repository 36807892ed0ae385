"""Reverse-time samplers for the VE SDE. Each is a generator with one signature:

    fn(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, **extras) -> yields Step

`x` is the prior sample x(1) ~ N(0, std(1)^2 I); `score_model(x, t, labels, guidance=w)` returns the
score; `score_model.sde` is the VESDE. Each Step carries the current sample `x`, the Tweedie
denoised estimate `x0 = x + std(t)^2 s(x, t)` from the latest evaluation, and `nfe`, the number of
score-model calls so far (a guided call is one call on a doubled batch). The last Step holds the
final sample, with no noise added at the end. The caller decides how often to render.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Step:
    i: int              # step index, 0-based
    t: float            # diffusion time of `x`
    x: torch.Tensor     # current sample (B, C, H, W)
    x0: torch.Tensor    # denoised estimate (B, C, H, W)
    nfe: int            # score-model calls so far
    final: bool = False


def _batch_t(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on CPU from `generator`, then moved: a seed means the same picture on every device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _denoiser(score_model, labels, guidance):
    """sigma -> D(x; sigma) = x + sigma^2 s(x, t(sigma)), the Tweedie estimate of x(0)."""
    sde = score_model.sde

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = float(sde.t_from_std(torch.tensor(sigma, dtype=torch.float64)))
        return x + sigma**2 * score_model(x, _batch_t(t, x), labels, guidance=guidance)
    return denoise


def _check_steps(num_steps: int, minimum: int = 1) -> int:
    try:  # None, strings, NaN and inf get the same clear error as 0 or 2.5
        ok = not isinstance(num_steps, bool) and int(num_steps) == num_steps and num_steps >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"num_steps must be an integer >= {minimum}, got {num_steps!r}")
    return int(num_steps)


def _time_grid(num_steps: int, eps: float) -> list[tuple[float, float]]:
    """(t, t_next) for `num_steps` equal Euler steps from t = 1 down to t = eps.

    The score is evaluated at t and the step lands on t_next, so the last step lands on eps and never
    evaluates there. Near t -> 0 the drift step multiplies x - x0 by about 1 - dt / t (VE SDE:
    g(t)^2 / std(t)^2 ~ 1 / t); the seed tutorial evaluated at t = eps with the grid's dt, a factor
    1 - dt / eps = -9 at 100 steps, which blew the last step up (FD > 2000 on MNIST) at every step count
    below ~500. Here the last evaluation is at eps + dt, so dt / t < 1 at every step."""
    ts = torch.linspace(1.0, eps, num_steps + 1, dtype=torch.float64).tolist()
    return list(zip(ts[:-1], ts[1:]))


@torch.no_grad()
def euler_maruyama(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, eps=None):
    """Euler-Maruyama on the reverse-time SDE dx = -g(t)^2 s(x, t) dt + g(t) dw_bar (Song et al. 2021, eq. 6)."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    eps = sde.eps if eps is None else eps
    for i, (t, t_next) in enumerate(_time_grid(num_steps, eps)):
        dt = t - t_next
        tb = _batch_t(t, x)
        g2 = float(sde.diffusion_coeff(torch.tensor(t))) ** 2
        score = score_model(x, tb, labels, guidance=guidance)
        x0 = x + float(sde.marginal_std(torch.tensor(t))) ** 2 * score
        mean_x = x + g2 * score * dt                                   # drift step
        last = i == num_steps - 1
        x = mean_x if last else mean_x + math.sqrt(g2 * dt) * _randn_like(x, generator)  # diffusion step
        yield Step(i, t_next, x, x0, i + 1, last)


@torch.no_grad()
def predictor_corrector(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, snr=0.16, eps=None):
    """Predictor-corrector: Langevin corrector at signal-to-noise `snr`, then an Euler-Maruyama predictor
    (Song et al. 2021, algorithm 4 for VE SDEs). Two score calls per step."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    eps = sde.eps if eps is None else eps
    nfe = 0
    for i, (t, t_next) in enumerate(_time_grid(num_steps, eps)):
        dt = t - t_next
        tb = _batch_t(t, x)
        # corrector: one Langevin step, size set so ||step * grad|| / ||noise|| matches snr, per sample
        grad = score_model(x, tb, labels, guidance=guidance)
        noise = _randn_like(x, generator)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        noise_norm = noise.flatten(1).norm(dim=1)
        step = (2 * (snr * noise_norm / grad_norm) ** 2)[:, None, None, None]
        x = x + step * grad + torch.sqrt(2 * step) * noise
        # predictor: Euler-Maruyama step of the reverse SDE
        g2 = float(sde.diffusion_coeff(torch.tensor(t))) ** 2
        score = score_model(x, tb, labels, guidance=guidance)
        nfe += 2
        x0 = x + float(sde.marginal_std(torch.tensor(t))) ** 2 * score
        mean_x = x + g2 * score * dt
        last = i == num_steps - 1
        x = mean_x if last else mean_x + math.sqrt(g2 * dt) * _randn_like(x, generator)
        yield Step(i, t_next, x, x0, nfe, last)


@torch.no_grad()
def heun(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, rho=7.0):
    """Probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma, Heun's 2nd-order method on the Karras
    sigma grid, Euler on the last step to sigma = 0 (Karras et al. 2022, algorithm 1). NFE = 2 N - 1."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    sigmas = karras_sigmas(sde.std_min, sde.std_max, num_steps, rho).tolist()
    denoise = _denoiser(score_model, labels, guidance)
    x = x * (sigmas[0] / sde.std_max)  # no-op for the default grid, which starts at std(1)
    nfe = 0
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        d = (x - x0) / sigma                                     # dx/dsigma at sigma
        x_next = x + (sigma_next - sigma) * d                    # Euler step
        nfe += 1
        if sigma_next > 0:                                       # 2nd-order correction (trapezoid)
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
            nfe += 1
        x = x_next
        yield Step(i, float(sde.t_from_std(torch.tensor(sigma_next))), x, x0, nfe, i == num_steps - 1)


@torch.no_grad()
def dpmpp_2m(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, rho=7.0):
    """DPM-Solver++(2M), multistep 2nd order in lambda = -log sigma on the Karras grid (Lu et al. 2022,
    algorithm 2, VE form as in k-diffusion `sample_dpmpp_2m`). One score call per step."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    sigmas = karras_sigmas(sde.std_min, sde.std_max, num_steps, rho).tolist()
    denoise = _denoiser(score_model, labels, guidance)
    old_x0, h_last = None, None
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        if sigma_next == 0:                                       # last step: jump to the denoised estimate
            x = x0
        else:
            h = math.log(sigma / sigma_next)                      # lambda_next - lambda
            if old_x0 is None:
                d = x0                                            # first step: 1st order (DDIM)
            else:
                r = h_last / h                                    # 2nd order: extrapolate the data prediction
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
            x = (sigma_next / sigma) * x - math.expm1(-h) * d      # exact solution of the linear part
            h_last = h
        old_x0 = x0
        yield Step(i, float(sde.t_from_std(torch.tensor(sigma_next))), x, x0, i + 1, i == num_steps - 1)


@torch.no_grad()
def dpmpp_2m_sde(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, rho=7.0, eta=1.0):
    """DPM-Solver++(2M) SDE: the stochastic form of dpmpp_2m (Lu et al. 2022, sec. 4; k-diffusion
    `sample_dpmpp_2m_sde`, midpoint variant). One score call per step. With h = log(sigma / sigma'),
    eta = 1 (VE, alpha = 1):

        x' = (sigma'/sigma)^2 x + (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) z,    z ~ N(0, I)

    the exact Gaussian posterior step given D, plus the multistep 2nd-order correction on D. Fresh noise at
    every step corrects part of the score model's error, which the deterministic ODE carries to the end;
    eta = 0 is dpmpp_2m exactly."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    sigmas = karras_sigmas(sde.std_min, sde.std_max, num_steps, rho).tolist()
    denoise = _denoiser(score_model, labels, guidance)
    old_x0, h_last = None, None
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        if sigma_next == 0:                                       # last step: the denoised estimate, no noise
            x = x0
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            keep = -math.expm1(-h - eta_h)                        # 1 - e^{-(1 + eta) h}: weight on D
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + keep * x0
            if old_x0 is not None:                                # 2nd order: slope of D in lambda
                r = h_last / h
                x = x + 0.5 * keep / r * (x0 - old_x0)
            if eta > 0:
                x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * _randn_like(x, generator)
            h_last = h
        old_x0 = x0
        yield Step(i, float(sde.t_from_std(torch.tensor(sigma_next))), x, x0, i + 1, i == num_steps - 1)


@torch.no_grad()
def rk45(score_model, x, labels=None, *, num_steps=None, generator=None, guidance=1.0, rtol=1e-5, atol=1e-5,
         eps=None, max_nfe=2000):
    """Adaptive Dormand-Prince RK45 (scipy.integrate.RK45) on the probability-flow ODE
    dx/dt = -g(t)^2 s(x, t) / 2 from t = 1 to eps, then one Tweedie denoising step (Song et al. 2021, sec. 4.3).
    `num_steps` is ignored: the tolerance sets the step count; NFE is reported."""
    from scipy.integrate import RK45

    sde = score_model.sde
    eps = sde.eps if eps is None else eps
    shape, device, dtype = x.shape, x.device, x.dtype
    state = {"nfe": 0, "x0": None}

    def ode(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        score = score_model(xt, _batch_t(t, xt), labels, guidance=guidance)
        state["nfe"] += 1
        g2 = float(sde.diffusion_coeff(torch.tensor(t))) ** 2
        return (-0.5 * g2 * score).reshape(-1).double().cpu().numpy()

    solver = RK45(ode, 1.0, x.reshape(-1).double().cpu().numpy(), eps, rtol=rtol, atol=atol)
    i = 0
    while solver.status == "running":
        solver.step()
        if solver.status == "failed":
            raise RuntimeError(f"RK45 failed at t={solver.t:.4g}: {solver.status}")
        if state["nfe"] > max_nfe:
            raise RuntimeError(f"RK45 exceeded max_nfe={max_nfe}; loosen rtol/atol")
        x = torch.from_numpy(solver.y).reshape(shape).to(device=device, dtype=dtype)
        std = float(sde.marginal_std(torch.tensor(solver.t)))
        x0 = x + std**2 * score_model(x, _batch_t(solver.t, x), labels, guidance=guidance) if solver.status == "finished" else None
        if x0 is not None:
            state["nfe"] += 1
            yield Step(i, 0.0, x0, x0, state["nfe"], True)       # final: denoised at t = eps
        else:
            yield Step(i, float(solver.t), x, _tweedie_from_last(solver, sde, x), state["nfe"], False)
        i += 1


def _tweedie_from_last(solver, sde, x):
    """x0 estimate from the ODE's last derivative: dx/dt = -g^2 s / 2  =>  s = -2 f / g^2."""
    f = torch.from_numpy(solver.f if hasattr(solver, "f") else np.zeros(x.numel())).reshape(x.shape).to(x)
    t = torch.tensor(float(solver.t))
    g2 = float(sde.diffusion_coeff(t)) ** 2
    return x + float(sde.marginal_std(t)) ** 2 * (-2.0 * f / g2)


SAMPLERS = {
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "heun": heun,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "rk45": rk45,
}

SAMPLER_DESCRIPTIONS = {
    "dpmpp_2m": "DPM-Solver++(2M): multistep 2nd-order ODE solver, 1 NFE/step, the conditional models' default",
    "dpmpp_2m_sde": "DPM-Solver++(2M) SDE: dpmpp_2m with fresh noise each step, 1 NFE/step; corrects score errors, pixel-uncond's default",
    "heun": "Heun 2nd-order probability-flow ODE on the Karras sigma grid, 2 NFE/step (last step 1)",
    "euler_maruyama": "Euler-Maruyama on the reverse SDE (the seed tutorial's sampler), 1 NFE/step",
    "predictor_corrector": "Euler-Maruyama predictor + Langevin corrector (snr 0.16), 2 NFE/step",
    "rk45": "adaptive RK45 probability-flow ODE (scipy), steps set by tolerance; NFE reported",
}


def nfe_for(sampler: str, num_steps: int) -> int | None:
    """Network evaluations a fixed-step sampler spends for `num_steps` (None: adaptive)."""
    return {"dpmpp_2m": num_steps, "dpmpp_2m_sde": num_steps, "euler_maruyama": num_steps, "predictor_corrector": 2 * num_steps,
            "heun": 2 * num_steps - 1, "rk45": None}[sampler]


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Inverse of nfe_for: the step count whose NFE is closest to, and not above, `nfe`."""
    return {"dpmpp_2m": nfe, "dpmpp_2m_sde": nfe, "euler_maruyama": nfe, "predictor_corrector": max(nfe // 2, 1),
            "heun": max((nfe + 1) // 2, 1)}[sampler]


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def sample(sampler, score_model, x, labels=None, **kwargs) -> tuple[torch.Tensor, int]:
    """Drain a sampler; returns (final x, nfe)."""
    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    step = None
    for step in fn(score_model, x, labels, **kwargs):
        pass
    return step.x, step.nfe


# ---- distilled students (diffusion/distill.py): registers "ddim", 1 NFE per step -----------------------------------
from . import distill as _distill  # noqa: F401  (adds "ddim" to SAMPLERS and SAMPLER_DESCRIPTIONS)

_nfe_for, _steps_for_nfe = nfe_for, steps_for_nfe


def nfe_for(sampler: str, num_steps: int) -> int | None:
    return num_steps if sampler == "ddim" else _nfe_for(sampler, num_steps)


def steps_for_nfe(sampler: str, nfe: int) -> int:
    return nfe if sampler == "ddim" else _steps_for_nfe(sampler, nfe)
