"""Reverse-time samplers for the VE SDE. Each is a generator with one signature:

    fn(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, **extras) -> yields Step

`x` is the prior sample x(1) ~ N(0, std(1)^2 I); `score_model.denoise(x, sigma, labels, guidance)` is the
denoiser D(x; sigma), the Tweedie estimate of x(0) at noise std sigma (the score is (D - x) / sigma^2), and
`score_model.sde` the VESDE. Each Step carries the current sample `x`, the denoised estimate `x0` from the
latest evaluation, and `nfe`, the number of network calls so far (a guided call is one call on a doubled
batch). The last Step holds the final sample, with no noise added at the end. The caller decides how often
to render.

Each sampler is registered where it is written (`register_sampler`): its description and its cost in network
evaluations as a function of the step count (or, for an adaptive solver, a cap) live in `SAMPLERS[name]`, a
`SamplerSpec`. Solvers on a sigma grid take the grid as a value (`sigmas=`, default `karras_sigmas`), as in
k-diffusion.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SamplerSpec:
    """What the app, the CLI and the benchmarks need to know about a sampler, kept beside its code."""
    name: str
    fn: Callable                                  # the generator function (the signature above)
    description: str                              # one line: method, NFE per step, when to use it
    nfe: Callable[[int], int] | None = None       # network evaluations for `num_steps`; None: adaptive
    max_nfe: int | None = None                    # adaptive samplers: the cap (their default `max_nfe`)
    typical_nfe: int | None = None                # adaptive samplers: what a cost estimate assumes

    @property
    def adaptive(self) -> bool:
        """True when the solver's tolerance, not `num_steps`, sets the work."""
        return self.nfe is None

    def nfe_for(self, num_steps: int) -> int | None:
        """Network evaluations for `num_steps` (None for an adaptive sampler)."""
        return None if self.adaptive else self.nfe(num_steps)

    def steps_for(self, nfe: int) -> int:
        """The largest step count whose NFE does not pass `nfe` (at least 1): the inverse of nfe_for."""
        if self.adaptive:
            raise ValueError(f"{self.name} is adaptive: its tolerance, not a step count, sets the NFE")
        steps = 1
        while self.nfe(steps + 1) <= nfe:
            steps += 1
        return steps


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, *, description: str, nfe: Callable[[int], int] | None = None,
                     max_nfe: int | None = None, typical_nfe: int | None = None):
    """Decorator: record `fn` under `name` with its description and cost (compare score_sde's `register_predictor`)."""
    def register(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, fn, description, nfe, max_nfe, typical_nfe)
        return fn
    return register


