"""A strict, safetensors-only loading policy on top of `huggingface_hub.PyTorchModelHubMixin`.

`PyTorchModelHubMixin.from_pretrained` would fall back to a pickled `pytorch_model.bin` and loads
non-strictly by default. Here a model loads only from `model.safetensors`, with strict key and shape
checks and a finiteness check, and every failure names the file and what is wrong with it.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file

WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class UnsafeWeightsError(ValueError):
    """Raised for a weights file this project refuses to open (pickle formats)."""


class CorruptWeightsError(ValueError):
    """Raised for a safetensors file that is truncated, malformed, mismatched or non-finite."""


def refuse_pickle(path: str | os.PathLike) -> None:
    """Refuse pickle-based checkpoint formats by name, before any byte is read."""
    if str(path).lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeWeightsError(
            f"refusing to open {path}: pickle-based checkpoints (.pt/.pth/.bin/.ckpt/.pkl) can run code "
            "when loaded. Convert it to safetensors with a trusted script, then load model.safetensors.")


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Validate the 8-byte header length and JSON header before handing the file to safetensors."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptWeightsError(f"{path} is not a safetensors file: only {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CorruptWeightsError(f"{path} has an invalid safetensors header length ({n} bytes, file is {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CorruptWeightsError(f"{path} has a malformed safetensors header: {e}") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CorruptWeightsError(f"{path} is truncated: header promises {8 + n + end} bytes, file has {size}")


def load_state_dict_checked(model: torch.nn.Module, path: str | os.PathLike, device="cpu") -> torch.nn.Module:
    """Strictly load a safetensors file into `model`; refuses pickles, truncation, shape mismatch and NaN/inf."""
    refuse_pickle(path)
    check_safetensors_header(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CorruptWeightsError(f"could not read {path}: {e}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptWeightsError(f"{path} does not match {type(model).__name__}: missing keys {missing[:5]}, "
                                  f"unexpected keys {unexpected[:5]}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CorruptWeightsError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                                      f"{tuple(expected[key].shape)} (config.json and weights disagree)")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CorruptWeightsError(f"{path}: {key} holds NaN or inf values")
    model.load_state_dict(state, strict=True)
    return model


class SafeHubMixin(PyTorchModelHubMixin):
    """PyTorchModelHubMixin that loads only `model.safetensors`, strictly."""

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        if not strict:
            raise ValueError("non-strict loading is not supported: weights must match the config exactly")
        refuse_pickle(model_id)
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            path = Path(model_id) / WEIGHTS_NAME
            if not path.is_file():
                others = [p.name for p in Path(model_id).iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES)]
                hint = f" (found {others}: pickle formats are refused)" if others else ""
                raise FileNotFoundError(f"{path} not found{hint}")
        else:
            path = hf_hub_download(repo_id=model_id, filename=WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                   force_download=force_download, token=token, local_files_only=local_files_only)
        load_state_dict_checked(model, path, device=map_location)
        return model.eval()
