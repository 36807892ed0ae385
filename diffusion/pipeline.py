"""Pipeline: prior noise -> sampler -> images in [0, 1], in pixel space or through an autoencoder.

Pixel vs latent is handled here only: a latent pipeline runs the same VE SDE on the autoencoder's
latents (scaled to unit variance by `latent_scale`) and decodes each preview and the final sample.
"""
from __future__ import annotations

import functools
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import BACKENDS, active, attach, install, resolve_backend
from .editing import sdedit
from .guidance import GuidanceSchedule, scheduled
from .registry import FLAGSHIP, SAMPLEABLE_NAMES, SamplingDefaults, defaults_for, evaluation_order
from .samplers import sampler_spec

__all__ = ["BACKENDS", "DEFAULT_GUIDANCE", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "MODEL_DEFAULTS", "PRECISIONS", "Pipeline",
           "PipelineStep", "SamplingDefaults", "cpu_has_bf16", "cpu_name", "defaults_for", "resolve_precision"]


class _DefaultsView(Mapping):
    """{model name: SamplingDefaults} for every registered model that samples (diffusion/registry.py), read at each
    use: the per-model defaults live in the registry's ModelSpecs, with the measurements that chose them."""

    def __getitem__(self, name) -> SamplingDefaults:
        if name not in SAMPLEABLE_NAMES:
            raise KeyError(name)
        return defaults_for(name)

    def __iter__(self):
        """The score models in build order (the flagship first), then the students."""
        ranked = evaluation_order(sampleable=True)
        return iter((*ranked, *(name for name in SAMPLEABLE_NAMES if name not in ranked)))

    def __len__(self) -> int:
        return len(SAMPLEABLE_NAMES)

    def __repr__(self) -> str:
        return repr(dict(self))


MODEL_DEFAULTS = _DefaultsView()
# the project-wide defaults: those of the flagship model (registry.FLAGSHIP, pixel-cond)
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = (defaults_for(FLAGSHIP).sampler, defaults_for(FLAGSHIP).steps,
                                                    defaults_for(FLAGSHIP).guidance)


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


def cpu_name() -> str:
    """The CPU model, and whether it has bf16 arithmetic (what decides the pipeline's "auto" precision); the machine
    every benchmark row records."""
    name = platform.processor() or "CPU"
    try:
        name = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({'bf16 in hardware' if cpu_has_bf16() else 'no bf16 arithmetic in hardware'})"


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

    def __getattr__(self, name):
        """Everything else from the score model: the samplers read `distilled` and `guidance_embed` (a student's
        own grid and guidance range, diffusion.samplers.sampling_sigmas / check_guidance)."""
        return getattr(self.inner, name)

    def __call__(self, x, t, labels=None, **kwargs):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner(x, t, labels, **kwargs).to(x.dtype)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner.denoise(x, sigma, labels, guidance).to(x.dtype)


