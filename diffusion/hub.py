"""Loading and publishing models.

Local first: `weights/<name>/` (config.json + model.safetensors + README.md, save_pretrained layout).
Hub: one repository holding one folder per model name, downloaded with `huggingface_hub` at a pinned
revision (the commit sha `push_folder` records in weights/hub.json). Loading is strict and
safetensors-only (see hub_mixin.py).

Hub loading, in order:
1. a full commit sha that is complete in the local Hub cache loads with no network request at all;
   so does any revision when offline (HF_HUB_OFFLINE=1) and it is cached;
2. otherwise one metadata request resolves the revision to a commit and lists its files: a missing
   repo, revision or file each give their own error (a Hub that cannot be reached falls back to the
   cache for that revision);
3. the folder is downloaded with `snapshot_download`, and every cached file is checked against the
   Hub's checksum (git blob sha1, or sha256 for LFS files); a mismatching file is deleted from the cache.
When any of this fails, `load_model` falls back to the local weights and says why in `messages`.

HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE are read when a function is called (not only
when huggingface_hub is imported), so they can be set after import.

Publishing: `push_folder` uploads exactly config.json, model.safetensors and (if present) README.md
in one commit. A folder holding anything else (optimizer state, checkpoints, pickles, sample grids)
is refused, not silently filtered: weights/<name>/ is also what ships in git and what the app loads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from .autoencoder import AutoEncoder
from .hub_mixin import (CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, CorruptWeightsError, UnsafeWeightsError,
                        hub_cache_dir, hub_endpoint, pickle_files, refuse_pickle)
from .metrics import Classifier
from .pipeline import Pipeline
from .score import ScoreModel

log = logging.getLogger(__name__)

MODEL_CLASSES = {"pixel-uncond": ScoreModel, "pixel-cond": ScoreModel, "latent-cond": ScoreModel,
                 "autoencoder": AutoEncoder, "classifier": Classifier}
PIPELINE_NAMES = ("pixel-uncond", "pixel-cond", "latent-cond")
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("MNIST_DIFFUSION_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))
PIN_FILE = "hub.json"
_SHA = re.compile(r"[0-9a-f]{40}")


class WeightsNotFound(FileNotFoundError):
    pass


class HubLoadError(Exception):
    """A Hub download that failed for a reason a person can act on; str(e) is that reason."""


class HubUnreachable(HubLoadError):
    pass


class HubRepoNotFound(HubLoadError):
    pass


class HubRevisionNotFound(HubLoadError):
    pass


class HubFileNotFound(HubLoadError):
    pass


class HubCorruptDownload(HubLoadError):
    pass


def _check_name(name: str) -> type:
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


def _weights_dir(weights_dir) -> Path:
    return Path(weights_dir or DEFAULT_WEIGHTS_DIR)


# ---------------------------------------------------------------- local


def load_local(name: str, weights_dir: str | os.PathLike | None = None, device="cpu"):
    """Load weights/<name>/ strictly; a clear error when it is missing or unsafe."""
    cls = _check_name(name)
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
            f"Get them with `git lfs pull`/a fresh clone (they ship in weights/), download them with "
            f"--hub-repo REPO_ID, or train them: python -m train.{name.replace('-', '_')}")
    return cls.from_pretrained(str(folder), map_location=str(device)).to(device)


# ---------------------------------------------------------------- Hub download


def _offline() -> bool:
    from huggingface_hub import constants
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _short(revision: str) -> str:
    """A commit sha abbreviated for messages; branch and tag names as they are."""
    return revision[:12] if _SHA.fullmatch(revision) else revision


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit]}" if text else type(e).__name__


def _reason(e: BaseException) -> str:
    """Short cause of a failed request: 'HTTP 503 Service Unavailable', 'ConnectError: [Errno 111] ...'."""
    from huggingface_hub.errors import HfHubHTTPError
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason_phrase}".strip()
    return _first_line(e, 100)


def _is_connection_error(e: BaseException | None) -> bool:
    """No answer from the Hub (refused, DNS, timeout, offline mode) or a 5xx answer."""
    try:
        from httpx2 import TransportError  # huggingface_hub >= 2 speaks HTTP through httpx2
    except ImportError:
        from httpx import TransportError
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    if isinstance(e, (TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    return isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code >= 500


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_cached_files(folder: Path, where: str) -> None:
    """Check each cached file against its ETag, which the Hub cache uses as the blob's name
    (snapshots/<sha>/<path> -> ../../blobs/<etag>; sha256 for LFS files, git blob sha1 otherwise).
    A mismatch deletes the blob and the snapshot link, then raises. Only the first link is followed:
    the blob itself may link on into huggingface_hub's shared store, whose names are not ETags."""
    for fname in FOLDER_FILES:
        link = folder / fname
        if not link.is_symlink():  # copies (no symlink support): the etag is not recoverable here; skip
            continue
        blob = Path(os.path.normpath(link.parent / os.readlink(link)))
        etag = blob.name.lower()
        if blob.parent.name != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag):
            continue  # not the layout this check knows
        if not blob.is_file():
            link.unlink(missing_ok=True)
            raise HubCorruptDownload(f"{folder.name}/{fname} from {where} is a dangling link in the Hub cache; "
                                     f"removed it")
        got = _sha256(blob) if len(etag) == 64 else _git_blob_sha1(blob)
        if got != etag:
            blob.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
            raise HubCorruptDownload(
                f"{folder.name}/{fname} from {where} does not match the Hub's checksum (expected {etag[:12]}..., "
                f"got {got[:12]}...): the download was corrupted; it was removed from the cache")


