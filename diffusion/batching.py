"""A batching broker: concurrent callers' network evaluations run as one batched forward pass, shared fairly.

Why. A request is a loop of small network calls (Generate's default grid: 10 calls of 16 rows). Several visitors
at once each loop on their own thread; one at a time they wait for each other (N visitors, N times the latency), and
side by side in separate forward passes they split two cores between small, inefficient calls. The broker gives
every network one queue: a caller's call waits there, a single worker thread takes the waiting calls of one network
together, concatenates their rows, runs one forward pass and hands each caller its own rows back.

Exactness. Every layer of the score networks is per sample (convolutions, GroupNorm, attention within an image, the
time and label embeddings), so a caller's rows come back as they would alone, up to the floating-point order of a
bigger batch (~1e-6 in fp32). Each caller keeps its own sampler, seed and noise: only network rows are pooled.

Fairness (least attained service, by rows). Calls are owned (`owner()`, read on the caller's thread: the app
passes the visitor's session). When one owner is active, all of its waiting calls of one network go in one pass (a
burst is batched whole). When several owners are active (waiting now, or served within the last `active_s`: an
owner between two steps of its sampler is still active), the pass is led by the waiting owner that has been served
the fewest rows since it became active (ties: the smaller call, then the older): its call goes in whole, and each
other owner with a call for the same network rides along with at most `min_quantum` rows of one call (a call that
still has rows goes to the back of the line). So a visitor who arrives while another floods the app leads every
pass until it has caught up: its request costs about its own rows plus `min_quantum` per step, not a share of the
flood. Before a pass without an active owner's call, the worker waits up to `linger_s` for it (its sampler's step
between two calls takes a millisecond or two), so that owner's next call rides in this pass, not the next.

What bypasses the broker (runs directly on the caller's thread): calls with autograd recording (the likelihood's
vector-Jacobian products), calls inside `exclusive(net)` (e.g. diffusion.anatomy's forward hooks on the
network's blocks, which must see that one call and no other: the lock keeps the worker off the network meanwhile),
and calls made on the worker thread itself (inside `run`).

Other work on the worker thread (`broker.run(fn, ...)`): the app's other torch work (a classifier, the autoencoder's
decoder, start-up timing) runs there too, so that the process has one OpenMP team (bench/omp_teams.py: every thread
that runs a parallel op gets its own, and more of them than CPUs makes libgomp throttle every team's spin).

    broker = NetworkBroker(owner=lambda: session_of_this_thread())
    broker.install(score_model.net)        # its forward now goes through the broker; pre-hooks still run first
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["BrokerStats", "NetworkBroker", "exclusive"]

_ATTR = "_batching_broker"        # on an installed network: (broker, the network's own forward)
ACCOUNTS_KEPT = 4096              # accounts whose waiting time is remembered (the oldest forgotten first)


@dataclass
class BrokerStats:
    """Counters since start: network calls received, forward passes run, rows computed, and the largest pass."""
    calls: int = 0
    direct: int = 0               # calls that bypassed the broker (autograd, exclusive)
    passes: int = 0
    rows: int = 0
    combined_passes: int = 0      # passes that served more than one call
    max_rows: int = 0


@dataclass(eq=False)
class _Call:
    """One caller's network call: its inputs split into per-row tensors (sliced and concatenated) and the rest
    (part of the key: equal for every call in a pass)."""
    forward: Callable
    key: tuple
    rows: int
    row_args: dict                # name -> tensor (rows, ...)
    owner: Hashable
    account: Hashable = None
    done_rows: int = 0
    own_seconds: float = 0.0      # this call's share of its passes' time (pass time x its rows / the pass's rows)
    out: torch.Tensor | None = None
    error: BaseException | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)   # the caller's (made on its thread)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def remaining(self) -> int:
        return self.rows - self.done_rows


@dataclass
class _Task:
    """Other work for the worker thread (NetworkBroker.run): fn(*args, **kwargs) in the caller's context variables,
    grad mode (inference mode, no_grad) and CPU autocast, all made on the caller's thread."""
    fn: Callable
    args: tuple
    kwargs: dict
    out: object = None
    error: BaseException | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    grad: tuple = field(default_factory=lambda: (torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
    autocast: tuple = field(default_factory=lambda: (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
    finished: threading.Event = field(default_factory=threading.Event)

    def execute(self) -> None:
        inference, grad = self.grad
        try:
            with (torch.inference_mode() if inference else torch.set_grad_enabled(grad)), \
                    torch.autocast("cpu", dtype=self.autocast[1], enabled=self.autocast[0]):
                self.out = self.context.run(self.fn, *self.args, **self.kwargs)
        except BaseException as e:                      # noqa: BLE001 - raised again on the caller's thread
            self.error = e
        finally:
            self.finished.set()


def _autocast_state() -> tuple:
    return (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
            torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))


class NetworkBroker:
    """See the module docstring. `owner()`: who the calling thread works for (None: nobody in particular; all
    unowned calls are one owner). `max_rows`: the largest pass (a bigger call is split); `min_quantum`: the rows an
    owner that does not lead a pass rides along with when several owners are active."""

    def __init__(self, *, owner: Callable[[], Hashable] = lambda: None, account: Callable[[], Hashable] = lambda: None,
                 max_rows: int = 256, min_quantum: int = 16, active_s: float = 0.1, linger_s: float = 0.005):
        if max_rows < 1 or min_quantum < 1:
            raise ValueError(f"max_rows and min_quantum must be >= 1, got {max_rows}, {min_quantum}")
        if not (active_s >= 0 and linger_s >= 0):
            raise ValueError(f"active_s and linger_s must be >= 0, got {active_s!r}, {linger_s!r}")
        self.owner, self.account, self.max_rows, self.min_quantum = owner, account, int(max_rows), int(min_quantum)
        self.active_s, self.linger_s = float(active_s), float(linger_s)
        self._served: dict[Hashable, float] = {}      # owner -> when its last call was finished (monotonic)
        self._attained: dict[Hashable, int] = {}      # owner -> rows served since it became active
        self._waited: OrderedDict = OrderedDict()    # account -> seconds its calls waited for others' rows
        self.stats = BrokerStats()
        self._line: list[_Call] = []                  # waiting calls, oldest first (partly done ones re-queued last)
        self._tasks: list[_Task] = []                 # other work for the worker thread (`run`), first come first
        self._wake = threading.Condition()
        self._locks: dict[int, threading.RLock] = {}  # id(network) -> held by the worker during a pass, or by a caller
        self._worker: threading.Thread | None = None
        self._held = threading.local()                # .nets: ids of the networks this thread holds (exclusive)

    # ------------------------------------------------------------ installing on a network
    def install(self, net: nn.Module) -> nn.Module:
        """Route `net`'s forward through this broker (idempotent; a network on another broker moves to this one).
        Forward pre-hooks and hooks on `net` itself still run on the caller's thread around the call; its submodules
        run on the worker."""
        current = getattr(net, _ATTR, None)
        if current is not None:
            if current[0] is self:
                return net
            self.uninstall(net)                         # moves here (e.g. a second app built on the same models)
        own_forward = net.forward
        self._locks[id(net)] = threading.RLock()
        setattr(net, _ATTR, (self, own_forward))
        net.forward = lambda x, t, labels=None, **extra: self.call(net, own_forward, x, t, labels, **extra)
        return net

    @staticmethod
    def uninstall(net: nn.Module) -> None:
        """Give `net` its own forward back."""
        if getattr(net, _ATTR, None) is not None:
            del net.forward                             # the instance attribute; the class's forward shows again
            delattr(net, _ATTR)

    # ------------------------------------------------------------ the caller's side
    def call(self, net: nn.Module, forward: Callable, x: torch.Tensor, t: torch.Tensor, labels=None, **extra):
        """forward(x, t, labels, **extra) for this caller, through the line (or directly: see the module doc)."""
        recording = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        on_worker = threading.current_thread() is self._worker       # inside `run`: the line would wait for itself
        if recording or on_worker or id(net) in getattr(self._held, "nets", ()):
            self.stats.calls += 1
            self.stats.direct += 1
            with self._locks[id(net)]:                  # not during a pass, nor inside another thread's exclusive
                return forward(x, t, labels, **extra)
        rows = x.shape[0]
        row_args, fixed = {"x": x, "t": t.expand(rows) if t.ndim == 0 else t}, []
        if labels is not None:
            row_args["labels"] = labels
        for name, value in sorted(extra.items()):
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
                row_args[name] = value
            else:
                fixed.append((name, value if not torch.is_tensor(value) else value.item()))
        key = (id(net), torch.is_inference_mode_enabled(), _autocast_state(), tuple(fixed),
               tuple((name, v.dtype, v.device, tuple(v.shape[1:])) for name, v in row_args.items()))
        job = _Call(forward, key, rows, row_args, self.owner(), self.account())
        start = time.perf_counter()
        with self._wake:
            self.stats.calls += 1
            self._line.append(job)
            self._start_worker()
            self._wake.notify()
        job.finished.wait()
        if job.account is not None:
            with self._wake:
                waited = self._waited.pop(job.account, 0.0) + max(0.0, time.perf_counter() - start - job.own_seconds)
                self._waited[job.account] = waited
                while len(self._waited) > ACCOUNTS_KEPT:
                    self._waited.popitem(last=False)
        if job.error is not None:
            raise job.error
        return job.out

    def run(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) on the worker thread, between two passes, in the caller's context variables; its result
        (or its exception, raised here). For other torch work of the app (a classifier, start-up timing): OpenMP gives
        each thread that runs a parallel op its own team of threads, and once those outnumber the CPUs, libgomp cuts
        every team's spin between parallel regions (bench/omp_teams.py), slowing every network pass. Work run here
        keeps the process at one team. Called on the worker thread itself, fn runs at once."""
        if threading.current_thread() is self._worker:
            return fn(*args, **kwargs)
        task = _Task(fn, args, kwargs)
        with self._wake:
            self._tasks.append(task)
            self._start_worker()
            self._wake.notify()
        task.finished.wait()
        if task.error is not None:
            raise task.error
        return task.out

    def waited_for_others(self, account: Hashable) -> float:
        """Seconds the calls made under `account` (e.g. one request) spent waiting for other callers' rows: in the
        line, and the others' share of the passes they ran in. A time limit that subtracts it counts only a request's
        own work (at most one pass of its own call while alone)."""
        with self._wake:
            return self._waited.get(account, 0.0)

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name="network-broker", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------ the worker's side
    def _take(self) -> list[tuple[_Call, int]]:
        """The next pass: [(call, rows of it)], from the line (lock held, line not empty). See the module doc."""
        now = time.monotonic()
        waiting = list(dict.fromkeys(c.owner for c in self._line))           # owners in line, first come first
        for owner in [o for o, t in self._served.items() if now - t > self.active_s and o not in waiting]:
            del self._served[owner]                                           # gone quiet: its account closes
            self._attained.pop(owner, None)
        if len(set(waiting) | set(self._served)) == 1:
            first = self._line[0]
            chosen = [(c, c.remaining) for c in self._line if c.key == first.key]
        else:
            firsts = {o: next(c for c in self._line if c.owner == o) for o in waiting}
            lead = min(waiting, key=lambda o: (self._attained.get(o, 0), firsts[o].remaining, waiting.index(o)))
            key, chosen, seen = firsts[lead].key, [(firsts[lead], firsts[lead].remaining)], {lead}
            for c in self._line:
                if c.key == key and c.owner not in seen:
                    seen.add(c.owner)
                    chosen.append((c, min(c.remaining, self.min_quantum)))
        budget, taken = self.max_rows, []
        for c, n in chosen:
            n = min(n, budget)
            if n <= 0:
                break
            taken.append((c, n))
            budget -= n
            self._attained[c.owner] = self._attained.get(c.owner, 0) + n
        for c, _ in taken:                              # whoever is served goes to the back of the line
            self._line.remove(c)
            self._line.append(c)
        return taken

    def _absent(self) -> bool:
        """Whether an owner served within `active_s` has no call in the line (lock held)."""
        now, waiting = time.monotonic(), {c.owner for c in self._line}
        return any(now - t <= self.active_s and o not in waiting for o, t in self._served.items())

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._line and not self._tasks:
                    self._wake.wait()
                task = self._tasks.pop(0) if self._tasks else None   # other work (`run`) first: it is short
                if task is None:
                    deadline = time.monotonic() + self.linger_s
                    while self._absent() and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)      # an active owner's next call, on its way: let it ride along
                    taken = self._take()
            if task is not None:
                task.execute()
                continue
            self._run_pass(taken)
            with self._wake:
                now = time.monotonic()
                for c, _ in taken:
                    if c.finished.is_set():
                        self._line.remove(c)
                        self._served[c.owner] = now

    def _run_pass(self, taken: list[tuple[_Call, int]]) -> None:
        """One forward pass over the taken rows; each call's output rows written back in place."""
        first = taken[0][0]
        inference, autocast = first.key[1], first.key[2]
        fixed = dict(first.key[3])
        slices = [(c, slice(c.done_rows, c.done_rows + n)) for c, n in taken]
        try:
            inputs = {name: torch.cat([c.row_args[name][s] for c, s in slices]) if len(slices) > 1
                      else slices[0][0].row_args[name][slices[0][1]] for name in first.row_args}
            cpu = torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0])
            cuda = torch.autocast("cuda", dtype=autocast[3], enabled=autocast[2]) if autocast[2] else \
                contextlib.nullcontext()
            grad = torch.inference_mode() if inference else torch.no_grad()
            tick = time.perf_counter()
            with self._locks[first.key[0]], grad, cpu, cuda:
                # in the first caller's context variables (e.g. diffusion.backends.active(): a runtime serves it)
                out = first.context.run(first.forward, inputs.pop("x"), inputs.pop("t"), inputs.pop("labels", None),
                                        **inputs, **fixed)
            seconds = time.perf_counter() - tick
        except BaseException as e:                      # every caller of the pass gets the error, none hangs
            for c, _ in taken:
                c.error = e
                c.finished.set()
            return
        rows = sum(n for _, n in taken)
        self.stats.passes += 1
        self.stats.rows += rows
        self.stats.max_rows = max(self.stats.max_rows, rows)
        self.stats.combined_passes += len(taken) > 1
        start = 0
        for c, n in taken:
            c.own_seconds += seconds * n / rows
            part = out[start:start + n]
            start += n
            if c.done_rows == 0 and n == c.rows:
                c.out = part
            else:
                if c.out is None:
                    c.out = out.new_empty((c.rows, *out.shape[1:]))
                c.out[c.done_rows:c.done_rows + n] = part
            c.done_rows += n
            if c.remaining == 0:
                c.finished.set()


@contextlib.contextmanager
def exclusive(net: nn.Module):
    """A context in which this thread alone uses `net`: the broker's worker stays off it, and this thread's calls
    run directly (e.g. forward hooks on its blocks that must see one call). A no-op for a network not installed on
    a broker."""
    installed = getattr(net, _ATTR, None)
    if installed is None:
        yield
        return
    broker = installed[0]
    held = broker._held.__dict__.setdefault("nets", set())
    with broker._locks[id(net)]:
        outer = id(net) in held
        held.add(id(net))
        try:
            yield
        finally:
            if not outer:
                held.discard(id(net))
