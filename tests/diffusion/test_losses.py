"""Denoising score matching against its closed form for Gaussian data, and the autoencoder loss.

For data N(mu, s^2 I) in d dimensions and the exact score of p_t, the per-pixel residual
std(t) s(x_t, t) + z = (s^2 z - std(t) (x - mu)) / (s^2 + std(t)^2) is N(0, s^2 / (s^2 + std(t)^2)), so
    E[L | t] = d s^2 / (s^2 + std(t)^2)                       (the DSM loss floor)
and a score off by a constant c costs E[L_c - L | t] = d c^2 std(t)^2 more (the cross term has mean 0).
"""
import math

import pytest
import torch
from scipy.integrate import quad

from diffusion.autoencoder import AutoEncoder
from diffusion.losses import autoencoder_loss, dsm_loss, dsm_noise
from diffusion.sde import VESDE
from factories import tiny_score

MU, S = 0.7, 0.5
D = 16  # pixels of a (1, 4, 4) image


class GaussianScore:
    """Exact score of N(mu, s^2 I) data under the VE SDE, plus a constant offset; has .sde and .null_label."""

    null_label = 10

    def __init__(self, offset=0.0):
        self.sde, self.offset, self.labels = VESDE(25.0), offset, []

    def __call__(self, x, t, labels=None, guidance=1.0):
        self.labels.append(labels)
        var = S**2 + self.sde.marginal_std(t.double()).float() ** 2
        return -(x - MU) / var[:, None, None, None] + self.offset


def data(n, seed=0):
    return MU + S * torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def fixed_t_noise(x, seed=1):
    t = torch.linspace(1e-3, 1.0, x.shape[0])
    return {"t": t, "z": torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)),
            "drop": torch.zeros(x.shape[0], dtype=torch.bool)}


def floor(t):
    std2 = VESDE(25.0).marginal_std(torch.as_tensor(t, dtype=torch.float64)) ** 2
    return D * S**2 / (S**2 + std2)


def test_exact_score_attains_the_dsm_floor_at_fixed_t():
    x = data(8000)
    noise = fixed_t_noise(x)
    loss = float(dsm_loss(GaussianScore(), x, noise=noise))
    # relative standard error ~sqrt(2 / (B d)) ~ 0.3%
    assert loss == pytest.approx(float(floor(noise["t"]).mean()), rel=0.02)


def test_exact_score_attains_the_dsm_floor_over_t():
    sde = VESDE(25.0)
    expected = quad(lambda t: float(floor(t)), sde.eps, 1.0)[0] / (1.0 - sde.eps)
    x = data(20000)
    loss = float(dsm_loss(GaussianScore(), x, generator=torch.Generator().manual_seed(3)))
    # t ~ U(eps, 1) adds variance: standard error 0.7% of the mean (measured over 10 seeds); 4% is ~6 SE
    assert loss == pytest.approx(expected, rel=0.04)


def test_an_offset_score_costs_d_c2_std2_more():
    x = data(8000)
    noise = fixed_t_noise(x)
    c = 0.1
    exact = float(dsm_loss(GaussianScore(), x, noise=noise))
    off = float(dsm_loss(GaussianScore(offset=c), x, noise=noise))
    std2 = VESDE(25.0).marginal_std(noise["t"].double()) ** 2
    assert off > exact
    assert off - exact == pytest.approx(float(D * c**2 * std2.mean()), rel=0.02)


