"""ui/image_cache.py: an image sent twice is never rewritten while a browser may be reading it."""
from __future__ import annotations

import os
import threading
import time

import gradio as gr
import numpy as np
from gradio import processing_utils
from PIL import Image

from ui import gradio_seam, image_cache


def _noise_image(seed: int = 0, size: int = 700) -> Image.Image:
    """Incompressible, so its PNG is ~1.5 MB and a rewrite takes long enough for a reader to meet it."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_the_same_image_twice_keeps_the_file(tmp_path):
    img = _noise_image(size=64)
    path = image_cache.save_pil_to_cache(img, str(tmp_path), format="png")
    assert open(path, "rb").read() == image_cache.encode_image(img, "png")
    os.utime(path, ns=(0, 0))                                   # as if written long ago
    before = os.stat(path)
    assert image_cache.save_pil_to_cache(img, str(tmp_path), format="png") == path
    after = os.stat(path)
    assert after.st_mtime_ns == 0 and after.st_ino == before.st_ino     # not rewritten
    assert after.st_atime_ns > 0                                # touched: delete_cache sees it as in use
    other = image_cache.save_pil_to_cache(_noise_image(1, 64), str(tmp_path), format="png")
    assert other != path and os.path.isfile(other)
    assert not [p for p in tmp_path.rglob(".*")]                # no staging file left behind


def test_pngs_are_sent_at_zlib_level_1_with_the_same_pixels(tmp_path):
    import io

    digits = Image.fromarray((np.random.default_rng(0).random((230, 230)) > 0.85).astype(np.uint8) * 255)
    data = image_cache.encode_image(digits, "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(digits))            # lossless
    # the IDAT stream's zlib header names the level class: 0x01 = fastest (levels 0-1); PIL's default 6 is 0x9c
    assert data[data.index(b"IDAT") + 4:][:2] == b"\x78\x01"
    assert len(data) < 2 * len(processing_utils.encode_pil_to_bytes(digits, "png"))
    tagged = digits.copy()
    tagged.info["note"] = "kept"                                          # metadata: gradio's encoder, which keeps it
    assert Image.open(io.BytesIO(image_cache.encode_image(tagged, "png"))).info.get("note") == "kept"
    assert image_cache.encode_image(digits, "webp") == processing_utils.encode_pil_to_bytes(digits, "webp")


def test_a_reader_never_sees_a_partial_file_while_it_is_sent_again(tmp_path):
    """A FileResponse stats the file, then streams it: what it reads must match the size it declared."""
    img = _noise_image()
    path = image_cache.save_pil_to_cache(img, str(tmp_path), format="png")
    expected = open(path, "rb").read()
    stop = threading.Event()

    def send_again():
        while not stop.is_set():
            image_cache.save_pil_to_cache(img, str(tmp_path), format="png")

    writer = threading.Thread(target=send_again)
    writer.start()
    try:
        deadline = time.monotonic() + 1.0
        reads = 0
        while time.monotonic() < deadline:
            with open(path, "rb") as f:
                declared = os.fstat(f.fileno()).st_size
                body = f.read()
            assert len(body) == declared == len(expected) and body == expected
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 5


def test_the_app_installs_it_for_gradio_images(app_demo):
    """After build_demo, gr.Image's own postprocess path (numpy -> save_img_array_to_cache) goes through it."""
    assert gradio_seam.pil_cache_writer() is image_cache.save_pil_to_cache
    grid = np.random.default_rng(0).random((56, 56))
    image = gr.Image(format="png")
    first = image.postprocess(grid).path
    os.utime(first, ns=(0, 0))
    assert image.postprocess(grid).path == first and os.stat(first).st_mtime_ns == 0
