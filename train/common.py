"""Pieces every training script shares: setup (threads, device, data) and finish (weights, push)."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from diffusion.hub import DEFAULT_WEIGHTS_DIR
from train.data import load_mnist
from train.loop import TrainConfig, dist_setup, save_weights


RECORDS = Path(__file__).resolve().parent / "records"  # committed: what each shipped checkpoint's run was


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


INVOKED_MODULE: str | None = None   # set by train.cli: the module its subcommand runs


def run_command() -> str:
    """The command that reproduces this run, `python -m train.X flags`, whether it was launched that way or through
    the `mnist-diffusion-train` console script (train.cli sets INVOKED_MODULE and leaves only the flags in argv)."""
    return "python -m " + shlex.join([INVOKED_MODULE or _module_name(), *sys.argv[1:]])


def setup(cfg: TrainConfig):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = dist_setup(cfg.device)
    cfg._device = device
    x, y = load_mnist("train", cfg.mnist_dir or None, limit=cfg.train_limit or None)
    cfg._t_start = time.time()
    return rank, world, device, (x, y)


def device_name(device: torch.device) -> str:
    """What a record says the run ran on: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def run_facts(cfg: TrainConfig) -> dict:
    """Device, precision, steps, images seen and how the run ended, from what train_loop left in cfg._run_info."""
    info = dict(getattr(cfg, "_run_info", {}))
    device = getattr(cfg, "_device", None) or torch.device("cpu")
    facts = {"device": device_name(device)}
    for key in ("precision", "compile", "compiled", "compile_error", "eager_steps_per_s", "compiled_steps_per_s",
                "compile_and_warm_s", "sizing", "steps_done", "planned_steps", "images_seen", "stopped_by"):
        if key in info and info[key] not in (None, []):
            facts[key] = info[key]
    return facts


def finish(cfg: TrainConfig, ema_model, summary: dict | None = None, extra_files=()):
    """Save EMA weights to cfg.weights_dir (atomically) with `extra_files` beside them (e.g. the time-lapse),
    record the run, optionally push."""
    summary = dict(summary or {})
    summary["wall_time_s"] = round(time.time() - getattr(cfg, "_t_start", time.time()), 1)
    summary.update(run_facts(cfg))
    if cfg.weights_dir:
        dest = save_weights(ema_model, cfg.weights_dir)
        for f in map(Path, extra_files):
            if f.is_file():
                shutil.copy2(f, dest / f.name)
        (Path(cfg.out) / "train_summary.json").write_text(json.dumps(summary, indent=1))
        record = {"command": run_command(),
                  "config": {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("_")},
                  "parameters": sum(p.numel() for p in ema_model.parameters()),
                  "torch": torch.__version__, **summary}
        (Path(cfg.out) / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        if dest.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve():  # shipped weights: keep the record in git
            RECORDS.mkdir(parents=True, exist_ok=True)
            (RECORDS / f"{dest.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"EMA weights written to {dest}  ({summary})")
        if cfg.push_to_hub:
            from diffusion.hub import push_folder
            commit = push_folder(dest, cfg.push_to_hub)
            print(f"pushed {dest} to {cfg.push_to_hub} at commit {commit}")
