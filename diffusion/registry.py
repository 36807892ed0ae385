"""ONE ModelSpec per model name: what each model is and every table about models derives from here.

A spec holds the class, the role (a score model the app samples, a distilled student, an autoguidance guide, the
autoencoder, an evaluation classifier), pixel or latent space, conditional or not, the data set, the guidance kind
(classifier-free, autoguidance, none), the default sampling settings, the training module, the links between models
(a student's teacher, a guide's model, a latent model's autoencoder), the texts its card and the app show, and its
place in the build/evaluation order. Adding a model kind = one `register(ModelSpec(...))` here + its training script
(+ weights); tests add one for a while with `registered(spec)`.

The name lists (PIPELINE_NAMES, SAMPLEABLE_NAMES, ...) and MODEL_CLASSES are live views of the registry, not copies:
a spec registered later appears in them (argparse choices, the app's pickers, the cards).

A weights folder is `save_pretrained` layout: weights/<name>/{config.json, model.safetensors, README.md},
plus the training time-lapse (timelapse.safetensors) for diffusion models when it was recorded.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from .autoencoder import AutoEncoder
from .guidance import GuidanceSchedule
from .hub_mixin import CONFIG_NAME, WEIGHTS_NAME
from .metrics import Classifier, ResNetClassifier
from .score import ScoreModel
from .timelapse import FILENAME as TIMELAPSE_NAME

ROLES = ("score", "student", "guide", "autoencoder", "classifier")
SAMPLEABLE_ROLES = ("score", "student")              # what load_pipeline and the sampling CLI accept
SPACES = ("pixel", "latent")
GUIDANCE_KINDS = ("classifier-free", "autoguidance", "none")


@dataclass(frozen=True)
class SamplingDefaults:
    sampler: str
    steps: int
    guidance: float      # guidance weight w: classifier-free, or autoguidance for an autoguided model
    schedule: GuidanceSchedule = GuidanceSchedule()   # where along sigma w applies (diffusion/guidance.py): everywhere
    options: tuple[tuple[str, float], ...] = ()       # the default sampler's own parameters, e.g. (("eta", 0.5),)

    def describe(self) -> str:
        """'dpmpp_2m_sde, 10 steps, w = 2 at sigma <= 1' / 'ddim, 2 steps, w = 1.5, eta = 0.5' (the schedule named only
        when it is not the whole range)."""
        where = "" if self.schedule.constant else f" {self.schedule.describe(short=True)}"
        extra = "".join(f", {k} = {v:g}" for k, v in self.options)
        return f"{self.sampler}, {self.steps} step{'s' if self.steps != 1 else ''}, w = {self.guidance:g}{where}{extra}"


@dataclass(frozen=True)
class ModelSpec:
    """Everything the project states about one model name."""
    name: str                                  # the weights folder and the Hub subfolder: weights/<name>/
    cls: type                                  # its class (save_pretrained / from_pretrained)
    role: str                                  # one of ROLES
    train_module: str                          # the module that builds its weights: python -m <train_module>
    space: str = "pixel"                       # where it works: 28x28 pixels or the autoencoder's latents
    conditional: bool = False                  # takes digit labels
    dataset: str = "MNIST"                     # the data set it was trained on
    guidance: str = "none"                     # one of GUIDANCE_KINDS: what the guidance weight w means
    defaults: SamplingDefaults | None = None   # recommended sampler, steps, w (models that sample)
    autoencoder: str | None = None             # latent models: the model that decodes their latents
    teacher: str | None = None                 # students: the model they were distilled from
    guides: str | None = None                  # guides: the model they guide
    evaluation_order: int | None = None        # place in the build (train/build_all.sh) and `train.evaluate --all`;
                                               # None: built and evaluated with another model (students, by train.distill)
    summary: str | None = None                 # one line: the weights repo's table of models
    description: str | None = None             # the paragraph at the top of its model card
    task: str | None = None                    # its card's Hub task (None: a generative model, train/cards.py decides)
    extra_tags: tuple[str, ...] = ()                # card tags beyond the class's own
    loss: str | None = None                    # the training loss its card names when the training record does not
    build_command: str | None = None           # how its weights are built, when not `python -m <train_module>`

    def __post_init__(self):
        for field, value, allowed in (("role", self.role, ROLES), ("space", self.space, SPACES),
                                      ("guidance", self.guidance, GUIDANCE_KINDS)):
            if value not in allowed:
                raise ValueError(f"ModelSpec {self.name!r}: {field} must be one of {', '.join(allowed)}, got {value!r}")
        if self.sampleable and self.defaults is None:
            raise ValueError(f"ModelSpec {self.name!r}: a {self.role} model needs sampling defaults")
        for field, needed in (("autoencoder", self.space == "latent"), ("teacher", self.role == "student"),
                              ("guides", self.role == "guide")):
            if needed and not getattr(self, field):
                raise ValueError(f"ModelSpec {self.name!r}: {field} must name a model")

    @property
    def sampleable(self) -> bool:
        return self.role in SAMPLEABLE_ROLES

    @property
    def blurb(self) -> str:
        """What the app's model picker says beside the name, e.g. "class-conditional, pixel space"."""
        return f"{'class-conditional' if self.conditional else 'unconditional'}, {self.space} space"

    @property
    def train_command(self) -> str:
        return self.build_command or f"python -m {self.train_module}"


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model kind; its name must be new (a test that needs one for a while uses `registered`)."""
    if spec.name in _SPECS:
        raise ValueError(f"model {spec.name!r} is registered already")
    _SPECS[spec.name] = spec
    return spec


@contextlib.contextmanager
def registered(*specs: ModelSpec) -> Iterator[tuple[ModelSpec, ...]]:
    """Register `specs` for the duration of a `with` block (tests); an existing name is replaced, then restored."""
    before = dict(_SPECS)
    try:
        for spec in specs:
            _SPECS[spec.name] = spec
        yield specs
    finally:
        _SPECS.clear()
        _SPECS.update(before)


def model_spec(name: str) -> ModelSpec:
    """The spec of model `name`; a ValueError listing the names otherwise."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_SPECS)}") from None


