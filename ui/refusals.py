"""One bounded log line per refused request (issue 26): what was refused and why, at most one line per kind of
refusal every INTERVAL_S seconds; the repeats in between are counted and the count is written with the next line
of that kind ("... (37 more like this in the last 10 s)"). A flood of bad requests then writes a few short lines,
never a traceback each (200 malformed drawings once wrote 14 MB of tracebacks in 10 s).
"""
from __future__ import annotations

import logging
import sys
import threading
import time

INTERVAL_S = 10.0                 # at most one line per kind of refusal this often
MAX_LINE = 240                    # characters of detail per line

class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is written (the server's log; a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


logger = logging.getLogger("mnist_lab.refused")
if not logger.handlers:                      # the server's log is stderr; the app configures no logging itself
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s refused %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class RefusalLog:
    """Counts refusals by kind (`counts`, for benchmarks and tests) and logs them rate-limited (see module doc)."""

    def __init__(self, interval_s: float = INTERVAL_S, log: logging.Logger = logger):
        self.interval_s, self.log, self.lock = float(interval_s), log, threading.Lock()
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}          # kind -> when its last line was written
        self._held: dict[str, int] = {}            # kind -> refusals not written since

    def note(self, kind: str, detail: str = "", now: float | None = None) -> bool:
        """Count one refusal of `kind`; write a line unless one of this kind was written within interval_s.
        Returns whether a line was written."""
        now = time.monotonic() if now is None else now
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if now - self._last.get(kind, -float("inf")) < self.interval_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            held = self._held.pop(kind, 0)
            self._last[kind] = now
        more = f" ({held} more like this in the last {self.interval_s:.0f} s)" if held else ""
        text = " ".join(str(detail).split())            # one line, whatever the detail held
        self.log.info("%s: %s%s", kind, text[:MAX_LINE] + ("..." if len(text) > MAX_LINE else ""), more)
        return True


REFUSALS = RefusalLog()
