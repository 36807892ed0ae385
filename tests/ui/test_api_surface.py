"""The API page (issue 13, item 6): it lists what the app computes and not its plumbing (still callable), and every
numeric input's browser range is the server's check. Tiny random models (conftest.py)."""
from __future__ import annotations

import inspect

import gradio as gr

import diffusion.pipeline as dp
from ui.controls import PLUMBING


REAL = {"generate", "compare", "interpolate", "live", "forward_diffusion", "score_field", "score_particles",
        "score_train_mlp", "timelapse_open", "timelapse_frame", "timelapse_play", "race", "sdedit",
        "which_digit", "how_likely", "inside_network", "loss_by_level"}


PLUMBING_NAMES = {"random_seed", "estimate_cost", "recommended_settings", "pick_test_digit", "use_drawing",
                  "sdedit_use_drawing", "forward_initial", "score_field_initial", "timelapse_initial",
                  "race_recommended_guidance", "sdedit_recommended_guidance"}


def _named(info) -> set[str]:
    return {name.lstrip("/") for name in info["named_endpoints"]}


def test_api_page_lists_what_the_app_computes_and_not_its_plumbing(app_demo):
    assert PLUMBING == {"api_visibility": "undocumented"}
    assert _named(app_demo.get_api_info()) == REAL                     # nothing else, presets' events included
    every = _named(app_demo.get_api_info(all_endpoints=True))
    assert PLUMBING_NAMES <= every                                      # hidden, still there
    assert {"generate_preset", "compare_preset", "sdedit_preset", "forward_preset"} <= every


def test_plumbing_is_off_the_api_page_yet_callable(client):
    listed = _named(client.view_api(print_info=False, return_format="dict"))
    assert REAL <= listed and not listed & PLUMBING_NAMES
    assert 0 <= client.predict(api_name="/random_seed") < 2**31 - 1
    d = dp.defaults_for("pixel-uncond")
    assert list(client.predict("pixel-uncond", api_name="/recommended_settings")) == [d.sampler, d.steps, d.guidance]


def _error(fn, args) -> str | None:
    """The gr.Error message a handler raises for these raw values before its first result, or None."""
    try:
        out = fn(*args)
        if inspect.isgenerator(out):
            next(out)
            out.close()
    except gr.Error as e:
        return e.message
    return None


def test_numeric_inputs_have_the_servers_limits(app_demo, one_thread):
    """Every Slider and Number of every documented endpoint: the browser stops at its minimum and maximum, the
    handler takes both, and refuses one step beyond either, naming the parameter."""
    seen = []
    for fn in app_demo.fns.values():
        if fn.api_name not in REAL or fn.api_name.startswith("timelapse"):    # timelapse: the range is the recording's
            continue
        params = list(inspect.signature(fn.fn).parameters)
        base = [c.value for c in fn.inputs]
        for i, comp in enumerate(fn.inputs):
            if not isinstance(comp, (gr.Slider, gr.Number)):
                continue
            assert comp.minimum is not None and comp.maximum is not None, (fn.api_name, params[i])
            step = getattr(comp, "step", None) or 1
            for value, ok in ((comp.minimum, True), (comp.maximum, True),
                              (comp.minimum - step, False), (comp.maximum + step, False)):
                args = list(base)
                args[i] = value
                err = _error(fn.fn, args)
                names = (err or "").startswith(f"{params[i]} (")
                assert names != ok, (fn.api_name, params[i], value, err)
            seen.append(f"{fn.api_name}.{params[i]}")
    assert {"generate.steps", "generate.guidance", "generate.seed", "generate.num_images", "compare.steps",
            "sdedit.t0", "sdedit.steps", "forward_diffusion.t", "score_particles.num_particles"} <= set(seen)
    assert len(seen) >= 30
