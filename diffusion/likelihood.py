"""Exact likelihood through the probability-flow ODE (Song et al. 2021, sec. 4.3 and appendix D.2).

The probability-flow ODE of the VE SDE, dx/dt = f(x, t) = -g(t)^2 s(x, t) / 2, carries x(eps) to x(1)
bijectively, and the instantaneous change of variables (Chen et al. 2018) gives

    log p_eps(x(eps)) = log p_1(x(1)) + int_eps^1 div f(x(t), t) dt.

We integrate the augmented state [x, int div f] from eps to 1 with scipy's RK45, take p_1 to be the
prior N(0, std(1)^2 I), and estimate div f with the Skilling-Hutchinson trick (one probe v, fixed for
the whole solve): div f = E[v^T (df/dx) v], where v^T (df/dx) = grad_x (f . v) is a single
vector-Jacobian product. Rademacher probes are exact for a diagonal Jacobian.

Bits per dimension for 8-bit images (Song et al.'s code, data in [0, 1]; Theis et al. 2016): pixels
k in {0..255} are dequantized to x = (k + u) / 256, u ~ U[0, 1)^D; the density of x on [0, 1]^D lower-
bounds the discrete probability, P(k) >= p(x) / 256^D in expectation, hence

    bpd = -log p(x) / (D ln 2) + log2(256) = -log p(x) / (D ln 2) + 8.

(so E_u[bpd] upper-bounds the discrete negative log-likelihood in bits/dim). The density evaluated is
the model's p_eps, i.e. data smoothed by N(0, std(eps)^2) with std(eps) = 0.0317 at the training
eps = 1e-3, which is coarser than a 1/256 pixel bin: figures compare with Song et al.'s (eps = 1e-5)
in kind, not to the decimal. The Hutchinson estimate is unbiased for log p, not for its exponent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BITS_OFFSET = 8.0  # log2(256): from a density on [0, 1]^D to probabilities of 256-level pixels


@dataclass
class LikelihoodResult:
    logp: torch.Tensor        # (B,) log p_eps(x) in nats, float64
    prior_logp: torch.Tensor  # (B,) log N(x(1); 0, std(1)^2 I)
    delta_logp: torch.Tensor  # (B,) int_eps^1 div f dt
    z: torch.Tensor           # (B, C, H, W) x(1), the ODE's image of the data
    nfe: int                  # right-hand-side evaluations (each one forward + one vector-Jacobian product)


def prior_logp(z: torch.Tensor, std: float) -> torch.Tensor:
    """log N(z; 0, std^2 I) per sample: -D/2 log(2 pi std^2) - |z|^2 / (2 std^2)."""
    d = z[0].numel()
    return -0.5 * d * math.log(2 * math.pi * std**2) - z.flatten(1).pow(2).sum(1) / (2 * std**2)


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [0, 1] on 256 levels (k / 255) -> (k + u) / 256, u ~ U[0, 1): uniform dequantization."""
    k = torch.round(images.double() * 255.0).clamp(0, 255)
    u = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    return ((k + u) / 256.0).to(images.dtype)


def bits_per_dim(logp: torch.Tensor, num_dims: int, offset: float = BITS_OFFSET) -> torch.Tensor:
    """bpd = -log p / (D ln 2) + offset (offset 8 for 8-bit data scaled to [0, 1])."""
    return -logp / (num_dims * math.log(2.0)) + offset


METHODS = ("rk45", "heun")


class NFEBudgetExceeded(RuntimeError):
    """The adaptive solver wanted more right-hand-side evaluations than `max_nfe` allows."""


def heun_times(sde, eps: float, num_steps: int) -> np.ndarray:
    """num_steps + 1 times from eps to 1 whose noise levels std(t) are evenly spaced in ln std (the ODE's natural
    clock: near eps, dx/dt ~ (x - D) / (4 t), smooth in ln t, stiff in t)."""
    stds = np.geomspace(sde.marginal_std(eps), sde.marginal_std(1.0), num_steps + 1)
    t = np.array([sde.t_from_std(float(s)) for s in stds])
    t[0], t[-1] = eps, 1.0
    return t


