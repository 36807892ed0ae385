"""Presets (issue 13, item 6): gr.Examples cached lazily in a folder keyed by the weights in use, computed by the
button's own handler, callable through the API. Tiny random models (conftest.py)."""
from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import diffusion.pipeline as dp
from diffusion import hub
from ui import presets
from ui.lab import Lab


PRESET_TABS = {"GenerateTab": ("generate", presets.GENERATE, "generate"),
               "CompareTab": ("compare", presets.COMPARE, "compare"),
               "SDEditTab": ("sdedit", presets.SDEDIT, "edit_preset"),
               "ForwardTab": ("forward", presets.FORWARD, None)}


def _tab_presets(app_demo, cls: str):
    tab = app_demo.tabs[cls]
    name, declared, handler = PRESET_TABS[cls]
    return tab, tab.presets, declared, (getattr(tab, handler) if handler else None)


@pytest.mark.parametrize("cls", sorted(PRESET_TABS))
def test_each_preset_is_a_valid_request(app_demo, cls, one_thread, monkeypatch):
    """3-4 presets a tab; each value one the browser control accepts; each passes every server check but the time
    budget, a property of the machine rather than of the preset (on a loaded machine the tiny models' start-up
    timing once put the 100-step preset's estimate over the fixture's 60 s)."""
    monkeypatch.setattr(app_demo.lab, "max_seconds", 10_000.0)
    tab, ex, declared, handler = _tab_presets(app_demo, cls)
    assert isinstance(ex, gr.helpers.Examples) and 3 <= len(ex.examples) <= 4
    assert ex.example_labels == [p.label for p in declared]
    assert ex.preprocess is False                                       # raw values, as the button's event
    for row in ex.examples:
        for comp, value in zip(ex.inputs, row):
            if isinstance(comp, (gr.Radio, gr.Dropdown)):
                assert value in [v for _, v in comp.choices], (comp.label, value)
            elif isinstance(comp, (gr.Slider, gr.Number)):
                assert comp.minimum <= value <= comp.maximum, (comp.label, value)
    for preset in declared:
        if cls == "ForwardTab":
            outs = tab.forward(sketch=None, denoiser=ex.examples[0][-1], **preset.values)
            assert outs[0] is not None and "std(t)" in outs[-1]
        else:                                       # a generator's first yield comes after every check
            run = handler(**preset.values)
            first = next(run)
            run.close()
            assert "starting" in str(first[-1]) + str(first[2])


@pytest.mark.parametrize("cls", sorted(PRESET_TABS))
def test_presets_run_the_buttons_handler(app_demo, cls):
    """The cached presets' function is the tab's button handler (SDEdit: the same, with no drawing), its values in
    the handler's parameter order; they run in the sampling concurrency group, like the button."""
    tab, ex, declared, handler = _tab_presets(app_demo, cls)
    if handler is None:                                                 # Forward: the tab redraws on any change
        assert ex.fn is None and ex.cache_examples is False
        return
    assert ex.fn == handler and ex.cache_examples == "lazy"
    params = inspect.signature(handler).parameters                     # a preset names every required parameter;
    required = [n for n, q in params.items() if q.default is inspect.Parameter.empty]   # the rest keep defaults
    assert required == list(declared[0].values) and set(params) - set(required) <= {"where"}
    assert [[p.values[k] for k in declared[0].values] for p in declared] == ex.examples
    button = next(f for f in app_demo.fns.values() if f.api_name == PRESET_TABS[cls][0])    # the button's event
    if cls == "SDEditTab":
        assert "yield from self.edit(" in inspect.getsource(handler)
    else:
        assert button.fn == handler
    cache_fn = app_demo.fns[ex.cache_event["id"]]
    assert cache_fn.concurrency_id == "sampling" == button.concurrency_id
    assert cache_fn.api_visibility == "undocumented"


