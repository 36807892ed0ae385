"""Loading models: the public API (`load_model`, `load_pipeline`, `load_pipelines`, `read_model_cards`).

Local first: `weights/<name>/` (config.json + model.safetensors + README.md, save_pretrained layout).
Hub: one repository holding one folder per model name, read at a pinned revision (the commit `train.push`
records in weights/hub.json; the rule is `pinning.resolve_revision`). Loading is strict and
safetensors-only (hub_mixin.py). When the Hub copy cannot be used, `load_model` falls back to the local
weights and says why in `messages`.

The pieces live beside this module, one concern each: registry.py (names, classes, folder layout),
hub_download.py (the one Hub reader, on `snapshot_download`, and its typed errors), pinning.py (hub.json,
which revision), publish.py (verify and push). Their public names are re-exported here.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .autoguidance import AutoGuided
from .hub_download import (HubCorruptDownload, HubFileNotFound, HubLoadError, HubRepoNotFound,  # noqa: F401
                           HubRevisionNotFound, HubUnreachable, fetch, first_line, is_offline, read_cached_file,
                           short_revision)
from .hub_mixin import CONFIG_NAME, WEIGHTS_NAME, UnsafeWeightsError, pickle_files, refuse_pickle
from .pinning import PIN_FILE, hub_pin, pin_note, record_pin, resolve_revision  # noqa: F401
from .pipeline import Pipeline
from .publish import push_folder, push_root_files, verify_folder  # noqa: F401
from .registry import (CARD_NAME, DEFAULT_WEIGHTS_DIR, FOLDER_FILES, GUIDE_NAMES, LOAD_FILES, MODEL_CLASSES,  # noqa: F401
                       PIPELINE_NAMES, REQUIRED_FILES, SAMPLEABLE_NAMES, DISTILLED_NAMES, check_name, model_folders,
                       model_spec, shown_path)
from .registry import weights_dir as _weights_dir

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WEIGHTS_DIR", "HubCorruptDownload", "HubFileNotFound", "HubLoadError", "HubRepoNotFound",
           "HubRevisionNotFound", "HubUnreachable", "MODEL_CLASSES", "PIN_FILE", "PIPELINE_NAMES", "SAMPLEABLE_NAMES", "DISTILLED_NAMES", "WeightsNotFound",
           "download_folder", "fetch_folder", "hub_pin", "load_local", "load_model", "load_pipeline",
           "load_pipelines", "push_folder", "push_root_files", "read_model_cards", "record_pin", "resolve_revision",
           "verify_folder"]


class WeightsNotFound(FileNotFoundError):
    pass


# ---------------------------------------------------------------- local


def train_command(name: str) -> str:
    """The command that builds `name`'s weights folder (its ModelSpec's: a student comes from its teacher by
    train.distill)."""
    return model_spec(name).train_command


def load_local(name: str, weights_dir=None, device="cpu"):
    """Load weights/<name>/ strictly; a clear error when it is missing or unsafe."""
    cls = check_name(name)
    folder = _weights_dir(weights_dir) / name
    refuse_pickle(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        found = pickle_files(folder)
        if found and not (folder / WEIGHTS_NAME).is_file():
            raise UnsafeWeightsError(
                f"{folder} holds only {found} for {name!r}: pickle checkpoints can run code when loaded and are "
                f"never opened. Convert them to {WEIGHTS_NAME} with a trusted script, or use the shipped weights.")
        raise WeightsNotFound(
            f"no trained weights for {name!r} in {folder} (need {CONFIG_NAME} and {WEIGHTS_NAME}). "
            f"Point --weights-dir (or MNIST_DIFFUSION_WEIGHTS) at a folder that has them, get them with `git lfs "
            f"pull`/a fresh clone (they ship in weights/), download them with --hub-repo REPO_ID, or train them: "
            f"{train_command(name)}")
    return cls.from_pretrained(str(folder), map_location=str(device)).to(device)


# ---------------------------------------------------------------- Hub


def fetch_folder(name: str, repo_id: str, revision: str | None = None, cache_dir=None, token=None,
                 offline: bool | None = None) -> tuple[Path, str, str]:
    """<repo_id>/<name>/ at `revision` through the one Hub reader (hub_download.fetch): (folder, sha, how)."""
    check_name(name)
    return fetch(repo_id, name, revision, files=LOAD_FILES, required=REQUIRED_FILES, cache_dir=cache_dir,
                 token=token, offline=offline)


def download_folder(name: str, repo_id: str, revision: str | None = None, cache_dir=None) -> Path:
    """Download <repo_id>/<name>/{config.json, model.safetensors, README.md} at `revision`; returns the folder."""
    return fetch_folder(name, repo_id, revision, cache_dir)[0]


_SOURCES = {"cache": "from the local Hub cache, no network needed",
            "cache-offline": "from the local Hub cache (offline mode)",
            "cache-unreachable": "from the local Hub cache (the Hub could not be reached)",
            "download": "downloaded"}


def load_model(name: str, *, weights_dir=None, hub_repo: str | None = None, revision: str | None = None,
               device="cpu", messages: list | None = None, hub_state: dict | None = None):
    """From the Hub when `hub_repo` is given (falling back to local weights on failure), else local.

    With `hub_repo` and no `revision`, the commit recorded for that repo in weights/hub.json is used
    (else the head of main). One line per model is appended to `messages`: where it came from, or
    why the Hub copy was not used. `hub_state` (a dict shared across calls, as load_pipelines does)
    remembers an unreachable Hub so later models use the cache only instead of waiting again.
    """
    messages = messages if messages is not None else []
    cls = check_name(name)
    local = shown_path(_weights_dir(weights_dir) / name)
    hub_problem = None
    if hub_repo:
        rev = resolve_revision(hub_repo, revision, weights_dir)
        state = hub_state if hub_state is not None else {}
        folder = sha = None
        known_down = bool(state.get("unreachable"))
        try:
            folder, sha, how = fetch_folder(name, hub_repo, rev, offline=True if known_down else None)
            model = cls.from_pretrained(str(folder), map_location=str(device)).to(device)
        except HubUnreachable as e:
            state["unreachable"] = True
            hub_problem = (f"the Hub could not be reached (see above) and {hub_repo}@{short_revision(rev or 'main')} "
                           f"is not in the local Hub cache" if known_down and not is_offline() else str(e))
        except HubLoadError as e:
            hub_problem = str(e)
        except Exception as e:  # noqa: BLE001 - reported, never fatal: the local weights remain
            if folder is not None:
                hub_problem = f"the Hub copy {hub_repo}@{sha[:12]} of {name} is unusable: {first_line(e, 300)}"
            elif isinstance(e, UnsafeWeightsError):
                hub_problem = str(e)
            else:
                hub_problem = f"could not load from the Hub ({hub_repo}@{short_revision(rev or 'main')}): {first_line(e)}"
        else:
            source = _SOURCES.get(how) or f"{rev or 'main'} resolved on the Hub, files from the local Hub cache"
            if how == "cache-offline" and state.get("unreachable"):
                source = _SOURCES["cache-unreachable"]
            messages.append(f"{name}: loaded from the Hub, {hub_repo}@{sha[:12]}"
                            f"{pin_note(hub_repo, revision, weights_dir)}, {source}")
            return model
    try:
        model = load_local(name, weights_dir, device)
    except Exception as e:
        if hub_problem:
            raise WeightsNotFound(f"{hub_problem}; and the local weights are unusable too "
                                  f"({type(e).__name__}: {e})") from e
        raise
    if hub_problem:
        messages.append(f"{name}: not loaded from the Hub: {hub_problem}. Using the local weights in {local}")
    else:
        messages.append(f"{name}: loaded from {local}")
    return model


def load_pipeline(name: str, **kwargs) -> Pipeline:
    """Pipeline(score model, autoencoder for latent models); kwargs as load_model."""
    if name not in SAMPLEABLE_NAMES:
        raise ValueError(f"{name!r} is not a diffusion model; choose one of {', '.join(SAMPLEABLE_NAMES)}")
    spec = model_spec(name)
    score = load_model(name, **kwargs)
    autoencoder = load_model(spec.autoencoder, **kwargs) if spec.space == "latent" else None
    if getattr(score, "autoguide", None):
        score = _with_guide(name, score, kwargs)
    return Pipeline(score, autoencoder, name=name)


def _with_guide(name: str, score, kwargs: dict):
    """`score` guided by the weaker model its config names (`autoguide`, diffusion.autoguidance) when that loads;
    else `score` alone, with a message saying why (the model still samples; its guidance does nothing)."""
    messages = kwargs.get("messages")
    try:
        if score.autoguide not in GUIDE_NAMES:
            raise ValueError(f"{score.autoguide!r} is not a guide model ({', '.join(GUIDE_NAMES)})")
        return AutoGuided(score, load_model(score.autoguide, **kwargs))
    except Exception as e:  # noqa: BLE001 - optional: the model works without it
        if messages is not None:
            messages.append(f"{score.autoguide}: unavailable, {name} samples without autoguidance "
                            f"({type(e).__name__}: {first_line(e, 200)})")
        return score


def load_pipelines(names=PIPELINE_NAMES, **kwargs) -> tuple[dict, list[str]]:
    """All the pipelines that can be loaded, and messages saying where each came from or why it is missing.

    kwargs as load_model: weights_dir, hub_repo, revision, device."""
    messages: list[str] = []
    kwargs.setdefault("hub_state", {})
    pipes = {}
    for name in names:
        try:
            pipes[name] = load_pipeline(name, messages=messages, **kwargs)
        except Exception as e:  # noqa: BLE001
            messages.append(f"{name}: unavailable ({type(e).__name__}: {e})")
    return pipes, messages


def read_model_cards(names, weights_dir=None, hub_repo: str | None = None, revision: str | None = None) -> dict[str, str]:
    """{name: model card text}: the Hub copy at the pinned revision when `hub_repo` is set and it is in the local
    Hub cache (loading the model put it there; no request is made), else weights/<name>/README.md."""
    rev = resolve_revision(hub_repo, revision, weights_dir) if hub_repo else None
    cards = {}
    for name in names:
        path = _weights_dir(weights_dir) / name / CARD_NAME
        if hub_repo:
            path = read_cached_file(hub_repo, f"{name}/{CARD_NAME}", rev) or path
        if path.is_file():
            cards[name] = path.read_text(encoding="utf-8", errors="replace")
    return cards
