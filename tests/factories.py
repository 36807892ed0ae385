"""Tiny, seeded models for tests: the one factory every test module (and the DDP worker) builds from."""
from __future__ import annotations

import torch

from diffusion import AutoEncoder, Classifier, ScoreModel

# a U-Net of two levels, attention at the second; a few thousand parameters: a forward pass takes milliseconds
TINY = dict(channels=(8, 16), attention_levels=(1,), embed_dim=16, context_dim=8, heads=2)
# the app's models by name, as ScoreModel kwargs on top of TINY
SCORE_KINDS = {"pixel-uncond": dict(),
               "pixel-cond": dict(num_classes=10),
               "latent-cond": dict(in_channels=4, image_size=10, num_classes=10)}


def tiny_score(seed: int = 0, **kw) -> ScoreModel:
    """A ScoreModel with TINY's architecture (kwargs override it), initialised from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return ScoreModel(**{**TINY, **kw}).eval()


def tiny_model(name: str, seed: int = 0):
    """Any model the app loads, by its weights/ name: pixel-uncond, pixel-cond, latent-cond, autoencoder, classifier."""
    if name in SCORE_KINDS:
        return tiny_score(seed, **SCORE_KINDS[name])
    torch.manual_seed(seed)
    if name == "autoencoder":
        return AutoEncoder(hidden=8).eval()
    if name == "classifier":
        return Classifier(width=4, feature_dim=8).eval()
    raise ValueError(name)


def tiny_students(teacher, names=None, guidance_range=(0.0, 4.0), grid_steps: int = 16, w_std: float = 0.5) -> dict:
    """{name: untrained student} for the distilled names (4, 2 and 1 step), made from `teacher` as train.distill
    starts them (w an input, the `distilled` config), except that the w-embedding's last layer, zero at the start of
    training, is set to seeded N(0, w_std^2) values: the output then depends on w, as a trained student's does."""
    from diffusion.distill import distilled_config, make_student
    from diffusion.registry import DISTILLED_NAMES

    steps = dict(zip(DISTILLED_NAMES, (4, 2, 1)))
    students = {}
    for name in names or DISTILLED_NAMES:
        student = make_student(teacher, distilled_config(steps[name], grid_steps, guidance_range, teacher="pixel-cond"))
        last = student.net.guidance_embed[-1]
        with torch.no_grad():
            last.weight.copy_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(1)) * w_std)
        students[name] = student.eval()
    return students
