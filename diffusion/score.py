"""Score model: a U-Net wrapped with the VE SDE's preconditioning (the network never sees the SDE).

Every parameterisation is a denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, c), with sigma = std(t),
and the score follows from Tweedie's formula, s = (D - x) / sigma^2 (Karras et al. 2022, table 1):

  precond="song"  (Song et al. 2021; the first shipped weights):  c_skip = 1, c_out = sigma, c_in = 1, c_noise = t,
                  i.e. s = F / sigma, so the DSM target -z / sigma is an O(1) regression target for F.
  precond="edm"   (Karras et al. 2022, "EDM", sec. 5 and app. B.6):  with s_d = sigma_data,
                  c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
                  c_in = 1 / sqrt(sigma^2 + s_d^2), c_noise = ln(sigma) / 4:
                  unit-variance input and target at every noise level; at small sigma D ~ x, so the network only
                  corrects x instead of predicting the noise that the score divides by sigma.

The network's training target is F* = (x0 - c_skip x_t) / c_out; `loss_weight(sigma)` = 1 / c_out^2 makes
loss_weight * ||D - x0||^2 = ||F - F*||^2 (compare NVlabs/edm `VEPrecond`, `EDMPrecond`; k-diffusion `Denoiser`).

Classifier-free guidance (Ho & Salimans 2022): s = s_uncond + w (s_cond - s_uncond); w = 1 is the
plain conditional model, w = 0 the unconditional one. Both halves run in one batched call.
A guidance-distilled student (`guidance_embed=True`, Meng et al. 2023; see diffusion.distill) takes w as a
network input instead: one call, no null-class half. `distilled` records how it was distilled (step count,
grid, guidance range) for the sampler that runs it.
"""
from __future__ import annotations

import torch
from torch import nn

from .hub_mixin import SafeHubMixin
from .sde import VESDE
from .unet import UNet

PRECONDITIONINGS = ("song", "edm")


