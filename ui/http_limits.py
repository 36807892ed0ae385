"""The HTTP limits (issues 14 and 26), one pure-ASGI middleware installed at launch by `app_kwargs()` (with the
bounded session store's lifespan hook, ui/sessions.py):

- event data (JSON bodies of event routes): strings of at most MAX_STRING characters, lists and objects of at
  most MAX_LIST items, nesting at most MAX_DEPTH deep, else 422 naming where (so that no validation error, and no
  log line, can be much larger than a bounded excerpt);
- the event a request names must exist and take the data sent (ui/event_checks.py: named 404 / 422); a queued
  handler is reachable only through the queue (its /run/ and /api/ routes answer 404 naming the route to use);
- fair queueing (ui/fair_queue.py): a share of the queue per session and per client address (429), latest wins
  on slider-driven endpoints, round-robin order;
- request bodies: at most BODY_LIMIT bytes (UPLOAD_LIMIT for uploads), else 413, checked on Content-Length and
  again while the body streams in; an upload request carries at most MAX_UPLOAD_PARTS parts (files and fields), and
  uploads keep to a per-address rate and a disk budget (ui/uploads.py: 429 / 507);
- routes this app does not use (recording processing, deep links, media streams, the proxy, run history,
  profiling, vibe editing, dev reload, monitoring, MCP) answer 404; every response carries
  `X-Content-Type-Options: nosniff`;
- cancel and disconnect: the stop registry `STOPS` (ui/stops.py) learns which events were cancelled (POST /cancel)
  and which clients went away (an event stream closed while its job runs, or a /call result never read), so that
  the guard every handler step runs (ui/run_loop.py's `guard`) can stop that job within one step;
- every refusal is one rate-limited log line (ui/refusals.py), never a traceback.
"""
from __future__ import annotations

import contextlib
import json

from . import gradio_seam
from .event_checks import Refusal, check_event
from .fair_queue import RETRY_AFTER_S, FairQueue, client_address
from .refusals import REFUSALS, RefusalLog
from .sessions import lifespan
from .stops import STOPS, Stops   # the stop registry (ui/stops.py): what this middleware tells the per-step guard
from .uploads import UploadBudget, referenced_paths

BODY_LIMIT = 1 * 2**20            # bytes: a JSON request (every value this app takes is small)
UPLOAD_LIMIT = 6 * 2**20          # bytes: an upload (gradio's max_file_size is 5 MB, plus multipart overhead)
MAX_UPLOAD_PARTS = 8              # files and fields in one multipart request (a drawing sends 1 to 3 at a time)
UPLOAD_ROUTES = ("upload", "component_server", "component_server/")
CLOSED = ("process_recording", "deep_link", "stream/", "proxy=", "run-history", "runs", "profiling", "vibe-",
          "undo-vibe-edit", "dev/reload", "custom_component/", "monitoring", "mcp")
CLOSED_ROOT = ("/monitoring", "/dev/reload")
EVENT_ROUTES = ("queue/join", "call/", "run/", "api/")   # JSON bodies carrying event data: shape-checked
QUEUE_ROUTES = ("queue/join", "call/")                  # routes that put an event in the queue
MAX_STRING, MAX_LIST, MAX_DEPTH = 16384, 256, 8 # event data: characters per string, items per list/dict, nesting


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


