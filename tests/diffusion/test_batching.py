"""The batching broker (diffusion/batching.py): concurrent callers get their own rows back, as alone; passes are
combined; several owners share by rows; errors reach every caller; autograd and exclusive calls go direct."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from diffusion import anatomy
from diffusion.batching import NetworkBroker, exclusive
from diffusion.pipeline import Pipeline
from factories import tiny_score, tiny_students


class Recorder(nn.Module):
    """A per-row network (out = 2 x + t + label) that records the batch size of every forward pass."""

    def __init__(self, gate: threading.Event | None = None):
        super().__init__()
        self.sizes, self.gate, self.entered = [], gate, threading.Event()

    def forward(self, x, t, labels=None, guidance=None):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(x.shape[0])
        out = 2 * x + t.view(-1, 1, 1, 1)
        if labels is not None:
            out = out + labels.view(-1, 1, 1, 1).to(x.dtype)
        if guidance is not None:
            out = out * guidance.view(-1, 1, 1, 1)
        return out


def in_threads(fns):
    """Run the callables on threads started together; their results in order (an exception is re-raised)."""
    results, errors = [None] * len(fns), []

    def run(i):
        try:
            with torch.inference_mode():    # as the app's handlers run (thread-local: each thread enters it)
                results[i] = fns[i]()
        except BaseException as e:          # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    if errors:
        raise errors[0]
    return results


def lined_up(broker, net, gate, fns, owners=None):
    """Hold the worker in a 1-row pass (at `gate`) until every call of `fns` waits in the line, then let it go: the
    passes after the first show how the broker combines a line it finds full. Returns the fns' results."""
    blocker = threading.Thread(target=lambda: in_threads([lambda: net(torch.zeros(1, 1, 2, 2), torch.zeros(1))]))
    blocker.start()
    assert net.entered.wait(10)
    calls = broker.stats.calls

    def release():
        while broker.stats.calls < calls + len(fns):
            threading.Event().wait(0.001)
        gate.set()

    threading.Thread(target=release).start()
    out = in_threads(fns)
    blocker.join(10)
    return out


def test_a_lone_call_is_the_network_itself():
    net = tiny_score(0, num_classes=10).net
    x, t, y = torch.randn(5, 1, 28, 28), torch.rand(5), torch.tensor([0, 1, 2, 3, 10])
    with torch.inference_mode():
        expected = net(x, t, y)
        broker = NetworkBroker()
        broker.install(net)
        got = net(x, t, y)
    assert torch.equal(got, expected)
    assert (broker.stats.calls, broker.stats.passes, broker.stats.rows) == (1, 1, 5)


def test_waiting_calls_are_combined_into_one_pass_and_each_gets_its_own_rows():
    gate = threading.Event()
    net = Recorder(gate)
    broker = NetworkBroker()
    broker.install(net)
    xs = [torch.full((n, 1, 2, 2), float(k)) for k, n in enumerate((3, 1, 4), start=1)]
    outs = lined_up(broker, net, gate, [lambda x=x: net(x, torch.full((x.shape[0],), 0.5), torch.arange(x.shape[0]))
                                        for x in xs])
    assert net.sizes == [1, 8]                  # the blocker alone, then the three calls in one pass of 3 + 1 + 4
    for x, out in zip(xs, outs):
        assert torch.equal(out, 2 * x + 0.5 + torch.arange(x.shape[0]).view(-1, 1, 1, 1))
    assert broker.stats.combined_passes == 1 and broker.stats.max_rows == 8


def test_samplers_on_threads_get_exactly_the_images_they_get_alone():
    """Four concurrent requests (own seeds, labels, guidance; one a different sampler) through one broker."""
    model = tiny_score(0, num_classes=10)
    pipe = Pipeline(model, name="pixel-cond", precision="fp32")
    requests = [dict(labels=[3] * 4, seed=1, sampler="dpmpp_2m_sde", num_steps=6, guidance=1.0),
                dict(labels=[0, 1, 2], seed=2, sampler="dpmpp_2m_sde", num_steps=6, guidance=1.5),
                dict(labels=[7] * 5, seed=3, sampler="euler_maruyama", num_steps=9, guidance=2.0),
                dict(labels=[9], seed=4, sampler="dpmpp_2m", num_steps=4, guidance=1.0)]
    alone = [pipe.generate(**r) for r in requests]
    broker = NetworkBroker(owner=lambda: threading.current_thread().name)
    broker.install(model.net)
    together = in_threads([lambda r=r: pipe.generate(**r)[0] for r in requests])
    for (a, _), b in zip(alone, together):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert broker.stats.calls == sum(last.nfe for _, last in alone)       # one call per evaluation (CFG in it)
    assert broker.stats.passes < broker.stats.calls


