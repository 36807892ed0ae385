"""Pictures for the page: digits upscaled with nearest-neighbour (crisp pixels) into grids with a thin gap,
captioned GIF frames, a labelled strip, a bounded frame buffer, and a drawing turned into an MNIST digit."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from diffusion.images import grid

from .drawings import open_drawing
from .validation import bad

GRID_PX, GIF_PX = 460, 230    # target edge of an upscaled grid on the page / in the GIF
MAX_LAYERS = 16              # layers of a drawing looked at (the Sketchpads here have one)
PREVIEW_FRAMES = 40           # previews decoded per run (every k-th step), and the GIF's frame budget


def show_grid(images: torch.Tensor, target_px: int = GRID_PX) -> np.ndarray:
    """(B, 28, 28) in [0, 1] -> a square-ish uint8 grid about `target_px` wide, nearest-neighbour upscaled."""
    ncol = math.ceil(math.sqrt(images.shape[0]))
    scale = max(1, target_px // (ncol * images.shape[-1]))
    return grid(images, nrow=ncol, scale=scale, gap=max(1, scale // 2))


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def captioned(panels: list[np.ndarray], caption: str, gap: int = 8) -> np.ndarray:
    """Panels (uint8 H x W, same H) side by side, with a caption bar underneath (a GIF frame)."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("L", (w, h + 18), 255)
    x = 0
    for p in panels:
        canvas.paste(Image.fromarray(p), (x, 0))
        x += p.shape[1] + gap
    ImageDraw.Draw(canvas).text((4, h + 3), caption, fill=0, font=_font(12))
    return np.asarray(canvas)


def labelled_strip(images: torch.Tensor, labels: list[str], scale: int = 4) -> np.ndarray:
    """(N, 28, 28) in a row, each with a short label centred underneath."""
    row = grid(images, nrow=images.shape[0], scale=scale, gap=2, gap_value=1.0)
    canvas = Image.new("L", (row.shape[1], row.shape[0] + 30), 255)
    canvas.paste(Image.fromarray(row), (0, 0))
    draw, cell, font = ImageDraw.Draw(canvas), 28 * scale + 2, _font(22)
    for k, text in enumerate(labels):
        width = draw.textlength(text, font=font)
        draw.text((k * cell + (28 * scale - width) / 2, row.shape[0] + 3), text, fill=0, font=font)
    return np.asarray(canvas)


class FrameBuffer:
    """GIF frames of a trajectory, at most `limit`: when full, every other frame is dropped (the last kept)."""

    def __init__(self, limit: int = PREVIEW_FRAMES + 1):
        self.limit, self.stride, self.frames, self._seen = limit, 1, [], 0

    def add(self, make_frame, final: bool = False) -> None:
        keep = final or self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return
        self.frames.append(make_frame())
        if not final and len(self.frames) >= self.limit:   # room is always left for the final frame
            self.frames = self.frames[::2]
            self.stride *= 2


def sketch_to_digit(payload, root: str | Path | None = None) -> torch.Tensor:
    """A Sketchpad value (raw EditorData dict) -> (28, 28) in [0, 1], MNIST-style: the ink's bounding box
    fitted into 20 x 20 and centred by its centre of mass (LeCun et al. 1998's preprocessing).
    With `root`, the image must lie inside it (gradio's upload folder: gradio checks this too). The image is opened
    by `drawings.open_drawing`: at most 2048 x 2048, PNG / JPEG / WebP, decoded at <= 280 px, a few at a time."""
    if not isinstance(payload, dict):
        raise bad("sketch", "must be a drawing (an image-editor value)", payload)
    composite = payload.get("composite") or {}
    layers = payload.get("layers") or []
    if not isinstance(layers, list):
        raise bad("sketch", "must be a drawing (an image-editor value)", layers)
    layers = [layer for layer in layers[:MAX_LAYERS] if layer]
    path = composite.get("path") if isinstance(composite, dict) else None
    if not path and layers:
        path = layers[-1].get("path") if isinstance(layers[-1], dict) else None
    if path and (not isinstance(path, str) or len(path) > 4096 or "\0" in path):
        raise bad("sketch", "must be an image uploaded to this app", "a malformed path")
    if not path:
        raise bad("sketch", "is empty: draw a digit first (or choose 'test digit')", "nothing drawn")
    if root is not None and not Path(path).resolve().is_relative_to(Path(root).resolve()):
        raise bad("sketch", "must be an image uploaded to this app", "another path")
    img = open_drawing(path)        # header checked first, PNG/JPEG/WebP only, decoded small (ui/drawings.py)
    # ink = how far each pixel is from the background colour (a corner), alpha included
    bg = np.median(np.stack([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]]), axis=0)
    rgb_a = img[..., :3] * img[..., 3:], bg[:3] * bg[3]
    ink = np.maximum(np.abs(rgb_a[0] - rgb_a[1]).max(-1), np.abs(img[..., 3] - bg[3]))
    ys, xs = np.nonzero(ink > 0.1)
    if len(ys) == 0:
        raise bad("sketch", "is empty: draw a digit first (or choose 'test digit')", "blank canvas")
    crop = ink[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    s = 20.0 / max(h, w)
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    small = np.asarray(small, dtype=np.float32) / 255.0
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top: top + small.shape[0], left: left + small.shape[1]] = small
    # shift so the centre of mass sits at the centre
    yy, xx = np.mgrid[:28, :28]
    mass = out.sum()
    dy, dx = int(round(13.5 - (yy * out).sum() / mass)), int(round(13.5 - (xx * out).sum() / mass))
    out = np.roll(out, (dy, dx), axis=(0, 1))
    return torch.from_numpy(out).clamp(0, 1)
