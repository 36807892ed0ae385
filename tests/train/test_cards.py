"""Model cards in the Hub's form (train/cards.py): ModelCardData metadata, model-index EvalResults, every
numeric figure in a table (new metric keys included), the root card of the weights repo, Hub-pinned
"Use" snippets, and the push of the root card to the fake Hub (issue 13)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from diffusion.metrics import ResNetClassifier
from hub_helpers import make_weights
from diffusion.identity import find_placeholders
from train.cards import Published, check_card, render_card, root_card, use_snippet, write_card

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "weights"
METRICS = json.loads((SHIPPED / "metrics.json").read_text())
REPO = "lab/mnist-diffusion-lab"


@pytest.fixture
def weights(tmp_path):
    """A copy of the shipped weights folder (cards only rewritten there)."""
    dst = tmp_path / "weights"
    shutil.copytree(SHIPPED, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def _results(text: str) -> dict[tuple[str, str], float]:
    data = ModelCard(text).data
    return {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results or []}


def test_cards_carry_metadata_and_model_index(weights):
    for name, m in METRICS.items():
        text = write_card(name, weights, m).read_text()
        assert check_card(text) == [], name
        data = ModelCard(text).data
        assert data.library_name == "mnist-diffusion-lab" and data.license == "mit"
        assert data.datasets == ["ylecun/mnist"]
        assert {"model_hub_mixin", "pytorch_model_hub_mixin", "mnist"} <= set(data.tags), name
        assert data.eval_results, f"{name}: no model-index"
        assert all(r.dataset_type == "ylecun/mnist" and r.dataset_split == "test" for r in data.eval_results)
    results = _results((weights / "pixel-cond" / "README.md").read_text())
    fd = next(v for (t, n), v in results.items() if t == "frechet_distance")
    assert fd == pytest.approx(METRICS["pixel-cond"]["frechet_distance"])
    acc = next(v for (t, n), v in results.items() if t == "accuracy" and "conditional" in n)
    assert acc == pytest.approx(METRICS["pixel-cond"]["conditional_accuracy"])
    cls = _results((weights / "classifier" / "README.md").read_text())
    assert cls[("accuracy", "test accuracy")] == pytest.approx(METRICS["classifier"]["test_accuracy"])
    ae = _results((weights / "autoencoder" / "README.md").read_text())
    assert ae[("mse", "reconstruction MSE (pixels in [0, 1])")] == pytest.approx(METRICS["autoencoder"]["reconstruction_mse"])


def test_new_metric_keys_appear_without_code_changes(weights):
    m = dict(METRICS["pixel-cond"])
    m["evaluators"] = {
        "classifier": {"frechet_distance": 5.5, "kid_mean": 0.0123, "kid_std": 0.001, "precision": 0.81,
                       "recall": 0.77, "frechet_floor_same_n": 2.4},
        "classifier-resnet": {"frechet_distance": 3.25, "kid_mean": 0.0456, "kid_std": 0.002, "precision": 0.88,
                              "recall": 0.66, "frechet_floor_same_n": 1.3},
    }
    m.update({"confident_rate": 0.97, "speck_rate": 0.012, "brand_new_metric": 42.5, "a_note": "text is skipped",
              "bad": float("nan")})
    (weights / "pixel-cond" / "timelapse.safetensors").write_bytes(b"")
    text = str(render_card("pixel-cond", weights, m))
    assert check_card(text) == []
    results = _results(text)
    assert results[("kid", "kernel inception distance (KID) on classifier-resnet features (lower is better)")] == \
        pytest.approx(0.0456)
    assert results[("recall", "recall on classifier features: share of real digits the samples cover")] == \
        pytest.approx(0.77)
    assert results[("frechet_distance_ratio", "Frechet distance on classifier-resnet features / real digits' own at "
                    "the same N (1 = as close as real digits)")] == pytest.approx(3.25 / 1.3)
    for key in ("confident_rate", "speck_rate", "brand_new_metric", "evaluators.classifier-resnet.kid_std"):
        assert f"| `{key}` |" in text, key
    assert "`bad`" not in text and "a_note" not in text
    assert "timelapse.safetensors" in text


def test_use_snippet_loads_from_the_hub_at_the_pinned_commit(weights):
    sha = "0123456789abcdef0123456789abcdef01234567"
    (weights / "hub.json").write_text(json.dumps({"repo": REPO, "revision": "f" * 40, "models": {"pixel-cond": sha}}))
    for name in ("pixel-cond", "classifier", None):
        snippet = use_snippet(name, weights)
        compile(snippet, "snippet", "exec")
        assert f'"{REPO}"' in snippet and "revision=REVISION" in snippet
        assert find_placeholders(snippet) == []
    assert f'REVISION = "{sha}"' in use_snippet("pixel-cond", weights)
    assert f'REVISION = "{"f" * 40}"' in use_snippet("autoencoder", weights)
    text = write_card("latent-cond", weights, METRICS["latent-cond"]).read_text()
    assert 'load_pipeline("latent-cond", hub_repo="lab/mnist-diffusion-lab", revision=REVISION)' in text
    # given explicitly (as train.push does), the publication wins over the pin; its source names the install line
    pub = Published("someone/weights", "e" * 40, "https://example.org/someone/lab.git")
    snippet = use_snippet("classifier", weights, pub)
    assert 'Classifier.from_pretrained("someone/weights", subfolder="classifier", revision=REVISION)' in snippet
    assert f'REVISION = "{"e" * 40}"' in snippet
    assert snippet.startswith('# pip install "mnist-diffusion-lab @ git+https://example.org/someone/lab.git"')


def test_an_unpublished_snippet_names_no_repository_and_runs_from_the_checkout(weights):
    """No pin, no publication: the card loads from weights/ in a checkout; no repo id, no stand-in commit."""
    for name in ("pixel-cond", "classifier", None):
        snippet = use_snippet(name, weights)
        assert "hub_repo" not in snippet and "REVISION" not in snippet and find_placeholders(snippet) == []
        assert snippet.startswith("# pip install .")
    assert 'load_pipeline("pixel-cond", weights_dir="weights")' in use_snippet("pixel-cond", weights)
    assert 'Classifier.from_pretrained("weights/classifier")' in use_snippet("classifier", weights)


def test_task_tags_follow_conditioning(weights):
    """Class-conditional models are not `unconditional-image-generation`: the Hub has no pipeline task for a class
    label in and an image out, so they carry a tag and no pipeline_tag; unconditional ones keep the task."""
    tags_of = {}
    for name in ("pixel-cond", "latent-cond", "pixel-cond-distilled", "pixel-uncond", "pixel-uncond-guide",
                 "classifier", "autoencoder"):
        data = ModelCard(str(render_card(name, weights, METRICS.get(name, {})))).data
        tags_of[name] = (data.pipeline_tag, set(data.tags))
        tasks = {r.task_type for r in data.eval_results or []}
        if name in ("pixel-cond", "latent-cond", "pixel-cond-distilled"):
            assert data.pipeline_tag is None and "class-conditional-image-generation" in data.tags, name
            assert "unconditional-image-generation" not in data.tags and tasks <= {"class-conditional-image-generation"}
        elif name.startswith("pixel-uncond"):
            assert data.pipeline_tag == "unconditional-image-generation", name
            assert "class-conditional-image-generation" not in data.tags and tasks <= {"unconditional-image-generation"}
    assert tags_of["classifier"][0] == "image-classification" and tags_of["autoencoder"][0] == "image-to-image"
    root = ModelCard(str(root_card(weights))).data
    assert root.pipeline_tag is None
    assert {"class-conditional-image-generation", "unconditional-image-generation"} <= set(root.tags)


def test_cards_carry_the_weights_release():
    from diffusion.version import WEIGHTS_CHANGED, WEIGHTS_VERSION
    for name in METRICS:
        text = (SHIPPED / name / "README.md").read_text()
        assert f"Weights release {WEIGHTS_VERSION}" in text, name
        if WEIGHTS_CHANGED[name] != WEIGHTS_VERSION:
            assert f"weights unchanged since {WEIGHTS_CHANGED[name]}" in text, name


def test_root_card_lists_every_model_folder(weights):
    ResNetClassifier(width=4).save_pretrained(weights / "classifier-resnet")
    ResNetClassifier(width=4).save_pretrained(weights / "classifier-unmeasured")   # a folder with no metrics yet
    card = str(root_card(weights))
    assert check_card(card) == []
    for name in ("pixel-cond", "pixel-uncond", "latent-cond", "autoencoder", "classifier", "classifier-resnet"):
        assert f"[`{name}`](./{name}/README.md)" in card, name
    assert f"conditional accuracy {100 * METRICS['pixel-cond']['conditional_accuracy']:.2f}%" in card
    assert "not evaluated yet" in card


def test_check_card_catches_malformed_cards():
    good = str(render_card("classifier", SHIPPED, METRICS["classifier"]))
    assert check_card(good) == []
    assert check_card("# no metadata\n")
    assert any("license" in p for p in check_card(good.replace("license: mit", "license: apache-2.0")))
    assert any("not a finite number" in p for p in check_card(good.replace("value: 0.99", "value: .nan", 1)))


def test_shipped_cards_are_in_the_hub_form():
    for name in METRICS:
        text = (SHIPPED / name / "README.md").read_text()
        assert check_card(text) == [], name
        assert find_placeholders(text) == [], name


def test_shipped_cards_are_what_the_card_code_renders(weights):
    """weights/*/README.md are regenerated through write_card, not edited by hand (the shipped weights dir has
    no hub.json, so their snippets load from the checkout)."""
    assert not (SHIPPED / "hub.json").exists()
    for name, m in METRICS.items():
        assert str(render_card(name, SHIPPED, m)).rstrip("\n") == (SHIPPED / name / "README.md").read_text().rstrip("\n"), name


def test_push_sends_the_root_card_and_license(hub, tmp_path):
    from train.push import main
    weights = make_weights(tmp_path / "weights", ["pixel-cond", "classifier"])
    sha = main(["--repo-id", REPO, "--weights-dir", str(weights)])
    files = hub.files(REPO)
    assert sha == hub.head(REPO)
    assert {"README.md", "LICENSE", "pixel-cond/model.safetensors", "classifier/model.safetensors"} <= set(files)
    card = files["README.md"].decode()
    assert check_card(card) == []
    assert "[`pixel-cond`](./pixel-cond/README.md)" in card and "[`classifier`](./classifier/README.md)" in card
    assert files["LICENSE"] == (ROOT / "LICENSE").read_bytes()
    pin = json.loads((weights / "hub.json").read_text())
    assert pin["revision"] == sha and set(pin["models"]) == {"pixel-cond", "classifier"}


def test_cards_cli_renders_every_folder_from_the_stored_metrics(tiny_weights, tmp_path, capsys):
    import shutil

    from train import cards

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "pixel-cond" / "README.md").write_text("stale")
    assert cards.main(["--weights-dir", str(weights)]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == len([p for p in weights.iterdir() if (p / "config.json").is_file()])
    text = (weights / "pixel-cond" / "README.md").read_text()
    assert text != "stale" and not cards.check_card(text)
    assert "## Sampling settings (rule v3)" in text               # the shipped sweep's rows for pixel-cond


def test_a_students_card_tells_its_distillation_stage_by_stage():
    """A student's training lines: the distillation loss (not denoising score matching), each stage that made it
    with its images, and for a re-trained student (train.distill --start-from) both commands, each stage tagged."""
    from train.card_training import training_lines
    rec = {"command": "python -m train.distill --new", "config": {"batch_size": 64, "lr": 5e-4, "w_min": 0.0,
                                                                  "w_max": 4.0},
           "total_wall_s": 600.0, "torch": "2.x", "device": "CPU (1 threads)",
           "stages": [{"stage": "guidance", "steps": 10, "final_loss": 3.0, "wall_s": 60.0, "command": "python -m old"},
                      {"stage": "round-4-to-2", "steps": 100, "final_loss": 1.5, "wall_s": 540.0, "command": "python -m old"},
                      {"stage": "start-from weights/x", "steps": 0, "final_loss": 1.5, "wall_s": 0.0},
                      {"stage": "round-2-to-1", "steps": 2000, "final_loss": 0.5, "wall_s": 0.0}]}
    lines = training_lines("pixel-cond-distilled-1step", rec)
    assert lines[:2] == ["command 1 of 2: `python -m old`", "command 2 of 2: `python -m train.distill --new`"]
    assert "guided progressive distillation" in lines[2] and "score matching" not in " ".join(lines)
    assert "stage round-2-to-1 (command 2): 2000 optimizer steps (128,000 images), final loss 0.5, 0.0 min" in lines
    assert "stage guidance (command 1): 10 optimizer steps (640 images), final loss 3.0, 1.0 min" in lines
    assert not any("start-from" in line for line in lines) and lines[-1].startswith("wall time: 10.0 min in all")
    single = training_lines("pixel-cond-distilled", {**rec, "stages": rec["stages"][3:]})
    assert single[0] == "command: `python -m train.distill --new`" and "(command" not in " ".join(single)
