"""Helpers and fixtures shared by test_hub.py and test_safe_loading.py: tiny models, weights folders,
a malicious pickle, and a fake Hub wired into the environment. Import the fixtures by name."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from factories import tiny_model  # noqa: F401  (re-exported for test_hub / test_safe_loading)
from fakehub import FakeHub

def make_weights(root: Path, names, seed: int = 0) -> Path:
    """root/<name>/{config.json, model.safetensors, README.md} for each name; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        folder = root / name
        tiny_model(name, seed).save_pretrained(folder)
        (folder / "README.md").write_text(f"# {name}\n\nTiny test weights (seed {seed}).\n")
    return root


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Evil:
    """Unpickling this creates `marker`: what a malicious checkpoint could do (or worse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"net.weight": Evil(marker)}, protocol=4)


def evil_torch_zip(marker: Path, tmp: Path) -> bytes:
    """What `torch.save(state_dict)` of a booby-trapped state dict looks like (a zip holding data.pkl)."""
    path = tmp / "evil_torch_save.pt"
    torch.save({"net.weight": Evil(marker)}, path)
    return path.read_bytes()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake Hub; HF_ENDPOINT points at it, the Hub cache and HF_HOME are per-test, a token is set.

    huggingface_hub reads HF_HUB_DISABLE_XET and HF_HUB_OFFLINE at import time, so the constants are
    patched too; diffusion.hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE when called.
    """
    from huggingface_hub import constants
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
        fake.cache = tmp_path / "hf_cache"
        yield fake
        assert not fake.errors, f"the fake Hub hit a bug: {fake.errors}"
