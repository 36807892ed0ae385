"""Fast pictures of the 2-D toy world, drawn with numpy + PIL (a few ms, where a matplotlib figure takes ~0.5 s on a
busy 2-core CPU): a density heatmap over the square [-L, L]^2 with a colour bar, arrows for a vector field, particle
paths and points, a title and labelled axes. Used for every streamed frame of the score-field tab."""
from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps  # the colour map only (no figure, no renderer)
from PIL import Image, ImageDraw

from .pictures import _font

LEFT, BOTTOM, TOP, BAR = 44, 34, 24, 58     # margins (px): y ticks + label, x ticks + label, title, colour bar


def ticks(lim: float) -> list[float]:
    """About five round tick values inside [-lim, lim]."""
    raw = 2 * lim / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    k = math.floor(lim / step)
    return [i * step for i in range(-k, k + 1)]


class Panel:
    """One square plot of side `px` pixels showing data coordinates [-lim, lim]^2 (x1 right, x2 up)."""

    def __init__(self, lim: float, px: int = 340, title: str = "", cmap: str = "magma"):
        self.lim, self.px, self.cmap = float(lim), px, cmap
        self.img = Image.new("RGB", (LEFT + px + BAR, TOP + px + BOTTOM), "white")
        self.draw = ImageDraw.Draw(self.img)
        self.draw.text((LEFT, 4), title, fill="black", font=_font(13))
        self.area = Image.new("RGB", (px, px), "black")        # the plot area: drawing is clipped to it
        self.pen = ImageDraw.Draw(self.area)

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) data coordinates -> (N, 2) pixels of the plot area."""
        s = self.px / (2 * self.lim)
        return np.stack([(pts[:, 0] + self.lim) * s, (self.lim - pts[:, 1]) * s], 1)

    def heatmap(self, values: np.ndarray, label: str, vmax: float | None = None, gamma: float = 0.5) -> None:
        """values (G, G) on the grid `grid_points(lim, G)` (row 0 at the top), coloured by (v / vmax)^gamma,
        with a colour bar labelled `label` and its end values."""
        vmax = float(values.max()) if vmax is None else vmax
        level = np.clip(values / max(vmax, 1e-300), 0, 1) ** gamma
        rgb = (colormaps[self.cmap](level)[..., :3] * 255).astype(np.uint8)
        self.area.paste(Image.fromarray(rgb).resize((self.px, self.px), Image.Resampling.BILINEAR), (0, 0))
        # colour bar: the same map from 0 (bottom) to vmax (top), end values written beside it
        x0 = LEFT + self.px + 8
        bar = (colormaps[self.cmap](np.linspace(1, 0, self.px) ** 1)[:, :3] * 255).astype(np.uint8)
        self.img.paste(Image.fromarray(np.repeat(bar[:, None], 10, 1)), (x0, TOP))
        f = _font(10)
        self.draw.text((x0 + 12, TOP), f"{vmax:.2g}", fill="black", font=f)
        self.draw.text((x0 + 12, TOP + self.px - 12), "0", fill="black", font=f)
        self.draw.text((x0 + 12, TOP + self.px // 2 - 20), label, fill="black", font=f)

    def arrows(self, pos: np.ndarray, vec: np.ndarray, colour=(120, 220, 255)) -> None:
        """A vector at each position (N, 2): direction exact, length ~ sqrt(|v|) scaled so the longest spans 90% of
        the spacing of a 15 x 15 grid (the field's size varies over orders of magnitude)."""
        norm = np.linalg.norm(vec, axis=1)
        length = np.sqrt(norm / max(norm.max(), 1e-300)) * 0.9 * self.px / 15
        unit = vec / np.maximum(norm, 1e-300)[:, None]
        start = self.to_px(pos)
        end = start + length[:, None] * unit * np.array([1, -1])          # canvas y points down
        for (a, b), (c, d), ln, (ux, uy) in zip(start, end, length, unit):
            if ln < 1.5:
                continue
            self.pen.line([(a, b), (c, d)], fill=colour, width=1)
            h, back = min(4.0, ln / 2), np.array([-ux, uy])              # arrow head: two short strokes
            for ang in (0.5, -0.5):
                r = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) @ back
                self.pen.line([(c, d), (c + h * r[0], d + h * r[1])], fill=colour, width=1)

    def paths(self, tracks: np.ndarray, colour) -> None:
        """tracks (T, N, 2): one polyline per particle."""
        for k in range(tracks.shape[1]):
            xy = self.to_px(tracks[:, k])
            self.pen.line([tuple(p) for p in xy], fill=colour, width=1)

    def points(self, pts: np.ndarray, colour, r: float = 2.0) -> None:
        for x, y in self.to_px(pts):
            self.pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)

    def finish(self, xlabel: str = "x1", ylabel: str = "x2") -> np.ndarray:
        """Frame, ticks and axis labels drawn over the plot; the panel as (H, W, 3) uint8."""
        d, f, px = self.draw, _font(10), self.px
        self.img.paste(self.area, (LEFT, TOP))
        d.rectangle([LEFT, TOP, LEFT + px, TOP + px], outline="black")
        for v in ticks(self.lim):
            x, y = self.to_px(np.array([[v, v]]))[0] + (LEFT, TOP)
            d.line([(x, TOP + px), (x, TOP + px + 4)], fill="black")
            d.text((x - 8, TOP + px + 5), f"{v:g}", fill="black", font=f)
            d.line([(LEFT - 4, y), (LEFT, y)], fill="black")
            d.text((2, y - 6), f"{v:g}", fill="black", font=f)
        d.text((LEFT + px // 2 - 6, TOP + px + 19), xlabel, fill="black", font=_font(11))
        d.text((2, TOP - 14), ylabel, fill="black", font=_font(11))
        return np.asarray(self.img)


def grid_points(lim: float, g: int) -> np.ndarray:
    """(g * g, 2) points of a g x g grid over [-lim, lim]^2, row-major from the top row (x2 = +lim) down."""
    c = (np.arange(g) + 0.5) / g * 2 * lim - lim
    xx, yy = np.meshgrid(c, c[::-1])
    return np.stack([xx.ravel(), yy.ravel()], 1)


def side_by_side(panels: list[np.ndarray], gap: int = 10) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    out = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    return np.concatenate([x for p in out for x in (p, spacer)][:-1], axis=1)


def line_chart(xs: np.ndarray, ys: np.ndarray, title: str, xlabel: str, ylabel: str, mark: int | None = None,
               size: tuple[int, int] = (520, 250)) -> np.ndarray:
    """A line chart (H, W, 3) uint8 with ticks on both axes, labelled, and point `mark` (an index) ringed in red."""
    w, h = size
    img = Image.new("RGB", (w, h), "white")
    d, f = ImageDraw.Draw(img), _font(10)
    left, right, top, bottom = 56, 14, 36, 36
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    x_lo, x_hi = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    y_lo, y_hi = float(ys.min()), float(ys.max())
    pad = 0.06 * (y_hi - y_lo or abs(y_hi) or 1)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    to = lambda x, y: (left + (x - x_lo) / (x_hi - x_lo) * (w - left - right),          # noqa: E731
                       top + (y_hi - y) / (y_hi - y_lo) * (h - top - bottom))
    d.text((left, 5), title, fill="black", font=_font(12))
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in np.linspace(0, 1, 5):
        xv, yv = x_lo + frac * (x_hi - x_lo), y_lo + frac * (y_hi - y_lo)
        px, _ = to(xv, y_lo)
        _, py = to(x_lo, yv)
        d.line([(px, h - bottom), (px, h - bottom + 4)], fill="black")
        d.text((px - 12, h - bottom + 5), f"{xv:.4g}", fill="black", font=f)
        d.line([(left - 4, py), (left, py)], fill="black")
        d.text((4, py - 6), f"{yv:.4g}", fill="black", font=f)
    d.text(((left + w - right) // 2 - 20, h - 14), xlabel, fill="black", font=_font(11))
    d.text((4, top - 18), ylabel, fill="black", font=_font(11))
    pts = [to(x, y) for x, y in zip(xs, ys)]
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    for p in pts:
        d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(31, 119, 180))
    if mark is not None:
        x, y = pts[mark]
        d.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(214, 39, 40), width=2)
        d.line([(x, top), (x, h - bottom)], fill=(214, 39, 40))
    return np.asarray(img)
