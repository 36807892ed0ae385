"""The metrics part of a model card, for display. Reading cards (`read_model_cards`) lives in diffusion.hub and the
revision-pin rule (`resolve_revision`, re-exported here as `pinned_revision`) in diffusion.pinning: one place each.
"""
from __future__ import annotations

import re

from .hub import read_model_cards
from .pinning import resolve_revision as pinned_revision

__all__ = ["card_metrics", "pinned_revision", "read_model_cards"]

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
