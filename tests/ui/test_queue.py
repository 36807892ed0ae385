"""The queue is the one door, and one visitor cannot crowd out the rest (issue 26, ui/event_checks.py and
ui/fair_queue.py): /run/ and /api/ refuse every queued handler (which gradio would run outside the queue's
concurrency, admission and guards), jobs joined at once run at most `concurrency` at a time, gradio_client still
works, a session or an address holds at most its share of the queue (429 in words, with Retry-After), the newest
request of a latest-wins endpoint replaces its visitor's waiting one, and waiting lines take turns by visitor."""
from __future__ import annotations

import json
import threading
import types

import pytest

from app_helpers import http_request, post_json, wait_until
from ui import SAMPLING_CONCURRENCY, fair_queue, gradio_seam, stops
from ui.event_checks import Refusal
from ui.fair_queue import FairQueue, client_address, event_owner

GEN = ["pixel-cond", 3, "dpmpp_2m", 3, 2.0, 0, 1]             # a cheap /generate: 3 steps, one image


def _read(served, api: str, event_id: str) -> str:
    return http_request(f"{served.url}gradio_api/call/{api}/{event_id}", timeout=120)[2].decode()


def _event_spans(served):
    """{event id: [first, last] perf_counter time of its network evaluations}, filled by a forward hook."""
    import time

    spans: dict[str, list[float]] = {}

    def hook(module, inputs, output):
        event_id, _ = gradio_seam.current_event()
        if event_id:
            now = time.perf_counter()
            spans.setdefault(event_id, [now, now])[1] = now
    from diffusion.score import networks

    handles = [net.register_forward_hook(hook) for p in served.demo.lab.pipelines.values()
               for net in networks(p.score_model)]
    return spans, handles


def _peak_overlap(spans) -> int:
    edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()], key=lambda e: (e[0], e[1]))
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("route", ["run", "api"])
def test_direct_routes_refuse_queued_handlers_by_name(live, route):
    before = len(live.calls)
    for api in ("generate", "interpolate", "forward_diffusion", "score_train_mlp", "timelapse_open"):
        status, _, body = post_json(live, f"gradio_api/{route}/{api}", {"data": []})
        assert status == 404, (api, status, body[:200])
        detail = json.loads(body)["detail"]
        assert f"/{api} joins the queue: POST /gradio_api/call/{api}" in detail
    assert len(live.calls) == before
    status, _, body = post_json(live, f"gradio_api/{route}/estimate_cost",      # plumbing (queue=False) stays open
                                {"data": ["pixel-cond", "dpmpp_2m", 10, 4, 1.0]})
    assert status == 200 and "network evaluations" in body.decode()


def test_the_browsers_run_predict_by_fn_index_still_works_for_plumbing_only(live):
    """The browser sends a queue=False event as POST /run/predict with the handler's fn_index (gradio's JS client):
    that works for plumbing, and is refused for a queued handler like any other /run call."""
    fns = live.demo.fns
    estimate = next(i for i, fn in fns.items() if fn.api_name == "estimate_cost")
    generate = next(i for i, fn in fns.items() if fn.api_name == "generate")
    body = {"data": ["pixel-cond", "dpmpp_2m", 10, 4, 1.0], "fn_index": estimate, "session_hash": "browser-1",
            "event_data": None, "trigger_id": None}
    status, _, answer = post_json(live, "gradio_api/run/predict", body)
    assert status == 200 and "network evaluations" in answer.decode()
    status, _, answer = post_json(live, "gradio_api/run/predict", {**body, "fn_index": generate, "data": GEN})
    assert status == 404 and "/generate joins the queue" in json.loads(answer)["detail"]
    status, _, answer = post_json(live, "gradio_api/run/predict", {**body, "fn_index": 10_000})
    assert status == 404 and "No event handler has fn_index 10000" in json.loads(answer)["detail"]


def test_concurrent_run_calls_run_nothing_and_queued_calls_share_batched_passes(live):
    """Six /run/generate at once: all refused, no network evaluation. Four /call/generate at once (four visitors,
    behind a proxy): all computed, at most the sampling group's concurrency at a time, their network calls
    combined into shared passes by the lab's broker (diffusion/batching.py)."""
    before = len(live.calls)
    answers = [None] * 6

    def run(k):
        answers[k] = post_json(live, "gradio_api/run/generate", {"data": GEN})[0]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [404] * 6 and len(live.calls) == before
    spans, handles = _event_spans(live)
    stats = live.demo.lab.broker.stats
    calls, direct = stats.calls, stats.direct       # start-up's timing ran directly, on the broker's own thread
    try:
        ids = []
        for k in range(4):
            status, _, body = post_json(live, "gradio_api/call/generate", {"data": GEN},
                                        headers={"X-Forwarded-For": f"5.5.5.{k + 1}"})
            assert status == 200, body[:300]
            ids.append(json.loads(body)["event_id"])
        results = [_read(live, "generate", i) for i in ids]
    finally:
        for h in handles:
            h.remove()
    assert all("event: complete" in r for r in results), [r[-300:] for r in results]
    assert len(spans) == 4 and _peak_overlap(spans) <= SAMPLING_CONCURRENCY, spans
    assert stats.calls - calls >= 4 * 3 and stats.direct == direct


