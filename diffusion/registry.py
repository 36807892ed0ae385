"""The model names, their classes, the files a weights folder holds, and where the local weights live.

A weights folder is `save_pretrained` layout: weights/<name>/{config.json, model.safetensors, README.md},
plus the training time-lapse (timelapse.safetensors) for diffusion models when it was recorded.
"""
from __future__ import annotations

import os
from pathlib import Path

from .autoencoder import AutoEncoder
from .hub_mixin import CONFIG_NAME, WEIGHTS_NAME
from .metrics import Classifier, ResNetClassifier
from .score import ScoreModel
from .timelapse import FILENAME as TIMELAPSE_NAME

MODEL_CLASSES = {"pixel-uncond": ScoreModel, "pixel-cond": ScoreModel, "latent-cond": ScoreModel,
                 "autoencoder": AutoEncoder, "classifier": Classifier, "classifier-resnet": ResNetClassifier}
PIPELINE_NAMES = ("pixel-uncond", "pixel-cond", "latent-cond")
# few-step students distilled from pixel-cond (diffusion/distill.py, train/distill.py): 4, 2 and 1 network calls
DISTILLED_NAMES = ("pixel-cond-distilled", "pixel-cond-distilled-2step", "pixel-cond-distilled-1step")
MODEL_CLASSES |= {name: ScoreModel for name in DISTILLED_NAMES}
SAMPLEABLE_NAMES = PIPELINE_NAMES + DISTILLED_NAMES   # what load_pipeline and the sampling CLI accept
# autoguidance (diffusion/autoguidance.py): weaker versions of a model (an early checkpoint of its own training run)
# that a model names in its config (`autoguide`); load_pipeline loads the pair, and w then means D_bad + w (D_good - D_bad)
GUIDE_NAMES = ("pixel-uncond-guide",)
MODEL_CLASSES |= {guide: ScoreModel for guide in GUIDE_NAMES}
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, TIMELAPSE_NAME)  # what a published folder may hold
LOAD_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)                   # what loading a model downloads
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("MNIST_DIFFUSION_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))
REPO_ROOT = Path(__file__).resolve().parent.parent


def check_name(name: str) -> type:
    """The class of model `name`; a ValueError listing the names otherwise."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


def weights_dir(path=None) -> Path:
    return Path(path or DEFAULT_WEIGHTS_DIR)


def model_folders(path=None) -> list[str]:
    """Names of the model folders present in a weights directory (those holding config.json), known names first."""
    root = weights_dir(path)
    present = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file()) if root.is_dir() else []
    return [n for n in MODEL_CLASSES if n in present] + [n for n in present if n not in MODEL_CLASSES]


def shown_path(path) -> str:
    """A path as shown to users: relative to the repository or the working directory when inside them,
    so pages and logs do not reveal the server's directory layout."""
    path = Path(path).resolve()
    for base in (REPO_ROOT, Path.cwd()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return path.name if path.parent == path else f".../{path.parent.name}/{path.name}"
