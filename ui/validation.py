"""Checks on raw UI / API values. Handlers are wired with `preprocess=False`, so they see exactly what a browser
or `gradio_client` sent; every check raises a `gr.Error` that names the parameter (and its label on the page)
before any network evaluation."""
from __future__ import annotations

import math

import gradio as gr
import numpy as np

MAX_IMAGES, MAX_STEPS, MAX_GUIDANCE, MAX_SEED = 64, 1000, 20.0, 2**31 - 1
LABELS = {"model": "Model", "digit": "Digit", "sampler": "Sampler", "steps": "Steps", "guidance": "Guidance",
          "seed": "Seed", "num_images": "Number of images", "digit_a": "Digit A", "digit_b": "Digit B",
          "alpha": "alpha", "source": "Source", "test_index": "Test image", "sketch": "Drawing", "t": "t",
          "noise_seed": "Noise seed", "denoiser": "Denoiser", "index": "Click a test digit"}


def bad(name: str, must: str, value) -> gr.Error:
    """The error for parameter `name`: '<name> (<label>) <must>; got <value>.'"""
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return gr.Error(f"{name} ({LABELS.get(name, name)}) {must}; got {shown[:80]}.", title="Invalid input",
                    print_exception=False)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or value is None:
        raise bad(name, "must be a number", value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise bad(name, "must be a number", value) from None
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad(name, "must be a number", value)
    try:
        finite = math.isfinite(float(value))
    except OverflowError:                    # an int beyond float range (e.g. 10**400 sent as JSON)
        raise bad(name, "must be a number of a sensible size", value) from None
    if not finite:
        raise bad(name, "must be a finite number", value)
    return value


def check_int(name: str, value, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; integral floats (3.0) pass, 3.5 / nan / inf / True / 'x' do not."""
    v = _number(name, value)
    if isinstance(v, (float, np.floating)) and not float(v).is_integer():
        raise bad(name, f"must be a whole number from {lo} to {hi}", value)
    v = int(v)
    if not lo <= v <= hi:
        raise bad(name, f"must be a whole number from {lo} to {hi}", value)
    return v


def check_float(name: str, value, lo: float, hi: float) -> float:
    v = float(_number(name, value))
    if not lo <= v <= hi:
        raise bad(name, f"must be a number from {lo:g} to {hi:g}", value)
    return v


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise bad(name, f"must be one of {', '.join(map(str, choices))}", value)
    return value
