"""Model cards in the Hub's own form: `huggingface_hub.ModelCard` from `ModelCardData` (license, dataset,
library_name, the mixin's tags) with the evaluation figures as `EvalResult`s in `model-index`.

- `write_card(name, weights_dir, metrics)`: weights/<name>/README.md, from the training record
  (train/records/<name>.json) and the evaluation metrics (one model's entry of weights/metrics.json).
  The figures this module knows go into model-index; every numeric figure, known or not (nested dicts
  such as metrics["evaluators"][...] flattened to dotted keys), is listed in the card's figures table, so
  a new metric appears without a code change.
- `root_card(weights_dir, metrics)`: the weights repo's README.md, one row per model folder present.
- `check_card(text)`: the offline check (metadata parses, model-index round-trips to EvalResults,
  license, dataset, library) that stands in for `ModelCard.validate`, which needs the Hub.
The "Use" snippets name no repository until one exists: the committed cards load from the checkout's weights/
folder; `python -m train.push` renders every card again with the repo it pushed to and the commit holding the
weights (`Published`), and weights/hub.json keeps that pin for later renders.
Task tags: unconditional models `unconditional-image-generation`; class-conditional ones have no Hub pipeline task
(the Hub has none for "a class label in, an image out": text-to-image would be wrong), so they carry the tag
`class-conditional-image-generation` and no pipeline_tag.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dataclasses import dataclass

from diffusion.pinning import hub_pin
from train.card_templates import ROOT_TEMPLATE, SETTINGS_INTRO, TEMPLATE
from train.card_training import training_lines
from diffusion.version import weights_release
from diffusion.registry import MODEL_CLASSES, PIPELINE_NAMES, TIMELAPSE_NAME, SpecTable, model_folders, model_spec

RECORDS = Path(__file__).resolve().parent / "records"
UNCONDITIONAL_TASK = "unconditional-image-generation"
CONDITIONAL_TAG = "class-conditional-image-generation"   # a tag: the Hub has no pipeline task for it
LIBRARY = "mnist-diffusion-lab"
LICENSE = "mit"
DATASET_ID = "ylecun/mnist"
DATASET_NAME = "MNIST"

# the per-model texts and tags: views of the model registry (diffusion/registry.py ModelSpec), never copies
DESCRIPTIONS = SpecTable("description")       # the paragraph at the top of a model's card
ROLES = SpecTable("summary")                  # one line per model in the weights repo's card
EXTRA_TAGS = SpecTable("extra_tags")          # tags beyond the class's own
TASKS = SpecTable("task")                     # the Hub task of the models that are not generative
# (metric key, model-index type, name); a key missing from the metrics is skipped
# names a reader understands: what the figure is, which way is better
SAMPLE_METRICS = (("frechet_distance", "frechet_distance", "Frechet distance on {ev} features (lower is better)"),
                  ("kid_mean", "kid", "kernel inception distance (KID) on {ev} features (lower is better)"),
                  ("precision", "precision", "precision on {ev} features: share of samples that look like real digits"),
                  ("recall", "recall", "recall on {ev} features: share of real digits the samples cover"))
AUTOENCODER_METRICS = (("reconstruction_mse", "mse", "reconstruction MSE (pixels in [0, 1])"),
                       ("reconstruction_accuracy", "accuracy", "reconstruction accuracy (classifier on reconstructions)"),
                       ("frechet_distance_recon", "frechet_distance", "FD of reconstructions vs test images"))



def _fmt(v, pct=False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{100 * v:.2f}%" if pct else f"{v:.4g}"
    return str(v)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flat_figures(metrics: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Every finite number in `metrics`, nested dicts flattened to dotted keys, in the dict's order."""
    out = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += flat_figures(value, f"{prefix}{key}.")
        elif _number(value):
            out.append((f"{prefix}{key}", value))
    return out


def _record(name: str) -> dict:
    path = RECORDS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def mixin_tags(name: str) -> list[str]:
    """The tags PyTorchModelHubMixin gives the class (its own plus model_hub_mixin / pytorch_model_hub_mixin)."""
    cls = MODEL_CLASSES.get(name)
    info = getattr(cls, "_hub_mixin_info", None)
    data = getattr(info, "model_card_data", None)
    return list(getattr(data, "tags", None) or [])


