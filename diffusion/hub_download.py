"""The one Hub reader: a folder of a Hub repo at a revision, through `huggingface_hub.snapshot_download`.

snapshot_download owns revision resolution (branch/tag -> commit, recorded in the cache's refs/), the
cache layout, offline mode (HF_HUB_OFFLINE / local_files_only) and the cached copy it serves when the
Hub cannot be reached. On top of it this module keeps the project's strict policy:

1. a full commit sha that is complete in the local Hub cache loads with no network request at all; so
   does any revision when offline and cached;
2. otherwise a dry run of snapshot_download resolves the revision and lists the folder, downloading
   nothing: a missing repo, revision or file each give their own error, and a folder that holds only
   pickle checkpoints is refused before any byte of it is downloaded (only config.json,
   model.safetensors and the card are ever asked for);
3. snapshot_download then fetches the missing files, and every file is checked against the Hub's
   checksum (the ETag the cache names its blob by: sha256 for LFS files, git blob sha1 otherwise),
   which huggingface_hub itself does not check; a mismatching file is removed from the cache.

HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE are read when a function is called (not only when
huggingface_hub is imported), so they can be set after import.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .hub_files import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, UnsafeWeightsError

log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
LOAD_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)


class HubLoadError(Exception):
    """A Hub download that failed for a reason a person can act on; str(e) is that reason."""


class HubUnreachable(HubLoadError):
    pass


class HubRepoNotFound(HubLoadError):
    pass


class HubRevisionNotFound(HubLoadError):
    pass


class HubFileNotFound(HubLoadError, FileNotFoundError):
    """`missing`: the required files (paths in the repo) that the revision lacks."""

    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = missing or []


class HubCorruptDownload(HubLoadError):
    pass


def hub_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub.constants.ENDPOINT is read once, at import)."""
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir(cache_dir=None) -> str:
    """`cache_dir`, else HF_HUB_CACHE / HF_HOME as set now, else huggingface_hub's default."""
    from huggingface_hub import constants
    if cache_dir:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def is_offline() -> bool:
    from huggingface_hub import constants
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def short_revision(revision: str) -> str:
    """A commit sha abbreviated for messages; branch and tag names as they are."""
    return revision[:12] if _SHA.fullmatch(revision) else revision


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit]}" if text else type(e).__name__


def _reason(e: BaseException) -> str:
    """Short cause of a failed request: 'HTTP 503 Service Unavailable', 'ConnectError: [Errno 111] ...'."""
    from huggingface_hub.errors import HfHubHTTPError
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason_phrase}".strip()
    return first_line(e, 100)


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


def _join(subfolder: str | None, name: str) -> str:
    return f"{subfolder.strip('/')}/{name}" if subfolder else name


def verify_cached_files(folder: Path, names, where: str) -> None:
    """Check each cached file against the ETag its blob is named by (snapshots/<sha>/<path> -> ../../blobs/<etag>;
    sha256 for LFS files, git blob sha1 otherwise). A mismatch deletes the blob and the snapshot link, then
    raises HubCorruptDownload. Copies (no symlink support) and unknown layouts are skipped."""
    from huggingface_hub.utils.sha import git_hash, sha_fileobj
    for fname in names:
        link = folder / fname
        if not link.is_symlink():
            continue
        blob = Path(os.path.normpath(link.parent / os.readlink(link)))
        etag = blob.name.lower()
        if blob.parent.name != "blobs" or not _ETAG.fullmatch(etag):
            continue
        if not blob.is_file():
            link.unlink(missing_ok=True)
            raise HubCorruptDownload(f"{folder.name}/{fname} from {where} is a dangling link in the Hub cache; "
                                     f"removed it")
        with open(blob, "rb") as f:
            got = sha_fileobj(f).hex() if len(etag) == 64 else git_hash(f.read())
        if got != etag:
            blob.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
            raise HubCorruptDownload(
                f"{folder.name}/{fname} from {where} does not match the Hub's checksum (expected {etag[:12]}..., "
                f"got {got[:12]}...): the download was corrupted; it was removed from the cache")


