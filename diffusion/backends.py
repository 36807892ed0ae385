"""Inference backends for the score network: the same U-Net evaluated by a faster runtime, behind a switch.

`install(score_model, backend, precision)` makes every U-Net of a score model (`diffusion.score.networks`: one,
or both of an autoguided pair) evaluate through `backend`, in place: `score_model.net` stays the same `UNet`
object (its attributes, state_dict, and the forward pre-hooks that ui/lab.py registers keep working, and a
wrapper such as a batching broker still sees an `nn.Module` with the signature `net(x, t, labels, guidance=...)`);
only its instance `forward` is replaced by one that hands the inputs to the runtime, inside `active()` (which
Pipeline puts around the samplers' calls; every other caller of the shared network gets eager, as before).
`install(..., "eager")` removes that forward again: the reference path, bit-identical to a network that never had
a backend.

  eager          the PyTorch module as written (the reference; always available)
  channels_last  a private copy of the network with NHWC weights, fed NHWC inputs (oneDNN's preferred layout)
  compile        torch.compile (inductor), batch dimension dynamic (one compile serves every batch size)
  onnxruntime    the network exported to ONNX (torch.onnx, batch dynamic) and run by ONNX Runtime's CPU provider;
                 fp32 only (precision "bf16" is ignored: its CPU provider has no bf16 convolutions)
  openvino       the network converted by OpenVINO (ov.convert_model) on its CPU plugin, compiled once per batch
                 size (static shapes run ~1.7x faster than its dynamic batch), inference precision f32 or bf16 as
                 `precision` says (its own default on AVX512-BF16 is bf16); "auto" on a CPU with bf16 hardware

Exported runtimes (channels_last's copy, onnxruntime, openvino) hold a copy of the weights; they are rebuilt when
any parameter or buffer of the network changes in place (each tensor's `_version` counter: an optimizer step or
load_state_dict), so a network still in training never runs stale weights. Inputs an export does not cover fall
back to the eager forward, with the same result: gradients enabled, a non-CPU or non-float32 input, label
embeddings (float labels) instead of digits, a hook on a block inside the network (diffusion.anatomy).
bench/backends.py measures them all against eager (speed, max pixel difference, FD): bench/results/backends.md.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import importlib.util
import tempfile
import threading
import types
import warnings
import weakref
from pathlib import Path

import torch
from torch import nn

__all__ = ["AUTO_BACKEND", "BACKENDS", "BackendUnavailable", "active", "attach", "available", "install", "installed",
           "resolve_backend"]

BACKENDS = ("auto", "eager", "channels_last", "compile", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino",)}
# What "auto" picks: eager (torch), everywhere. The best runtime measured, OpenVINO with bf16 inference precision on
# an AMD EPYC with AVX512-BF16 (2 threads, other jobs running: load 2-4; bench/results/backends.md, same seeds), ran
# Live's 4-step student 1.48-1.50x faster than fp32 eager at FD 4.09 vs 4.06 (1000 samples), but Generate's default
# only 1.30x faster than torch's bf16 autocast (the app's path), and torch's own bf16 autocast gives Live 1.34x at
# FD 4.05 with nothing to install. Against it: OpenVINO compiles once per batch size (2.5-9 s on the request path),
# and the app's batching broker (diffusion/batching.py) makes passes of every size; and it is a 180 MB dependency.
# So it stays an opt-in backend (`--backend openvino`, `pip install openvino`); set AUTO_BACKEND = "openvino" to make
# "auto" pick it on a CPU with bf16 hardware where it is installed.
AUTO_BACKEND = "eager"


class BackendUnavailable(RuntimeError):
    """A backend whose Python package is not installed."""


def available(backend: str) -> bool:
    """Whether `backend`'s packages are importable (eager, channels_last and compile need torch only)."""
    _check_name(backend)
    return all(importlib.util.find_spec(pkg) is not None for pkg in _PACKAGES.get(backend, ()))


def _check_name(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str, device, bf16_hardware: bool = False) -> str:
    """"auto" -> AUTO_BACKEND on a CPU with bf16 hardware when its package is installed, else "eager" (the documented
    fallback: a missing optional package never breaks "auto"). Any other name is returned as is (checked)."""
    _check_name(backend)
    if backend != "auto":
        return backend
    if AUTO_BACKEND != "eager" and torch.device(device).type == "cpu" and bf16_hardware and available(AUTO_BACKEND):
        return AUTO_BACKEND
    return "eager"


# Set (per thread / task) while a Pipeline samples: an installed runtime serves only those calls. Everything else that
# calls the same shared network (zero-shot classification, the score field, likelihoods) runs eager fp32 as before.
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("diffusion_backends_active", default=False)


