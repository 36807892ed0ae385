"""diffusion/anatomy.py on tiny random models (tests/factories.py): hooks capture every level, D = c_skip x + c_out F,
the label pathway is a linear map of the embedding (checked against the cross-attention's real output), the loss
per level is the DSM loss, and the training noise-level densities are densities of what dsm_noise draws."""
import math

import pytest
import torch
from factories import tiny_model, tiny_score

from diffusion.anatomy import (label_contributions, look_inside, loss_by_level, strongest_channels, time_features,
                               training_sigma_density)
from diffusion.losses import dsm_loss, dsm_noise


def test_time_features_are_the_networks_fourier_features_of_c_noise():
    for model in (tiny_score(0), tiny_score(0, precond="edm")):
        t = torch.linspace(1e-3, 1, 7, dtype=torch.float64)
        feats = time_features(model, t)
        c_noise = model.coefficients(model.sde.marginal_std(t))[3].float()
        w = model.net.time_embed[0].W
        expected = torch.cat([torch.sin(2 * math.pi * c_noise[:, None] * w), torch.cos(2 * math.pi * c_noise[:, None] * w)], 1)
        assert feats.shape == (7, model.net.time_embed[1].in_features)
        assert torch.allclose(feats, expected, atol=1e-3)        # float32 sin of args up to ~200 rad


def test_look_inside_captures_every_level_and_the_denoiser():
    model = tiny_model("pixel-cond")
    x = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(0))
    inside = look_inside(model, x, 0.7, label=3)
    names = [n for n, _ in inside.features]
    assert names == ["encoder level 0", "encoder level 1", "middle", "decoder level 1", "decoder level 0"]
    assert [tuple(f.shape) for _, f in inside.features] == [(8, 28, 28), (16, 14, 14), (16, 14, 14), (16, 14, 14),
                                                            (8, 28, 28)]
    with torch.no_grad():
        d = model.denoise(x[None], 0.7, torch.tensor([3]))[0]
    assert torch.allclose(inside.denoised, d, atol=1e-5)
    assert torch.allclose(inside.denoised, inside.c_skip * x + inside.c_out * inside.raw, atol=1e-5)
    assert strongest_channels(inside.features[0][1], 3).shape == (3,)
    with pytest.raises(ValueError, match="label must be None"):
        look_inside(tiny_model("pixel-uncond"), x, 0.7, label=1)
    with pytest.raises(ValueError, match=r"x_t must be one \(C, H, W\) input"):
        look_inside(model, x[None], 0.7)


def test_label_pathway_is_a_linear_map_of_the_embedding():
    """The cross-attention's real output (hooked) is the same vector at every pixel, equal to W_out W_v e_c + b_out."""
    model = tiny_model("pixel-cond")
    contributions = dict(label_contributions(model))
    assert list(contributions) == ["encoder level 1", "middle", "decoder level 1"]
    seen = []
    cross = model.net.mid_attn.block.cross_attn
    hook = cross.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model.denoise(torch.randn(2, 1, 28, 28), 1.3, torch.tensor([4, 7]))
    hook.remove()
    out = seen[0]                                                          # (B, HW, C)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)        # the same at every pixel
    assert torch.allclose(out[:, 0], contributions["middle"][[4, 7]], atol=1e-5)
    assert contributions["middle"].shape == (11, 16)                        # ten digits and the null label


def test_loss_by_level_is_the_dsm_loss():
    model = tiny_model("pixel-cond")
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2, 2, 2, 5, 5, 5])
    sigma = 0.8
    got = loss_by_level(model, x, labels, torch.tensor([sigma]), generator=torch.Generator().manual_seed(2))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    t = model.sde.t_from_std(torch.tensor([sigma] * 6, dtype=torch.float64)).float()
    for digit, rows in ((2, slice(0, 3)), (5, slice(3, 6))):
        noise = {"t": t[rows], "z": z[rows], "drop": torch.zeros(3, dtype=torch.bool)}
        with torch.no_grad():
            ref = dsm_loss(model, x[rows], labels[rows], noise)
        assert float(got[digit, 0]) == pytest.approx(float(ref), rel=1e-3)
    assert torch.isnan(got[0, 0]) and got.shape == (10, 1)


@pytest.mark.parametrize("kind", ["uniform", "log_sigma", "edm"])
def test_training_density_matches_what_training_draws(kind):
    sde = tiny_model("pixel-cond").sde
    draws = dsm_noise(torch.zeros(60_000, 1), torch.Generator().manual_seed(0), sde.eps, t_sampling=kind, sde=sde)["t"]
    log_sigma = torch.log(sde.marginal_std(draws.double()))
    edges = torch.linspace(math.log(sde.std_min), math.log(sde.std_max), 13, dtype=torch.float64)
    hist = torch.histogram(log_sigma, edges).hist / len(log_sigma) / (edges[1] - edges[0])
    centres = (edges[1:] + edges[:-1]) / 2
    dens = training_sigma_density(centres, sde, kind)
    assert torch.allclose(hist[1:-1], dens[1:-1], rtol=0.1, atol=0.01), (hist, dens)   # ends: clamping / bin curvature
    assert training_sigma_density(torch.tensor([math.log(sde.std_max) + 1]), sde, kind).item() == 0
    with pytest.raises(ValueError, match="t_sampling must be uniform, log_sigma or edm"):
        training_sigma_density(centres, sde, "cosine")