def _sampling_config(m: dict) -> str:
    options = "".join(f", {k} = {v:g}" for k, v in (m.get("sampler_options") or {}).items())
    parts = [f"{m['sampler']}{options}, {m.get('steps')} steps ({m.get('nfe')} NFE)"] if m.get("sampler") else []
    if m.get("guidance") is not None:
        where = f" {m['guidance_where']}" if m.get("guidance_where") else ""
        parts.append(f"autoguidance w = {m['guidance']}{where} (guide: `{m['autoguide']}`)" if m.get("autoguide")
                     else f"guidance w = {m['guidance']}{where}")
    if m.get("samples"):
        parts.append(f"{m['samples']} samples")
    if m.get("seed") is not None:
        parts.append(f"seed {m['seed']}")
    return ", ".join(parts) or None


def eval_results(name: str, m: dict, conditional: bool = False) -> list[EvalResult]:
    """The figures this module knows, as model-index entries (dataset: MNIST test split); a class-conditional
    model's sample figures are filed under the task `class-conditional-image-generation`."""
    common = dict(dataset_type=DATASET_ID, dataset_name=DATASET_NAME, dataset_split="test")
    results = []

    def add(task, key, mtype, mname, value, config=None):
        if _number(value):
            results.append(EvalResult(task_type=task, metric_type=mtype, metric_name=mname, metric_value=float(value),
                                      metric_config=config, **common))

    if "test_accuracy" in m:
        add(TASKS.get(name, "image-classification"), "test_accuracy", "accuracy", "test accuracy", m["test_accuracy"])
    for key, mtype, mname in AUTOENCODER_METRICS:
        add(TASKS.get(name, "image-to-image"), key, mtype, mname, m.get(key))
    if "frechet_distance" in m or "evaluators" in m:
        task, config = CONDITIONAL_TAG if conditional else UNCONDITIONAL_TASK, _sampling_config(m)
        evaluators = m.get("evaluators") if isinstance(m.get("evaluators"), dict) else {}
        if not evaluators:
            evaluators = {"classifier": m}
        for ev, em in evaluators.items():
            if not isinstance(em, dict):
                continue
            for key, mtype, mname in SAMPLE_METRICS:
                add(task, key, mtype, mname.format(ev=ev), em.get(key), config)
            floor = em.get("frechet_floor_same_n") or (m.get("frechet_floor_same_n") if ev == "classifier" else None)
            if _number(em.get("frechet_distance")) and _number(floor) and floor > 0:
                add(task, "ratio", "frechet_distance_ratio", f"Frechet distance on {ev} features / real digits' own at the "
                    f"same N (1 = as close as real digits)",
                    em["frechet_distance"] / floor, config)
        add(task, "conditional_accuracy", "accuracy", "conditional accuracy (classifier reads the requested digit)",
            m.get("conditional_accuracy"), config)
    return results


def is_conditional(config: dict) -> bool:
    """A score model is class-conditional when its config gives it classes (`num_classes`)."""
    return bool(config.get("num_classes"))


def card_data(name: str, metrics: dict, conditional: bool | None = None) -> ModelCardData:
    """Metadata: library, license, data set, tags and the Hub task. `conditional` (a class-conditional score model;
    None: read weights' config is not at hand, so the name decides) picks the task tags."""
    tags = ["mnist", *mixin_tags(name), *EXTRA_TAGS.get(name, [])]
    if conditional is None:
        conditional = model_spec(name).conditional       # the registry's (an unknown name: a ValueError)
    pipeline_tag = TASKS.get(name)
    if name not in TASKS:                                    # a score model
        tags += ["diffusion", "score-based"]
        if conditional:
            tags += [CONDITIONAL_TAG, "classifier-free-guidance"]
        else:
            tags += [UNCONDITIONAL_TASK, "unconditional"]
            pipeline_tag = UNCONDITIONAL_TASK
    return ModelCardData(library_name=LIBRARY, license=LICENSE, datasets=[DATASET_ID], model_name=name,
                         tags=sorted(set(tags)), pipeline_tag=pipeline_tag,
                         eval_results=eval_results(name, metrics, conditional) or None)


@dataclass(frozen=True)
class Published:
    """Where a push put the weights: the Hub repo, the commit holding them, and the source repository the
    install line names (None: install from a checkout). `train.push` renders the cards with it."""
    repo: str
    revision: str
    source_url: str | None = None


