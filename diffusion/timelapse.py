"""A training time-lapse: the EMA model's samples for one fixed noise and fixed labels at every checkpoint.

Stored beside the weights as `timelapse.safetensors` (no pickle), each frame a uint8 grid source:
    images  (K, N, H, W) uint8   K checkpoints, N samples each (the same prior noise and labels every time)
    labels  (N,) int64           the digit asked for (-1 for an unconditional model)
    step    (K,) int64           optimizer step of the checkpoint
    wall_s  (K,) float64         training wall-clock seconds up to it (summed across resumes)
    loss    (K,) float64         training loss (mean of the last logged values) at it
safetensors does not compress: K * N * 784 bytes, so `MAX_BYTES` (1 MB) bounds K * N by thinning old frames
(40 digits per frame: up to 31 frames).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILENAME = "timelapse.safetensors"
MAX_BYTES = 1_000_000   # shipped beside the weights: a frame budget, oldest frames thinned first


@dataclass
class Timelapse:
    images: torch.Tensor   # (K, N, H, W) uint8
    labels: torch.Tensor   # (N,) int64
    step: torch.Tensor     # (K,) int64
    wall_s: torch.Tensor   # (K,) float64
    loss: torch.Tensor     # (K,) float64

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def frame(self, k: int) -> torch.Tensor:
        """(N, H, W) float in [0, 1] of checkpoint k."""
        if not 0 <= k < len(self):
            raise IndexError(f"frame {k} out of range: this time-lapse has {len(self)} frames")
        return self.images[k].float() / 255.0

    def append(self, images: torch.Tensor, step: int, wall_s: float, loss: float) -> "Timelapse":
        """A new time-lapse with one more frame; images (N, H, W) or (N, 1, H, W) in [0, 1]."""
        frame = _to_uint8(images)
        if frame.shape != self.images.shape[1:]:
            raise ValueError(f"frame shape {tuple(frame.shape)} differs from the recording's {tuple(self.images.shape[1:])}")
        keep = self.step < step   # a resumed run re-records a step it had passed: the newer frame wins
        return Timelapse(torch.cat([self.images[keep], frame[None]]), self.labels,
                         torch.cat([self.step[keep], torch.tensor([step])]),
                         torch.cat([self.wall_s[keep], torch.tensor([float(wall_s)], dtype=torch.float64)]),
                         torch.cat([self.loss[keep], torch.tensor([float(loss)], dtype=torch.float64)]))

    def thinned(self, max_bytes: int = MAX_BYTES) -> "Timelapse":
        """Drop every other frame (keeping the first and the last) until the images fit in max_bytes."""
        t = self
        while t.images.numel() > max_bytes and len(t) > 2:
            idx = sorted(set(range(0, len(t) - 1, 2)) | {len(t) - 1})
            idx_t = torch.tensor(idx)
            t = Timelapse(t.images[idx_t], t.labels, t.step[idx_t], t.wall_s[idx_t], t.loss[idx_t])
        return t

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".tmp-{path.name}")
        save_file({"images": self.images.contiguous(), "labels": self.labels, "step": self.step,
                   "wall_s": self.wall_s, "loss": self.loss}, str(tmp))
        os.replace(tmp, path)
        return path


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    images = images.detach().float().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def start(images: torch.Tensor, labels: torch.Tensor | None, step: int, wall_s: float, loss: float) -> Timelapse:
    """A one-frame time-lapse."""
    frame = _to_uint8(images)
    lab = labels.long().cpu() if labels is not None else torch.full((frame.shape[0],), -1, dtype=torch.long)
    return Timelapse(frame[None], lab, torch.tensor([step]), torch.tensor([float(wall_s)], dtype=torch.float64),
                     torch.tensor([float(loss)], dtype=torch.float64))


def load(path: str | os.PathLike) -> Timelapse:
    """Read a time-lapse file, checking that its tensors agree in shape."""
    from .hub_mixin import check_safetensors_header, refuse_pickle
    path = Path(path)
    refuse_pickle(path)
    check_safetensors_header(path)
    t = load_file(str(path))
    missing = {"images", "labels", "step", "wall_s", "loss"} - set(t)
    if missing:
        raise ValueError(f"{path} is not a time-lapse: missing {', '.join(sorted(missing))}")
    k, n = t["images"].shape[:2]
    if t["images"].dtype != torch.uint8 or t["images"].dim() != 4:
        raise ValueError(f"{path}: images must be (K, N, H, W) uint8, got {tuple(t['images'].shape)} {t['images'].dtype}")
    if t["labels"].shape != (n,) or any(t[key].shape != (k,) for key in ("step", "wall_s", "loss")):
        raise ValueError(f"{path}: labels/step/wall_s/loss do not match images {tuple(t['images'].shape)}")
    return Timelapse(t["images"], t["labels"], t["step"], t["wall_s"], t["loss"])


def record(path: str | os.PathLike, images: torch.Tensor, labels, step: int, wall_s: float, loss: float,
           max_bytes: int = MAX_BYTES) -> Timelapse:
    """Append one frame to the file at `path` (created if absent), thinning to max_bytes; returns the result."""
    path = Path(path)
    t = load(path).append(images, step, wall_s, loss) if path.is_file() else start(images, labels, step, wall_s, loss)
    t = t.thinned(max_bytes)
    t.save(path)
    return t