def test_gradio_client_still_reaches_every_kind_of_endpoint(live):
    from gradio_client import Client

    client = Client(live.url, verbose=False)
    out = client.predict(*GEN, api_name="/generate")               # queued
    assert "**Done**" in out[2]
    assert "network evaluations" in client.predict("pixel-cond", "dpmpp_2m", 10, 4, 1.0, api_name="/estimate_cost")


def test_a_session_holds_at_most_its_share_of_the_queue(tiny_weights):
    """One browser session joins /generate 6 times while the first runs: its share (2 here) is taken, the rest
    are refused in words with Retry-After; another session still gets in."""
    from app_helpers import launched
    from ui.http_limits import app_kwargs

    fair = FairQueue(per_session=2, per_client=3)
    with launched(tiny_weights, log_calls=True, max_queue=8, concurrency=1,         # one runs: a waiting line forms
                  launch={"app_kwargs": app_kwargs(fair=fair)}) as served:
        served.demo.lab.max_seconds = 10_000.0
        fn_index = next(i for i, fn in served.demo.fns.items() if fn.api_name == "generate")
        slow = ["pixel-cond", 3, "euler_maruyama", 1000, 2.0, 0, 2]
        answers = [post_json(served, "gradio_api/queue/join",
                             {"data": slow + [None], "fn_index": fn_index, "session_hash": "flooder"}) for _ in range(6)]
        statuses = [a[0] for a in answers]
        assert statuses[:2] == [200, 200] and set(statuses[2:]) == {429}, statuses
        refusal = answers[2]
        assert refusal[1].get("retry-after") or refusal[1].get("Retry-After")
        assert "This session already has 2 requests waiting or running" in json.loads(refusal[2])["detail"]
        other = post_json(served, "gradio_api/queue/join",
                          {"data": GEN + [None], "fn_index": fn_index, "session_hash": "visitor-b"})
        assert other[0] == 200
        third = post_json(served, "gradio_api/queue/join",             # a third session from the same address
                          {"data": GEN + [None], "fn_index": fn_index, "session_hash": "visitor-c"})
        assert third[0] == 429 and "Your address already has 3" in json.loads(third[2])["detail"]
        # round robin: visitor-b's job waits ahead of the flooder's second one
        line = next(line for line in _lines(served.demo) if line)
        assert [event_owner(e)[0] for e in line] == ["visitor-b", "flooder"]
        for event_id in [json.loads(a[2])["event_id"] for a in answers[:2]] + [json.loads(other[2])["event_id"]]:
            post_json(served, "gradio_api/cancel", {"event_id": event_id, "session_hash": "x", "fn_index": fn_index})


def _lines(blocks):
    queue = gradio_seam.event_queue(blocks)
    return [q.queue for q in queue.event_queue_per_concurrency_id.values()]


def test_latest_wins_replaces_a_visitors_older_request(live):
    """A burst on /live from one API client: each new request replaces the one still waiting or running (several
    sampling jobs run at once), so the burst ends with the newest setting computed, and the replaced ones end with
    a reason, not a refusal."""
    live.demo.lab.max_seconds = 60.0
    ids = []
    for seed in range(6):
        status, _, body = post_json(live, "gradio_api/call/live", {"data": [3, 4, 2.0, seed, 4]})
        assert status == 200, body[:300]
        ids.append(json.loads(body)["event_id"])
    results = [_read(live, "live", i) for i in ids]
    assert "event: complete" in results[-1], results[-1][-300:]
    replaced = [r for r in results if "replaced by a newer request" in r.lower()]
    assert replaced and all("event: error" in r for r in replaced)
    assert not any('"error": null' in r for r in results)


def _event(session, address, api="generate", running=False):
    headers = {"x-forwarded-for": address}
    request = types.SimpleNamespace(client=types.SimpleNamespace(host="127.0.0.1"), headers=headers)
    fn = types.SimpleNamespace(api_name=api)
    event = types.SimpleNamespace(_id=f"id-{session}-{address}-{id(headers)}", request=request, fn=fn,
                                  session_hash=session or None)
    if event.session_hash is None:
        event.session_hash = event._id
    return event


