"""`python -m diffusion.sample` and the per-model sampling defaults, on the tiny random weights (conftest.py)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from diffusion.hub import load_pipeline
from diffusion.pipeline import DEFAULT_SAMPLER, MODEL_DEFAULTS, defaults_for

sample_cli = importlib.import_module("diffusion.sample")   # the package also exports a function `sample`


def test_defaults_are_per_model_and_an_unknown_name_is_an_error():
    assert defaults_for("pixel-uncond").sampler == "dpmpp_2m_sde"       # its ODE samples are poor (samplers.md)
    assert defaults_for("pixel-cond").sampler == DEFAULT_SAMPLER == "dpmpp_2m_sde"     # specks: bench/results/defaults.md
    with pytest.raises(ValueError, match=r"unknown model 'some-new-model'; choose one of pixel-uncond, pixel-cond, "):
        defaults_for("some-new-model")                                  # never pixel-cond's by a silent fall-back
    with pytest.raises(ValueError, match="'classifier' is a classifier model and is not sampled on its own"):
        defaults_for("classifier")
    assert all(d.steps <= 20 for d in MODEL_DEFAULTS.values())           # the target: <= 20 NFE


def test_pipeline_without_settings_uses_its_models_defaults(tiny_weights):
    pipe = load_pipeline("pixel-uncond", weights_dir=tiny_weights)
    images, last = pipe.generate(num_images=2, seed=3)
    sde, _ = pipe.generate(num_images=2, seed=3, sampler="dpmpp_2m_sde", num_steps=10)
    ode, _ = pipe.generate(num_images=2, seed=3, sampler="dpmpp_2m", num_steps=10)
    assert last.nfe == last.num_steps == 10
    assert torch.equal(images, sde) and not torch.equal(images, ode)
    # an adaptive sampler takes no step count: none is reported
    _, last = pipe.generate(num_images=1, seed=0, sampler="rk45", rtol=1e-2, atol=1e-2)
    assert last.num_steps == 0 and last.nfe > 0


def test_cli_writes_images_and_labels_with_the_models_defaults(tiny_weights, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert sample_cli.main(["--model", "pixel-uncond", "--n", "3", "--out", str(out), "--weights-dir",
                            str(tiny_weights), "--device", "cpu"]) == 0
    data = np.load(out)
    assert data["images"].shape == (3, 28, 28) and data["images"].dtype == np.float32
    assert (data["labels"] == -1).all() and 0 <= data["images"].min() <= data["images"].max() <= 1
    assert "dpmpp_2m_sde, 10 steps" in capsys.readouterr().out

    assert sample_cli.main(["--model", "pixel-cond", "--digits", "3,7", "--per-digit", "2", "--steps", "2",
                            "--out", str(out), "--weights-dir", str(tiny_weights), "--device", "cpu"]) == 0
    assert list(np.load(out)["labels"]) == [3, 3, 7, 7]
    assert "dpmpp_2m_sde, 2 steps" in capsys.readouterr().out


def test_a_models_default_guidance_schedule_applies_unless_another_is_given(tiny_weights, tmp_path, capsys):
    """A schedule in a model's defaults (registry) is part of its guidance recipe: the pipeline applies it at any w
    when none is given; GuidanceSchedule() (or --guidance-interval 0 inf) asks for w everywhere."""
    import dataclasses

    from diffusion.guidance import GuidanceSchedule
    from diffusion.registry import model_spec, registered

    pipe = load_pipeline("pixel-cond", weights_dir=tiny_weights)
    low = GuidanceSchedule(sigma_hi=1.0)
    given, _ = pipe.generate([3, 5], guidance=3.0, seed=1, guidance_schedule=low)
    everywhere, _ = pipe.generate([3, 5], guidance=3.0, seed=1)
    spec = model_spec("pixel-cond")
    with registered(dataclasses.replace(spec, defaults=dataclasses.replace(spec.defaults, schedule=low))):
        assert torch.equal(pipe.generate([3, 5], guidance=3.0, seed=1)[0], given)
        assert torch.equal(pipe.generate([3, 5], guidance=3.0, seed=1, guidance_schedule=GuidanceSchedule())[0],
                           everywhere)
        assert defaults_for("pixel-cond").describe().endswith("w = 1 at sigma <= 1")
        out = tmp_path / "s.npz"
        args = ["--model", "pixel-cond", "--digits", "3,5", "--per-digit", "1", "--guidance", "3", "--out", str(out),
                "--weights-dir", str(tiny_weights), "--device", "cpu", "--precision", "fp32"]
        assert sample_cli.main(args) == 0
        assert "guidance 3.0 at sigma <= 1" in capsys.readouterr().out
        assert "--guidance-interval 0 1" in sample_cli.build_parser().epilog
        assert sample_cli.main(args + ["--guidance-interval", "0", "inf"]) == 0
        assert "guidance 3.0," in capsys.readouterr().out
    assert not torch.equal(given, everywhere)


@pytest.mark.parametrize("argv,match", [(["--guidance", "nan"], "guidance"), (["--n", "4"], "--n is for"),
                                        (["--steps", "0"], "must be >= 1"),
                                        (["--guidance-interval", "2", "1"], "--guidance-interval: a guidance schedule")])
def test_cli_rejects_bad_arguments(tiny_weights, tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit):
        sample_cli.main(["--model", "pixel-cond", "--out", str(tmp_path / "x.npz"), "--weights-dir", str(tiny_weights),
                         *argv])
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------- precision


def test_bf16_hardware_is_read_from_the_cpu_flags(tmp_path):
    from diffusion.pipeline import cpu_has_bf16

    with_amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    with_amx.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    avx2.write_text("processor\t: 0\nmodel name\t: EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_has_bf16(str(with_amx)) and not cpu_has_bf16(str(avx2))
    assert not cpu_has_bf16(str(tmp_path / "missing"))


def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_hardware(monkeypatch):
    import diffusion.pipeline as dp

    monkeypatch.setattr(dp, "cpu_has_bf16", lambda: True)
    assert dp.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert dp.resolve_precision("auto", torch.device("cuda")) == "fp32"     # not measured on GPUs: left fp32
    assert dp.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(dp, "cpu_has_bf16", lambda: False)
    assert dp.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert dp.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        dp.resolve_precision("fp16", torch.device("cpu"))


def test_bf16_runs_only_the_network_under_autocast(tiny_weights):
    pipe = load_pipeline("pixel-cond", weights_dir=tiny_weights)
    seen = []
    hook = pipe.score_model.net.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"),
                                                                               o.dtype)))
    try:
        pipe.precision = "bf16"
        images, _ = pipe.generate([1, 2], num_steps=3, seed=0)
        assert seen and all(on for on, _ in seen) and images.dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")                 # nothing leaks out of the wrapper
        seen.clear()
        pipe.precision = "fp32"
        reference, _ = pipe.generate([1, 2], num_steps=3, seed=0)
        assert seen and not any(on for on, _ in seen) and all(dt == torch.float32 for _, dt in seen)
        assert (images - reference).abs().mean() < 0.05              # same picture up to bf16 rounding
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="precision"):
        type(pipe)(pipe.score_model, precision="fp16")


def test_a_models_default_sampler_options_apply_to_its_default_sampler_only(tiny_weights):
    """SamplingDefaults.options (e.g. a student's eta) go with the model's own sampler, named or not; another sampler
    never gets them; a value given wins."""
    import dataclasses

    from diffusion.registry import model_spec, registered

    pipe = load_pipeline("pixel-cond", weights_dir=tiny_weights)
    half, _ = pipe.generate([3, 5], sampler="dpmpp_2m_sde", num_steps=3, seed=1, eta=0.5)
    full, _ = pipe.generate([3, 5], sampler="dpmpp_2m_sde", num_steps=3, seed=1)
    spec = model_spec("pixel-cond")
    with registered(dataclasses.replace(spec, defaults=dataclasses.replace(spec.defaults, options=(("eta", 0.5),)))):
        assert defaults_for("pixel-cond").describe() == "dpmpp_2m_sde, 10 steps, w = 1, eta = 0.5"
        assert torch.equal(pipe.generate([3, 5], num_steps=3, seed=1)[0], half)
        assert torch.equal(pipe.generate([3, 5], sampler="dpmpp_2m_sde", num_steps=3, seed=1)[0], half)
        assert torch.equal(pipe.generate([3, 5], num_steps=3, seed=1, eta=1.0)[0], full)
        pipe.generate([3, 5], sampler="heun", num_steps=2, seed=1)          # heun takes no eta: none was passed
    assert not torch.equal(half, full)
