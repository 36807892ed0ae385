"""diffusion/registry.py: one ModelSpec per model name, and every table derived from it.

A tiny extra model kind (`fashion-pixel-cond`, registered for the length of a test with `registered`) must show up
wherever the shipped models do, with no other code change: the sampling CLI's choices and help, the training CLI,
the app's model pickers, the model cards; an unknown name must be a clear error in each of those places.
"""
from __future__ import annotations

import dataclasses

import gradio as gr
import pytest
import torch

from diffusion import hub, registry
from diffusion.pipeline import MODEL_DEFAULTS, Pipeline, defaults_for
from diffusion.registry import ModelSpec, SamplingDefaults, model_spec, registered
from diffusion.score import ScoreModel
from factories import tiny_model, tiny_score

FASHION = ModelSpec(
    "fashion-pixel-cond", ScoreModel, "score", "train.fashion_pixel_cond", conditional=True, dataset="Fashion-MNIST",
    guidance="classifier-free", defaults=SamplingDefaults("heun", 3, 2.5), evaluation_order=100,
    summary="class-conditional score model of Fashion-MNIST, 28x28 pixels",
    description="A class-conditional score model of Fashion-MNIST clothes, for the registry's tests.")
UNKNOWN = "unknown model 'nope'; choose one of pixel-uncond, pixel-cond, latent-cond, autoencoder, classifier"


# ---------------------------------------------------------------- the registry itself


def test_the_shipped_models_and_their_facts():
    assert tuple(registry.PIPELINE_NAMES) == ("pixel-uncond", "pixel-cond", "latent-cond")     # the app's order
    assert tuple(registry.DISTILLED_NAMES) == ("pixel-cond-distilled", "pixel-cond-distilled-2step",
                                               "pixel-cond-distilled-1step")
    assert registry.evaluation_order() == ("classifier", "classifier-resnet", "autoencoder", "pixel-cond",
                                           "latent-cond", "pixel-uncond", "pixel-uncond-guide")   # build_all.sh's
    assert registry.FLAGSHIP == "pixel-cond" and registry.pixel_and_latent() == ("pixel-cond", "latent-cond")
    assert tuple(registry.EVALUATOR_NAMES) == ("classifier", "classifier-resnet")
    latent, uncond, student = model_spec("latent-cond"), model_spec("pixel-uncond"), model_spec("pixel-cond-distilled")
    assert (latent.space, latent.autoencoder, latent.guidance, latent.blurb) == (
        "latent", "autoencoder", "classifier-free", "class-conditional, latent space")
    assert (uncond.guidance, uncond.blurb, model_spec("pixel-uncond-guide").guides) == (
        "autoguidance", "unconditional, pixel space", "pixel-uncond")
    assert (student.teacher, student.defaults) == ("pixel-cond", SamplingDefaults("euler_ancestral", 4, 1.4375))
    assert hub.train_command("classifier-resnet") == "python -m train.classifier_resnet"
    assert hub.train_command("pixel-cond-distilled-1step").startswith("python -m train.distill --teacher weights/pixel-cond")


@pytest.mark.parametrize("change, message", [
    (dict(role="teacher"), "role must be one of score, student, guide, autoencoder, classifier, got 'teacher'"),
    (dict(space="voxel"), "space must be one of pixel, latent, got 'voxel'"),
    (dict(guidance="cfg"), "guidance must be one of classifier-free, autoguidance, none, got 'cfg'"),
    (dict(defaults=None), "a score model needs sampling defaults"),
    (dict(space="latent"), "autoencoder must name a model"),
    (dict(role="student"), "teacher must name a model"),
])
def test_a_spec_that_contradicts_itself_is_refused(change, message):
    with pytest.raises(ValueError, match=f"ModelSpec 'fashion-pixel-cond': {message}"):
        dataclasses.replace(FASHION, **change)


