"""Publishing weights folders to the Hub.

`push_folder` uploads exactly the published files of weights/<name>/ (config.json, model.safetensors, the
card README.md and, for diffusion models, the training time-lapse) in one commit. A folder holding
anything else (optimizer state, checkpoints, pickles, sample grids) is refused, not silently filtered:
weights/<name>/ is also what ships in git and what the app loads. `push_root_files` adds the weights
repo's own files (the root model card listing every model, the LICENSE) in one commit.

`push_models` is what `train.push` does: pin first, then the cards. A commit's id hashes the files it holds, so
no card can name the commit that holds it; the weights of every folder go up in one commit, and the cards,
rendered with that commit's id, in a second one (with the root card and the LICENSE).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .hub_mixin import check_safetensors_header, hub_endpoint
from .pinning import PIN_FILE, record_pin
from .registry import CARD_NAME, FOLDER_FILES, REQUIRED_FILES, TIMELAPSE_NAME, check_name
from .score import ScoreModel

log = logging.getLogger(__name__)


def verify_folder(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Refuse to publish a folder unless it holds only the published files, reloads strictly and gives
    finite outputs; returns the file names that will be uploaded."""
    folder = Path(folder)
    name = name or folder.name
    cls = check_name(name)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in FOLDER_FILES)
    if extra:
        raise ValueError(f"{folder} holds files that must not be published: {extra}. A weights folder holds only "
                         f"{', '.join(FOLDER_FILES)}; training state and checkpoints stay in the run directory. "
                         f"Move them out and push again.")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)}; nothing to publish")
    if (folder / TIMELAPSE_NAME).is_file():
        check_safetensors_header(folder / TIMELAPSE_NAME)  # safetensors framing, not a pickle
    model = cls.from_pretrained(str(folder))  # strict: keys, shapes, NaN/inf, safetensors only
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if isinstance(model, ScoreModel):
            x = torch.randn(4, *model.sample_shape, generator=g)
            labels = torch.tensor([0, 1, 2, model.null_label]) if model.conditional else None
            outs = [model(x * float(model.sde.marginal_std(torch.tensor(t))), torch.full((4,), t), labels)
                    for t in (model.sde.eps, 0.5, 1.0)]
            if model.conditional:
                outs.append(model(x, torch.full((4,), 0.5), labels, guidance=3.0))
            out = torch.stack(outs)
        else:
            out = model(torch.rand(4, 1, 28, 28, generator=g))
    if not torch.isfinite(out).all():
        raise ValueError(f"{folder}: the reloaded model produces non-finite outputs; refusing to push")
    return [f for f in FOLDER_FILES if (folder / f).is_file()]


def push_folder(folder: str | os.PathLike, repo_id: str, path_in_repo: str | None = None, token=None,
                record: bool = True) -> str:
    """Upload weights/<name>/ (published files only) to <repo_id>/<name>/ in one commit; returns the commit sha
    and (record=True) records {repo, revision, models} in the folder's parent hub.json."""
    from huggingface_hub import CommitOperationAdd, HfApi
    folder = Path(folder)
    files = verify_folder(folder)
    prefix = (path_in_repo or folder.name).strip("/")
    api = HfApi(endpoint=hub_endpoint(), token=token)
    api.create_repo(repo_id, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=f"{prefix}/{f}", path_or_fileobj=str(folder / f)) for f in files]
    info = api.create_commit(repo_id, operations=ops, commit_message=f"Upload {prefix} from mnist-diffusion-lab")
    sha = info.oid
    if "README.md" not in files:
        log.warning("%s has no README.md: pushed without a model card", folder)
    if record:
        record_pin(folder.parent / PIN_FILE, repo_id, sha, {folder.name: sha})
    return sha


def push_root_files(repo_id: str, files: dict[str, bytes | str | os.PathLike], token=None,
                    message: str = "Root model card and license") -> str:
    """Upload files at the root of the weights repo ({path in repo: bytes or a local file}) in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    bad = [p for p in files if "/" in p.strip("/") or p.lower().endswith((".safetensors", ".bin", ".pt"))]
    if bad:
        raise ValueError(f"root files are the card and the license, not {bad}")
    api = HfApi(endpoint=hub_endpoint(), token=token)
    api.create_repo(repo_id, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v if isinstance(v, bytes) else str(v))
           for p, v in files.items()]
    return api.create_commit(repo_id, operations=ops, commit_message=message).oid


def push_models(folders: dict[str, str | os.PathLike], repo_id: str,
                render_cards: Callable[[str], dict[str, bytes | str | os.PathLike]], token=None) -> tuple[str, str]:
    """Publish model folders ({name: weights/<name>}) in two commits; returns (weights commit, cards commit).

    1. every folder's published files except its card (config.json, model.safetensors, the time-lapse), verified
       first, all in one commit: the commit the cards pin;
    2. `render_cards(weights_commit)`: {path in repo: text, bytes or a local file} (each <name>/README.md, the root
       README.md, LICENSE), in one more commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    api = HfApi(endpoint=hub_endpoint(), token=token)
    ops = []
    for name, folder in folders.items():
        folder = Path(folder)
        ops += [CommitOperationAdd(path_in_repo=f"{name}/{f}", path_or_fileobj=str(folder / f))
                for f in verify_folder(folder, name) if f != CARD_NAME]
    api.create_repo(repo_id, exist_ok=True)
    weights_sha = api.create_commit(repo_id, operations=ops,
                                    commit_message=f"Weights of {', '.join(folders)} from mnist-diffusion-lab").oid
    cards = render_cards(weights_sha)
    card_ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v.encode() if isinstance(v, str) else
                                   v if isinstance(v, bytes) else str(v)) for p, v in cards.items()]
    cards_sha = api.create_commit(repo_id, operations=card_ops,
                                  commit_message=f"Model cards pinned to the weights commit {weights_sha[:12]}").oid
    return weights_sha, cards_sha
