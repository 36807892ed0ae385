"""ui/pictures.py: the uint8 grid is diffusion.images.grid pixel for pixel; grids are sent at about SENT_PX and marked
for the page to upscale; the GIF's frame buffer renders only the frames it keeps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.images import grid
from ui.controls import IMG
from ui.pictures import GRID_PX, SENT_PX, UPSCALED, FrameBuffer, fast_grid, sent_grid, show_grid, upscaled


@pytest.mark.parametrize("b", [1, 2, 5, 16, 17, 64])
@pytest.mark.parametrize("scale, gap", [(1, 1), (2, 1), (3, 1), (4, 2)])
def test_fast_grid_is_the_library_grid_pixel_for_pixel(b, scale, gap):
    x = torch.rand(b, 28, 28, generator=torch.Generator().manual_seed(b)) * 1.4 - 0.2    # out of range: clamped
    ncol = math.ceil(math.sqrt(b))
    np.testing.assert_array_equal(fast_grid(x, ncol, scale, gap), grid(x, nrow=ncol, scale=scale, gap=gap))
    np.testing.assert_array_equal(fast_grid(x[:, None], ncol, scale, gap), grid(x, nrow=ncol, scale=scale, gap=gap))


def test_fast_grid_fills_empty_cells_and_gaps_with_the_gap_grey():
    out = fast_grid(torch.ones(3, 2, 2), ncol=2, scale=1, gap=1)     # 2 x 2 cells, the last one empty
    assert out.shape == (5, 5) and out.dtype == np.uint8
    grey = round(0.35 * 255)
    assert (out[:2, :2] == 255).all() and (out[3:, 3:] == grey).all() and (out[2, :] == grey).all()


@pytest.mark.parametrize("n, edge", [(1, 224), (4, 226), (16, 227), (25, 144), (64, 231)])
def test_sent_grids_are_about_half_the_shown_size_at_an_integer_scale(n, edge):
    """SENT_PX = GRID_PX / 2: 16 digits at 2x with a 1 px gap, which the page shows at 2x (today's 4x, 2 px gap)."""
    sent, shown = sent_grid(torch.zeros(n, 28, 28)), show_grid(torch.zeros(n, 28, 28))
    assert sent.shape == (edge, edge) and SENT_PX == GRID_PX // 2
    assert sent.size * 3 <= shown.size <= sent.size * 16


def test_upscaled_adds_the_css_class_and_keeps_the_others():
    kwargs = upscaled(IMG)
    assert kwargs["elem_classes"] == [*IMG["elem_classes"], UPSCALED] and "pixelated" in kwargs["elem_classes"]
    assert IMG["elem_classes"] == ["pixelated"]                         # the shared kwargs are not changed


def test_frame_buffer_renders_only_the_frames_it_keeps():
    rendered = []

    def frame(i):
        def make():
            rendered.append(i)
            return np.full((2, 2), i, np.uint8)
        return make

    buf = FrameBuffer(limit=10)
    for i in range(100):
        buf.add(frame(i), final=i == 99)
    assert rendered == []                                   # nothing rendered while the run goes on
    kept = [int(f[0, 0]) for f in buf.frames]
    assert kept[0] == 0 and kept[-1] == 99 and len(kept) <= 10
    assert kept[:-1] == list(range(0, 16 * len(kept[:-1]), 16))     # first, then every stride-th (16 after halving)
    assert rendered == kept                                  # each kept frame rendered once, no dropped one
    assert [int(f[0, 0]) for f in buf.frames] == kept and rendered == kept    # read again: not rendered again
    with pytest.raises(RuntimeError, match="already rendered"):
        buf.add(frame(100))


def test_the_trajectory_gif_holds_every_frame_exactly_and_holds_the_last():
    import io

    from PIL import Image

    from diffusion.images import gif_bytes

    rng = np.random.default_rng(0)
    frames = [(rng.random((40, 60)) * 255).astype(np.uint8) // 16 * 16 for _ in range(5)]   # <= 256 greys: lossless
    gif = Image.open(io.BytesIO(gif_bytes(frames, duration_ms=80, final_hold_ms=1200)))
    assert gif.n_frames == 5
    for i, frame in enumerate(frames):
        gif.seek(i)
        assert np.array_equal(np.asarray(gif.convert("L")), frame), i
        assert gif.info["duration"] == (1200 if i == 4 else 80)
    with pytest.raises(ValueError, match="no frames"):
        gif_bytes([])
