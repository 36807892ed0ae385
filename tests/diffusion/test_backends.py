"""diffusion.backends: every backend evaluates the same U-Net as eager (within its precision's tolerance), in place,
with the network's hooks, fallbacks and weight updates honoured; Pipeline's `backend` switch."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from factories import tiny_score, tiny_students

from diffusion import backends
from diffusion.backends import (BACKENDS, BackendUnavailable, active, available, install, installed,
                                resolve_backend)
from diffusion.pipeline import Pipeline
from diffusion.samplers import sample

# max |out - eager| on the tiny U-Net's outputs (O(1) values, std ~0.27): fp32 runtimes only reorder sums
TOLERANCE = {"channels_last": 1e-4, "compile": 1e-4, "onnxruntime": 1e-4, "openvino": 1e-4}


def bf16_close(out, ref) -> bool:
    """bf16 keeps 8 mantissa bits (relative rounding 2^-9 per operation, compounded through ~20 layers of the
    untrained tiny net): mean |diff| within 20% of the output's std, max |diff| within 30% of its max |value|.
    (torch autocast stays near 1%; OpenVINO's bf16 mode rounds more of the graph and lands near 10%: a swapped or
    missing input would be off by the output's whole scale.)"""
    diff = (out.float() - ref.float()).abs()
    return bool(diff.mean() < 0.2 * ref.std() and diff.max() < 0.3 * ref.abs().max())
FAST = ["channels_last", "onnxruntime", "openvino"]     # torch.compile's compiles take tens of seconds: slow tests


def _needs(backend):
    if not available(backend):
        pytest.skip(f"{backend}'s package is not installed")


def _inputs(model, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.sample_shape, generator=g)
    t = torch.rand(batch, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g) if model.conditional else None
    extra = {"guidance": torch.rand(batch, generator=g) * 3} if model.guidance_embed else {}
    return x, t, labels, extra


def _models():
    teacher = tiny_score(num_classes=10)
    student = tiny_students(teacher, names=["pixel-cond-distilled"])["pixel-cond-distilled"]
    return {"conditional": teacher, "unconditional": tiny_score(1), "guidance-embedded": student}


def _assert_matches_eager(backend, precision):
    for kind, model in _models().items():
        reference = copy.deepcopy(model)
        (net,) = install(model, backend, precision)
        assert net is model.net and installed(net) == backend
        for batch in (3, 8):
            x, t, labels, extra = _inputs(model, batch, seed=batch)
            with torch.inference_mode(), active():
                out, ref = net(x, t, labels, **extra), reference.net(x, t, labels, **extra)
            assert out.shape == ref.shape == x.shape and out.dtype == torch.float32
            err = float((out - ref).abs().max())
            ok = bf16_close(out, ref) if precision == "bf16" else err < TOLERANCE[backend]
            assert ok, f"{backend} {precision} on the {kind} U-Net at batch {batch}: max |diff| {err}"


@pytest.mark.parametrize("backend", FAST)
def test_backend_equals_eager_at_two_batch_sizes(backend):
    _needs(backend)
    _assert_matches_eager(backend, "fp32")


def test_openvino_bf16_is_close_to_eager_but_not_identical():
    _needs("openvino")
    _assert_matches_eager("openvino", "bf16")
    model = tiny_score(num_classes=10)
    reference = copy.deepcopy(model)
    install(model, "openvino", "bf16")
    x, t, labels, _ = _inputs(model, 4)
    with torch.inference_mode(), active():
        assert not torch.equal(model.net(x, t, labels), reference.net(x, t, labels))   # bf16 did run


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_equals_eager_at_two_batch_sizes(precision):
    if precision == "fp32":
        _assert_matches_eager("compile", "fp32")
        return
    model, reference = tiny_score(num_classes=10), tiny_score(num_classes=10)   # autocast comes from the caller
    install(model, "compile", "bf16")
    for batch in (3, 8):
        x, t, labels, _ = _inputs(model, batch)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), active():
            out, ref = model.net(x, t, labels), reference.net(x, t, labels)
        assert bf16_close(out, ref)


def test_eager_is_bit_identical_to_a_network_that_never_had_a_backend():
    _needs("onnxruntime")
    model, untouched = tiny_score(num_classes=10), tiny_score(num_classes=10)
    install(model, "onnxruntime")
    install(model, "eager")
    assert "forward" not in model.net.__dict__ and installed(model.net) == "eager"
    x, t, labels, _ = _inputs(model, 5)
    with torch.inference_mode(), active():
        assert torch.equal(model.net(x, t, labels), untouched.net(x, t, labels))
    # and the whole Pipeline path: backend "eager" = the sampler on the bare score model, as before backends
    pipe = Pipeline(model, name="t", precision="fp32", backend="eager")
    images, _ = pipe.generate(torch.arange(4), sampler="ddim", num_steps=3, seed=7)
    g = torch.Generator().manual_seed(7)
    x0 = untouched.sde.prior_sample((4, *untouched.sample_shape), g)
    with torch.inference_mode(), active():
        out, _ = sample("ddim", untouched, x0, torch.arange(4), num_steps=3, generator=g, guidance=1.0)
    assert torch.equal(images, out.clamp(0, 1)[:, 0])


