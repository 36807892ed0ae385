"""Pipeline: prior noise -> sampler -> images in [0, 1], in pixel space or through an autoencoder.

Pixel vs latent is handled here only: a latent pipeline runs the same VE SDE on the autoencoder's
latents (scaled to unit variance by `latent_scale`) and decodes each preview and the final sample.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .editing import sdedit
from .samplers import sampler_spec


@dataclass(frozen=True)
class SamplingDefaults:
    sampler: str
    steps: int
    guidance: float      # classifier-free guidance weight w (ignored by unconditional models)


# Chosen by bench/samplers.py (bench/results/samplers.md, guidance.md) with one rule: per model, the cheapest point
# of the NFE grid {10, 20, 35, 50, 100, 250, 500} whose Frechet distance on 1000 samples is within 10% of (or below)
# Euler-Maruyama-500's, ties broken by the lower FD; guidance: the lowest FD of w in {0, 1, 2, 3, 5} at ~100%
# conditional accuracy. pixel-uncond is the exception that needs noise: its probability-flow ODE samples stay 1.5-1.7x
# EM-500's FD at every NFE (the ODE carries the score model's errors to the end), while the SDE form of the same
# solver, at the same 10 NFE, lands below EM-500.
# Since Quality v2 the score models' defaults are the two-evaluator rule's pick (diffusion.metrics.choose_setting:
# accuracy >= 99% in both evaluators, specks within 1 point of real digits' where reachable, then the lowest
# worse-of-two FD ratio) over bench/results/defaults.json (tests/bench/test_bench.py checks it). For both conditional models
# that is the SDE form of DPM-Solver++(2M): its noise removes the isolated specks the ODE carries to the end (pixel-cond:
# 0.35% against 2.3% with dpmpp_2m at w = 1.5, real digits 0.69%).
MODEL_DEFAULTS = {
    "pixel-cond": SamplingDefaults("dpmpp_2m_sde", 10, 1.375),
    "latent-cond": SamplingDefaults("dpmpp_2m_sde", 10, 1.5),
    # pixel-uncond: w is the autoguidance weight (its guide, pixel-uncond-guide: diffusion/autoguidance.py), chosen by
    # the two-evaluator rule (bench/results/defaults.md)
    "pixel-uncond": SamplingDefaults("dpmpp_2m_sde", 10, 1.75),
    # distilled students of pixel-cond (diffusion/distill.py, train/distill.py): the step count is the one each was
    # distilled for (the only one it runs); w by the same two-evaluator rule (diffusion.metrics.choose_setting) over
    # the students' sweep in bench/results/distillation.json (tests/train/test_distill.py checks it)
    "pixel-cond-distilled": SamplingDefaults("ddim", 4, 1.5),
    "pixel-cond-distilled-2step": SamplingDefaults("ddim", 2, 1.5),
    "pixel-cond-distilled-1step": SamplingDefaults("ddim", 1, 1.75),
}
# the project-wide defaults: those of the flagship model, also used for a pipeline of any other name
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = (MODEL_DEFAULTS["pixel-cond"].sampler,
                                                    MODEL_DEFAULTS["pixel-cond"].steps,
                                                    MODEL_DEFAULTS["pixel-cond"].guidance)


def defaults_for(model_name: str) -> SamplingDefaults:
    """The recommended sampler, step count and guidance for a model (the project-wide ones for unknown names)."""
    return MODEL_DEFAULTS.get(model_name, MODEL_DEFAULTS["pixel-cond"])


PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16 flags; Linux only)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: str, device: torch.device) -> str:
    """Precision "auto" -> "bf16" on a CPU with bf16 hardware, else "fp32". bench/inference.py measured bf16
    autocast on the default path at 1.24-1.52x on such a CPU (Xeon with AMX) with equal FD and accuracy on 1000
    samples; with oneDNN limited to AVX2 (no bf16 hardware) it emulates bf16 and the same path ran 0.07x
    (bench/results/inference_avx2.md). GPUs were not measured and stay fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cpu" and cpu_has_bf16() else "fp32"
    return precision


