"""The stop registry: which running events should stop, and why.

The HTTP middleware (ui/limits.py) tells `STOPS` what it sees from outside the handlers: an event cancelled (POST
/cancel), a client's event stream opened or closed (GET queue/data, GET call/<api>/<event_id>), a /call job posted
(POST call/<api>, whose result stream must then be opened). The one guard every handler runs at each step
(ui/run_loop.py's `guard`, also a forward pre-hook on every score network) asks `why_stop` and ends the job:

- "cancelled": the event id was cancelled;
- "disconnected": the event's own stream, or its session's, closed after the job started and stayed closed for
  GONE_GRACE_S (a browser reconnecting its stream within that grace is not a disconnect);
- "result never read": a /call job whose result stream nobody opened within READ_GRACE_S of the POST's answer;
- "replaced by a newer request from the same visitor": a running job of a latest-wins endpoint (ui/fair_queue.py)
  whose visitor has sent a newer setting.

Every table is bounded (oldest entries first out) and thread-safe: handlers run on worker threads, the middleware
on the event loop.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

READ_GRACE_S = 1.0                # a /call job whose result nobody has started reading by then is abandoned
GONE_GRACE_S = 2.0                # a session with no open event stream this long after it closed is gone
REPLACED = "replaced by a newer request from the same visitor (only the latest setting is computed)"


class Stops:
    """What the middleware learns about events and clients, for the per-step guard (bounded, thread-safe)."""

    def __init__(self, limit: int = 4096):
        self.limit, self.lock = limit, threading.Lock()
        self.cancelled: OrderedDict[str, float] = OrderedDict()    # event id -> when
        self.replaced: OrderedDict[str, float] = OrderedDict()     # event id -> when a newer request replaced it
        self.started: OrderedDict[str, float] = OrderedDict()      # event id -> its first guarded step
        self.posted: OrderedDict[str, float] = OrderedDict()       # /call event id -> when posted
        self.streams: OrderedDict[str, list] = OrderedDict()       # session hash or event id -> [open, closed_at]

    def _put(self, table: OrderedDict, key, value) -> None:
        with self.lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > self.limit:
                table.popitem(last=False)

    def cancel(self, event_id: str) -> None:
        self._put(self.cancelled, event_id, time.monotonic())

    def replace(self, event_id: str) -> None:
        self._put(self.replaced, event_id, time.monotonic())

    def post(self, event_id: str) -> None:
        self._put(self.posted, event_id, time.monotonic())

    def stream(self, key: str, opened: bool) -> None:
        with self.lock:
            entry = self.streams.get(key, [0, 0.0])
            entry[0] += 1 if opened else -1
            if not opened:
                entry[1] = time.monotonic()
        self._put(self.streams, key, entry)

    def start(self, event_id: str) -> float:
        """When this event's first guarded step ran (now, the first time it is asked)."""
        with self.lock:
            t = self.started.get(event_id)
        if t is None:
            t = time.monotonic()
            self._put(self.started, event_id, t)
        return t

    def why_stop(self, event_id: str, session_hash: str | None, started: float) -> str | None:
        """'cancelled' / 'replaced by ...' / 'disconnected' / 'result never read', or None to go on."""
        now = time.monotonic()
        if event_id in self.cancelled:
            return "cancelled"
        if event_id in self.replaced:
            return REPLACED
        for key in (event_id, session_hash):
            entry = self.streams.get(key) if key else None
            if entry and entry[0] <= 0 and entry[1] > started and now - entry[1] > GONE_GRACE_S:
                return "disconnected"
        posted = self.posted.get(event_id)
        if posted is not None and event_id not in self.streams and now - posted > READ_GRACE_S:
            return "result never read"
        return None


STOPS = Stops()