async def _json_refusal(send, refusal: Refusal, route: str | None = None) -> None:
    """A refusal as gradio answers its own HTTP errors ({"detail": "..."}), plus Retry-After on 429 / 503 / 507. A 422
    on /queue/join (what the browser and gradio_client join with) is a list in gradio's own validation format, which
    both show as "<parameter>: <message>"."""
    detail = refusal.message
    if refusal.status == 422 and (route or "").rstrip("/") == "queue/join":
        detail = [{"__type__": "validate", "is_valid": False, "parameter_name": refusal.parameter or "data",
                   "message": refusal.message}]
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff")]
    if refusal.status in (429, 503, 507):
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Pure ASGI (streams pass through untouched): size limits, closed routes, nosniff, named refusals of malformed
    events and of queue bypasses, fair queueing, the upload budget, and what STOPS learns."""

    def __init__(self, app, stops: Stops = STOPS, body_limit: int = BODY_LIMIT, upload_limit: int = UPLOAD_LIMIT,
                 max_parts: int = MAX_UPLOAD_PARTS, fair: FairQueue | None = None, uploads: UploadBudget | None = None,
                 log: RefusalLog = REFUSALS):
        self.app, self.stops = app, stops
        self.body_limit, self.upload_limit, self.max_parts = body_limit, upload_limit, max_parts
        self.fair, self.uploads, self.log = fair or FairQueue(), uploads or UploadBudget(), log
        self.refused: dict[str, int] = {}          # refusals by kind, for the soak's figures

    def _refuse(self, kind: str, detail: str = "") -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        self.log.note(kind, detail)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        route = _route(path)
        headers = dict(scope.get("headers") or [])
        address = client_address(headers, (scope.get("client") or (None,))[0])
        where = f"{method} {path} from {address}"
        if (route is not None and route.startswith(CLOSED)) or path.startswith(CLOSED_ROOT):
            self._refuse("closed route", where)
            return await _plain(send, 404, "Not Found")
        upload = route in UPLOAD_ROUTES
        limit = self.upload_limit if upload else self.body_limit
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = -1
        if declared < 0 or declared > limit:
            self._refuse("body too large", where)
            return await _plain(send, 413, f"Request body too large: at most {limit} bytes here.")
        blocks = gradio_seam.running_blocks(scope)
        if upload and method == "POST" and route == "upload" and blocks is not None:
            try:
                self.uploads.admit(address, max(declared, 0), referenced_paths(blocks))
            except Refusal as refusal:
                self._refuse(refusal.kind, f"{where}: {refusal.message}")
                await self._read_small(receive, {}, limit)       # drain (<= limit): the client then reads why
                return await _json_refusal(send, refusal)
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
        stream_key, reserved = None, None
        if route is not None and method == "POST" and route.rstrip("/") == "cancel":
            body = await self._read_small(receive, state, limit)
            if body is None:
                self._refuse("body too large", where)
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
                self._refuse("body too large", where)
                return await _plain(send, 413, f"Request body too large: at most {limit} bytes here.")
            try:
                parsed = json.loads(body) if body.strip() else None
            except ValueError:
                parsed = None                       # gradio answers malformed JSON itself (422)
            err = shape_error(parsed.get("data"), "data") if isinstance(parsed, dict) else None
            err = err or (shape_error(parsed.get("event_data"), "event_data") if isinstance(parsed, dict) else None)
            if err:
                self._refuse("malformed event data", f"{where}: {err}")
                return await _plain(send, 422, f"Invalid event data: {err[:300]}.")
            if isinstance(parsed, dict) and blocks is not None:
                try:
                    check_event(blocks, route, parsed)
                    if route.startswith(QUEUE_ROUTES):
                        fn = gradio_seam.function_for(blocks, fn_index=parsed.get("fn_index")) \
                            if route.rstrip("/") == "queue/join" else \
                            gradio_seam.function_for(blocks, api_name=route.rstrip("/").rsplit("/", 1)[-1])
                        session = parsed.get("session_hash") if route.startswith("queue/join") else None
                        reserved = self.fair.admit(blocks, fn, session if isinstance(session, str) else None,
                                                   address)
                except Refusal as refusal:
                    self._refuse(refusal.kind, f"{where}: {refusal.message}")
                    return await _json_refusal(send, refusal, route)
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
            if reserved:
                self.fair.release(reserved)
                self.fair.reorder(blocks)                # the new event is in its line now: take turns
        if upload and route == "upload" and method == "POST":
            self.uploads.record(address, max(declared, 0), state["size"])
        if state["over"]:
            self._refuse("too many files" if "files" in state["over"] else "body too large", where)
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


def app_kwargs(fair: FairQueue | None = None, uploads: UploadBudget | None = None) -> dict:
    """For `Blocks.launch(app_kwargs=...)`: the middleware above (with its fair-queue and upload-budget settings)
    and the lifespan hook that bounds session state (ui/sessions.py)."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(LimitsMiddleware, fair=fair, uploads=uploads)], "lifespan": lifespan}
