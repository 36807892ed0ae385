"""Backend columns for bench/roofline.py: the faster inference backends `diffusion/backends.py` offers (issue 24,
item 2: channels_last, torch.compile, ONNX Runtime, OpenVINO behind the Pipeline's `backend` switch), each in fp32
and bf16. Import-guarded: without that module (or without `--backends`) the roofline has its fp32 and bf16 autocast
columns only.

A backend column times the score network exactly as the app's pipeline runs it: `Pipeline(copy of the score model,
precision=p, backend=b)._network()` (the backend installed in place, bf16 autocast where the pipeline applies it;
ONNX Runtime runs fp32 whatever is asked, and its column says so through `compute_precision`), called on the same
inputs as the other columns. Its % is read against the matmul rate of the precision the pipeline computes in.
A backend accelerates score networks only: the decoder's cells say so.
"""
from __future__ import annotations

import copy
import importlib

SKIPPED = ("auto", "eager")          # "auto" is one of the others; "eager" is the fp32 / bf16 columns
BACKEND_PRECISIONS = ("fp32", "bf16")


def backends_module():
    """diffusion.backends, or None where it does not exist (yet)."""
    try:
        return importlib.import_module("diffusion.backends")
    except ImportError:
        return None


def offered_backends(module) -> list[str]:
    """The backend names a diffusion.backends module lists (BACKENDS), minus "auto" and "eager"."""
    return [str(n) for n in getattr(module, "BACKENDS", ()) if str(n) not in SKIPPED]


def choose_backends(requested: list[str] | None) -> list[str]:
    """The backends to measure: none (None or []), every offered one whose packages are installed (["all"]), or the
    named ones (each must be offered: ValueError naming --backends and the valid names)."""
    if not requested:
        return []
    module = backends_module()
    offered = offered_backends(module) if module is not None else []
    if requested == ["all"]:
        usable = getattr(module, "available", lambda name: True)
        return [b for b in offered if usable(b)]
    unknown = [b for b in requested if b not in offered]
    if unknown:
        valid = ", ".join(offered) if offered else "none (there is no diffusion/backends.py)"
        raise ValueError(f"--backends: {', '.join(unknown)} not offered; valid: all, {valid}")
    return list(requested)


def accelerated(backend: str, precision: str):
    """make(network, batch) for `backend` in `precision`: the network's score model copied once into a Pipeline with
    that backend and precision; each evaluation through the pipeline's network, on the network's own inputs."""
    from diffusion.pipeline import Pipeline

    built = {}

    def make(net, batch):
        if net.role == "decoder":
            raise ValueError("a backend accelerates score networks, not the decoder")
        if net.name not in built:
            pipe = Pipeline(copy.deepcopy(net.module), precision=precision, backend=backend)
            built[net.name] = pipe._network()          # installs the backend (diffusion.backends.install)
        return net.call(batch, built[net.name])
    return make


def backend_columns(names: list[str]) -> dict:
    """{column "backend precision": (matmul rate it is read against, make)} for each of `names` in fp32 and bf16
    (onnxruntime: fp32 only, the precision its CPU provider computes in)."""
    columns = {}
    for name in names:
        for precision in (("fp32",) if name == "onnxruntime" else BACKEND_PRECISIONS):
            columns[f"{name} {precision}"] = (precision, accelerated(name, precision))
    return columns