def _published(weights_dir, published: Published | None, name: str | None = None) -> Published | None:
    """`published`, else the pin a push recorded in weights_dir/hub.json (a real repo, and the commit that
    uploaded `name`'s weights, else the newest), else None."""
    if published is not None:
        return published
    pin = hub_pin(weights_dir)
    revision = (pin.get("models") or {}).get(name) or pin.get("revision")
    if pin.get("repo") and revision:
        return Published(pin["repo"], revision, pin.get("source_url"))
    return None


def install_line(source_url: str | None) -> str:
    if source_url:
        return f'# pip install "mnist-diffusion-lab @ git+{source_url}"'
    return "# pip install .   (in a checkout of mnist-diffusion-lab)"


def use_snippet(name: str | None, weights_dir, published: Published | None = None) -> str:
    """Python that loads `name` (None: the root card's example, pixel-cond). Published (or pinned in hub.json):
    from the Hub repo at the commit that holds the weights; otherwise from the checkout's weights/ folder,
    naming no repository (a push renders the card again with the real one)."""
    pub = _published(weights_dir, published, name)
    sampleable = name is None or name in PIPELINE_NAMES
    model = name or "pixel-cond"
    cls = MODEL_CLASSES[model].__name__ if model in MODEL_CLASSES else "ScoreModel"
    module = "diffusion.metrics" if cls.endswith("Classifier") else "diffusion"
    lines = [install_line(pub.source_url if pub else None)]
    lines += ["from diffusion import load_pipeline" if sampleable else f"from {module} import {cls}", ""]
    if pub:
        lines.append(f'REVISION = "{pub.revision}"  # the commit that uploaded these weights')
        lines.append(f'pipe = load_pipeline("{model}", hub_repo="{pub.repo}", revision=REVISION)' if sampleable else
                     f'model = {cls}.from_pretrained("{pub.repo}", subfolder="{model}", revision=REVISION)')
    else:
        lines.append("# from the checkout's weights/ folder; once pushed, this card names the Hub repo and commit")
        lines.append(f'pipe = load_pipeline("{model}", weights_dir="weights")' if sampleable else
                     f'model = {cls}.from_pretrained("weights/{model}")')
    if sampleable:
        lines.append("images, step = pipe.generate(" + ("[3, 7], " if model != "pixel-uncond" else "num_images=2, ")
                     + "seed=0)  # (2, 28, 28) in [0, 1]")
    return "\n".join(lines)


def _headline(name: str, m: dict) -> tuple[str, list[str], list[tuple[str, list[str]]]]:
    """(setup sentence, bullet lines, digit tables) for the figures this module knows."""
    setup, lines, tables = "", [], []
    if "test_accuracy" in m:
        lines.append(f"MNIST test accuracy: **{_fmt(m['test_accuracy'], True)}** (10,000 test images)")
    if "reconstruction_mse" in m:
        lines += [f"reconstruction MSE (test set, pixels in [0, 1]): **{_fmt(m['reconstruction_mse'])}**",
                  f"reconstruction accuracy (classifier on reconstructions vs true labels): "
                  f"**{_fmt(m.get('reconstruction_accuracy'), True)}**"]
        if "agreement_with_originals" in m:
            lines.append(f"agreement with the classifier's predictions on the originals: "
                         f"{_fmt(m['agreement_with_originals'], True)}")
        if _number(m.get("frechet_distance_recon")):
            lines.append(f"Frechet distance of reconstructions vs test images: {_fmt(m['frechet_distance_recon'])} "
                         f"(floor, 10k training images: {_fmt(m.get('frechet_floor_train_vs_test'))})")
    if "frechet_distance" in m or "evaluators" in m:
        if m.get("samples"):
            how = f"sampler `{m['sampler']}`, {m.get('steps')} steps = {m.get('nfe')} network evaluations" \
                if m.get("sampler") else "the default sampler"
            setup = (f"Measured on {m['samples']} samples ("
                     f"{'unconditional' if m.get('guidance') is None or m.get('autoguide') else '100 per digit'}), {how}"
                     + (f", autoguidance w = {m['guidance']} by `{m['autoguide']}`" if m.get("autoguide") else
                        f", guidance w = {m['guidance']}" if m.get("guidance") is not None else "")
                     + (f", seed {m['seed']}" if m.get("seed") is not None else "") + ".")
        evaluators = m.get("evaluators") if isinstance(m.get("evaluators"), dict) else {"classifier": m}
        for ev, em in evaluators.items():
            if not isinstance(em, dict):
                continue
            fd = em.get("frechet_distance")
            floor = em.get("frechet_floor_same_n") or m.get("frechet_floor_same_n")
            if _number(fd):
                ratio = f" (**{fd / floor:.2f}x** the floor of {_fmt(floor)}: {m.get('samples', 'N')} real training " \
                        f"images vs the same test set, since the distance is biased upward at small N)" \
                    if _number(floor) and floor > 0 else ""
                lines.append(f"Frechet distance on `{ev}` features vs the 10k test images: **{_fmt(fd)}**{ratio}")
            extra = [f"{label} {_fmt(em[k])}" + (f" +- {_fmt(em['kid_std'])}" if k == "kid_mean" and "kid_std" in em else "")
                     for k, label in (("kid_mean", "KID"), ("precision", "precision"), ("recall", "recall")) if k in em]
            if extra:
                lines.append(f"`{ev}` features: " + ", ".join(extra))
        if "conditional_accuracy" in m:
            lines.append(f"conditional accuracy (classifier agrees with the requested digit): "
                         f"**{_fmt(m['conditional_accuracy'], True)}**")
    if isinstance(m.get("per_digit_accuracy"), list) and len(m["per_digit_accuracy"]) == 10:
        tables.append(("accuracy", [f"{100 * a:.1f}" for a in m["per_digit_accuracy"]]))
    if isinstance(m.get("class_histogram"), list) and len(m["class_histogram"]) == 10:
        lines.append(f"class histogram (the share of samples the classifier assigns to each digit, below): smallest "
                     f"class **{_fmt(min(m['class_histogram']), True)}**")
        tables.append(("share", [f"{100 * a:.1f}%" for a in m["class_histogram"]]))
    if _number(m.get("sampling_seconds_per_image")):
        lines.append(f"sampling time: {1000 * m['sampling_seconds_per_image']:.1f} ms per image (batches of 500, CPU)")
    return setup, lines, tables


