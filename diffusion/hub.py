"""Loading and publishing models.

Local first: `weights/<name>/` (config.json + model.safetensors + README.md, save_pretrained layout).
Hub: one repository holding one folder per model name, downloaded with `huggingface_hub` at a pinned
revision (a commit sha recorded by `push_folder` in weights/hub.json). When the Hub cannot be reached
the loaders fall back to the local weights and say so in the returned messages.
Loading is strict and safetensors-only (see hub_mixin.py).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .autoencoder import AutoEncoder
from .hub_mixin import WEIGHTS_NAME, load_state_dict_checked, refuse_pickle
from .metrics import Classifier
from .pipeline import Pipeline
from .score import ScoreModel

log = logging.getLogger(__name__)

MODEL_CLASSES = {"pixel-uncond": ScoreModel, "pixel-cond": ScoreModel, "latent-cond": ScoreModel,
                 "autoencoder": AutoEncoder, "classifier": Classifier}
PIPELINE_NAMES = ("pixel-uncond", "pixel-cond", "latent-cond")
FOLDER_FILES = ("config.json", WEIGHTS_NAME, "README.md")
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("MNIST_DIFFUSION_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))


class WeightsNotFound(FileNotFoundError):
    pass


def _check_name(name: str) -> type:
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


def load_local(name: str, weights_dir: str | os.PathLike | None = None, device="cpu"):
    """Load weights/<name>/ strictly; a clear error when it is missing or unsafe."""
    cls = _check_name(name)
    folder = Path(weights_dir or DEFAULT_WEIGHTS_DIR) / name
    refuse_pickle(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise WeightsNotFound(
            f"no trained weights for {name!r} in {folder} (need config.json and {WEIGHTS_NAME}). "
            f"Get them with `git lfs pull`/a fresh clone (they ship in weights/), download them with "
            f"--hub-repo REPO_ID, or train them: python -m train.{name.replace('-', '_')}")
    return cls.from_pretrained(str(folder), map_location=str(device)).to(device)


def download_folder(name: str, repo_id: str, revision: str | None = None, cache_dir=None) -> Path:
    """Download <repo_id>/<name>/{config.json, model.safetensors, README.md} at `revision`; returns the folder."""
    from huggingface_hub import snapshot_download
    _check_name(name)
    root = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                             allow_patterns=[f"{name}/{f}" for f in FOLDER_FILES])
    folder = Path(root) / name
    if not (folder / WEIGHTS_NAME).is_file():
        raise WeightsNotFound(f"{repo_id}@{revision or 'main'} has no {name}/{WEIGHTS_NAME}")
    return folder


def load_model(name: str, *, weights_dir=None, hub_repo: str | None = None, revision: str | None = None,
               device="cpu", messages: list | None = None):
    """From the Hub when `hub_repo` is given (falling back to local weights on failure), else local."""
    messages = messages if messages is not None else []
    if hub_repo:
        try:
            folder = download_folder(name, hub_repo, revision)
            model = _check_name(name).from_pretrained(str(folder), map_location=str(device)).to(device)
            messages.append(f"{name}: loaded from the Hub, {hub_repo}@{revision or 'main'}")
            return model
        except Exception as e:  # noqa: BLE001 - any Hub failure falls back to the shipped weights
            messages.append(f"{name}: could not load from the Hub ({hub_repo}@{revision or 'main'}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}); using local weights")
    model = load_local(name, weights_dir, device)
    if not hub_repo:
        messages.append(f"{name}: loaded from {Path(weights_dir or DEFAULT_WEIGHTS_DIR) / name}")
    return model


def load_pipeline(name: str, **kwargs) -> Pipeline:
    if name not in PIPELINE_NAMES:
        raise ValueError(f"{name!r} is not a diffusion model; choose one of {', '.join(PIPELINE_NAMES)}")
    score = load_model(name, **kwargs)
    autoencoder = load_model("autoencoder", **kwargs) if score.in_channels != 1 else None
    return Pipeline(score, autoencoder, name=name)


def load_pipelines(names=PIPELINE_NAMES, **kwargs) -> tuple[dict, list[str]]:
    """All the pipelines that can be loaded, and messages saying where each came from or why it is missing."""
    messages: list[str] = []
    pipes = {}
    for name in names:
        try:
            pipes[name] = load_pipeline(name, messages=messages, **kwargs)
        except Exception as e:  # noqa: BLE001
            messages.append(f"{name}: unavailable ({type(e).__name__}: {e})")
    return pipes, messages


def hub_pin(weights_dir=None) -> dict:
    """The {repo, revision} recorded by the last push, or {}."""
    path = Path(weights_dir or DEFAULT_WEIGHTS_DIR) / "hub.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def verify_folder(folder: str | os.PathLike, name: str | None = None) -> None:
    """Refuse to publish a folder unless it reloads strictly and samples finite values."""
    folder = Path(folder)
    name = name or folder.name
    cls = _check_name(name)
    extra = [p.name for p in folder.iterdir() if p.name not in FOLDER_FILES]
    if extra:
        raise ValueError(f"{folder} holds files that must not be published: {extra}")
    model = cls.from_pretrained(str(folder))
    with torch.inference_mode():
        if isinstance(model, ScoreModel):
            x = torch.randn(2, *model.sample_shape)
            out = model(x, torch.full((2,), 0.5), torch.tensor([0, 1]) if model.conditional else None)
        elif isinstance(model, AutoEncoder):
            out = model(torch.rand(2, 1, 28, 28))
        else:
            out = model(torch.rand(2, 1, 28, 28))
    if not torch.isfinite(out).all():
        raise ValueError(f"{folder}: the reloaded model produces non-finite outputs; refusing to push")


def push_folder(folder: str | os.PathLike, repo_id: str, path_in_repo: str | None = None, token=None,
                record: bool = True) -> str:
    """Upload weights/<name>/ (config, safetensors, card only) to <repo_id>/<name>/; returns the commit sha
    and records {repo, revision} in the folder's parent hub.json so the app can pin it."""
    from huggingface_hub import HfApi
    folder = Path(folder)
    verify_folder(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo or folder.name,
                             allow_patterns=list(FOLDER_FILES),
                             commit_message=f"Upload {folder.name} from mnist-diffusion-lab")
    sha = info.oid
    if record:
        pin_path = folder.parent / "hub.json"
        pin = json.loads(pin_path.read_text()) if pin_path.is_file() else {}
        pin.update({"repo": repo_id, "revision": sha})
        pin.setdefault("models", {})[folder.name] = sha
        pin_path.write_text(json.dumps(pin, indent=1) + "\n")
    return sha
