"""The training loop: exact resume, crash-safe rotated checkpoints (safetensors + JSON only), the NaN stop,
the LR schedule and EMA, and 2-process DDP (gloo on CPU) reproducing a 1-process run of the same global batch."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file

import train.checkpoints as checkpoints
from ui.server import free_port
from diffusion import timelapse
from diffusion.score import ScoreModel
from train.checkpoints import EMA, latest_checkpoint
from train.loop import NonFiniteLoss, TrainConfig, lr_at, parse_config, save_weights, train_loop

_spec = importlib.util.spec_from_file_location("_ddp_worker", Path(__file__).with_name("_ddp_worker.py"))
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


class Crash(Exception):
    pass


class Faulty:
    """Wraps a task: at loss call `at` it raises (a killed process) or returns NaN."""

    def __init__(self, task, at, mode="crash"):
        self.task, self.at, self.mode, self.calls = task, at, mode, 0

    def noise(self, *a):
        return self.task.noise(*a)

    def loss(self, *a):
        self.calls += 1
        loss, logs = self.task.loss(*a)
        if self.calls - 1 == self.at:
            if self.mode == "crash":
                raise Crash(f"killed at call {self.at}")
            loss = loss * float("nan")
        return loss, logs


def run(out, *, model_seed=0, fault=None, **cfg):
    model = W.tiny_model(model_seed)
    x, y = W.tiny_data()
    task = W.tiny_task(model)
    if fault is not None:
        task = Faulty(task, *fault)
    ema, history = train_loop(W.tiny_config(out, **cfg), model, task, x, y)
    return model, ema, history


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def ckpts(run_dir):
    return sorted(p.name for p in Path(run_dir).iterdir() if "ckpt" in p.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("ref")
    model, ema, history = run(out)
    return out, model, ema, history


def test_reference_run_trains(reference):
    out, model, ema, history = reference
    assert [h["step"] for h in history] == list(range(6))
    assert all(math.isfinite(h["loss"]) for h in history)
    assert not torch.equal(model.net.conv_in.weight, W.tiny_model().net.conv_in.weight)
    assert json.loads((out / "history.json").read_text()) == history
    assert ckpts(out) == ["ckpt-00000003", "ckpt-00000006"]
    # the returned EMA model is the checkpoint's EMA, in eval mode
    ema_state = {k[4:]: v for k, v in load_file(str(out / "ckpt-00000006" / "state.safetensors")).items() if k.startswith("ema.")}
    assert not ema.training
    for k, v in ema.state_dict().items():
        assert torch.equal(v, ema_state[k]), k


def drop_wall(history):
    """History without its wall-clock seconds (the only field a resumed run may not reproduce)."""
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


def test_interrupted_run_resumes_exactly(reference, tmp_path):
    _, ref_model, ref_ema, ref_history = reference
    with pytest.raises(Crash):
        run(tmp_path, fault=(4, "crash"))                      # killed during step 4; ckpt-3 was written
    assert ckpts(tmp_path) == ["ckpt-00000003"]
    model, ema, history = run(tmp_path, model_seed=123, resume=True)  # a different init: everything comes from ckpt-3
    assert_same_state(model, ref_model)
    assert_same_state(ema, ref_ema)
    assert drop_wall(history) == drop_wall(ref_history)
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(history, history[1:]))  # summed across the resume


def test_finished_run_extended_with_resume(tmp_path):
    # N/2 steps, then --resume to N. With a constant LR (the cosine schedule depends on cfg.steps, so a longer
    # run has another schedule by design) this equals one N-step run.
    flat = dict(warmup=0, min_lr_ratio=1.0)
    full_model, full_ema, full_history = run(tmp_path / "full", **flat)
    run(tmp_path / "split", steps=3, **flat)
    model, ema, history = run(tmp_path / "split", model_seed=5, resume=True, **flat)
    assert_same_state(model, full_model)
    assert_same_state(ema, full_ema)
    assert drop_wall(history) == drop_wall(full_history)


def test_crash_during_checkpoint_write_is_ignored_by_resume(reference, tmp_path, monkeypatch):
    _, ref_model, ref_ema, ref_history = reference
    real_save, calls = checkpoints.save_file, []

    def dies_writing(tensors, path, *a, **k):                  # the 2nd checkpoint's write is cut short
        calls.append(path)
        if len(calls) == 2:
            real_save(tensors, path, *a, **k)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[:len(data) // 2])
            raise Crash("killed while writing a checkpoint")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoints, "save_file", dies_writing)
    with pytest.raises(Crash):
        run(tmp_path)
    monkeypatch.setattr(checkpoints, "save_file", real_save)
    assert ckpts(tmp_path) == [".tmp-ckpt-00000006", "ckpt-00000003"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000003"
    model, ema, history = run(tmp_path, model_seed=7, resume=True)
    assert_same_state(model, ref_model)
    assert_same_state(ema, ref_ema)
    assert drop_wall(history) == drop_wall(ref_history)
    assert ckpts(tmp_path) == ["ckpt-00000003", "ckpt-00000006"]  # the step-6 temp dir was replaced


def test_latest_checkpoint_needs_both_files(tmp_path):
    for name, files in [("ckpt-00000001", ["state.json", "state.safetensors"]), ("ckpt-00000002", ["state.safetensors"]),
                        (".tmp-ckpt-00000003", ["state.json", "state.safetensors"])]:
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000001"
    assert latest_checkpoint(tmp_path / "ckpt-00000002") is None


def test_resume_without_checkpoints_starts_fresh(reference, tmp_path):
    _, ref_model, _, _ = reference
    model, _, _ = run(tmp_path, resume=True)
    assert_same_state(model, ref_model)


def test_rotation_keeps_the_newest(tmp_path):
    run(tmp_path, ckpt_every=1, keep=2)
    assert ckpts(tmp_path) == ["ckpt-00000005", "ckpt-00000006"]
    run(tmp_path / "b", ckpt_every=2, keep=1)
    assert ckpts(tmp_path / "b") == ["ckpt-00000006"]


def test_checkpoints_are_safetensors_and_json_only(reference):
    out = reference[0]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    for p in files:
        head = p.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", p    # no pickle, no torch.save zip
    for name in ckpts(out):
        d = out / name
        assert sorted(p.name for p in d.iterdir()) == ["state.json", "state.safetensors"]
        tensors = load_file(str(d / "state.safetensors"))
        assert {k.split(".")[0] for k in tensors} == {"model", "ema", "optimizer", "rng"}
        meta = json.loads((d / "state.json").read_text())
        assert meta["step"] == int(name.split("-")[1]) and meta["ema_updates"] == meta["step"]


def test_nan_loss_stops_without_touching_saved_state(tmp_path):
    with pytest.raises(NonFiniteLoss, match="step 4"):
        run(tmp_path, fault=(4, "nan"))
    assert ckpts(tmp_path) == ["ckpt-00000003"]
    before = {p: p.read_bytes() for p in (tmp_path / "ckpt-00000003").iterdir()}
    # the next attempt hits NaN again (same data, same noise): nothing is rewritten or added
    with pytest.raises(NonFiniteLoss):
        run(tmp_path, fault=(1, "nan"), resume=True)
    assert ckpts(tmp_path) == ["ckpt-00000003"]
    assert {p: p.read_bytes() for p in (tmp_path / "ckpt-00000003").iterdir()} == before
    assert not (tmp_path / "history.json").exists()


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup=4, steps=14, min_lr_ratio=0.1)
    assert [lr_at(cfg, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]      # linear warm-up
    assert lr_at(cfg, 4) == pytest.approx(1.0)                              # cosine from the peak...
    assert lr_at(cfg, 9) == pytest.approx(0.1 + 0.9 * 0.5)                  # ...half way...
    assert lr_at(cfg, 14) == pytest.approx(0.1) and lr_at(cfg, 100) == pytest.approx(0.1)  # ...to lr * min_lr_ratio
    decay = [lr_at(cfg, s) for s in range(4, 15)]
    assert decay == sorted(decay, reverse=True)
    assert lr_at(TrainConfig(lr=0.3, warmup=0, steps=10), 0) == pytest.approx(0.3)


def test_loop_applies_the_schedule(tmp_path):
    seen = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    cfg = W.tiny_config(tmp_path, steps=5, warmup=2, lr=0.1)
    model = W.tiny_model()
    x, y = W.tiny_data()
    train_loop(cfg, model, W.tiny_task(model), x, y, optimizer_cls=RecordingSGD)
    assert seen == [lr_at(cfg, s) for s in range(5)]
    assert seen[:2] == [0.05, 0.1]


def test_ema():
    bn = torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        bn.weight.fill_(0.0)
    ema = EMA(bn, decay=0.5)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0], start=1):
        with torch.no_grad():
            bn.weight.fill_(value)
        bn.num_batches_tracked.fill_(n)
        ema.update(bn)
        d = min(0.5, (1 + n) / (10 + n))                    # warm-up: 0.18, 0.25, 0.31, ... capped at 0.5 from n = 8
        expected = d * expected + (1 - d) * value
        assert float(ema.shadow["weight"]) == pytest.approx(expected, rel=1e-6)
        assert int(ema.shadow["num_batches_tracked"]) == n  # integer buffers are copied, not averaged
    copy = ema.copy_to(torch.nn.BatchNorm1d(1))
    assert float(copy.weight.detach()) == pytest.approx(expected, rel=1e-6)


def test_config_flags():
    cfg = parse_config(TrainConfig, ["--steps", "7", "--lr", "0.5", "--resume", "--mnist-dir", "/d"])
    assert (cfg.steps, cfg.lr, cfg.resume, cfg.mnist_dir) == (7, 0.5, True, "/d")
    assert isinstance(cfg.steps, int) and parse_config(TrainConfig, ["--no-resume"]).resume is False
    from train.diffusion_models import ScoreConfig
    sc = parse_config(ScoreConfig, ["--label-dropout", "0.2", "--no-conditional"])
    assert sc.label_dropout == 0.2 and sc.conditional is False and sc.steps == ScoreConfig.steps


def test_bad_batch_sizes(tmp_path):
    model = W.tiny_model()
    x, y = W.tiny_data(8)
    with pytest.raises(ValueError, match="divisible"):
        train_loop(W.tiny_config(tmp_path, batch_size=15), model, W.tiny_task(model), x, y, world=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_loop(W.tiny_config(tmp_path, batch_size=16), model, W.tiny_task(model), x, y)


def test_training_script_end_to_end_and_nan_keeps_weights(tmp_path, monkeypatch):
    import train.common
    from train import diffusion_models
    x, y = W.tiny_data(32)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (x, y))
    weights = tmp_path / "weights" / "pixel-tiny"
    args = ["--weights-dir", str(weights), "--steps", "4", "--batch-size", "8", "--channels", "8,16",
            "--attention-levels", "1", "--embed-dim", "16", "--context-dim", "8", "--ckpt-every", "2",
            "--warmup", "1", "--log-every", "1", "--threads", "1"]
    diffusion_models.main(["--out", str(tmp_path / "run1"), *args])
    assert sorted(p.name for p in weights.iterdir()) == ["config.json", "model.safetensors", "timelapse.safetensors"]
    lapse = timelapse.load(weights / "timelapse.safetensors")     # sample_every > steps: the final frame only
    assert lapse.step.tolist() == [4] and lapse.images.shape == (1, 40, 8, 8)
    assert lapse.labels.tolist() == [d for d in range(10) for _ in range(4)]
    loaded = ScoreModel.from_pretrained(weights)
    assert loaded.num_classes == 10 and loaded.sde.sigma == 25.0 and loaded.image_size == 8
    assert (tmp_path / "run1" / "samples-0000004.png").is_file()
    (weights / "README.md").write_text("model card")
    before = {p.name: p.read_bytes() for p in weights.iterdir()}

    real_loss = diffusion_models.DSMTask.loss
    monkeypatch.setattr(diffusion_models.DSMTask, "loss",
                        lambda self, *a: (real_loss(self, *a)[0] * float("nan"), {}))
    with pytest.raises(NonFiniteLoss):
        diffusion_models.main(["--out", str(tmp_path / "run2"), *args])
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before

    monkeypatch.setattr(diffusion_models.DSMTask, "loss", real_loss)
    save_weights(loaded, weights)                              # an atomic rewrite keeps the model card
    assert (weights / "README.md").read_text() == "model card"


def test_training_script_distils_a_narrower_student_from_a_teacher(tmp_path, monkeypatch):
    """--teacher: the student regresses onto the teacher's score (diffusion.losses.dsm_loss); a teacher of another
    kind is refused by name before any step."""
    import train.common
    from train import diffusion_models
    x, y = W.tiny_data(32)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (x, y))
    common = ["--steps", "3", "--batch-size", "8", "--attention-levels", "1", "--embed-dim", "16", "--context-dim", "8",
              "--ckpt-every", "3", "--warmup", "1", "--log-every", "1", "--threads", "1"]
    teacher = tmp_path / "teacher"
    diffusion_models.main(["--out", str(tmp_path / "t"), "--weights-dir", str(teacher), "--channels", "8,16", *common])
    seen = []
    real_loss = diffusion_models.dsm_loss
    monkeypatch.setattr(diffusion_models, "dsm_loss", lambda *a, **k: seen.append(k) or real_loss(*a, **k))
    student = tmp_path / "student"
    diffusion_models.main(["--out", str(tmp_path / "s"), "--weights-dir", str(student), "--channels", "4,8",
                           "--teacher", str(teacher), "--teacher-weight", "0.75", *common])
    assert len(seen) == 3 and all(k["teacher_weight"] == 0.75 for k in seen)
    assert not any(p.requires_grad for p in seen[0]["teacher"].parameters())
    assert json.loads((student / "config.json").read_text())["channels"] == [4, 8]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["teacher"] == str(teacher)

    uncond = ["--out", str(tmp_path / "u"), "--weights-dir", str(tmp_path / "u-w"), "--channels", "4,8",
              "--no-conditional", "--teacher", str(teacher), *common]
    with pytest.raises(SystemExit, match=r"does not match the student: num_classes 10 \(student None\)"):
        diffusion_models.main(uncond)
    with pytest.raises(SystemExit, match="no config.json there"):
        diffusion_models.main([*uncond[:-len(common) - 2], "--teacher", str(tmp_path / "nowhere"), *common])
    with pytest.raises(SystemExit, match=r"--teacher-weight must be in \[0, 1\]"):
        diffusion_models.main([*uncond[:6], "--teacher", str(teacher), "--teacher-weight", "2", *common])


@pytest.mark.slow  # two fresh Python processes importing torch: ~20 s on 2 busy cores
def test_ddp_two_processes_match_one(tmp_path):
    steps = 5
    model = W.tiny_model()
    x, y = W.tiny_data()
    ref_ema, ref_history = train_loop(W.tiny_config(tmp_path / "single", steps=steps), model, W.tiny_task(model), x, y,
                                      optimizer_cls=W.sgd)
    port = free_port()
    result = tmp_path / "ddp.safetensors"
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("_ddp_worker.py")),
                                       str(tmp_path / "ddp"), str(result), str(steps)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    with safe_open(str(result), "pt") as f:
        history = json.loads(f.metadata()["history"])
    got = load_file(str(result))
    expected = W.state_tensors(model, ref_ema)
    assert got.keys() == expected.keys()
    init = W.tiny_model().state_dict()
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-5, rtol=1e-4), k
    moved = max(float((expected["model." + k] - v).abs().max()) for k, v in init.items() if v.is_floating_point())
    assert moved > 100 * 1e-5                                   # the tolerance is far below the training signal
    # the logged loss is the global batch's (averaged over ranks), as in the 1-process run
    assert [h["step"] for h in history] == [h["step"] for h in ref_history]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=1e-4)


def test_ranks_take_their_slice_of_the_global_batch(tmp_path):
    """Fast in-process check of the DDP contract: rank r of N sees rows [r B/N, (r+1) B/N) of the global batch's
    data *and* noise. A 1-process gloo group stands in for the real one (no gradient averaging, so only the
    inputs each rank sees are compared, not the weights)."""

    class Recording:
        def __init__(self, task):
            self.task, self.seen = task, []

        def noise(self, *a):
            return self.task.noise(*a)

        def loss(self, model, x, y, noise):
            self.seen.append((x.clone(), y.clone(), {k: v.clone() for k, v in noise.items()}))
            return self.task.loss(model, x, y, noise)

    def record(rank, world):
        model = W.tiny_model()
        task = Recording(W.tiny_task(model))
        x, y = W.tiny_data()
        train_loop(W.tiny_config(tmp_path / f"r{rank}of{world}", steps=5), model, task, x, y, rank=rank, world=world)
        return task.seen

    single = record(0, 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        halves = [record(r, 2) for r in range(2)]
    finally:
        dist.destroy_process_group()
    assert len(single) == 5
    for step, (x, y, noise) in enumerate(single):
        (x0, y0, n0), (x1, y1, n1) = halves[0][step], halves[1][step]
        assert x0.shape[0] == x1.shape[0] == 8
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        assert noise.keys() == {"t", "z", "drop"}
        for k in noise:
            assert torch.equal(torch.cat([n0[k], n1[k]]), noise[k]), (step, k)


def test_train_cli_dispatches_to_the_module_and_records_its_python_m_command(tmp_path, monkeypatch, capsys):
    """`mnist-diffusion-train NAME flags` runs train.NAME's main with the flags; the record names `python -m`."""
    import sys

    import train.classifier
    import train.cli
    import train.common
    seen = {}
    monkeypatch.setattr(train.classifier, "main", lambda argv: seen.update(argv=argv, cmd=train.common.run_command()))
    monkeypatch.setattr(train.common, "INVOKED_MODULE", None)
    monkeypatch.setattr(sys, "argv", ["mnist-diffusion-train"])
    assert train.cli.main(["classifier", "--steps", "3", "--out", "runs/x y"]) == 0
    assert seen["argv"] == ["--steps", "3", "--out", "runs/x y"]
    assert seen["cmd"] == "python -m train.classifier --steps 3 --out 'runs/x y'"
    assert train.cli.main(["pixel-cnd"]) == 2 and "unknown model 'pixel-cnd'" in capsys.readouterr().err
    assert train.cli.main([]) == 2 and "pixel-cond" in capsys.readouterr().out
    for module in train.cli.scripts().values():                 # every subcommand's module has a main(argv)
        assert callable(__import__(module, fromlist=["main"]).main), module
