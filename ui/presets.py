"""Presets: a few settings per tab worth a first click, shown as gr.Examples. On the tabs that sample, a preset's
result is cached lazily: the tab's own handler (the button's, validating its values like any request) computes it
on the first click, in the sampling concurrency group, and every later click is served from disk. The cache folder
is named after a hash of what the pictures depend on (the loaded models' weights and configs, their precision and
device, the shipped test digits, the app's code), so a new checkpoint never shows pictures made by the old one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import gradio as gr

import diffusion.pipeline as dp
from diffusion.hub_mixin import hash_state_dict, hash_tensor
from diffusion.registry import FLAGSHIP
from diffusion.sde import VESDE

from . import gradio_seam

if TYPE_CHECKING:
    from .lab import Lab


class Page(Protocol):
    """What `examples` reads of the page being built (ui.controls.Page, which builds on this module's cache_key)."""
    demo: gr.Blocks
    heavy: dict                 # the sampling events' settings: concurrency_id, concurrency_limit
    presets_key: str            # cache_key(lab)

ROOT = Path(__file__).resolve().parent.parent
CODE = ("ui", "diffusion")          # the packages whose source the cached pictures depend on
CACHE_ENV = "GRADIO_EXAMPLES_CACHE"   # gradio's own setting; default .gradio/cached_examples


@dataclass(frozen=True)
class Preset:
    label: str                      # what the visitor reads on the button
    values: dict                    # handler parameter -> value, as a browser would send it


_cond = dp.defaults_for(FLAGSHIP)  # the flagship model's (pixel-cond), read at import, never copied


def _gen(label, digit, sampler, steps, guidance, model=FLAGSHIP, seed=0, num_images=16) -> Preset:
    return Preset(label, dict(model=model, digit=digit, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                              num_images=num_images))


GENERATE = (
    _gen(f"3 · recommended ({_cond.sampler}, {_cond.steps} steps, w = {_cond.guidance:g})", 3, _cond.sampler,
         _cond.steps, _cond.guidance),
    _gen("7 · strong guidance, w = 6 (less variety, more 7)", 7, _cond.sampler, _cond.steps, 6.0),
    _gen(f"5 · one step: a single jump from noise (w = {_cond.guidance:g})", 5, _cond.sampler, 1, _cond.guidance),
    _gen("5 · 100 Euler–Maruyama steps (the seed tutorial's sampler)", 5, "euler_maruyama", 100, _cond.guidance,
         num_images=8),
)


def _cmp(label, digit, sampler, steps, guidance=_cond.guidance, seed=0, num_images=16) -> Preset:
    return Preset(label, dict(digit=digit, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                              num_images=num_images))


COMPARE = (
    _cmp(f"3 · recommended ({_cond.sampler}, {_cond.steps} steps)", 3, _cond.sampler, _cond.steps),
    _cmp("8 · Heun, 10 steps (19 NFE)", 8, "heun", 10, num_images=8),
    _cmp("4 · 50 Euler–Maruyama steps: the decoder's share", 4, "euler_maruyama", 50, num_images=8),
)


def _fwd(label, index, t, seed=0) -> Preset:
    std = VESDE(25.0).marginal_std(t)     # the app's SDE (sigma = 25), for the label
    return Preset(f"{label}, std(t) = {std:.2g}", dict(source="test digit", test_index=index, t=t, noise_seed=seed))


FORWARD = (                           # the denoiser is added by the tab (the one it offers by default)
    _fwd("a 7 at t = 0.1: still clear", 70, 0.1),
    _fwd("the same 7 at t = 0.5: noise twice the pixel range", 70, 0.5),
    _fwd("the same 7 at t = 0.9: the digit is gone", 70, 0.9),
)


def _sde(label, index, digit, t0, region="none (SDEdit)", steps=20, model=FLAGSHIP) -> Preset:
    return Preset(label, dict(source="test digit", test_index=index, model=model, digit=digit,
                              guidance=_cond.guidance, t0=t0, steps=steps, seed=0, num_images=4, region=region))


SDEDIT = (
    _sde("a 3 asked to be an 8, t0 = 0.3: the strokes survive", 30, 8, 0.3),
    _sde("the same 3 asked to be an 8, t0 = 0.7: a new digit", 30, 8, 0.7),
    _sde("inpainting: keep the top half of a 7, redraw the rest", 70, 7, 1.0, region="keep top half", steps=40),
)


# -- the cache key -----------------------------------------------------------------------------------
def _models(lab: Lab) -> dict:
    """{name: module} for every network whose weights a picture can depend on."""
    mods = {}
    for name, pipe in sorted({**lab.pipelines, **getattr(lab, "students", {})}.items()):
        mods[name] = pipe.score_model
        if pipe.autoencoder is not None:
            mods[f"{name}/autoencoder"] = pipe.autoencoder
    if lab.classifier is not None:
        mods["classifier"] = lab.classifier
    return mods


def cache_key(lab: Lab) -> str:
    """12 hex digits of a sha256 over every loaded model's config and weights (all their bytes: a few MB, hashed
    once at startup), each pipeline's precision and device, the shipped test digits and the source of ui/ and
    diffusion/. Any change to what a preset's picture depends on gives a new key, so a new folder."""
    h = hashlib.sha256()
    for name, module in _models(lab).items():
        config = getattr(module, "_hub_mixin_config", None)
        h.update(f"model {name} {type(module).__name__} {json.dumps(config, sort_keys=True, default=str)}\n".encode())
        hash_state_dict(h, module)
    for name, pipe in sorted(lab.pipelines.items()):
        h.update(f"run {name} {pipe.compute_precision} {pipe.device.type}\n".encode())
    hash_tensor(h, "test_images", lab.test_images)
    for package in CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(f"code {path.relative_to(ROOT).as_posix()}\n".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cache_folder(key: str, tab: str) -> Path:
    """Where a tab's cached presets go: <GRADIO_EXAMPLES_CACHE>/<key>/<tab>/ (gradio adds a folder of its own). The
    base stays gradio's, so its file route serves these pictures and nothing else is opened."""
    return gradio_seam.cache_folder() / key / tab


@contextlib.contextmanager
def _cache_env(folder: Path):
    """gr.Examples reads GRADIO_EXAMPLES_CACHE when it is made: point it at `folder` for that moment only."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


# -- the examples ------------------------------------------------------------------------------------
def examples(page: Page, tab: str, presets, inputs: dict, outputs=None, fn=None) -> gr.helpers.Examples | None:
    """`presets` as gr.Examples in the current layout; `inputs` is {handler parameter: component}, in the handler's
    order. With `fn` and `outputs`: cached lazily in cache_folder(page.presets_key, tab), `fn` getting raw values
    (preprocess=False, as the tab's button wires it) and running in the sampling concurrency group. Without: a click
    only sets the inputs (a tab that redraws on every change does the rest). None when no preset is given."""
    if not presets:
        return None
    cached = fn is not None
    values = [[p.values[name] for name in inputs] for p in presets]
    label = ("Presets: click one (computed on first use, then shown at once)" if cached
             else "Presets: click one to set the controls")
    with _cache_env(cache_folder(page.presets_key, tab)):
        ex = gr.Examples(values, list(inputs.values()), outputs, fn=fn, cache_examples=cached,
                         cache_mode="lazy" if cached else None, preprocess=False, label=label,
                         example_labels=[p.label for p in presets], api_name=f"{tab}_preset",
                         elem_id=f"{tab}-presets")
    if cached:                  # the first click samples: in the queue's sampling group, like the button
        block_fn = page.demo.fns[ex.cache_event["id"]]
        block_fn.concurrency_id = page.heavy["concurrency_id"]
        block_fn.concurrency_limit = page.heavy["concurrency_limit"]
    return ex