def test_a_guidance_embedded_student_keeps_its_per_row_guidance():
    teacher = tiny_score(0, num_classes=10)
    student = tiny_students(teacher, names=["pixel-cond-distilled"])["pixel-cond-distilled"]
    pipe = Pipeline(student, name="pixel-cond-distilled", precision="fp32")
    requests = [dict(labels=[1] * 3, seed=5, guidance=1.0), dict(labels=[4] * 2, seed=6, guidance=3.0)]
    alone = [pipe.generate(**r)[0] for r in requests]
    NetworkBroker(owner=lambda: threading.current_thread().name).install(student.net)
    together = in_threads([lambda r=r: pipe.generate(**r)[0] for r in requests])
    for a, b in zip(alone, together):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_several_owners_share_by_rows_and_a_big_call_is_split():
    """Owner A's 64-row call and owner B's 8-row call wait together: a pass gives B its 8 rows and A at most 16
    (min_quantum), so B is served in the first pass, not after A's 64 rows; A alone then gets the rest at once."""
    gate = threading.Event()
    net = Recorder(gate)
    owner_of = {}
    broker = NetworkBroker(owner=lambda: owner_of.get(threading.current_thread().name), min_quantum=16)
    broker.install(net)

    def call(name, n):
        def run():
            owner_of[threading.current_thread().name] = name
            return net(torch.ones(n, 1, 2, 2), torch.zeros(n))
        return run

    outs = lined_up(broker, net, gate, [call("A", 64), call("B", 8)])
    assert [o.shape[0] for o in outs] == [64, 8] and all(torch.equal(o, torch.full_like(o, 2.0)) for o in outs)
    assert net.sizes == [1, 16 + 8, 48]


def test_one_owner_alone_is_batched_whole():
    gate = threading.Event()
    net = Recorder(gate)
    broker = NetworkBroker(min_quantum=4)            # every thread: owner None, so one owner
    broker.install(net)
    lined_up(broker, net, gate, [lambda: net(torch.ones(10, 1, 2, 2), torch.zeros(10)) for _ in range(3)])
    assert net.sizes == [1, 30]


def test_an_error_in_a_pass_reaches_every_caller_and_the_broker_keeps_serving():
    class Fails(nn.Module):
        def forward(self, x, t, labels=None):
            if (x < 0).any():
                raise RuntimeError("negative input")
            return x + 1

    net = Fails()
    broker = NetworkBroker()
    broker.install(net)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="negative input"):
            net(-torch.ones(2, 1, 2, 2), torch.zeros(2))
        assert torch.equal(net(torch.zeros(1, 1, 2, 2), torch.zeros(1)), torch.ones(1, 1, 2, 2))


def test_autograd_calls_and_exclusive_sections_run_directly_on_the_caller():
    net = Recorder()
    broker = NetworkBroker()
    broker.install(net)
    x = torch.ones(2, 1, 2, 2, requires_grad=True)
    net(x, torch.zeros(2)).sum().backward()           # recording autograd: direct, the graph intact
    assert torch.equal(x.grad, torch.full_like(x, 2.0)) and broker.stats.direct == 1
    seen = []
    net.register_forward_hook(lambda m, a, out: seen.append(threading.current_thread().name))
    with torch.inference_mode(), exclusive(net):
        net(torch.ones(1, 1, 2, 2), torch.zeros(1))
    assert seen == [threading.current_thread().name] and broker.stats.direct == 2


def test_pre_hooks_run_on_the_callers_thread():
    net = Recorder()
    NetworkBroker().install(net)
    seen = []
    net.register_forward_pre_hook(lambda m, a: seen.append(threading.current_thread().name))
    with torch.inference_mode():
        net(torch.ones(1, 1, 2, 2), torch.zeros(1))
    assert seen == [threading.current_thread().name]


def test_look_inside_sees_its_own_call_on_an_installed_network():
    model = tiny_score(0, num_classes=10)
    x = torch.randn(1, 28, 28)
    before = anatomy.look_inside(model, x, 1.0, 3)
    NetworkBroker().install(model.net)
    after = anatomy.look_inside(model, x, 1.0, 3)
    assert [n for n, _ in after.features] == [n for n, _ in before.features]
    torch.testing.assert_close(after.denoised, before.denoised)


def test_install_uninstall_and_bad_arguments():
    net = Recorder()
    broker = NetworkBroker()
    assert broker.install(net) is net and broker.install(net) is net
    other = NetworkBroker()
    other.install(net)                                 # moves: a second app built on the same models
    with torch.inference_mode():
        net(torch.ones(1, 1, 2, 2), torch.zeros(1))
    assert (other.stats.calls, broker.stats.calls) == (1, 0)
    NetworkBroker.uninstall(net)
    assert "forward" not in net.__dict__
    with pytest.raises(ValueError, match="max_rows and min_quantum must be >= 1"):
        NetworkBroker(max_rows=0)
    with pytest.raises(ValueError, match="active_s and linger_s must be >= 0"):
        NetworkBroker(linger_s=-1)


