"""What a training run keeps between processes: the EMA of the weights, and atomic rotated checkpoints in
safetensors + JSON (no pickle anywhere) holding model, EMA, optimizer state and every generator's state, so a
resumed run continues exactly (train/loop.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffusion.hub_mixin import check_safetensors_header, refuse_pickle


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
        shadows, values = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                shadows.append(self.shadow[k])
                values.append(v.detach())
            else:
                self.shadow[k].copy_(v)
        if shadows:
            torch._foreach_lerp_(shadows, values, 1 - d)    # shadow = d * shadow + (1 - d) * v, one launch per group

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


def checkpoint_weights(ckpt: Path, prefix: str) -> dict:
    """The tensors under `prefix` (e.g. "ema." or "ema.generator.") of a checkpoint's state.safetensors, the prefix
    stripped, read with the project's safetensors-only checks: one network's weights from a checkpoint."""
    st = Path(ckpt) / "state.safetensors"
    refuse_pickle(st)
    check_safetensors_header(st)
    return {k[len(prefix):]: v for k, v in load_file(str(st)).items() if k.startswith(prefix)}


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