class _Accelerated:
    """The score model's two calls inside diffusion.backends.active(): the installed runtime evaluates its U-Net(s)
    for these calls only (other users of the shared model stay eager). Per call, like _Autocast, for the same
    reason: a context var is per thread, and a streaming generator may be resumed on another thread."""

    def __init__(self, score_model):
        self.inner, self.sde = score_model, score_model.sde

    def __getattr__(self, name):
        return getattr(self.inner, name)      # as _Autocast: the samplers read the student's `distilled`

    def __call__(self, x, t, labels=None, **kwargs):
        with active():
            return self.inner(x, t, labels, **kwargs)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        with active():
            return self.inner.denoise(x, sigma, labels, guidance)


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
    def __init__(self, score_model, autoencoder=None, name: str = "", precision: str = "auto",
                 backend: str = "auto"):
        self.score_model = score_model.eval()
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.name = name
        resolve_precision(precision, "cpu")              # fail early on a bad value
        self.precision = precision                       # "auto" | "fp32" | "bf16"; resolved per call (device)
        resolve_backend(backend, "cpu")                  # fail early on a bad value
        self.backend = backend                           # one of BACKENDS (diffusion.backends); resolved per call
        if self.compute_backend != "eager":
            attach(score_model)                          # now, under any wrapper installed later (backends.attach)
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
    def defaults(self) -> SamplingDefaults:
        """The recommended settings: the registry's for a pipeline named after a model that samples; the project-wide
        ones (the flagship's) for a pipeline named otherwise (a training run's previews, a benchmark arm, a test)."""
        return defaults_for(self.name) if self.name in SAMPLEABLE_NAMES else defaults_for(FLAGSHIP)

    @property
    def device(self) -> torch.device:
        return next(self.score_model.parameters()).device

    @property
    def compute_precision(self) -> str:
        """What the score network runs in: "fp32" or "bf16" (autocast; the sampler's own arithmetic stays fp32).
        "auto": bf16 where the CPU has bf16 hardware, students included. (Students were kept in fp32 until the
        autocast wrapper was found hiding their `distilled` config from the samplers, so ddim ran them on the wrong
        grid: that, not bf16, blurred them. Fixed, torch's bf16 autocast kept their FD at 1000 samples: 4-step 4.05
        vs 4.06 fp32, 2-step 4.44 vs 4.44, 1-step 6.14 vs 6.10, and ran Live 1.34x faster; bench/results/backends.md.)
        The onnxruntime backend runs fp32 whatever was asked (its CPU provider has no bf16 convolutions)."""
        if self.compute_backend == "onnxruntime":
            return "fp32"
        return resolve_precision(self.precision, self.device)

    @property
    def compute_backend(self) -> str:
        """What evaluates the score network (diffusion.backends): "auto" resolves to diffusion.backends.AUTO_BACKEND
        (eager: see the measurements there) for a pixel-space model at precision "auto"; a precision asked for
        explicitly keeps "auto" on torch's path at that precision (fp32: the reference, bit for bit); latent models
        were not measured and stay eager; so do students of fewer than 4 steps, whose FD OpenVINO's bf16 raised by
        ~5% (bench/results/backends.md)."""
        steps = (getattr(self.score_model, "distilled", None) or {}).get("steps", 4)
        if self.backend == "auto" and (self.is_latent or self.precision != "auto" or steps < 4):
            return "eager"
        return resolve_backend(self.backend, self.device, bf16_hardware=cpu_has_bf16())

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
               preview_every=1, guidance_schedule: GuidanceSchedule | None = None, **extras):
        """Yield a PipelineStep every `preview_every` sampler steps (0: only the final one), and always the final one.
        `sampler`, `num_steps`, `guidance`, `guidance_schedule` left as None take this model's defaults
        (`self.defaults`); the schedule (diffusion.guidance) says where along sigma w applies, and belongs to the
        model's guidance recipe, so it applies at any w and sampler unless given (`GuidanceSchedule()`: everywhere).
        Other keywords go to the sampler (e.g. `eta`); the model's default sampler gets the defaults' `options` unless
        they are given."""
        sampler = self.defaults.sampler if sampler is None else sampler
        if sampler == self.defaults.sampler:                # the model's own sampler: its parameters too (e.g. eta)
            extras = {**dict(self.defaults.options), **extras}
        spec = sampler_spec(sampler)
        if num_steps is None and not spec.adaptive:                 # adaptive samplers (rk45) take no step count
            num_steps = self.defaults.steps
        guidance = self.defaults.guidance if guidance is None else guidance
        start = time.perf_counter()
        labels, n = self._labels(labels, num_images)
        if isinstance(preview_every, bool) or int(preview_every) != preview_every or preview_every < 0:
            raise ValueError(f"preview_every must be an integer >= 0, got {preview_every!r}")
        generator = torch.Generator().manual_seed(int(seed))
        sde = self.score_model.sde
        x = sde.prior_sample((n, *self.score_model.sample_shape), generator, device=self.device,
                             dtype=next(self.score_model.parameters()).dtype)
        guidance = guidance if self.guided else 1.0
        schedule = self.defaults.schedule if guidance_schedule is None else guidance_schedule
        network = scheduled(self._network(), schedule)
        steps = spec.fn(network, x, labels, num_steps=num_steps, generator=generator, guidance=guidance, **extras)
        yield from self._previews(steps, int(num_steps or 0), preview_every, start)

    @torch.inference_mode()
    def edit(self, images: torch.Tensor, labels=None, *, t0: float, num_steps: int, guidance=None, seed=0,
             mask=None, preview_every=1):
        """SDEdit (and inpainting with `mask`, 1 = keep; pixel models only) of `images` (B, 28, 28) or (B, 1, 28, 28)
        in [0, 1] from time t0 (diffusion.editing.sdedit), streamed like `stream`: a latent pipeline edits the
        autoencoder's latents of the images and decodes each preview. Cost: `diffusion.editing.SDEDIT`."""
        start = time.perf_counter()
        guidance = self.defaults.guidance if guidance is None else guidance
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
        steps = sdedit(scheduled(self._network(), self.defaults.schedule), x, labels, num_steps=num_steps, t0=t0,
                       generator=generator, guidance=guidance if self.guided else 1.0, mask=mask)
        yield from self._previews(steps, int(num_steps), preview_every, start)

    def _network(self):
        """The score model as the samplers call it: its U-Net(s) evaluated by the compute backend (installed in
        place, diffusion.backends: `score_model.net` stays the same module, hooks included), under bf16 autocast
        when that is the compute precision of a PyTorch backend (OpenVINO takes the precision as its own hint)."""
        backend, precision = self.compute_backend, self.compute_precision
        install(self.score_model, backend, precision)
        torch_backend = backend in ("eager", "channels_last", "compile")
        model = _Autocast(self.score_model) if precision == "bf16" and torch_backend else self.score_model
        return model if backend == "eager" else _Accelerated(model)

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
