"""Guided progressive distillation (diffusion/distill.py, train/distill.py): the DDIM step and the progressive target
against an exact Gaussian denoiser, the student's start from its teacher, one network call per step, the Step/NFE
contract, clear errors off the distilled step count and guidance range, the config round trip with strict loading,
and the training script end to end with resume, on tiny models."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train.common
from diffusion.distill import (ddim, ddim_step, distilled_config, make_student, progressive_target, sampling_sigmas,
                               student_sigmas, teacher_sigmas, two_step_target, weighted_error)
from diffusion.pipeline import MODEL_DEFAULTS, Pipeline
from diffusion.samplers import SAMPLERS, get_sampler, karras_sigmas, sample, sampler_spec
from diffusion.score import ScoreModel
from diffusion.sde import VESDE

MU, S = 0.4, 0.3
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class GaussianDenoiser:
    """The exact denoiser of x0 ~ N(mu, s^2 I): D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self):
        self.sde = VESDE(25.0)

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        v = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1).to(x.dtype) ** 2
        return (S**2 * x + v * MU) / (S**2 + v)


def tiny_teacher(seed=0) -> ScoreModel:
    torch.manual_seed(seed)
    return ScoreModel(image_size=8, channels=(8, 16), attention_levels=(1,), num_classes=10, embed_dim=16,
                      context_dim=8, heads=2, precond="edm").eval()


def tiny_student(steps=4, grid_steps=16, seed=0) -> ScoreModel:
    return make_student(tiny_teacher(seed), distilled_config(steps, grid_steps, (0.0, 4.0))).eval()


def count_calls(model):
    """Batch sizes of every network call of a ScoreModel."""
    calls = []
    model.net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


# ---------------------------------------------------------------- math


def test_progressive_target_round_trip_on_exact_gaussian_denoiser():
    """Two DDIM steps of the exact denoiser land on x''; one DDIM step with the target x0~ lands on the same point,
    on every consecutive pair of a 16-step grid (the last pair ends at sigma'' = 0, where x0~ = x'')."""
    teacher, sde = GaussianDenoiser(), VESDE(25.0)
    grid = teacher_sigmas(sde, 16)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in range(0, 16, 2):
        s, mid, nxt = (float(grid[i + j]) for j in range(3))
        xt = MU + S * x + s * torch.randn_like(x)           # a point at noise level s
        x1 = ddim_step(xt, teacher.denoise(xt, s), s, mid)
        x2 = ddim_step(x1, teacher.denoise(x1, mid), mid, nxt)
        target = progressive_target(xt, x2, s, nxt)
        assert torch.allclose(ddim_step(xt, target, s, nxt), x2, atol=1e-10, rtol=0)
        # the same through the batched training path (per-sample float64 sigmas)
        batch = torch.full((8,), s, dtype=torch.float64)
        got = two_step_target(teacher, xt, batch, torch.full_like(batch, mid), torch.full_like(batch, nxt), None, 1.0)
        assert torch.allclose(got, target, atol=1e-12, rtol=0)
        if nxt == 0:
            assert torch.equal(target, x2)