@contextlib.contextmanager
def active():
    """Within this block (this thread or task only), installed runtimes evaluate the networks; outside it, eager.
    Pipeline wraps each of the samplers' network calls in it. A batching broker that runs the forward on a worker
    thread must run it in the caller's context (contextvars.copy_context() taken at the call, .run on the worker)
    for the runtime to apply; otherwise those calls run eager (same results, no speed-up)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


# net -> its runtime; weak, so that a network's runtime goes with it, and a deepcopy of an installed network
# (which copies the patched forward, rebound to the copy) finds no runtime and runs eager.
_RUNTIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def installed(net: nn.Module) -> str:
    """The backend `net` currently evaluates through ("eager" when none is installed)."""
    runtime = _RUNTIMES.get(net)
    return runtime.name if runtime is not None else "eager"


def _ours(net: nn.Module) -> bool:
    forward = net.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _accelerated_forward


def attach(score_model: nn.Module) -> None:
    """Put the dispatching forward on every U-Net of `score_model` now (it runs eager until `install` gives it a
    runtime), so that a wrapper installed later on the same forward (diffusion.batching's broker replaces
    `net.forward` by a call of the forward it found) wraps this one, and `install` can switch runtimes under it.
    Pipeline calls it at construction for a non-eager backend."""
    from .score import networks

    for net in networks(score_model):
        if "forward" not in net.__dict__:
            net.forward = types.MethodType(_accelerated_forward, net)


def install(score_model: nn.Module, backend: str, precision: str = "fp32") -> list[nn.Module]:
    """Make every U-Net of `score_model` evaluate through `backend` ("auto" resolved as for a CPU with bf16 hardware
    when `precision` is "bf16") and return those networks. Idempotent: reinstalling the same backend and precision keeps
    the built runtime. Raises BackendUnavailable (naming the pip package) when the backend's package is missing.
    A forward someone else put on the network (a batching broker) is left in place: if it wraps ours (`attach`
    came first), the new runtime runs under it; "eager" then runs the class's forward through ours, unchanged."""
    from .score import networks   # score imports nothing from here; import late to keep the module light

    nets = networks(score_model)
    device = next(score_model.parameters()).device
    backend = resolve_backend(backend, device, bf16_hardware=precision == "bf16")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16' (resolved), got {precision!r}")
    if not available(backend):
        missing = [p for p in _PACKAGES[backend] if importlib.util.find_spec(p) is None]
        raise BackendUnavailable(f"backend {backend!r} needs the Python package(s) {', '.join(missing)}: "
                                 f"pip install {' '.join(missing)} (or use backend 'eager')")
    for net in nets:
        if backend == "eager":
            _RUNTIMES.pop(net, None)
            if _ours(net):
                del net.__dict__["forward"]          # the class's forward again, as if no backend ever was
            continue
        current = _RUNTIMES.get(net)
        if current is None or (current.name, current.precision) != (backend, precision):
            _RUNTIMES[net] = _RUNTIME_TYPES[backend](net, precision)
        if "forward" not in net.__dict__:
            net.forward = types.MethodType(_accelerated_forward, net)
    return nets


def _eager(net: nn.Module, x, t, labels=None, guidance=None):
    """The class's own forward (no hooks: the caller's __call__ already ran them)."""
    return type(net).forward(net, x, t, labels, guidance)


def _accelerated_forward(self: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                         guidance: torch.Tensor | None = None) -> torch.Tensor:
    """UNet.forward's signature; runs the installed runtime, or the eager forward for inputs it does not cover."""
    runtime = _RUNTIMES.get(self)
    if runtime is None or not _ACTIVE.get():
        return _eager(self, x, t, labels, guidance)
    return runtime(x, t, labels, guidance)


def _weights_version(net: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer step, load_state_dict)."""
    return tuple((id(p), p._version) for p in (*net.parameters(), *net.buffers()))


class _Runtime:
    """Base: fallbacks, label checks, and rebuilding the exported copy when the weights change."""
    name = "eager"
    exported = False     # holds a copy of the weights (rebuilt when they change)

    def __init__(self, net: nn.Module, precision: str):
        self.net_ref, self.precision = weakref.ref(net), precision
        self.version, self.engine = None, None

    def covers(self, net, x, t, labels, guidance) -> bool:
        """Whether the runtime may take this call: eager keeps calls that need autograd, other devices or dtypes,
        label embeddings, and calls while a hook sits on a block inside the network (diffusion.anatomy's feature
        maps: a runtime never calls the blocks, so their hooks would not fire)."""
        tensors = [v for v in (x, t, labels, guidance) if torch.is_tensor(v)]
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] > 0
                and not (torch.is_grad_enabled() and any(v.requires_grad for v in tensors))
                and (labels is None or not labels.is_floating_point())
                and not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules() if m is not net))

    def __call__(self, x, t, labels, guidance):
        net = self.net_ref()
        if not self.covers(net, x, t, labels, guidance):
            return _eager(net, x, t, labels, guidance)
        if net.num_classes is not None:
            if labels is None:                                   # unconditional = the null class, as UNet does
                labels = torch.full((x.shape[0],), net.num_classes, dtype=torch.long)
            elif labels.numel() and (labels.min() < 0 or labels.max() > net.num_classes):
                raise ValueError(f"labels must lie in [0, {net.num_classes}] ({net.num_classes} = null class)")
        if net.guidance_embed is not None and guidance is None:
            raise ValueError("this network takes the guidance weight as an input: pass guidance (B,)")
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32).expand(batch)   # the exports take (B,) times
        inputs = [x.contiguous(), t.contiguous()]
        if net.num_classes is not None:
            inputs.append(labels.long().expand(batch).contiguous())
        if net.guidance_embed is not None:
            inputs.append(torch.as_tensor(guidance, dtype=torch.float32).expand(batch).contiguous())
        if self.engine is None or (self.exported and self.version != _weights_version(net)):
            self.version = _weights_version(net)
            self.engine = self.build(net, inputs)
        return self.run(inputs)

    def build(self, net, inputs):
        raise NotImplementedError

    def run(self, inputs):
        raise NotImplementedError


class _Signature(nn.Module):
    """The U-Net with positional inputs only (x, t[, labels][, guidance]), for tracing exporters."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, *rest):
        rest = list(rest)
        labels = rest.pop(0) if self.net.num_classes is not None else None
        guidance = rest.pop(0) if self.net.guidance_embed is not None else None
        return _eager(self.net, x, t, labels, guidance)