def test_registered_adds_a_spec_to_every_view_for_the_block_only():
    before = dict(MODEL_DEFAULTS)
    with registered(FASHION):
        assert registry.PIPELINE_NAMES[-1] == "fashion-pixel-cond" and "fashion-pixel-cond" in registry.SAMPLEABLE_NAMES
        assert registry.MODEL_CLASSES["fashion-pixel-cond"] is ScoreModel
        assert MODEL_DEFAULTS["fashion-pixel-cond"] == defaults_for("fashion-pixel-cond") == SamplingDefaults("heun", 3, 2.5)
        assert registry.evaluation_order(role="score")[-1] == "fashion-pixel-cond"
        assert registry.FLAGSHIP == "pixel-cond"                  # evaluation order 100: after the shipped ones
        with pytest.raises(ValueError, match="model 'fashion-pixel-cond' is registered already"):
            registry.register(FASHION)
    assert "fashion-pixel-cond" not in registry.SAMPLEABLE_NAMES and dict(MODEL_DEFAULTS) == before
    with pytest.raises(KeyError):
        registry.MODEL_CLASSES["fashion-pixel-cond"]


def test_an_unknown_name_is_a_clear_error_in_the_library():
    for call in (lambda: model_spec("nope"), lambda: defaults_for("nope"), lambda: registry.check_name("nope"),
                 lambda: hub.train_command("nope"), lambda: registry.first(role="score", space="nope")):
        with pytest.raises(ValueError) as e:
            call()
        assert UNKNOWN in str(e.value) or "no registered model has role='score', space='nope'" in str(e.value)
    with pytest.raises(ValueError, match="'nope' is not a diffusion model; choose one of pixel-uncond, pixel-cond"):
        hub.load_pipeline("nope")
    with pytest.raises(ValueError, match="ModelSpec has no attribute"):
        registry.model_names(colour="red")


def test_a_pipeline_named_after_no_model_samples_with_the_project_defaults_not_an_error():
    named = Pipeline(tiny_model("pixel-cond"), name="pixel-cond-distilled")     # a registered name: its own
    assert named.defaults == SamplingDefaults("euler_ancestral", 4, 1.4375)
    assert Pipeline(tiny_model("pixel-cond"), name="a-training-run").defaults == defaults_for("pixel-cond")


# ---------------------------------------------------------------- the places a model kind shows up


@pytest.fixture
def fashion_weights(tmp_path):
    """A weights folder with the tiny extra model (seeded) and pixel-cond."""
    tiny_score(3, num_classes=10).save_pretrained(tmp_path / "fashion-pixel-cond")
    tiny_model("pixel-cond").save_pretrained(tmp_path / "pixel-cond")
    return tmp_path


def test_sampling_cli_offers_and_samples_the_extra_model(fashion_weights, tmp_path, capsys):
    import importlib

    import numpy as np
    sample_cli = importlib.import_module("diffusion.sample")
    with registered(FASHION):
        parser = sample_cli.build_parser()
        assert "fashion-pixel-cond" in parser.format_help()            # the --model choices and the defaults table
        assert "fashion-pixel-cond --sampler heun --steps 3 --guidance 2.5" in parser.format_help()
        out = tmp_path / "s.npz"
        assert sample_cli.main(["--model", "fashion-pixel-cond", "--digits", "1,2", "--per-digit", "2", "--out",
                                str(out), "--weights-dir", str(fashion_weights), "--device", "cpu"]) == 0
        assert np.load(out)["images"].shape == (4, 28, 28)
        assert "(fashion-pixel-cond, heun, 3 steps, NFE 5/batch, guidance 2.5" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:                               # gone with the block: argparse refuses it
        sample_cli.build_parser().parse_args(["--model", "fashion-pixel-cond"])
    assert e.value.code == 2
    assert "argument --model: invalid choice: 'fashion-pixel-cond'" in capsys.readouterr().err


def test_training_cli_lists_the_extra_model_and_refuses_an_unknown_one(capsys):
    import train.cli
    with registered(FASHION):
        assert train.cli.scripts()["fashion-pixel-cond"] == "train.fashion_pixel_cond"
        assert list(train.cli.scripts())[-4:] == ["fashion-pixel-cond", "distill", "dmd", "evaluate"]
        assert train.cli.main([]) == 2 and "pixel-uncond, fashion-pixel-cond, distill" in capsys.readouterr().out
    assert train.cli.main(["nope"]) == 2 and "unknown model 'nope'" in capsys.readouterr().err