def _matches(spec: ModelSpec, where: dict) -> bool:
    return all(getattr(spec, key) == value for key, value in where.items())


def model_names(**where) -> tuple[str, ...]:
    """The registered names whose specs have the given attribute values (e.g. role="score"), in registration order:
    the order the app's pickers and the listings show them."""
    unknown = set(where) - {f.name for f in fields(ModelSpec)} - {"sampleable"}
    if unknown:
        raise ValueError(f"ModelSpec has no attribute(s) {', '.join(sorted(unknown))}")
    return tuple(name for name, spec in _SPECS.items() if _matches(spec, where))


def evaluation_order(**where) -> tuple[str, ...]:
    """As model_names, but only specs with an evaluation_order, in that order (the build and `train.evaluate --all`)."""
    chosen = [_SPECS[name] for name in model_names(**where) if _SPECS[name].evaluation_order is not None]
    return tuple(spec.name for spec in sorted(chosen, key=lambda s: s.evaluation_order))


def first(**where) -> str:
    """The first name in evaluation order with the given attributes (e.g. the pixel-space conditional score model:
    first(role="score", conditional=True, space="pixel")); a ValueError when none has them."""
    names = evaluation_order(**where)
    if not names:
        raise ValueError(f"no registered model has {', '.join(f'{k}={v!r}' for k, v in where.items())}")
    return names[0]


def pixel_and_latent() -> tuple[str, str]:
    """The two models compared as pixel vs latent diffusion (the app's "Pixel vs latent" tab, bench/inference.py): the
    first class-conditional score model of each space in evaluation order."""
    return first(role="score", conditional=True, space="pixel"), first(role="score", conditional=True, space="latent")


class NameView(Sequence):
    """A live tuple of registered names: model_names(**where) (or evaluation_order) read at each use."""

    def __init__(self, order: str = "registered", **where):
        self._names = (evaluation_order if order == "evaluation" else model_names)
        self._where = where

    def _current(self) -> tuple[str, ...]:
        return self._names(**self._where)

    def __getitem__(self, index):
        return self._current()[index]

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self):
        return iter(self._current())

    def __contains__(self, name) -> bool:
        return name in self._current()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and self._current() == tuple(other)

    __hash__ = None

    def __add__(self, other) -> tuple:
        return self._current() + tuple(other)

    def __radd__(self, other) -> tuple:
        return tuple(other) + self._current()

    def __repr__(self) -> str:
        return repr(self._current())