SETTINGS_TABLES = Path(__file__).resolve().parent.parent / "bench" / "results" / "defaults_v3_cards.json"


def settings_lines(name: str) -> list[str]:
    """The rule-v3 table of `name`, every setting the sweep measured (written by `python -m bench.defaults_v3` beside
    its report, bench/results/defaults_v3_cards.json); [] when the model was not swept or the file is absent."""
    try:
        return json.loads(SETTINGS_TABLES.read_text(encoding="utf-8")).get(name, [])
    except (OSError, ValueError):
        return []


def render_card(name: str, weights_dir: Path, metrics: dict, published: Published | None = None) -> ModelCard:
    """The card of weights/<name>/ as a ModelCard (not written); `published` fills the "Use" snippet."""
    weights_dir = Path(weights_dir)
    rec = _record(name)
    model_cfg = json.loads((weights_dir / name / "config.json").read_text())
    setup, headline, tables = _headline(name, metrics or {})
    lpips_note = ""
    if model_spec(name).role == "autoencoder" and rec and "LPIPS" not in rec.get("loss", ""):
        lpips_note = ("LPIPS was not used for these weights: its ImageNet AlexNet backbone cannot be downloaded on the "
                      "offline build machine. `python -m train.autoencoder --perceptual lpips` trains with MSE + LPIPS "
                      "where the backbone is available (see train/autoencoder.py).")
    params = rec.get("parameters")
    return ModelCard.from_template(
        card_data(name, metrics or {}, is_conditional(model_cfg) if name not in TASKS else False),
        template_str=TEMPLATE, library=LIBRARY, name=name, release=weights_release(name),
        description=DESCRIPTIONS.get(name, f"The `{name}` model of {LIBRARY}."),
        parameters=f"{params:,}" if isinstance(params, int) else "n/a",
        config=json.dumps(model_cfg, separators=(",", ":")),
        cross_attention=bool(model_cfg.get("num_classes")) and model_spec(name).role == "score",
        training=training_lines(name, rec), lpips_note=lpips_note, setup=setup, headline=headline,
        digit_tables=tables, figures=[(k, _fmt(v)) for k, v in flat_figures(metrics or {})],
        evaluated=(metrics or {}).get("evaluated"), settings=settings_lines(name), settings_intro=SETTINGS_INTRO,
        timelapse=TIMELAPSE_NAME if (weights_dir / name / TIMELAPSE_NAME).is_file() else "",
        use=use_snippet(name, weights_dir, published))


