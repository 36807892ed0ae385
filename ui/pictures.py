"""Pictures for the page: digits upscaled with nearest-neighbour (crisp pixels) into grids with a thin gap,
captioned GIF frames, a labelled strip, a bounded frame buffer, and a drawing turned into an MNIST digit.

What is sent is no bigger than it needs to be: the streamed grids (`sent_grid`) go out at about SENT_PX (a small
integer scale of 28 px per digit) and the browser upscales them to the box (ui/style.css: `object-fit: contain` with
`image-rendering: pixelated`, so the pixels stay crisp); GIF frames are rendered once, at the end, for the frames the
GIF keeps (FrameBuffer)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .drawings import open_drawing
from .validation import bad

GRID_PX, GIF_PX = 460, 230    # target edge of an upscaled grid as shown on the page / in the GIF
SENT_PX = GRID_PX // 2        # target edge of a grid as sent: the page shows it ~2x, nearest-neighbour (CSS)
GAP_VALUE = 0.35              # grey of the gaps between digits (as diffusion.images.grid)
UPSCALED = "upscaled"         # CSS class of a page image sent small and upscaled by the browser (ui/style.css)
MAX_LAYERS = 16              # layers of a drawing looked at (the Sketchpads here have one)
PREVIEW_FRAMES = 40           # previews decoded per run (every k-th step), and the GIF's frame budget


def show_grid(images: torch.Tensor, target_px: int = GRID_PX) -> np.ndarray:
    """(B, 28, 28) in [0, 1] -> a square-ish uint8 grid about `target_px` wide, nearest-neighbour upscaled; the same
    pixels as diffusion.images.grid (ncol = ceil(sqrt(B)), scale = target_px // (ncol * 28), gap = scale // 2), made
    in uint8 (quantise at 28 px, then repeat): ~0.3 ms instead of ~16 ms for 16 digits at 460 px."""
    ncol = math.ceil(math.sqrt(images.shape[0]))
    scale = max(1, target_px // (ncol * images.shape[-1]))
    return fast_grid(images, ncol, scale, gap=max(1, scale // 2))


def sent_grid(images: torch.Tensor) -> np.ndarray:
    """The grid as sent to a page image (about SENT_PX wide; the page upscales it): show_grid at SENT_PX."""
    return show_grid(images, SENT_PX)


def upscaled(image_kwargs: dict) -> dict:
    """gr.Image keyword arguments (ui/controls.IMG) for an image sent small (`sent_grid`): the UPSCALED class added,
    so that the page fills the box with it (nearest-neighbour, with the "pixelated" class)."""
    return {**image_kwargs, "elem_classes": [*image_kwargs.get("elem_classes", []), UPSCALED]}


def fast_grid(images: torch.Tensor | np.ndarray, ncol: int, scale: int, gap: int = 1,
              gap_value: float = GAP_VALUE) -> np.ndarray:
    """(B, H, W) (or (B, 1, H, W)) in [0, 1] -> (rows*(H*scale+gap)-gap, ncol*(W*scale+gap)-gap) uint8, row-major,
    empty cells and gaps `gap_value`: diffusion.images.grid's layout and values."""
    imgs = torch.as_tensor(images).detach().float().cpu()
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    b, h, w = imgs.shape
    nrows = math.ceil(b / ncol)
    u8 = (imgs.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)                # (B, H, W), quantised once
    fill = np.uint8(gap_value * 255 + 0.5)
    cells = np.full((nrows * ncol, h * scale + gap, w * scale + gap), fill, np.uint8)
    cells[:b, : h * scale, : w * scale] = u8.repeat(scale, axis=1).repeat(scale, axis=2)
    # (rows, cols, H', W') -> (rows, H', cols, W') -> one picture; drop the trailing gap
    out = cells.reshape(nrows, ncol, *cells.shape[1:]).transpose(0, 2, 1, 3)
    out = out.reshape(nrows * cells.shape[1], ncol * cells.shape[2])
    return np.ascontiguousarray(out[: out.shape[0] - gap, : out.shape[1] - gap])


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
    row = fast_grid(images, images.shape[0], scale, gap=2, gap_value=1.0)
    canvas = Image.new("L", (row.shape[1], row.shape[0] + 30), 255)
    canvas.paste(Image.fromarray(row), (0, 0))
    draw, cell, font = ImageDraw.Draw(canvas), 28 * scale + 2, _font(22)
    for k, text in enumerate(labels):
        width = draw.textlength(text, font=font)
        draw.text((k * cell + (28 * scale - width) / 2, row.shape[0] + 3), text, fill=0, font=font)
    return np.asarray(canvas)


class FrameBuffer:
    """GIF frames of a trajectory, at most `limit`: when full, every other frame is dropped (the last kept). So the
    GIF holds the first step, every stride-th step and the final one, evenly spaced along the trajectory (it replays
    at its own pace, one frame per 100 ms, so every frame it holds is seen). `make_frame` is called only for the frames
    kept to the end, when `frames` is first read: a frame dropped on the way is never rendered."""

    def __init__(self, limit: int = PREVIEW_FRAMES + 1):
        self.limit, self.stride, self._seen = limit, 1, 0
        self._pending: list = []                 # make_frame callables of the frames kept so far
        self._frames: list[np.ndarray] | None = None

    def add(self, make_frame, final: bool = False) -> None:
        if self._frames is not None:
            raise RuntimeError("FrameBuffer: frames were already rendered; add every frame before reading them")
        keep = final or self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return
        self._pending.append(make_frame)
        if not final and len(self._pending) >= self.limit:   # room is always left for the final frame
            self._pending = self._pending[::2]
            self.stride *= 2

    @property
    def frames(self) -> list[np.ndarray]:
        """The kept frames, rendered (once)."""
        if self._frames is None:
            self._frames, self._pending = [make() for make in self._pending], []
        return self._frames


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