def _heun(rhs, times: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """Heun's method (explicit trapezoid, 2nd order) on a fixed grid: 2 evaluations per step, 2 * steps in all."""
    y = y0
    for t0, t1 in zip(times[:-1], times[1:]):
        h = t1 - t0
        k1 = rhs(t0, y)
        k2 = rhs(t1, y + h * k1)
        y = y + 0.5 * h * (k1 + k2)
    return y


def ode_log_likelihood(score_model, x: torch.Tensor, labels=None, *, rtol: float = 1e-5, atol: float = 1e-5,
                       eps: float | None = None, probe: str = "rademacher",
                       generator: torch.Generator | None = None, method: str = "rk45", num_steps: int = 20,
                       max_nfe: int | None = None, shared_probe: bool = False) -> LikelihoodResult:
    """log p_eps(x) for a batch x (B, C, H, W) by the probability-flow ODE with a Hutchinson trace estimate.

    `score_model(x, t, labels)` gives the score and `score_model.sde` the VESDE; one solve for the whole
    batch (shared steps), so the NFE is per batch. method="rk45": scipy's adaptive RK45 at rtol / atol, stopped
    with NFEBudgetExceeded past `max_nfe` evaluations (None: no cap); method="heun": `num_steps` fixed Heun steps
    evenly spaced in ln std(t), exactly 2 * num_steps evaluations (a bounded cost, for interactive use).
    shared_probe=True: one probe for every row (rows that are one image under different labels: paired figures)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "heun" and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if max_nfe is not None and (isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1):
        raise ValueError(f"max_nfe must be an integer >= 1 or None, got {max_nfe!r}")
    sde = score_model.sde
    eps = sde.eps if eps is None else eps
    shape, device, dtype, b = x.shape, x.device, x.dtype, x.shape[0]
    n = x.numel()
    # one fixed probe per sample, drawn on CPU from the generator
    probe_shape = (1, *shape[1:]) if shared_probe else shape
    if probe == "rademacher":
        v = torch.randint(0, 2, probe_shape, generator=generator).to(dtype) * 2 - 1
    elif probe == "gaussian":
        v = torch.randn(probe_shape, generator=generator, dtype=dtype)
    else:
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    v = v.expand(shape).to(device)
    nfe = 0

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        if max_nfe is not None and nfe >= max_nfe:
            raise NFEBudgetExceeded(f"the likelihood ODE needed more than max_nfe = {max_nfe} evaluations "
                                    f"(rtol = atol = {rtol:g}); loosen the tolerance or use method='heun'")
        nfe += 1
        xt = torch.from_numpy(y[:n]).reshape(shape).to(device=device, dtype=dtype)
        with torch.enable_grad():
            xt.requires_grad_(True)
            tb = torch.full((b,), t, device=device, dtype=dtype)
            f = sde.reverse_drift(score_model(xt, tb, labels), float(t), probability_flow=True)  # ODE drift (B, C, H, W)
            (vjp,) = torch.autograd.grad((f * v).sum(), xt)               # v^T df/dx
        div = (vjp * v).flatten(1).sum(1)                                 # (B,) Hutchinson estimate of div f
        return np.concatenate([f.detach().reshape(-1).double().cpu().numpy(), div.double().cpu().numpy()])

    y0 = np.concatenate([x.detach().reshape(-1).double().cpu().numpy(), np.zeros(b)])
    if method == "heun":
        y1 = torch.from_numpy(_heun(rhs, heun_times(sde, eps, num_steps), y0))
    else:
        from scipy.integrate import solve_ivp      # imported only when used: a first import can take seconds

        sol = solve_ivp(rhs, (eps, 1.0), y0, method="RK45", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"probability-flow ODE solve failed: {sol.message}")
        y1 = torch.from_numpy(sol.y[:, -1])
    z = y1[:n].reshape(shape)
    delta = y1[n:]
    prior = prior_logp(z, sde.std_max)
    return LikelihoodResult(prior + delta, prior, delta, z.to(dtype), nfe)


def bits_per_dim_ode(score_model, images: torch.Tensor, labels=None, *, generator: torch.Generator | None = None,
                     dequantize_images: bool = True, **kwargs) -> tuple[torch.Tensor, LikelihoodResult]:
    """Bits/dim of images (B, C, H, W) in [0, 1] (8-bit levels) under the model's probability-flow ODE."""
    x = dequantize(images, generator) if dequantize_images else images
    res = ode_log_likelihood(score_model, x, labels, generator=generator, **kwargs)
    return bits_per_dim(res.logp, images[0].numel()), res


VARIANTS = ("as given", "shifted", "inverted", "rotated", "noise")


def image_variants(image: torch.Tensor, generator: torch.Generator | None = None, shift: int = 4) -> dict:
    """{variant: (H, W) image in [0, 1]} for one image (H, W): as given; shifted `shift` pixels right and down
    (zero fill, no wrap-around); inverted (1 - x: white background); rotated 90 degrees; pure noise (uniform
    pixels, seeded). A model of MNIST should find the last ones much less likely than the first."""
    if image.ndim != 2:
        raise ValueError(f"image must be one (H, W) picture, got shape {tuple(image.shape)}")
    image = image.float().clamp(0, 1)
    shifted = torch.zeros_like(image)
    shifted[shift:, shift:] = image[:-shift or None, :-shift or None]
    return {"as given": image, "shifted": shifted, "inverted": 1.0 - image,
            "rotated": torch.rot90(image, 1, (0, 1)),
            "noise": torch.rand(image.shape, generator=generator)}


def conditional_bits_per_dim(score_model, image: torch.Tensor, labels=None, *,
                             generator: torch.Generator | None = None, **kwargs) -> tuple[torch.Tensor, LikelihoodResult]:
    """Bits/dim of one image (C, H, W) under each label c of a conditional model: -log p(x | c) / (D ln 2) + 8 for
    c in `labels` (default 0..9, then the null label, i.e. the model's unconditional p(x)). Every label sees the same
    dequantization noise and the same Hutchinson probe, so the labels are compared on paired estimates.
    kwargs go to ode_log_likelihood (method, num_steps, rtol, ...)."""
    if not getattr(score_model, "conditional", False):
        raise ValueError("conditional_bits_per_dim needs a class-conditional model")
    if image.ndim != 3:
        raise ValueError(f"image must be one (C, H, W) picture, got shape {tuple(image.shape)}")
    if labels is None:
        labels = [*range(score_model.num_classes), score_model.null_label]
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    x = dequantize(image[None], generator).expand(len(labels), -1, -1, -1).contiguous()   # (L, C, H, W), paired
    res = ode_log_likelihood(score_model, x.to(_device(score_model)), labels.to(_device(score_model)),
                             generator=generator, shared_probe=True, **kwargs)
    return bits_per_dim(res.logp, image.numel()), res



def _device(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