def _cached(repo_id: str, revision: str, subfolder: str | None, files, required, cache: str) -> tuple[Path, str] | None:
    """(folder, commit sha) of a complete, checksum-verified cached copy, with no network request; else None."""
    from huggingface_hub import snapshot_download
    try:
        root = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True,
                                      allow_patterns=[_join(subfolder, f) for f in files]))
    except Exception as e:  # noqa: BLE001 - not cached, or cached incompletely
        log.debug("no usable cached copy of %s@%s: %s", repo_id, revision, first_line(e))
        return None
    folder = root / subfolder if subfolder else root
    if not all((folder / f).is_file() for f in required):
        return None
    try:
        verify_cached_files(folder, files, f"{repo_id}@{root.name[:12]}")
    except HubCorruptDownload as e:
        log.warning("%s", e)
        return None
    return folder, root.name


def fetch(repo_id: str, subfolder: str | None = None, revision: str | None = None, *, files=LOAD_FILES,
          required=REQUIRED_FILES, cache_dir=None, token=None, offline: bool | None = None,
          force_download: bool = False) -> tuple[Path, str, str]:
    """Download `files` of <repo_id>/<subfolder>/ at `revision`: (folder, commit sha, how), how in
    {"cache", "cache-offline", "cache-unreachable", "resolved", "download"}. Raises HubLoadError subclasses
    (or UnsafeWeightsError for a pickle-only folder) with a message that names repo, revision and file.
    `offline=None` follows HF_HUB_OFFLINE; True uses the cache only."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (DryRunError, EntryNotFoundError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    rev = revision or "main"
    cache, endpoint = hub_cache_dir(cache_dir), hub_endpoint()
    where = f"{repo_id}@{short_revision(rev)}"
    label = f"{subfolder}/" if subfolder else "the files"

    # 1. a pinned commit, or offline: the cache alone, no request
    offline = is_offline() if offline is None else offline
    if (_SHA.fullmatch(rev) or offline) and not force_download:
        hit = _cached(repo_id, rev, subfolder, files, required, cache)
        if hit:
            return (*hit, "cache-offline" if offline else "cache")
    if offline:
        mode = "offline mode is on (HF_HUB_OFFLINE=1)" if is_offline() else "working offline"
        raise HubUnreachable(f"{mode} and {where} is not in the local Hub cache ({cache})")

    # 2. resolve the revision and look the wanted files up: snapshot_download's dry run downloads nothing
    kwargs = dict(cache_dir=cache, endpoint=endpoint, token=token, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
    patterns = [_join(subfolder, f) for f in files]
    try:
        listing = snapshot_download(repo_id, revision=rev, dry_run=True, allow_patterns=patterns, **kwargs)
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ if isinstance(e, DryRunError) and e.__cause__ is not None else e
        if isinstance(cause, RevisionNotFoundError):
            raise HubRevisionNotFound(f"the Hub repository {repo_id!r} has no revision {rev!r} "
                                      f"(no such commit, branch or tag)") from None
        if isinstance(cause, RepositoryNotFoundError):
            raise HubRepoNotFound(f"the Hub repository {repo_id!r} was not found at {endpoint} "
                                  f"(check the id; a private repo needs a token)") from None
        if not _is_connection_error(cause):
            raise HubLoadError(f"could not look up {label} of {where} ({first_line(cause, 160)})") from e
        hit = None if force_download else _cached(repo_id, rev, subfolder, files, required, cache)
        if hit:
            return (*hit, "cache-unreachable")
        raise HubUnreachable(f"the Hub at {endpoint} could not be reached ({_reason(cause)}) and {where} "
                             f"is not in the local Hub cache ({cache})") from None
    present = {i.filename[len(_join(subfolder, "")):]: i for i in listing if i.filename in patterns}
    sha = listing[0].commit_hash if listing else rev
    if listing and rev != sha:
        where = f"{repo_id}@{rev} (commit {sha[:12]})"
    missing = [f for f in required if f not in present]
    if missing:
        _raise_missing(repo_id, subfolder, sha, where, missing, endpoint, token)
    wanted = [f for f in files if f in present]

    # 3. download what the cache lacks (only the wanted files), then check every file's checksum
    if all(present[f].is_cached for f in wanted) and not force_download:
        hit = _cached(repo_id, sha, subfolder, wanted, required, cache)
        if hit:
            return (*hit, "resolved")
    try:
        root = Path(snapshot_download(repo_id, revision=rev, allow_patterns=[_join(subfolder, f) for f in wanted],
                                      force_download=force_download, **kwargs))
    except Exception as e:  # noqa: BLE001
        size = re.search(r"should be of size (\d+) but has size (\d+)", str(e))
        if size:  # huggingface_hub's size check: the body was shorter/longer than the Hub announced
            raise HubCorruptDownload(f"the download of {label} from {where} was incomplete (received {size[2]} of "
                                     f"{size[1]} bytes); nothing partial was kept in the cache") from None
        if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
            raise HubFileNotFound(f"{where}: a file of {label} disappeared during the download "
                                  f"({first_line(e, 120)})") from None
        if _is_connection_error(e) or _is_connection_error(e.__cause__) or isinstance(e, LocalEntryNotFoundError):
            raise HubUnreachable(f"the connection to the Hub at {endpoint} failed while downloading {label} from "
                                 f"{where} ({_reason(e.__cause__ or e)}); nothing partial was kept") from None
        raise HubLoadError(f"the download of {label} from {where} failed ({first_line(e, 160)})") from e
    folder = root / subfolder if subfolder else root
    for f in required:
        if not (folder / f).is_file():
            raise HubFileNotFound(f"{where} has no {_join(subfolder, f)}", [_join(subfolder, f)])
    verify_cached_files(folder, wanted, where)
    return folder, root.name, "download"


def _raise_missing(repo_id, subfolder, sha, where, missing, endpoint, token):
    """The revision lacks required files: say what the folder holds instead (one listing request, names only;
    no file is fetched), refusing a folder that holds only pickle checkpoints."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    try:
        entries = HfApi(endpoint=endpoint, token=token).list_repo_tree(repo_id, path_in_repo=subfolder or None,
                                                                        revision=sha)
        here = sorted(e.path.rsplit("/", 1)[-1] for e in entries if isinstance(e, RepoFile))
    except Exception:  # noqa: BLE001 - no such folder, or the listing failed: report what is known
        here = []
    pickles = [f for f in here if f.lower().endswith(PICKLE_SUFFIXES)]
    if WEIGHTS_NAME in missing and pickles:
        raise UnsafeWeightsError(
            f"{where} has no {_join(subfolder, WEIGHTS_NAME)}, only {', '.join(_join(subfolder, p) for p in pickles)}: "
            f"pickle checkpoints can run code when loaded and are never downloaded or opened")
    if subfolder:
        listed = f"{subfolder}/ holds {here}" if here else f"there is no {subfolder}/ folder"
    else:
        listed = f"it holds {here}"
    raise HubFileNotFound(f"{where} has no {', '.join(_join(subfolder, m) for m in missing)} ({listed})",
                          [_join(subfolder, m) for m in missing])


def read_cached_file(repo_id: str, path: str, revision: str | None = None, cache_dir=None) -> Path | None:
    """A file of a Hub repo from the local Hub cache only (no request), or None."""
    from huggingface_hub import snapshot_download
    try:
        root = Path(snapshot_download(repo_id, revision=revision or "main", cache_dir=hub_cache_dir(cache_dir),
                                      local_files_only=True, allow_patterns=[path]))
    except Exception:  # noqa: BLE001
        return None
    return root / path if (root / path).is_file() else None
