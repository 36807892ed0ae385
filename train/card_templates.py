"""The model cards' Jinja templates (rendered by train/cards.py through `huggingface_hub.ModelCard.from_template`):
one per model folder (TEMPLATE) and the weights repository's own (ROOT_TEMPLATE), and the fixed paragraph above a
model's rule-v3 settings table."""

TEMPLATE = """---
{{ card_data }}
---

# {{ library }} / {{ name }}

Weights release {{ release }}; the project's CHANGELOG.md says what changed in each release.

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
{% endif %}{% if settings %}
## Sampling settings (rule v3)

{{ settings_intro }}

{% for line in settings %}{{ line }}
{% endfor %}{% endif %}{% if timelapse %}
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

Weights for {% if project_url %}[mnist-diffusion-lab]({{ project_url }}){% else %}mnist-diffusion-lab{% endif %} \
(weights release {{ release }}): score-based \
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

SETTINGS_INTRO = (
    "Every sampling setting measured for this model (2000 samples each, seed 1234, the same noise for every setting; "
    "`bench/results/defaults_v3.md` has every column, `docs/quality-v3.md` the rule). The default, in bold, is rule "
    "v3's pick: a setting loses when it misses more of real digits' bands (accuracy under each classifier, speck rate, "
    "recall in each feature space), or as many with a higher worst FD ratio (the worst over four feature spaces of "
    "FD / real digits' own FD at the same N).")
