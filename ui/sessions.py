"""Per-session state, bounded (issue 14): at most SESSION_CAPACITY sessions (least recently used dropped first), each
dropped after SESSION_IDLE_S without a request, and without the copy of every raw input gradio keeps for deep links
(closed here). The store itself subclasses gradio's private classes, so it lives in ui/gradio_seam.py; this module
holds the policy and installs it when the server starts (`lifespan`)."""
from __future__ import annotations

import contextlib

from . import gradio_seam

SESSION_CAPACITY = 256            # sessions whose state is kept (LRU); gradio's default is 10,000
SESSION_IDLE_S = 1800.0           # a session unused this long is dropped


def install_state_holder(app, capacity: int = SESSION_CAPACITY, idle_s: float = SESSION_IDLE_S):
    """The running app's session store becomes a bounded one (returned)."""
    return gradio_seam.install_state_holder(app, capacity, idle_s)


@contextlib.asynccontextmanager
async def lifespan(app):
    """At startup, before any request: the bounded session store replaces gradio's."""
    install_state_holder(app)
    yield