def _input_names(net) -> list[str]:
    return ["x", "t", *(["labels"] if net.num_classes is not None else []),
            *(["guidance"] if net.guidance_embed is not None else [])]


class _ChannelsLast(_Runtime):
    name, exported = "channels_last", True

    def build(self, net, inputs):
        clone = copy.deepcopy(net)
        clone.__dict__.pop("forward", None)
        return clone.to(memory_format=torch.channels_last)

    def run(self, inputs):
        x, t, *rest = inputs
        out = _Signature(self.engine)(x.contiguous(memory_format=torch.channels_last), t, *rest)
        return out.contiguous()


class _Compiled(_Runtime):
    """torch.compile of the class forward bound to the network: reads the live weights (no copy), so no rebuild."""
    name = "compile"

    def build(self, net, inputs):
        return torch.compile(types.MethodType(type(net).forward, net), dynamic=True)

    def __call__(self, x, t, labels, guidance):
        net = self.net_ref()
        if self.engine is None:
            self.engine = self.build(net, None)
        if not self.covers(net, x, t, labels, guidance):
            return _eager(net, x, t, labels, guidance)
        return self.engine(x, t, labels, guidance)


def _onnx_bytes(net: nn.Module, inputs) -> bytes:
    """The network as an ONNX graph (TorchScript exporter, opset 17), batch dimension dynamic."""
    names = _input_names(net)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # tracer warnings: the label range check (done before the call instead)
        path = Path(tmp) / "unet.onnx"
        torch.onnx.export(_Signature(net).eval(), tuple(inputs), str(path), dynamo=False, input_names=names,
                          output_names=["out"], dynamic_axes={k: {0: "batch"} for k in [*names, "out"]},
                          opset_version=17)
        return path.read_bytes()


class _OnnxRuntime(_Runtime):
    name, exported = "onnxruntime", True

    def build(self, net, inputs):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(_onnx_bytes(net, inputs), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in session.get_inputs()]
        return session

    def run(self, inputs):
        out = self.engine.run(None, {k: v.numpy() for k, v in zip(self.names, inputs)})[0]
        return torch.from_numpy(out)


class _OpenVino(_Runtime):
    """OpenVINO's CPU plugin. The converted model has a dynamic batch, but the plugin runs a static shape ~1.7x
    faster (bench/results/backends.md), so each batch size gets its own compiled copy (compiling one takes well
    under a second; the `shapes_kept` most recent are kept). One lock: an infer request serves one call at a time."""
    name, exported = "openvino", True
    shapes_kept = 8

    def build(self, net, inputs):
        import openvino as ov
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings, as in _onnx_bytes
            model = ov.convert_model(_Signature(net).eval(), example_input=tuple(inputs))
        self.core, self.requests, self.lock = ov.Core(), collections.OrderedDict(), threading.Lock()
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                       "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        return model

    def _request(self, inputs):
        """The infer request compiled for these input shapes (batch b: x (b, C, H, W), the rest (b,))."""
        key = tuple(tuple(v.shape) for v in inputs)
        request = self.requests.get(key)
        if request is None:
            model = self.engine.clone()
            model.reshape({port: list(shape) for port, shape in zip(model.inputs, key)})
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self.requests[key] = request
            while len(self.requests) > self.shapes_kept:
                self.requests.popitem(last=False)
        self.requests.move_to_end(key)
        return request

    def run(self, inputs):
        with self.lock:
            request = self._request(inputs)
            request.infer([v.numpy() for v in inputs])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())


_RUNTIME_TYPES = {"channels_last": _ChannelsLast, "compile": _Compiled, "onnxruntime": _OnnxRuntime,
                  "openvino": _OpenVino}
