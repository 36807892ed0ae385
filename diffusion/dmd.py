"""Distribution matching distillation of a few-step student (Yin et al. 2024, "One-step Diffusion with Distribution
Matching Distillation"; the two-network update of DMD2, Yin et al. 2024), in the VE SDE's denoiser terms.

Progressive distillation (diffusion/distill.py) copies the teacher's deterministic trajectories, and the teacher's
probability-flow ODE itself puts a lone speck in about one image in twenty-five (docs/quality-v3.md). DMD instead
asks the generator's *distribution* to match the teacher's, whose score the teacher knows at every noise level: the
stochastic sampler's distribution, not the ODE's paths.

Generator: a few-step student run by its own sampler (`student_generate`; one step: x = G(z, c, w) =
D_s(sigma_max z; sigma_max, c, w); more steps: ddim on its grid, ancestral with eta, back-propagated through every
call). Noised at sigma,
x_t = x + sigma eps, its distribution p_fake,sigma; the teacher's guided denoiser D_real(x_t; sigma, c, w) gives the
real score s_real = (D_real - x_t) / sigma^2 (Tweedie), and a second network D_fake, trained online with DSM on
the generator's own (detached) outputs, gives s_fake = (D_fake - x_t) / sigma^2. The KL gradient per sample is

    grad_x KL(p_fake,sigma || p_real,sigma) = -(s_real - s_fake) = (D_fake - D_real) / sigma^2

and DMD's weight sigma^2 / mean_pixels |x - D_real| makes it unit-scaled at every sigma:

    g = (D_fake - D_real) / mean|x - D_real|                                   (dmd_direction, (B, C, H, W))

applied through the surrogate 0.5 ||x - sg(x - g)||^2, whose gradient in x is g (mean-reduced: g / numel).
Where G makes a speck that real digits do not have, D_real at low sigma removes it and D_fake (which has learned the
generator's specks) keeps it, so g points from the speck towards clean paper.

An optional anchor lambda ||x - G_0(z)||^2 to the starting student's output (DMD's regression term, here onto the
progressive student instead of an ODE dataset) keeps the generator near the modes it already covers.

An optional GAN term (DMD2): a small head on the fake denoiser's bottleneck features (`BottleneckHead`; with
`MultiScaleHead`, a second one on its full-resolution decoder features; both read by `gan_logits` at a noised input) learns to tell noised real digits from noised generator samples (`gan_d_loss`,
with the fake's DSM loss), and the generator is pushed the other way (`gan_g_loss`). DMD's scores only see what the
teacher sees; the head sees real digits, so whatever the teacher itself gets wrong (a lone speck included) is
something the generator can still be told about.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .samplers import ancestral_split, ddim_step, sampling_sigmas


def dmd_direction(x: torch.Tensor, real_denoised: torch.Tensor, fake_denoised: torch.Tensor) -> torch.Tensor:
    """g = (D_fake - D_real) / mean_pixels |x - D_real| per sample (the DMD gradient of the KL in x; x the
    generator's clean output (B, C, H, W), the denoisers evaluated at its noised copy). Zero where fake == real."""
    scale = (x - real_denoised).abs().flatten(1).mean(dim=1).clamp_min(1e-8).view(-1, *[1] * (x.dim() - 1))
    return (fake_denoised - real_denoised) / scale


def dmd_loss(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The surrogate 0.5 mean (x - sg(x - g))^2: its gradient in x is g / x.numel(), the DMD step (direction g detached).
    Its value, 0.5 mean g^2, measures how far apart the two scores still are."""
    target = (x - direction).detach()
    return 0.5 * (x - target).square().mean()


def student_generate(student, z: torch.Tensor, labels, w, eta: float = 0.0, noises: torch.Tensor | None = None):
    """G(z, c, w): the student's own sampler, differentiable: `ddim` on its N-step grid from x = sigma_0 z, each
    step x' = D + (sigma_down / sigma)(x - D) + sigma_up n_i (diffusion.samplers.ancestral_split; eta = 0: plain
    DDIM), the last returning D. One step: D_s(sigma_max z; sigma_max, c, w). z (B, C, H, W) unit noise; noises
    (B, N - 1, C, H, W) the unit noise of the ancestral steps (needed when eta > 0 and N > 1); w (B,) or a float."""
    sigmas = sampling_sigmas(student, int(student.distilled["steps"])).tolist()
    if eta > 0 and len(sigmas) > 2 and noises is None:
        raise ValueError("an ancestral generator (eta > 0) of more than one step needs the noises of its steps")
    b, x = z.shape[0], z * sigmas[0]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas, sigmas[1:])):
        denoised = student.denoise(x, torch.full((b,), sigma, dtype=torch.float64, device=z.device), labels,
                                   guidance=w)
        if sigma_next == 0:
            return denoised
        if eta > 0:
            sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
            x = ddim_step(x, denoised, sigma, sigma_down) + sigma_up * noises[:, i]
        else:
            x = ddim_step(x, denoised, sigma, sigma_next)
    raise ValueError(f"the student's grid {sigmas} does not end at sigma = 0")


def check_student_pair(student, teacher) -> None:
    """A DMD run needs a few-step student with w as an input and the class-conditional teacher it imitates (same SDE,
    image size, channels and classes); ValueError naming what does not match."""
    d = getattr(student, "distilled", None) or {}
    if not d.get("steps") or not getattr(student, "guidance_embed", False):
        raise ValueError(f"the generator must be a few-step distilled student (config distilled.steps set, w an "
                         f"input); got distilled = {d or None}")
    if not teacher.conditional or getattr(teacher, "distilled", None):
        raise ValueError("the teacher must be a class-conditional score model, not a student")
    for what, a, b in (("sigma", student.sde.sigma, teacher.sde.sigma),
                       ("image size", student.image_size, teacher.image_size),
                       ("channels", student.in_channels, teacher.in_channels),
                       ("classes", student.num_classes, teacher.num_classes)):
        if a != b:
            raise ValueError(f"student and teacher differ in {what}: {a} against {b}")


class BottleneckHead(nn.Module):
    """A discriminator head on a U-Net's bottleneck features (B, C, h, w) -> (B,) logits (real > 0): conv 3x3, GroupNorm,
    SiLU, a 1x1 conv to one channel, averaged over the map. Cheap: the features come from the fake denoiser's own
    forward pass (DMD2's classifier on the fake's encoder)."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.norm(self.conv(features)))).mean(dim=(1, 2, 3))


class MultiScaleHead(nn.Module):
    """Two BottleneckHeads, logits summed: one on the bottleneck (B, C_last, H/4, W/4) and one on the decoder's
    full-resolution features (B, C_0, H, W), the input of the U-Net's output norm. At H/4 a speck of a few pixels is
    averaged away; at full resolution it is still there to be told from a real digit's clean background."""

    def __init__(self, bottleneck_channels: int, full_channels: int, groups: int = 8):
        super().__init__()
        self.bottleneck = BottleneckHead(bottleneck_channels, groups)
        self.full = BottleneckHead(full_channels, groups)

    def forward(self, bottleneck: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(bottleneck) + self.full(full)


GAN_FEATURES = ("bottleneck", "both")        # train.dmd --gan-features: BottleneckHead, MultiScaleHead


def make_gan_head(model, features: str = "bottleneck") -> nn.Module:
    """The GAN head for `model`'s U-Net (channels from its config): BottleneckHead, or MultiScaleHead for "both"."""
    if features not in GAN_FEATURES:
        raise ValueError(f"GAN features must be one of {GAN_FEATURES}, got {features!r}")
    channels = [int(c) for c in model._hub_mixin_config["channels"]]
    return BottleneckHead(channels[-1]) if features == "bottleneck" else MultiScaleHead(channels[-1], channels[0])


def gan_logits(model, head: nn.Module, noisy: torch.Tensor, sigma: torch.Tensor, labels, w):
    """head(features) for `model.denoise(noisy, sigma, labels, guidance=w)`: the output of the U-Net's middle block
    (B, C_last, H/4, W/4) and, for a MultiScaleHead, the input of its output norm (B, C_0, H, W), each caught by a hook
    that is removed again. (B,) logits."""
    caught = {"bottleneck": []}
    hooks = [model.net.mid_block2.register_forward_hook(lambda mod, args, out: caught["bottleneck"].append(out))]
    if isinstance(head, MultiScaleHead):
        caught["full"] = []
        hooks.append(model.net.norm_out.register_forward_pre_hook(lambda mod, args: caught["full"].append(args[0])))
    try:
        model.denoise(noisy, sigma, labels, guidance=w)
    finally:
        for hook in hooks:
            hook.remove()
    if any(len(seen) != 1 for seen in caught.values()):
        raise RuntimeError(f"expected one pass through the U-Net, saw {len(caught['bottleneck'])} (a guided pair halves "
                           "the batch: the head needs a w-embedded denoiser)")
    return head(*(seen[0].float() for seen in caught.values()))


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The head's non-saturating loss: softplus(-D(real)) + softplus(D(fake)), each a batch mean (2 ln 2 at D = 0)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss: softplus(-D(G(z))), a batch mean."""
    return F.softplus(-fake_logits).mean()