class SpecTable(Mapping):
    """{name: spec.<attribute>} for every registered model whose attribute is set (not None or empty), read at each
    use: a per-model table (the cards' descriptions, the classes) as a view of the registry, never a copy."""

    def __init__(self, attribute: str):
        if attribute not in {f.name for f in fields(ModelSpec)}:
            raise ValueError(f"ModelSpec has no attribute {attribute!r}")
        self.attribute = attribute

    def _current(self) -> dict:
        return {name: value for name, spec in _SPECS.items()
                if (value := getattr(spec, self.attribute)) is not None and value != ()}

    def __getitem__(self, name):
        return self._current()[name]

    def __iter__(self):
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        return repr(self._current())


# ---------------------------------------------------------------- the models
# Registration order is the order the app and the listings show them; evaluation_order is the build order.
#
# Sampling defaults. Chosen by bench/samplers.py (bench/results/samplers.md, guidance.md) with one rule: per model, the
# cheapest point of the NFE grid {10, 20, 35, 50, 100, 250, 500} whose Frechet distance on 1000 samples is within 10% of
# (or below) Euler-Maruyama-500's, ties broken by the lower FD; guidance: the lowest FD of w in {0, 1, 2, 3, 5} at ~100%
# conditional accuracy. pixel-uncond is the exception that needs noise: its probability-flow ODE samples stay 1.5-1.7x
# EM-500's FD at every NFE (the ODE carries the score model's errors to the end), while the SDE form of the same
# solver, at the same 10 NFE, lands below EM-500.
# Since Quality v2 the score models' defaults are the two-evaluator rule's pick (diffusion.setting_rules.choose_setting:
# accuracy >= 99% in both evaluators, specks within 1 point of real digits' where reachable, then the lowest
# worse-of-two FD ratio) over bench/results/defaults.json (tests/bench/test_bench.py checks it). For both conditional
# models that is the SDE form of DPM-Solver++(2M): its noise removes the isolated specks the ODE carries to the end
# (pixel-cond: 0.35% against 2.3% with dpmpp_2m at w = 1.5, real digits 0.69%).
# Since Quality v3 (issue 27) a model whose rule-v3 sweep covers the guidance grid (bench/results/defaults_v3.md) ships
# rule v3's pick (diffusion.setting_rules.choose_setting_v3: every figure within real digits' own real-vs-real tolerance, in
# every view, then the lowest worst FD ratio): pixel-cond -> dpmpp_2m_sde 10, w = 1 (no guidance; docs/quality-v3.md);
# pixel-uncond -> dpmpp_2m_sde 10, autoguidance w = 2.1875 applied only at sigma <= 1 (diffusion/guidance.py): it
# meets every real-digit band with a worst FD ratio of 3.06, against 3.57 for the best constant w (1.25; its grid
# 1..1.75 covered too) and 2.99-3.01 at w = 2.375-2.4375, which lose recall; the grid 1..2.6875 at sigma <= 1 covered.
# w is the autoguidance weight (its guide, pixel-uncond-guide: diffusion/autoguidance.py). latent-cond -> dpmpp_2m_sde 10,
# w = 1.5625 (its grid w = 1..2.0625 covered: no w meets every band; from 1.5 only recall misses, in all four spaces,
# and 1.5625 has the lowest worst FD ratio, 2.13 vs 2.14 at 1.5; guidance schedules lost: 2.70-2.95).
# Distilled students of pixel-cond (diffusion/distill.py, train/distill.py): the step count is the one each was
# distilled for (the only one it runs); sampler, w and eta by rule v3 over their sweep (bench/results/defaults_v3.md,
# grids covered): the 4-step student runs euler_ancestral (fresh noise each step: specks 1.80% against ddim's 3.40% at
# w = 1.5, within real digits' band), the 2-step ddim at eta = 0.5, the 1-step plain ddim (at one step every eta is
# the same sampler).