def test_app_pickers_offer_the_extra_model_and_refuse_an_unknown_one(fashion_weights):
    from ui import build_demo

    with registered(FASHION):
        pipes, messages = hub.load_pipelines(weights_dir=fashion_weights)
        assert set(pipes) == {"pixel-cond", "fashion-pixel-cond"}, messages
        demo = build_demo(pipes, messages, calibrate=False)
        radios = [b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "Model"]
        generate = next(r for r in radios if any("(class-conditional, pixel space)" in str(c[0]) for c in r.choices))
        assert ("fashion-pixel-cond (class-conditional, pixel space)", "fashion-pixel-cond") in generate.choices
        assert all("fashion-pixel-cond" in [c[1] for c in r.choices] for r in radios)     # every tab's picker
        assert demo.lab.pipeline("fashion-pixel-cond").name == "fashion-pixel-cond"
        with pytest.raises(gr.Error, match=r"model \(.*\) must be one of pixel-uncond, pixel-cond, latent-cond, "
                                           r"fashion-pixel-cond; got 'nope'"):
            demo.lab.pipeline("nope")
    demo.close()


def test_cards_describe_the_extra_model_and_refuse_an_unknown_one(fashion_weights):
    from train.cards import card_data, render_card, root_card

    with registered(FASHION):
        text = str(render_card("fashion-pixel-cond", fashion_weights, {}))
        assert "A class-conditional score model of Fashion-MNIST clothes" in text
        assert "class-conditional-image-generation" in card_data("fashion-pixel-cond", {}).tags
        root = str(root_card(fashion_weights, {}))
        assert "class-conditional score model of Fashion-MNIST, 28x28 pixels" in root
    with pytest.raises(ValueError, match="unknown model 'fashion-pixel-cond'"):
        render_card("fashion-pixel-cond", fashion_weights, {})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        card_data("nope", {})


def test_evaluation_reads_its_order_and_evaluators_from_the_registry():
    import train.evaluate
    with registered(FASHION):
        assert train.evaluate.ORDER[-1] == "fashion-pixel-cond"
    assert tuple(train.evaluate.ORDER)[:3] == ("classifier", "classifier-resnet", "autoencoder")
    assert tuple(train.evaluate.EVALUATORS) == ("classifier", "classifier-resnet")


def test_tiny_factory_builds_from_the_spec():
    with registered(dataclasses.replace(FASHION, name="fashion-latent-cond", space="latent", autoencoder="autoencoder")):
        model = tiny_model("fashion-latent-cond")
        assert (model.in_channels, model.sample_shape, model.num_classes) == (4, (4, 10, 10), 10)
    with pytest.raises(ValueError, match=UNKNOWN):
        tiny_model("nope")
    assert torch.equal(tiny_model("pixel-cond").net.conv_in.weight, tiny_model("pixel-cond").net.conv_in.weight)


def test_live_prefers_its_students_in_the_order_of_their_measured_quality():
    """registry.LIVE_PREFERENCE lists every student, best first by the worst FD ratio over all four feature spaces at
    its default, as weights/metrics.json (the cards' evaluation) measured it: re-evaluating a student re-checks it."""
    import json

    from diffusion.hub import DEFAULT_WEIGHTS_DIR
    from diffusion.setting_rules import worst_fd_ratio_v3

    metrics = json.loads((DEFAULT_WEIGHTS_DIR / "metrics.json").read_text())
    assert sorted(registry.LIVE_PREFERENCE) == sorted(registry.DISTILLED_NAMES)
    measured = sorted(registry.DISTILLED_NAMES, key=lambda n: worst_fd_ratio_v3(metrics[n]))
    assert list(registry.LIVE_PREFERENCE) == measured, {n: round(worst_fd_ratio_v3(metrics[n]), 2) for n in measured}
