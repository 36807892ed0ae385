"""Reading model cards (weights/<name>/README.md, or the Hub download cache) and the revision-pin rule.

The pin rule: an explicit revision wins; else the revision weights/hub.json pinned for that same repo; else none
(the head of main). `hub.load_model` follows the same rule when it downloads weights.
"""
from __future__ import annotations

import re
from pathlib import Path

from .hub import DEFAULT_WEIGHTS_DIR, hub_pin


def pinned_revision(hub_repo: str | None, revision: str | None, weights_dir=None) -> str | None:
    """`revision`, else the revision weights/hub.json pinned for `hub_repo` (None without a repo or a pin)."""
    if not hub_repo or revision:
        return revision
    pin = hub_pin(weights_dir)
    return pin.get("revision") if pin.get("repo") == hub_repo else None


def read_model_cards(names, weights_dir=None, hub_repo=None, revision=None) -> dict[str, str]:
    """{name: card text} from weights/<name>/README.md, or the Hub download cache (no request) when `hub_repo` is
    set, at `revision` or the pinned one."""
    revision = pinned_revision(hub_repo, revision, weights_dir)
    cards = {}
    for name in names:
        path = Path(weights_dir or DEFAULT_WEIGHTS_DIR) / name / "README.md"
        if hub_repo:
            try:
                from huggingface_hub import hf_hub_download
                path = Path(hf_hub_download(hub_repo, f"{name}/README.md", revision=revision, local_files_only=True))
            except Exception:  # noqa: BLE001 - fall back to the local card
                pass
        if path.is_file():
            cards[name] = path.read_text(encoding="utf-8", errors="replace")
    return cards


_METRIC_HEADING = re.compile(r"metric|evaluat|result|quality|accuracy|fid|performance|sample", re.I)


def card_metrics(text: str, max_chars: int = 4000) -> str:
    """The metrics part of a model card (markdown): front matter dropped, the sections whose heading
    speaks of metrics/evaluation/results kept (else the card's tables, else its start)."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"*(figure: \1)*", text)     # images are not served
    sections, current = [], None
    for line in text.splitlines():
        m = re.match(r"^(#{1,6})\s+(.*)", line)
        if m:
            current = [len(m.group(1)), m.group(2), []]
            sections.append(current)
        elif current is not None:
            current[2].append(line)
    kept, keep_level = [], None
    for level, heading, body in sections:
        if keep_level is not None and level <= keep_level:
            keep_level = None
        if keep_level is None and _METRIC_HEADING.search(heading):
            keep_level = level
        if keep_level is not None:
            kept.append("#" * max(level, 4) + " " + heading + "\n" + "\n".join(body).strip())
    out = "\n\n".join(kept).strip()
    if not out:
        tables = [line for line in text.splitlines() if line.lstrip().startswith("|")]
        out = "\n".join(tables) if tables else "*This model card has no evaluation section yet.*"
    return out[:max_chars] + ("\n\n*(truncated)*" if len(out) > max_chars else "")
