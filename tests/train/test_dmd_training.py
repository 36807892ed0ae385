"""train.dmd end to end on tiny models: both networks train on their own losses, the EMA generator ships as a one-step
student with its DMD record and narrowed guidance range, and runs that cannot work are refused by name."""
import json
import math

import pytest
import torch

import train.common
from diffusion.distill import distilled_config, make_student
from diffusion.dmd import dmd_direction, dmd_loss, student_generate
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from tests.factories import tiny_score
from train import dmd
from train.checkpoints import latest_checkpoint


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmd")
    teacher = tiny_score(num_classes=10, image_size=8, precond="edm")
    teacher.save_pretrained(tmp / "teacher")
    for name, steps in (("student", 1), ("student4", 4), ("stage1", None)):
        make_student(teacher, distilled_config(steps, 16, (0.0, 4.0), teacher="teacher")).save_pretrained(tmp / name)
    return tmp


def _args(tmp, out, *extra):
    return ["--student", str(tmp / "student"), "--teacher", str(tmp / "teacher"), "--out", str(tmp / out),
            "--weights-dir", str(tmp / out / "w"), "--steps", "3", "--batch-size", "16", "--threads", "1",
            "--warmup", "1", "--log-every", "1", "--ckpt-every", "3", "--lr", "1e-3", *extra]


def _run(monkeypatch, argv):
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: _data())
    return dmd.main(argv)


def test_script_end_to_end(folders, monkeypatch):
    generator, history = _run(monkeypatch, _args(folders, "run", "--w-min", "1", "--w-max", "3"))
    assert [h["step"] for h in history] == [0, 1, 2]
    for h in history:          # both networks' losses and the anchor are logged, all finite
        assert {"dmd", "fake", "anchor"} <= set(h) and all(torch.isfinite(torch.tensor(h[k])) for k in h)
    shipped = ScoreModel.from_pretrained(folders / "run" / "w")
    d = shipped.distilled
    assert d["steps"] == 1 and d["guidance_range"] == [1.0, 3.0]
    assert d["dmd"] == {"teacher": "teacher", "start": "student", "steps": 3, "anchor_weight": 0.25, "eta": 0.0,
                        "fake_updates": 4}
    start = ScoreModel.from_pretrained(folders / "student")
    assert not torch.equal(shipped.net.conv_in.weight, start.net.conv_in.weight)    # the generator trained
    ckpt = latest_checkpoint(folders / "run")
    from safetensors.torch import load_file
    keys = load_file(ckpt / "state.safetensors").keys()          # both networks are checkpointed, for --resume
    assert any(k.startswith("model.fake.") for k in keys) and any(k.startswith("model.generator.") for k in keys)
    assert (folders / "run" / "samples.png").is_file()
    record = json.loads((folders / "run" / "record.json").read_text())
    assert record["command"].startswith("python -m ") and record["config"]["anchor_weight"] == 0.25
    assert [st["stage"] for st in record["stages"]] == ["dmd"] and record["stages"][0]["steps"] == 3
    assert record["stages"][0]["student_steps"] == record["ship_steps"] == 1
    assert record["dmd"]["w_range"] == [1.0, 3.0] and record["distill_config"] == {}
    pipe = Pipeline(shipped, name="x", precision="fp32")
    images, last = pipe.generate([0, 7], sampler="ddim", num_steps=1, guidance=2.0, seed=0)
    assert last.nfe == 1 and images.shape == (2, 8, 8) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="outside"):
        pipe.generate([0], sampler="ddim", num_steps=1, guidance=0.5)      # below the range DMD trained


def _pair_and_task(folders, **cfg):
    teacher = ScoreModel.from_pretrained(folders / "teacher").requires_grad_(False)
    start = ScoreModel.from_pretrained(folders / "student").requires_grad_(False)
    with torch.no_grad():
        start.net.guidance_embed[-1].weight.normal_(0, 0.5)     # the anchor then differs from the generator
    pair = dmd.GeneratorAndFake(ScoreModel.from_pretrained(folders / "student"),
                                ScoreModel.from_pretrained(folders / "stage1"))
    return pair, dmd.DMDTask(teacher, start, dmd.DMDConfig(**cfg)), teacher, start