def test_progressive_target_on_gaussian_is_the_one_step_flow_map():
    """For Gaussian data the DDIM map is affine, x' - mu = (x - mu) (s^2 + sigma sigma') / (s^2 + sigma^2), so x0~ is
    known in closed form: the x0 with  x0 + r (x - x0) = mu + (x - mu) a1 a2,  r = sigma''/sigma."""
    teacher = GaussianDenoiser()
    s, mid, nxt = 2.0, 0.9, 0.3
    x = torch.linspace(-3, 3, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    def a(p, q):  # slope of the DDIM map from sigma = p to q
        return (S**2 + p * q) / (S**2 + p**2)

    x2 = MU + (x - MU) * a(s, mid) * a(mid, nxt)
    r = nxt / s
    expected = (x2 - r * x) / (1 - r)
    x1 = ddim_step(x, teacher.denoise(x, s), s, mid)
    got = progressive_target(x, ddim_step(x1, teacher.denoise(x1, mid), mid, nxt), s, nxt)
    assert torch.allclose(got, expected, atol=1e-12)


def test_student_grids_nest_in_the_teacher_grid():
    sde = VESDE(25.0)
    t16 = teacher_sigmas(sde, 16)
    assert torch.equal(t16, karras_sigmas(sde.std_min, sde.std_max, 16))
    for n in (8, 4, 2, 1):
        g = student_sigmas(sde, 16, n)
        assert len(g) == n + 1 and g[-1] == 0 and float(g[0]) == pytest.approx(sde.std_max)
        assert torch.equal(g, t16[:: 16 // n])
    assert torch.equal(student_sigmas(sde, 16, 1), torch.tensor([t16[0], 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit"):
        student_sigmas(sde, 16, 3)


# ---------------------------------------------------------------- the student network


def test_student_from_teacher_is_the_conditional_denoiser_at_every_w():
    teacher = tiny_teacher()
    student = make_student(teacher, distilled_config(4, 16, (0.0, 4.0))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 8, 8, generator=g) * 2
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 9.0], dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 7, 9])
    with torch.no_grad():
        cond = teacher.denoise(x, sigma, labels, guidance=1.0)
        for w in (0.0, 1.0, 2.5, torch.tensor([0.0, 0.5, 1.0, 3.0, 4.0])):
            assert torch.equal(student.denoise(x, sigma, labels, guidance=w), cond)
        # ... and the score interface the samplers use
        t = teacher.sde.t_from_std(sigma)
        assert torch.equal(student(x, t, labels, guidance=3.0), teacher(x, t, labels))
    assert all(not k.startswith("net.guidance_embed") for k in teacher.state_dict())
    extra = [k for k in student.state_dict() if k not in teacher.state_dict()]
    assert extra and all(k.startswith("net.guidance_embed.") for k in extra)


def test_w_reaches_the_student_once_trained():
    student = tiny_student()
    torch.nn.init.normal_(student.net.guidance_embed[-1].weight)        # as after training: w now matters
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        a = student.denoise(x, 1.0, labels, guidance=0.5)
        b = student.denoise(x, 1.0, labels, guidance=3.0)
        per_sample = student.denoise(x, 1.0, labels, guidance=torch.tensor([0.5, 3.0, 0.5]))
    assert not torch.allclose(a, b)
    assert torch.allclose(per_sample[0], a[0], atol=1e-6) and torch.allclose(per_sample[1], b[1], atol=1e-6)


def test_teacher_takes_per_sample_guidance():
    teacher = tiny_teacher()
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([4, 5, 6])
    w = torch.tensor([0.0, 1.0, 2.5])
    with torch.no_grad():
        batched = teacher.denoise(x, 0.7, labels, guidance=w)
        one_by_one = torch.cat([teacher.denoise(x[i:i + 1], 0.7, labels[i:i + 1], guidance=float(w[i]))
                                for i in range(3)])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_one_network_call_per_step_on_the_batch_itself():
    student, teacher = tiny_student(steps=4), tiny_teacher()
    s_calls, t_calls = count_calls(student), count_calls(teacher)
    x = student.sde.prior_sample((6, 1, 8, 8), torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    records = list(ddim(student, x, labels, num_steps=4, guidance=2.0))
    assert s_calls == [6, 6, 6, 4 + 2]                     # one call on B per step, no null-class half
    assert [r.nfe for r in records] == [1, 2, 3, 4] == list(range(1, sampler_spec("ddim").nfe_for(4) + 1))
    list(ddim(teacher, x, labels, num_steps=4, guidance=2.0))
    assert t_calls == [12] * 4                              # the teacher: cond + uncond halves


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_step_records_follow_the_sampler_contract(steps):
    student = tiny_student(steps=steps)
    x = student.sde.prior_sample((4, 1, 8, 8), torch.Generator().manual_seed(0))
    records = list(get_sampler("ddim")(student, x.clone(), torch.tensor([0, 1, 2, 3]), num_steps=steps, guidance=1.5))
    assert [r.i for r in records] == list(range(steps)) and [r.nfe for r in records] == list(range(1, steps + 1))
    assert [r.final for r in records] == [False] * (steps - 1) + [True]
    ts = [r.t for r in records]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0.0 and all(0 <= t < 1 for t in ts)
    assert torch.equal(records[-1].x, records[-1].x0)       # the last step lands on D: no noise at the end
    # the steps are DDIM on the student's own grid: replay them with denoise()
    grid = student_sigmas(student.sde, 16, steps).tolist()
    xr = x.clone()
    with torch.no_grad():
        for i, r in enumerate(records):
            d = student.denoise(xr, grid[i], torch.tensor([0, 1, 2, 3]), guidance=1.5)
            xr = ddim_step(xr, d, grid[i], grid[i + 1])
            assert torch.allclose(r.x, xr, atol=1e-4)
    assert "ddim" in SAMPLERS and sampler_spec("ddim").steps_for(steps) == steps


def test_untrained_step_count_and_guidance_range_fail_clearly():
    student = tiny_student(steps=4)
    x = torch.zeros(2, 1, 8, 8)
    for bad in (1, 2, 8, 16):
        with pytest.raises(ValueError, match=r"distilled for 4 step\(s\) only.*num_steps=4"):
            sample("ddim", student, x, torch.tensor([1, 2]), num_steps=bad)
    for w in (-0.5, 4.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 4\]"):
            sample("ddim", student, x, torch.tensor([1, 2]), num_steps=4, guidance=w)
    pipe = Pipeline(student, name="pixel-cond-distilled", precision="fp32")
    with pytest.raises(ValueError, match="distilled for 4"):
        pipe.generate([1, 2], num_steps=2)
    images, last = pipe.generate([1, 2])                         # the defaults: euler_ancestral, 4 steps
    assert MODEL_DEFAULTS["pixel-cond-distilled"].sampler == "euler_ancestral" and last.nfe == 4 and images.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        distilled_config(3, 16, (0, 4))


def test_stage1_student_and_plain_models_run_ddim_at_any_step_count():
    """A guidance-distilled (stage 1) student is a full denoiser: any sampler, any step count, one call per step."""
    stage1 = make_student(tiny_teacher(), distilled_config(None, 16, (0.0, 4.0))).eval()
    calls = count_calls(stage1)
    x = stage1.sde.prior_sample((3, 1, 8, 8), torch.Generator().manual_seed(0))
    for name, steps in (("ddim", 7), ("dpmpp_2m", 5)):
        calls.clear()
        _, nfe = sample(name, stage1, x.clone(), torch.tensor([1, 2, 3]), num_steps=steps, guidance=3.0)
        assert nfe == steps and calls == [3] * steps
    assert torch.equal(sampling_sigmas(stage1, 7), karras_sigmas(stage1.sde.std_min, stage1.sde.std_max, 7))


def test_config_round_trip_with_strict_loading(tmp_path):
    student = tiny_student(steps=2)
    torch.nn.init.normal_(student.net.guidance_embed[-1].weight)
    student.save_pretrained(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["guidance_embed"] is True
    assert config["distilled"] == {"steps": 2, "grid_steps": 16, "rho": 7.0, "guidance_range": [0.0, 4.0]}
    loaded = ScoreModel.from_pretrained(tmp_path / "s")
    assert loaded.guidance_embed and loaded.distilled == student.distilled
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), loaded.state_dict().values()))
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 8])
    with torch.no_grad():
        assert torch.equal(loaded.denoise(x, 0.5, labels, guidance=2.0), student.denoise(x, 0.5, labels, guidance=2.0))
    # a model saved before these flags existed (no guidance_embed / distilled in config.json) loads unchanged
    teacher = tiny_teacher()
    teacher.save_pretrained(tmp_path / "t")
    cfg_path = tmp_path / "t" / "config.json"
    old = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k not in ("guidance_embed", "distilled")}
    cfg_path.write_text(json.dumps(old))
    assert not ScoreModel.from_pretrained(tmp_path / "t").guidance_embed