@dataclass
class Step:
    i: int              # step index, 0-based
    t: float            # diffusion time of `x`
    x: torch.Tensor     # current sample (B, C, H, W)
    x0: torch.Tensor    # denoised estimate (B, C, H, W)
    nfe: int            # score-model calls so far
    final: bool = False


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on CPU from `generator`, then moved: a seed means the same picture on every device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _score(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """Tweedie's formula read backwards: s(x, t) = (D(x; sigma) - x) / sigma^2 with sigma = std(t)."""
    return (x0 - x) / sigma**2


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


def _noise_levels(sde, num_steps: int, sigmas) -> list[float]:
    """The noise levels a sigma-grid solver visits, sigma_0 > ... > sigma_{N-1} > sigma_N = 0: `sigmas` as given
    (k-diffusion style: the schedule is the caller's value), else the Karras grid from std(1) down to std(eps)."""
    if sigmas is None:
        return karras_sigmas(sde.std_min, sde.std_max, num_steps).tolist()
    levels = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if (len(levels) != num_steps + 1 or levels[-1] != 0.0 or not all(math.isfinite(s) for s in levels)
            or any(a <= b for a, b in zip(levels, levels[1:]))):
        raise ValueError(f"sigmas must fall strictly from a finite sigma_0 to 0 in num_steps + 1 = {num_steps + 1} "
                         f"values, got {levels[:4]}{'...' if len(levels) > 4 else ''} ({len(levels)} values)")
    return levels


@register_sampler("dpmpp_2m", nfe=lambda n: n,
                  description="DPM-Solver++(2M): multistep 2nd-order ODE solver, 1 NFE/step, deterministic")
def dpmpp_2m(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, sigmas=None):
    """DPM-Solver++(2M), multistep 2nd order in lambda = -log sigma (Lu et al. 2022, algorithm 2; k-diffusion
    `sample_dpmpp_2m`): the probability-flow ODE, i.e. dpmpp_2m_sde at eta = 0. One score call per step."""
    return dpmpp_2m_sde(score_model, x, labels, num_steps=num_steps, generator=generator, guidance=guidance,
                        sigmas=sigmas, eta=0.0)


@register_sampler("dpmpp_2m_sde", nfe=lambda n: n,
                  description="DPM-Solver++(2M) SDE: dpmpp_2m with fresh noise each step, 1 NFE/step; corrects score "
                              "errors, the score models' default")
@torch.no_grad()
def dpmpp_2m_sde(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, sigmas=None, eta=1.0):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, sec. 4; k-diffusion `sample_dpmpp_2m_sde`, midpoint variant), on the
    sigma grid (default Karras). One score call per step. With h = log(sigma / sigma') (VE, alpha = 1):

        x' = (sigma'/sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D + sigma' sqrt(1 - e^{-2 eta h}) z,   z ~ N(0, I)

    at eta = 1 the exact Gaussian posterior step given D, plus the multistep 2nd-order correction on D. Fresh noise
    at every step corrects part of the score model's error, which the deterministic ODE carries to the end;
    eta = 0 is DPM-Solver++(2M), the probability-flow ODE solver (`dpmpp_2m`)."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    sigmas = _noise_levels(sde, num_steps, sigmas)
    old_x0, h_last = None, None
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = score_model.denoise(x, sigma, labels, guidance)
        if sigma_next == 0:                                       # last step: the denoised estimate, no noise
            x = x0
        else:
            h = math.log(sigma / sigma_next)                      # lambda' - lambda, lambda = -log sigma
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
        yield Step(i, sde.t_from_std(sigma_next), x, x0, i + 1, i == num_steps - 1)


@register_sampler("heun", nfe=lambda n: 2 * n - 1,
                  description="Heun 2nd-order probability-flow ODE on the Karras sigma grid, 2 NFE/step (last step 1)")
@torch.no_grad()
def heun(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, sigmas=None):
    """Probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma, Heun's 2nd-order method on the sigma grid
    (default Karras), Euler on the last step to sigma = 0 (Karras et al. 2022, algorithm 1). NFE = 2 N - 1."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    sigmas = _noise_levels(sde, num_steps, sigmas)
    x = x * (sigmas[0] / sde.std_max)  # no-op for the default grid, which starts at std(1)
    nfe = 0
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = score_model.denoise(x, sigma, labels, guidance)
        d = (x - x0) / sigma                                     # dx/dsigma at sigma
        x_next = x + (sigma_next - sigma) * d                    # Euler step
        nfe += 1
        if sigma_next > 0:                                       # 2nd-order correction (trapezoid)
            d_next = (x_next - score_model.denoise(x_next, sigma_next, labels, guidance)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
            nfe += 1
        x = x_next
        yield Step(i, sde.t_from_std(sigma_next), x, x0, nfe, i == num_steps - 1)


@register_sampler("euler_maruyama", nfe=lambda n: n,
                  description="Euler-Maruyama on the reverse SDE (the seed tutorial's sampler), 1 NFE/step")
@torch.no_grad()
def euler_maruyama(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, eps=None):
    """Euler-Maruyama on the reverse-time SDE dx = -g(t)^2 s(x, t) dt + g(t) dw_bar (Song et al. 2021, eq. 6)."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    eps = sde.eps if eps is None else eps
    for i, (t, t_next) in enumerate(_time_grid(num_steps, eps)):
        dt = t - t_next
        sigma = sde.marginal_std(t)
        x0 = score_model.denoise(x, sigma, labels, guidance)
        mean_x = x - sde.reverse_drift(_score(x, x0, sigma), t) * dt          # drift step, backwards in time
        last = i == num_steps - 1
        g2 = sde.diffusion_coeff(t) ** 2
        x = mean_x if last else mean_x + math.sqrt(g2 * dt) * _randn_like(x, generator)  # diffusion step
        yield Step(i, t_next, x, x0, i + 1, last)


@register_sampler("predictor_corrector", nfe=lambda n: 2 * n,
                  description="Euler-Maruyama predictor + Langevin corrector (snr 0.16), 2 NFE/step")
@torch.no_grad()
def predictor_corrector(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, snr=0.16, eps=None):
    """Predictor-corrector: Langevin corrector at signal-to-noise `snr`, then an Euler-Maruyama predictor
    (Song et al. 2021, algorithm 4 for VE SDEs). Two score calls per step."""
    num_steps, sde = _check_steps(num_steps), score_model.sde
    eps = sde.eps if eps is None else eps
    nfe = 0
    for i, (t, t_next) in enumerate(_time_grid(num_steps, eps)):
        dt = t - t_next
        sigma = sde.marginal_std(t)
        # corrector: one Langevin step, size set so ||step * grad|| / ||noise|| matches snr, per sample
        grad = _score(x, score_model.denoise(x, sigma, labels, guidance), sigma)
        noise = _randn_like(x, generator)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        noise_norm = noise.flatten(1).norm(dim=1)
        step = (2 * (snr * noise_norm / grad_norm) ** 2)[:, None, None, None]
        x = x + step * grad + torch.sqrt(2 * step) * noise
        # predictor: Euler-Maruyama step of the reverse SDE
        x0 = score_model.denoise(x, sigma, labels, guidance)
        nfe += 2
        mean_x = x - sde.reverse_drift(_score(x, x0, sigma), t) * dt
        last = i == num_steps - 1
        g2 = sde.diffusion_coeff(t) ** 2
        x = mean_x if last else mean_x + math.sqrt(g2 * dt) * _randn_like(x, generator)
        yield Step(i, t_next, x, x0, nfe, last)


@register_sampler("rk45", max_nfe=2000, typical_nfe=200,
                  description="adaptive RK45 probability-flow ODE (scipy), steps set by tolerance; NFE reported")
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
        sigma = sde.marginal_std(float(t))
        state["x0"] = score_model.denoise(xt, sigma, labels, guidance)
        state["nfe"] += 1
        drift = sde.reverse_drift(_score(xt, state["x0"], sigma), float(t), probability_flow=True)
        return drift.reshape(-1).double().cpu().numpy()

    solver = RK45(ode, 1.0, x.reshape(-1).double().cpu().numpy(), eps, rtol=rtol, atol=atol)
    i = 0
    while solver.status == "running":
        solver.step()
        if solver.status == "failed":
            raise RuntimeError(f"RK45 failed at t={solver.t:.4g}: {solver.status}")
        if state["nfe"] > max_nfe:
            raise RuntimeError(f"RK45 exceeded max_nfe={max_nfe}; loosen rtol/atol")
        x = torch.from_numpy(solver.y).reshape(shape).to(device=device, dtype=dtype)
        if solver.status == "finished":                          # one Tweedie step from t = eps to 0
            x0 = score_model.denoise(x, sde.marginal_std(float(solver.t)), labels, guidance)
            state["nfe"] += 1
            yield Step(i, 0.0, x0, x0, state["nfe"], True)
        else:  # Dormand-Prince evaluates last at the accepted (t, x) (first same as last): its D is x's estimate
            yield Step(i, float(solver.t), x, state["x0"], state["nfe"], False)
        i += 1


def sampler_spec(name: str) -> SamplerSpec:
    """The registered spec of `name`, or a ValueError listing the choices."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def get_sampler(name: str):
    return sampler_spec(name).fn


def sample(sampler, score_model, x, labels=None, **kwargs) -> tuple[torch.Tensor, int]:
    """Drain a sampler; returns (final x, nfe)."""
    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    step = None
    for step in fn(score_model, x, labels, **kwargs):
        pass
    return step.x, step.nfe


# ---- DDIM: a distilled student's sampler (diffusion/distill.py trains the students) ---------------------------------
# With D the denoiser, the probability-flow ODE of the VE SDE is dx/dsigma = (x - D) / sigma; its Euler step from sigma
# to sigma' is DDIM (Song et al. 2021, "DDIM", with alpha = 1):  x' = D + (sigma' / sigma) (x - D).  A progressively
# distilled student (Salimans & Ho 2022) runs it on its own grid: every (T/N)-th point of the teacher's T-step Karras
# grid; any other score model on the Karras grid of num_steps.

DEFAULT_RHO = 7.0


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x' = D + (sigma'/sigma)(x - D): the Euler step of dx/dsigma = (x - D)/sigma. sigma, sigma_next: floats or (B,)."""
    ratio = _ratio(sigma_next, sigma, x)
    return x0 + ratio * (x - x0)


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


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step sigma -> sigma' (k-diffusion's `get_ancestral_step`): fresh noise
    sigma_up = min(sigma', eta sigma' sqrt(1 - sigma'^2 / sigma^2)), the deterministic part sigma_down =
    sqrt(sigma'^2 - sigma_up^2), so that sigma_down^2 + sigma_up^2 = sigma'^2."""
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2))
    return math.sqrt(sigma_next ** 2 - sigma_up ** 2), sigma_up


@register_sampler("ddim", nfe=lambda steps: steps,
                  description="DDIM: Euler on the probability-flow ODE, 1 NFE/step; a distilled student's sampler "
                              "(on its own 1-4 step grid), plain DDIM on the Karras grid for other models")
@torch.no_grad()
def ddim(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, eta=0.0):
    """DDIM = Euler on the probability-flow ODE, x' = D + (sigma'/sigma)(x - D) (Song et al. 2021 "DDIM"; Karras et al.
    2022 eq. 4), on a distilled student's own grid (Salimans & Ho 2022) or the Karras grid. 1 NFE per step.

    eta > 0 makes each step ancestral (k-diffusion's `get_ancestral_step`): of the next noise level sigma', a part
    sigma_up = min(sigma', eta sigma' sqrt(1 - sigma'^2 / sigma^2)) is fresh noise and the rest,
    sigma_down = sqrt(sigma'^2 - sigma_up^2), the deterministic direction:

        x' = D + (sigma_down / sigma)(x - D) + sigma_up z,   z ~ N(0, I)

    so x' keeps the marginal std sigma' (if (x - D) / sigma is unit noise); eta = 1 is DDPM's ancestral step. The
    last step (sigma' = 0) returns D at any eta."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    sigmas = sampling_sigmas(score_model, num_steps).tolist()
    check_guidance(score_model, guidance)
    sde, n = score_model.sde, len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = score_model.denoise(x, sigma, labels, guidance)   # one network call (a student takes w as an input)
        if eta > 0 and sigma_next > 0:
            sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
            x = ddim_step(x, x0, sigma, sigma_down) + sigma_up * _randn_like(x, generator)
        else:
            x = ddim_step(x, x0, sigma, sigma_next)         # last step: sigma' = 0, x = D
        yield Step(i, sde.t_from_std(sigma_next), x, x0, i + 1, i == n - 1)


@register_sampler("euler_ancestral", nfe=lambda steps: steps,
                  description="Euler ancestral: DDIM with fresh noise at every step (eta = 1), 1 NFE/step; on a "
                              "student's grid it trades a little FD for fewer specks")
def euler_ancestral(score_model, x, labels=None, *, num_steps, generator=None, guidance=1.0, eta=1.0):
    """k-diffusion's `sample_euler_ancestral` in this package's terms: `ddim` at eta = 1 (or the eta given)."""
    return ddim(score_model, x, labels, num_steps=num_steps, generator=generator, guidance=guidance, eta=eta)
