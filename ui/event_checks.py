"""Named refusals for malformed events, before gradio runs anything (issue 26): every event route's request is
checked against the handler it names, and a request that cannot be that handler's input is answered with a 4xx
that says what is wrong, instead of `{"error": null}` and a traceback in the log:

- an unknown endpoint (/call/nonexistent, a fn_index no handler has): 404 naming it;
- a queued handler called on /run/<api> or /api/<api>, which gradio would run outside the queue (its concurrency,
  admission and guards): 404 "joins the queue", naming the route to use (issue 26's "one door");
- `data` that is not a list, or has more or fewer values than the handler takes: 422 naming the handler's
  parameters and how many were sent (extra trailing values are refused, not ignored);
- a value its component cannot take (a drawing sent as a string, a list or a dict whose files lack `meta`; a preset
  index out of range, not an integer, or 2**63): 422 naming the parameter.
"""
from __future__ import annotations

import inspect

from . import gradio_seam

QUEUED_ONLY_ROUTES = ("run/", "api/")        # gradio's direct routes: they skip the queue


class Refusal(Exception):
    """A request refused before it reached gradio: HTTP `status` and a sentence saying why."""

    def __init__(self, status: int, message: str, kind: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.parameter = status, message, kind, parameter


def parameter_names(fn) -> list[str]:
    """The handler's parameter names, one per input component (component labels where the signature does not
    line up with the inputs, e.g. a lambda or a gr.Examples loader)."""
    try:
        names = [p.name for p in inspect.signature(fn.fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    if len(names) != len(fn.inputs):
        names = [_label(b, i) for i, b in enumerate(fn.inputs)]
    return names


def _label(block, i: int) -> str:
    if type(block).__name__ == "Dataset":                 # gr.Examples' picker: its label is a sentence
        return "preset"
    return getattr(block, "label", None) or f"input {i}"


def check_event(blocks, route: str, body) -> None:
    """Raise Refusal when a POST to gradio_api/`route` with JSON `body` cannot run (see module doc); None when it may.
    `route` is the path after /gradio_api/ ("queue/join", "call/generate", "run/estimate_cost", ...)."""
    route = route.rstrip("/")
    if route == "queue/join":
        fn_index = body.get("fn_index") if isinstance(body, dict) else None
        fn = gradio_seam.function_for(blocks, fn_index=fn_index)
        where = f"fn_index {fn_index!r}"
        if fn is None:
            raise Refusal(404, f"No event handler has {where} in this app.", "unknown endpoint")
    else:
        kind, _, api = route.partition("/")
        if kind == "call" and api.startswith("v2/"):
            api = api[3:]
        fn_index = body.get("fn_index") if isinstance(body, dict) and kind in ("run", "api") else None
        if fn_index is not None:          # the browser calls /run/predict with the handler's index, as gradio allows
            fn = gradio_seam.function_for(blocks, fn_index=fn_index)
            where = f"/{api} (fn_index {fn_index!r})"
            if fn is None:
                raise Refusal(404, f"No event handler has fn_index {fn_index!r} in this app.", "unknown endpoint")
        else:
            fn = gradio_seam.function_for(blocks, api_name=api)
            where = f"/{api}"
            if fn is None or not api or "/" in api:
                raise Refusal(404, f"No API endpoint is named {where} in this app (GET /gradio_api/info lists them).",
                              "unknown endpoint")
        if route.startswith(QUEUED_ONLY_ROUTES) and fn.queue:
            name = fn.api_name or api
            raise Refusal(404, f"/{name} joins the queue: POST /gradio_api/call/{name} (then GET its result), or use "
                               f"gradio_client; /{kind}/ would run it outside the queue's limits.", "queue bypass")
        if kind == "call" and route.startswith("call/v2/"):
            return                                   # named parameters: gradio maps them onto the inputs itself
    data = body.get("data") if isinstance(body, dict) else None
    names = parameter_names(fn)
    wanted = len(fn.inputs)
    sent_by_api = route != "queue/join" and len(data or []) == len(gradio_seam.api_inputs(fn)) != wanted
    if not isinstance(data, list):
        raise Refusal(422, f"{where}: data must be a list of the {wanted} inputs ({', '.join(names)}), "
                           f"got {type(data).__name__}.", "malformed event", "data")
    if len(data) != wanted and not sent_by_api:
        raise Refusal(422, f"{where} takes {wanted} inputs ({', '.join(names)}), got {len(data)}.",
                      "wrong number of inputs", "data")
    slots = gradio_seam.checked_inputs(fn, api_only=sent_by_api)      # [(position in data, block)]
    for i, block in slots:
        why = gradio_seam.payload_error(block, data[i])
        if why:
            raise Refusal(422, f"{names[i]} ({where}, input {i}) {why}.", "malformed input", names[i])
