"""Tiny, seeded models for tests: the one factory every test module (and the DDP worker) builds from."""
from __future__ import annotations

import torch

from diffusion import AutoEncoder, Classifier, ScoreModel
from diffusion.registry import ModelSpec, model_spec

# a U-Net of two levels, attention at the second; a few thousand parameters: a forward pass takes milliseconds
TINY = dict(channels=(8, 16), attention_levels=(1,), embed_dim=16, context_dim=8, heads=2)
TINY_AUTOENCODER = dict(hidden=8)               # latents (4, 10, 10), as the shipped autoencoder's
TINY_CLASSIFIER = dict(width=4, feature_dim=8)


def score_kwargs(spec: ModelSpec) -> dict:
    """ScoreModel kwargs on top of TINY for a registered score model (or guide): digit labels for a conditional one,
    the tiny autoencoder's latent shape for a latent one."""
    kw = {"num_classes": 10} if spec.conditional else {}
    if spec.space == "latent":
        kw |= {"in_channels": 4, "image_size": 10}
    return kw


def tiny_score(seed: int = 0, **kw) -> ScoreModel:
    """A ScoreModel with TINY's architecture (kwargs override it), initialised from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return ScoreModel(**{**TINY, **kw}).eval()


def tiny_model(name: str, seed: int = 0):
    """Any model the app loads, by its registered name (diffusion/registry.py): a score model or guide, the autoencoder,
    the (CNN) classifier. Students come from a teacher: tiny_students."""
    spec = model_spec(name)
    if spec.role in ("score", "guide"):
        return tiny_score(seed, **score_kwargs(spec))
    torch.manual_seed(seed)
    if spec.cls is AutoEncoder:
        return AutoEncoder(**TINY_AUTOENCODER).eval()
    if spec.cls is Classifier:
        return Classifier(**TINY_CLASSIFIER).eval()
    raise ValueError(f"no tiny factory for {name!r} ({spec.role}, {spec.cls.__name__})")


def tiny_students(teacher, names=None, guidance_range=(0.0, 4.0), grid_steps: int = 16, w_std: float = 0.5) -> dict:
    """{name: untrained student} for the distilled names (4, 2 and 1 step), made from `teacher` as train.distill
    starts them (w an input, the `distilled` config), except that the w-embedding's last layer, zero at the start of
    training, is set to seeded N(0, w_std^2) values: the output then depends on w, as a trained student's does."""
    from diffusion.distill import distilled_config, make_student
    from diffusion.registry import DISTILLED_NAMES

    students = {}
    for name in names or DISTILLED_NAMES:
        spec = model_spec(name)
        student = make_student(teacher, distilled_config(spec.defaults.steps, grid_steps, guidance_range,
                                                         teacher=spec.teacher))
        last = student.net.guidance_embed[-1]
        with torch.no_grad():
            last.weight.copy_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(1)) * w_std)
        students[name] = student.eval()
    return students
