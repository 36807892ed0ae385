"""Autoguidance: guide a model with a worse version of itself (Karras et al. 2024, "Guiding a Diffusion Model
with a Bad Version of Itself").

Classifier-free guidance needs labels; an unconditional model has none. Autoguidance extrapolates away from a
weaker model of the same data instead:

    D_w(x; sigma) = D_bad(x; sigma) + w (D_good(x; sigma) - D_bad(x; sigma))

and, D being affine in the score (D = x + sigma^2 s), the same combination of scores. w = 1 is the good model
alone. The weaker model here is an early checkpoint of the good model's own training run: its errors are the
good model's, only larger, so their difference points from "blurry, undecided" towards "digit", the same
direction CFG's cond - uncond difference points for a label. Cost: two network calls per evaluation, as CFG.
"""
from __future__ import annotations

import torch
from torch import nn


class AutoGuided(nn.Module):
    """The sampler-facing interface of a ScoreModel (forward = score, denoise, sde, sample_shape, ...) for an
    unconditional `good` model guided by `bad`; `guidance` is the autoguidance weight w."""

    def __init__(self, good: nn.Module, bad: nn.Module, bad_step: int | None = None):
        super().__init__()
        if good.conditional or bad.conditional:
            raise ValueError("autoguidance here guides unconditional models; use classifier-free guidance with labels")
        if tuple(good.sample_shape) != tuple(bad.sample_shape):
            raise ValueError(f"the guide works on {tuple(bad.sample_shape)}, the model on {tuple(good.sample_shape)}")
        if (good.sde.sigma, good.sde.eps) != (bad.sde.sigma, bad.sde.eps):
            raise ValueError(f"the guide's SDE (sigma {bad.sde.sigma}, eps {bad.sde.eps}) differs from the model's "
                             f"(sigma {good.sde.sigma}, eps {good.sde.eps})")
        self.good, self.bad, self.bad_step = good, bad, bad_step
        self.sde = good.sde

    # what samplers, the pipeline and the app read off a score model
    conditional = False
    autoguided = True
    num_classes = None
    guidance_embed = False
    distilled = None

    @property
    def sample_shape(self):
        return self.good.sample_shape

    @property
    def precond(self):
        return self.good.precond

    @property
    def in_channels(self):
        return self.good.in_channels

    @property
    def image_size(self):
        return self.good.image_size

    @staticmethod
    def _mix(fn_good, fn_bad, guidance):
        if torch.is_tensor(guidance) and guidance.ndim > 0:
            guidance = guidance.view(-1, 1, 1, 1)                  # (B,) -> (B, 1, 1, 1)
        elif float(guidance) == 1.0:
            return fn_good()                                      # w = 1: the good model alone, one call
        bad = fn_bad()
        return bad + guidance * (fn_good() - bad)

    def _no_labels(self, labels):
        if labels is not None:
            raise ValueError("this model is unconditional: labels must be None")

    def forward(self, x: torch.Tensor, t, labels=None, guidance=1.0) -> torch.Tensor:
        """Guided score s_bad + w (s_good - s_bad): x (B, C, H, W), t (B,) or scalar."""
        self._no_labels(labels)
        guidance = guidance.to(x.device, x.dtype) if torch.is_tensor(guidance) else guidance
        return self._mix(lambda: self.good(x, t), lambda: self.bad(x, t), guidance)

    def denoise(self, x: torch.Tensor, sigma, labels=None, guidance=1.0) -> torch.Tensor:
        """Guided denoiser D_bad + w (D_good - D_bad) at noise std sigma."""
        self._no_labels(labels)
        guidance = guidance.to(x.device, x.dtype) if torch.is_tensor(guidance) else guidance
        return self._mix(lambda: self.good.denoise(x, sigma), lambda: self.bad.denoise(x, sigma), guidance)