def test_a_four_step_student_trains_through_its_ancestral_steps(folders, monkeypatch):
    """--student a 4-step student with --eta 1 (euler_ancestral's noise): the generator is its whole sampler, the
    shipped folder keeps its 4-step grid and runs that sampler."""
    argv = _args(folders, "four", "--eta", "1.0")
    argv[argv.index("--student") + 1] = str(folders / "student4")
    _run(monkeypatch, argv)
    shipped = ScoreModel.from_pretrained(folders / "four" / "w")
    assert shipped.distilled["steps"] == 4 and shipped.distilled["dmd"]["eta"] == 1.0
    record = json.loads((folders / "four" / "record.json").read_text())
    assert record["ship_steps"] == 4 and record["dmd"]["eta"] == 1.0
    start = ScoreModel.from_pretrained(folders / "student4")
    assert not torch.equal(shipped.net.conv_in.weight, start.net.conv_in.weight)
    images, last = Pipeline(shipped, name="x", precision="fp32").generate([1, 2], sampler="euler_ancestral",
                                                                          num_steps=4, guidance=2.0, seed=0)
    assert last.nfe == 4 and torch.isfinite(images).all()


def test_the_generator_loss_is_dmd_plus_anchor_and_reaches_only_the_generator(folders):
    """The loss train_loop back-propagates, rebuilt by hand from the same noise after the fake's updates: the same
    value, the same generator gradient, no gradient on the fake (its own optimizer already stepped it, k times)."""
    pair, task, teacher, start = _pair_and_task(folders, fake_updates=2, warmup=1)
    before = [p.detach().clone() for p in pair.fake.parameters()]
    gen_before = [p.detach().clone() for p in pair.generator.parameters()]
    x, y = _data(8)
    n = task.noise(x, y, torch.Generator().manual_seed(3))
    assert n["fake_z"].shape == (8, 2, 1, 8, 8) and n["fake_sigma"].shape == (8, 2)
    assert float(n["sigma"].min()) >= 0.05 and float(n["fake_sigma"].min()) < 0.05   # the floor is the DMD term's only
    loss, logs = task.loss(pair, x, y, n)
    assert task.fake_steps == 2 and any(not torch.equal(a, b) for a, b in zip(before, pair.fake.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(gen_before, pair.generator.parameters()))
    loss.backward()
    got = {name: p.grad.clone() for name, p in pair.generator.named_parameters()}
    assert all(p.grad is None for p in pair.fake.parameters())
    pair.zero_grad()

    gen, fake, w = pair.generator, pair.fake, n["w"]
    sample = student_generate(gen, n["z"], y, w)
    clean = sample.detach()
    noisy = clean + n["sigma"].float().view(-1, 1, 1, 1) * n["eps"]
    with torch.no_grad():
        direction = dmd_direction(clean, teacher.denoise(noisy, n["sigma"], y, guidance=w),
                                  fake.denoise(noisy, n["sigma"], y, guidance=w))
        start_sample = student_generate(start, n["z"], y, w)
    by_hand = dmd_loss(sample, direction) + 0.25 * (sample - start_sample).square().mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6) and logs["anchor"] > 0
    by_hand.backward()
    for name, p in gen.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
    assert sum(g.abs().sum() for g in got.values()) > 0


def test_the_fake_learns_the_generators_samples(folders):
    """The fake's DSM updates lower its loss on generator samples it has not seen (a fixed generator)."""
    pair, task, _, _ = _pair_and_task(folders, fake_updates=1, warmup=1, fake_lr=3e-3)
    x, y = _data(32)
    held_out = task.noise(x, y, torch.Generator().manual_seed(99))

    def held_out_loss():
        with torch.no_grad():
            return float(task.fake_loss(pair.generator, pair.fake, held_out["fake_z"][:, 0], y, held_out["fake_w"][:, 0],
                                        held_out["fake_sigma"][:, 0], held_out["fake_eps"][:, 0])[0])

    first, g = held_out_loss(), torch.Generator().manual_seed(0)
    for _ in range(40):
        task.update_fake(pair.generator, pair.fake, y, task.noise(x, y, g), x.device, x.dtype)
    assert held_out_loss() < 0.8 * first


