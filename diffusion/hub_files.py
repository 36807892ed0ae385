"""The files of a weights folder, and the formats this project never opens.

A weights folder (local or a Hub subfolder) is `save_pretrained` layout: config.json (the constructor arguments) and
model.safetensors. Pickle-based checkpoints (.pt/.pth/.bin/.ckpt/.pkl/...) can run code when loaded: they are refused
by name, before any byte is read, by the loader (hub_mixin.py) and the Hub reader (hub_download.py) alike.
"""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")


class UnsafeWeightsError(ValueError):
    """Raised for a weights file this project refuses to open (pickle formats)."""


def refuse_pickle(path: str | os.PathLike) -> None:
    """Refuse pickle-based checkpoint formats by name, before any byte is read."""
    if str(path).lower().rstrip("/\\").endswith(PICKLE_SUFFIXES):
        raise UnsafeWeightsError(
            f"refusing to open {path}: pickle-based checkpoints (.pt/.pth/.bin/.ckpt/.pkl) can run code "
            "when loaded. Convert it to safetensors with a trusted script, then load model.safetensors.")


def pickle_files(folder: str | os.PathLike) -> list[str]:
    """Names of pickle-format files in `folder` (for error messages; they are never opened)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
