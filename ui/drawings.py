"""Safe decoding of a drawing (issue 14): the header is read first (Pillow opens lazily) and refused above a stated
pixel cap or in any format but PNG / JPEG / WebP; the pixels are decoded at most at DECODE_EDGE on a side (JPEG's
draft mode decodes at a fraction of the size; other formats are shrunk right after decoding, before any float
copy); at most DECODE_SLOTS decodes run at once, whichever handler (or tab) asks. Peak memory per drawing is about
4 bytes x MAX_PIXELS (16 MiB at the cap), not ~55 bytes per pixel of whatever was sent."""
from __future__ import annotations

import threading
import warnings

import numpy as np
from PIL import Image

from .validation import bad

MAX_EDGE = 2048                       # the pixel cap: a drawing may be at most 2048 x 2048
MAX_PIXELS = MAX_EDGE * MAX_EDGE
FORMATS = ("PNG", "JPEG", "WEBP")     # the formats a drawing may be sent in (the Sketchpad sends PNG)
DECODE_EDGE = 280                     # decode at most this size: the canvas is 280 px, the digit ends at 28 px
DECODE_SLOTS = 2                      # drawings decoded at once, across every handler
SLOT_WAIT_S = 5.0                     # how long a decode waits for a slot before answering "busy"

_slots = threading.BoundedSemaphore(DECODE_SLOTS)


def open_drawing(path, *, max_edge: int = MAX_EDGE, edge: int = DECODE_EDGE) -> np.ndarray:
    """The image at `path` as float32 RGBA in [0, 1], at most `edge` pixels on its longer side (H, W, 4).
    Refused (a named gr.Error for `sketch`) before decoding when it is not PNG / JPEG / WebP or larger than
    `max_edge` on a side; decoding is bounded to DECODE_SLOTS at once."""
    if not _slots.acquire(timeout=SLOT_WAIT_S):
        raise bad("sketch", "could not be read now: the app is busy with other drawings, try again", "busy")
    try:
        return _decode(path, max_edge, edge)
    finally:
        _slots.release()


def _decode(path, max_edge: int, edge: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)   # never just warn: refuse
            img = Image.open(path, formats=FORMATS)                           # header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bad("sketch", f"must be at most {max_edge}x{max_edge} pixels", "a larger image") from None
    except Exception as e:  # noqa: BLE001 - any unreadable upload is the user's input error
        raise bad("sketch", f"could not be read as an image ({'/'.join(FORMATS)})", type(e).__name__) from None
    with img:
        w, h = img.size
        if w > max_edge or h > max_edge or w < 1 or h < 1:
            raise bad("sketch", f"must be at most {max_edge}x{max_edge} pixels", f"{w}x{h}")
        try:
            if img.format == "JPEG":
                img.draft("RGB", (edge, edge))          # DCT scaling: decode at 1/2, 1/4 or 1/8 size
            img.load()
            if getattr(img, "n_frames", 1) > 1:        # an animated PNG / WebP: its first frame only
                img.seek(0)
            if max(img.size) > edge:
                img = img.reduce(max(1, max(img.size) // edge))   # box reduction, uint8, before any float copy
            if max(img.size) > edge:
                img.thumbnail((edge, edge), Image.Resampling.BOX)
            rgba = img.convert("RGBA")
        except Exception as e:  # noqa: BLE001 - truncated / corrupt data is the user's input error
            raise bad("sketch", "could not be read as an image", type(e).__name__) from None
    return np.asarray(rgba, dtype=np.float32) / 255.0