def test_the_gan_term_trains_the_head_and_pushes_only_the_generator(folders):
    """--gan-weight: the fake updates also train the bottleneck head (real digits against generator samples, same w),
    and the generator's loss gains gan_weight softplus(-D(G(z) + sigma eps)), rebuilt here by hand, whose gradient
    reaches the generator only (the fake and the head stay requires_grad for their own optimizer)."""
    from diffusion.dmd import BottleneckHead, gan_logits, gan_g_loss

    pair, task, teacher, start = _pair_and_task(folders, fake_updates=2, warmup=1, gan_weight=0.5, anchor_weight=0.0)
    pair.head = BottleneckHead(int(pair.fake._hub_mixin_config["channels"][-1]))
    head_before = [p.detach().clone() for p in pair.head.parameters()]
    x, y = _data(8)
    n = task.noise(x, y, torch.Generator().manual_seed(3))
    assert n["gan_real_eps"].shape == n["gan_fake_eps"].shape == (8, 2, 1, 8, 8)
    loss, logs = task.loss(pair, x, y, n)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, pair.head.parameters()))     # the head trained
    assert {"gan_d", "gan_g"} <= set(logs) and 0 < logs["gan_d"] < 5 and logs["gan_g"] > 0
    assert all(p.requires_grad for p in [*pair.fake.parameters(), *pair.head.parameters()])
    loss.backward()
    got = {name: p.grad.clone() for name, p in pair.generator.named_parameters()}
    assert all(p.grad is None for p in [*pair.fake.parameters(), *pair.head.parameters()])
    pair.zero_grad()

    gen, fake, w, sigma = pair.generator, pair.fake, n["w"], n["sigma"]
    sample = student_generate(gen, n["z"], y, w)
    clean = sample.detach()
    noisy = clean + sigma.float().view(-1, 1, 1, 1) * n["eps"]
    with torch.no_grad():
        direction = dmd_direction(clean, teacher.denoise(noisy, sigma, y, guidance=w),
                                  fake.denoise(noisy, sigma, y, guidance=w))
    gan = gan_g_loss(gan_logits(fake, pair.head, sample + sigma.float().view(-1, 1, 1, 1) * n["eps"], sigma, y, w))
    by_hand = dmd_loss(sample, direction) + 0.5 * gan
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6) and logs["gan_g"] == pytest.approx(gan.item())
    pair.zero_grad()
    by_hand.backward()
    for name, p in gen.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


@pytest.mark.parametrize("features", ["bottleneck", "both"])
def test_the_gan_head_learns_to_tell_real_digits_from_generator_samples(folders, features):
    """With the generator fixed, the head's loss on held-out noise falls well below 2 ln 2 (chance)."""
    pair, task, _, _ = _pair_and_task(folders, fake_updates=1, warmup=1, fake_lr=3e-3, gan_weight=1.0)
    from diffusion.dmd import make_gan_head
    pair.head = make_gan_head(pair.fake, features)
    x, y = _data(32)
    x = (x > 0.7).float()                     # "real digits": sparse binary ink, unlike the tiny generator's grey
    held = task.noise(x, y, torch.Generator().manual_seed(99))

    def held_out_head_loss():
        with torch.no_grad():
            _, generated = task.fake_loss(pair.generator, pair.fake, held["fake_z"][:, 0], y, held["fake_w"][:, 0],
                                          held["fake_sigma"][:, 0], held["fake_eps"][:, 0])
            return float(task.head_loss(pair.fake, pair.head, x, generated, y, held["fake_w"][:, 0],
                                        held["fake_sigma"][:, 0] * 0 + 0.05, held["gan_real_eps"][:, 0],
                                        held["gan_fake_eps"][:, 0]))

    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        n = task.noise(x, y, g)
        n["fake_sigma"] = n["fake_sigma"].clamp(max=0.2)
        task.update_fake(pair.generator, pair.fake, y, n, x.device, x.dtype, x, pair.head)
    assert held_out_head_loss() < 0.5 * 2 * math.log(2)


def test_script_with_the_gan_term_checkpoints_the_head_and_records_its_weights(folders, monkeypatch):
    generator, history = _run(monkeypatch, _args(folders, "gan", "--w-min", "1", "--w-max", "3", "--gan-weight", "0.01",
                                                 "--fake-updates", "1"))
    assert all({"gan_d", "gan_g"} <= set(h) for h in history)
    from safetensors.torch import load_file
    keys = load_file(latest_checkpoint(folders / "gan") / "state.safetensors").keys()
    assert any(k.startswith("model.head.") for k in keys)
    shipped = ScoreModel.from_pretrained(folders / "gan" / "w")
    assert shipped.distilled["dmd"]["gan_weight"] == 0.01
    assert not any("head" in k for k in shipped.state_dict())            # the head is training gear, not shipped
    record = json.loads((folders / "gan" / "record.json").read_text())
    assert record["dmd"]["gan_weight"] == 0.01 and record["dmd"]["gan_d_weight"] == 1.0