def _write_ref(cache: str, repo_id: str, revision: str, sha: str) -> None:
    from huggingface_hub.file_download import repo_folder_name
    ref = Path(cache) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.tmp")
        tmp.write_text(sha)
        os.replace(tmp, ref)
    except OSError as e:  # a read-only cache still works online
        log.warning("could not record %s -> %s in the Hub cache: %s", revision, sha, e)


def _cached_folder(name: str, repo_id: str, revision: str, cache: str) -> tuple[Path, str] | None:
    """(folder, commit sha) of a complete, checksum-verified cached copy, with no network request; else None."""
    from huggingface_hub import snapshot_download
    try:
        root = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True,
                                      allow_patterns=[f"{name}/{f}" for f in FOLDER_FILES]))
    except Exception as e:  # noqa: BLE001 - not cached, or cached incompletely
        log.debug("no usable cached copy of %s@%s: %s", repo_id, revision, _first_line(e))
        return None
    folder = root / name
    if not all((folder / f).is_file() for f in REQUIRED_FILES):
        return None
    try:
        _verify_cached_files(folder, f"{repo_id}@{root.name[:12]}")
    except HubCorruptDownload as e:
        log.warning("%s", e)
        return None
    return folder, root.name


def fetch_folder(name: str, repo_id: str, revision: str | None = None, cache_dir=None, token=None,
                 offline: bool | None = None) -> tuple[Path, str, str]:
    """Download <repo_id>/<name>/ at `revision`: (folder, commit sha, how) with how in
    {"cache", "cache-offline", "cache-unreachable", "resolved", "download"}. Raises HubLoadError subclasses
    (or UnsafeWeightsError for a pickle-only folder) with a message that names repo, revision and file.
    `offline=None` follows HF_HUB_OFFLINE; True uses the cache only."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    _check_name(name)
    rev = revision or "main"
    cache, endpoint = hub_cache_dir(cache_dir), hub_endpoint()
    where = f"{repo_id}@{_short(rev)}"

    # 1. a pinned commit, or offline: the cache alone, no request
    offline = _offline() if offline is None else offline
    if _SHA.fullmatch(rev) or offline:
        hit = _cached_folder(name, repo_id, rev, cache)
        if hit:
            return (*hit, "cache-offline" if offline else "cache")
        if offline:
            mode = "offline mode is on (HF_HUB_OFFLINE=1)" if _offline() else "working offline"
            raise HubUnreachable(f"{mode} and {where} is not in the local Hub cache ({cache})")

    # 2. resolve the revision and list its files: one request, no retries
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=rev,
                                                                timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RevisionNotFoundError:
        raise HubRevisionNotFound(f"the Hub repository {repo_id!r} has no revision {rev!r} "
                                  f"(no such commit, branch or tag)") from None
    except RepositoryNotFoundError:
        raise HubRepoNotFound(f"the Hub repository {repo_id!r} was not found at {endpoint} "
                              f"(check the id; a private repo needs a token)") from None
    except Exception as e:  # noqa: BLE001
        if not _is_connection_error(e):
            raise
        hit = _cached_folder(name, repo_id, rev, cache)
        if hit:
            return (*hit, "cache-unreachable")
        raise HubUnreachable(f"the Hub at {endpoint} could not be reached ({_reason(e)}) and {where} "
                             f"is not in the local Hub cache ({cache})") from None
    sha = info.sha
    where = f"{repo_id}@{_short(rev)}" if rev == sha else f"{repo_id}@{rev} (commit {sha[:12]})"
    if info.siblings is not None:
        present = {s.rfilename for s in info.siblings}
        here = sorted(p.split("/", 1)[1] for p in present if p.startswith(f"{name}/"))
        missing = [f for f in REQUIRED_FILES if f"{name}/{f}" not in present]
        pickles = [f for f in here if f.lower().endswith(PICKLE_SUFFIXES)]
        if WEIGHTS_NAME in missing and pickles:
            raise UnsafeWeightsError(
                f"{where} has no {name}/{WEIGHTS_NAME}, only {', '.join(f'{name}/{p}' for p in pickles)}: pickle "
                f"checkpoints can run code when loaded and are never downloaded or opened")
        if missing:
            listing = f"{name}/ holds {here}" if here else f"there is no {name}/ folder"
            raise HubFileNotFound(f"{where} has no {', '.join(f'{name}/{m}' for m in missing)} ({listing})")

    # 3. download (only the published files) unless the cache has them, then check checksums
    hit = _cached_folder(name, repo_id, sha, cache)
    if hit:
        if rev != sha:
            _write_ref(cache, repo_id, rev, sha)
        return (*hit, "resolved")
    try:
        root = Path(snapshot_download(repo_id, revision=sha, cache_dir=cache, endpoint=endpoint, token=token,
                                      allow_patterns=[f"{name}/{f}" for f in FOLDER_FILES]))
    except Exception as e:  # noqa: BLE001
        size = re.search(r"should be of size (\d+) but has size (\d+)", str(e))
        if size:  # huggingface_hub's size check: the body was shorter/longer than the Hub announced
            raise HubCorruptDownload(f"the download of {name}/ from {where} was incomplete (received {size[2]} of "
                                     f"{size[1]} bytes); nothing partial was kept in the cache") from None
        if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
            raise HubFileNotFound(f"{where}: a file of {name}/ disappeared during the download "
                                  f"({_first_line(e, 120)})") from None
        if _is_connection_error(e) or _is_connection_error(e.__cause__) or isinstance(e, LocalEntryNotFoundError):
            raise HubUnreachable(f"the connection to the Hub at {endpoint} failed while downloading {name}/ from "
                                 f"{where} ({_reason(e.__cause__ or e)}); nothing partial was kept") from None
        raise HubLoadError(f"the download of {name}/ from {where} failed ({_first_line(e, 160)})") from e
    folder = root / name
    for f in REQUIRED_FILES:
        if not (folder / f).is_file():
            raise HubFileNotFound(f"{where} has no {name}/{f}")
    _verify_cached_files(folder, where)
    if rev != sha:  # remember branch/tag -> commit (cache refs/), so the cache serves `rev` when offline
        _write_ref(cache, repo_id, rev, sha)
    return folder, sha, "download"


def download_folder(name: str, repo_id: str, revision: str | None = None, cache_dir=None) -> Path:
    """Download <repo_id>/<name>/{config.json, model.safetensors, README.md} at `revision`; returns the folder."""
    return fetch_folder(name, repo_id, revision, cache_dir)[0]


# ---------------------------------------------------------------- loaders


def _shown_path(path: Path) -> str:
    """A path as shown to users: relative to the repository or the working directory when inside them,
    so pages and logs do not reveal the server's directory layout."""
    path = Path(path).resolve()
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return path.name if path.parent == path else f".../{path.parent.name}/{path.name}"