def test_the_time_a_call_waited_for_others_is_kept_per_account():
    """A call that waits ~0.3 s behind another owner's pass records about that as waited for others; a call alone
    records ~nothing."""
    gate = threading.Event()
    net = Recorder(gate)
    accounts = {}
    broker = NetworkBroker(owner=lambda: accounts.get(threading.current_thread().name),
                           account=lambda: accounts.get(threading.current_thread().name))

    def call(name):
        def run():
            accounts[threading.current_thread().name] = name
            return net(torch.ones(2, 1, 2, 2), torch.zeros(2))
        return run

    broker.install(net)
    blocker = threading.Thread(target=lambda: in_threads([call("first")]))
    blocker.start()
    assert net.entered.wait(10)
    threading.Timer(0.3, gate.set).start()
    in_threads([call("second")])
    blocker.join(10)
    assert 0.2 <= broker.waited_for_others("second") <= 30
    assert broker.waited_for_others("first") < broker.waited_for_others("second")
    assert broker.waited_for_others("nobody") == 0.0


def test_an_owner_between_two_steps_still_counts_as_active():
    """B was just served (it is computing its next step): A's three waiting calls go one per pass, so B's next call
    waits behind one of A's calls, not behind all three."""
    gate = threading.Event()
    net = Recorder(gate)
    owner_of = {}
    broker = NetworkBroker(owner=lambda: owner_of.get(threading.current_thread().name, "B"), active_s=5.0)
    broker.install(net)

    def call_as_a():
        owner_of[threading.current_thread().name] = "A"
        return net(torch.ones(10, 1, 2, 2), torch.zeros(10))

    lined_up(broker, net, gate, [call_as_a] * 3)       # the blocker's 1-row pass is B's
    assert net.sizes == [1, 10, 10, 10]
    gate = threading.Event()
    net = Recorder(gate)
    broker = NetworkBroker(owner=lambda: owner_of.get(threading.current_thread().name, "B"), active_s=0.0)
    broker.install(net)
    lined_up(broker, net, gate, [call_as_a] * 3)       # B no longer counts: A alone, batched whole
    assert net.sizes == [1, 30]


def test_a_pass_runs_in_its_callers_context_variables():
    """The worker runs a pass in the caller's contextvars (e.g. diffusion.backends.active(), which lets an installed
    runtime serve the samplers' calls), not in the worker thread's own."""
    import contextvars

    flag = contextvars.ContextVar("flag", default="worker's")
    seen = []

    class Reads(nn.Module):
        def forward(self, x, t, labels=None):
            seen.append(flag.get())
            return x

    net = Reads()
    NetworkBroker().install(net)
    flag.set("caller's")
    with torch.inference_mode():
        net(torch.ones(1, 1, 2, 2), torch.zeros(1))
    assert seen == ["caller's"]


def test_other_work_runs_on_the_worker_thread_between_passes():
    """broker.run: the function runs on the worker thread (the one that runs the passes: one OpenMP team for the
    process), in the caller's context variables, its result or its exception handed back; a pass in progress
    finishes first; on the worker thread itself it runs at once."""
    import contextvars

    gate = threading.Event()
    net = Recorder(gate)
    broker = NetworkBroker()
    broker.install(net)
    flag = contextvars.ContextVar("flag", default="worker's")
    flag.set("caller's")
    first = threading.Thread(target=lambda: in_threads([lambda: net(torch.zeros(3, 1, 2, 2), torch.zeros(3))]))
    first.start()
    assert net.entered.wait(10)                                 # the worker is inside a pass
    order = []
    def caller():
        flag.set("second caller's")
        order.append(broker.run(lambda a, b=0: (threading.current_thread().name, flag.get(), a + b, list(net.sizes)),
                                2, b=3))

    ran = threading.Thread(target=caller)
    ran.start()
    threading.Event().wait(0.05)
    assert not order                                            # waits for the pass
    gate.set()
    first.join(10)
    ran.join(10)
    name, seen_flag, total, sizes = order[0]
    assert (name, seen_flag, total, sizes) == ("network-broker", "second caller's", 5, [3])
    assert broker.run(lambda: flag.get()) == "caller's"
    assert broker.run(lambda: broker.run(lambda: threading.current_thread().name)) == "network-broker"
    with pytest.raises(ZeroDivisionError):
        broker.run(lambda: 1 / 0)
    assert net(torch.ones(1, 1, 2, 2), torch.zeros(1)).shape == (1, 1, 2, 2)      # and it keeps serving
    with torch.inference_mode():                                # the caller's grad mode and autocast go along
        assert broker.run(lambda: (torch.is_inference_mode_enabled(), torch.is_grad_enabled())) == (True, False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert broker.run(lambda: (torch.is_inference_mode_enabled(), torch.is_grad_enabled(),
                                   torch.is_autocast_enabled("cpu"))) == (False, False, True)
    assert broker.run(lambda: (torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))) == (True, False)
    # a network called inside `run` runs at once on the worker (the line would wait for the worker itself)
    with torch.inference_mode():
        assert broker.run(lambda: net(torch.ones(2, 1, 2, 2), torch.zeros(2)).shape) == (2, 1, 2, 2)
    assert broker.stats.direct >= 1
