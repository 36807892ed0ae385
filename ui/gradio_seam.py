"""The one seam between this app and gradio's private internals.

Every use of a gradio API that is not part of its documented surface lives here, each with a comment saying why the
app needs it. tests/ui/test_gradio_seam.py exercises every function below against the installed gradio, so an upgrade
that moves or changes one of them fails there, loudly, instead of in a visitor's request. requirements.txt pins gradio
to the range those tests cover.
"""
from __future__ import annotations

from pathlib import Path


# ---------------------------------------------------------------- the running event

def current_event() -> tuple[str | None, str | None]:
    """(event_id, session_hash) of the event whose handler is running on this thread, or (None, None) outside one.

    Why private: the network's forward pre-hook (ui/lab.py's guard) must find the running job without a
    `gr.Request` argument threaded through every handler; gradio keeps it in context variables."""
    from gradio.context import LocalContext

    event_id = LocalContext.event_id.get(None)
    if event_id is None or not LocalContext.in_event_listener.get(False):
        return None, None
    request = LocalContext.request.get(None)
    return event_id, getattr(request, "session_hash", None)


def current_block():
    """The Blocks container being laid out (e.g. the gr.Tab a tab's layout runs inside), or None.

    Why private: a tab draws its first picture when it is selected, which needs the enclosing gr.Tab's `.select`."""
    import gradio as gr

    return gr.context.Context.block


# ---------------------------------------------------------------- gradio's folders

def upload_folder() -> Path:
    """Where gradio keeps uploaded files (a drawing's layers are read only from under it).

    Why private: gradio.utils.get_upload_folder is the only place the folder is computed (GRADIO_TEMP_DIR et al.)."""
    import gradio.utils as gradio_utils

    return Path(gradio_utils.get_upload_folder())


def cache_folder() -> Path:
    """Where gradio caches examples (presets are cached below it, so gradio's file route serves them).

    Why private: gradio.utils.get_cache_folder is the only place GRADIO_EXAMPLES_CACHE is resolved."""
    import gradio.utils as gradio_utils

    return Path(gradio_utils.get_cache_folder())
