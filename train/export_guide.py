"""Export an early checkpoint of a score model's own run as its autoguidance guide (diffusion.autoguidance).

    python -m train.export_guide --run ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3 \
        --ckpt ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3-keep/ckpt-00001000 \
        --model weights/pixel-uncond --out weights/pixel-uncond-guide

Writes the checkpoint's EMA weights to --out (save_pretrained layout), names the guide in --model's config.json
(`autoguide`, which load_pipeline reads), records the step and training time of the checkpoint beside the
other training records when --out is under weights/, and keeps a copy in the run (RUN/guide), so that resuming the
run later (e.g. to extend it) installs the same guide again at its end. The run's checkpoints rotate (--keep): copy the one you want
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


def install_guide(guide, model_dir: Path, out: Path, record: dict) -> Path:
    """Save `guide` (a ScoreModel) to `out`, name it in model_dir/config.json (`autoguide`) and keep `record` beside
    the other training records when `out` is under weights/."""
    if out.name not in GUIDE_NAMES:
        raise SystemExit(f"the guide's folder must be named one of {', '.join(GUIDE_NAMES)}, got {out.name!r}")
    config_path = model_dir / CONFIG_NAME
    config = json.loads(config_path.read_text())
    AutoGuided(ScoreModel.from_pretrained(str(model_dir)), guide)    # unconditional, same shape and SDE, or an error
    dest = save_weights(guide, out)
    config["autoguide"] = out.name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if dest.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve():
        RECORDS.mkdir(parents=True, exist_ok=True)
        (RECORDS / f"{dest.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{dest}: the guide (step {record.get('checkpoint_step')}); {config_path} now names it")
    return dest


def guide_record(run: Path, step: int, wall_s, guides: str, command: str, parameters: int) -> dict:
    return {"command": command, "source_run": str(run), "checkpoint_step": step, "total_wall_s": wall_s,
            "guides": guides, "config": json.loads((run / "config.json").read_text()), "parameters": parameters,
            "exported": time.strftime("%Y-%m-%d")}


def export_guide(run: Path, ckpt: Path, model_dir: Path, out: Path) -> dict:
    """The EMA weights of checkpoint `ckpt` of `run` as `model_dir`'s guide in `out`; returns the record."""
    if out.name not in GUIDE_NAMES:
        raise SystemExit(f"--out must be a folder named one of {', '.join(GUIDE_NAMES)}, got {out.name!r}")
    for path, what in ((run / "config.json", "--run: not a training run directory (no config.json)"),
                       (ckpt / "state.json", "--ckpt: not a checkpoint folder (no state.json)"),
                       (ckpt / "state.safetensors", "--ckpt: not a checkpoint folder (no state.safetensors)"),
                       (model_dir / CONFIG_NAME, "--model: not a weights folder (no config.json)")):
        if not path.is_file():
            raise SystemExit(f"{what}: {path}")
    state = json.loads((ckpt / "state.json").read_text())
    guide = ema_from_checkpoint(run, ckpt)
    record = guide_record(run, state["step"], state.get("wall_s"), model_dir.name,
                          f"python -m train.export_guide --run {run} --ckpt {ckpt} --model {model_dir} --out {out}",
                          sum(p.numel() for p in guide.parameters()))
    install_guide(guide, model_dir, out, record)
    guide.save_pretrained(run / "guide")       # the run remembers its guide: a resumed run's finish reinstalls it
    (run / "guide" / "step.json").write_text(json.dumps({"step": state["step"], "wall_s": state.get("wall_s")}))
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
