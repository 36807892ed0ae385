"""Safe decoding of a drawing (issue 14, ui/drawings.py): refused from its header above the pixel cap or in another
format, decoded small, a few at a time."""
from __future__ import annotations

import tracemalloc

import gradio as gr
import pytest
from PIL import Image

from ui import drawings
from ui.pictures import sketch_to_digit


def _png(path, size, draw=True) -> str:
    img = Image.new("RGB", size, 0)
    if draw:
        w, h = size
        img.paste(255, (w // 3, h // 5, w // 3 + max(1, w // 10), 4 * h // 5))
    img.save(path, format="PNG")
    return str(path)


def test_a_huge_drawing_is_refused_from_its_header_before_decoding(tmp_path):
    big = _png(tmp_path / "big.png", (4000, 4000))            # ~20 KB on disk, 16 Mpx
    assert (tmp_path / "big.png").stat().st_size < 200_000
    tracemalloc.start()
    with pytest.raises(gr.Error, match=r"sketch .*at most 2048x2048"):
        sketch_to_digit({"composite": {"path": big}, "layers": []})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated to refuse a 4000x4000 drawing"


def test_a_drawing_at_the_cap_is_decoded_small(tmp_path):
    at_cap = _png(tmp_path / "cap.png", (2048, 2048))
    tracemalloc.start()
    x = sketch_to_digit({"composite": {"path": at_cap}, "layers": []})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.shape == (28, 28) and float(x.max()) > 0.5
    assert max(drawings.open_drawing(at_cap).shape[:2]) <= drawings.DECODE_EDGE    # never the full canvas in float
    assert peak < 64 * 2**20, f"{peak / 2**20:.1f} MiB at peak for a 2048x2048 drawing"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "PPM"])
def test_only_png_jpeg_and_webp_are_opened(tmp_path, fmt):
    path = tmp_path / "drawing.png"                                       # a .png name does not decide
    Image.new("RGB", (64, 64), 255).save(path, format=fmt)
    with pytest.raises(gr.Error, match=r"sketch .*PNG/JPEG/WEBP"):
        sketch_to_digit({"composite": {"path": str(path)}, "layers": []})


def test_jpeg_is_decoded_in_draft_mode(tmp_path):
    path = tmp_path / "d.jpg"
    img = Image.new("RGB", (2000, 2000), 0)
    img.paste(255, (600, 400, 800, 1600))
    img.save(path, format="JPEG")
    assert max(drawings.open_drawing(str(path)).shape[:2]) <= drawings.DECODE_EDGE


def test_drawing_decodes_run_a_few_at_a_time(tmp_path, monkeypatch):
    """Every caller (queued or not, any tab) shares DECODE_SLOTS; one that cannot get a slot is answered 'busy'."""
    path = _png(tmp_path / "d.png", (280, 280))
    monkeypatch.setattr(drawings, "SLOT_WAIT_S", 0.05)
    held = [drawings._slots.acquire(timeout=1) for _ in range(drawings.DECODE_SLOTS)]
    try:
        assert all(held)
        with pytest.raises(gr.Error, match="busy"):
            sketch_to_digit({"composite": {"path": path}, "layers": []})
    finally:
        for _ in held:
            drawings._slots.release()
    assert sketch_to_digit({"composite": {"path": path}, "layers": []}).shape == (28, 28)
