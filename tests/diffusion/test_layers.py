"""Layers against reference implementations written out with einsum/softmax."""
import math

import pytest
import torch

from diffusion.layers import CrossAttention, GaussianFourierProjection, SpatialTransformer, TransformerBlock


def reference_attention(attn: CrossAttention, x, context=None):
    """softmax(q k^T / sqrt(d)) v per head, from the module's own projection weights; also returns the weights."""
    context = x if context is None else context
    h = attn.heads
    q = x @ attn.to_q.weight.T                                    # (B, N, h*d)
    k = context @ attn.to_k.weight.T                              # (B, M, h*d)
    v = context @ attn.to_v.weight.T
    b, n, inner = q.shape
    d = inner // h
    q, k, v = (a.reshape(b, -1, h, d) for a in (q, k, v))         # (B, N|M, h, d)
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d), dim=-1)  # (B, h, N, M)
    out = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(b, n, inner)
    return out @ attn.to_out.weight.T + attn.to_out.bias, weights


@pytest.fixture
def gen():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(1)


def test_self_attention_matches_reference(gen):
    attn = CrossAttention(12, None, heads=3, head_dim=5).double()
    x = torch.randn(2, 7, 12, generator=gen, dtype=torch.float64)
    ref, w = reference_attention(attn, x)
    assert torch.allclose(attn(x), ref, atol=1e-12)
    assert not torch.allclose(w, torch.full_like(w, 1 / 7), atol=1e-3)  # the weights really vary


def test_cross_attention_matches_reference(gen):
    attn = CrossAttention(12, 6, heads=2, head_dim=4).double()
    x = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64)
    ctx = torch.randn(3, 9, 6, generator=gen, dtype=torch.float64)
    ref, _ = reference_attention(attn, x, ctx)
    out = attn(x, ctx)
    assert out.shape == (3, 5, 12)
    assert torch.allclose(out, ref, atol=1e-12)


def test_cross_attention_float32_close_to_reference(gen):
    attn = CrossAttention(16, 8, heads=4, head_dim=8)
    x, ctx = torch.randn(2, 10, 16, generator=gen), torch.randn(2, 3, 8, generator=gen)
    assert torch.allclose(attn(x, ctx), reference_attention(attn, x, ctx)[0], atol=1e-5)


def test_self_attention_is_permutation_equivariant(gen):
    attn = CrossAttention(8, None, heads=2, head_dim=4).double()
    x = torch.randn(1, 6, 8, generator=gen, dtype=torch.float64)
    perm = torch.randperm(6, generator=gen)
    assert torch.allclose(attn(x[:, perm]), attn(x)[:, perm], atol=1e-12)


def test_cross_attention_is_invariant_to_context_order(gen):
    attn = CrossAttention(8, 4, heads=2, head_dim=4).double()
    x, ctx = torch.randn(1, 6, 8, generator=gen, dtype=torch.float64), torch.randn(1, 5, 4, generator=gen, dtype=torch.float64)
    perm = torch.randperm(5, generator=gen)
    assert torch.allclose(attn(x, ctx[:, perm]), attn(x, ctx), atol=1e-12)


def test_single_context_token_attention_is_a_linear_map_of_the_token(gen):
    # softmax over one key is identically 1: the output is to_out(to_v(c)) at every query position,
    # whatever the queries are (what the app says when it explains attention on one label token)
    attn = CrossAttention(16, 8, heads=4, head_dim=4).double()
    ctx = torch.randn(2, 1, 8, generator=gen, dtype=torch.float64)
    x1 = torch.randn(2, 10, 16, generator=gen, dtype=torch.float64)
    x2 = 100 * torch.randn(2, 10, 16, generator=gen, dtype=torch.float64)
    _, w = reference_attention(attn, x1, ctx)
    assert torch.equal(w, torch.ones_like(w))
    expected = attn.to_out(attn.to_v(ctx)).expand(2, 10, 16)
    assert torch.allclose(attn(x1, ctx), expected, atol=1e-12)
    assert torch.allclose(attn(x2, ctx), expected, atol=1e-12)


def test_transformer_block_composition(gen):
    blk = TransformerBlock(8, context_dim=4, heads=2).double()
    x = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    ctx = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)
    h = x + reference_attention(blk.self_attn, blk.norm1(x))[0]
    h = h + reference_attention(blk.cross_attn, blk.norm2(h), ctx)[0]
    h = h + blk.mlp(blk.norm3(h))
    assert torch.allclose(blk(x, ctx), h, atol=1e-12)
    # without a context the cross-attention is skipped
    h0 = x + reference_attention(blk.self_attn, blk.norm1(x))[0]
    h0 = h0 + blk.mlp(blk.norm3(h0))
    assert torch.allclose(blk(x, None), h0, atol=1e-12)
    # an unconditional block has no cross-attention at all and ignores a context
    plain = TransformerBlock(8, context_dim=None, heads=2)
    assert not hasattr(plain, "cross_attn")


def test_spatial_transformer_runs_the_block_on_pixels(gen):
    st = SpatialTransformer(8, context_dim=4, heads=2).double()
    x = torch.randn(2, 8, 3, 5, generator=gen, dtype=torch.float64)
    ctx = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)                          # (B, HW, C), row-major pixels
    expected = st.block(tokens, ctx).transpose(1, 2).reshape(2, 8, 3, 5)
    out = st(x, ctx)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-12)


def test_gaussian_fourier_projection(gen):
    emb = GaussianFourierProjection(16, scale=30.0, seed=3)
    w = emb.W.clone()
    out32 = emb(torch.rand(5, generator=gen))
    assert out32.shape == (5, 16) and out32.dtype == torch.float32
    emb64 = GaussianFourierProjection(16, scale=30.0, seed=3).double()
    t = torch.rand(5, generator=gen, dtype=torch.float64)
    arg = 2 * math.pi * t[:, None] * emb64.W                        # (B, D/2)
    assert torch.allclose(emb64(t), torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1), atol=1e-9)
    # W ~ N(0, scale^2), fixed: a buffer (saved with the weights), not a trained parameter
    assert "W" in emb.state_dict() and list(emb.parameters()) == []
    assert torch.equal(GaussianFourierProjection(16, 30.0, seed=3).W, w)
    assert not torch.equal(GaussianFourierProjection(16, 30.0, seed=4).W, w)
    big = GaussianFourierProjection(20000, scale=30.0).W
    assert float(big.std()) == pytest.approx(30.0, rel=0.03)
    with pytest.raises(ValueError, match="even"):
        GaussianFourierProjection(15)