register(ModelSpec(
    "pixel-uncond", ScoreModel, "score", "train.pixel_uncond", guidance="autoguidance",
    defaults=SamplingDefaults("dpmpp_2m_sde", 10, 2.1875, GuidanceSchedule(sigma_hi=1.0)), evaluation_order=5,
    summary="unconditional score model, 28x28 pixels (autoguided by `pixel-uncond-guide`)",
    description="Unconditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25). With no labels to guide by, it "
                "is sampled with autoguidance (Karras et al. 2024): D_w = D_guide + w (D - D_guide), the guide being "
                "`pixel-uncond-guide`, an early checkpoint of this model's own run, named in config.json "
                "(`autoguide`); `load_pipeline` loads the pair."))
register(ModelSpec(
    "pixel-cond", ScoreModel, "score", "train.pixel_cond", conditional=True, guidance="classifier-free",
    defaults=SamplingDefaults("dpmpp_2m_sde", 10, 1.0), evaluation_order=3,   # rule v3: docs/quality-v3.md
    summary="class-conditional score model, 28x28 pixels",
    description="Class-conditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25). Digits condition the U-Net "
                "through cross-attention to a learned label embedding; 10% of training labels were replaced by a null "
                "class, so the same network also gives the unconditional score for classifier-free guidance."))
register(ModelSpec(
    "latent-cond", ScoreModel, "score", "train.latent_cond", space="latent", conditional=True,
    guidance="classifier-free", defaults=SamplingDefaults("dpmpp_2m_sde", 10, 1.5625), autoencoder="autoencoder",
    evaluation_order=4, summary="class-conditional score model, 4x10x10 latents (decode with `autoencoder`)",
    description="Class-conditional score model on the autoencoder's 4x10x10 latents, scaled to unit variance by the "
                "autoencoder's latent_scale (latent diffusion, Rombach et al. 2022), with cross-attention to the label "
                "embedding and a null class for classifier-free guidance. Decode samples with the `autoencoder` model."))
register(ModelSpec(
    "autoencoder", AutoEncoder, "autoencoder", "train.autoencoder", evaluation_order=2,
    summary="conv autoencoder 28x28 <-> 4x10x10", task="image-to-image", extra_tags=("latent-diffusion",),
    loss="see command",
    description="Convolutional autoencoder, 1x28x28 <-> 4x10x10, for latent diffusion. `latent_scale` in config.json is "
                "the latents' standard deviation over the training set."))
# the evaluation networks: MNIST classifiers, the first the main one (EVALUATOR_NAMES)
_EVALUATOR = dict(role="classifier", task="image-classification", extra_tags=("image-classification",))
register(ModelSpec(
    "classifier", Classifier, train_module="train.classifier", evaluation_order=0, **_EVALUATOR,
    summary="evaluation CNN (conditional accuracy, FD features)",
    loss="cross-entropy with label smoothing 0.05, random +-2 px shifts",
    description="Small CNN MNIST classifier used for the project's evaluation: conditional accuracy of generated digits "
                "and a Frechet distance on its 128-d penultimate features."))
register(ModelSpec(
    "classifier-resnet", ResNetClassifier, train_module="train.classifier_resnet", evaluation_order=1, **_EVALUATOR,
    summary="second, independent evaluator (ResNet)", loss="cross-entropy (see the command)",
    description="The second, independent evaluator: a small pre-activation ResNet with global average pooling, trained "
                "on a different half of the training data with affine augmentation; its pooled features give a second "
                "Frechet distance, KID and precision/recall."))
# few-step students distilled from pixel-cond (diffusion/distill.py, train/distill.py): 4, 2 and 1 network calls
_DISTILL = ("python -m train.distill --teacher weights/pixel-cond --out runs/pixel-cond-distilled "
            "--weights-dir weights/pixel-cond-distilled (writes all three students)")
_DMD = ("; then python -m train.dmd --student weights/{0} --teacher weights/pixel-cond --fake-init "
        "runs/pixel-cond-distilled/guidance/student --weights-dir weights/{0} --steps 600{1} (distribution matching)")