def write_card(name: str, weights_dir: Path, metrics: dict, published: Published | None = None) -> Path:
    """Write weights/<name>/README.md (a ModelCard) from the training record and `metrics`; returns its path."""
    card = render_card(name, weights_dir, metrics, published)
    problems = check_card(str(card))
    if problems:
        raise ValueError(f"the card of {name} would not validate: {problems}")
    out = Path(weights_dir) / name / "README.md"
    out.write_text(str(card) + ("" if str(card).endswith("\n") else "\n"), encoding="utf-8")
    return out


def _headline_figure(name: str, m: dict) -> str:
    if not m:
        return "not evaluated yet"
    if "conditional_accuracy" in m:
        text = f"conditional accuracy {_fmt(m['conditional_accuracy'], True)}"
    elif "test_accuracy" in m:
        return f"test accuracy {_fmt(m['test_accuracy'], True)}"
    elif "reconstruction_accuracy" in m:
        return f"reconstruction accuracy {_fmt(m['reconstruction_accuracy'], True)}, MSE {_fmt(m.get('reconstruction_mse'))}"
    elif isinstance(m.get("class_histogram"), list) and m["class_histogram"]:
        text = f"smallest class {_fmt(min(m['class_histogram']), True)} of samples"
    else:
        text = ""
    fd = m.get("frechet_distance")
    if _number(fd):
        text += f"{', ' if text else ''}FD {_fmt(fd)}"
        if m.get("sampler"):
            text += f" ({m['sampler']}, {m.get('nfe')} NFE)"
    return text or "see its card"


def root_card(weights_dir, metrics: dict | None = None, published: Published | None = None) -> ModelCard:
    """The weights repo's README.md: every model folder present in `weights_dir`, with its headline figure.
    It holds conditional and unconditional models alike, so it carries task tags and no pipeline_tag."""
    weights_dir = Path(weights_dir)
    if metrics is None:
        path = weights_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    names = model_folders(weights_dir)
    rows = [{"name": n, "what": ROLES.get(n, f"the {n} model"),
             "figure": _headline_figure(n, metrics.get(n) or {})} for n in names]
    tags = sorted({"mnist", "diffusion", "score-based", UNCONDITIONAL_TASK, CONDITIONAL_TAG,
                   *[t for n in names for t in mixin_tags(n)]})
    data = ModelCardData(library_name=LIBRARY, license=LICENSE, datasets=[DATASET_ID], tags=tags)
    pub = _published(weights_dir, published)
    return ModelCard.from_template(data, template_str=ROOT_TEMPLATE, library=LIBRARY, rows=rows,
                                   use=use_snippet(None, weights_dir, published), release=weights_release(""),
                                   project_url=pub.source_url if pub else None, license_name=LICENSE.upper(),
                                   dataset_name=DATASET_NAME, dataset=DATASET_ID)


def check_card(text: str) -> list[str]:
    """Offline stand-in for `ModelCard.validate` (which posts to the Hub): [] when the card is well-formed."""
    if not text.startswith("---\n"):
        return ["no YAML metadata block at the top"]
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as e:  # noqa: BLE001
        return [f"the metadata does not parse: {type(e).__name__}: {e}"]
    data, problems = card.data, []
    if data.license != LICENSE:
        problems.append(f"license is {data.license!r}, not {LICENSE!r}")
    if not data.library_name:
        problems.append("library_name is missing")
    if DATASET_ID not in (data.datasets or []):
        problems.append(f"datasets does not name {DATASET_ID}")
    raw = card.data.to_dict()
    if "model-index" in raw or data.eval_results:
        for r in data.eval_results or []:
            if not _number(r.metric_value):
                problems.append(f"{r.metric_type}: value {r.metric_value!r} is not a finite number")
            if r.dataset_type != DATASET_ID:
                problems.append(f"{r.metric_type}: dataset {r.dataset_type!r}")
        if not data.eval_results:
            problems.append("model-index holds no results")
    return problems


def main(argv=None) -> int:
    """`python -m train.cards [--weights-dir weights]`: render every model folder's card again from the stored metrics
    (weights/metrics.json) and the rule-v3 sweep (bench/results/defaults_v3.json), no evaluation run: after a change to
    the templates, the sweep or a default."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--weights-dir", default=str(Path(__file__).resolve().parent.parent / "weights"))
    weights = Path(p.parse_args(argv).weights_dir)
    metrics = json.loads((weights / "metrics.json").read_text()) if (weights / "metrics.json").is_file() else {}
    for name in model_folders(weights):
        print(write_card(name, weights, metrics.get(name, {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
