"""The one run loop (ui/run_loop.py): the throttle keeps the last update, the time limit, the admission message, the
stop guard (cancel, client gone, result never read) and lockstep-by-NFE; no app, no network: fake clocks and steps."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pytest

from ui import run_loop, stops
from ui.run_loop import Lane, Throttle, admit, lockstep, run


@dataclass
class FakeStep:
    i: int
    nfe: int
    final: bool = False


def steps(n: int, nfe_per_step: int = 1):
    for i in range(n):
        yield FakeStep(i, (i + 1) * nfe_per_step, i == n - 1)


class Clock:
    """A clock that moves only when told: each call returns the current time (s)."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


# ---------------------------------------------------------------- throttle

def test_throttle_lets_one_update_through_per_interval_and_always_the_final_one():
    clock = Clock()
    throttle = Throttle(0.1, clock=clock)
    seen = []
    for k in range(10):                               # 10 updates 0.03 s apart: due at 0, 0.12, 0.24 and the last
        clock.now = 0.03 * k
        seen.append(throttle.due(final=k == 9))
    assert [k for k, due in enumerate(seen) if due] == [0, 4, 8, 9]


def test_throttle_without_lead_waits_one_interval_first():
    clock = Clock()
    throttle = Throttle(0.1, lead=False, clock=clock)
    clock.now = 0.05
    assert not throttle.due()
    clock.now = 0.1
    assert throttle.due()


def test_the_loop_throttles_by_wall_time_and_keeps_the_last_update():
    clock = Clock(tick=0.01)                          # every clock read advances 10 ms
    out = list(run(steps(50), 100.0, interval=0.1, clock=clock))
    assert [s.i for s, _ in out] == list(range(50))   # every step comes back to the handler
    due = [s.i for s, d in out if d]
    assert due[0] == 0 and due[-1] == 49              # the first at once, the last always
    assert 3 <= len(due) <= 50 * 0.02 / 0.1 + 2       # ~2 clock reads per step: ~one update per 5 steps


def test_the_loop_stops_past_the_time_limit_with_the_apps_message():
    clock = Clock(tick=1.0)
    pulled = []
    with pytest.raises(gr.Error, match=r"Stopped after \d+ s: the app's limit per request is 5 s"):
        for step, _ in run(steps(100), 5.0, clock=clock):
            pulled.append(step.i)
    assert 0 < len(pulled) < 5


def test_the_libraries_own_checks_become_a_plain_error_message():
    def failing():
        yield FakeStep(0, 1)
        raise RuntimeError("rk45 needed more than max_nfe = 10 evaluations")

    with pytest.raises(gr.Error, match="max_nfe = 10") as info:
        list(run(failing(), 100.0))
    assert info.value.message == "rk45 needed more than max_nfe = 10 evaluations"


def test_a_stop_raised_inside_a_step_passes_through_unchanged():
    def guarded():                                    # as the network's pre-hook guard stops a step midway
        yield FakeStep(0, 1)
        raise gr.Error("Stopped: cancelled.", title="Stopped", print_exception=False)

    with pytest.raises(gr.Error) as info:
        list(run(guarded(), 100.0))
    assert info.value.message == "Stopped: cancelled." and info.value.title == "Stopped"


def test_the_final_predicate_marks_the_last_update_of_plain_items():
    items = [(k, 0.5) for k in range(5)]             # (step, loss) pairs, as the tiny MLP's training yields them
    clock = Clock()
    out = list(run(items, 100.0, interval=10.0, final=lambda item: item[0] == 4, clock=clock))
    assert [d for _, d in out] == [True, False, False, False, True]


# ---------------------------------------------------------------- admission

def test_admission_refuses_past_the_limit_naming_the_parameters():
    assert admit(None, 10.0) == 0.0                   # never timed: admitted
    assert admit(9.9, 10.0) == 9.9
    with pytest.raises(gr.Error) as info:
        admit(31.4, 10.0, worst=" at worst (rk45 may take up to 2000 network evaluations)")
    assert info.value.message == (
        "steps / num_images: this request would take about 31 s here at worst (rk45 may take up to 2000 network "
        "evaluations), over the app's 10 s limit per request. Use fewer steps or images, or a sampler with fewer "
        "NFE per step.")
    assert info.value.title == "Too much work"
    with pytest.raises(gr.Error) as info:
        admit(200.0, 120.0, params="nfe / num_images", what="this race", worst="",
              advice="Use a smaller budget or fewer images.")
    assert info.value.message == ("nfe / num_images: this race would take about 200 s here, over the app's 120 s "
                                  "limit per request. Use a smaller budget or fewer images.")


# ---------------------------------------------------------------- the stop guard

@pytest.fixture
def in_event(monkeypatch):
    """The loop believes it runs inside gradio event "ev" of session "sess", with a fresh stop registry."""
    registry = stops.Stops()
    monkeypatch.setattr(run_loop, "STOPS", registry)
    monkeypatch.setattr(run_loop, "current_event", lambda: ("ev", "sess"))
    return registry


def test_outside_an_event_the_guard_does_nothing(monkeypatch):
    monkeypatch.setattr(run_loop, "current_event", lambda: (None, None))
    run_loop.guard(0.0)                               # no event: neither a stop nor a time limit


