"""Output images reach the browser as files in gradio's cache, one folder per hash of the encoded bytes. Gradio
(6.31, `processing_utils.save_pil_to_cache`) rewrites that file in place whenever the same image is sent again,
and Generate sends its final grid twice (once with the summary, once more with the GIF). A browser still fetching
the file from the first message then reads it while it is truncated and refilled: the response is shorter than
the Content-Length it declared (h11 "Too much data for declared Content-Length") and the <img> stays broken.

`write_images_once()` swaps in a writer that leaves an existing file alone (same folder = same bytes) and writes a
new one under a temporary name renamed into place, the policy gradio already follows for files
(`save_file_to_cache`). A re-sent image only has its access time touched, which also updates its ctime, the age
`delete_cache` goes by, so a copy handed out again is not swept on its first use's schedule.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from . import gradio_seam


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio's `save_pil_to_cache` contract (the path of the cached file), without ever rewriting a served file."""
    encode, hash_bytes = gradio_seam.pil_cache_tools()
    data = encode(img, format)
    folder = Path(cache_dir) / hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    try:
        os.utime(target, ns=(time.time_ns(), target.stat().st_mtime_ns))    # already there: touch, keep bytes
        return str(target)
    except FileNotFoundError:
        pass
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, target)        # atomic: a reader sees the old file or the whole new one
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(target)


def write_images_once() -> None:
    """Install the writer above (idempotent), through the seam (gradio_seam.replace_pil_cache_writer)."""
    gradio_seam.replace_pil_cache_writer(save_pil_to_cache)