def test_dsm_loss_by_hand():
    sde = VESDE(25.0)
    x = torch.tensor([[[[0.1, 0.9], [0.5, 0.0]]], [[[1.0, 0.2], [0.3, 0.4]]]])
    labels = torch.tensor([3, 7])
    noise = {"t": torch.tensor([0.25, 0.8]), "z": torch.tensor([[[[1.0, -1.0], [0.5, 2.0]]], [[[0.0, 0.3], [-0.7, 1.1]]]]),
             "drop": torch.tensor([False, True])}

    class Linear:
        null_label = 10

        def __init__(self):
            self.sde, self.seen = sde, []

        def __call__(self, xt, t, labels=None):
            self.seen.append((xt.clone(), t.clone(), labels.clone()))
            return -0.3 * xt + 0.01 * labels.float()[:, None, None, None]

    model = Linear()
    loss = float(dsm_loss(model, x, labels, noise=noise))
    total = 0.0
    for i, lab in enumerate([3, 10]):          # the second label is dropped to the null class
        t = float(noise["t"][i])
        std = math.sqrt(math.expm1(2 * t * math.log(25.0)) / (2 * math.log(25.0)))
        for xv, zv in zip(x[i].flatten().tolist(), noise["z"][i].flatten().tolist()):
            xt = xv + std * zv
            total += (std * (-0.3 * xt + 0.01 * lab) + zv) ** 2
    assert loss == pytest.approx(total / 2, rel=1e-5)
    (xt_seen, t_seen, labels_seen), = model.seen
    assert labels_seen.tolist() == [3, 10] and labels.tolist() == [3, 7]
    assert torch.equal(t_seen, noise["t"])


def test_dsm_noise_statistics_and_label_dropout():
    x = torch.zeros(20000, 1, 2, 2)
    noise = dsm_noise(x, torch.Generator().manual_seed(0), eps=1e-3, label_dropout=0.3)
    assert noise["t"].shape == (20000,) and noise["z"].shape == x.shape and noise["drop"].dtype == torch.bool
    assert float(noise["t"].min()) >= 1e-3 and float(noise["t"].max()) <= 1.0
    assert float(noise["t"].mean()) == pytest.approx(0.5005, abs=0.01)           # U(eps, 1); SE 0.002
    assert float(noise["z"].std()) == pytest.approx(1.0, abs=0.02)
    assert float(noise["drop"].float().mean()) == pytest.approx(0.3, abs=0.015)  # SE 0.0032
    assert not dsm_noise(x, torch.Generator().manual_seed(0), label_dropout=0.0)["drop"].any()
    assert dsm_noise(x, torch.Generator().manual_seed(0), label_dropout=1.0)["drop"].all()
    again = dsm_noise(x, torch.Generator().manual_seed(0), eps=1e-3, label_dropout=0.3)
    assert all(torch.equal(noise[k], again[k]) for k in noise)


def test_label_dropout_reaches_the_model_at_the_requested_rate():
    model = GaussianScore()
    x = data(4000)
    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    dsm_loss(model, x, labels, generator=torch.Generator().manual_seed(1), label_dropout=0.25)
    seen = model.labels[-1]
    dropped = seen == 10
    assert float(dropped.float().mean()) == pytest.approx(0.25, abs=0.03)       # SE 0.007
    assert torch.equal(seen[~dropped], labels[~dropped])


def test_drawn_noise_equals_explicit_noise():
    x = data(64)
    a = dsm_loss(GaussianScore(), x, generator=torch.Generator().manual_seed(5))
    noise = dsm_noise(x, torch.Generator().manual_seed(5), VESDE(25.0).eps)
    assert torch.equal(a, dsm_loss(GaussianScore(), x, noise=noise))


def test_dsm_loss_trains_a_real_score_model():
    model = tiny_score(num_classes=10).train()
    x, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = dsm_loss(model, x, labels, generator=torch.Generator().manual_seed(0), label_dropout=0.5)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.net.class_embed.weight.grad is not None and model.net.conv_in.weight.grad.abs().sum() > 0