def load_model(name: str, *, weights_dir=None, hub_repo: str | None = None, revision: str | None = None,
               device="cpu", messages: list | None = None, hub_state: dict | None = None):
    """From the Hub when `hub_repo` is given (falling back to local weights on failure), else local.

    With `hub_repo` and no `revision`, the commit recorded for that repo in weights/hub.json is used
    (else the head of main). One line per model is appended to `messages`: where it came from, or
    why the Hub copy was not used. `hub_state` (a dict shared across calls, as load_pipelines does)
    remembers an unreachable Hub so later models use the cache only instead of waiting again.
    """
    messages = messages if messages is not None else []
    cls = _check_name(name)
    local = _shown_path(_weights_dir(weights_dir) / name)
    hub_problem = None
    if hub_repo:
        pin = hub_pin(weights_dir)
        rev = revision or (pin.get("revision") if pin.get("repo") == hub_repo else None)
        state = hub_state if hub_state is not None else {}
        folder = sha = None
        known_down = bool(state.get("unreachable"))
        try:
            folder, sha, how = fetch_folder(name, hub_repo, rev, offline=True if known_down else None)
            model = cls.from_pretrained(str(folder), map_location=str(device)).to(device)
        except HubUnreachable as e:
            state["unreachable"] = True
            hub_problem = (f"the Hub could not be reached (see above) and {hub_repo}@{_short(rev or 'main')} is "
                           f"not in the local Hub cache" if known_down and not _offline() else str(e))
        except HubLoadError as e:
            hub_problem = str(e)
        except Exception as e:  # noqa: BLE001 - reported, never fatal: the local weights remain
            if folder is not None:
                hub_problem = f"the Hub copy {hub_repo}@{sha[:12]} of {name} is unusable: {_first_line(e, 300)}"
            elif isinstance(e, UnsafeWeightsError):
                hub_problem = str(e)
            else:
                hub_problem = f"could not load from the Hub ({hub_repo}@{_short(rev or 'main')}): {_first_line(e)}"
        else:
            source = {"cache": "from the local Hub cache, no network needed",
                      "cache-offline": "from the local Hub cache (offline mode)",
                      "cache-unreachable": "from the local Hub cache (the Hub could not be reached)",
                      "resolved": f"{rev or 'main'} resolved on the Hub, files from the local Hub cache",
                      "download": "downloaded"}[how]
            if how == "cache-offline" and state.get("unreachable"):
                source = "from the local Hub cache (the Hub could not be reached)"
            pinned = "" if revision else " (pinned in hub.json)" if rev else " (head of main, not pinned)"
            messages.append(f"{name}: loaded from the Hub, {hub_repo}@{sha[:12]}{pinned}, {source}")
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
    if name not in PIPELINE_NAMES:
        raise ValueError(f"{name!r} is not a diffusion model; choose one of {', '.join(PIPELINE_NAMES)}")
    score = load_model(name, **kwargs)
    autoencoder = load_model("autoencoder", **kwargs) if score.in_channels != 1 else None
    return Pipeline(score, autoencoder, name=name)


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


