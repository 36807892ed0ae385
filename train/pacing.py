"""The pacing of a training run: how fast it goes and when it stops. The probe windows that time the first steps
(and decide compile=auto), the deadline arithmetic that sizes --fit-to-deadline runs and re-sizes them at
checkpoints, the step-rate timer, SIGTERM as a stop request, and the cross-rank agreement on a plan
(train/loop.py's train_loop runs them)."""
from __future__ import annotations

import signal
import threading
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

COMPILE_KWARGS: dict = {}        # passed to torch.compile (tests set {"backend": "eager"}: dynamo without a C compiler)
WARM_STEPS = 10                  # steps left untimed at the start of a process and after a compile (autotuning, caches)


def probe_end(cfg, start: int) -> int:
    """The step at which the probe windows end: WARM_STEPS untimed, one timed window (eager, or compiled with
    --compile on), and with --compile auto a compiled window after WARM_STEPS more for the compile itself."""
    windows = 2 if cfg.compile == "auto" else 1
    return start + windows * (WARM_STEPS + cfg.probe_steps)


def steps_to_deadline(done: int, steps_per_s: float, deadline: float, reserve_s: float, now: float) -> int:
    """The step count that ends at `deadline - reserve_s` at `steps_per_s`; at least done + 1."""
    return max(done + 1, done + int(steps_per_s * max(0.0, deadline - reserve_s - now)))


class StepTimer:
    """Steps per second over a window of steps; synchronises the device only at the window's two ends."""

    def __init__(self, device: torch.device):
        self.device, self.step0, self.t0 = device, None, 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self, step: int) -> None:
        self.step0, self.t0 = step, self._now()

    def rate(self, step: int) -> float:
        return (step - self.step0) / max(self._now() - self.t0, 1e-9)


class StopRequest:
    """SIGTERM (the supervisor's hard stop) sets a flag the loop reads at step boundaries; the previous handler
    is restored on exit. Only the main thread may install signal handlers; elsewhere this is a no-op."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


class Probe:
    """The probe windows at the start of a process. Window 1 (after WARM_STEPS): steps/s of the forward in use.
    compile=auto: then torch.compile, WARM_STEPS for the compile itself, and window 2 times the compiled steps; the
    faster of the two is kept (the compile time is sunk either way). info gets the rates, the decision and
    probe_steps_per_s (the kept path's rate, which --fit-to-deadline sizes the run from)."""

    def __init__(self, cfg, start: int, device: torch.device, eager, info: dict):
        self.cfg, self.start, self.eager, self.info = cfg, start, eager, info
        self.timer, self.eager_rate, self.compile_t0 = StepTimer(device), None, 0.0
        self.window = WARM_STEPS + cfg.probe_steps
        self.forward = None

    def after(self, done: int, forward):
        """Called after step `done`; returns the forward to use for the next step."""
        self.forward = forward
        k, auto = done - self.start, self.cfg.compile == "auto" and "compiled" not in self.info
        if k == WARM_STEPS:
            self.timer.start(done)
        elif k == self.window:
            rate = self.timer.rate(done)
            if auto and forward is self.eager:
                self.eager_rate = self.info["eager_steps_per_s"] = round(rate, 2)
                self.compile_t0 = time.perf_counter()
                self.forward = torch.compile(self.eager, **COMPILE_KWARGS)
            else:
                key = "eager_steps_per_s" if forward is self.eager else "compiled_steps_per_s"
                self.info[key] = self.info["probe_steps_per_s"] = round(rate, 2)
        elif k == self.window + WARM_STEPS and auto and self.eager_rate is not None:
            self.info["compile_and_warm_s"] = round(time.perf_counter() - self.compile_t0, 1)
            self.timer.start(done)
        elif k == 2 * self.window and auto and self.eager_rate is not None:
            if forward is self.eager:                   # the compile failed in between: eager it is
                self.info["probe_steps_per_s"] = self.eager_rate
                return self.forward
            rate = round(self.timer.rate(done), 2)
            self.info["compiled_steps_per_s"] = rate
            self.info["compiled"] = rate > self.eager_rate
            self.info["probe_steps_per_s"] = max(rate, self.eager_rate)
            tqdm.write(f"compile=auto: eager {self.eager_rate:.1f} steps/s, compiled {rate:.1f} steps/s -> "
                       f"{'compiled' if self.info['compiled'] else 'eager'}")
            if not self.info["compiled"]:
                self.forward = self.eager
        return self.forward


def agree(value: int, world: int, device: torch.device, op=None) -> int:
    """The same integer on every rank (the minimum, or `op`): ranks must plan the same number of steps."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.MIN)
    return int(t.item())


def resize_plan(cfg, done: int, last_size: tuple, world: int, device: torch.device, info: dict,
            step_cap: int) -> int:
    """Re-size the plan at a checkpoint from the steps/s since the last sizing (samples and saving included), so
    the schedule still ends at the deadline when other runs on the same GPU start or stop. Each re-size moves the
    plan by at most 25%, so the cosine LR does not jump."""
    step0, t0 = last_size
    rate = (done - step0) / max(time.time() - t0, 1e-9)
    target = steps_to_deadline(done, rate, cfg.deadline, cfg.reserve_s, time.time())
    target = agree(min(max(target, int(cfg.steps * 0.8)), int(cfg.steps * 1.25), step_cap), world, device)
    target = max(target, done + 1)
    if abs(target - cfg.steps) > 0.02 * cfg.steps:
        info["sizing"].append({"at_step": done, "steps_per_s": round(rate, 2), "planned_steps": target})
        return target
    return cfg.steps
