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


# ---------------------------------------------------------------- event functions and their inputs

def running_blocks(scope):
    """The Blocks a request's ASGI scope is served by (None outside gradio's app, e.g. a bare Starlette in tests).

    Why private: Starlette puts the app in scope["app"]; `App.get_blocks()` is gradio's own accessor on its
    FastAPI subclass, which the middleware needs to check a request against the handler it names."""
    app = scope.get("app")
    get_blocks = getattr(app, "get_blocks", None)
    try:
        return get_blocks() if get_blocks is not None else None
    except Exception:  # noqa: BLE001 - gradio raises when no Blocks is attached yet: nothing to check against
        return None


def event_functions(blocks) -> dict:
    """{fn_index: BlockFunction} of a built Blocks (each has .api_name, .inputs, .queue, .fn, .concurrency_id).

    Why private: the HTTP checks (ui/event_checks.py) must find the handler a request names, before gradio runs it,
    to refuse malformed data with a named 4xx instead of a traceback; gradio keeps its handlers in `Blocks.fns`."""
    return blocks.fns


def function_for(blocks, api_name: str | None = None, fn_index=None):
    """The BlockFunction a request names (by api_name for /call, /run; by fn_index for /queue/join), or None."""
    fns = event_functions(blocks)
    if api_name is None:
        return fns.get(fn_index) if isinstance(fn_index, int) and not isinstance(fn_index, bool) else None
    return next((fn for fn in fns.values() if fn.api_name == api_name), None)


def api_inputs(fn) -> list:
    """The inputs a /call client sends (gradio fills the ones it hides from the API, e.g. gr.State, itself).

    Why private: `Block.skip_api` is how gradio's routes decide this (routes.prepare_simple_api_data)."""
    return [block for block in fn.inputs if not getattr(block, "skip_api", False)]


def checked_inputs(fn, api_only: bool = False) -> list[tuple[int, object]]:
    """[(position in the request's data, component)] of the inputs whose sent value gradio validates: not gr.State
    (kept server-side) and not a prop input (a dict of component props); api_only: positions among api_inputs(fn).

    Why private: `Block.stateful` and `BlockFunction.component_prop_inputs` decide this in blocks.preprocess_data."""
    props = set(getattr(fn, "component_prop_inputs", ()) or ())
    blocks = api_inputs(fn) if api_only else list(fn.inputs)
    indexes = [fn.inputs.index(b) for b in blocks]
    return [(pos, b) for pos, (b, i) in enumerate(zip(blocks, indexes))
            if not getattr(b, "stateful", False) and i not in props]


def payload_error(block, value) -> str | None:
    """Why `value` cannot be `block`'s input as sent over HTTP (None when it can): the block's own data model
    (e.g. a Sketchpad value must be an EditorData dict whose files carry `meta`), and a Dataset's index.

    Why private: `Component.data_model` and the `validate_meta` context are how gradio itself validates a payload
    (blocks.preprocess_data), and a Dataset's samples are `raw_samples`; checking first turns a traceback into a
    named refusal."""
    import gradio as gr
    from pydantic import ValidationError

    if value is None:
        return None
    if isinstance(block, gr.Dataset):
        n = len(getattr(block, "raw_samples", None) or [])
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            return f"must be a preset index from 0 to {n - 1}"
        return None
    model = getattr(block, "data_model", None)
    if model is None:
        return None
    try:
        model.model_validate(value, context={"validate_meta": True})
    except ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        return f"is not a valid {type(block).__name__} value ({where}: {first.get('msg', 'invalid')})"
    except Exception as e:  # noqa: BLE001 - any other failure to validate is still the sender's malformed value
        return f"is not a valid {type(block).__name__} value ({type(e).__name__})"
    return None


def error_payload(message: str, title: str) -> dict:
    """What gradio sends a client for a failed event (an "error" message with a title), for `message`.

    Why private: gradio.utils.error_payload is how the queue turns a gr.Error into the message a client shows."""
    import gradio as gr
    import gradio.utils as gradio_utils

    return gradio_utils.error_payload(gr.Error(message, title=title, print_exception=False), False)


# ---------------------------------------------------------------- the queue

