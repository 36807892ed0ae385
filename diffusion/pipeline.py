"""Pipeline: prior noise -> sampler -> images in [0, 1], in pixel space or through an autoencoder.

Pixel vs latent is handled here only: a latent pipeline runs the same VE SDE on the autoencoder's
latents (scaled to unit variance by `latent_scale`) and decodes each preview and the final sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .samplers import get_sampler

# From bench/samplers.py (bench/results/samplers.md, guidance.md): on pixel-cond, DPM-Solver++(2M) at 10 steps
# (10 NFE) matches 20 steps (FD 5.16 vs 5.17 on 1000 samples, accuracy 0.999) and is within 10% of EM-500 and of
# the best ODE result; w = 2 gives the lowest FD of w in {0, 1, 2, 3, 5} with ~100% conditional accuracy.
DEFAULT_SAMPLER = "dpmpp_2m"
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 2.0


@dataclass
class PipelineStep:
    i: int                  # sampler step index
    num_steps: int          # total steps requested (adaptive samplers: unknown, 0)
    t: float                # diffusion time of x
    sigma: float            # std(t), the noise level of x
    nfe: int                # network evaluations so far
    x: torch.Tensor         # (B, 28, 28) current sample as an image in [0, 1] (latent: decoded)
    x0: torch.Tensor        # (B, 28, 28) denoised estimate in [0, 1]
    elapsed: float          # seconds since the request started
    decode_time: float      # seconds spent in the autoencoder so far (0 for pixel pipelines)
    final: bool


class Pipeline:
    def __init__(self, score_model, autoencoder=None, name: str = ""):
        self.score_model = score_model.eval()
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.name = name
        if autoencoder is not None and tuple(score_model.sample_shape) != tuple(autoencoder.latent_shape):
            raise ValueError(f"score model works on {score_model.sample_shape}, autoencoder latents are "
                             f"{autoencoder.latent_shape}")

    @property
    def is_latent(self) -> bool:
        return self.autoencoder is not None

    @property
    def conditional(self) -> bool:
        return self.score_model.conditional

    @property
    def device(self) -> torch.device:
        return next(self.score_model.parameters()).device

    def _labels(self, labels, num_images):
        """labels: None, a sequence of ints, an int tensor (B,), or a float tensor (B, D) of embeddings."""
        if labels is None:
            if self.conditional:
                raise ValueError(f"{self.name or 'this model'} is class-conditional: give labels (digits 0-9)")
            if num_images is None or int(num_images) < 1:
                raise ValueError("num_images must be >= 1 for an unconditional model")
            return None, int(num_images)
        if not self.conditional:
            raise ValueError(f"{self.name or 'this model'} is unconditional: labels must be None")
        labels = torch.as_tensor(labels)
        if not labels.is_floating_point():
            labels = labels.long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.score_model.num_classes):
                raise ValueError(f"labels must be digits in [0, {self.score_model.num_classes - 1}]")
        return labels.to(self.device), labels.shape[0]

    def _to_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_latent:
            x = self.autoencoder.decode(x)
        return x.clamp(0, 1)[:, 0].float().cpu()

    @torch.inference_mode()
    def stream(self, labels=None, *, num_images=None, sampler=DEFAULT_SAMPLER, num_steps=DEFAULT_STEPS,
               guidance=DEFAULT_GUIDANCE, seed=0, preview_every=1, **extras):
        """Yield a PipelineStep every `preview_every` sampler steps (0: only the final one), and always the final one."""
        fn = get_sampler(sampler)
        start = time.perf_counter()
        labels, n = self._labels(labels, num_images)
        if isinstance(preview_every, bool) or int(preview_every) != preview_every or preview_every < 0:
            raise ValueError(f"preview_every must be an integer >= 0, got {preview_every!r}")
        generator = torch.Generator().manual_seed(int(seed))
        sde = self.score_model.sde
        x = sde.prior_sample((n, *self.score_model.sample_shape), generator, device=self.device,
                             dtype=next(self.score_model.parameters()).dtype)
        decode_time = 0.0
        guidance = guidance if self.conditional else 1.0
        for step in fn(self.score_model, x, labels, num_steps=num_steps, generator=generator, guidance=guidance, **extras):
            if not (step.final or (preview_every and step.i % preview_every == 0)):
                continue
            t_dec = time.perf_counter()
            x_img = self._to_image(step.x)
            x0_img = x_img if step.final else self._to_image(step.x0)
            decode_time += (time.perf_counter() - t_dec) if self.is_latent else 0.0
            sigma = float(sde.marginal_std(torch.tensor(step.t, dtype=torch.float64)))
            yield PipelineStep(step.i, int(num_steps or 0), step.t, sigma, step.nfe, x_img, x0_img,
                               time.perf_counter() - start, decode_time, step.final)

    def generate(self, labels=None, **kwargs) -> tuple[torch.Tensor, PipelineStep]:
        """Final images (B, 28, 28) in [0, 1] and the final step record (nfe, elapsed)."""
        last = None
        for last in self.stream(labels, preview_every=0, **kwargs):  # decode the final sample only
            pass
        return last.x, last
