"""A 2-D toy world under the same VE SDE, where the score is known exactly: the "force field" picture.

Data: a Gaussian mixture p_0 = sum_k pi_k N(mu_k, s_k^2 I) in the plane. The VE forward process adds
N(0, std(t)^2 I), so every marginal is again a mixture, in closed form (Song et al. 2021, sec. 3.4):

    p_t(x) = sum_k pi_k N(x; mu_k, v_k(t) I),   v_k(t) = s_k^2 + std(t)^2
    grad log p_t(x) = sum_k r_k(x, t) (mu_k - x) / v_k(t),   r_k = pi_k N(x; mu_k, v_k I) / p_t(x)
    D(x; sigma) = x + sigma^2 grad log p_t(x)  (the exact Tweedie denoiser)

`MixtureScore` gives that field the score-model interface the library's samplers use, with points stored as
(B, 2, 1, 1) "images", so Euler-Maruyama, the probability-flow ODE solvers and every other sampler run on it
unchanged. `ToyScoreMLP` is a small network learning the same field by denoising score matching.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import GaussianFourierProjection
from .sde import VESDE


class GaussianMixture2D:
    """pi_k, mu_k (K, 2), s_k (K,): an isotropic 2-D Gaussian mixture (float64 throughout)."""

    def __init__(self, means, stds, weights=None, name: str = "mixture"):
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(-1, 2)
        k = len(self.means)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0 or bool((self.stds <= 0).any()):
            raise ValueError("weights must be K non-negative numbers with a positive sum, and stds positive")
        self.weights = w / w.sum()
        self.name = name

    def __len__(self) -> int:
        return len(self.means)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2) draws from p_0."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (2,) and covariance (2, 2) of p_0: E[x] = sum pi mu; Cov = sum pi (s^2 I + mu mu^T) - E E^T."""
        mean = self.weights @ self.means
        second = (self.weights[:, None, None] * (self.stds[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
                                                 + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return mean, second - torch.outer(mean, mean)

    def _log_components(self, x: torch.Tensor, std: torch.Tensor):
        """log pi_k N(x; mu_k, v_k I) (N, K) and v_k (N, K) for x (N, 2), std (N,) the forward noise level."""
        v = self.stds[None, :] ** 2 + std[:, None] ** 2                       # (N, K)
        d2 = (x[:, None, :] - self.means[None, :, :]).square().sum(-1)       # (N, K)
        return self.weights.log()[None, :] - d2 / (2 * v) - torch.log(2 * math.pi * v), v

    def log_prob(self, x: torch.Tensor, std) -> torch.Tensor:
        """log p_t(x) for x (N, 2), std = std(t) scalar or (N,)."""
        x = x.double()
        std = torch.as_tensor(std, dtype=torch.float64).expand(len(x))
        logc, _ = self._log_components(x, std)
        return torch.logsumexp(logc, dim=1)

    def score(self, x: torch.Tensor, std) -> torch.Tensor:
        """grad_x log p_t(x) (N, 2) at noise level std = std(t), scalar or (N,)."""
        x = x.double()
        std = torch.as_tensor(std, dtype=torch.float64).expand(len(x))
        logc, v = self._log_components(x, std)
        r = torch.softmax(logc, dim=1)                                        # responsibilities (N, K)
        return (r[:, :, None] * (self.means[None] - x[:, None, :]) / v[:, :, None]).sum(1)


def digit_two(n: int = 48, std: float = 0.06) -> GaussianMixture2D:
    """A mixture whose components trace a handwritten "2" in [-1, 1]^2: an arc, a diagonal, a base stroke."""
    arc = torch.linspace(math.pi * 0.95, -math.pi * 0.2, n // 2, dtype=torch.float64)
    top = torch.stack([0.5 * torch.cos(arc), 0.45 + 0.4 * torch.sin(arc)], 1)
    start, end = top[-1], torch.tensor([-0.55, -0.8], dtype=torch.float64)
    s = torch.linspace(0, 1, n // 4 + 1, dtype=torch.float64)[1:, None]
    diag = start + s * (end - start)
    base = torch.stack([torch.linspace(-0.55, 0.6, n - len(top) - len(diag), dtype=torch.float64),
                        torch.full((n - len(top) - len(diag),), -0.8, dtype=torch.float64)], 1)
    return GaussianMixture2D(torch.cat([top, diag, base]), std, name="digit 2")


def two_blobs() -> GaussianMixture2D:
    """Two unequal modes: the simplest picture of a score field that must choose a side."""
    return GaussianMixture2D([[-0.6, 0.3], [0.7, -0.4]], [0.15, 0.25], [0.35, 0.65], name="two blobs")


def ring(k: int = 8, radius: float = 0.75, std: float = 0.08) -> GaussianMixture2D:
    a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return GaussianMixture2D(torch.stack([radius * a.cos(), radius * a.sin()], 1), std, name=f"ring of {k}")


DATASETS = {"digit 2": digit_two, "ring of 8": ring, "two blobs": two_blobs}


def to_points(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, 1, 1) sampler state -> (B, 2)."""
    return x.reshape(x.shape[0], 2)


def to_state(points: torch.Tensor) -> torch.Tensor:
    """(B, 2) -> (B, 2, 1, 1): the "image" layout every sampler works on."""
    return points.reshape(points.shape[0], 2, 1, 1)


class MixtureScore:
    """The exact score of `mixture` under `sde`, with the score-model interface the samplers use:
    __call__(x, t, labels=None, guidance=1.0) -> score and denoise(x, sigma, ...) -> D, x (B, 2, 1, 1)."""

    conditional = False
    sample_shape = (2, 1, 1)

    def __init__(self, mixture: GaussianMixture2D, sde: VESDE | None = None):
        self.mixture, self.sde = mixture, sde or VESDE(25.0)

    def __call__(self, x, t, labels=None, guidance: float = 1.0):
        std = self.sde.marginal_std(torch.as_tensor(t, dtype=torch.float64)).expand(x.shape[0])
        return to_state(self.mixture.score(to_points(x), std)).to(x.dtype)

    def denoise(self, x, sigma, labels=None, guidance: float = 1.0):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        s = self.mixture.score(to_points(x), sigma)
        return to_state(to_points(x).double() + sigma[:, None] ** 2 * s).to(x.dtype)


class ToyScoreMLP(nn.Module):
    """s_theta(x, t) = F(x, t) / std(t) for 2-D points (the same "song" preconditioning as the image models):
    Gaussian Fourier features of t, concatenated with x, through a SiLU MLP. x (B, 2, 1, 1) or (B, 2)."""

    conditional = False
    sample_shape = (2, 1, 1)

    def __init__(self, hidden: int = 128, embed_dim: int = 32, sigma: float = 25.0):
        super().__init__()
        self.sde = VESDE(sigma)
        self.embed = GaussianFourierProjection(embed_dim, scale=16.0)
        self.net = nn.Sequential(nn.Linear(2 + embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, t, labels=None, guidance: float = 1.0):
        shape = x.shape
        pts = x.reshape(shape[0], 2).float()
        t = torch.as_tensor(t, dtype=torch.float32).expand(shape[0])
        std = self.sde.marginal_std(t)
        # inputs scaled by 1 / sqrt(1 + std^2) so that noisy points stay O(1) at every t
        h = torch.cat([pts / torch.sqrt(1 + std[:, None] ** 2), self.embed(t)], dim=1)
        return (self.net(h) / std[:, None]).reshape(shape)

    def denoise(self, x, sigma, labels=None, guidance: float = 1.0):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        t = self.sde.t_from_std(sigma)
        return x + (sigma.float() ** 2).view(-1, *([1] * (x.dim() - 1))) * self(x, t)


def train_toy(model: ToyScoreMLP, mixture: GaussianMixture2D, steps: int, batch_size: int = 256, lr: float = 3e-3,
              generator: torch.Generator | None = None, should_stop=None):
    """Denoising score matching on the mixture (t ~ U(eps, 1), loss E ||std s + z||^2, as the image models' v1
    recipe); yields (step, loss) after each optimizer step. `should_stop()` is polled every step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr * 0.05)
    eps = model.sde.eps
    for step in range(steps):
        if should_stop is not None and should_stop():
            return
        x0 = mixture.sample(batch_size, generator).float()
        t = torch.rand(batch_size, generator=generator) * (1 - eps) + eps
        z = torch.randn(batch_size, 2, generator=generator)
        std = model.sde.marginal_std(t)[:, None]
        loss = (std * model(x0 + std * z, t) + z).square().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        yield step, float(loss.detach())
