"""The revision-pin rule, in one place: which Hub commit to load.

`train.push` records the commit it uploaded in weights/hub.json as {repo, revision, models}. Loading from
a Hub repo then uses, in order: the revision asked for; else the commit hub.json pins *for that repo*;
else the head of main (not pinned: it can change under the app).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .registry import weights_dir as _weights_dir

log = logging.getLogger(__name__)

PIN_FILE = "hub.json"
# There is no default Hub repo: the repo comes from --hub-repo / HUB_REPO, or from the pin a push wrote
# (`pinned_repo`); the names a push or deploy writes are configured once, in diffusion/identity.py.


def hub_pin(weights_dir=None) -> dict:
    """The {repo, revision, models} recorded by the last push, or {}."""
    path = _weights_dir(weights_dir) / PIN_FILE
    try:
        pin = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        log.warning("ignoring %s: not valid JSON", path)
        return {}
    return pin if isinstance(pin, dict) else {}


def pinned_repo(weights_dir=None) -> str | None:
    """The Hub repo the last push recorded in hub.json (the repo these weights were published to), or None."""
    repo = hub_pin(weights_dir).get("repo")
    return repo if isinstance(repo, str) and repo else None


def resolve_revision(hub_repo: str | None, revision: str | None = None, weights_dir=None) -> str | None:
    """`revision`, else the commit hub.json pins for `hub_repo`, else None (the head of main)."""
    if not hub_repo or revision:
        return revision
    pin = hub_pin(weights_dir)
    return pin.get("revision") if pin.get("repo") == hub_repo else None


def pin_note(hub_repo: str, revision: str | None, weights_dir=None) -> str:
    """How the revision was chosen, for messages: '', ' (pinned in hub.json)' or ' (head of main, not pinned)'."""
    if revision:
        return ""
    return " (pinned in hub.json)" if resolve_revision(hub_repo, None, weights_dir) else " (head of main, not pinned)"


def record_pin(path: str | os.PathLike, repo_id: str, revision: str, models: dict[str, str],
               source_url: str | None = None) -> dict:
    """Write {repo, revision, models: {name: commit that uploaded it}[, source_url]} to `path` atomically.
    `revision` (the newest commit) holds every model; entries recorded for another repo are dropped;
    `source_url` (the code's git repository, for the cards' install line) is kept when given."""
    path = Path(path)
    try:
        pin = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        pin = {}
    if not isinstance(pin, dict) or pin.get("repo") != repo_id:
        pin = {}
    pin.update({"repo": repo_id, "revision": revision})
    if source_url:
        pin["source_url"] = source_url
    pin.setdefault("models", {}).update(models)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(pin, indent=1) + "\n")
    os.replace(tmp, path)
    return pin