class ScoreModel(nn.Module, SafeHubMixin, library_name="mnist-diffusion-lab", tags=["diffusion", "mnist", "score-based"]):
    """Constructor kwargs are the config (saved as config.json by save_pretrained)."""

    def __init__(self, sigma: float = 25.0, eps: float = 1e-3, in_channels: int = 1, image_size: int = 28,
                 channels=(16, 32, 64), attention_levels=(2,), num_classes: int | None = None,
                 embed_dim: int = 128, context_dim: int = 64, skip: str = "concat", heads: int = 4,
                 precond: str = "song", sigma_data: float = 0.31, guidance_embed: bool = False,
                 distilled: dict | None = None, autoguide: str | None = None):
        super().__init__()
        if precond not in PRECONDITIONINGS:
            raise ValueError(f"precond must be one of {', '.join(PRECONDITIONINGS)}, got {precond!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.precond, self.sigma_data = precond, float(sigma_data)
        self.sde = VESDE(sigma, eps)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.guidance_embed, self.distilled = bool(guidance_embed), (dict(distilled) if distilled else None)
        self.autoguide = autoguide or None   # weights folder of a weaker version of this model (diffusion.autoguidance)
        self.net = UNet(in_channels, channels, attention_levels, num_classes, embed_dim, context_dim, skip, heads,
                        guidance_embed=self.guidance_embed)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def null_label(self) -> int:
        if not self.conditional:
            raise ValueError("an unconditional model has no null label")
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def label_embeddings(self) -> torch.Tensor:
        """(num_classes + 1, D): the learned digit embeddings, the null class last."""
        return self.net.class_embed.weight.detach()

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at noise level sigma (any shape); see the module docstring."""
        if self.precond == "song":
            one = torch.ones_like(sigma)
            return one, sigma, one, self.sde.t_from_std(sigma)
        sd2 = self.sigma_data ** 2
        root = torch.sqrt(sigma ** 2 + sd2)
        return sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / root, 1.0 / root, torch.log(sigma) / 4

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2: the weight on ||D - x0||^2 that makes it the network's unit-scaled error."""
        return 1.0 / self.coefficients(sigma)[1] ** 2

    def _precond(self, x: torch.Tensor, sigma: torch.Tensor, labels, w=None):
        """(c_skip, c_out, F) with the coefficients shaped (B, 1, 1, 1) for broadcasting over x (B, C, H, W)."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)   # float64: t -> sigma -> t is exact in float32
        view = (-1, 1, 1, 1)
        extra = {} if w is None else {"guidance": w}
        f = self.net(x * c_in.view(view).to(x.dtype), c_noise.to(torch.float32), labels, **extra)
        return c_skip.view(view).to(x.dtype), c_out.view(view).to(x.dtype), f

    def _guided(self, fn, x: torch.Tensor, sigma: torch.Tensor, labels, guidance: float) -> torch.Tensor:
        """fn(x, sigma, labels) with classifier-free guidance: out_u + w (out_c - out_u), both halves in one batch
        of 2B. Valid for the score and the denoiser alike (D is affine in s). `guidance` a float or a (B,) tensor.
        With guidance_embed, w goes into the network instead: fn(x, sigma, labels, w), one call on B."""
        if self.guidance_embed:
            if labels is not None and not self.conditional:
                raise ValueError("this model is unconditional: labels must be None")
            w = torch.as_tensor(guidance, device=x.device, dtype=torch.float32).expand(x.shape[0])
            return fn(x, sigma, labels, w)
        per_sample = torch.is_tensor(guidance) and guidance.ndim > 0
        if per_sample:
            guidance = guidance.to(x.device, x.dtype).view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        if labels is None or not self.conditional or (not per_sample and guidance == 1.0):
            if labels is not None and not self.conditional:
                raise ValueError("this model is unconditional: labels must be None")
            return fn(x, sigma, labels)
        if labels.is_floating_point():
            null = self.net.class_embed.weight[self.null_label].expand_as(labels)
        else:
            null = torch.full_like(labels, self.null_label)
        out_c, out_u = fn(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null])).chunk(2)
        return out_u + guidance * (out_c - out_u)

    def _score_at(self, x, sigma, labels, w=None):
        # s = (D - x) / sigma^2 = (c_skip - 1) / sigma^2 x + c_out / sigma^2 F  (exactly F / sigma for "song")
        c_skip, c_out, f = self._precond(x, sigma, labels, w)
        s2 = sigma.to(x.dtype).view(-1, 1, 1, 1) ** 2
        if self.precond == "song":
            return f / sigma.to(x.dtype).view(-1, 1, 1, 1)  # the shipped v1 weights' exact arithmetic
        return (c_skip - 1) / s2 * x + c_out / s2 * f

    def _denoise_at(self, x, sigma, labels, w=None):
        c_skip, c_out, f = self._precond(x, sigma, labels, w)
        return c_skip * x + c_out * f

    def _batch_sigma(self, x: torch.Tensor, value) -> torch.Tensor:
        return torch.as_tensor(value, device=x.device, dtype=torch.float64).expand(x.shape[0])

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> torch.Tensor:
        """Score of p_t at x: x (B, C, H, W), t (B,) or scalar, labels (B,) int / (B, D) embeddings / None."""
        sigma = self.sde.marginal_std(self._batch_sigma(x, t))
        return self._guided(self._score_at, x, sigma, labels, guidance)

    def denoise(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """D(x; sigma) = E[x0 | x_t = x], the Tweedie estimate x + sigma^2 s(x, t(sigma)): x (B, C, H, W),
        sigma (B,), a scalar tensor or a float (the noise std, not t)."""
        return self._guided(self._denoise_at, x, self._batch_sigma(x, sigma), labels, guidance)


def networks(model: nn.Module) -> list[nn.Module]:
    """The U-Nets a score model evaluates: its one `net`, both of an autoguided pair (diffusion.autoguidance);
    [model] for a module that holds no ScoreModel. For hooks that must see every network evaluation."""
    return [m.net for m in model.modules() if isinstance(m, ScoreModel)] or [model]
