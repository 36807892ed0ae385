"""A strict, safetensors-only loading policy on top of `huggingface_hub.PyTorchModelHubMixin`.

`PyTorchModelHubMixin.from_pretrained` would fall back to a pickled `pytorch_model.bin`, builds the
model from defaults when config.json is missing, and loads non-strictly by default. Here a model
loads only from a folder (or Hub repo) holding `config.json` + `model.safetensors`:

- pickle formats (.pt/.pth/.bin/.ckpt/.pkl) are refused by name before the path is opened, and a
  file named .safetensors whose bytes are a pickle or a torch.save zip is refused after reading
  8 bytes, before any parser sees it; nothing here ever calls `torch.load` or `pickle.load`;
- the safetensors header is checked (length, JSON, offsets) before the file is handed to safetensors,
  so truncated and oversized-header files fail with a message naming the file;
- config.json must exist and hold only the class's constructor arguments;
- keys, shapes and finiteness (no NaN/inf) are checked, then `load_state_dict(strict=True)`.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import struct
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file

from .hub_download import HubFileNotFound, fetch, hub_cache_dir, hub_endpoint  # noqa: F401  (re-exported)
from .hub_files import (CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, UnsafeWeightsError, pickle_files,  # noqa: F401
                        refuse_pickle)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CorruptWeightsError(ValueError):
    """Raised for a safetensors file that is truncated, malformed, mismatched or non-finite."""






def looks_like_pickle(head: bytes) -> bool:
    """head: a file's first 9 bytes. A torch.save zip starts with PK\\x03\\x04; a pickle (protocol >= 2) with \\x80 and
    its protocol byte. A safetensors file starts with its header length (u64 little-endian, so its first byte can be
    0x80 and its second 2..5 too: header lengths of 0x0280 + k * 0x10000 ...) and then the JSON header's '{' at
    byte 8, which no pickle has there (byte 8 is inside the frame length of protocol 4/5, and '{' is not an opcode)."""
    if head[:4] == b"PK\x03\x04":
        return True
    return head[:1] == b"\x80" and head[8:9] != b"{"


def check_safetensors_header(path: str | os.PathLike) -> dict:
    """Validate a safetensors file's framing before any parser sees it; returns the JSON header.

    Layout: 8-byte little-endian header length n, n bytes of JSON {name: {dtype, shape, data_offsets}},
    then the tensor bytes. Refuses pickles / torch.save zips, truncation, oversized or malformed headers.
    """
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        found = pickle_files(path.parent)
        hint = f" (the folder holds {found}: pickle formats are refused)" if found else ""
        raise FileNotFoundError(f"{path} not found{hint}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if looks_like_pickle(head):
            raise UnsafeWeightsError(
                f"refusing to open {path}: it is a pickle / torch.save archive, not safetensors "
                "(pickles can run code when loaded)")
        if len(head) < 8:
            raise CorruptWeightsError(f"{path} is not a safetensors file: only {size} bytes")
        (n,) = struct.unpack("<Q", head[:8])
        f.seek(8)
        if n > MAX_HEADER_BYTES:
            raise CorruptWeightsError(f"{path} has an oversized safetensors header: it claims {n} bytes "
                                      f"(limit {MAX_HEADER_BYTES}); the file is corrupt or not safetensors")
        if n > size - 8:
            raise CorruptWeightsError(f"{path} is truncated: its safetensors header claims {n} bytes but the "
                                      f"file has only {size - 8} after the length field")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CorruptWeightsError(f"{path} has a malformed safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path} has a malformed safetensors header: not a JSON object")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            expected = math.prod(int(s) for s in info["shape"]) * _DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{path} has a malformed safetensors header entry for {key!r}") from None
        if stop < begin or (expected and stop - begin != expected):
            raise CorruptWeightsError(f"{path}: {key!r} spans {stop - begin} bytes, its dtype and shape need "
                                      f"{expected}")
        end = max(end, stop)
    if 8 + n + end > size:
        raise CorruptWeightsError(f"{path} is truncated: the header promises {8 + n + end} bytes, the file has {size}")
    return header


def load_safetensors_checked(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """Header check, then safetensors' own parser; every failure names the file."""
    check_safetensors_header(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CorruptWeightsError(f"could not read {path}: {e}") from None


def load_state_dict_checked(model: torch.nn.Module, path: str | os.PathLike, device="cpu") -> torch.nn.Module:
    """Strictly load a safetensors file into `model`; refuses pickles, truncation, shape mismatch and NaN/inf."""
    state = load_safetensors_checked(path, device)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptWeightsError(f"{path} does not match {type(model).__name__}: missing keys {missing[:5]}, "
                                  f"unexpected keys {unexpected[:5]} (config.json and weights disagree?)")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CorruptWeightsError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                                      f"{tuple(expected[key].shape)} (config.json and weights disagree)")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CorruptWeightsError(f"{path}: {key} holds NaN or inf values; refusing to load it")
    model.load_state_dict(state, strict=True)
    return model


class SafeHubMixin(PyTorchModelHubMixin):
    """PyTorchModelHubMixin that loads only `config.json` + `model.safetensors`, strictly.

    `from_pretrained(folder)` or `from_pretrained("user/repo", revision=..., subfolder="pixel-cond")`.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, force_download: bool = False, token=None,
                        cache_dir=None, local_files_only: bool = False, revision: str | None = None,
                        subfolder: str | None = None, **model_kwargs):
        source = str(pretrained_model_name_or_path)
        refuse_pickle(source)  # before anything opens or downloads the path
        if os.path.isdir(source) or os.path.exists(source):
            folder = Path(source)
            if subfolder:
                folder = folder / subfolder
        else:
            folder = _download_repo_folder(source, subfolder, revision=revision, cache_dir=cache_dir, token=token,
                                           force_download=force_download, local_files_only=local_files_only)
        cls.check_folder(folder)
        return super().from_pretrained(str(folder), **model_kwargs)

    @classmethod
    def check_folder(cls, folder: Path) -> dict:
        """A folder with config.json (constructor arguments of this class only) and model.safetensors."""
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder: from_pretrained takes a folder holding {CONFIG_NAME} "
                                    f"and {WEIGHTS_NAME} (save_pretrained layout) or a Hub repo id")
        weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
        if not weights.is_file():
            found = pickle_files(folder)
            hint = f" (found {found}: pickle formats are refused)" if found else ""
            raise FileNotFoundError(f"{weights} not found{hint}")
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: the constructor arguments travel with the weights "
                                    f"(save_pretrained writes it)")
        try:
            config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptWeightsError(f"{config_path} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise CorruptWeightsError(f"{config_path} must hold a JSON object of constructor arguments")
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - params)
        if unknown:
            raise CorruptWeightsError(f"{config_path} has keys {unknown} that {cls.__name__} does not take "
                                      f"(is this the folder of a different model kind?)")
        return config

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        if not strict:
            raise ValueError("non-strict loading is not supported: weights must match the config exactly")
        refuse_pickle(model_id)
        if not os.path.isdir(model_id):  # from_pretrained above always resolves a folder first
            raise FileNotFoundError(f"{model_id} is not a folder")
        model = cls(**model_kwargs)
        load_state_dict_checked(model, Path(model_id) / WEIGHTS_NAME, device=map_location)
        return model.eval()


def _download_repo_folder(repo_id: str, subfolder: str | None, *, cache_dir=None, revision=None, token=None,
                          force_download: bool = False, local_files_only: bool = False) -> Path:
    """config.json + model.safetensors of a Hub repo (optionally a subfolder), through the one Hub reader
    (hub_download.fetch, on snapshot_download); their folder in the Hub cache."""
    try:
        folder, _, _ = fetch(repo_id, subfolder, revision, files=(CONFIG_NAME, WEIGHTS_NAME),
                             required=(CONFIG_NAME, WEIGHTS_NAME), cache_dir=cache_dir, token=token,
                             offline=True if local_files_only else None, force_download=force_download)
    except (HubFileNotFound, UnsafeWeightsError) as e:
        missing = getattr(e, "missing", None) or [WEIGHTS_NAME]
        where = f"{repo_id}@{revision or 'main'}" + (f" in {subfolder}/" if subfolder else "")
        filename = missing[0].rsplit("/", 1)[-1]
        extra = (" Pickle checkpoints such as pytorch_model.bin are never loaded: push model.safetensors."
                 if filename == WEIGHTS_NAME else "")
        raise FileNotFoundError(f"{where} has no {filename}.{extra}") from None
    return folder


def hash_tensor(h, name: str, t: torch.Tensor) -> None:
    """Feed `name`, dtype, shape and the raw bytes of `t` into the hashlib object `h` (any dtype, bf16 included)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def hash_state_dict(h, module: torch.nn.Module) -> None:
    """Feed every tensor of module.state_dict() (sorted by key) into `h`: a fingerprint of the weights themselves."""
    for key, t in sorted(module.state_dict().items()):
        hash_tensor(h, key, t)
