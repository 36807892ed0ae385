"""Named errors and bounded logs (issue 26, ui/event_checks.py, ui/refusals.py): every malformed event — wrong
arity, extra trailing inputs, a drawing sent as a string / list / dict without `meta`, a preset index of 99 / "x" /
2**63, an unknown endpoint or fn_index — is answered with a 4xx naming what is wrong, never `{"error": null}` or a
500; each refusal is at most one log line, rate-limited with a count of the repeats, and never a traceback."""
from __future__ import annotations

import json
import logging

import pytest

from app_helpers import post_json
from ui.refusals import RefusalLog

FWD = ["test digit", 0, None, 0.5, 0, "none"]                   # a valid /forward_diffusion
NO_META = {"background": None, "layers": [{"path": "x.png"}] * 250, "composite": None}
MALFORMED = [   # (route, body, status, words the answer must hold)
    ("call/forward_diffusion", {"data": FWD[:1]}, 422, "/forward_diffusion takes 6 inputs (source, test_index, "
                                                       "sketch, t, noise_seed, denoiser), got 1"),
    ("call/forward_diffusion", {"data": FWD + [7]}, 422, "takes 6 inputs"),
    ("call/forward_diffusion", {"data": "abc"}, 422, "data must be a list of the 6 inputs"),
    ("call/forward_diffusion", {"data": ["your drawing", 0, "abc", 0.5, 0, "none"]}, 422,
     "sketch (/forward_diffusion, input 2) is not a valid Sketchpad value"),
    ("call/forward_diffusion", {"data": ["your drawing", 0, [1, 2], 0.5, 0, "none"]}, 422, "sketch (/forward_diffusion"),
    ("call/forward_diffusion", {"data": ["your drawing", 0, NO_META, 0.5, 0, "none"]}, 422, "'meta' field"),
    ("call/generate_preset", {"data": [99]}, 422, "preset (/generate_preset, input 0) must be a preset index from 0"),
    ("call/generate_preset", {"data": ["x"]}, 422, "must be a preset index"),
    ("call/generate_preset", {"data": [2**63]}, 422, "must be a preset index"),
    ("call/generate_preset", {"data": [True]}, 422, "must be a preset index"),
    ("call/nonexistent", {"data": [1]}, 404, "No API endpoint is named /nonexistent"),
    ("run/nonexistent", {"data": [1]}, 404, "No API endpoint is named /nonexistent"),
    ("queue/join", {"data": [], "fn_index": 9999, "session_hash": "s"}, 404, "No event handler has fn_index 9999"),
    ("queue/join", {"data": [], "fn_index": "x", "session_hash": "s"}, 404, "No event handler has fn_index 'x'"),
]


@pytest.mark.parametrize("route, body, status, words", MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_event_gets_a_named_4xx(live, route, body, status, words):
    before = len(live.calls)
    got, _, answer = post_json(live, f"gradio_api/{route}", body)
    assert got == status, answer[:300]
    detail = json.loads(answer)["detail"]
    assert words in detail and len(detail) < 600, detail
    assert len(live.calls) == before


def test_200_malformed_requests_log_less_than_they_send_and_no_traceback(live, capfd, monkeypatch):
    import time

    from ui.refusals import REFUSALS

    monkeypatch.setattr(REFUSALS, "_last", {})                 # the tests above logged too: start a fresh interval
    monkeypatch.setattr(REFUSALS, "_held", {})
    capfd.readouterr()
    start, sent = time.monotonic(), 0
    for k in range(200):
        route, body, _, _ = MALFORMED[k % len(MALFORMED)]
        payload = json.dumps(body)
        sent += len(payload)
        status, _, answer = post_json(live, f"gradio_api/{route}", body)
        assert 400 <= status < 500 and b'"error": null' not in answer and b'"error":null' not in answer
    out, err = capfd.readouterr()
    logged = out + err
    assert "Traceback" not in logged
    assert len(logged) < sent / 10, f"{len(logged)} bytes logged for {sent} bytes of bad requests"
    kinds = 4                    # wrong number of inputs, malformed event / input, unknown endpoint
    intervals = 1 + (time.monotonic() - start) / REFUSALS.interval_s
    assert 0 < logged.count(" refused ") <= kinds * intervals + 1, logged[-2000:]


def test_refusal_log_writes_one_line_per_kind_per_interval_with_the_count(caplog):
    log = logging.getLogger("test.refusals")
    refusals = RefusalLog(interval_s=10.0, log=log)
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        assert refusals.note("bad input", "first\nline two", now=0.0)
        assert not any(refusals.note("bad input", "again", now=t) for t in (1.0, 2.0, 9.9))
        assert refusals.note("unknown endpoint", "other kind", now=3.0)       # each kind has its own interval
        assert refusals.note("bad input", "x" * 1000, now=10.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "bad input: first line two"                           # one line, whatever the detail held
    assert lines[1] == "unknown endpoint: other kind"
    assert lines[2].endswith("... (3 more like this in the last 10 s)") and len(lines[2]) < 320
    assert refusals.counts == {"bad input": 5, "unknown endpoint": 1}