def event_queue(blocks):
    """The Blocks' queue (gradio.queueing.Queue), or None before `.queue()` / launch.

    Why private: fair queueing (ui/fair_queue.py) reads who holds which place and reorders waiting events; gradio
    has no public hook for admission or ordering."""
    return getattr(blocks, "_queue", None)


def queue_jobs(blocks) -> list[tuple[object, bool]]:
    """Every event waiting or running in the queue, as (event, running). An event has .session_hash, .fn (its
    BlockFunction), .request (the fastapi Request that joined), ._id."""
    queue = event_queue(blocks)
    if queue is None:
        return []
    jobs = [(event, False) for q in list(queue.event_queue_per_concurrency_id.values()) for event in list(q.queue)]
    jobs += [(event, True) for batch in list(queue.active_jobs) if batch for event in batch]
    return jobs


def queue_capacity(blocks) -> int | None:
    """How many events may wait in the queue (`Blocks.queue(max_size=...)`; None: unbounded)."""
    queue = event_queue(blocks)
    return None if queue is None else queue.max_size


def reorder_waiting(blocks, turns) -> None:
    """Stably reorder every waiting line (one per concurrency group) by `turns(line)[id(event)]`, smallest first.
    The line is sorted in place, on the event loop (gradio takes from the front of these lists)."""
    queue = event_queue(blocks)
    for line in [] if queue is None else [q.queue for q in queue.event_queue_per_concurrency_id.values()]:
        if len(line) > 1:
            order = turns(line)
            line[:] = sorted(line, key=lambda event: order.get(id(event), 0))


def drop_waiting(blocks, event, message: str, title: str) -> bool:
    """Take a waiting (not yet started) event out of the queue and end it for its client with `message` (shown as
    an error titled `title`). False when the event had already started or gone.

    Why private: the queue's lines and its per-session message queues are gradio internals; `/cancel` does the same
    (routes.cancel_event) but answers with an empty success, which would leave a client without a reason."""
    from gradio.server_messages import ProcessCompletedMessage

    queue = event_queue(blocks)
    if queue is None:
        return False
    line = queue.event_queue_per_concurrency_id.get(event.concurrency_id)
    if line is None or event not in line.queue:
        return False
    line.queue.remove(event)
    queue.event_ids_to_events.pop(event._id, None)
    queue.send_message(event, ProcessCompletedMessage(output=error_payload(message, title), success=False))
    return True


# ---------------------------------------------------------------- session state

def lean_state_classes():
    """(LeanSessionState, BoundedStateHolder): gradio's per-session store, bounded (see ui/sessions.py).

    Why private: gradio.state_holder's SessionState keeps a copy of every block's config and every raw input per
    session (for deep links, closed here), and its StateHolder has no idle expiry: both are replaced here by
    subclasses that override private methods and read private fields (session_data, time_last_used, lock, the queue's
    pending_messages_per_session). Built on first call, so importing this module does not import gradio's internals."""
    global _STATE_CLASSES
    if _STATE_CLASSES is None:
        _STATE_CLASSES = _make_state_classes()
    return _STATE_CLASSES


_STATE_CLASSES = None


def _make_state_classes():
    import time

    from gradio.blocks import Block
    from gradio.state_holder import SessionState, StateHolder

    class LeanSessionState(SessionState):
        """A session's state without the copy of every block's config and every raw input (kept by gradio for deep
        links, which are closed here): config entries are made only for blocks a handler updates."""

        def __init__(self, blocks):
            super().__init__(blocks)
            self.config_values = {}

        def _update_value_in_config(self, key, value):
            pass

        def __setitem__(self, key, value):
            # gradio answers a prop update (gr.skip() is an empty one) with a fresh component, which takes a fresh
            # id; the next real value would then be filed under that id as well: one more slot per output per
            # event. The replacement keeps its slot's id, so a session holds one slot per block however long it lives.
            if isinstance(value, Block) and getattr(value, "_id", key) != key:
                value._id = key
            super().__setitem__(key, value)

    class BoundedStateHolder(StateHolder):
        """At most `capacity` sessions (least recently used dropped first), each dropped after `idle_s` unused."""

        def __init__(self, capacity: int, idle_s: float):
            super().__init__()
            self.fixed_capacity, self.idle_s, self._pruned = capacity, idle_s, time.monotonic()

        def set_blocks(self, blocks):
            super().set_blocks(blocks)
            self.capacity = self.fixed_capacity

        def __getitem__(self, session_id: str):
            if session_id not in self.session_data:
                self.session_data[session_id] = LeanSessionState(self.blocks)
            self.prune()
            return super().__getitem__(session_id)

        def prune(self, now: float | None = None) -> int:
            """Drop sessions idle longer than idle_s (checked at most every 10 s); returns how many were dropped."""
            mono = time.monotonic()
            if now is None and mono - self._pruned < 10:
                return 0
            self._pruned = mono
            cutoff = (now or time.time()) - self.idle_s
            with self.lock:
                stale = [s for s, t in self.time_last_used.items() if t.timestamp() < cutoff]
                queue = event_queue(self.blocks)
                for s in stale:
                    self.session_data.pop(s, None)
                    self.time_last_used.pop(s, None)
                    if queue is not None:               # a session idle this long has no stream reading these
                        queue.pending_messages_per_session.pop(s, None)
            return len(stale)

    return LeanSessionState, BoundedStateHolder


