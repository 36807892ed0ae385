"""Export an early checkpoint of a score model's own run as its autoguidance guide (diffusion.autoguidance).

    python -m train.export_guide --run ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3 \
        --ckpt ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3-keep/ckpt-00001000 \
        --model weights/pixel-uncond --out weights/pixel-uncond-guide

Writes the checkpoint's EMA weights to --out (save_pretrained layout), names the guide in --model's config.json
(`autoguide`, which load_pipeline reads), and records the step and training time of the checkpoint beside the
other training records when --out is under weights/. The run's checkpoints rotate (--keep): copy the one you want
to keep before the run passes it, or train with a larger --keep.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from diffusion.autoguidance import AutoGuided
from diffusion.hub_mixin import CONFIG_NAME
from diffusion.registry import DEFAULT_WEIGHTS_DIR, GUIDE_NAMES
from diffusion.score import ScoreModel
from train.common import RECORDS
from train.loop import save_weights
from train.diffusion_models import ema_from_checkpoint


def export_guide(run: Path, ckpt: Path, model_dir: Path, out: Path) -> dict:
    if out.name not in GUIDE_NAMES:
        raise SystemExit(f"--out must be a folder named one of {', '.join(GUIDE_NAMES)}, got {out.name!r}")
    state = json.loads((ckpt / "state.json").read_text())
    guide = ema_from_checkpoint(run, ckpt)
    config_path = model_dir / CONFIG_NAME
    config = json.loads(config_path.read_text())
    mine = json.loads((run / "config.json").read_text())
    AutoGuided(ScoreModel.from_pretrained(str(model_dir)), guide)    # unconditional, same shape and SDE, or an error
    dest = save_weights(guide, out)
    config["autoguide"] = out.name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = {"command": f"python -m train.export_guide --run {run} --ckpt {ckpt} --model {model_dir} --out {out}",
              "source_run": str(run), "checkpoint_step": state["step"],
              "total_wall_s": state.get("wall_s"), "guides": model_dir.name,
              "config": mine, "parameters": sum(p.numel() for p in guide.parameters()),
              "exported": time.strftime("%Y-%m-%d")}
    if dest.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve():
        (RECORDS / f"{dest.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{dest}: EMA weights of {ckpt.name} (step {state['step']}); {config_path} now names it as its guide")
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the run directory (its config.json)")
    p.add_argument("--ckpt", type=Path, required=True, help="a checkpoint folder of that run (ckpt-NNNNNNNN)")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS_DIR / "pixel-uncond", help="the model it guides")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS_DIR / "pixel-uncond-guide")
    a = p.parse_args(argv)
    export_guide(a.run.expanduser(), a.ckpt.expanduser(), a.model.expanduser(), a.out.expanduser())


if __name__ == "__main__":
    main()
