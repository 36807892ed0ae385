"""The package's version and the weights' release, in one place.

`__version__` is the code's version (pyproject reads it: `version = {attr = ...}`); `WEIGHTS_VERSION` names the
release of the shipped weights as a whole, and `WEIGHTS_CHANGED` the release in which each model's weights last
changed. CHANGELOG.md says what changed in each release; the model cards and the app's models panel show these.
"""
from __future__ import annotations

__version__ = "0.2.0"

# Weight releases are named by the day they were shipped (git log -- weights/ train/records/).
WEIGHTS_VERSION = "2026-12-05"
WEIGHTS_CHANGED = {
    "classifier": "2026-12-01", "autoencoder": "2026-12-01", "latent-cond": "2026-12-01",
    "classifier-resnet": "2026-12-02", "pixel-cond": "2026-12-02",
    "pixel-uncond": "2026-12-03", "pixel-uncond-guide": "2026-12-03", "pixel-cond-distilled": "2026-12-03",
    "pixel-cond-distilled-2step": "2026-12-05", "pixel-cond-distilled-1step": "2026-12-05",
}


def weights_release(name: str) -> str:
    """'2026-12-03' or, for a model whose weights are older than the release, '2026-12-03 (weights of 2026-12-01)'."""
    changed = WEIGHTS_CHANGED.get(name)
    if changed is None or changed == WEIGHTS_VERSION:
        return WEIGHTS_VERSION
    return f"{WEIGHTS_VERSION} (weights unchanged since {changed})"
