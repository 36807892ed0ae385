"""The shared training loop: config dataclass -> argparse, EMA, LR schedule, atomic rotated
checkpoints in safetensors + JSON (train/checkpoints.py: no pickle anywhere), exact resume, DDP under torchrun, tqdm;
CPU or CUDA (--device), bf16 autocast (--amp), torch.compile when it pays (--compile auto: eager and compiled
steps are timed early in the run and the faster is kept), and a hard wall-clock stop (--deadline, or SIGTERM)
that still saves a checkpoint and the weights; --fit-to-deadline sizes --steps from the measured steps/s so the
LR schedule ends when the time does.

A model kind plugs in a `Task`:
    task.noise(x, y, generator) -> dict of tensors with leading batch dim (all randomness of a batch)
    task.loss(model, x, y, noise) -> (scalar loss, dict of floats to log)
Every rank draws the *global* batch's data indices and noise from the same generators and keeps its
own slice, so N processes of batch B/N reproduce one process of batch B (up to float summation order).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from train import pacing
from train.checkpoints import EMA, latest_checkpoint, load_checkpoint, save_checkpoint
from train.pacing import Probe, StopRequest, agree, probe_end, resize_plan, steps_to_deadline


# ---------------------------------------------------------------- config


@dataclass
class TrainConfig:
    out: str = "runs/model"           # run directory: checkpoints, sample grids, log
    weights_dir: str = ""             # where the EMA inference weights go (save_pretrained layout)
    steps: int = 5000                 # optimizer steps
    batch_size: int = 64              # global batch (split across processes)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 200                 # linear LR warm-up steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 500
    keep: int = 2                     # checkpoints kept on rotation
    log_every: int = 50
    sample_every: int = 0             # write a sample grid every N steps (0: only at the end)
    resume: bool = False
    threads: int = 0                  # torch intra-op threads (0: auto, 1 when the machine is busy, else all cores)
    mnist_dir: str = ""
    train_limit: int = 0              # use only the first N training images (0: all), for smoke tests
    push_to_hub: str = ""             # REPO_ID to upload the weights folder to after training
    device: str = "auto"              # auto (cuda when one is visible) | cuda | cpu
    amp: str = "auto"                 # auto (bf16 autocast on cuda, fp32 on cpu) | bf16 | fp32
    compile: str = "off"              # off | on | auto (time eager vs torch.compile steps early on, keep the faster)
    deadline: float = 0.0             # unix time: at the first step boundary past it, save and finish (0: none)
    fit_to_deadline: bool = False     # lower --steps (a cap) to what the measured steps/s fits before the deadline
    reserve_s: float = 30.0           # fit-to-deadline: seconds left free before the deadline (final samples, saving)
    probe_steps: int = 100            # steps timed per probe window (sizing; compile=auto times one window each way)


def add_config_args(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Every dataclass field becomes --flag-name with its default and type."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser


def parse_config(cls, argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=cls.__doc__), cls)
    return cls(**vars(parser.parse_args(argv)))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over cfg.warmup steps, then cosine decay to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- distributed


def dist_setup(device_pref: str | None = None):
    """(rank, world, device). Under torchrun: gloo on CPU, nccl on GPU. Device chosen once, here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_pref not in (None, "auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device_pref!r}")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (use --device auto or cpu)")
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


class NonFiniteLoss(RuntimeError):
    pass


# ---------------------------------------------------------------- the loop


AMP_CHOICES = ("auto", "bf16", "fp32")
COMPILE_CHOICES = ("off", "on", "auto")


