"""The conditional diffusion model as a zero-shot classifier (Li et al. 2023, "Your diffusion model is secretly a
zero-shot classifier"; Clark & Jaini 2023, "Text-to-image diffusion models are zero-shot classifiers").

Bayes' rule with a uniform prior turns the class-conditional likelihoods into a classifier, p(c | x) ∝ p(x | c),
and the denoiser gives each log p(x | c) up to a constant that does not depend on c. For the VE SDE
x_sigma = x + sigma z, the pointwise identity of Kong et al. (2023, "Information-theoretic diffusion"; the
I-MMSE relation) reads, with the exact denoiser D(y; sigma, c) = E[x | x_sigma = y, c],

    log p(x | c) = const - int_0^inf E_z || D(x + sigma z; sigma, c) - x ||^2 / sigma^2  d ln sigma,

and for a learned denoiser the integral is the negative ELBO (Song et al. 2021, "Maximum likelihood training of
score-based diffusion models": lambda = g^2 weighting; dsigma^2 / sigma^4 = 2 d ln sigma / sigma^2). We estimate
it on K noise levels spaced evenly in ln sigma over [sigma_min, sigma_max] (the midpoint rule, weight
Delta = ln(sigma_max / sigma_min) / K each):

    L(c) = sum_k Delta / sigma_k^2 * mean_j || D(x + sigma_k z_jk; sigma_k, c) - x ||^2,
    p(c | x) = softmax_c(-L(c)).

The noise z_jk is the SAME for every label c (Li et al., sec. 3.2: the labels are compared on paired samples,
so the noise's own variance cancels out of the differences). Leaving out sigma < sigma_min and sigma > sigma_max
drops terms that are nearly label-independent (D ~ x below, D ~ a class mean far above).

Stop early (Li et al.'s adaptive evaluation): every label is scored on a spread subset of the levels first; only
the `keep` labels with the lowest partial L go on to the other levels; the dropped ones get p = 0.

Latent models: x is the autoencoder's scaled latent, encode(image) / latent_scale, as diffusion/pipeline.py
samples it, so the figures are likelihoods of latents, not of pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StopEarly:
    """Score every label on `first_levels` of the K levels, then only the `keep` best labels on the rest."""
    first_levels: int = 4
    keep: int = 3

    def __post_init__(self):
        if isinstance(self.first_levels, bool) or not isinstance(self.first_levels, int) or self.first_levels < 1:
            raise ValueError(f"first_levels must be an integer >= 1, got {self.first_levels!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {self.keep!r}")


@dataclass
class ZeroShotResult:
    labels: tuple[int, ...]      # the candidate labels, in the order of the L axis below
    sigmas: torch.Tensor         # (K,) noise levels, float64, ascending
    weights: torch.Tensor        # (K,) the quadrature weight on each level's error: Delta / sigma_k^2
    errors: torch.Tensor         # (B, L, K) mean over noise draws of ||D - x||^2; nan where a label was not scored
    neg_elbo: torch.Tensor       # (B, L) L(c) = sum_k weights_k errors_k; inf for a label dropped early
    probs: torch.Tensor          # (B, L) softmax(-L): p(c | x) under a uniform prior; 0 for a dropped label
    kept: torch.Tensor           # (B, L) bool: scored on every level
    evaluations: int             # images through the network, all labels and levels together

    @property
    def predicted(self) -> torch.Tensor:
        """(B,) the most probable label."""
        return torch.as_tensor(self.labels)[self.probs.argmax(dim=1)]

    @property
    def ranking(self) -> torch.Tensor:
        """(B, L) labels from most to least probable; dropped labels last, by their partial score."""
        partial = torch.nan_to_num(self.errors, nan=0.0) @ self.weights      # (B, L), the levels each was scored on
        key = torch.where(self.kept, self.neg_elbo, partial + 1e300)
        return torch.as_tensor(self.labels)[key.argsort(dim=1)]


def noise_levels(sigma_min: float, sigma_max: float, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (K,), weights (K,)): midpoints of K equal bins of ln sigma over [sigma_min, sigma_max], and the ELBO's
    quadrature weight on each, Delta / sigma_k^2 with Delta = ln(sigma_max / sigma_min) / K (float64)."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"num_levels must be an integer >= 1, got {num_levels!r}")
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    delta = (hi - lo) / num_levels
    sigmas = torch.exp(lo + delta * (torch.arange(num_levels, dtype=torch.float64) + 0.5))
    return sigmas, delta / sigmas**2


def first_level_indices(num_levels: int, first_levels: int) -> list[int]:
    """`first_levels` indices spread evenly over range(num_levels) (all of them when first_levels >= num_levels)."""
    if first_levels >= num_levels:
        return list(range(num_levels))
    step = num_levels / first_levels
    return [int(step * (i + 0.5)) for i in range(first_levels)]


def evaluations_needed(num_images: int, num_labels: int, num_levels: int, noise_per_level: int = 1,
                       stop_early: StopEarly | None = None) -> int:
    """Images through the network for one `classify` call: the cost model for estimates shown before a run."""
    if stop_early is None or stop_early.keep >= num_labels:
        per_draw = num_labels * num_levels
    else:
        first = len(first_level_indices(num_levels, stop_early.first_levels))
        per_draw = num_labels * first + stop_early.keep * (num_levels - first)
    return num_images * noise_per_level * per_draw


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


@torch.no_grad()
def classify(denoiser, x: torch.Tensor, labels=None, *, num_levels: int = 20, sigma_min: float | None = None,
             sigma_max: float | None = None, noise_per_level: int = 1, stop_early: StopEarly | None = None,
             generator: torch.Generator | None = None, max_batch: int = 500) -> ZeroShotResult:
    """Score every candidate label of each x (B, C, H, W) by its denoising error (see the module docstring).

    `denoiser.denoise(y, sigma, labels)` is D(y; sigma, c) (a ScoreModel, or anything with that method);
    `labels` the candidates (default: range(denoiser.num_classes)); sigma_min / sigma_max default to the model's
    SDE range [std(eps), std(1)]. Noise is drawn on CPU from `generator`, one z per (image, level, draw), shared
    by every label. Calls go to the network in batches of at most `max_batch` (image, label) pairs."""
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if labels is None:
        labels = range(_check_int("denoiser.num_classes", getattr(denoiser, "num_classes", None), 1))
    labels = tuple(int(c) for c in labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct and at least one, got {labels!r}")
    _check_int("noise_per_level", noise_per_level, 1)
    _check_int("max_batch", max_batch, 1)
    sde = getattr(denoiser, "sde", None)
    if sde is None and (sigma_min is None or sigma_max is None):
        raise ValueError("give sigma_min and sigma_max: the denoiser has no sde to take its noise range from")
    sigma_min = sde.std_min if sigma_min is None else float(sigma_min)
    sigma_max = sde.std_max if sigma_max is None else float(sigma_max)
    sigmas, weights = noise_levels(sigma_min, sigma_max, num_levels)
    b, n_labels, device = x.shape[0], len(labels), x.device

    # the shared noise: (J, K, B, C, H, W), drawn on CPU so a seed gives the same figures on every device
    noise = torch.randn((noise_per_level, num_levels, *x.shape), generator=generator, dtype=x.dtype)
    label_ids = torch.as_tensor(labels, device=device)
    errors = torch.full((b, n_labels, num_levels), float("nan"), dtype=torch.float64)
    active = torch.ones(b, n_labels, dtype=torch.bool)                    # (B, L): still being scored
    evaluations = 0

    def score_level(k: int) -> None:
        nonlocal evaluations
        pairs = active.nonzero()                                           # (P, 2): (image, label index)
        sigma = float(sigmas[k])
        y = x[None] + sigma * noise[:, k].to(device)                       # (J, B, C, H, W): one z for all labels
        # every (draw, image, label) combination, draw-major: (J * P,) indices into y and label_ids
        draw = torch.arange(noise_per_level).repeat_interleave(len(pairs))
        img, lab = pairs[:, 0].repeat(noise_per_level), pairs[:, 1].repeat(noise_per_level)
        err = torch.empty(len(draw), dtype=torch.float64)
        for start in range(0, len(draw), max_batch):
            sl = slice(start, start + max_batch)
            d = denoiser.denoise(y[draw[sl], img[sl]], sigma, label_ids[lab[sl].to(device)])   # (P', C, H, W)
            err[sl] = (d.float() - x[img[sl]].float()).square().flatten(1).sum(1).double().cpu()  # ||D - x||^2
            evaluations += len(d)
        errors[pairs[:, 0], pairs[:, 1], k] = err.view(noise_per_level, len(pairs)).mean(0)

    order = list(range(num_levels))
    if stop_early is not None and stop_early.keep < n_labels:
        first = first_level_indices(num_levels, stop_early.first_levels)
        for k in first:
            score_level(k)
        partial = errors[:, :, first] @ weights[first]                     # (B, L) L(c) on the first levels only
        best = partial.argsort(dim=1)[:, :stop_early.keep]                 # (B, keep)
        active = torch.zeros_like(active).scatter_(1, best, True)
        order = [k for k in order if k not in first]
    for k in order:
        score_level(k)

    kept = ~errors.isnan().any(dim=2)
    neg_elbo = torch.where(kept, torch.nan_to_num(errors, nan=0.0) @ weights, torch.inf)
    probs = torch.softmax(-neg_elbo, dim=1)                                 # exp(-inf) = 0 for a dropped label
    return ZeroShotResult(labels, sigmas, weights, errors, neg_elbo, probs, kept, evaluations)


def pipeline_inputs(pipe, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 28, 28) or (B, 1, 28, 28) in [0, 1] -> what the pipeline's score model diffuses: the images
    themselves, or the autoencoder's latents scaled to unit variance (encode(x) / latent_scale, as sampled)."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be (B, 28, 28) or (B, 1, 28, 28), got shape {tuple(images.shape)}")
    images = images.to(pipe.device, torch.float32)
    if pipe.is_latent:
        with torch.no_grad():
            return pipe.autoencoder.encode(images)
    return images


def classify_images(pipe, images: torch.Tensor, **kwargs) -> ZeroShotResult:
    """`classify` for a Pipeline (pixel or latent, class-conditional) on images in [0, 1]; kwargs as classify's."""
    if not pipe.conditional:
        raise ValueError(f"{pipe.name or 'this model'} is unconditional: the zero-shot classifier needs a "
                         "class-conditional model (pixel-cond or latent-cond)")
    return classify(pipe.score_model, pipeline_inputs(pipe, images), **kwargs)