def test_autoencoder_loss_feeds_lpips_three_channels_normalized():
    torch.manual_seed(0)
    ae = AutoEncoder(hidden=8)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    calls = []

    def perceptual(a, b, normalize=False):
        calls.append((a.detach(), b.detach(), normalize))
        return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)     # (B, 1, 1, 1) like lpips.LPIPS

    loss, x_hat, parts = autoencoder_loss(ae, x, perceptual, perceptual_weight=0.5)
    (a, b, normalize), = calls
    assert normalize is True
    assert a.shape == b.shape == (3, 3, 28, 28)
    assert torch.equal(b, x.repeat(1, 3, 1, 1)) and torch.equal(a, x_hat.detach().repeat(1, 3, 1, 1))
    assert float(b.min()) >= 0 and float(b.max()) <= 1                 # [0, 1] images; normalize=True maps to [-1, 1]
    mse = float(((x_hat.detach() - x) ** 2).mean())
    assert float(parts["mse"]) == pytest.approx(mse, rel=1e-6)
    assert float(parts["lpips"]) == pytest.approx(mse, rel=1e-6)       # the stand-in is the MSE of the repeats
    assert float(loss.detach()) == pytest.approx(1.5 * mse, rel=1e-6)
    loss.backward()
    assert ae.decoder[0].weight.grad is not None


def test_autoencoder_loss_without_perceptual_is_mse():
    torch.manual_seed(0)
    ae = AutoEncoder(hidden=8)
    x = torch.rand(2, 1, 28, 28)
    loss, x_hat, parts = autoencoder_loss(ae, x, None)
    assert set(parts) == {"mse"}
    assert torch.equal(loss, torch.nn.functional.mse_loss(x_hat, x))


def test_log_sigma_t_sampling_is_log_uniform_in_std():
    """t_sampling='log_sigma' draws log std(t) uniformly between log std(eps) and log std(1)."""
    sde = VESDE(25.0)
    x = torch.zeros(200_000, 1, 1, 1)
    t = dsm_noise(x, torch.Generator().manual_seed(0), sde.eps, 0.0, "log_sigma", sde)["t"].double()
    assert t.min() >= sde.eps - 1e-9 and t.max() <= 1.0
    log_std = sde.marginal_std(t).log()
    lo, hi = math.log(sde.std_min), math.log(sde.std_max)
    # uniform on [lo, hi]: mean (lo + hi) / 2, std (hi - lo) / sqrt(12), a quarter of the mass below lo + (hi - lo) / 4
    assert abs(float(log_std.mean()) - (lo + hi) / 2) < 0.02
    assert abs(float(log_std.std()) - (hi - lo) / math.sqrt(12)) < 0.02
    assert abs(float((log_std < lo + (hi - lo) / 4).double().mean()) - 0.25) < 0.01
    # far more low-noise training than uniform t: P(std < 0.22) ~ 0.34 vs ~ 0.05
    t_uniform = dsm_noise(x, torch.Generator().manual_seed(0), sde.eps)["t"].double()
    assert float((sde.marginal_std(t_uniform) < 0.22).double().mean()) < 0.07
    assert float((log_std.exp() < 0.22).double().mean()) > 0.3
    with pytest.raises(ValueError, match="t_sampling"):
        dsm_noise(x, None, sde.eps, 0.0, "bogus", sde)


class EDMGaussianScore(GaussianScore):
    """The exact Gaussian score with the EDM loss weight lambda = 1 / c_out^2 (sigma_data = s)."""

    def loss_weight(self, sigma):
        c_out2 = sigma**2 * S**2 / (sigma**2 + S**2)
        return 1 / c_out2


def test_edm_weighting_scales_the_floor_by_lambda_sigma2():
    """lambda sigma^2 ||sigma s + z||^2 with lambda sigma^2 = (sigma^2 + s^2) / s^2: the floor d s^2 / (s^2 + sigma^2)
    becomes exactly d at every noise level (unit-variance network target, EDM's design)."""
    x = data(8000)
    noise = fixed_t_noise(x)
    loss = float(dsm_loss(EDMGaussianScore(), x, noise=noise))
    assert loss == pytest.approx(D, rel=0.02)