@pytest.mark.skipif(not (REPO / "weights" / "pixel-cond" / "model.safetensors").is_file(), reason="no shipped weights")
def test_shipped_teacher_still_loads_strictly():
    model = ScoreModel.from_pretrained(REPO / "weights" / "pixel-cond").eval()
    assert not model.guidance_embed and model.distilled is None
    student = make_student(model, distilled_config(4, 16, (0.0, 4.0))).eval()       # and a student starts as it
    x, labels = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(student.denoise(x, 1.5, labels, guidance=2.0), model.denoise(x, 1.5, labels))


# ---------------------------------------------------------------- the training script


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _args(tmp, out, *extra):
    return ["--teacher", str(tmp / "teacher"), "--out", str(tmp / out), "--weights-dir", str(tmp / out / "w" / "pcd"),
            "--stage1-steps", "4", "--steps", "3", "--grid-steps", "8", "--batch-size", "16", "--threads", "1",
            "--ckpt-every", "2", "--log-every", "1", "--warmup", "1", *extra]


@pytest.fixture(scope="module")
def script_run(tmp_path_factory):
    """The whole pipeline on a tiny teacher: stage 1 (4 steps), rounds 8->4->2->1 (3 steps each)."""
    from train import distill
    tmp = tmp_path_factory.mktemp("distill")
    tiny_teacher().save_pretrained(tmp / "teacher")
    mp = pytest.MonkeyPatch()
    mp.setattr(train.common, "load_mnist", lambda *a, **k: _data())
    try:
        final, records = distill.main(_args(tmp, "ref"))
    finally:
        mp.undo()
    return tmp, final, records


