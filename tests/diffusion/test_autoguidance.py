"""Autoguidance (diffusion.autoguidance): D_w = D_bad + w (D_good - D_bad) for an unconditional model."""
import pytest
import torch

from diffusion.autoguidance import AutoGuided
from diffusion.pipeline import Pipeline
from diffusion.samplers import karras_sigmas
from diffusion.score import ScoreModel, networks
from factories import tiny_score


@pytest.fixture
def pair():
    good = tiny_score(0, precond="edm")
    bad = tiny_score(1, precond="edm")
    return good, bad, AutoGuided(good, bad)


def _x(n=3):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2.0


@torch.no_grad()
def test_w_one_is_the_good_model_and_w_zero_the_bad_one(pair):
    good, bad, guided = pair
    x, sigma = _x(), torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
    assert torch.equal(guided.denoise(x, sigma, guidance=1.0), good.denoise(x, sigma))
    torch.testing.assert_close(guided.denoise(x, sigma, guidance=0.0), bad.denoise(x, sigma))


@torch.no_grad()
def test_guided_denoiser_and_score_extrapolate_from_the_bad_model(pair):
    good, bad, guided = pair
    x, t = _x(), torch.tensor([0.1, 0.4, 0.9])
    sigma = good.sde.marginal_std(t.double())
    dg, db = good.denoise(x, sigma), bad.denoise(x, sigma)
    torch.testing.assert_close(guided.denoise(x, sigma, guidance=2.5), db + 2.5 * (dg - db))
    s = guided(x, t, guidance=2.5)
    sg, sb = good(x, t), bad(x, t)
    torch.testing.assert_close(s, sb + 2.5 * (sg - sb))
    # the score and the denoiser agree through Tweedie's formula, D = x + sigma^2 s, for the guided pair too
    s2 = sigma.float().view(-1, 1, 1, 1) ** 2
    torch.testing.assert_close(x + s2 * s, guided.denoise(x, sigma, guidance=2.5), rtol=1e-4, atol=1e-4)
    # a (B,) guidance applies per sample
    w = torch.tensor([1.0, 2.5, 0.0])
    per = guided.denoise(x, sigma, guidance=w)
    torch.testing.assert_close(per[1], (db + 2.5 * (dg - db))[1])
    torch.testing.assert_close(per[2], db[2])


def test_refuses_what_it_cannot_guide():
    good = tiny_score(0)
    with pytest.raises(ValueError, match="unconditional"):
        AutoGuided(tiny_score(0, num_classes=10), good)
    with pytest.raises(ValueError, match="works on"):
        AutoGuided(good, tiny_score(1, in_channels=4, image_size=10))
    with pytest.raises(ValueError, match="SDE"):
        AutoGuided(good, tiny_score(1, sigma=10.0))
    with pytest.raises(ValueError, match="labels must be None"):
        AutoGuided(good, tiny_score(1)).denoise(_x(), 1.0, labels=torch.tensor([1, 2, 3]))


def test_the_pipeline_passes_autoguidance_on_and_ignores_it_for_a_plain_unconditional_model(pair):
    good, bad, guided = pair
    pipe, plain = Pipeline(guided, precision="fp32"), Pipeline(good, precision="fp32")
    assert pipe.guided and not pipe.conditional and not plain.guided
    kw = dict(num_images=2, sampler="dpmpp_2m", num_steps=3, seed=4)
    one, _ = pipe.generate(None, guidance=1.0, **kw)
    assert torch.equal(one, plain.generate(None, guidance=1.0, **kw)[0])
    assert torch.equal(plain.generate(None, guidance=3.0, **kw)[0], one)       # ignored without a guide
    three, last = pipe.generate(None, guidance=3.0, **kw)
    assert not torch.allclose(three, one) and last.nfe == 3


def _save(root, name, model):
    model.save_pretrained(root / name)
    return root


def test_load_pipeline_pairs_a_model_with_the_guide_its_config_names(tmp_path):
    from diffusion.hub import load_pipeline
    _save(tmp_path, "pixel-uncond", tiny_score(0, precond="edm", autoguide="pixel-uncond-guide"))
    _save(tmp_path, "pixel-uncond-guide", tiny_score(1, precond="edm"))
    messages = []
    pipe = load_pipeline("pixel-uncond", weights_dir=tmp_path, messages=messages)
    assert isinstance(pipe.score_model, AutoGuided) and pipe.guided
    assert [m.split(":")[0] for m in messages] == ["pixel-uncond", "pixel-uncond-guide"]
    x = _x(2)
    with torch.no_grad():
        want = tiny_score(1, precond="edm").denoise(x, 2.0)
        torch.testing.assert_close(pipe.score_model.denoise(x, 2.0, guidance=0.0), want)