class _Autocast:
    """The score model's two calls (score and denoiser) under bf16 autocast, results in the sample's dtype.
    (A wrapper, not a context around the sampling loop: autocast state is per thread, and a streaming generator
    may be resumed on another thread.)"""

    def __init__(self, score_model):
        self.inner, self.sde = score_model, score_model.sde

    def __call__(self, x, t, labels=None, **kwargs):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner(x, t, labels, **kwargs).to(x.dtype)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner.denoise(x, sigma, labels, guidance).to(x.dtype)


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
    def __init__(self, score_model, autoencoder=None, name: str = "", precision: str = "auto"):
        self.score_model = score_model.eval()
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.name = name
        resolve_precision(precision, "cpu")              # fail early on a bad value
        self.precision = precision                       # "auto" | "fp32" | "bf16"; resolved per call (device)
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
    def guided(self) -> bool:
        """Whether `guidance` means anything: classifier-free guidance (labels) or autoguidance (an unconditional
        model paired with a weaker version of itself, diffusion.autoguidance)."""
        return self.conditional or bool(getattr(self.score_model, "autoguided", False))

    @property
    def device(self) -> torch.device:
        return next(self.score_model.parameters()).device

    @property
    def compute_precision(self) -> str:
        """What the score network runs in: "fp32" or "bf16" (autocast; the sampler's own arithmetic stays fp32).
        "auto" keeps a distilled student in fp32: its 1-4 steps have no later step to correct the rounding, and
        under bf16 autocast the 2-step student's digits came out blurred (FD ratio 14.9 vs 2.6 in fp32, 1000
        samples, bench/results/distillation.md); "bf16" asked for explicitly is honoured."""
        if self.precision == "auto" and getattr(self.score_model, "distilled", None):
            return "fp32"
        return resolve_precision(self.precision, self.device)

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
    def stream(self, labels=None, *, num_images=None, sampler=None, num_steps=None, guidance=None, seed=0,
               preview_every=1, **extras):
        """Yield a PipelineStep every `preview_every` sampler steps (0: only the final one), and always the final one.
        `sampler`, `num_steps`, `guidance` left as None take this model's defaults (`defaults_for(self.name)`)."""
        defaults = defaults_for(self.name)
        sampler = defaults.sampler if sampler is None else sampler
        spec = sampler_spec(sampler)
        if num_steps is None and not spec.adaptive:                 # adaptive samplers (rk45) take no step count
            num_steps = defaults.steps
        guidance = defaults.guidance if guidance is None else guidance
        start = time.perf_counter()
        labels, n = self._labels(labels, num_images)
        if isinstance(preview_every, bool) or int(preview_every) != preview_every or preview_every < 0:
            raise ValueError(f"preview_every must be an integer >= 0, got {preview_every!r}")
        generator = torch.Generator().manual_seed(int(seed))
        sde = self.score_model.sde
        x = sde.prior_sample((n, *self.score_model.sample_shape), generator, device=self.device,
                             dtype=next(self.score_model.parameters()).dtype)
        guidance = guidance if self.guided else 1.0
        steps = spec.fn(self._network(), x, labels, num_steps=num_steps, generator=generator, guidance=guidance,
                        **extras)
        yield from self._previews(steps, int(num_steps or 0), preview_every, start)

    @torch.inference_mode()
    def edit(self, images: torch.Tensor, labels=None, *, t0: float, num_steps: int, guidance=None, seed=0,
             mask=None, preview_every=1):
        """SDEdit (and inpainting with `mask`, 1 = keep; pixel models only) of `images` (B, 28, 28) or (B, 1, 28, 28)
        in [0, 1] from time t0 (diffusion.editing.sdedit), streamed like `stream`: a latent pipeline edits the
        autoencoder's latents of the images and decodes each preview. Cost: `diffusion.editing.SDEDIT`."""
        start = time.perf_counter()
        guidance = defaults_for(self.name).guidance if guidance is None else guidance
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.dim() == 3:
            images = images[:, None]                                         # (B, 1, 28, 28)
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 28, 28) or (B, 1, 28, 28), got {tuple(images.shape)}")
        labels, n = self._labels(labels, images.shape[0])
        if n != images.shape[0]:
            raise ValueError(f"labels: {n} labels for {images.shape[0]} images")
        if isinstance(preview_every, bool) or int(preview_every) != preview_every or preview_every < 0:
            raise ValueError(f"preview_every must be an integer >= 0, got {preview_every!r}")
        if mask is not None and self.is_latent:
            raise ValueError("mask: inpainting keeps pixels, so it needs a pixel-space model")
        x = images.to(self.device, next(self.score_model.parameters()).dtype)
        if self.is_latent:                                                   # SDEdit on the unit-variance latents
            x = self.autoencoder.encode(x)                                   # (B, 4, 10, 10)
        mask = None if mask is None else torch.as_tensor(mask).to(x.device)
        generator = torch.Generator().manual_seed(int(seed))
        steps = sdedit(self._network(), x, labels, num_steps=num_steps, t0=t0, generator=generator,
                       guidance=guidance if self.guided else 1.0, mask=mask)
        yield from self._previews(steps, int(num_steps), preview_every, start)

    def _network(self):
        """The score model as the samplers call it: under bf16 autocast when that is the compute precision."""
        return _Autocast(self.score_model) if self.compute_precision == "bf16" else self.score_model

    def _previews(self, steps, num_steps: int, preview_every: int, start: float):
        """A sampler's Steps -> PipelineSteps: every `preview_every`-th (0: none) and the final one, as images."""
        decode_time, sde = 0.0, self.score_model.sde
        for step in steps:
            if not (step.final or (preview_every and step.i % preview_every == 0)):
                continue
            t_dec = time.perf_counter()
            x_img = self._to_image(step.x)
            x0_img = x_img if step.final else self._to_image(step.x0)
            decode_time += (time.perf_counter() - t_dec) if self.is_latent else 0.0
            sigma = sde.marginal_std(float(step.t))
            yield PipelineStep(step.i, num_steps, step.t, sigma, step.nfe, x_img, x0_img,
                               time.perf_counter() - start, decode_time, step.final)

    def generate(self, labels=None, **kwargs) -> tuple[torch.Tensor, PipelineStep]:
        """Final images (B, 28, 28) in [0, 1] and the final step record (nfe, elapsed)."""
        last = None
        for last in self.stream(labels, preview_every=0, **kwargs):  # decode the final sample only
            pass
        return last.x, last