def test_script_end_to_end(script_run):
    tmp, final, records = script_run
    run = tmp / "ref"
    names = ["guidance", "round-8-to-4", "round-4-to-2", "round-2-to-1"]
    assert [r["stage"] for r in records] == names
    for r in records:
        assert r["wall_s"] >= 0 and math.isfinite(r["final_loss"]) and math.isfinite(r["first_loss"])
        assert json.loads((run / r["stage"] / "stage.json").read_text()) == r
        assert (run / r["stage"] / "samples.png").is_file()
    record = json.loads((run / "record.json").read_text())
    # each student's record: the stages that made it (later rounds only used it as a teacher), its own final loss
    assert record["command"].startswith("python -m ") and [s["stage"] for s in record["stages"]] == names[:2]
    assert record["config"]["teacher"].endswith("teacher") and record["ship_steps"] == 4
    assert record["final_loss"] == records[1]["final_loss"]
    assert record["total_wall_s"] == round(records[0]["wall_s"] + records[1]["wall_s"], 1)
    for steps, made in ((2, names[:3]), (1, names)):
        export = json.loads((run / f"record-{steps}step.json").read_text())
        assert [s["stage"] for s in export["stages"]] == made and export["ship_steps"] == steps
        assert export["final_loss"] == records[len(made) - 1]["final_loss"] and export["command"] == record["command"]
    for folder, steps in (("pcd", 4), ("pcd-2step", 2), ("pcd-1step", 1)):
        student = ScoreModel.from_pretrained(run / "w" / folder)
        assert student.guidance_embed and student.distilled["steps"] == steps
        assert student.distilled["grid_steps"] == 8 and student.distilled["guidance_range"] == [0.0, 4.0]
        images, last = Pipeline(student, name="x", precision="fp32").generate([0, 1, 2], sampler="ddim",
                                                                              num_steps=steps, guidance=2.0)
        assert last.nfe == steps and images.shape == (3, 8, 8) and torch.isfinite(images).all()
    assert torch.equal(ScoreModel.from_pretrained(run / "w" / "pcd").net.conv_in.weight, final.net.conv_in.weight)


def test_start_from_a_shipped_student_trains_only_the_later_rounds(script_run, monkeypatch):
    """--start-from the 4-step student: no stage 1, no 8->4 round; the 4-step student ships unchanged, the 2- and
    1-step students are trained again (with their own --round-steps)."""
    from train import distill
    tmp, final, _ = script_run
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: _data())
    start = tmp / "ref" / "w" / "pcd"
    again, records = distill.main(_args(tmp, "again", "--start-from", str(start), "--round-steps", "2,5"))
    assert [r["stage"] for r in records] == [f"start-from {start}", "round-4-to-2", "round-2-to-1"]
    assert [r["steps"] for r in records] == [0, 2, 5]
    assert torch.equal(again.net.conv_in.weight, final.net.conv_in.weight)           # shipped as it was
    for folder in ("pcd-2step", "pcd-1step"):
        new = ScoreModel.from_pretrained(tmp / "again" / "w" / folder).net.conv_in.weight
        assert not torch.equal(new, ScoreModel.from_pretrained(tmp / "ref" / "w" / folder).net.conv_in.weight)
    assert not (tmp / "again" / "guidance").exists() and not (tmp / "again" / "round-8-to-4").exists()
    one = json.loads((tmp / "again" / "record-1step.json").read_text())
    assert [s["stage"] for s in one["stages"]] == [f"start-from {start}", "round-4-to-2", "round-2-to-1"]