def test_a_missing_or_unknown_guide_leaves_the_model_unguided_and_says_why(tmp_path):
    from diffusion.hub import load_pipeline
    _save(tmp_path, "pixel-uncond", tiny_score(0, precond="edm", autoguide="pixel-uncond-guide"))
    messages = []
    pipe = load_pipeline("pixel-uncond", weights_dir=tmp_path, messages=messages)
    assert not pipe.guided and not isinstance(pipe.score_model, AutoGuided)
    assert "pixel-uncond-guide: unavailable, pixel-uncond samples without autoguidance (WeightsNotFound" in messages[-1]
    _save(tmp_path, "pixel-uncond", tiny_score(0, precond="edm", autoguide="pixel-cond"))
    messages = []
    assert not load_pipeline("pixel-uncond", weights_dir=tmp_path, messages=messages).guided
    assert "'pixel-cond' is not a guide model" in messages[-1]
    _save(tmp_path, "pixel-uncond", tiny_score(0, precond="edm"))   # no autoguide in the config: no attempt at all
    messages = []
    assert not load_pipeline("pixel-uncond", weights_dir=tmp_path, messages=messages).guided and len(messages) == 1


def test_export_guide_writes_the_checkpoints_ema_weights_and_names_them_in_the_models_config(tmp_path):
    import dataclasses
    import json

    from safetensors.torch import save_file

    from diffusion.hub import load_pipeline
    from train.diffusion_models import ScoreConfig, build_model
    from train.export_guide import export_guide

    cfg = ScoreConfig(conditional=False, channels="8,16", attention_levels="1", embed_dim=16, context_dim=8)
    run = tmp_path / "run"
    (run / "ckpt-00000500").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    torch.manual_seed(3)
    early, good = build_model(cfg, 1, 28), build_model(cfg, 1, 28)
    save_file({f"ema.{k}": v.contiguous() for k, v in early.state_dict().items()} |
              {f"model.{k}": torch.zeros(1) for k in ("x",)}, str(run / "ckpt-00000500" / "state.safetensors"))
    (run / "ckpt-00000500" / "state.json").write_text(json.dumps({"step": 500, "wall_s": 61.5}))
    weights = tmp_path / "weights"
    good.save_pretrained(weights / "pixel-uncond")
    record = export_guide(run, run / "ckpt-00000500", weights / "pixel-uncond", weights / "pixel-uncond-guide")
    assert record["checkpoint_step"] == 500 and record["total_wall_s"] == 61.5 and record["guides"] == "pixel-uncond"
    assert json.loads((weights / "pixel-uncond" / "config.json").read_text())["autoguide"] == "pixel-uncond-guide"
    pipe = load_pipeline("pixel-uncond", weights_dir=weights)
    assert pipe.guided
    for name, p in early.state_dict().items():
        assert torch.equal(pipe.score_model.bad.state_dict()[name], p)
    kept = ScoreModel.from_pretrained(str(run / "guide"))                  # the run remembers its guide
    assert json.loads((run / "guide" / "step.json").read_text())["step"] == 500
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in early.state_dict().items())
    with pytest.raises(SystemExit, match="named one of"):
        export_guide(run, run / "ckpt-00000500", weights / "pixel-uncond", weights / "elsewhere")
    with pytest.raises(SystemExit, match="--ckpt: not a checkpoint folder"):
        export_guide(run, run / "ckpt-00000999", weights / "pixel-uncond", weights / "pixel-uncond-guide")
    with pytest.raises(SystemExit, match="--model: not a weights folder"):
        export_guide(run, run / "ckpt-00000500", weights / "nope", weights / "pixel-uncond-guide")


