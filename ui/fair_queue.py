"""Fair queueing (issue 26): one visitor cannot crowd out the rest.

- At most MAX_JOBS_PER_SESSION events waiting or running per session, and MAX_JOBS_PER_CLIENT per client address
  (behind the Space's proxy, the forwarded address: see `client_address`); over that, a 429 that says so and when
  to retry, never a bare "Queue is full".
- Latest wins on the endpoints a slider drives (LATEST_WINS: Live, the score field, the time-lapse frame, the forward
  process): a new request from a session (or, for /call without a session, from a client address) replaces its own
  older request: a waiting one ends at once, a running one at its next guarded step (ui/stops.py), both with
  "replaced by a newer request", and neither counts against the visitor's share. A burst of 200 /live calls
  therefore ends with the newest setting computed, not refused, however many sampling jobs run at once.
- Round robin: each waiting line (a concurrency group) is ordered by how many jobs the same visitor already has
  ahead of it (running or waiting), so a second visitor's request waits at most for the one job running now, not
  behind a first visitor's whole burst.
"""
from __future__ import annotations

import ipaddress
import threading
from collections import Counter

from . import gradio_seam
from .event_checks import Refusal
from .stops import REPLACED, STOPS

MAX_JOBS_PER_SESSION = 4          # events one session may have waiting or running (a page load fires 3 at once)
MAX_JOBS_PER_CLIENT = 8           # events one client address may have waiting or running, over all its sessions
LATEST_WINS = ("live", "score_field", "timelapse_frame", "forward_diffusion")
RETRY_AFTER_S = 5                 # the Retry-After a refusal suggests (seconds)


def _private(host: str) -> bool:
    """Not a globally routable address: loopback, a private network, link-local, a documentation range."""
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def client_address(headers, peer: str | None) -> str:
    """The visitor's address. A direct peer with a public address is the visitor. A peer on loopback or a private
    network is a proxy (the Space's, or a test's loopback client): then the visitor is the right-most public address
    in X-Forwarded-For, the one that proxy appended (entries to its left are whatever the client sent, and may be
    forged); without one, the peer itself. `headers`: a mapping with lower-case str or bytes keys."""
    peer = peer or "unknown"
    if not _private(peer):
        return peer
    raw = headers.get("x-forwarded-for", headers.get(b"x-forwarded-for", "")) if headers else ""
    raw = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw or "")
    for hop in reversed([h.strip() for h in raw.split(",") if h.strip()]):
        if not _private(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer                       # a malformed entry where the proxy's should be: trust the peer
    return peer


def event_owner(event) -> tuple[str | None, str]:
    """(session, client address) of a queued event: session None when the request carried no session hash (a plain
    /call, whose event takes its own id as session)."""
    request = getattr(event, "request", None)
    peer = getattr(getattr(request, "client", None), "host", None)
    address = client_address({k.lower(): v for k, v in getattr(request, "headers", {}).items()}, peer)
    session = event.session_hash if event.session_hash != getattr(event, "_id", None) else None
    return session, address


def _visitor(session: str | None, address: str) -> str:
    return f"session:{session}" if session else f"client:{address}"


class FairQueue:
    """Admission by session and client address, latest-wins replacement, round-robin order (see module doc).
    `admit` runs on the event loop before gradio queues a request; `release` after; `reorder` once it is queued."""

    def __init__(self, per_session: int = MAX_JOBS_PER_SESSION, per_client: int = MAX_JOBS_PER_CLIENT,
                 latest_wins=LATEST_WINS):
        if per_session < 1 or per_client < 1:
            raise ValueError(f"per_session and per_client must be >= 1, got {per_session}, {per_client}")
        self.per_session, self.per_client, self.latest_wins = int(per_session), int(per_client), tuple(latest_wins)
        self.joining: Counter = Counter()       # requests admitted but not yet in gradio's queue, by visitor key
        self.replaced = 0
        self.lock = threading.Lock()

    def admit(self, blocks, fn, session: str | None, address: str) -> list[str]:
        """Refuse (Refusal 429) a request over its session's or address's share; first replace the visitor's own
        waiting request for a latest-wins endpoint. Returns the keys reserved (hand them to `release`)."""
        jobs = [(e, running, *event_owner(e)) for e, running in gradio_seam.queue_jobs(blocks)]
        if fn.api_name in self.latest_wins:
            for event, running, e_session, e_address in jobs:
                same = e_session == session if session else (e_session is None and e_address == address)
                # by api_name: a browser session's events carry its own copy of the BlockFunction
                if getattr(event.fn, "api_name", None) != fn.api_name or not same:
                    continue
                if running:                  # stops at its next guarded step; its slot is free a step later
                    STOPS.replace(event._id)
                    self.replaced += 1
                elif gradio_seam.drop_waiting(blocks, event, REPLACED[0].upper() + REPLACED[1:] + ".", "Replaced"):
                    self.replaced += 1
            alive = {id(e) for e, _ in gradio_seam.queue_jobs(blocks)}
            jobs = [j for j in jobs if id(j[0]) in alive and j[0]._id not in STOPS.replaced]
        keys = ["all", f"address:{address}"] + ([f"session:{session}"] if session else [])
        waiting, capacity = sum(1 for j in jobs if not j[1]), gradio_seam.queue_capacity(blocks)
        if capacity is not None and waiting + self.joining["all"] >= capacity:
            raise Refusal(503, f"Queue is full: {waiting} requests are waiting (at most {capacity}) behind the ones "
                               f"running. Retry in about {RETRY_AFTER_S} s.", "queue full")
        with self.lock:
            by_session = sum(1 for *_, s, _a in jobs if session and s == session) + \
                (self.joining[f"session:{session}"] if session else 0)
            by_address = sum(1 for *_, a in jobs if a == address) + self.joining[f"address:{address}"]
            if session and by_session >= self.per_session:
                raise Refusal(429, f"This session already has {by_session} requests waiting or running, the most one "
                                   f"session may hold (so that one visitor cannot fill the queue). Retry when one of "
                                   f"them has finished (in about {RETRY_AFTER_S} s), or cancel one.", "session share")
            if by_address >= self.per_client:
                raise Refusal(429, f"Your address already has {by_address} requests waiting or running, the most one "
                                   f"client may hold (so that one visitor cannot fill the queue). Retry when one of "
                                   f"them has finished (in about {RETRY_AFTER_S} s).", "client share")
            self.joining.update(keys)
        return keys

    def release(self, keys: list[str]) -> None:
        with self.lock:
            self.joining.subtract(keys)
            for key in keys:
                if self.joining[key] <= 0:
                    del self.joining[key]

    @staticmethod
    def reorder(blocks) -> None:
        """Round robin in every waiting line: a waiting event's turn is how many jobs its visitor has running in
        the same group or waiting ahead of it; lines are stably sorted by turn (FIFO among equal turns)."""
        running = Counter(_visitor(*event_owner(e)) for e, is_running in gradio_seam.queue_jobs(blocks) if is_running)

        def turns(line):
            seen = Counter(running)
            out = {}
            for event in line:
                key = _visitor(*event_owner(event))
                out[id(event)] = seen[key]
                seen[key] += 1
            return out

        gradio_seam.reorder_waiting(blocks, turns)