def test_a_start_from_shipped_weights_carries_the_earlier_stages_with_their_command(tmp_path, monkeypatch):
    """--start-from weights/<name>: the stages of its record (train/records/<name>.json) up to that student, each
    with the earlier run's command, then the new rounds: the record tells the student's whole making."""
    from train import distill
    weights, records_dir = tmp_path / "weights", tmp_path / "records"
    records_dir.mkdir()
    monkeypatch.setattr(distill, "DEFAULT_WEIGHTS_DIR", weights)
    monkeypatch.setattr(distill, "RECORDS", records_dir)
    old = {"command": "python -m train.distill --old", "stages": [
        {"stage": "guidance", "student_steps": None, "steps": 9, "final_loss": 3.0, "wall_s": 10.0},
        {"stage": "round-8-to-4", "student_steps": 4, "steps": 7, "final_loss": 2.0, "wall_s": 5.0},
        {"stage": "round-4-to-2", "student_steps": 2, "steps": 7, "final_loss": 9.0, "wall_s": 5.0}]}
    (records_dir / "pcd.json").write_text(json.dumps(old))
    cfg = distill.DistillConfig(start_from=str(weights / "pcd"))
    got = distill.earlier_stages(cfg, 4)
    assert [s["stage"] for s in got] == ["guidance", "round-8-to-4"]
    assert {s["command"] for s in got} == {"python -m train.distill --old"}
    assert distill.earlier_stages(cfg, 1) == []                                  # the record never reached it
    assert distill.earlier_stages(distill.DistillConfig(start_from=str(tmp_path / "elsewhere" / "pcd")), 4) == []
    new = [*got[:1], {**got[1], "student_steps": None},
           {"stage": "start-from x", "student_steps": 4, "steps": 0, "final_loss": 2.0, "wall_s": 0.0},
           {"stage": "round-4-to-2", "student_steps": 2, "steps": 20, "final_loss": 1.5, "wall_s": 30.0}]
    two = distill.student_record(new, 2)
    assert two["total_wall_s"] == 45.0 and two["final_loss"] == 1.5 and len(two["stages"]) == 4
    assert distill.student_record(new, 4)["final_loss"] == 2.0
    with pytest.raises(ValueError, match="no stage made a 1-step student"):
        distill.student_record(new, 1)


def test_start_from_checks_the_student_and_the_plan(script_run, monkeypatch):
    from train import distill
    from train.distill import DistillConfig, round_plan
    tmp, _, _ = script_run
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: _data())
    with pytest.raises(SystemExit, match="not a weights folder"):
        distill.main(_args(tmp, "bad0", "--start-from", str(tmp / "nowhere")))
    with pytest.raises(SystemExit, match="not a progressive student"):
        distill.main(_args(tmp, "bad1", "--start-from", str(tmp / "teacher")))
    with pytest.raises(SystemExit, match="is not this run's"):
        distill.main(_args(tmp, "bad2", "--start-from", str(tmp / "ref" / "w" / "pcd"), "--w-max", "3"))
    with pytest.raises(ValueError, match="the start must be one of"):
        round_plan(DistillConfig(grid_steps=8), start_steps=1)
    with pytest.raises(ValueError, match="needs 2 positive counts"):
        round_plan(DistillConfig(grid_steps=8, round_steps="1,2,3"), start_steps=4)
    assert round_plan(DistillConfig(grid_steps=16, round_steps="7,9"), start_steps=4) == [(4, 2, 7), (2, 1, 9)]