def test_a_training_run_with_guide_step_ships_the_guide_beside_the_model(tmp_path, monkeypatch):
    import json

    import train.common
    from diffusion.hub import load_pipeline
    from train import diffusion_models

    g = torch.Generator().manual_seed(0)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (torch.rand(32, 1, 8, 8, generator=g),
                                                                     torch.randint(0, 10, (32,), generator=g)))
    weights, run = tmp_path / "weights" / "pixel-uncond", tmp_path / "run"
    args = ["--out", str(run), "--weights-dir", str(weights), "--no-conditional", "--steps", "4", "--batch-size", "8",
            "--channels", "8,16", "--attention-levels", "1", "--embed-dim", "16", "--context-dim", "8",
            "--ckpt-every", "2", "--sample-every", "2", "--warmup", "1", "--threads", "1"]
    with pytest.raises(SystemExit, match="multiple of --sample-every"):
        diffusion_models.main([*args, "--guide-step", "3"])
    diffusion_models.main([*args, "--guide-step", "2"])
    assert json.loads((weights / "config.json").read_text())["autoguide"] == "pixel-uncond-guide"
    pipe = load_pipeline("pixel-uncond", weights_dir=weights.parent)
    assert pipe.guided
    at_2 = diffusion_models.ema_from_checkpoint(run, run / "ckpt-00000002").state_dict()
    assert all(torch.equal(v, at_2[k]) for k, v in pipe.score_model.bad.state_dict().items())
    at_4 = diffusion_models.ema_from_checkpoint(run, run / "ckpt-00000004").state_dict()
    assert all(torch.equal(v, at_4[k]) for k, v in pipe.score_model.good.state_dict().items())
    raw_4 = diffusion_models.ema_from_checkpoint(run, run / "ckpt-00000004", which="model").state_dict()
    assert raw_4.keys() == at_4.keys() and not all(torch.equal(raw_4[k], at_4[k]) for k in at_4)  # raw != EMA
    with pytest.raises(ValueError, match="which must be 'ema' or 'model'"):
        diffusion_models.ema_from_checkpoint(run, run / "ckpt-00000004", which="opt")



def test_an_extended_run_reinstalls_its_guide_or_says_why_it_cannot(tmp_path, monkeypatch, capsys):
    """Resuming a run with more --steps (past its guide step): the guide the run keeps (RUN/guide, also written by
    train.export_guide) is installed again; a run without one says so and how to fix it, never silently unguided."""
    import json
    import shutil

    import train.common
    from train import diffusion_models

    g = torch.Generator().manual_seed(0)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (torch.rand(32, 1, 8, 8, generator=g),
                                                                     torch.randint(0, 10, (32,), generator=g)))
    weights, run = tmp_path / "weights" / "pixel-uncond", tmp_path / "run"
    args = ["--out", str(run), "--weights-dir", str(weights), "--no-conditional", "--batch-size", "8",
            "--channels", "8,16", "--attention-levels", "1", "--embed-dim", "16", "--context-dim", "8",
            "--ckpt-every", "2", "--sample-every", "2", "--warmup", "1", "--threads", "1", "--guide-step", "2"]
    diffusion_models.main([*args, "--steps", "4"])
    diffusion_models.main([*args, "--steps", "6", "--resume"])              # extended: the kept guide goes back
    assert json.loads((weights / "config.json").read_text())["autoguide"] == "pixel-uncond-guide"
    shutil.rmtree(run / "guide")
    capsys.readouterr()
    diffusion_models.main([*args, "--steps", "8", "--resume"])
    assert json.loads((weights / "config.json").read_text())["autoguide"] is None
    out = capsys.readouterr().out
    assert "holds no guide" in out and "python -m train.export_guide --run" in out


def test_the_generate_tab_runs_the_autoguided_model_and_says_what_it_did(app_demo, one_thread):
    tab = app_demo.tabs["GenerateTab"]
    pipe = app_demo.lab.pipelines["pixel-uncond"]
    assert pipe.guided
    calls = []
    hooks = [net.register_forward_hook(lambda *a: calls.append(1)) for net in networks(pipe.score_model)]
    try:
        *_, (_, _, status, final, _, _) = list(tab.generate("pixel-uncond", 3, "dpmpp_2m", 3, 2.0, 0, 2))
    finally:
        for h in hooks:
            h.remove()
    # 3 steps, the model alone where its default schedule leaves w out, the model and its guide where w applies
    schedule = pipe.defaults.schedule
    sigmas = karras_sigmas(pipe.score_model.sde.std_min, pipe.score_model.sde.std_max, 3)[:-1].tolist()
    guided = sum(schedule.fraction(s) > 0 for s in sigmas)
    assert final is not None and len(calls) == 3 + guided and 0 < guided < 3
    assert f"autoguidance 2 ({schedule.describe(short=True)})" in status
    assert "two network calls on 2 images (the model and its guide) where w applies" in status
    est_guided = app_demo.lab.estimate_seconds("pixel-uncond", "dpmpp_2m", 3, 2, 2.0)
    assert est_guided == pytest.approx(2 * app_demo.lab.estimate_seconds("pixel-uncond", "dpmpp_2m", 3, 2, 1.0))
