"""Bounds on what one request, one session or one client may hold (issue 14), installed at launch by
`app_kwargs()` (a FastAPI middleware and a lifespan hook) and on the built Blocks by `cap_editor_blobs`:

- event data (JSON bodies of event routes): strings of at most MAX_STRING characters, lists and objects of at
  most MAX_LIST items, nesting at most MAX_DEPTH deep, else 422 naming where (so that no validation error, and no
  log line, can be much larger than a bounded excerpt);
- request bodies: at most BODY_LIMIT bytes (UPLOAD_LIMIT for uploads), else 413, checked on Content-Length and
  again while the body streams in; an upload request carries at most MAX_UPLOAD_PARTS parts (files and fields);
- routes this app does not use (recording processing, deep links, media streams, the proxy, run history,
  profiling, vibe editing, dev reload, monitoring, MCP) answer 404; every response carries
  `X-Content-Type-Options: nosniff`;
- per-session state: at most SESSION_CAPACITY sessions, each dropped after SESSION_IDLE_S without a request, and
  without the copy of every raw input gradio keeps for deep links (closed here);
- the Sketchpad's blob route: a layer index beyond MAX_BLOB_LAYERS is dropped, and at most BLOB_BUDGET bytes of
  blobs are kept (oldest drawing first out);
- cancel and disconnect: the stop registry `STOPS` (ui/stops.py) learns which events were cancelled (POST /cancel)
  and which clients went away (an event stream closed while its job runs, or a /call result never read), so that
  the guard every handler step runs (ui/run_loop.py's `guard`) can stop that job within one step.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
from collections import OrderedDict

from gradio.blocks import Block
from gradio.state_holder import SessionState, StateHolder

from .stops import STOPS, Stops   # the stop registry (ui/stops.py): what this middleware tells the per-step guard

BODY_LIMIT = 1 * 2**20            # bytes: a JSON request (every value this app takes is small)
UPLOAD_LIMIT = 6 * 2**20          # bytes: an upload (gradio's max_file_size is 5 MB, plus multipart overhead)
MAX_UPLOAD_PARTS = 8              # files and fields in one multipart request (a drawing sends 1 to 3 at a time)
UPLOAD_ROUTES = ("upload", "component_server", "component_server/")
CLOSED = ("process_recording", "deep_link", "stream/", "proxy=", "run-history", "runs", "profiling", "vibe-",
          "undo-vibe-edit", "dev/reload", "custom_component/", "monitoring", "mcp")
CLOSED_ROOT = ("/monitoring", "/dev/reload")
SESSION_CAPACITY = 256            # sessions whose state is kept (LRU); gradio's default is 10,000
SESSION_IDLE_S = 1800.0           # a session unused this long is dropped
MAX_BLOB_LAYERS = 4               # Sketchpad layers accepted on the blob route (the Sketchpads here have one)
BLOB_BUDGET = 32 * 2**20          # bytes of Sketchpad blobs kept, across sessions
EVENT_ROUTES = ("queue/join", "call/", "run/", "api/")   # JSON bodies carrying event data: shape-checked
MAX_STRING, MAX_LIST, MAX_DEPTH = 16384, 256, 8 # event data: characters per string, items per list/dict, nesting


# ---------------------------------------------------------------- the middleware

class _TooLarge(Exception):
    pass


def shape_error(value, where: str = "data", depth: int = 0) -> str | None:
    """Where `value` (parsed JSON) passes the event-data bounds, or None when it is within them."""
    if depth > MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} deep"
    if isinstance(value, str):
        return f"{where} is a string of {len(value)} characters (at most {MAX_STRING})" if len(value) > MAX_STRING \
            else None
    if isinstance(value, (list, dict)):
        if len(value) > MAX_LIST:
            return f"{where} has {len(value)} items (at most {MAX_LIST})"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > MAX_STRING:
                return f"{where} has a key of {len(key)} characters"
            err = shape_error(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]", depth + 1)
            if err:
                return err
    return None


def _route(path: str) -> str | None:
    """The part after /gradio_api/ (None when the path is not under it)."""
    _, sep, tail = path.partition("/gradio_api/")
    return tail if sep else None


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Pure ASGI (streams pass through untouched): size limits, closed routes, nosniff, and what STOPS learns."""

    def __init__(self, app, stops: Stops = STOPS, body_limit: int = BODY_LIMIT, upload_limit: int = UPLOAD_LIMIT,
                 max_parts: int = MAX_UPLOAD_PARTS):
        self.app, self.stops = app, stops
        self.body_limit, self.upload_limit, self.max_parts = body_limit, upload_limit, max_parts
        self.refused: dict[str, int] = {}          # refusals by kind, for the soak's figures

    def _refuse(self, kind: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        route = _route(path)
        if (route is not None and route.startswith(CLOSED)) or path.startswith(CLOSED_ROOT):
            self._refuse("closed route")
            return await _plain(send, 404, "Not Found")
        headers = dict(scope.get("headers") or [])
        upload = route in UPLOAD_ROUTES
        limit = self.upload_limit if upload else self.body_limit
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = -1
        if declared < 0 or declared > limit:
            self._refuse("body too large")
            return await _plain(send, 413, f"Request body too large: at most {limit} bytes here.")
        boundary = None
        if upload:
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            boundary = next((p.split("=", 1)[1].strip().strip('"') for p in ctype.split(";")
                             if p.strip().startswith("boundary=")), None)
        state = {"size": 0, "parts": 0, "tail": b"", "over": None, "started": False}
        marker = b"--" + boundary.encode("latin-1") if boundary else None

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                state["size"] += len(chunk)
                if state["size"] > limit:
                    state["over"] = f"Request body too large: at most {limit} bytes here."
                elif marker:
                    window = state["tail"] + chunk
                    state["parts"] += window.count(marker) - state["tail"].count(marker)
                    state["tail"] = window[-(len(marker) - 1):]
                    if state["parts"] - 1 > self.max_parts:
                        state["over"] = f"Too many files: at most {self.max_parts} parts per upload request."
                if state["over"]:
                    raise _TooLarge(state["over"])
            return message

        async def guarded_send(message):
            if state["over"] and not state["started"]:
                return                                  # the 413 below replaces whatever the route answers
            if message["type"] == "http.response.start":
                state["started"] = True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-content-type-options", b"nosniff")]}
            await send(message)

        # what STOPS learns: cancels, /call posts, event streams opening and closing
        stream_key = None
        if route is not None and method == "POST" and route.rstrip("/") == "cancel":
            body = await self._read_small(receive, state, limit)
            if body is None:
                self._refuse("body too large")
                return await _plain(send, 413, f"Request body too large: at most {limit} bytes here.")
            with contextlib.suppress(Exception):
                self.stops.cancel(str(json.loads(body)["event_id"]))
            return await self.app(scope, self._replay(body, receive), guarded_send)
        if route is not None and method == "GET":
            if route.startswith("queue/data"):
                query = scope.get("query_string", b"").decode("latin-1")
                stream_key = next((p[len("session_hash="):] for p in query.split("&")
                                   if p.startswith("session_hash=")), None)
            elif route.startswith("call/") and route.count("/") >= 2:
                stream_key = route.rstrip("/").rsplit("/", 1)[-1]
        if route is not None and method == "POST" and route.startswith(EVENT_ROUTES) and not upload:
            body = await self._read_small(receive, state, limit)
            if body is None:
                self._refuse("body too large")
                return await _plain(send, 413, f"Request body too large: at most {limit} bytes here.")
            try:
                parsed = json.loads(body) if body.strip() else None
            except ValueError:
                parsed = None                       # gradio answers malformed JSON itself (422)
            err = shape_error(parsed.get("data"), "data") if isinstance(parsed, dict) else None
            err = err or (shape_error(parsed.get("event_data"), "event_data") if isinstance(parsed, dict) else None)
            if err:
                self._refuse("malformed event data")
                return await _plain(send, 422, f"Invalid event data: {err[:300]}.")
            receive = self._replay(body, receive)
            limited_receive = receive
        if route is not None and method == "POST" and route.startswith("call/"):
            guarded_send = self._watch_call_post(guarded_send)
        if stream_key:
            self.stops.stream(stream_key, True)
        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        finally:
            if stream_key:
                self.stops.stream(stream_key, False)
        if state["over"]:
            self._refuse("too many files" if "files" in state["over"] else "body too large")
            if not state["started"]:
                await _plain(send, 413, state["over"])

    @staticmethod
    async def _read_small(receive, state, limit) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

    def _watch_call_post(self, send):
        """POST /call/<api> answers {"event_id": ...}: remember it, to notice a result nobody reads."""
        async def watch(message):
            if message["type"] == "http.response.body":
                with contextlib.suppress(Exception):
                    body = message.get("body", b"")
                    if len(body) < 512 and b"event_id" in body:
                        self.stops.post(str(json.loads(body)["event_id"]))
            await send(message)
        return watch


# ---------------------------------------------------------------- allocator

MALLOC_ARENAS = 2                 # glibc malloc arenas (its default: 8 per core); see tune_allocator
MALLOC_MMAP_THRESHOLD = 2**20     # bytes: larger blocks are mmapped, and unmapped (returned) when freed
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8      # mallopt parameter numbers, from glibc's <malloc.h>


def tune_allocator(arenas: int = MALLOC_ARENAS, mmap_threshold: int = MALLOC_MMAP_THRESHOLD) -> dict:
    """Set glibc's malloc up for a long-running server, before the server starts its threads: at most `arenas`
    arenas (mallopt M_ARENA_MAX) and a fixed mmap threshold (M_MMAP_THRESHOLD). Returns {setting: applied}.

    Every thread that allocates under contention gets an arena of its own, and an arena keeps what it freed for its
    own reuse; glibc also raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), after
    which tensor-sized blocks come from the arenas and stay there when freed. The soak measured ~90% of the growth as
    freed-but-kept memory (mallinfo2), and 10-minute soaks on the same day, same code, gave final RSS +63% (glibc's
    defaults), +16% (2 arenas) and +9% (2 arenas, 1 MiB threshold) over the idle baseline (bench/results/soak*.json).
    MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ set in the environment win (glibc read them at start-up)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}                                             # not glibc: nothing to tune
    applied = {}
    for env, param, value in (("MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas),
                              ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, mmap_threshold)):
        applied[env] = not os.environ.get(env) and bool(libc.mallopt(param, int(value)))
    return applied


# ---------------------------------------------------------------- session state

class LeanSessionState(SessionState):
    """A session's state without the copy of every block's config and every raw input (kept by gradio for deep
    links, which are closed here): config entries are made only for blocks a handler updates."""

    def __init__(self, blocks):
        super().__init__(blocks)
        self.config_values = {}

    def _update_value_in_config(self, key, value):
        pass

    def __setitem__(self, key, value):
        # gradio answers a prop update (gr.skip() is an empty one) with a fresh component, which takes a fresh id;
        # the next real value would then be filed under that id as well: one more slot per output per event.
        # The replacement keeps its slot's id, so a session holds one slot per block however long it lives.
        if isinstance(value, Block) and getattr(value, "_id", key) != key:
            value._id = key
        super().__setitem__(key, value)


class BoundedStateHolder(StateHolder):
    """At most `capacity` sessions (least recently used dropped first), each dropped after `idle_s` unused."""

    def __init__(self, capacity: int = SESSION_CAPACITY, idle_s: float = SESSION_IDLE_S):
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
            queue = getattr(self.blocks, "_queue", None)
            for s in stale:
                self.session_data.pop(s, None)
                self.time_last_used.pop(s, None)
                if queue is not None:                   # a session idle this long has no stream reading these
                    queue.pending_messages_per_session.pop(s, None)
        return len(stale)


def install_state_holder(app, capacity: int = SESSION_CAPACITY, idle_s: float = SESSION_IDLE_S) -> None:
    holder = BoundedStateHolder(capacity, idle_s)
    holder.set_blocks(app.get_blocks())
    app.state_holder = holder


@contextlib.asynccontextmanager
async def lifespan(app):
    """At startup, before any request: the bounded session store replaces gradio's."""
    install_state_holder(app)
    yield


def app_kwargs() -> dict:
    """For `Blocks.launch(app_kwargs=...)`: the middleware and the lifespan hook above."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(LimitsMiddleware)], "lifespan": lifespan}


# ---------------------------------------------------------------- the Sketchpad's blob route

def cap_editor_blobs(blocks, max_layers: int = MAX_BLOB_LAYERS, budget: int = BLOB_BUDGET) -> int:
    """Every ImageEditor / Sketchpad in `blocks`: the blob route drops layer indexes >= max_layers and keeps at most
    `budget` bytes of blobs (the oldest drawing dropped first). Returns how many editors were capped."""
    import gradio as gr

    editors = [b for b in blocks.blocks.values() if isinstance(b, gr.ImageEditor)]
    for editor in editors:
        original = editor.accept_blobs
        storage: OrderedDict = OrderedDict()
        editor.blob_storage = storage

        def accept_blobs(data, _original=original, _storage=storage):
            try:
                raw = data.data.get("index")
                index = None if raw in (None, "", "null") else int(raw)
            except (TypeError, ValueError, AttributeError):
                return None
            if index is not None and not 0 <= index < max_layers:
                return None
            _original(data)
            key = data.data.get("id")
            if key in _storage:
                _storage.move_to_end(key)

            def size(blobs):
                return sum(len(b or b"") for b in (blobs.background, blobs.composite, *blobs.layers))
            while len(_storage) > 1 and sum(size(v) for v in _storage.values()) > budget:
                _storage.popitem(last=False)
            return None

        accept_blobs._is_server_fn = True
        editor.accept_blobs = accept_blobs
    return len(editors)