def test_bad_backend_name_lists_the_valid_ones():
    expected = "backend must be one of auto, eager, channels_last, compile, onnxruntime, openvino, got 'tensorrt'"
    assert BACKENDS == ("auto", "eager", "channels_last", "compile", "onnxruntime", "openvino")
    with pytest.raises(ValueError) as err:
        Pipeline(tiny_score(), backend="tensorrt")
    assert str(err.value) == expected
    with pytest.raises(ValueError, match="backend must be one of"):
        install(tiny_score(), "tensorrt")


def test_missing_package_is_a_clear_error_and_auto_falls_back_to_eager(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnx", "onnxruntime", "openvino") else real(name, *a))
    assert not available("onnxruntime") and not available("openvino") and available("eager")
    with pytest.raises(BackendUnavailable) as err:
        install(tiny_score(), "onnxruntime")
    assert str(err.value) == ("backend 'onnxruntime' needs the Python package(s) onnx, onnxruntime: "
                              "pip install onnx onnxruntime (or use backend 'eager')")
    with pytest.raises(BackendUnavailable, match="pip install openvino"):
        Pipeline(tiny_score(num_classes=10), name="t", backend="openvino").generate([1], num_steps=2)
    assert resolve_backend("auto", "cpu", bf16_hardware=True) == "eager"          # documented fallback of "auto"
    assert Pipeline(tiny_score(num_classes=10), name="t").compute_backend == "eager"


@pytest.mark.parametrize("backend", FAST)
def test_forward_pre_hooks_run_on_every_evaluation(backend):
    _needs(backend)
    model = tiny_score(num_classes=10)
    seen = []
    model.net.register_forward_pre_hook(lambda mod, args: seen.append(("before", args[0].shape[0])))
    pipe = Pipeline(model, name="t", precision="fp32", backend=backend)
    model.net.register_forward_pre_hook(lambda mod, args: seen.append(("after", args[0].shape[0])))
    _, last = pipe.generate(torch.arange(3), sampler="ddim", num_steps=4, guidance=2.0)
    assert installed(model.net) == backend
    assert last.nfe == 4 and seen == [("before", 6), ("after", 6)] * 4     # guided: one call on the doubled batch


def test_inputs_an_export_does_not_cover_fall_back_to_eager():
    _needs("onnxruntime")
    model = tiny_score(num_classes=10)
    reference = copy.deepcopy(model)
    install(model, "onnxruntime")
    x, t, labels, _ = _inputs(model, 4)
    embeddings = model.label_embeddings()[labels]                            # float labels: (B, D) embeddings
    with torch.inference_mode(), active():
        assert torch.equal(model.net(x, t, embeddings), reference.net(x, t, embeddings))
    x.requires_grad_(True)                                                   # gradients: eager, differentiable
    model.net(x, t, labels).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    seen = []                                                                # a hook on a block: eager
    handle = model.net.conv_out.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    with torch.inference_mode(), active():
        assert torch.equal(model.net(x, t, labels), reference.net(x, t, labels)) and seen == [x.shape]
    handle.remove()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        with torch.inference_mode(), active():
            model.net(x.detach(), t, labels + 20)


def test_exported_runtime_follows_weight_updates_and_copies_run_eager():
    _needs("onnxruntime")
    model = tiny_score(num_classes=10)
    install(model, "onnxruntime")
    x, t, labels, _ = _inputs(model, 4)
    with torch.inference_mode(), active():
        before = model.net(x, t, labels)
    with torch.no_grad():
        model.net.conv_out.bias.add_(1.0)                                    # an in-place update, as an optimizer's
    clone = copy.deepcopy(model)                                             # copies the forward, not the runtime
    with torch.inference_mode(), active():
        after, eager = model.net(x, t, labels), backends._eager(model.net, x, t, labels)
        assert float((after - before - 1.0).abs().max()) < 1e-4
        assert float((after - eager).abs().max()) < 1e-4
        assert installed(clone.net) == "eager" and torch.equal(clone.net(x, t, labels), eager)


def test_pipeline_backend_resolution(monkeypatch):
    model = tiny_score(num_classes=10)
    assert resolve_backend("auto", "cuda", bf16_hardware=True) == "eager"
    assert resolve_backend("auto", "cpu", bf16_hardware=False) == "eager"       # no bf16 hardware: unmeasured
    assert Pipeline(model, backend="eager").compute_backend == "eager"
    if available("onnxruntime"):
        ort = Pipeline(model, name="t", precision="bf16", backend="onnxruntime")
        assert ort.compute_backend == "onnxruntime" and ort.compute_precision == "fp32"   # fp32 only
    monkeypatch.setattr("diffusion.pipeline.cpu_has_bf16", lambda: True)
    assert resolve_backend("auto", "cpu", bf16_hardware=True) == "eager"          # AUTO_BACKEND: eager (measured)
    student = tiny_students(model, names=["pixel-cond-distilled"])["pixel-cond-distilled"]
    auto = Pipeline(student, name="pixel-cond-distilled")                          # precision and backend "auto"
    assert (auto.compute_backend, auto.compute_precision) == ("eager", "bf16")    # students too (measured)
    for precision in ("fp32", "bf16"):                                            # asked for: honoured
        asked = Pipeline(model, name="t", precision=precision)
        assert (asked.compute_backend, asked.compute_precision) == ("eager", precision)
    if available("openvino"):
        monkeypatch.setattr(backends, "AUTO_BACKEND", "openvino")                 # where a deployment opts in
        assert resolve_backend("auto", "cpu", bf16_hardware=True) == "openvino"
        assert Pipeline(student, name="pixel-cond-distilled").compute_backend == "openvino"
        two_step = tiny_students(model, names=["pixel-cond-distilled-2step"])["pixel-cond-distilled-2step"]
        few = Pipeline(two_step, name="pixel-cond-distilled-2step")               # FD rose under its bf16: eager
        assert few.compute_backend == "eager"
        monkeypatch.setattr("diffusion.pipeline.cpu_has_bf16", lambda: False)
        assert Pipeline(model, name="t").compute_backend == "eager"


def test_a_wrapper_installed_after_the_pipeline_keeps_its_place_and_sees_the_backend():
    """As diffusion.batching's broker does: it replaces net.forward by a call of the forward it found."""
    _needs("onnxruntime")
    model, reference = tiny_score(num_classes=10), tiny_score(num_classes=10)
    pipe = Pipeline(model, name="t", precision="fp32", backend="onnxruntime")      # attaches the dispatcher
    found, calls = model.net.forward, []

    def wrapper(x, t, labels=None, **extra):
        calls.append(x.shape[0])
        return found(x, t, labels, **extra)

    model.net.forward = wrapper
    x, t, labels, _ = _inputs(model, 4)
    pipe._network()                                                                 # installs the runtime
    with torch.inference_mode(), active():
        out = model.net(x, t, labels)
        assert model.net.forward is wrapper and installed(model.net) == "onnxruntime" and calls == [4]
        assert float((out - reference.net(x, t, labels)).abs().max()) < TOLERANCE["onnxruntime"]
        install(model, "eager")                                 # under the wrapper: the class's forward, exactly
        assert model.net.forward is wrapper and torch.equal(model.net(x, t, labels), reference.net(x, t, labels))
    assert calls == [4, 4]


def test_openvino_compiles_one_copy_per_batch_size_and_keeps_the_latest(monkeypatch):
    _needs("openvino")
    monkeypatch.setattr(backends._OpenVino, "shapes_kept", 2)
    model, reference = tiny_score(num_classes=10), tiny_score(num_classes=10)
    (net,) = install(model, "openvino", "fp32")
    for batch in (3, 5, 7, 3):
        x, t, labels, _ = _inputs(model, batch, seed=batch)
        with torch.inference_mode(), active():
            err = float((net(x, t, labels) - reference.net(x, t, labels)).abs().max())
        assert err < TOLERANCE["openvino"]
    kept = [key[0][0] for key in backends._RUNTIMES[net].requests]                # the x shape's batch
    assert kept == [7, 3]                                                          # 5 evicted, 3 recompiled


def test_outside_a_pipeline_call_the_shared_network_stays_eager():
    """Zero-shot classification, the score field, likelihoods call the same score model directly: fp32 as before."""
    _needs("openvino")
    model, reference = tiny_score(num_classes=10), tiny_score(num_classes=10)
    install(model, "openvino", "bf16")
    x, t, labels, _ = _inputs(model, 4)
    with torch.inference_mode():
        assert torch.equal(model.net(x, t, labels), reference.net(x, t, labels))
        assert torch.equal(model(x, t, labels), reference(x, t, labels))
        with active():
            assert not torch.equal(model.net(x, t, labels), reference.net(x, t, labels))   # bf16 runtime


def test_the_pipeline_wrappers_show_the_students_grid_to_the_sampler():
    """ddim reads `distilled` off what it is given: a wrapper that hid it ran a student on the Karras grid."""
    teacher = tiny_score(num_classes=10)
    student = tiny_students(teacher, names=["pixel-cond-distilled"])["pixel-cond-distilled"]
    labels = torch.arange(3)
    fp32, _ = Pipeline(student, name="s", precision="fp32", backend="eager").generate(labels, seed=1)
    bf16, _ = Pipeline(student, name="s", precision="bf16", backend="eager").generate(labels, seed=1)
    assert Pipeline(student, precision="bf16", backend="eager")._network().distilled == student.distilled
    assert float((fp32 - bf16).abs().mean()) < 0.02                                # rounding, not another grid