def resolve_amp(amp: str, device: torch.device) -> str:
    """'bf16' or 'fp32': auto is bf16 autocast on CUDA (tensor cores) and fp32 on CPU (the shipped CPU runs' numerics)."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return amp


def check_run_options(cfg: TrainConfig) -> None:
    """Named errors for device/precision/compile/deadline flags that cannot work together."""
    if cfg.compile not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {cfg.compile!r}")
    if cfg.amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {cfg.amp!r}")
    if cfg.probe_steps < 1:
        raise ValueError(f"probe_steps must be >= 1, got {cfg.probe_steps}")
    if cfg.fit_to_deadline and cfg.deadline <= 0:
        raise ValueError("fit_to_deadline needs a deadline (unix time, --deadline)")
    if cfg.fit_to_deadline and cfg.warmup < probe_end(cfg, 0):
        # before sizing, lr_at must not depend on cfg.steps: the warm-up has to cover the probe
        raise ValueError(f"fit_to_deadline: warmup ({cfg.warmup}) must cover the probe's {probe_end(cfg, 0)} steps, "
                         f"so the LR before sizing does not depend on --steps")


def _optimizer_kwargs(optimizer_cls, device: torch.device) -> dict:
    """Fused Adam(W) on CUDA: one kernel for the whole update instead of a launch per tensor group."""
    return {"fused": True} if device.type == "cuda" and optimizer_cls in (torch.optim.AdamW, torch.optim.Adam) else {}


def train_loop(cfg: TrainConfig, model: torch.nn.Module, task, x_train: torch.Tensor, y_train: torch.Tensor,
               on_sample=None, device=None, rank: int = 0, world: int = 1, optimizer_cls=torch.optim.AdamW):
    """Train `model` for cfg.steps (or until cfg.deadline / SIGTERM); returns the EMA copy and the history.

    on_sample(ema_model, step, run_dir, history) is called on rank 0 every cfg.sample_every steps and at the end;
    history entries carry step, loss and wall_s (training seconds summed across resumes). What the run did
    (precision, compile decision, sizing, steps done, images seen, whether the deadline stopped it) is left in
    cfg._run_info for train.common.finish's record.
    """
    device = device or torch.device("cpu")
    run_dir = Path(cfg.out)
    if cfg.keep < 1:
        raise ValueError(f"keep must be >= 1, got {cfg.keep}")
    check_run_options(cfg)
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints of another run: pass --resume to continue it, "
                              f"or choose a new --out (or delete the folder) to start afresh")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    local_bs = cfg.batch_size // world
    precision = resolve_amp(cfg.amp, device)
    model.to(device)
    ema = EMA(model, cfg.ema_decay)
    opt = optimizer_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                        **_optimizer_kwargs(optimizer_cls, device))
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    gens = {"noise": noise_gen}
    info = {"device": str(device), "precision": precision, "compile": cfg.compile, "sizing": []}
    step_cap = cfg.steps                 # fit_to_deadline sizes the plan at or below --steps
    start, history, wall_before = 0, [], 0.0
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            impl = {k: opt.param_groups[0][k] for k in ("fused", "foreach") if k in opt.param_groups[0]}
            meta = load_checkpoint(ckpt, model, ema, opt, gens)
            for g in opt.param_groups:       # this machine's kernel choice, not the one of the machine that saved it
                g.update(impl)
            start, history = meta["step"], meta.get("history", [])
            wall_before = float(meta.get("wall_s", 0.0))
            info["sizing"] = meta.get("run_info", {}).get("sizing", [])
            if cfg.fit_to_deadline and meta.get("planned_steps"):
                cfg.steps = int(meta["planned_steps"])     # the same schedule continues; re-sized at checkpoints
            if rank == 0:
                tqdm.write(f"resumed from {ckpt} at step {start}")
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(ddp, **pacing.COMPILE_KWARGS) if cfg.compile == "on" else ddp

    n = x_train.shape[0]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n} training examples are fewer than one batch of {cfg.batch_size}")
    # the data lives on the device (MNIST: 188 MB); indices and noise are drawn on the CPU from the seeds
    x_dev, y_dev = (x_train.to(device), y_train.to(device)) if device.type == "cuda" else (x_train, y_train)
    perm, perm_epoch = None, -1
    bar = tqdm(total=cfg.steps, initial=start, disable=rank != 0, dynamic_ncols=True, unit="step", desc=run_dir.name)
    t0, seen = time.time(), 0
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # on CUDA a per-step isfinite check would stall the queue: non-finite losses are counted on the device and
    # checked every log_every steps and before anything is saved (the error then names the window)
    check_every = _check_cadence(device, cfg.log_every)
    nonfinite, last_checked = torch.zeros((), device=device), start
    probe = Probe(cfg, start, device, ddp, info)
    sizing_step = probe_end(cfg, start) if cfg.fit_to_deadline and not (cfg.resume and info["sizing"]) else None
    last_size = (start, time.time())
    stop, stopped_by = StopRequest(), None

    def check_finite(step):
        nonlocal last_checked
        bad = nonfinite.clone()
        if world > 1:  # every rank must stop together, or the others would hang in the next all-reduce
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            where = f"at step {step}" if step == last_checked else f"between step {last_checked} and step {step}"
            raise NonFiniteLoss(f"loss is not finite (on this or another process) {where}; stopping without writing "
                                f"weights. Resume from the last good checkpoint with a lower --lr.")
        last_checked = step + 1

    with stop:
        step = start
        while step < cfg.steps:
            if cfg.threads == 0 and step % 100 == 0:  # changes float rounding only; fix --threads for bitwise repeats
                _auto_threads()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:  # data order is a function of (seed, epoch): resume-exact without saving it
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
                perm_epoch = epoch
            idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            noise = task.noise(x_train[idx], y_train[idx], noise_gen)   # global batch's randomness, same on every rank
            sl = slice(rank * local_bs, (rank + 1) * local_bs)
            local_idx = idx[sl].to(device)
            x, y = x_dev[local_idx], y_dev[local_idx]
            noise = {key: v[sl].to(device, non_blocking=True) if device.type == "cuda" else v[sl]
                     for key, v in noise.items()}
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)

            def loss_and_backward(fwd):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss, logs = task.loss(fwd, x, y, noise)
                nonfinite.add_((~torch.isfinite(loss.detach())).float())
                if step - last_checked + 1 >= check_every:   # CPU: every step, before any gradient exists
                    check_finite(step)
                loss.backward()
                return loss, logs

            try:
                loss, logs = loss_and_backward(forward)
            except NonFiniteLoss:
                raise
            except Exception as e:  # noqa: BLE001 - a compiler failure must not end the run: fall back to eager
                if forward is ddp:
                    raise
                reason = f"{type(e).__name__}: {str(e)[:300]}"
                tqdm.write(f"torch.compile failed at step {step} ({reason}); eager from here")
                info.update(compile_error=reason, compiled=False)
                forward = probe.forward = ddp
                loss, logs = loss_and_backward(forward)       # this step again, eagerly (same data and noise)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model)
            seen += cfg.batch_size
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                loss_val = loss.detach().float()
                if world > 1:  # log the global batch's loss, not this rank's slice of it
                    loss_val = loss_val.clone()
                    dist.all_reduce(loss_val)
                    loss_val /= world
                logs = {"loss": float(loss_val), **logs}
                history.append({"step": step, "wall_s": round(wall_before + time.time() - t0, 1),
                                **{k: round(v, 5) for k, v in logs.items()}})
                bar.set_postfix(loss=f"{logs['loss']:.4g}", img_s=f"{seen / (time.time() - t0):.0f}",
                                lr=f"{lr_at(cfg, step):.2g}")
            done = step + 1
            bar.update(1)
            # ---- probes: eager window, then (compile=auto) a compiled window; then size the run to the deadline
            forward = probe.after(done, forward)
            if sizing_step is not None and done == sizing_step:
                rate = info.get("probe_steps_per_s") or info["eager_steps_per_s"]   # the latter: compile failed
                cfg.steps = min(step_cap, steps_to_deadline(done, rate, cfg.deadline, cfg.reserve_s, time.time()))
                cfg.steps = agree(cfg.steps, world, device)
                info["sizing"].append({"at_step": done, "steps_per_s": round(rate, 2), "planned_steps": cfg.steps})
                tqdm.write(f"{run_dir.name}: {rate:.1f} steps/s -> {cfg.steps} steps end at the deadline")
                bar.total, last_size = cfg.steps, (done, time.time())
            # ---- the hard stop: deadline or SIGTERM, checked every step (world > 1: agreed at log steps)
            if world == 1 or done % cfg.log_every == 0:
                want = stop.requested or (cfg.deadline > 0 and time.time() >= cfg.deadline)
                if world > 1:
                    want = bool(agree(int(want), world, device, op=dist.ReduceOp.MAX))
                if want and done < cfg.steps:
                    stopped_by = "SIGTERM" if stop.requested else "deadline"
            boundary = done % cfg.ckpt_every == 0 or done == cfg.steps or stopped_by
            if boundary and cfg.fit_to_deadline and info["sizing"] and not stopped_by and done < cfg.steps:
                cfg.steps = resize_plan(cfg, done, last_size, world, device, info, step_cap)
                bar.total, last_size = cfg.steps, (done, time.time())
            sampling = on_sample is not None and cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps
            if boundary or sampling:
                check_finite(step)
            if rank == 0 and boundary:
                info.update(steps_done=done, images_seen=done * cfg.batch_size, stopped_by=stopped_by)
                save_checkpoint(run_dir, done, model, ema, opt, gens,
                                {"history": history, "wall_s": round(wall_before + time.time() - t0, 1),
                                 "planned_steps": cfg.steps, "run_info": info}, cfg.keep)
            if rank == 0 and sampling and not stopped_by:
                on_sample(_ema_copy(model, ema), done, run_dir, history)
            step = done
            if stopped_by:
                tqdm.write(f"{run_dir.name}: stopped by {stopped_by} at step {done} of {cfg.steps}; saved")
                break
    bar.close()
    if start < cfg.steps or stopped_by:
        check_finite(step - 1)
    done = step
    info.update(steps_done=done, planned_steps=cfg.steps, images_seen=done * cfg.batch_size, stopped_by=stopped_by,
                compiled=info.get("compiled", cfg.compile == "on" and forward is not ddp))
    cfg._run_info = info
    ema_model = _ema_copy(model, ema)
    if rank == 0 and on_sample is not None and stopped_by != "SIGTERM":   # SIGTERM: the weights first, no extras
        on_sample(ema_model, done, run_dir, history)
    if rank == 0:
        (run_dir / "history.json").write_text(json.dumps(history))
    return ema_model, history


def _check_cadence(device: torch.device, log_every: int) -> int:
    """Steps between finiteness checks: every step on CPU (free); every log_every on CUDA, where reading the flag
    waits for the queue to drain."""
    return 1 if device.type == "cpu" else max(1, log_every)


_CORES = os.cpu_count() or 1


def _auto_threads() -> None:
    """On a busy machine OpenMP threads wait on each other at every barrier and a multi-threaded step gets
    slower than a single-threaded one; use one thread while the load average exceeds the core count."""
    busy = os.getloadavg()[0] > _CORES + 0.5
    want = 1 if busy else _CORES
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


def _ema_copy(model, ema: EMA):
    import copy
    return ema.copy_to(copy.deepcopy(model)).eval()


def save_weights(model, weights_dir: str | os.PathLike) -> Path:
    """save_pretrained into a temp dir, then swap it in, so a crash never leaves half-written weights.
    An existing model card (README.md) is kept."""
    dest = Path(weights_dir)
    tmp = dest.parent / f".tmp-{dest.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # the mixin's stub card; ours is written by evaluate
    if (dest / "README.md").is_file():
        shutil.copy2(dest / "README.md", tmp / "README.md")
    old = dest.parent / f".old-{dest.name}"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