def test_edm_noise_levels_are_log_normal_and_clamped():
    sde = VESDE(25.0)
    x = torch.zeros(20000, 1, 2, 2)
    t = dsm_noise(x, torch.Generator().manual_seed(0), sde.eps, t_sampling="edm", sde=sde, p_mean=-1.2, p_std=1.2)["t"]
    log_std = sde.marginal_std(t.double()).log()
    inside = (log_std > math.log(sde.std_min) + 1e-6) & (log_std < math.log(sde.std_max) - 1e-6)
    assert float(log_std[inside].median()) == pytest.approx(-1.2, abs=0.05)
    assert float(t.min()) >= sde.eps - 1e-7 and float(t.max()) <= 1.0
    # clamped mass: P(ln std < ln std(eps)) for N(-1.2, 1.2^2)
    expected_low = 0.5 * (1 + math.erf((math.log(sde.std_min) + 1.2) / (1.2 * math.sqrt(2))))
    assert float((~inside & (log_std < 0)).float().mean()) == pytest.approx(expected_low, abs=0.005)
    with pytest.raises(ValueError, match="needs the sde"):
        dsm_noise(x, None, t_sampling="edm")
    with pytest.raises(ValueError, match="uniform, log_sigma, edm"):
        dsm_noise(x, None, t_sampling="karras")


def test_teacher_term_is_the_score_gap_exactly():
    """Against an exact teacher, a student off by c costs exactly d c^2 std^2 per image in the teacher's term (no
    noise in the target), the plain DSM loss at teacher_weight 0, and the straight mix in between."""
    x = data(64)
    noise = fixed_t_noise(x)
    c = 0.1
    std2 = VESDE(25.0).marginal_std(noise["t"].double()) ** 2
    kd = float(dsm_loss(GaussianScore(offset=c), x, noise=noise, teacher=GaussianScore()))
    assert kd == pytest.approx(float(D * c**2 * std2.mean()), rel=1e-5)
    assert float(dsm_loss(GaussianScore(), x, noise=noise, teacher=GaussianScore())) == pytest.approx(0.0, abs=1e-6)
    plain = float(dsm_loss(GaussianScore(offset=c), x, noise=noise))
    assert float(dsm_loss(GaussianScore(offset=c), x, noise=noise, teacher=GaussianScore(),
                          teacher_weight=0.0)) == pytest.approx(plain, rel=1e-6)
    mixed = float(dsm_loss(GaussianScore(offset=c), x, noise=noise, teacher=GaussianScore(), teacher_weight=0.25))
    assert mixed == pytest.approx(0.75 * plain + 0.25 * kd, rel=1e-5)
    with pytest.raises(ValueError, match=r"teacher_weight must be in \[0, 1\]"):
        dsm_loss(GaussianScore(), x, noise=noise, teacher=GaussianScore(), teacher_weight=1.5)


def test_teacher_sees_the_students_noisy_input_and_dropped_labels():
    x = data(4)
    labels = torch.tensor([1, 2, 3, 4])
    noise = fixed_t_noise(x) | {"drop": torch.tensor([False, True, False, True])}
    student, teacher = GaussianScore(), GaussianScore()
    dsm_loss(student, x, labels, noise=noise, teacher=teacher)
    assert teacher.labels[0].tolist() == student.labels[0].tolist() == [1, 10, 3, 10]


def test_an_exact_teachers_target_carries_no_noise():
    """The point of the teacher's target: the same offset student, two draws of the noise; DSM's loss varies with
    z, the teacher's term does not."""
    x = data(256)
    losses = {"dsm": [], "teacher": []}
    for seed in (1, 2):
        noise = fixed_t_noise(x, seed=seed)
        losses["dsm"].append(float(dsm_loss(GaussianScore(offset=0.1), x, noise=noise)))
        losses["teacher"].append(float(dsm_loss(GaussianScore(offset=0.1), x, noise=noise, teacher=GaussianScore())))
    assert losses["teacher"][0] == pytest.approx(losses["teacher"][1], rel=1e-6)
    assert abs(losses["dsm"][0] - losses["dsm"][1]) > 1e-3
