"""One parametrised U-Net for score estimation (pixel or latent, conditional or not).

The union of the seed tutorial's variants, as flags (in the spirit of NVlabs/edm's UNetBlock):
- `skip="concat"` (decoder sees [h, skip]) or `skip="add"` (decoder sees h + skip, the "res" variant);
- `attention_levels`: resolution levels that get a SpatialTransformer (self-attention + cross-attention
  to the label embedding); empty for the plain U-Net;
- `num_classes`: None for unconditional; otherwise an embedding table of num_classes + 1 rows, the last
  being the null class used for classifier-free guidance (Ho & Salimans 2022).

Time enters every residual block through Gaussian Fourier features -> MLP -> per-channel bias.
`guidance_embed=True` (a guidance-distilled student, Meng et al. 2023) adds Fourier features of the guidance
weight w -> MLP to that time embedding; its last layer starts at zero, so the student starts as its teacher.
Spatial sizes need not be powers of two: 28 -> 14 -> 7 for pixels, 10 -> 5 -> 3 for latents;
upsampling interpolates to the skip's exact size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GaussianFourierProjection, SpatialTransformer


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels >= 4 else 1, channels)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + dense(temb); h = conv(SiLU(GN(h))); out = h + skip(x)."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(embed_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """eps-style network: (x (B, C, H, W), t (B,), context (B, 1, D) | None) -> (B, C, H, W)."""

    def __init__(self, in_channels: int = 1, channels=(32, 64, 128), attention_levels=(1, 2),
                 num_classes: int | None = None, embed_dim: int = 128, context_dim: int = 64,
                 skip: str = "concat", heads: int = 4, guidance_embed: bool = False):
        super().__init__()
        if skip not in ("concat", "add"):
            raise ValueError(f"skip must be 'concat' or 'add', got {skip!r}")
        channels = tuple(int(c) for c in channels)
        attention_levels = tuple(int(a) for a in attention_levels)
        if any(not 0 <= a < len(channels) for a in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} out of range for {len(channels)} levels")
        self.skip_mode, self.num_classes = skip, num_classes
        cond_dim = context_dim if num_classes is not None else None

        self.time_embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU())
        if num_classes is not None:
            self.class_embed = nn.Embedding(num_classes + 1, context_dim)  # row num_classes = null class
        self.guidance_embed = None
        if guidance_embed:  # w -> Fourier features (scale 0.5: smooth over w in [0, ~5]) -> MLP, added to temb
            self.guidance_embed = nn.Sequential(GaussianFourierProjection(embed_dim, scale=0.5, seed=1),
                                                nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
            nn.init.zeros_(self.guidance_embed[-1].weight)
            nn.init.zeros_(self.guidance_embed[-1].bias)

        def attn(level: int, ch: int):
            return SpatialTransformer(ch, cond_dim, heads) if level in attention_levels else None

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_blocks, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch = channels[0]
        for level, out_ch in enumerate(channels):
            self.down_blocks.append(ResBlock(ch, out_ch, embed_dim))
            self.down_attn.append(attn(level, out_ch) or nn.Identity())
            last = level == len(channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1))
            ch = out_ch

        self.mid_block1 = ResBlock(ch, ch, embed_dim)
        self.mid_attn = SpatialTransformer(ch, cond_dim, heads)
        self.mid_block2 = ResBlock(ch, ch, embed_dim)

        self.up_blocks, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            skip_ch = channels[level]
            in_ch = ch + skip_ch if skip == "concat" else ch
            if skip == "add" and ch != skip_ch:
                raise ValueError("skip='add' needs the decoder width to match the encoder's at every level")
            self.up_blocks.append(ResBlock(in_ch, skip_ch, embed_dim))
            self.up_attn.append(attn(level, skip_ch) or nn.Identity())
            nxt = channels[level - 1] if level > 0 else skip_ch
            self.upsample.append(nn.Conv2d(skip_ch, nxt, 3, padding=1) if level > 0 else nn.Identity())
            ch = nxt
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (B,) int in [0, num_classes] (num_classes = null) -> context (B, 1, D).
        A float tensor (B, D) is taken as ready-made embeddings (e.g. an interpolation between digits)."""
        if self.num_classes is None:
            raise ValueError("this model is unconditional: labels must be None")
        if labels.is_floating_point():
            return labels[:, None, :].to(self.class_embed.weight.dtype)
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class)")
        return self.class_embed(labels)[:, None, :]

    @staticmethod
    def _run(block, h, context):
        return block(h, context) if isinstance(block, SpatialTransformer) else block(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.time_embed(t)  # (B, E)
        if self.guidance_embed is not None:
            if guidance is None:
                raise ValueError("this network takes the guidance weight as an input: pass guidance (B,)")
            temb = temb + self.guidance_embed(guidance)  # (B, E)
        if self.num_classes is not None and labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device)  # unconditional = null class
        context = self.embed_labels(labels) if labels is not None else None  # (B, 1, D)

        h = self.conv_in(x)
        skips = []
        for block, attn, down in zip(self.down_blocks, self.down_attn, self.downsample):
            h = self._run(attn, block(h, temb), context)
            skips.append(h)
            h = down(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb), context), temb)
        for block, attn, up in zip(self.up_blocks, self.up_attn, self.upsample):
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1) if self.skip_mode == "concat" else h + skip
            h = self._run(attn, block(h, temb), context)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