def test_the_two_scale_head_reads_the_bottleneck_and_the_full_resolution_features(folders):
    """--gan-features both: gan_logits hands MultiScaleHead the middle block's output (B, C_last, H/4, W/4) and the
    output norm's input (B, C_0, H, W) of one denoiser pass; its logits are the two heads' sum, rebuilt here by hand."""
    from diffusion.dmd import MultiScaleHead, gan_logits, make_gan_head
    pair, _, _, _ = _pair_and_task(folders)
    fake = pair.fake
    head = make_gan_head(fake, "both")
    channels = fake._hub_mixin_config["channels"]
    assert isinstance(head, MultiScaleHead) and head.full.conv.in_channels == channels[0]
    x, y = _data(4)
    sigma, w = torch.full((4,), 0.3), torch.full((4,), 1.5)
    seen = {}
    hooks = [fake.net.mid_block2.register_forward_hook(lambda m, a, out: seen.setdefault("mid", out)),
             fake.net.norm_out.register_forward_pre_hook(lambda m, a: seen.setdefault("full", a[0]))]
    with torch.no_grad():
        fake.denoise(x, sigma, y, guidance=w)
        for hook in hooks:
            hook.remove()
        assert seen["mid"].shape[1] == channels[-1] and seen["full"].shape == (4, channels[0], *x.shape[-2:])
        want = head.bottleneck(seen["mid"]) + head.full(seen["full"])
        torch.testing.assert_close(gan_logits(fake, head, x, sigma, y, w), want)
    assert not fake.net.norm_out._forward_pre_hooks and not fake.net.mid_block2._forward_hooks     # hooks removed
    with pytest.raises(ValueError, match="one of"):
        make_gan_head(fake, "decoder")


def test_script_trains_a_two_scale_head_and_refuses_unknown_features(folders, monkeypatch):
    _run(monkeypatch, _args(folders, "gan2", "--w-min", "1", "--w-max", "3", "--gan-weight", "0.01",
                            "--fake-updates", "1", "--gan-features", "both"))
    from safetensors.torch import load_file
    keys = load_file(latest_checkpoint(folders / "gan2") / "state.safetensors").keys()
    assert any(k.startswith("model.head.full.") for k in keys) and any(k.startswith("model.head.bottleneck.") for k in keys)
    assert json.loads((folders / "gan2" / "record.json").read_text())["dmd"]["gan_features"] == "both"
    with pytest.raises(SystemExit, match="--gan-features must be one of bottleneck, both"):
        _run(monkeypatch, _args(folders, "gan3", "--gan-weight", "0.01", "--gan-features", "decoder"))


def test_the_gan_losses_and_the_head_against_hand_computed_values():
    from diffusion.dmd import BottleneckHead, gan_d_loss, gan_g_loss

    zero = torch.zeros(4)
    assert gan_d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert gan_g_loss(zero).item() == pytest.approx(math.log(2))
    assert gan_d_loss(torch.full((3,), 20.0), torch.full((3,), -20.0)).item() == pytest.approx(0, abs=1e-8)
    assert gan_g_loss(torch.tensor([-2.0])).item() == pytest.approx(math.log1p(math.exp(2.0)))
    head = BottleneckHead(16)
    assert head(torch.randn(5, 16, 2, 2)).shape == (5,)


@pytest.mark.parametrize("extra, message", [
    (["--gan-weight", "-1"], "--gan-weight and --gan-d-weight must be >= 0"),
    (["--student", "{tmp}/teacher"], "few-step distilled student"),
    (["--student", "{tmp}/stage1"], "few-step distilled student"),
    (["--eta", "1.5"], "--eta must be in"),
    (["--teacher", "{tmp}/student"], "not a student"),
    (["--fake-init", "{tmp}/teacher"], "guidance-embedded denoiser"),
    (["--fake-init", "{tmp}/student4"], "guidance-embedded denoiser"),
    (["--fake-init", "{tmp}/nowhere"], "not a weights folder"),
    (["--w-min", "0", "--w-max", "5"], "leave the student's range"),
    (["--w-min", "2", "--w-max", "1"], "--w-min"),
])
def test_runs_that_cannot_work_are_refused_by_name(folders, monkeypatch, extra, message):
    argv = _args(folders, "refused") + [e.format(tmp=folders) for e in extra]
    with pytest.raises(SystemExit, match=message):
        _run(monkeypatch, argv)
    assert not (folders / "refused" / "w").exists()