def test_a_cancel_stops_the_loop_before_the_next_step(in_event):
    pulled = []
    with pytest.raises(gr.Error) as info:
        for step, _ in run(steps(100), 100.0):
            pulled.append(step.i)
            if step.i == 3:
                in_event.cancel("ev")
    assert info.value.message == "Stopped: cancelled." and info.value.title == "Stopped"
    assert pulled == [0, 1, 2, 3]                     # the step after the cancel never ran


def test_a_result_nobody_opened_stops_the_loop_after_the_grace(in_event, monkeypatch):
    in_event.post("ev")
    in_event.posted["ev"] -= stops.READ_GRACE_S + 0.01    # posted just over the grace ago, never opened
    with pytest.raises(gr.Error, match="result never read"):
        next(run(steps(10), 100.0))
    assert stops.READ_GRACE_S <= 1.0                  # issue 26: an unread job is detected within ~1 s


def test_an_opened_result_stream_keeps_the_job_running(in_event):
    in_event.post("ev")
    in_event.posted["ev"] -= 5.0
    in_event.stream("ev", True)                       # the client reads its result
    assert len(list(run(steps(10), 100.0))) == 10


def test_a_session_whose_stream_closed_is_stopped_after_the_grace(in_event):
    in_event.start("ev")
    in_event.started["ev"] -= 10.0
    in_event.stream("sess", True)
    in_event.stream("sess", False)
    in_event.streams["sess"][1] -= stops.GONE_GRACE_S + 0.01
    with pytest.raises(gr.Error, match="disconnected"):
        next(run(steps(10), 100.0))


def test_the_events_time_limit_counts_from_its_first_guarded_step(in_event):
    in_event.start("ev")
    in_event.started["ev"] -= 50.0                    # the event began 50 s ago (e.g. a grid before this loop)
    with pytest.raises(gr.Error, match="Stopped after 50 s"):
        next(run(steps(10), 30.0))


def test_waiting_for_other_visitors_is_not_counted_against_the_time_limit(in_event):
    """The broker's waits for others' rows (excused) come off the event's elapsed time and the loop's own."""
    in_event.start("ev")
    in_event.started["ev"] -= 50.0                    # 50 s since the first guarded step, 45 of them waiting
    assert len(list(run(steps(10), 30.0, excused=lambda: 45.0))) == 10
    with pytest.raises(gr.Error, match="Stopped after 35 s"):
        next(run(steps(10), 30.0, excused=lambda: 15.0))


def test_the_loops_own_time_limit_excuses_waiting_too():
    clock = Clock(tick=1.0)                           # every second of it spent waiting for others
    assert len(list(run(steps(20), 5.0, clock=clock, excused=lambda: clock.now))) == 20


# ---------------------------------------------------------------- lockstep by NFE

def test_lockstep_advances_the_lane_that_has_spent_the_fewest_evaluations():
    lanes = [Lane("one-per-step", steps(6, 1)), Lane("two-per-step", steps(3, 2))]
    order = [(lane.name, lane.nfe) for lane in lockstep(lanes)]
    # ties go in list order: 0/0 -> first; 1/0 -> second; 1/2 -> first; 2/2 -> first; 3/2 -> second ...
    assert order == [("one-per-step", 1), ("two-per-step", 2), ("one-per-step", 2), ("one-per-step", 3),
                     ("two-per-step", 4), ("one-per-step", 4), ("one-per-step", 5), ("two-per-step", 6),
                     ("one-per-step", 6)]
    assert all(lane.done and not lane.error for lane in lanes)
    assert all(lane.own >= 0 for lane in lanes)


def test_lockstep_drops_a_lane_that_fails_and_keeps_its_last_state():
    def capped():
        yield FakeStep(0, 2)
        raise RuntimeError("needed more than max_nfe = 2")

    lanes = [Lane("capped", capped()), Lane("steady", steps(4))]
    for _ in lockstep(lanes, dropouts=(RuntimeError,)):
        pass
    assert lanes[0].done and lanes[0].error == "needed more than max_nfe = 2" and lanes[0].nfe == 2
    assert lanes[1].done and not lanes[1].error and lanes[1].nfe == 4


def test_lockstep_marks_a_lane_that_ends_without_a_final_step_as_stopped():
    lanes = [Lane("cut", iter([FakeStep(0, 1)]))]
    list(lockstep(lanes))
    assert lanes[0].done and lanes[0].error == "stopped"


def test_lockstep_leaves_overhead_out_of_a_lanes_own_time():
    @dataclass
    class Decoded(FakeStep):
        decode_time: float = 0.0

    def slow_decoder():
        yield Decoded(0, 1, True, decode_time=1e6)     # a million seconds of "decoding", cumulative

    lanes = [Lane("latent", slow_decoder())]
    list(lockstep(lanes, overhead=lambda step: step.decode_time))
    assert lanes[0].own < -1e5                        # the overhead was subtracted (a real one is a share of own)


def test_the_loop_over_a_lockstep_sends_its_last_update_when_every_lane_is_done():
    lanes = [Lane("a", steps(3)), Lane("b", steps(3))]
    out = list(run(lockstep(lanes), 100.0, interval=1e9, final=lambda _: all(q.done for q in lanes)))
    assert [d for _, d in out] == [True, False, False, False, False, True]