def test_client_address_trusts_only_the_proxys_own_entry():
    assert client_address({}, "8.8.8.8") == "8.8.8.8"                     # a direct public peer
    spoof = {b"x-forwarded-for": b"1.2.3.4"}
    assert client_address(spoof, "8.8.8.8") == "8.8.8.8"                  # a public peer's XFF: ignored
    proxied = {"x-forwarded-for": "6.6.6.6, 5.5.5.9, 10.0.0.3"}               # forged, visitor, inner proxy
    assert client_address(proxied, "10.0.0.2") == "5.5.5.9"
    assert client_address({}, "127.0.0.1") == "127.0.0.1"
    assert client_address({"x-forwarded-for": "not-an-ip"}, "10.0.0.2") == "10.0.0.2"


def test_fair_queue_counts_sessions_and_addresses(monkeypatch):
    jobs = [(_event("a", "5.5.5.1"), True), (_event("a", "5.5.5.1"), False), (_event("", "5.5.5.2"), False)]
    monkeypatch.setattr(gradio_seam, "queue_jobs", lambda blocks: jobs)
    monkeypatch.setattr(gradio_seam, "queue_capacity", lambda blocks: 16)
    fair = FairQueue(per_session=2, per_client=2)
    fn = types.SimpleNamespace(api_name="generate")
    with pytest.raises(Refusal, match="This session already has 2") as err:
        fair.admit(None, fn, "a", "5.5.5.9")
    assert err.value.status == 429
    keys = fair.admit(None, fn, None, "5.5.5.2")                # one /call of theirs waits: a second is let in
    with pytest.raises(Refusal, match="Your address already has 2"):
        fair.admit(None, fn, None, "5.5.5.2")                   # ... and the reservation counts until released
    fair.release(keys)
    assert not fair.joining or set(fair.joining) == set()
    monkeypatch.setattr(gradio_seam, "queue_capacity", lambda blocks: 2)
    with pytest.raises(Refusal, match="Queue is full: 2 requests are waiting") as err:
        fair.admit(None, fn, "b", "5.5.5.3")
    assert err.value.status == 503 and "Retry in about" in err.value.message


def test_latest_wins_replaces_only_the_same_visitors_requests_of_that_endpoint(monkeypatch):
    mine, running, other_api, other_visitor = (_event("a", "5.5.5.1", "live"), _event("a", "5.5.5.1", "live"),
                                               _event("a", "5.5.5.1", "generate"), _event("b", "5.5.5.2", "live"))
    jobs = [(mine, False), (running, True), (other_api, False), (other_visitor, False)]
    dropped = []

    def drop(blocks, event, message, title):
        dropped.append((event, message))
        jobs[:] = [j for j in jobs if j[0] is not event]
        return True
    monkeypatch.setattr(gradio_seam, "queue_jobs", lambda blocks: list(jobs))
    monkeypatch.setattr(gradio_seam, "queue_capacity", lambda blocks: 16)
    monkeypatch.setattr(gradio_seam, "drop_waiting", drop)
    registry = stops.Stops()
    monkeypatch.setattr(fair_queue, "STOPS", registry)
    fair = FairQueue(per_session=2)        # mine dropped + running replaced: neither counts; other_api does (1 < 2)
    fair.admit(None, types.SimpleNamespace(api_name="live"), "a", "5.5.5.1")     # a copy of the fn: same api_name
    assert [e for e, _ in dropped] == [mine] and "Replaced by a newer request" in dropped[0][1]
    assert list(registry.replaced) == [running._id] and fair.replaced == 2    # the running one stops at its next step
    assert registry.why_stop(running._id, "a", 0.0).startswith("replaced by a newer request from the same visitor")


def test_round_robin_puts_a_new_visitor_before_a_flooders_backlog(monkeypatch):
    running = _event("a", "5.5.5.1")
    line = [_event("a", "5.5.5.1"), _event("a", "5.5.5.1"), _event("b", "5.5.5.2"),
            _event("", "5.5.5.3")]
    monkeypatch.setattr(gradio_seam, "queue_jobs", lambda blocks: [(running, True)] + [(e, False) for e in line])
    def reorder(blocks, turns):
        order = turns(list(line))
        line.sort(key=lambda e: order[id(e)])
    monkeypatch.setattr(gradio_seam, "reorder_waiting", reorder)
    FairQueue.reorder(None)
    assert [event_owner(e)[0] or event_owner(e)[1] for e in line] == ["b", "5.5.5.3", "a", "a"]


def test_fair_queue_refuses_bad_settings():
    with pytest.raises(ValueError, match="per_session and per_client must be >= 1"):
        FairQueue(per_session=0)


def test_wait_until_is_used_not_sleep():                                 # the helpers poll; a timeout names what
    with pytest.raises(AssertionError, match="the thing did not happen within 0 s"):
        wait_until(lambda: False, timeout=0.05, what="the thing")
