"""An upload budget (issue 26): per client address, at most RATE_BYTES uploaded per RATE_WINDOW_S (429 over it, with
when to retry); on disk, at most DISK_BUDGET bytes in gradio's upload folder: before an upload is let in, the oldest
files that no waiting or running job references, and that were not uploaded in the last PROTECT_S (a drawing is
uploaded just before the event that reads it), are deleted until the new one fits; when nothing may be deleted, 507.

40 distinct 5 MB uploads from one client were once accepted in 2.8 s and kept until gradio's hourly cleanup: a
Space's disk would fill in minutes.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path

from . import gradio_seam
from .event_checks import Refusal

RATE_BYTES = 20 * 2**20           # bytes one client address may upload per window
RATE_WINDOW_S = 60.0
DISK_BUDGET = 500 * 2**20         # bytes in gradio's upload folder, all clients together
PROTECT_S = 30.0                  # a file this young is never evicted (its event may not have joined yet)
RESCAN_S = 2.0                    # the folder is walked at most this often; uploads in between are added up


def referenced_paths(blocks) -> set[str]:
    """Every file path named in the data of a waiting or running job (a drawing's layers, an uploaded image)."""
    found: set[str] = set()

    def walk(value, depth=0):
        if depth > 8:
            return
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str):
                found.add(os.path.realpath(path))
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)
    for event, _running in gradio_seam.queue_jobs(blocks):
        walk(getattr(getattr(event, "data", None), "data", None))
    return found


class UploadBudget:
    """Rate per client address and bytes on disk (see module doc); thread-safe, called from the middleware."""

    def __init__(self, rate_bytes: int = RATE_BYTES, window_s: float = RATE_WINDOW_S, disk_budget: int = DISK_BUDGET,
                 protect_s: float = PROTECT_S, folder: Path | None = None):
        self.rate_bytes, self.window_s, self.disk_budget = int(rate_bytes), float(window_s), int(disk_budget)
        self.protect_s, self._folder = float(protect_s), folder
        self.sent: dict[str, deque] = {}             # address -> deque[(when, bytes)]
        self.lock = threading.Lock()
        self._usage, self._scanned, self.evicted = 0, -float("inf"), 0

    @property
    def folder(self) -> Path:
        return self._folder or gradio_seam.upload_folder()

    def _recent(self, address: str, now: float) -> int:
        window = self.sent.setdefault(address, deque())
        while window and now - window[0][0] > self.window_s:
            window.popleft()
        return sum(n for _, n in window)

    def admit(self, address: str, size: int, referenced=frozenset(), now: float | None = None) -> None:
        """Let an upload of `size` bytes from `address` in, or raise Refusal (429 over the rate, 507 no room)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            recent = self._recent(address, now)
            if recent + size > self.rate_bytes and recent > 0:
                wait = self.window_s - (now - self.sent[address][0][0])
                raise Refusal(429, f"Upload limit: at most {self.rate_bytes // 2**20} MB per "
                                   f"{self.window_s:.0f} s from one address ({recent / 2**20:.1f} MB so far). Retry in "
                                   f"about {max(1, round(wait))} s.", "upload rate")
            if size > self.disk_budget:
                raise Refusal(413, f"Upload too large: at most {self.disk_budget // 2**20} MB.", "upload too large")
            if self.usage() + size > self.disk_budget:
                self.evict(self.disk_budget - size, referenced)
                if self._usage + size > self.disk_budget:
                    raise Refusal(507, "The app's upload space is full of files in use right now. Retry in about "
                                       f"{self.protect_s:.0f} s.", "upload space full")
            self.sent[address].append((now, size))
            self._usage += size

    def record(self, address: str, declared: int, actual: int) -> None:
        """Correct the books once an upload's real size is known (a body without Content-Length counts here)."""
        with self.lock:
            if actual != declared:
                self.sent.setdefault(address, deque()).append((time.monotonic(), max(0, actual - declared)))
                self._usage += actual - declared

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for root, _dirs, names in os.walk(self.folder):
            for name in names:
                path = Path(root) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, path))
        return out

    def usage(self) -> int:
        """Bytes in the upload folder (walked at most every RESCAN_S; admitted uploads added in between)."""
        if time.monotonic() - self._scanned > RESCAN_S:
            self._usage = sum(size for _, size, _ in self._files())
            self._scanned = time.monotonic()
        return self._usage

    def evict(self, target: int, referenced=frozenset()) -> int:
        """Delete the oldest unreferenced files older than protect_s until at most `target` bytes remain; returns
        how many were deleted."""
        files = sorted(self._files())
        total, cutoff, dropped = sum(size for _, size, _ in files), time.time() - self.protect_s, 0
        for mtime, size, path in files:
            if total <= target:
                break
            if mtime > cutoff or os.path.realpath(path) in referenced:
                continue
            try:
                path.unlink()
                total -= size
                dropped += 1
                if not any(path.parent.iterdir()):
                    path.parent.rmdir()
            except OSError:
                continue
        self._usage, self._scanned, self.evicted = total, time.monotonic(), self.evicted + dropped
        return dropped
