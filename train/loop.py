"""The shared training loop: config dataclass -> argparse, EMA, LR schedule, atomic rotated
checkpoints in safetensors + JSON (no pickle anywhere), exact resume, DDP under torchrun, tqdm.

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
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusion.hub_mixin import check_safetensors_header, refuse_pickle


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


# ---------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of parameters and buffers, decay warmed up as min(d, (1+n)/(10+n))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), 1 - d)   # shadow = d * shadow + (1 - d) * v
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.shadow, strict=True)
        return model


# ---------------------------------------------------------------- checkpoints (safetensors + JSON)


def _flatten_optimizer(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: Path, step: int, model, ema: EMA, opt, generators: dict, extra: dict, keep: int) -> Path:
    """Write run_dir/ckpt-{step}/ atomically (temp dir + rename), then keep only the newest `keep`."""
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".tmp-ckpt-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in ema.shadow.items()}
    tensors |= opt_tensors
    tensors |= {f"rng.{name}": g.get_state() for name, g in generators.items()}
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"step": step, "ema_updates": ema.num_updates, "optimizer": opt_meta, **extra}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in sorted(run_dir.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete checkpoint (temp dirs of interrupted writes are ignored)."""
    done = [p for p in sorted(run_dir.glob("ckpt-*")) if (p / "state.json").is_file() and (p / "state.safetensors").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model, ema: EMA, opt, generators: dict) -> dict:
    st = path / "state.safetensors"
    refuse_pickle(st)
    check_safetensors_header(st)
    tensors = load_file(str(st))
    meta = json.loads((path / "state.json").read_text())
    for prefix, target in (("model.", None), ("ema.", None)):
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        for k, v in sub.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"checkpoint {path} holds NaN/inf in {prefix}{k}; refusing to resume from it")
        if prefix == "model.":
            model.load_state_dict(sub, strict=True)
        else:
            if set(sub) != set(ema.shadow):
                raise ValueError(f"checkpoint {path}: EMA keys do not match the model")
            ema.shadow = sub
    ema.num_updates = meta["ema_updates"]
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])
    return meta


# ---------------------------------------------------------------- distributed


def dist_setup(device_pref: str | None = None):
    """(rank, world, device). Under torchrun: gloo on CPU, nccl on GPU. Device chosen once, here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
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


def train_loop(cfg: TrainConfig, model: torch.nn.Module, task, x_train: torch.Tensor, y_train: torch.Tensor,
               on_sample=None, device=None, rank: int = 0, world: int = 1, optimizer_cls=torch.optim.AdamW):
    """Train `model` for cfg.steps; returns the EMA copy (a model with EMA weights) and the history.

    on_sample(ema_model, step, run_dir, history) is called on rank 0 every cfg.sample_every steps and at the end;
    history entries carry step, loss and wall_s (training seconds summed across resumes).
    """
    device = device or torch.device("cpu")
    run_dir = Path(cfg.out)
    if cfg.keep < 1:
        raise ValueError(f"keep must be >= 1, got {cfg.keep}")
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints of another run: pass --resume to continue it, "
                              f"or choose a new --out (or delete the folder) to start afresh")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    local_bs = cfg.batch_size // world
    model.to(device)
    ema = EMA(model, cfg.ema_decay)
    opt = optimizer_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    gens = {"noise": noise_gen}
    start, history, wall_before = 0, [], 0.0
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            meta = load_checkpoint(ckpt, model, ema, opt, gens)
            start, history = meta["step"], meta.get("history", [])
            wall_before = float(meta.get("wall_s", 0.0))
            if rank == 0:
                tqdm.write(f"resumed from {ckpt} at step {start}")
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n = x_train.shape[0]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n} training examples are fewer than one batch of {cfg.batch_size}")
    perm, perm_epoch = None, -1
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, dynamic_ncols=True,
               unit="step", desc=run_dir.name)
    t0, seen = time.time(), 0
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    for step in bar:
        if cfg.threads == 0 and step % 100 == 0:  # changes float rounding only; fix --threads for bitwise repeats
            _auto_threads()
        epoch, k = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:  # data order is a function of (seed, epoch): resume-exact without saving it
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            perm_epoch = epoch
        idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        xg, yg = x_train[idx], y_train[idx]
        noise = task.noise(xg, yg, noise_gen)                     # global batch's randomness, same on every rank
        sl = slice(rank * local_bs, (rank + 1) * local_bs)
        x, y = xg[sl].to(device), yg[sl].to(device)
        noise = {key: v[sl] for key, v in noise.items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss, logs = task.loss(ddp, x, y, noise)
        finite = torch.isfinite(loss.detach()).float()
        if world > 1:  # every rank must stop together, or the others would hang in the next all-reduce
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite:
            raise NonFiniteLoss(f"loss is {loss.item()} (on this or another process) at step {step}; stopping without writing weights. "
                                f"Resume from the last good checkpoint with a lower --lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model)
        seen += cfg.batch_size
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            loss_val = loss.detach()
            if world > 1:  # log the global batch's loss, not this rank's slice of it
                loss_val = loss_val.clone()
                dist.all_reduce(loss_val)
                loss_val /= world
            logs = {"loss": float(loss_val), **logs}
            history.append({"step": step, "wall_s": round(wall_before + time.time() - t0, 1),
                            **{k: round(v, 5) for k, v in logs.items()}})
            bar.set_postfix(loss=f"{logs['loss']:.4g}", img_s=f"{seen / (time.time() - t0):.0f}", lr=f"{lr_at(cfg, step):.2g}")
        done = step + 1
        if rank == 0 and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            save_checkpoint(run_dir, done, model, ema, opt, gens,
                            {"history": history, "wall_s": round(wall_before + time.time() - t0, 1)}, cfg.keep)
        if rank == 0 and on_sample is not None and cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
            on_sample(_ema_copy(model, ema), done, run_dir, history)
    ema_model = _ema_copy(model, ema)
    if rank == 0 and on_sample is not None:
        on_sample(ema_model, cfg.steps, run_dir, history)
    if rank == 0:
        (run_dir / "history.json").write_text(json.dumps(history))
    return ema_model, history


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
