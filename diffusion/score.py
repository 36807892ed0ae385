"""Score model: a U-Net wrapped with the VE SDE's preconditioning (the network never sees the SDE).

    s_theta(x, t) = F_theta(x, t, c) / std(t)

so that the denoising score matching target -z / std(t) becomes an O(1) regression target for F
(Song et al. 2021; compare NVlabs/edm `EDMPrecond`, k-diffusion `Denoiser`).

Classifier-free guidance (Ho & Salimans 2022): s = s_uncond + w (s_cond - s_uncond); w = 1 is the
plain conditional model, w = 0 the unconditional one. Both halves run in one batched call.
"""
from __future__ import annotations

import torch
from torch import nn

from .hub_mixin import SafeHubMixin
from .sde import VESDE
from .unet import UNet


class ScoreModel(nn.Module, SafeHubMixin, library_name="mnist-diffusion-lab", tags=["diffusion", "mnist", "score-based"]):
    """Constructor kwargs are the config (saved as config.json by save_pretrained)."""

    def __init__(self, sigma: float = 25.0, eps: float = 1e-3, in_channels: int = 1, image_size: int = 28,
                 channels=(16, 32, 64), attention_levels=(2,), num_classes: int | None = None,
                 embed_dim: int = 128, context_dim: int = 64, skip: str = "concat", heads: int = 4):
        super().__init__()
        self.sde = VESDE(sigma, eps)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.net = UNet(in_channels, channels, attention_levels, num_classes, embed_dim, context_dim, skip, heads)

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

    def _score(self, x: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
        std = self.sde.marginal_std(t).to(x.dtype)
        return self.net(x, t, labels) / std[:, None, None, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> torch.Tensor:
        """Score of p_t at x: x (B, C, H, W), t (B,) or scalar, labels (B,) int / (B, D) embeddings / None."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        if labels is None or not self.conditional or guidance == 1.0:
            if labels is not None and not self.conditional:
                raise ValueError("this model is unconditional: labels must be None")
            return self._score(x, t, labels)
        # classifier-free guidance: [cond; uncond] in one batch of 2B
        if labels.is_floating_point():
            null = self.net.class_embed.weight[self.null_label].expand_as(labels)
        else:
            null = torch.full_like(labels, self.null_label)
        s_cond, s_uncond = self._score(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return s_uncond + guidance * (s_cond - s_uncond)
