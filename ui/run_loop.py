"""The one run loop every tab's handler streams through: admission, the stop guard, the time limit, throttling,
and lockstep-by-NFE for handlers that step several samplers side by side.

A handler is a generator of UI updates around a library generator of steps (a sampler's `Step`s, a pipeline's
`PipelineStep`s, an optimizer's (step, loss)). Around it:

- `admit(seconds, limit, ...)` refuses, before any work, a request whose worst-case estimate passes the time limit
  (ui/lab.py's `refuse_runaway` computes the estimate; the race and every other tab refuse through this one message);
- `run(steps, limit)` pulls the steps one at a time. Before each step it runs `guard`: a cancelled event, a client
  that went away, a /call result nobody opened (ui/stops.py) or the event's time limit stops the job, so no handler
  computes more than one step (one network evaluation, one MLP optimizer step, one particle batch) for nobody.
  After each step it checks the loop's own time limit (also outside an event, e.g. a handler called in a test), and
  turns the library's own checks (ValueError, RuntimeError) into a gr.Error. It yields (step, due): `due` is True
  at most once per `interval` seconds of wall time (PREVIEW_INTERVAL: at most ~10 updates a second) and always for
  the last step, so the last update is never throttled away;
- `lockstep(lanes)` advances several step generators side by side by network evaluations (the lane that has spent
  the fewest NFE goes next; ties: the first listed), each timed on its own.

The same `guard` is a forward pre-hook on every score network (ui/lab.py), for work between a loop's steps.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import gradio as gr

from .gradio_seam import current_event
from .stops import STOPS

PREVIEW_INTERVAL = 0.1        # s between streamed updates: at most ~10 a second, the last one always
LIBRARY_ERRORS = (ValueError, RuntimeError)   # the library's own checks (e.g. rk45's NFE cap), shown as they are


# ---------------------------------------------------------------- admission, time limit, guard

def admit(seconds: float | None, max_seconds: float, *, params: str = "steps / num_images",
          what: str = "this request", worst: str = " at worst",
          advice: str = "Use fewer steps or images, or a sampler with fewer NFE per step.") -> float:
    """Admission: refuse (gr.Error naming `params`) a request estimated at more than `max_seconds`; returns the
    estimate (0 when never timed: `seconds` None). `worst` qualifies the estimate in the message (e.g. " at worst
    (rk45 may take up to 2000 network evaluations)")."""
    seconds = float(seconds or 0.0)
    if seconds > max_seconds:
        raise gr.Error(f"{params}: {what} would take about {seconds:.0f} s here{worst}, over the app's "
                       f"{max_seconds:.0f} s limit per request. {advice}", title="Too much work",
                       print_exception=False)
    return seconds


def check_time(elapsed: float, max_seconds: float) -> None:
    """The time limit: a gr.Error once a request has run `elapsed` > `max_seconds` seconds."""
    if elapsed > max_seconds:
        raise gr.Error(f"Stopped after {elapsed:.0f} s: the app's limit per request is {max_seconds:.0f} s. "
                       "Use fewer steps or images.", title="Time limit", print_exception=False)


def guard(max_seconds: float | None = None, excused: Callable[[], float] | None = None) -> None:
    """Inside an event (a no-op outside one): stop the job (gr.Error "Stopped: <why>.") if it was cancelled, its
    client went away or its /call result was never opened (ui/stops.py), or, with `max_seconds`, it has run past
    the time limit since its first guarded step. `excused()`: seconds of that time not counted (the event's waits
    for other visitors' network rows: diffusion/batching.py), so the limit bounds a job's own work."""
    event_id, session_hash = current_event()
    if event_id is None:
        return
    started = STOPS.start(event_id)
    why = STOPS.why_stop(event_id, session_hash, started)
    if why is not None:
        raise gr.Error(f"Stopped: {why}.", title="Stopped", print_exception=False)
    if max_seconds is not None:
        check_time(time.monotonic() - started - (excused() if excused else 0.0), max_seconds)


# ---------------------------------------------------------------- throttle and loop

class Throttle:
    """Wall-time throttle: `due()` is True at most once per `interval` seconds, and always for the final update.
    The first update is due at once (`lead=False`: only after one interval). `interval` may be a callable, read at
    each `due()` (e.g. longer while more jobs share the CPU)."""

    def __init__(self, interval: float | Callable[[], float] = PREVIEW_INTERVAL, *, lead: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.interval, self.clock = interval if callable(interval) else float(interval), clock
        self.last = -math.inf if lead else clock()

    def due(self, final: bool = False) -> bool:
        now = self.clock()
        gap = self.interval() if callable(self.interval) else self.interval
        if final or now - self.last >= gap:
            self.last = now
            return True
        return False


def _is_final(step) -> bool:
    return bool(getattr(step, "final", False))


def run(steps: Iterable, max_seconds: float, *, interval: float | Callable[[], float] = PREVIEW_INTERVAL,
        lead: bool = True,
        final: Callable[[object], bool] = _is_final, clock: Callable[[], float] = time.perf_counter,
        excused: Callable[[], float] | None = None) -> Iterator:
    """Pull `steps` under the guard and the time limit; yield (step, due) (see the module docstring). `final(step)`
    says which step is the last (default: its `.final`), whose update is always due. `excused`: as `guard`'s."""
    throttle = Throttle(interval, lead=lead, clock=clock)
    start, it = clock(), iter(steps)
    while True:
        guard(max_seconds, excused)        # cancel / disconnect / never read / the event's time limit: before work
        try:
            step = next(it)
        except StopIteration:
            return
        except gr.Error:                   # the guard inside a step (a network's pre-hook): as it is (gr.Error is a
            raise                          # ValueError, so it must pass before the library's own checks)
        except LIBRARY_ERRORS as e:
            raise gr.Error(str(e), print_exception=False) from None
        check_time(clock() - start - (excused() if excused else 0.0), max_seconds)
        yield step, throttle.due(final=final(step))


# ---------------------------------------------------------------- lockstep by NFE

@dataclass
class Lane:
    """One step generator raced beside others: its latest step, its own time, done, and why it left early."""
    name: str
    steps: Iterator
    info: dict = field(default_factory=dict)    # the tab's own data about this lane (steps, benchmark figure)
    step: object = None                          # the latest step (with .nfe, .final)
    own: float = 0.0                             # s spent in this lane's steps (others' turns and overhead excluded)
    done: bool = False
    error: str = ""                              # why it stopped early ("" while running or finished)

    @property
    def nfe(self) -> int:
        return self.step.nfe if self.step is not None else 0


def lockstep(lanes: list[Lane], *, overhead: Callable[[object], float] | None = None,
             dropouts: tuple[type[BaseException], ...] = ()) -> Iterator[Lane]:
    """Advance the unfinished lane that has spent the fewest network evaluations by one step; yield it; until every
    lane is done. `overhead(step)`: seconds (cumulative) inside a lane's steps not to count as its own time (e.g. a
    latent model's preview decoding). An exception of a `dropouts` type ends that lane only (lane.error = its
    message); a lane whose steps end without a final step is done with error "stopped"."""
    while True:
        running = [lane for lane in lanes if not lane.done]
        if not running:
            return
        lane = min(running, key=lambda q: q.nfe)          # min keeps the first of equals: ties go in list order
        before = overhead(lane.step) if overhead and lane.step is not None else 0.0
        tick = time.perf_counter()
        try:
            step = next(lane.steps, None)
        except dropouts as e:
            step, lane.error = None, str(e)
        spent = time.perf_counter() - tick
        if step is not None and overhead:
            spent -= overhead(step) - before
        lane.own += spent
        if step is None:
            lane.done, lane.error = True, lane.error or "stopped"
        else:
            lane.step, lane.done = step, _is_final(step)
        yield lane