def install_state_holder(app, capacity: int, idle_s: float):
    """Replace the running app's session store with a BoundedStateHolder; returns it.

    Why private: `App.state_holder` is where gradio's routes look sessions up; it has no public setter."""
    _, holder_class = lean_state_classes()
    holder = holder_class(capacity, idle_s)
    holder.set_blocks(app.get_blocks())
    app.state_holder = holder
    return holder


# ---------------------------------------------------------------- the Sketchpad's blob route

def editors(blocks) -> list:
    """Every ImageEditor / Sketchpad in a built Blocks."""
    import gradio as gr

    return [b for b in blocks.blocks.values() if isinstance(b, gr.ImageEditor)]


def wrap_blob_route(editor, policy) -> dict:
    """Route the editor's blob uploads (the browser sends each layer while a person draws) through `policy`:
    `policy.admit(upload_id, layer_index)` runs before gradio keeps a blob and may refuse it (False);
    `policy.kept(store, upload_id)` runs after, e.g. to drop the oldest drawings while over a budget. Returns the
    editor's blob store (an OrderedDict: upload id -> blobs), which replaces gradio's unbounded dict.

    Why private: `ImageEditor.accept_blobs` is a server function gradio calls on its own route
    (`_is_server_fn`), and `blob_storage` is where it keeps what it accepted, with no bound."""
    from collections import OrderedDict

    original = editor.accept_blobs
    store: OrderedDict = OrderedDict()
    editor.blob_storage = store

    def accept_blobs(data):
        fields = getattr(data, "data", None) or {}
        try:
            raw = fields.get("index")
            index = None if raw in (None, "", "null") else int(raw)
        except (TypeError, ValueError, AttributeError):
            return None
        if not policy.admit(fields.get("id"), index):
            return None
        original(data)
        policy.kept(store, fields.get("id"))
        return None

    accept_blobs._is_server_fn = True
    editor.accept_blobs = accept_blobs
    return store


def blob_bytes(blobs) -> int:
    """Bytes held by one drawing's blobs (an EditorDataBlobs: background, composite, layers)."""
    return sum(len(b or b"") for b in (blobs.background, blobs.composite, *blobs.layers))


# ---------------------------------------------------------------- the image cache writer

def pil_cache_tools():
    """(encode_pil_to_bytes, hash_bytes): how gradio encodes an output image and names its cache folder, so a
    replacement writer (ui/image_cache.py) files images exactly where gradio would.

    Why private: gradio.processing_utils has no public image-cache API."""
    from gradio import processing_utils

    return processing_utils.encode_pil_to_bytes, processing_utils.hash_bytes


def replace_pil_cache_writer(writer) -> None:
    """Make gradio write every output image with `writer(img, cache_dir, name="image", format="webp") -> path`.

    Why private: gradio's image paths (`image_utils.save_image`, Gallery, `save_img_array_to_cache`) all look up
    `processing_utils.save_pil_to_cache` when they run; replacing it is the only way to change how they write."""
    from gradio import processing_utils

    processing_utils.save_pil_to_cache = writer


def pil_cache_writer():
    """The function gradio currently writes output images with (see replace_pil_cache_writer)."""
    from gradio import processing_utils

    return processing_utils.save_pil_to_cache