def test_script_reruns_skip_finished_stages_and_resume_exactly(script_run, tmp_path, monkeypatch):
    from train import distill
    tmp, final, _ = script_run
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: _data())
    real_loss, calls = distill.ProgressiveTask.loss, []

    def dies_in_round_two(self, *a):          # killed at the 3rd step of round 4 -> 2, after its checkpoint at step 2
        calls.append(self.student_steps)
        if calls.count(2) == 3:
            raise KeyboardInterrupt
        return real_loss(self, *a)

    args = _args(tmp, "int")
    monkeypatch.setattr(distill.ProgressiveTask, "loss", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        distill.main(args)
    monkeypatch.setattr(distill.ProgressiveTask, "loss", real_loss)
    with pytest.raises(FileExistsError, match="--resume"):      # without --resume: a clear refusal
        distill.main(args)
    resumed, records = distill.main(args + ["--resume"])
    for a, b in zip(final.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)                                # bitwise the uninterrupted run's student
    assert [r["stage"] for r in records] == ["guidance", "round-8-to-4", "round-4-to-2", "round-2-to-1"]

    monkeypatch.setattr(distill, "train_loop", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    again, _ = distill.main(args)                              # everything finished: all stages skipped
    assert torch.equal(again.net.conv_out.weight, final.net.conv_out.weight)


def test_script_without_stage1_distils_from_the_guided_teacher(tmp_path, monkeypatch):
    """--stage1-steps 0: the round's teacher is the original model, called with per-sample w (two halves per call)."""
    from train import distill
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: _data(32))
    tiny_teacher().save_pretrained(tmp_path / "teacher")
    final, records = distill.main(_args(tmp_path, "run", "--stage1-steps", "0", "--grid-steps", "2", "--ship-steps", "1",
                                        "--export-steps", "", "--steps", "2"))
    assert [r["stage"] for r in records] == ["round-2-to-1"] and not (tmp_path / "run" / "guidance").exists()
    assert final.distilled == {"steps": 1, "grid_steps": 2, "rho": 7.0, "guidance_range": [0.0, 4.0],
                               "teacher": "teacher"}
    assert sorted(p.name for p in (tmp_path / "run" / "w").iterdir()) == ["pcd"]


def test_script_validates_the_plan():
    from train.distill import DistillConfig, round_plan
    assert round_plan(DistillConfig(grid_steps=16, steps=100)) == [(16, 8, 100), (8, 4, 100), (4, 2, 100), (2, 1, 100)]
    assert round_plan(DistillConfig(grid_steps=8, round_steps="5,6,7"))[2] == (2, 1, 7)
    for bad in (dict(grid_steps=12), dict(round_steps="1,2"), dict(ship_steps=3), dict(export_steps="16"),
                dict(end_steps=2, export_steps="1"), dict(w_min=2.0, w_max=1.0),
                dict(stage1_grid_fraction=1.5)):
        with pytest.raises(ValueError):
            round_plan(DistillConfig(**bad))


def test_sample_cli_with_a_distilled_student(tmp_path, monkeypatch):
    import diffusion.sample as cli
    from diffusion import hub
    student = tiny_student(steps=4)
    torch.nn.init.normal_(student.net.guidance_embed[-1].weight)        # w matters, as after training
    student.save_pretrained(tmp_path / "pixel-cond-distilled")
    assert "pixel-cond-distilled" in hub.SAMPLEABLE_NAMES and hub.MODEL_CLASSES["pixel-cond-distilled"] is ScoreModel
    out = tmp_path / "s.npz"
    base = ["--model", "pixel-cond-distilled", "--digits", "0-2", "--per-digit", "2", "--weights-dir", str(tmp_path),
            "--out", str(out), "--device", "cpu", "--precision", "fp32"]
    assert cli.main(base + ["--steps", "4", "--guidance", "3"]) == 0
    first = np.load(out)["images"]
    assert first.shape == (6, 8, 8) and np.load(out)["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert cli.main(base) == 0                                  # defaults: ddim, 4 steps, w = 2
    assert not np.array_equal(np.load(out)["images"], first)
    with pytest.raises(SystemExit):                            # an untrained step count: a usage error
        cli.main(base + ["--steps", "2"])


# ---------------------------------------------------------------- the method learns


def _train(student, task, tmp_path, steps=60):
    from train.loop import TrainConfig, train_loop
    x, y = _data(256)
    cfg = TrainConfig(out=str(tmp_path), steps=steps, batch_size=32, lr=3e-3, warmup=10, ema_decay=0.9,
                      ckpt_every=1000, log_every=10, threads=1)
    return train_loop(cfg, student.train(), task, x, y)[0].eval()


def test_a_round_moves_the_one_step_student_onto_the_teachers_two_steps(tmp_path):
    from train.distill import DistillConfig, ProgressiveTask
    teacher = make_student(tiny_teacher(), distilled_config(2, 2, (0.0, 4.0))).eval().requires_grad_(False)
    x1 = teacher.sde.prior_sample((64, 1, 8, 8), torch.Generator().manual_seed(5))
    labels = torch.arange(64) % 10
    two_steps = sample("ddim", teacher, x1.clone(), labels, num_steps=2, guidance=2.0)[0]

    def error(model):
        return float((sample("ddim", model, x1.clone(), labels, num_steps=1, guidance=2.0)[0] - two_steps).square()
                     .mean().sqrt())

    student = make_student(teacher, distilled_config(1, 2, (0.0, 4.0)))
    before = error(student.eval())
    after = error(_train(student, ProgressiveTask(teacher, student_sigmas(teacher.sde, 2, 2), DistillConfig()),
                         tmp_path))
    assert after < 0.6 * before, (before, after)          # measured: 0.032 -> 0.013 in 60 steps


def test_guidance_distillation_learns_the_guided_teacher(tmp_path):
    from train.distill import DistillConfig, GuidanceTask
    teacher = tiny_teacher().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    x0, labels = _data(64)
    sigma = torch.exp(torch.randn(64, generator=g, dtype=torch.float64) * 1.2 - 1.2).clamp(0.03, 9.8)
    xt = x0 + sigma.float().view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
    w = 4 * torch.rand(64, generator=g)

    def error(model):
        with torch.no_grad():
            return float(weighted_error(teacher, model.denoise(xt, sigma, labels, guidance=w),
                                        teacher.denoise(xt, sigma, labels, guidance=w), sigma))

    student = make_student(teacher, distilled_config(None, 16, (0.0, 4.0)))
    before = error(student.eval())
    after = error(_train(student, GuidanceTask(teacher, DistillConfig()), tmp_path))
    assert after < 0.6 * before, (before, after)


def test_auto_precision_runs_students_and_teachers_in_bf16_on_bf16_hardware(monkeypatch):
    """With the autocast wrapper passing `distilled` through (ddim runs a student on its own grid), bf16 autocast
    kept the students' FD (bench/results/backends.md): "auto" runs them in bf16 like their teacher; "fp32" asked
    for is honoured."""
    import diffusion.pipeline as dp
    from factories import tiny_model, tiny_students

    monkeypatch.setattr(dp, "cpu_has_bf16", lambda: True)
    teacher = tiny_model("pixel-cond")
    student = tiny_students(teacher, names=["pixel-cond-distilled-2step"])["pixel-cond-distilled-2step"]
    assert Pipeline(teacher, precision="auto").compute_precision == "bf16"
    assert Pipeline(student, precision="auto").compute_precision == "bf16"
    assert Pipeline(student, precision="fp32").compute_precision == "fp32"
    monkeypatch.setattr(dp, "cpu_has_bf16", lambda: False)
    assert Pipeline(student, precision="auto").compute_precision == "fp32"


def test_students_guidance_defaults_follow_the_two_evaluator_rule_on_the_shipped_sweep():
    """Each student's default w is diffusion.setting_rules.choose_setting's pick over its rows in
    bench/results/distillation.json (largest N): changing the sweep or a default without the other fails here. A
    student whose rule-v3 sweep covers its grid (bench/results/defaults_v3.json) ships rule v3's pick instead,
    checked by tests/bench/test_bench.py."""
    from bench import defaults_v3 as dv
    from diffusion.setting_rules import choose_setting

    rows = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results" / "distillation.json").read_text())
    v3 = dv.load_rows(dv.STORE)
    for name in ("pixel-cond-distilled", "pixel-cond-distilled-2step", "pixel-cond-distilled-1step"):
        if any(r["model"] == name for r in v3) and not dv.coverage_gaps(v3, name):
            continue
        mine = [r for r in rows if r["model"] == name]
        n = max(r["samples"] for r in mine)
        swept = [{"setting": {"guidance": r["guidance"]}, "metrics": r["metrics"]} for r in mine if r["samples"] == n]
        assert len(swept) >= 3, f"{name}: too few guidance values swept"
        assert choose_setting(swept)["setting"]["guidance"] == MODEL_DEFAULTS[name].guidance, name
