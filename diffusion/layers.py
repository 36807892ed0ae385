"""Building blocks of the score U-Net.

- Gaussian Fourier features for time (Tancik et al. 2020; Song et al. 2021, appendix H).
- Multi-head attention through `F.scaled_dot_product_attention`.
- TransformerBlock / SpatialTransformer as in latent diffusion (Rombach et al. 2022):
  self-attention over pixels, cross-attention to a conditioning context, GELU MLP, pre-LayerNorm
  and residuals.

Note on cross-attention with a single context token (one label embedding): the softmax over one
key is identically 1, so cross-attention reduces to a learned linear map of the label embedding
added to every pixel. It is kept in this form because it is the mechanism text-to-image models use
with many tokens, not because the attention weights carry information here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GaussianFourierProjection(nn.Module):
    """t -> [sin(2 pi W t), cos(2 pi W t)] with W ~ N(0, scale^2) fixed (a buffer, saved, not trained)."""

    def __init__(self, embed_dim: int, scale: float = 30.0, seed: int = 0):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(embed_dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t[:, None].to(self.W.dtype) * self.W[None, :] * (2 * math.pi)  # (B, D/2)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, D)


class CrossAttention(nn.Module):
    """Multi-head attention of `x` (B, N, C) over `context` (B, M, Cc); self-attention when context is None."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, head_dim: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def project(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """(B, N, C) -> q, k, v each (B, heads, N|M, head_dim)."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return (rearrange(a, "b n (h d) -> b h n d", h=self.heads) for a in (q, k, v))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, context)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, (B, h, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, context); x + MLP(LN x)."""

    def __init__(self, dim: int, context_dim: int | None, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        head_dim = max(dim // heads, 8)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = CrossAttention(dim, None, heads, head_dim)
        self.context_dim = context_dim
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attn = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        if self.context_dim is not None and context is not None:
            x = x + self.cross_attn(self.norm2(x), context)
        return x + self.mlp(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Applies a (residual) TransformerBlock to a feature map: (B, C, H, W) -> (B, HW, C) -> block -> back."""

    def __init__(self, channels: int, context_dim: int | None, heads: int = 4):
        super().__init__()
        self.block = TransformerBlock(channels, context_dim, heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(x, "b c h w -> b (h w) c")
        tokens = self.block(tokens, context)
        return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)
