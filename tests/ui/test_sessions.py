"""Per-session state and the allocator (issue 14, ui/sessions.py, ui/allocator.py): bounded sessions without raw
inputs, one slot per block, no undelivered messages for a dropped session, glibc malloc settings."""
from __future__ import annotations

import json
import time


from app_helpers import post_json


def test_session_state_is_bounded_and_keeps_no_raw_inputs(live):
    from ui import gradio_seam, sessions

    holder = live.demo.server_app.state_holder
    assert isinstance(holder, gradio_seam.lean_state_classes()[1]) and holder.capacity == sessions.SESSION_CAPACITY
    value = "m" * 15_000                                          # within the event-data bounds: reaches gradio
    status, _, _ = post_json(live, "gradio_api/run/recommended_settings",
                              {"data": [value], "session_hash": "bigvalue"})
    assert status in (200, 400, 500)
    assert "bigvalue" in holder.session_data
    kept = json.dumps(holder.session_data["bigvalue"].config_values, default=str)
    assert value not in kept and len(kept) < 50_000
    assert holder.prune(now=time.time() + sessions.SESSION_IDLE_S + 1) >= 1 and "bigvalue" not in holder.session_data


def test_a_session_keeps_one_slot_per_block_however_often_it_generates(live):
    """gradio answers gr.skip() (an empty prop update) with a fresh component under a fresh id, and files the
    next real value under that id too: without the fix a session grew by one slot per skipped output per event."""
    from gradio_client import Client

    holder = live.demo.server_app.state_holder
    client = Client(live.url, verbose=False)
    args = ["pixel-cond", 3, "euler_maruyama", 4, 1.0, 0, 1]
    slots = []
    for _ in range(4):
        client.predict(*args, api_name="/generate")
        slots.append(len(holder.session_data[client.session_hash].blocks_config.blocks))
    assert slots[-1] == slots[0] <= len(live.demo.blocks), slots


def test_a_dropped_session_leaves_no_undelivered_messages(live):
    from gradio_client import Client

    holder, queue = live.demo.server_app.state_holder, live.demo._queue
    client = Client(live.url, verbose=False)
    client.predict("pixel-cond", 3, "euler_maruyama", 4, 1.0, 0, 1, api_name="/generate")
    assert client.session_hash in holder.session_data
    holder.prune(now=time.time() + 10 * 86400)
    assert client.session_hash not in holder.session_data
    assert client.session_hash not in queue.pending_messages_per_session


def test_the_allocator_settings_are_applied_unless_the_environment_sets_them(monkeypatch):
    from ui import allocator

    for env in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(env, raising=False)
    assert allocator.tune_allocator() == {"MALLOC_ARENA_MAX": True, "MALLOC_MMAP_THRESHOLD_": True}   # glibc took both
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert allocator.tune_allocator() == {"MALLOC_ARENA_MAX": False, "MALLOC_MMAP_THRESHOLD_": True}  # operator's stands