for _name, _defaults in (("pixel-cond-distilled", SamplingDefaults("euler_ancestral", 4, 1.4375)),
                         ("pixel-cond-distilled-2step", SamplingDefaults("ddim", 2, 1.4375, options=(("eta", 0.5),))),
                         ("pixel-cond-distilled-1step", SamplingDefaults("ddim", 1, 1.5))):
    register(ModelSpec(_name, ScoreModel, "student", "train.distill", conditional=True, guidance="classifier-free",
                       defaults=_defaults, teacher="pixel-cond",
                       build_command=_DISTILL + {"pixel-cond-distilled-1step": _DMD.format(_name, ""),
                                                 "pixel-cond-distilled-2step": _DMD.format(_name, " --eta 0.5"),
                                                 }.get(_name, "")))
# The order Live prefers its students in: by measured quality at each one's default, the worst FD ratio over the four
# feature spaces (weights/metrics.json's bf16 evaluation: 2-step 2.15, 1-step 2.57, 4-step 3.32; specks 1.65 / 3.4 /
# 1.8%). Since their DMD fine-tunes (train/dmd.py) the 2- and 1-step students beat the 4-step one, at a half and a
# quarter of its network calls. tests/diffusion/test_registry.py checks this order against weights/metrics.json.
LIVE_PREFERENCE = ("pixel-cond-distilled-2step", "pixel-cond-distilled-1step", "pixel-cond-distilled")
# autoguidance (diffusion/autoguidance.py): weaker versions of a model (an early checkpoint of its own training run)
# that a model names in its config (`autoguide`); load_pipeline loads the pair, and w then means D_bad + w (D_good - D_bad)
register(ModelSpec(
    "pixel-uncond-guide", ScoreModel, "guide", "train.export_guide", guides="pixel-uncond", evaluation_order=6,
    summary="autoguidance guide of pixel-uncond: an early checkpoint of its run",
    description="The weaker model that guides pixel-uncond (autoguidance, Karras et al. 2024): an early checkpoint of "
                "pixel-uncond's own training run, whose errors are pixel-uncond's, only larger. Not meant to be "
                "sampled on its own."))

# the name lists every other module reads: live views (a spec registered later is in them)
MODEL_CLASSES = SpecTable("cls")
PIPELINE_NAMES = NameView(role="score")                  # the score models the app samples
DISTILLED_NAMES = NameView(role="student")
SAMPLEABLE_NAMES = NameView(sampleable=True)             # what load_pipeline and the sampling CLI accept
GUIDE_NAMES = NameView(role="guide")
EVALUATOR_NAMES = NameView("evaluation", role="classifier")   # the evaluation networks, the first one the main one
# the project's flagship: the first score model of the build; its defaults are the project-wide ones
FLAGSHIP = first(role="score")


def defaults_for(name: str) -> SamplingDefaults:
    """The recommended sampler, step count and guidance of model `name`; a ValueError for a name that is not a
    registered model that samples."""
    spec = model_spec(name)
    if spec.defaults is None:
        raise ValueError(f"{name!r} is a {spec.role} model and is not sampled on its own; models that sample: "
                         f"{', '.join(SAMPLEABLE_NAMES)}")
    return spec.defaults


CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, TIMELAPSE_NAME)  # what a published folder may hold
LOAD_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)                   # what loading a model downloads
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
from .locations import default_weights_dir  # noqa: E402  (the rule: $MNIST_DIFFUSION_WEIGHTS, checkout, installed wheel)
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("MNIST_DIFFUSION_WEIGHTS") or default_weights_dir())
REPO_ROOT = Path(__file__).resolve().parent.parent


def check_name(name: str) -> type:
    """The class of model `name`; a ValueError listing the names otherwise."""
    return model_spec(name).cls


def weights_dir(path=None) -> Path:
    return Path(path or DEFAULT_WEIGHTS_DIR)


def model_folders(path=None) -> list[str]:
    """Names of the model folders present in a weights directory (those holding config.json), known names first."""
    root = weights_dir(path)
    present = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file()) if root.is_dir() else []
    return [n for n in MODEL_CLASSES if n in present] + [n for n in present if n not in MODEL_CLASSES]


def shown_path(path) -> str:
    """A path as shown to users: relative to the repository or the working directory when inside them,
    so pages and logs do not reveal the server's directory layout."""
    path = Path(path).resolve()
    for base in (REPO_ROOT, Path.cwd()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return path.name if path.parent == path else f".../{path.parent.name}/{path.name}"
