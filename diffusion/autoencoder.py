"""Convolutional autoencoder for latent diffusion (Rombach et al. 2022), MNIST-sized.

    encode: (B, 1, 28, 28) in [0, 1] -> (B, 4, 10, 10)      [28 -3x3-> 28 -s2-> 14 -3x3 valid-> 12 -> 10]
    decode: (B, 4, 10, 10) -> (B, 1, 28, 28) ~ [0, 1]       (mirror with transposed convs; clamp to show)

`latent_scale` is the standard deviation of the latents over the training set (measured after
training and stored in the config), so `encode(x) / latent_scale` has unit variance before the
sigma = 25 SDE is applied; `decode` takes latents in that scaled space when `scaled=True`.
"""
from __future__ import annotations

import torch
from torch import nn

from .hub_mixin import SafeHubMixin


class AutoEncoder(nn.Module, SafeHubMixin, library_name="mnist-diffusion-lab", tags=["autoencoder", "mnist"]):
    def __init__(self, latent_channels: int = 4, hidden: int = 64, latent_scale: float = 1.0):
        super().__init__()
        if not latent_scale > 0:
            raise ValueError(f"latent_scale must be > 0, got {latent_scale}")
        self.latent_channels, self.latent_scale = latent_channels, float(latent_scale)
        h = hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(1, h // 2, 3, padding=1), nn.SiLU(),           # 28
            nn.Conv2d(h // 2, h, 4, stride=2, padding=1), nn.SiLU(),  # 14
            nn.Conv2d(h, h, 3), nn.SiLU(),                            # 12
            nn.Conv2d(h, latent_channels, 3),                         # 10
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent_channels, h, 3), nn.SiLU(),                # 12
            nn.ConvTranspose2d(h, h, 3), nn.SiLU(),                              # 14
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1), nn.SiLU(),    # 28
            nn.Conv2d(h // 2, 1, 3, padding=1),  # linear output: a sigmoid here saturates and stalls training
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, 10, 10)

    def encode(self, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        z = self.encoder(x)
        return z / self.latent_scale if scaled else z

    def decode(self, z: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        return self.decoder(z * self.latent_scale if scaled else z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