def _summary(text: str) -> str:
    """A status line without its timings (wall time, decode time: not reproducible)."""
    return re.sub(r"\d+(\.\d+)? m?s\b", "T", text)


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_a_cached_preset_is_what_the_button_gives(app_demo, one_thread):
    tab, ex, declared, _ = _tab_presets(app_demo, "GenerateTab")
    k = 2                                                               # one step: quick
    cached = ex.load_from_cache(k)                                      # computes it (lazily), then reads it back
    again = ex.load_from_cache(k)                                       # now from disk
    direct = list(tab.generate(**declared[k].values))[-1]               # xt, x0, status, final, gif, anim
    assert len(cached) == len(direct) == 6
    assert np.array_equal(_png(cached[3].path), np.asarray(Image.fromarray(direct[3]).convert("RGB")))
    assert _summary(cached[2]) == _summary(direct[2]) and "seed 0" in cached[2] and "1 steps" in cached[2]
    assert cached[4].path.endswith(".gif") and again[3].path == cached[3].path
    assert Path(cached[3].path).resolve().is_relative_to(ex.cached_folder.resolve())
    key = presets.cache_key(app_demo.lab)
    assert ex.cached_folder.parent == presets.cache_folder(key, "generate")
    assert ex.cached_folder.is_relative_to(gr.utils.get_cache_folder())   # served by gradio's file route


def test_a_preset_through_the_api(client, app_demo):
    """A visitor's click, through HTTP: the compare preset's pictures come back (served from the cache folder)."""
    tab, ex, declared, _ = _tab_presets(app_demo, "CompareTab")
    outs = client.predict(0, api_name="/compare_preset")
    assert len(outs) == 5 and all(_png(p).shape[0] > 100 for p in outs[:4])
    assert "done" in outs[4] and "latent-cond" in outs[4]


def _load_lab(weights):
    pipes, messages = hub.load_pipelines(weights_dir=weights, device="cpu")
    classifier = hub.load_model("classifier", weights_dir=weights, device="cpu", messages=[])
    return Lab(pipes, messages, classifier=classifier, calibrate=False)


def test_the_cache_folder_follows_the_weights(tiny_weights, tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(tiny_weights, copy)
    key = presets.cache_key(_load_lab(copy))
    assert re.fullmatch(r"[0-9a-f]{12}", key)
    assert presets.cache_key(_load_lab(tiny_weights)) == key          # the bytes count, not where they lie
    weights = copy / "pixel-cond" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01                                                    # one bit of one weight
    weights.write_bytes(bytes(data))
    changed = presets.cache_key(_load_lab(copy))
    assert changed != key
    assert presets.cache_folder(changed, "generate") != presets.cache_folder(key, "generate")
    config = copy / "autoencoder" / "config.json"                       # a config alone (latent_scale)
    config.write_text(config.read_text().replace('"latent_scale": 1.0', '"latent_scale": 1.5'))
    assert '"latent_scale": 1.5' in config.read_text()
    assert presets.cache_key(_load_lab(copy)) not in (key, changed)


def test_recommended_settings_follow_a_persons_pick_only(app_demo, monkeypatch):
    """Wired to the model radio's `input` (a person's pick), not `change`, which a preset setting the model and
    its own sampler and steps would fire too."""
    fn = next(f for f in app_demo.fns.values() if f.api_name == "recommended_settings")
    assert [event for _, event in fn.targets] == ["input"]
    assert [o.label for o in fn.outputs] == ["Sampler", "Steps", "Guidance w"]
    assert fn.fn("latent-cond") == ("dpmpp_2m_sde", 10, dp.defaults_for("latent-cond").guidance)
    import dataclasses

    from diffusion.registry import model_spec, registered
    changed = dataclasses.replace(model_spec("latent-cond"), defaults=dp.SamplingDefaults("heun", 20, 2.0))
    with registered(changed):                                         # the registry's defaults, changed for a while
        assert fn.fn("latent-cond") == ("heun", 20, 2.0)              # read per model, at the moment of the pick
