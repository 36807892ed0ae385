"""Pieces every tab builds with: the page settings they read, a panel note, picture settings, the event setting of
the UI's plumbing, and the sampling-controls row (sampler, steps, guidance)."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

import diffusion.pipeline as dp  # defaults read at build time, never copied
from diffusion.guidance import GuidanceSchedule
from diffusion.registry import FLAGSHIP, evaluation_order
from diffusion.samplers import SAMPLERS

from .lab import MODEL_NAMES, Lab
from .presets import cache_key
from .validation import MAX_GUIDANCE, MAX_STEPS, check_choice

DEFAULT_IMAGES, DEFAULT_DIGIT, DEFAULT_SEED = 16, 3, 0
# images: never editable, crisp pixels when upscaled by the browser, downloadable
GUIDANCE_STEP = 0.0625    # the guidance sliders' grid: rule v3's sweep grid, so every model's default lies on it
IMG = dict(format="png", interactive=False, elem_classes=["pixelated"], buttons=["download", "fullscreen"])
# events that only move the page along (seed dice, cost line, recommended settings, grid clicks, the drawing switch,
# first draws on load): still callable by name, left off the API page, which lists what the app computes
PLUMBING = dict(api_visibility="undocumented")


@dataclass
class Page:
    """Build-time settings the tabs read: the shared state, the Blocks being built, the models on offer and the
    default sampling settings (those of the default model), the event settings of the sampling events, and the key
    of the presets' cache (ui/presets.py: a hash of the weights in use)."""
    lab: Lab
    demo: gr.Blocks
    concurrency: int
    cards: dict = field(default_factory=dict)

    def __post_init__(self):
        pipes = self.lab.pipelines
        self.available = [n for n in MODEL_NAMES if n in pipes]
        self.conditional = [n for n in self.available if pipes[n].conditional]
        self.default_model = next((n for n in evaluation_order(role="score") if n in self.available),  # flagship first
                                  None)
        self.defaults = dp.defaults_for(self.default_model or FLAGSHIP)   # each model's own, set again when it changes
        # sampling: raw values to the handlers, one concurrency group shared by every tab that samples
        self.heavy = dict(preprocess=False, concurrency_id="sampling", concurrency_limit=self.concurrency)
        self.presets_key = cache_key(self.lab)


def note(text: str) -> gr.Markdown:
    """The two or three sentences under a panel that say what the person is looking at."""
    return gr.Markdown(text, elem_classes=["panel-note"])


def recommended_guidance(model) -> float:
    """The model's default guidance weight (the registry's, rule v3's pick); a bad name gets the usual brief error."""
    return dp.defaults_for(check_choice("model", model, MODEL_NAMES)).guidance


def follow_recommended_guidance(model: gr.Radio, guidance: gr.Slider, api_name: str) -> None:
    """A person's pick of a model (`input`, not `change`: a preset sets its own w) sets w to that model's default."""
    model.input(recommended_guidance, model, guidance, api_name=api_name, queue=False, show_progress="hidden",
                preprocess=False, **PLUMBING)


# "Where w applies" (Kynkäänniemi et al. 2024: guidance on part of the noise range; diffusion/guidance.py): a choice
# -> (its label, the schedule; None: the model's own recipe, e.g. pixel-uncond's autoguidance only at sigma <= 1)
GUIDANCE_WHERE = {
    "model": ("the model's own recipe", None),
    "all": ("every step", GuidanceSchedule()),
    "low": ("only at σ ≤ 1: the details", GuidanceSchedule(sigma_hi=1.0)),
    "high": ("only at σ > 1: the layout", GuidanceSchedule(sigma_lo=1.0)),
}


def guidance_where_control(prefix: str) -> gr.Radio:
    return gr.Radio([(label, key) for key, (label, _) in GUIDANCE_WHERE.items()], value="model",
                    label="Where w applies", key=f"{prefix}-where",
                    info="guidance on part of the noise range only: high σ shapes the digit, low σ its strokes; "
                         "steps without guidance cost one network call instead of two")


def guidance_schedule_for(pipe, where) -> GuidanceSchedule:
    """The schedule a "Where w applies" choice names for this model (a bad choice: the usual named error)."""
    schedule = GUIDANCE_WHERE[check_choice("where", where, list(GUIDANCE_WHERE))][1]
    return pipe.defaults.schedule if schedule is None else schedule


def sampling_controls(page: Page, prefix: str):
    """The row Sampler | Steps | Guidance w, starting at the default model's recommended settings."""
    choices = [(f"{name} — {spec.description.split(':')[0]}", name) for name, spec in SAMPLERS.items()]
    d = page.defaults
    with gr.Row():
        sampler = gr.Dropdown(choices, value=d.sampler, label="Sampler", key=f"{prefix}-sampler")
        steps = gr.Number(d.steps, label="Steps", precision=0, minimum=1, maximum=MAX_STEPS, key=f"{prefix}-steps")
        guidance = gr.Slider(0, MAX_GUIDANCE, d.guidance, step=GUIDANCE_STEP, label="Guidance w",
                             info="1 = plain conditional, 0 = ignore the digit (pixel-uncond: autoguidance, 1 = off)", key=f"{prefix}-guidance")
    return sampler, steps, guidance