# ---------------------------------------------------------------- publishing


def hub_pin(weights_dir=None) -> dict:
    """The {repo, revision, models} recorded by the last push, or {}."""
    path = _weights_dir(weights_dir) / PIN_FILE
    try:
        pin = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        log.warning("ignoring %s: not valid JSON", path)
        return {}
    return pin if isinstance(pin, dict) else {}


def record_pin(path: str | os.PathLike, repo_id: str, revision: str, models: dict[str, str]) -> dict:
    """Write {repo, revision, models: {name: commit that uploaded it}} to `path` atomically.
    `revision` (the newest commit) holds every model; entries recorded for another repo are dropped."""
    path = Path(path)
    try:
        pin = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        pin = {}
    if not isinstance(pin, dict) or pin.get("repo") != repo_id:
        pin = {}
    pin.update({"repo": repo_id, "revision": revision})
    pin.setdefault("models", {}).update(models)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(pin, indent=1) + "\n")
    os.replace(tmp, path)
    return pin


def verify_folder(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Refuse to publish a folder unless it holds only the published files, reloads strictly and gives
    finite outputs; returns the file names that will be uploaded."""
    folder = Path(folder)
    name = name or folder.name
    cls = _check_name(name)
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
    """Upload weights/<name>/ (config, safetensors, card only) to <repo_id>/<name>/ in one commit; returns the
    commit sha and (record=True) records {repo, revision, models} in the folder's parent hub.json."""
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