def test_a_shipped_students_record_carries_its_stages_into_the_new_one(folders, monkeypatch, tmp_path):
    """--student from the shipped weights folder: the new record lists the stages that made it (each with its run's
    command), then "dmd"; the card's Training section tells both methods, with each stage's own batch."""
    from train.card_training import training_lines
    shipped, records = tmp_path / "weights", tmp_path / "records"
    records.mkdir()
    ScoreModel.from_pretrained(folders / "student").save_pretrained(shipped / "pixel-cond-distilled-1step")
    old = {"command": "python -m train.distill --teacher weights/pixel-cond", "config": {"w_min": 0.0, "w_max": 4.0,
           "batch_size": 64, "lr": 5e-4}, "stages": [{"stage": "guidance", "steps": 10, "final_loss": 1.0, "wall_s": 60.0},
           {"stage": "round-2-to-1", "steps": 20, "final_loss": 2.0, "wall_s": 120.0, "command": "python -m x"}]}
    (records / "pixel-cond-distilled-1step.json").write_text(json.dumps(old))
    monkeypatch.setattr(dmd, "DEFAULT_WEIGHTS_DIR", shipped)
    monkeypatch.setattr(dmd, "RECORDS", records)
    argv = _args(folders, "from-shipped", "--batch-size", "8")
    argv[argv.index("--student") + 1] = str(shipped / "pixel-cond-distilled-1step")
    _run(monkeypatch, argv)
    record = json.loads((folders / "from-shipped" / "record.json").read_text())
    assert [st["stage"] for st in record["stages"]] == ["guidance", "round-2-to-1", "dmd"]
    assert [st["command"] for st in record["stages"][:2]] == [old["command"], "python -m x"]
    assert record["stages"][2]["command"].startswith("python -m ") and record["distill_config"] == old["config"]
    assert record["total_wall_s"] == round(180.0 + record["stages"][2]["wall_s"], 1)
    text = "\n".join(training_lines("pixel-cond-distilled-1step", record))
    assert "w ~ U[0.0, 4.0]" in text                       # the progressive stages' range, from their own config
    assert "distribution matching" in text and "w ~ U[1.0, 3.0]" in text
    assert "stage dmd" in text and "(24 images)" in text   # 3 steps of batch 8, not the progressive batch of 64
    # run again on the fine-tuned student (its record now the DMD one): one dmd stage, the progressive config kept
    (records / "pixel-cond-distilled-1step.json").write_text(json.dumps(record))
    _run(monkeypatch, _args(folders, "again", "--batch-size", "8")[:1] + [str(shipped / "pixel-cond-distilled-1step")]
         + _args(folders, "again", "--batch-size", "8")[2:])
    again = json.loads((folders / "again" / "record.json").read_text())
    assert [st["stage"] for st in again["stages"]] == ["guidance", "round-2-to-1", "dmd"]
    assert again["distill_config"] == old["config"]


def test_a_dmd_runs_checkpoint_loads_as_its_ema_generator_for_the_speck_bench(folders, monkeypatch):
    """bench.specks --source <a train.dmd run>: the newest checkpoint's EMA generator, in the student's architecture."""
    from bench import specks
    from safetensors.torch import load_file

    _run(monkeypatch, _args(folders, "specks-run", "--w-min", "1", "--w-max", "3"))
    model, name, step = specks.load_source(folders / "specks-run")
    ckpt = latest_checkpoint(folders / "specks-run")
    assert name == ckpt.name and step == 3 and model.distilled["steps"] == 1
    ema = load_file(str(ckpt / "state.safetensors"))
    torch.testing.assert_close(model.net.conv_in.weight, ema["ema.generator.net.conv_in.weight"])
    assert not torch.equal(model.net.conv_in.weight, ema["ema.fake.net.conv_in.weight"])
